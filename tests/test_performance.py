"""Performance paths (docs/performance.md): the cached HVP operator, LOBPCG without guard-vector HVPs, and the
per-architecture HVP path of the network problems."""

from __future__ import annotations

import pytest
import torch

from rodflow import problems
from rodflow.linalg.eigs import SharpnessTracker, top_eigs
from rodflow.problem import HVP_BY_ARCH, HVP_METHODS, Problem
from rodflow.problems import networks


def _tanh_regression(n=24, din=3, width=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, din, dtype=torch.float64, generator=g)
    Y = torch.randn(n, dtype=torch.float64, generator=g)
    d = din * width + width + width + 1

    def example_loss(w, xb, yb):
        W1 = w[: din * width].view(din, width)
        b1 = w[din * width: din * width + width]
        W2 = w[din * width + width: din * width + 2 * width]
        return 0.5 * (torch.tanh(xb @ W1 + b1) @ W2 + w[-1] - yb) ** 2

    w0 = 0.5 * torch.randn(d, dtype=torch.float64, generator=g)
    return example_loss, [X, Y], w0


@pytest.mark.parametrize("method", HVP_METHODS)
@pytest.mark.parametrize("chunk_size", [1024, 7])
def test_hvp_operator_matches_hvp_block_and_counts(method, chunk_size):
    example_loss, data, w0 = _tanh_regression()
    p = Problem.from_data(example_loss, data, w0, chunk_size=chunk_size, hvp_method=method)
    w = w0 + 0.1
    V = torch.randn(p.d, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = p.hvp_block(w, V)
    op = p.hvp_operator(w)
    before = p.counts.hvps
    got1, got3 = op(V[:, :1]), op(V)
    assert p.counts.hvps - before == 4
    torch.testing.assert_close(got3, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got1[:, 0], expected[:, 0], rtol=1e-12, atol=1e-14)
    # against the dense Hessian by finite differences of the gradient
    eps = 1e-6
    fd = (p.grad(w + eps * V[:, 0]) - p.grad(w - eps * V[:, 0])) / (2 * eps)
    torch.testing.assert_close(got1[:, 0], fd, rtol=1e-6, atol=1e-8)


def test_hvp_operator_is_bitwise_hvp_block_for_double_backward():
    example_loss, data, w0 = _tanh_regression()
    p = Problem.from_data(example_loss, data, w0, hvp_method="double_backward")
    V = torch.randn(p.d, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert torch.equal(p.hvp_operator(w0)(V), p.hvp_block(w0, V))


def test_hvp_operator_does_not_follow_later_changes_of_w():
    example_loss, data, w0 = _tanh_regression()
    p = Problem.from_data(example_loss, data, w0)
    w = w0.clone()
    op = p.hvp_operator(w)
    V = torch.eye(p.d, dtype=torch.float64)[:, :2]
    expected = p.hvp_block(w0, V)
    w += 1.0  # the operator belongs to the point it was built at
    torch.testing.assert_close(op(V), expected, rtol=0, atol=0)


def test_hvp_operator_linear_loss_has_zero_hessian():
    p = Problem.from_loss(lambda w: (w * torch.arange(1.0, 5.0, dtype=torch.float64)).sum(), torch.ones(4))
    assert torch.equal(p.hvp_operator(p.w0)(torch.ones(4, 2, dtype=torch.float64)), torch.zeros(4, 2, dtype=torch.float64))


def _diag_operator(evals):
    return lambda V: evals[:, None] * V


def test_lobpcg_guard_vectors_cost_no_hvps_per_iteration():
    # clustered top of the spectrum: many iterations; only the wanted vector's residual may cost an HVP
    d = 200
    evals = torch.linspace(0.0, 1.0, d, dtype=torch.float64)
    evals[-1], evals[-2], evals[-3] = 2.0, 1.98, 1.97
    r = top_eigs(_diag_operator(evals), d, k=1, guard=2, tol=1e-9, generator=torch.Generator().manual_seed(0))
    assert r.converged and r.iterations > 5
    assert abs(float(r.values[0]) - 2.0) < 1e-12
    refreshes = 3 * (r.iterations // 25)
    assert r.hvps == 3 + (r.iterations - 1) + refreshes  # the initial block, then one HVP per iteration


def test_lobpcg_clustered_pair_still_resolved():
    d = 300
    g = torch.Generator().manual_seed(3)
    Q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=g))
    evals = torch.linspace(-1.0, 1.0, d, dtype=torch.float64)
    evals[-1], evals[-2], evals[-3] = 3.0, 2.999, 2.99
    H = (Q * evals) @ Q.T
    r = top_eigs(lambda V: H @ V, d, k=2, tol=1e-8, generator=g)
    assert r.converged
    torch.testing.assert_close(r.values, torch.tensor([3.0, 2.999], dtype=torch.float64), rtol=0, atol=1e-10)


def test_warm_tracking_is_cheaper_than_cold_starts():
    example_loss, data, w0 = _tanh_regression(n=64, width=12)
    p = Problem.from_data(example_loss, data, w0)
    tracker = SharpnessTracker(p, k=1, tol=1e-6)
    w, warm, cold = w0.clone(), 0, 0
    for t in range(15):
        r = tracker(w)
        c = top_eigs(lambda V: p.hvp_block(w, V), p.d, 1, tol=1e-6, generator=torch.Generator().manual_seed(t))
        assert abs(float(r.values[0] - c.values[0])) <= 1e-5 * abs(float(c.values[0]))
        if t:
            warm, cold = warm + r.hvps, cold + c.hvps
        w = w - 0.01 * p.grad(w)
    assert warm < 0.8 * cold  # measured 0.71: the warm start saves the first iterations


def test_every_architecture_has_a_measured_hvp_path_and_the_networks_use_it(monkeypatch):
    assert set(HVP_BY_ARCH) == set(networks.ARCHS)
    assert set(HVP_BY_ARCH.values()) <= set(HVP_METHODS)
    p = problems.make("mlp-teacher", n=16, width=4)
    assert p.hvp_method == HVP_BY_ARCH["mlp"]
    other = next(m for m in HVP_METHODS if m != HVP_BY_ARCH["mlp"])
    monkeypatch.setitem(HVP_BY_ARCH, "mlp", other)
    assert problems.make("mlp-teacher", n=16, width=4).hvp_method == other
