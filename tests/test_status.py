"""Structured statuses (kind, step, reason) and measurements that fail alone."""

import json
import pickle

import numpy as np
import pytest
import torch

import rodflow
from rodflow import sweep as sw
from rodflow.status import Status


def test_status_is_its_text_and_its_fields():
    ok, failed, diverged = Status(), Status("failed", 4, "RuntimeError: x (y)"), Status("diverged", 8, "|loss| big")
    assert ok == "ok" and ok.kind == "ok" and ok.step is None and ok.ok
    assert failed == "failed at step 4: RuntimeError: x (y)" and (failed.kind, failed.step) == ("failed", 4)
    assert diverged == "diverged at step 8 (|loss| big)" and diverged.reason == "|loss| big"
    for s in (ok, failed, diverged, Status("failed", None, "worker died")):
        assert Status.from_record(str(s)).to_dict() == s.to_dict()  # old status.json text parses back
        assert Status.from_record(s.to_dict()) == s
        again = pickle.loads(pickle.dumps(s))
        assert again.to_dict() == s.to_dict() and isinstance(again, Status)
    with pytest.raises(ValueError, match="status kind"):
        Status("exploded")
    assert sw.run_status({"gd": diverged, "rod_flow": Status("diverged", 5, "r")}) == "diverged at step 5"
    assert sw.run_status({"gd": ok, "rod_flow": failed}).startswith("failed: rod_flow failed at step 4")


def test_status_json_has_kind_step_reason_and_old_runs_load(tmp_path):
    p = rodflow.problems.make("self-stabilization")
    r = rodflow.simulate(p, lr=0.8, steps=12, methods=["gd", "gradient_flow"], sharpness_every=0,
                         out=tmp_path / "run", progress=False)
    assert r.status["gd"].kind == "diverged" and r.status["gd"].step == 8
    record = json.loads((tmp_path / "run" / "status.json").read_text())
    assert record["methods"]["gd"] == {"kind": "diverged", "step": 8, "reason": r.status["gd"].reason}
    assert record["methods"]["gradient_flow"] == {"kind": "ok", "step": None, "reason": ""}
    assert record["status"]["gd"] == str(r.status["gd"])
    loaded = rodflow.load(tmp_path / "run")
    assert loaded.status["gd"].step == 8
    # a run directory written before statuses had fields: the text is parsed
    (tmp_path / "run" / "status.json").write_text(json.dumps({"complete": True, "status": record["status"]}))
    assert rodflow.load(tmp_path / "run").status["gd"].to_dict() == record["methods"]["gd"]


class _Fragile(torch.autograd.Function):
    """½ Σ λ_i x_i² whose second derivative raises once |x_0| < 0.36 (GD at η = 0.1: from step 10 on)."""

    @staticmethod
    def forward(ctx, x, lam):
        ctx.save_for_backward(x, lam)
        return 0.5 * (lam * x * x).sum()

    @staticmethod
    def backward(ctx, g):
        x, lam = ctx.saved_tensors
        if torch.is_grad_enabled() and float(x[0].detach().abs()) < 0.36:
            raise RuntimeError("HVP unavailable here")
        return g * lam * x, None


def test_a_failing_hvp_fails_the_sharpness_alone_and_the_run_goes_on(tmp_path):
    lam = torch.tensor([1.0, 3.0], dtype=torch.float64)
    p = rodflow.Problem.from_loss(lambda w: _Fragile.apply(w, lam), torch.ones(2, dtype=torch.float64), check=False)
    with pytest.warns(rodflow.RodflowWarning, match="failed .*HVP unavailable here"):
        r = rodflow.simulate(p, lr=0.1, steps=20, methods=["gd", "gradient_flow", "central_flow"],
                             sharpness_every=1, out=tmp_path / "run", progress=False)
    gd = r.method("gd")
    assert r.status["gd"] == "ok" and r.status["gradient_flow"] == "ok" and len(gd) == 21
    assert np.allclose(gd["sharpness"].loc[:9], 3.0) and gd["sharpness"].loc[10:].isna().all()
    assert gd["sharpness_reason"].loc[10:].str.contains("RuntimeError: HVP unavailable here").all()
    gf = r.method("gradient_flow")
    assert len(gf) == 21 and gf["sharpness"].loc[:10].notna().all() and gf["sharpness"].loc[11:].isna().all()
    cf = r.status["central_flow"]  # central flow needs HVPs in its dynamics: it fails alone, with its step
    assert cf.kind == "ok" or (cf.kind == "failed" and cf.step >= 9 and "HVP unavailable" in cf.reason)
    assert r.summary().set_index("method").loc["gd", "sharpness_nan"] == 11


def test_a_process_whose_observation_raises_fails_alone(monkeypatch):
    from rodflow.processes import rod_flow

    original = rod_flow.RodFlow.observe

    def observe(self):
        if self.t >= 5:
            raise ArithmeticError("cannot observe")
        return original(self)

    monkeypatch.setattr(rod_flow.RodFlow, "observe", observe)
    r = rodflow.simulate(rodflow.problems.make("sharp-valley"), lr=0.3, steps=12,
                         methods=["gd", "gradient_flow", "rod_flow"], sharpness_every=0, progress=False)
    assert r.status["gd"] == "ok" and r.status["gradient_flow"] == "ok"
    assert r.status["rod_flow"].to_dict() == {"kind": "failed", "step": 5,
                                              "reason": "observe: ArithmeticError: cannot observe"}
    assert len(r.method("rod_flow")) == 5 and len(r.method("gd")) == 13
