"""The run pipeline's parts: the reference process named in the config, built-in measurements as plug-ins,
measurements that see the whole observation, and parameter-space vectors following ``record_iterates``."""

import math

import numpy as np
import pytest

import rodflow
from rodflow import measurements
from rodflow.errors import RodflowError
from rodflow.measurements.base import Measurement

METHODS = ["gd", "gradient_flow", "rod_flow"]


def _norms(a, b):
    return np.linalg.norm(np.asarray(a) - np.asarray(b), axis=1)


def test_distances_are_to_the_reference_named_in_the_config():
    p = rodflow.problems.make("reference-mlp", n=32)
    kw = dict(lr=0.2, steps=10, methods=METHODS, sharpness_every=0, progress=False)
    by_gd = rodflow.simulate(p, **kw)
    by_gf = rodflow.simulate(p, **kw, reference="gradient_flow")
    assert by_gf.config["reference"] == "gradient_flow" and by_gf.config["methods"][0] == "gradient_flow"
    gf = by_gf.iterates["gradient_flow"]
    # the reference's own distance is 0; GD's is its distance to gradient flow (the same number as before, seen
    # from the other side); rod flow's is from its centre to gradient flow's point
    assert (by_gf.method("gradient_flow")["dist_gd"] == 0).all()
    assert by_gf.method("gradient_flow")["dist_gd_mid"].isna().all()  # gradient flow has no midpoint
    np.testing.assert_allclose(by_gf.method("gd")["dist_gd"], by_gd.method("gradient_flow")["dist_gd"], rtol=1e-12)
    np.testing.assert_allclose(by_gf.method("rod_flow")["dist_gd"], _norms(by_gf.iterates["rod_flow"], gf),
                               rtol=1e-12, atol=1e-300)
    # the dynamics do not depend on the reference
    for m in METHODS:
        np.testing.assert_array_equal(by_gf.iterates[m], by_gd.iterates[m])
    # the default (GD) measures to GD's iterate and midpoint
    gd, mid = by_gd.iterates["gd"], by_gd.aux["gd"]["midpoint"]
    np.testing.assert_allclose(by_gd.method("rod_flow")["dist_gd_mid"], _norms(by_gd.iterates["rod_flow"], mid),
                               rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(by_gd.method("gradient_flow")["dist_gd"], _norms(gf, gd), rtol=1e-12, atol=1e-300)


def test_reference_errors_and_a_run_without_gd():
    p = rodflow.problems.make("quadratic")
    for ref, match in (("rod_flow", "reference 'rod_flow' is not among the methods"),
                       ("grad_flow", "reference must be a method name"), (3, "reference must be a method name")):
        with pytest.raises(RodflowError, match=match) as info:
            rodflow.simulate(p, lr=0.1, steps=2, methods=["gd", "gradient_flow"], reference=ref, progress=False)
        assert "\n" not in str(info.value)
    r = rodflow.simulate(p, lr=0.1, steps=2, methods=["gradient_flow"], progress=False)  # default GD, not run
    assert r.method("gradient_flow")["dist_gd"].isna().all()


def test_a_sweep_varies_the_reference():
    from rodflow import sweep as sw

    s = sw.expand({"name": "r", "problem": "quadratic", "lr": 0.1, "steps": 3, "methods": "gd,gradient_flow",
                   "grid": {"reference": ["gd", "gradient_flow"], "gfs_every": [0, 1]}})
    kws = [r.simulate_kwargs() for r in s.runs]
    assert sorted((k["reference"], k["gfs_every"]) for k in kws) == [("gd", 0), ("gd", 1), ("gradient_flow", 0),
                                                                    ("gradient_flow", 1)]


def test_built_in_measurements_are_set_by_their_run_settings():
    p = rodflow.problems.make("quadratic")
    for name, setting in (("sharpness", "sharpness_every"), ("gfs", "gfs_every"), ("distance", "reference")):
        with pytest.raises(RodflowError, match=f"{name!r} is built in: set by the run setting.*{setting}"):
            rodflow.simulate(p, lr=0.1, steps=2, methods=["gd"], measurements={name: {}}, progress=False)
    assert {"distance", "sharpness", "gfs", "hessian_trace"} <= set(measurements.names())


class _ToReference(Measurement):
    """A test measurement that needs more than the point: the cosine between the method's displacement from
    w0 and the reference's, and the reference's iterate as a per-step array."""

    name = "to_reference"

    def record(self, observation, step, reference=None):
        if reference is None:
            return {"to_reference": math.nan, "to_reference_reason": "no reference"}
        w0 = self.problem.w0
        a, b = observation.point - w0, reference["iterate"] - w0
        den = float(a.norm() * b.norm())
        return {"to_reference": float(a @ b) / den if den > 0 else math.nan,
                "ref_point": reference["iterate"].detach().cpu().numpy()}


@pytest.fixture
def to_reference():
    measurements.register("to_reference")(_ToReference)
    yield
    del measurements.REGISTRY._items["to_reference"]


def test_a_measurement_sees_the_observation_and_the_reference(to_reference):
    p = rodflow.problems.make("reference-mlp", n=32)
    r = rodflow.simulate(p, lr=0.2, steps=6, methods=["gd", "gradient_flow"], sharpness_every=0, progress=False,
                         measurements={"to_reference": {"every": 2}})
    gf = r.method("gradient_flow")
    assert list(gf["to_reference"].dropna().index) == [2, 4, 6]  # step 0: both displacements are 0 (NaN)
    assert (gf["to_reference"].dropna() > 0.9).all()  # gradient flow moves along with GD early on
    assert "to_reference_wall_s" in gf and gf["to_reference_wall_s"].notna().sum() == 4
    ref = r.aux["gradient_flow"]["ref_point"]  # a returned array is a per-step array, rows where measured
    np.testing.assert_array_equal(ref[::2], r.iterates["gd"][::2])
    assert np.isnan(ref[1::2]).all()


def test_parameter_space_vectors_follow_record_iterates():
    p = rodflow.problems.make("reference-mlp", n=32)
    kw = dict(lr=0.2, steps=5, methods=["gd", "rod_flow", "central_flow"], sharpness_every=1, progress=False)
    full = rodflow.simulate(p, **kw)
    none = rodflow.simulate(p, **kw, record_iterates=False)
    k3 = rodflow.simulate(p, **kw, record_iterates=3)
    vectors = {"gd": ["midpoint"], "rod_flow": ["delta", "end_iterate"]}
    for m, keys in vectors.items():
        for key in keys:
            assert full.aux[m][key].shape == (6, p.d)
            assert key not in none.aux[m]
            assert k3.aux[m][key].shape == (6, 3)
    # arrays that are not parameter vectors are kept whatever record_iterates says
    for r in (full, none, k3):
        assert r.aux["central_flow"]["X_eigs"].shape[0] == 6 and r.aux["gd"]["eigs"].shape == (6, 1)
    # one fixed linear map for every vector: the rod's end = centre − (−1)^t δ holds for the projections too
    sign = np.array([1.0 if t % 2 == 0 else -1.0 for t in range(6)])[:, None]
    end = k3.iterates["rod_flow"] - sign * k3.aux["rod_flow"]["delta"]
    np.testing.assert_allclose(k3.aux["rod_flow"]["end_iterate"], end, rtol=1e-4, atol=1e-6)
    assert not np.allclose(k3.aux["rod_flow"]["end_iterate"], k3.iterates["rod_flow"], atol=1e-6)


def test_a_per_step_array_larger_than_the_free_disk_is_refused_before_it_is_filled(tmp_path, monkeypatch):
    """`--steps 1e12` once filled the disk: a memmap is filled with NaN as it is allocated."""
    import collections
    import shutil

    real = shutil.disk_usage
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 0, 10**4))  # 10 kB free
    p = rodflow.problems.make("quadratic")
    with pytest.raises(RodflowError, match=r"per-step array .* GiB free on the disk\); use fewer steps") as info:
        rodflow.simulate(p, lr=0.1, steps=2000, methods=["gd"], progress=False, out=tmp_path / "r")
    assert "\n" not in str(info.value)
    monkeypatch.setattr(shutil, "disk_usage", real)
    r = rodflow.simulate(p, lr=0.1, steps=20, methods=["gd"], progress=False, out=tmp_path / "r")
    assert r.iterates["gd"].shape == (21, p.d)
