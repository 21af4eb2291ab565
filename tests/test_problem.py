"""Problems: derivatives against finite differences, chunking, HVP paths, input validation."""

import math

import numpy as np
import pytest
import torch

import rodflow
from rodflow import Problem, RodflowError, problems

TOL_FD = 1e-6


def fd_grad(problem, w, h=1e-6):
    out = torch.zeros_like(w)
    for i in range(w.numel()):
        e = torch.zeros_like(w)
        e[i] = h
        out[i] = (problem.loss(w + e) - problem.loss(w - e)) / (2 * h)
    return out


def random_point(problem, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return problem.w0 + scale * torch.randn(problem.d, dtype=problem.dtype, generator=g)


def tiny_mlp(n=40, chunk=None):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(n, 3, dtype=torch.float64, generator=g)
    Y = torch.randn(n, dtype=torch.float64, generator=g)
    sizes = [(3, 5), (5, 1)]
    d = sum(a * b + b for a, b in sizes)

    def forward(w, x):
        W1 = w[:15].view(3, 5)
        b1 = w[15:20]
        W2 = w[20:25].view(5, 1)
        return (torch.tanh(x @ W1 + b1) @ W2)[:, 0] + w[25]

    w0 = 0.5 * torch.randn(d, dtype=torch.float64, generator=g)
    if chunk is None:
        return Problem.from_loss(lambda w: 0.5 * ((forward(w, X) - Y) ** 2).mean(), w0, name="mlp")
    return Problem.from_data(lambda w, x, y: 0.5 * (forward(w, x) - y) ** 2, (X, Y), w0, chunk_size=chunk)


# The closed-form families (networks have their own finite-difference tests in test_networks.py).
SMALL_FAMILIES = ("rodflow.problems.toys", "rodflow.problems.diagonal")
SMALL = [n for n in problems.names() if problems.REGISTRY.get(n).__module__ in SMALL_FAMILIES]
ALL = [(name, lambda name=name: problems.make(name)) for name in SMALL] + [("mlp", tiny_mlp)]


@pytest.mark.parametrize("name,build", ALL, ids=[a for a, _ in ALL])
def test_derivatives_match_finite_differences(name, build):
    problem = build()
    w = random_point(problem, scale=0.2)
    loss, g = problem.loss_grad(w)
    assert torch.allclose(loss, problem.loss(w))
    fd = fd_grad(problem, w)
    assert float((g - fd).norm()) <= TOL_FD * max(1.0, float(fd.norm()))
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(problem.d, dtype=problem.dtype, generator=gen)
    v = torch.randn(problem.d, dtype=problem.dtype, generator=gen)
    h = 1e-5
    hv = problem.hvp(w, v)
    hv_fd = (problem.grad(w + h * v) - problem.grad(w - h * v)) / (2 * h)
    assert float((hv - hv_fd).norm()) <= 1e-6 * max(1.0, float(hv_fd.norm()))
    t = problem.third(w, u, v)
    t_fd = (problem.hvp(w + h * u, v) - problem.hvp(w - h * u, v)) / (2 * h)  # ∇(uᵀHv) = D³L[u, v] by symmetry
    assert float((t - t_fd).norm()) <= 1e-6 * max(1.0, float(t_fd.norm()))


def test_third_derivative_of_quartic_closed_form():
    p = problems.make("quartic", S=3.0, Q=2.0)
    w = torch.tensor([0.7], dtype=torch.float64)
    one = torch.ones(1, dtype=torch.float64)
    assert float(p.third(w, one, one)) == pytest.approx(-6 * 2.0 * 0.7, rel=1e-12)
    assert float(p.hessian(w)[0, 0]) == pytest.approx(3.0 - 3 * 2.0 * 0.49, rel=1e-12)


@pytest.mark.parametrize("method", rodflow.problem.HVP_METHODS)
def test_hvp_methods_agree(method):
    ref = tiny_mlp()
    p = Problem.from_loss(ref.chunks[0], ref.w0, hvp_method=method)
    V = torch.randn(p.d, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w = random_point(p)
    expected = torch.stack([ref.hvp(w, V[:, j]) for j in range(3)], dim=1)
    assert torch.allclose(p.hvp_block(w, V), expected, rtol=1e-10, atol=1e-12)
    assert p.counts.hvps == 3


def test_chunked_loss_equals_full_batch():
    full = tiny_mlp()
    w = random_point(full)
    u = torch.ones(full.d, dtype=torch.float64)
    for chunk in (1, 7, 40, 1000):
        p = tiny_mlp(chunk=chunk)
        assert len(p.chunks) == math.ceil(40 / chunk)
        assert torch.allclose(p.loss(w), full.loss(w), rtol=1e-13)
        assert torch.allclose(p.grad(w), full.grad(w), rtol=1e-12, atol=1e-14)
        assert torch.allclose(p.hvp(w, u), full.hvp(w, u), rtol=1e-12, atol=1e-14)
        assert torch.allclose(p.third(w, u, u), full.third(w, u, u), rtol=1e-11, atol=1e-13)


def test_counts_track_work():
    p = problems.make("quadratic")
    with p.counting() as spent:
        p.grad(p.w0)
        p.hvp_block(p.w0, torch.eye(3, dtype=torch.float64))
        p.third(p.w0, p.w0, p.w0)
    assert (spent.grad_evals, spent.hvps, spent.d3) == (1, 3, 1)


def test_float32_rebuild():
    p = problems.make("scalar-network", depth=3).to("float32")
    assert p.dtype == torch.float32 and p.loss(p.w0).dtype == torch.float32
    assert p.params["depth"] == 3


def test_registry_defaults_and_overrides():
    assert len(SMALL) >= 6
    for name in SMALL:
        p = problems.make(name)
        assert math.isfinite(float(p.loss(p.w0))) and p.suggested_lr > 0
    p = problems.make("quadratic", lambdas=[2.0, 3.0], w0=[1.0, -1.0])
    assert float(p.loss(p.w0)) == pytest.approx(2.5)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: problems.make("no-such-problem"), "unknown problem"),
        (lambda: problems.make("quadratic", lambdaz=[1.0]), "did you mean 'lambdas'"),
        (lambda: problems.make("quadratic", w0=[1.0]), "w0 must have 3 entries"),
        (lambda: problems.make("quartic", Q=-1.0), "Q > 0"),
        (lambda: Problem.from_loss(lambda w: w * 2, torch.ones(3)), "scalar tensor"),
        (lambda: Problem.from_loss(lambda w: (w**2).sum(), torch.ones(2, 2)), "flat 1-D vector"),
        (lambda: Problem.from_loss(lambda w: (w**2).sum(), [1.0, float("nan")]), "NaN"),
        (lambda: Problem.from_loss("not callable", torch.ones(2)), "callable"),
        (lambda: Problem.from_loss(lambda w: undefined_name, torch.ones(2)), "raised NameError"),  # noqa: F821
    ],
)
def test_bad_problem_input_is_one_line_error(call, match):
    with pytest.raises(RodflowError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------- least-squares residuals
RESIDUAL_PROBLEMS = [
    ("scalar-network", dict(depth=3, y=1.5)),
    ("squared-regression", dict(n=6, dim=9)),
    ("diagonal-linear-network", dict(n=5, dim=7, v_scale=0.4)),
    ("mlp-digits", dict(n=9, classes=3, width=4, depth=1, chunk_size=4)),  # three chunks
    ("cnn-digits", dict(n=4, classes=2, width=2)),
    ("transformer-sorting", dict(n=3, width=4, depth=1, heads=1)),  # residual averaged over positions
]


@pytest.mark.parametrize("name,kw", RESIDUAL_PROBLEMS, ids=[r[0] for r in RESIDUAL_PROBLEMS])
def test_jacobian_operator_matches_the_autograd_jacobian(name, kw):
    p = problems.make(name, **kw)
    assert p.has_residual
    w = random_point(p, scale=0.2)
    r, jv, jtu = p.jacobian_operator(w)
    full = lambda x: torch.cat([f(x).reshape(-1) for f in p.residuals])  # noqa: E731
    J = torch.autograd.functional.jacobian(full, w)
    g = torch.Generator().manual_seed(3)
    v = torch.randn(p.d, dtype=torch.float64, generator=g)
    u = torch.randn(r.numel(), dtype=torch.float64, generator=g)
    before = p.counts.jvps
    assert torch.allclose(jv(v), J @ v, rtol=1e-12, atol=1e-13)
    assert torch.allclose(jtu(u), J.T @ u, rtol=1e-12, atol=1e-13)
    assert p.counts.jvps - before == 2
    loss, grad = p.loss_grad(w)
    assert float(0.5 * r @ r) == pytest.approx(float(loss), rel=1e-12, abs=1e-15)  # L = ½‖r‖²
    assert torch.allclose(J.T @ r, grad, rtol=1e-10, atol=1e-13)  # ∇L = Jᵀr
    assert torch.equal(p.residual(w), r)


def test_from_residual_and_residual_contract():
    p = Problem.from_residual(lambda w: torch.stack([w[0] ** 2 - 1.0, w[0] * w[1] - 2.0]), [1.5, 0.5])
    w = torch.tensor([1.5, 0.5], dtype=torch.float64)
    assert p.has_residual and float(p.loss(w)) == pytest.approx(0.5 * (1.25**2 + 1.25**2))
    r, jv, jtu = p.jacobian_operator(w)
    assert torch.allclose(jv(torch.tensor([1.0, 0.0], dtype=torch.float64)), torch.tensor([3.0, 0.5], dtype=torch.float64))
    assert p.to("float32").has_residual
    plain = Problem.from_loss(lambda w: (w**2).sum(), [1.0, 2.0])
    assert not plain.has_residual
    with pytest.raises(RodflowError, match="no least-squares residual"):
        plain.jacobian_operator(plain.w0)
    with pytest.raises(RodflowError, match="does not match the loss"):
        Problem.from_loss(lambda w: (w**2).sum(), [1.0, 2.0], residuals=[lambda w: w])  # ½‖w‖² ≠ ‖w‖²
    with pytest.raises(RodflowError, match="one residual function per loss chunk"):
        Problem.from_loss(lambda w: (w**2).sum(), [1.0, 2.0], residuals=[lambda w: w, lambda w: w])
    assert not problems.make("mlp-digits", n=6, classes=2, width=2, depth=1, loss="ce").has_residual


class _Cube(torch.autograd.Function):
    """w ↦ 0.2 w⁴ with a backward that autograd cannot differentiate again."""

    @staticmethod
    def forward(ctx, w):
        ctx.save_for_backward(w)
        return 0.2 * w**4

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (w,) = ctx.saved_tensors
        return grad * 0.8 * w**3


def test_derivative_check_catches_a_once_differentiable_function():
    def loss(w):
        return (0.4 * w**2).sum() + _Cube.apply(w).sum()

    with pytest.raises(rodflow.RodflowError, match="Hessian-vector products disagree with finite differences") as info:
        rodflow.Problem.from_loss(loss, [1.0, -0.5, 2.0])
    assert "\n" not in str(info.value) and "check=False" in str(info.value)
    p = rodflow.Problem.from_loss(loss, [1.0, -0.5, 2.0], check=False)  # the escape hatch
    assert p.d == 3


def test_derivative_check_passes_correct_losses_and_runs_the_third_check_for_central_flow():
    p = rodflow.Problem.from_loss(lambda w: (torch.relu(w) ** 3).sum() + (w**2).sum(), [0.3, -0.2, 1.0])
    assert p.derivative_check == {"explain": None, "third": False}
    rodflow.simulate(p, lr=0.1, steps=2, methods=["gd", "central_flow"], progress=False)
    assert p.derivative_check["third"] is True


def test_from_data_rejects_a_reduced_per_example_loss():
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    with pytest.raises(rodflow.RodflowError, match=r"one loss per example, shape \(4,\).*got \(\)"):
        rodflow.Problem.from_data(lambda w, xb, yb: ((xb @ w - yb) ** 2).mean(), [x, y], torch.zeros(3),
                                  chunk_size=4)
