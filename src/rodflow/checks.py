"""Derivative checks for user problems: autodiff against finite differences, once, at ``w0``.

PyTorch can return wrong higher derivatives without a word: a custom ``torch.autograd.Function`` whose backward
is ``@once_differentiable`` drops its part of every HVP (measured: ``1.2w²`` for a true ``0.8 + 1.2w²``), and
fused kernels may have no second derivative at all (``nn.TransformerEncoderLayer``'s attention:
"derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented"). So a problem
built by ``Problem.from_loss``/``from_data``/``from_module`` is checked when it is built:

- HVP: ``H v`` against the central difference ``(∇L(w + h v) − ∇L(w − h v)) / 2h`` (2 gradients, 1 HVP);
- third derivative (when central flow will use it): ``zᵀ ∇(uᵀ H v)`` against
  ``(uᵀ H(w + h z) v − uᵀ H(w − h z) v) / 2h`` (2 HVPs, 1 third-derivative product).

Both run in float64 when the problem can be rebuilt in float64 (finite differences in float32 are too coarse to
tell a small defect from truncation error); the step is h = ε^(1/3)·max(1, rms w) and the tolerance 1e-4
relative in float64 (5e-2 in float32, for losses that exist only in float32). A random direction can cross a
kink of a piecewise-smooth loss (ReLU, max-pooling) where finite differences are meaningless, so a mismatch
must repeat on a second random direction before it is reported.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator

import torch

from .errors import RodflowError

Tensor = torch.Tensor
TOLERANCE = {torch.float64: 1e-4, torch.float32: 5e-2}
DIRECTIONS = 2
_TRUSTED = contextvars.ContextVar("rodflow_trusted_problem", default=False)


@contextlib.contextmanager
def trusted() -> Iterator[None]:
    """Problems built inside are not checked (the registry's own problems, tested in rodflow's test suite)."""
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def wanted(check: bool) -> bool:
    """Whether a constructor called with ``check`` should run the checks."""
    return bool(check) and not _TRUSTED.get()


def check_derivatives(problem, third: bool = False, seed: int = 0, explain: Callable[[str], str] | None = None) -> None:
    """Raise a one-line `RodflowError` if the problem's HVP (and, with ``third``, its third-derivative product)
    disagrees with finite differences at ``w0``. ``explain(cause)`` adds a problem-specific hint (for modules:
    the suspect layer and its replacement). Work is done on a float64 copy when one can be built and is not
    counted in the problem's work counters."""
    p = _float64(problem)
    w = p.w0.detach()
    gen = torch.Generator().manual_seed(seed)
    scale = max(1.0, float(w.square().mean().sqrt()))
    h = torch.finfo(w.dtype).eps ** (1.0 / 3.0) * scale
    tol = TOLERANCE[w.dtype]
    hint = explain or (lambda cause: "")
    saved = p.counts.copy()
    try:
        _check(p, w, gen, h, tol, third, problem.name, hint)
    finally:
        p.counts = saved


def _check(p, w, gen, h, tol, third, name, hint) -> None:
    def direction() -> Tensor:
        v = torch.randn(w.numel(), generator=gen, dtype=torch.float64, device="cpu").to(w)
        return v / v.norm()

    errors = []
    for _ in range(DIRECTIONS):
        v = direction()
        hv = _call(lambda: p.hvp(w, v), "Hessian-vector product", name, hint)
        fd = (p.grad(w + h * v) - p.grad(w - h * v)) / (2 * h)
        err = _relative(hv, fd)
        if err <= tol:
            break
        errors.append(err)
    else:
        raise RodflowError(
            f"problem {name!r}: its Hessian-vector products disagree with finite differences of its gradient "
            f"(relative error {min(errors):.2g} > {tol:g} on {DIRECTIONS} random directions at w0): part of the loss "
            f"is not twice differentiable by autograd{hint('hvp')}; pass check=False to skip this check")
    if not third:
        return
    errors = []
    for _ in range(DIRECTIONS):
        u, v, z = direction(), direction(), direction()
        t = _call(lambda: p.third(w, u, v), "third-derivative product", name, hint)
        exact = float(z @ t)
        fd = (float(u @ p.hvp(w + h * z, v)) - float(u @ p.hvp(w - h * z, v))) / (2 * h)
        err = abs(exact - fd) / max(abs(exact), abs(fd), 1e-300)
        # a third derivative that vanishes (a quadratic loss) is exact: both sides are rounding-level
        if err <= tol or max(abs(exact), abs(fd)) <= 1e3 * torch.finfo(w.dtype).eps * float(p.hvp(w, v).norm()):
            return
        errors.append(err)
    raise RodflowError(
        f"problem {name!r}: its third-derivative products disagree with finite differences of its HVPs "
        f"(relative error {min(errors):.2g} > {tol:g} on {DIRECTIONS} random directions at w0): part of the loss "
        f"is not three times differentiable by autograd{hint('third')}; central flow needs it (pass check=False "
        "to skip this check)")


def _call(fn, what: str, name: str, hint) -> Tensor:
    try:
        return fn()
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RodflowError(f"problem {name!r}: PyTorch cannot compute its {what} ({cause}){hint('raise')}; "
                           "pass check=False to skip this check") from None


def _relative(a: Tensor, b: Tensor) -> float:
    scale = max(float(a.norm()), float(b.norm()))
    if scale == 0.0:
        return 0.0
    return float((a - b).norm()) / scale


def _float64(problem):
    if problem.dtype == torch.float64:
        return problem
    try:
        return problem.to(torch.float64)
    except RodflowError:
        return problem
