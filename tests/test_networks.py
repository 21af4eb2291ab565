"""Datasets (rodflow.data), architectures (rodflow.models) and the <arch>-<dataset> problems."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import rodflow
from rodflow import data, models
from rodflow.data.images import read_idx
from rodflow.errors import RodflowError

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ file writers
def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    raw = header + array.tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as fh:
            fh.write(raw)
    else:
        path.write_bytes(raw)


def fake_fashion(folder: Path, m: int = 60, compress: bool = True, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(m, 28, 28), dtype=np.uint8)
    labels = (np.arange(m) * 7 % 10).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "train-images-idx3-ubyte", images, compress)
    write_idx(folder / "train-labels-idx1-ubyte", labels, compress)
    return images, labels


def fake_cifar(folder: Path, batches: int = 2, m: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    all_x, all_y = [], []
    for b in range(1, batches + 1):
        x = rng.integers(0, 256, size=(m, 3072), dtype=np.uint8)
        y = list(rng.integers(0, 10, size=m))
        with open(folder / f"data_batch_{b}", "wb") as fh:
            pickle.dump({b"batch_label": b"x", b"data": x, b"labels": y, b"filenames": []}, fh)
        all_x.append(x)
        all_y += y
    return np.concatenate(all_x).reshape(-1, 3, 32, 32), np.array(all_y)


# ------------------------------------------------------------------------------------------------ data
def test_idx_reader_round_trip(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    for compress in (False, True):
        write_idx(tmp_path / f"a{compress}", a, compress)
    assert np.array_equal(read_idx(tmp_path / "aFalse"), a)
    assert np.array_equal(read_idx(tmp_path / "aTrue.gz"), a)
    b = np.arange(6, dtype=">i4").reshape(6)
    write_idx(tmp_path / "b", b, False)
    assert read_idx(tmp_path / "b").tolist() == list(range(6))
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(RodflowError, match="not an IDX"):
        read_idx(tmp_path / "bad")


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_from_idx_files(tmp_path, compress):
    images, labels = fake_fashion(tmp_path / "f", compress=compress)
    ds = data.load("fashion", n=9, classes=3, data_dir=str(tmp_path / "f"))
    # anchors' convention: the first 3 of each of classes 0, 1, 2, in file order
    idx = np.concatenate([np.flatnonzero(labels == c)[:3] for c in range(3)])
    assert ds.y.tolist() == labels[idx].tolist()
    raw = images[idx].astype(float)
    assert np.allclose(ds.x[:, 0], (raw - raw.mean()) / raw.std())
    assert ds.x.shape == (9, 1, 28, 28) and ds.task == "classification"
    onehot = ds.targets("mse")
    assert onehot.shape == (9, 3) and np.array_equal(onehot.argmax(1), ds.y) and onehot.sum() == 9
    # a seed picks a different, still balanced subset
    other = data.load("fashion", n=9, classes=3, seed=1, data_dir=str(tmp_path / "f"))
    assert np.bincount(other.y).tolist() == [3, 3, 3] and not np.allclose(other.x, ds.x)


def test_missing_datasets_say_how_to_get_them(tmp_path):
    with pytest.raises(RodflowError, match="apt-get install dataset-fashion-mnist") as e:
        data.load("fashion", data_dir=str(tmp_path / "nowhere"))
    assert "\n" not in str(e.value)
    with pytest.raises(RodflowError, match="cifar-10-python.tar.gz") as e:
        data.load("cifar10", data_dir=str(tmp_path / "nowhere"))
    assert "\n" not in str(e.value)
    with pytest.raises(RodflowError, match="cifar-10-python"):
        rodflow.problems.make("resnet-cifar10", data_dir=str(tmp_path / "nowhere"))


def test_cifar_pickles_and_subset_convention(tmp_path):
    images, labels = fake_cifar(tmp_path / "cifar-10-batches-py")
    # the parent folder works too
    ds = data.load("cifar10", n=6, classes=2, data_dir=str(tmp_path))
    idx = np.concatenate([np.flatnonzero(labels == c)[:3] for c in range(2)])
    assert ds.y.tolist() == labels[idx].tolist()
    raw = images[idx].astype(float)
    mean = raw.mean(axis=(0, 2, 3), keepdims=True)
    std = raw.std(axis=(0, 2, 3), keepdims=True)
    assert np.allclose(ds.x, (raw - mean) / std)  # per-channel standardisation
    assert ds.x.shape == (6, 3, 32, 32)
    # uneven split: n=7 over 2 classes gives 4 + 3
    assert np.bincount(data.load("cifar10", n=7, classes=2, data_dir=str(tmp_path)).y).tolist() == [4, 3]
    with pytest.raises(RodflowError, match="use n <="):
        data.load("cifar10", n=400, classes=2, data_dir=str(tmp_path))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(RodflowError, match="not a CIFAR-10"):
        data.load("cifar10", n=4, classes=2, data_dir=str(tmp_path / "junk"))


def test_digits_subset_cache_and_targets():
    ds = data.load("digits", n=20, classes=4)
    assert ds.x.shape == (20, 1, 8, 8) and np.bincount(ds.y).tolist() == [5, 5, 5, 5]
    assert abs(ds.x.mean()) < 1e-12 and abs(ds.x.std() - 1) < 1e-12
    assert data.load("digits", classes=4, n=20) is ds  # in-process cache
    assert ds.targets("ce").dtype.kind == "i"
    with pytest.raises(RodflowError, match="loss"):
        ds.targets("hinge")
    with pytest.raises(RodflowError, match="n <= 708"):
        data.load("digits", n=1000, classes=4)
    with pytest.raises(RodflowError, match="has no parameter"):
        data.load("digits", width=3)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="dataset-fashion-mnist absent")
def test_real_fashion_mnist():
    ds = data.load("fashion", n=30, classes=3)
    assert ds.x.shape == (30, 1, 28, 28) and np.bincount(ds.y).tolist() == [10, 10, 10]


def test_synthetic_sets():
    t = data.load("teacher", n=50, classes=2, dim=3)
    assert t.x.shape == (50, 3) and t.y.shape == (50, 2) and np.allclose(t.y.std(0), 1)
    with pytest.raises(RodflowError, match="regression"):
        t.targets("ce")
    c = data.load("chebyshev", n=40, degree=3)
    # a degree-3 polynomial of x: exactly fit by least squares on 1, x, x², x³
    V = np.vander(c.x[:, 0], 4)
    assert np.allclose(V @ np.linalg.lstsq(V, c.y[:, 0], rcond=None)[0], c.y[:, 0])
    V2 = np.vander(c.x[:, 0], 3)
    assert not np.allclose(V2 @ np.linalg.lstsq(V2, c.y[:, 0], rcond=None)[0], c.y[:, 0])
    s = data.load("sorting", n=30, classes=5, length=4)
    assert s.x.shape == (30, 7) and s.y.shape == (30, 4)
    assert (np.diff(s.y, axis=1) >= 0).all()
    assert np.array_equal(np.sort(s.x[:, :4], axis=1), s.y) and np.array_equal(s.x[:, 4:], s.y[:, :3])
    assert s.targets("mse").shape == (30, 4, 5)


# ------------------------------------------------------------------------------------------- derivatives
TINY = {
    "mlp-digits": dict(n=12, classes=3, width=5, depth=2, activation="tanh"),
    "cnn-digits": dict(n=6, classes=3, width=3, depth=2, activation="gelu"),
    "resnet-digits": dict(n=6, classes=3, width=3, depth=1, activation="silu"),
    "vit-digits": dict(n=6, classes=3, width=8, depth=1, heads=2, patch=4),
    "transformer-sorting": dict(n=6, classes=4, length=3, width=8, depth=1, heads=2),
    "mlp-chebyshev": dict(n=10, width=6, depth=2, activation="softplus"),
}


def _fd_check(p, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = p.w0 + 0.1 * torch.randn(p.d, generator=gen, dtype=torch.float64)
    u, v, z = (torch.randn(p.d, generator=gen, dtype=torch.float64) for _ in range(3))
    z = z / z.norm()
    eps = 1e-4
    # gradient
    fd = (p.loss(w + eps * z) - p.loss(w - eps * z)) / (2 * eps)
    assert float(p.grad(w) @ z) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)
    # HVP
    fd = (p.grad(w + eps * z) - p.grad(w - eps * z)) / (2 * eps)
    hv = p.hvp(w, z)
    assert float((hv - fd).norm()) <= 1e-6 * float(hv.norm()) + 1e-9
    # third derivative: <∇(uᵀHv), z> against the FD of uᵀH(w)v
    fd = (u @ p.hvp(w + eps * z, v) - u @ p.hvp(w - eps * z, v)) / (2 * eps)
    t = p.third(w, u, v) @ z
    assert float(t) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)
    assert abs(float(t)) > 1e-6  # the check is not vacuous


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_derivatives_against_finite_differences(name, loss):
    if loss == "ce" and name == "mlp-chebyshev":
        with pytest.raises(RodflowError, match="regression"):
            rodflow.problems.make(name, loss=loss, **TINY[name])
        return
    p = rodflow.problems.make(name, loss=loss, **TINY[name])
    _fd_check(p)


def test_fd_check_catches_a_wrong_third_derivative():
    """The FD check catches a wrong third derivative: here, one perturbed by a known amount."""
    p = rodflow.problems.make("vit-digits", **TINY["vit-digits"])
    true_third = p.third
    p.third = lambda w, u, v: true_third(w, u, v) * 1.001
    with pytest.raises(AssertionError):
        _fd_check(p)


def test_losses_match_conventions():
    out = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    assert models.mse(out, y).tolist() == pytest.approx([0.5 * (4 + 0.25), 0.5])
    labels = torch.tensor([1, 2])
    ref = torch.nn.functional.cross_entropy(out, labels, reduction="none")
    assert torch.allclose(models.cross_entropy(out, labels), ref)
    # mean over examples: the problem's loss is the mean of per-example losses
    p = rodflow.problems.make("mlp-digits", n=8, classes=2, width=4, loss="ce")
    ds = data.load("digits", n=8, classes=2)
    model = models.build("mlp", ds.input_shape, 2, 4, 2, "tanh", seed=0)
    direct = models.cross_entropy(model(p.w0, torch.from_numpy(ds.x.copy())), torch.from_numpy(ds.y.copy())).mean()
    assert float(p.loss(p.w0)) == pytest.approx(float(direct), rel=1e-12)


def test_pytorch_default_init_and_seed():
    p = rodflow.problems.make("mlp-digits", n=8, classes=2, width=4, depth=1)
    torch.manual_seed(0)
    first = torch.nn.Linear(64, 4, dtype=torch.float64)
    assert torch.equal(p.w0[: 64 * 4], first.weight.detach().reshape(-1))
    bound = 1 / 8  # U(±1/√fan_in), fan_in = 64
    assert float(p.w0[:256].abs().max()) <= bound and float(p.w0[:256].abs().max()) > 0.9 * bound
    q = rodflow.problems.make("mlp-digits", n=8, classes=2, width=4, depth=1, seed=1)
    assert not torch.equal(p.w0, q.w0)
    f32 = rodflow.problems.make("mlp-digits", n=8, classes=2, width=4, depth=1, dtype="float32")
    assert f32.dtype == torch.float32 and torch.allclose(f32.w0.double(), p.w0, atol=1e-7)


def test_chunking_changes_nothing():
    a = rodflow.problems.make("cnn-digits", n=10, classes=2, width=2, chunk_size=3)
    b = rodflow.problems.make("cnn-digits", n=10, classes=2, width=2, chunk_size=100)
    assert len(a.chunks) == 4 and len(b.chunks) == 1
    la, ga = a.loss_grad(a.w0)
    lb, gb = b.loss_grad(b.w0)
    assert float(la) == pytest.approx(float(lb), rel=1e-13) and torch.allclose(ga, gb, rtol=1e-12, atol=1e-15)


def test_cifar_problems_on_generated_batches(tmp_path):
    fake_cifar(tmp_path)
    for arch, extra in (("resnet", dict(width=3, depth=1)), ("vit", dict(width=8, depth=1, patch=16)),
                        ("mlp", dict(width=4)), ("cnn", dict(width=2))):
        p = rodflow.problems.make(f"{arch}-cifar10", n=4, classes=2, data_dir=str(tmp_path), **extra)
        loss, g = p.loss_grad(p.w0)
        assert np.isfinite(float(loss)) and bool(torch.isfinite(g).all()) and float(g.norm()) > 0
    _fd_check(rodflow.problems.make("resnet-cifar10", n=2, classes=2, width=2, depth=1, data_dir=str(tmp_path)))


def test_initial_sharpness_from_simulate():
    p = rodflow.problems.make("mlp-digits", n=12, classes=3, width=5, depth=1)
    r = rodflow.simulate(p, 0.1, steps=0, sharpness_every=1, progress=False)
    top = float(torch.linalg.eigvalsh(p.hessian(p.w0))[-1])
    assert r.metrics["sharpness"].iloc[0] == pytest.approx(top, rel=1e-6)


def test_bad_parameters_are_one_line_errors():
    with pytest.raises(RodflowError, match="activation"):
        rodflow.problems.make("mlp-digits", n=8, classes=2, activation="swish2")
    with pytest.raises(RodflowError, match="loss"):
        rodflow.problems.make("mlp-digits", n=8, classes=2, loss="l1")
    with pytest.raises(RodflowError, match="patch"):
        rodflow.problems.make("vit-digits", n=8, classes=2, patch=3)
    with pytest.raises(RodflowError, match="heads"):
        rodflow.problems.make("vit-digits", n=8, classes=2, width=6, heads=4)
    with pytest.raises(RodflowError, match="has no parameter"):
        rodflow.problems.make("mlp-digits", heads=2)
    with pytest.raises(RodflowError, match="width"):
        rodflow.problems.make("cnn-digits", n=8, classes=2, width=0)


def test_plain_layernorm_matches_torch_and_has_correct_third_derivative():
    """Why LayerNorm is hand-written: with torch 2.13, F.layer_norm's third derivative is wrong (measured:
    −40.96 against the finite-difference −35.50 on this very function); the plain-op version is exact."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    ln = models.LayerNorm(5).double()
    assert torch.allclose(ln(x), torch.nn.functional.layer_norm(x, (5,)), atol=1e-12)
    p = rodflow.Problem.from_loss(lambda w: (torch.tanh(ln(x * w[:5] + w[5:])) ** 3).sum(),
                                  torch.randn(10, generator=gen, dtype=torch.float64))
    _fd_check(p)
