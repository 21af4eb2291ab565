"""A `Problem`: a loss over one flat parameter vector, an initial point, and its derivatives.

All derivatives are computed by PyTorch autodiff on the flat vector. A full-batch loss over a dataset is a
sum of *chunks* (each the chunk's share of the mean), so every derivative is accumulated chunk by chunk and
peak memory does not grow with the dataset size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from .errors import RodflowError

Tensor = torch.Tensor
LossFn = Callable[[Tensor], Tensor]

DTYPES = {"float64": torch.float64, "float32": torch.float32}
HVP_METHODS = ("double_backward", "vjp_grad", "jvp_grad")
# Measured (d=5569 tanh MLP, float64, 1 thread): double backward 6.1 ms per HVP, vjp-of-grad 8.0 ms,
# jvp-of-grad 12.6 ms; for a block of 4: 15.4 / 20.5 / 19.9 ms. benchmarks/bench_hvp.py re-measures.
DEFAULT_HVP_METHOD = "double_backward"
# The fastest single-vector HVP path per model family, from the committed measurements of
# benchmarks/bench_hvp.py (docs/performance.md, B6); the network problems pass it as hvp_method=.
HVP_BY_ARCH = {"mlp": "double_backward", "cnn": "double_backward", "resnet": "double_backward",
               "vit": "double_backward", "transformer": "double_backward"}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float64
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise RodflowError(f"dtype {dtype} is not supported; use 'float64' or 'float32'")
        return dtype
    if dtype not in DTYPES:
        raise RodflowError(f"unknown dtype {dtype!r}; use 'float64' or 'float32'")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


@dataclasses.dataclass
class Counts:
    """Work done through a problem: gradient evaluations, HVPs, third-derivative products."""

    loss_evals: int = 0
    grad_evals: int = 0
    hvps: int = 0
    d3: int = 0

    def copy(self) -> "Counts":
        return dataclasses.replace(self)

    def __sub__(self, other: "Counts") -> "Counts":
        return Counts(*(a - b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))


class Problem:
    """A differentiable loss over one flat vector ``w`` with an initial point ``w0``.

    Build one with :meth:`from_loss` (any ``loss_fn(w) -> scalar tensor``), :meth:`from_data` (a mean of
    per-example losses over a dataset, evaluated in chunks) or the registry ``rodflow.problems.make``.
    """

    def __init__(
        self,
        chunks: Sequence[LossFn],
        w0: Tensor,
        name: str = "custom",
        params: dict[str, Any] | None = None,
        rebuild: Callable[[torch.dtype], "Problem"] | None = None,
        hvp_method: str = DEFAULT_HVP_METHOD,
        suggested_lr: float | None = None,
        extras: dict[str, Any] | None = None,
    ):
        if hvp_method not in HVP_METHODS:
            raise RodflowError(f"unknown hvp_method {hvp_method!r}; choose one of {', '.join(HVP_METHODS)}")
        self.chunks = list(chunks)
        self.w0 = _check_w0(w0)
        self.name = name
        self.params = dict(params or {})
        self._rebuild = rebuild
        self.hvp_method = hvp_method
        self.suggested_lr = suggested_lr
        # Problem-specific knowledge other modules may use (e.g. an exact GFS solver).
        self.extras = dict(extras or {})
        self.counts = Counts()
        self._check_loss()

    # ----------------------------------------------------------------------------------------------- build
    @classmethod
    def from_loss(cls, loss_fn: LossFn, w0, name: str = "custom", **kwargs) -> "Problem":
        """A problem from ``loss_fn(w: Tensor) -> scalar Tensor`` and an initial flat vector ``w0``."""
        if not callable(loss_fn):
            raise RodflowError("loss_fn must be callable: loss_fn(w: torch.Tensor) -> scalar tensor")
        return cls([loss_fn], _as_tensor(w0), name=name, **kwargs)

    @classmethod
    def from_data(
        cls,
        example_loss: Callable[..., Tensor],
        data: Sequence[Tensor],
        w0,
        chunk_size: int = 1024,
        name: str = "custom",
        **kwargs,
    ) -> "Problem":
        """Mean of per-example losses over a dataset, evaluated ``chunk_size`` examples at a time.

        ``example_loss(w, *batch)`` returns the vector of per-example losses of one batch, where ``batch``
        holds the rows of every array in ``data`` for that batch.
        """
        data = [torch.as_tensor(a) for a in data]
        if not data:
            raise RodflowError("from_data needs at least one data array")
        n = data[0].shape[0]
        if any(a.shape[0] != n for a in data):
            raise RodflowError("every data array must have the same number of rows (examples)")
        if chunk_size < 1:
            raise RodflowError(f"chunk_size must be a positive integer, got {chunk_size}")
        w0 = _as_tensor(w0)
        data = [a.to(w0.dtype) if a.is_floating_point() else a for a in data]

        def make_chunk(lo: int, hi: int) -> LossFn:
            def chunk(w: Tensor) -> Tensor:
                return example_loss(w, *(a[lo:hi] for a in data)).sum() / n

            return chunk

        chunks = [make_chunk(lo, min(lo + chunk_size, n)) for lo in range(0, n, chunk_size)]

        def rebuild(dtype: torch.dtype) -> "Problem":
            return cls.from_data(example_loss, data, w0.to(dtype), chunk_size=chunk_size, name=name, **kwargs)

        kwargs.setdefault("rebuild", rebuild)
        return cls(chunks, w0, name=name, **kwargs)

    def to(self, dtype: str | torch.dtype) -> "Problem":
        """The same problem in another floating-point precision."""
        dtype = resolve_dtype(dtype)
        if dtype == self.dtype:
            return self
        if self._rebuild is not None:
            return self._rebuild(dtype)
        try:
            return Problem(
                self.chunks,
                self.w0.to(dtype),
                name=self.name,
                params=self.params,
                hvp_method=self.hvp_method,
                suggested_lr=self.suggested_lr,
                extras=self.extras,
            )
        except RuntimeError as exc:
            raise RodflowError(
                f"loss_fn of problem {self.name!r} fails in {dtype_name(dtype)} ({str(exc).splitlines()[0]}); "
                f"build it in that dtype or pass dtype={dtype_name(self.dtype)!r}"
            ) from None

    # ------------------------------------------------------------------------------------------ properties
    @property
    def d(self) -> int:
        return self.w0.numel()

    @property
    def dtype(self) -> torch.dtype:
        return self.w0.dtype

    def __repr__(self) -> str:
        return f"Problem({self.name!r}, d={self.d}, dtype={dtype_name(self.dtype)}, params={self.params})"

    @contextlib.contextmanager
    def counting(self) -> Iterator[Counts]:
        """Context whose value, on exit, holds the work done inside it."""
        before = self.counts.copy()
        delta = Counts()
        try:
            yield delta
        finally:
            spent = self.counts - before
            for f in dataclasses.fields(Counts):
                setattr(delta, f.name, getattr(spent, f.name))

    # ----------------------------------------------------------------------------------------- derivatives
    def loss(self, w: Tensor) -> Tensor:
        """L(w) as a 0-d tensor (no graph)."""
        self.counts.loss_evals += 1
        with torch.no_grad():
            return sum(f(w) for f in self.chunks)

    def loss_grad(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """(L(w), ∇L(w)); one gradient evaluation."""
        self.counts.grad_evals += 1
        total = torch.zeros((), dtype=w.dtype)
        grad = torch.zeros_like(w)
        for f in self.chunks:
            x = w.detach().requires_grad_(True)
            with torch.enable_grad():
                value = f(x)
                (g,) = torch.autograd.grad(value, x)
            total = total + value.detach()
            grad += g
        return total, grad

    def grad(self, w: Tensor) -> Tensor:
        return self.loss_grad(w)[1]

    def hvp(self, w: Tensor, v: Tensor) -> Tensor:
        """H(w) v; one HVP."""
        return self.hvp_block(w, v[:, None])[:, 0]

    def hvp_block(self, w: Tensor, V: Tensor) -> Tensor:
        """H(w) V for a (d, m) block V; m HVPs."""
        self.counts.hvps += V.shape[1]
        out = torch.zeros_like(V)
        w = w.detach()
        for f in self.chunks:
            out += _hvp_block(f, w, V, self.hvp_method)
        return out

    def hvp_operator(self, w: Tensor) -> Callable[[Tensor], Tensor]:
        """V ↦ H(w) V for (d, m) blocks at a fixed ``w``, for an eigensolver's many calls at one point.

        For a one-chunk loss the gradient graph (or the linearisation of the gradient) is built once and reused
        by every call, which halves the cost of an HVP on small networks (where building it is half the time);
        the values are the same as ``hvp_block``'s. A chunked loss keeps ``hvp_block``'s chunk-at-a-time memory.
        """
        w = w.detach()
        if len(self.chunks) != 1 or self.hvp_method == "jvp_grad":
            return lambda V: self.hvp_block(w, V)
        f = self.chunks[0]
        if self.hvp_method == "vjp_grad":
            _, vjp_fn = torch.func.vjp(torch.func.grad(f), w)
            batched = torch.func.vmap(lambda v: vjp_fn(v)[0], in_dims=1, out_dims=1)

            def matmat(V: Tensor) -> Tensor:
                self.counts.hvps += V.shape[1]
                return batched(V)

            return matmat
        x = w.clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(f(x), x, create_graph=True)

        def matmat(V: Tensor) -> Tensor:
            self.counts.hvps += V.shape[1]
            if not g.requires_grad:  # loss linear in w: zero Hessian
                return torch.zeros_like(V)
            cols = []
            for j in range(V.shape[1]):
                (hv,) = torch.autograd.grad(g, x, V[:, j], retain_graph=True, allow_unused=True)
                cols.append(torch.zeros_like(w) if hv is None else hv)
            return torch.stack(cols, dim=1)

        return matmat

    def third(self, w: Tensor, u: Tensor, v: Tensor) -> Tensor:
        """∇_w (uᵀ H(w) v), the third derivative contracted twice; one third-derivative product."""
        self.counts.d3 += 1
        out = torch.zeros_like(w)
        for f in self.chunks:
            x = w.detach().requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(f(x), x, create_graph=True)
                if not g.requires_grad:  # loss linear in w
                    continue
                (hv,) = torch.autograd.grad(g @ v, x, create_graph=True, allow_unused=True)
                if hv is None or not hv.requires_grad:  # loss quadratic in w
                    continue
                (t,) = torch.autograd.grad(hv @ u, x, allow_unused=True)
            if t is not None:
                out += t
        return out

    def hessian(self, w: Tensor) -> Tensor:
        """Dense Hessian by d HVPs (small problems and tests only)."""
        H = self.hvp_block(w, torch.eye(self.d, dtype=w.dtype))
        return 0.5 * (H + H.T)

    # ------------------------------------------------------------------------------------------ checking
    def _check_loss(self) -> None:
        w = self.w0
        for f in self.chunks:
            try:
                value = f(w)
            except Exception as exc:  # the user's function: report it in one line
                raise RodflowError(
                    f"loss_fn of problem {self.name!r} raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                ) from None
            if not isinstance(value, torch.Tensor) or value.numel() != 1 or value.dim() > 1:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise RodflowError(
                    f"loss_fn must return a scalar tensor, got {shape}; reduce it (e.g. .sum() or .mean())"
                )
            if not value.is_floating_point():
                raise RodflowError("loss_fn must return a floating-point tensor")


def _hvp_block(f: LossFn, w: Tensor, V: Tensor, method: str) -> Tensor:
    if method == "double_backward":
        x = w.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(f(x), x, create_graph=True)
            if not g.requires_grad:  # loss linear in w: zero Hessian
                return torch.zeros_like(V)
            cols = []
            for j in range(V.shape[1]):
                (hv,) = torch.autograd.grad(g, x, V[:, j], retain_graph=j < V.shape[1] - 1, allow_unused=True)
                cols.append(torch.zeros_like(w) if hv is None else hv)
        return torch.stack(cols, dim=1)
    grad_f = torch.func.grad(f)
    if method == "vjp_grad":
        _, vjp_fn = torch.func.vjp(grad_f, w)
        return torch.func.vmap(lambda v: vjp_fn(v)[0], in_dims=1, out_dims=1)(V)
    # jvp_grad: forward-over-reverse
    return torch.func.vmap(lambda v: torch.func.jvp(grad_f, (w,), (v,))[1], in_dims=1, out_dims=1)(V)


def _as_tensor(w0) -> Tensor:
    if isinstance(w0, torch.Tensor):
        t = w0.detach().clone()
    else:
        try:
            t = torch.as_tensor(np.asarray(w0, dtype=float))
        except (TypeError, ValueError):
            raise RodflowError(f"w0 must be a flat vector of numbers, got {type(w0).__name__}") from None
    if not t.is_floating_point():
        t = t.to(torch.float64)
    return t


def _check_w0(w0: Tensor) -> Tensor:
    if w0.dim() != 1:
        raise RodflowError(
            f"w0 must be a flat 1-D vector, got shape {tuple(w0.shape)}; flatten it with w0.reshape(-1)"
        )
    if w0.numel() == 0:
        raise RodflowError("w0 is empty; a problem needs at least one parameter")
    if w0.dtype not in DTYPES.values():
        raise RodflowError(f"w0 has dtype {w0.dtype}; use float64 or float32")
    if not bool(torch.isfinite(w0).all()):
        raise RodflowError("w0 contains NaN or infinite entries")
    return w0


def finite(x: float | Tensor) -> bool:
    return math.isfinite(float(x))
