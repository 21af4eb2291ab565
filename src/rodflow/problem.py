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

from .devices import resolve_device
from .errors import RodflowError

Tensor = torch.Tensor
LossFn = Callable[[Tensor], Tensor]
ResidualFn = Callable[[Tensor], Tensor]

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
    """Work done through a problem: gradient evaluations, HVPs, third-derivative products, and Jacobian
    products of a least-squares residual (one per ``J v`` or ``Jᵀ u``)."""

    loss_evals: int = 0
    grad_evals: int = 0
    hvps: int = 0
    d3: int = 0
    jvps: int = 0

    def copy(self) -> "Counts":
        return dataclasses.replace(self)

    def __sub__(self, other: "Counts") -> "Counts":
        return Counts(*(a - b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))


class Problem:
    """A differentiable loss over one flat vector ``w`` with an initial point ``w0``.

    Build one with :meth:`from_loss` (any ``loss_fn(w) -> scalar tensor``), :meth:`from_residual` (a least-squares
    loss ``½‖r(w)‖²``), :meth:`from_data` (a mean of per-example losses over a dataset, evaluated in chunks) or
    the registry ``rodflow.problems.make``.

    A problem may also know its loss as a least-squares residual (``residuals``: one function per chunk, with
    ``L(w) = ½ Σ_chunks ‖r_c(w)‖²``, checked at ``w0``); then :meth:`jacobian_operator` gives ``J v`` and ``Jᵀ u``
    (the Gauss-Newton structure the GFS solver uses). Every MSE problem of the registry has one.
    """

    def __init__(
        self,
        chunks: Sequence[LossFn],
        w0: Tensor,
        name: str = "custom",
        params: dict[str, Any] | None = None,
        rebuild: Callable[[torch.dtype, torch.device], "Problem"] | None = None,
        hvp_method: str = DEFAULT_HVP_METHOD,
        suggested_lr: float | None = None,
        extras: dict[str, Any] | None = None,
        residuals: Sequence[ResidualFn] | None = None,
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
        self.residuals = list(residuals) if residuals is not None else None
        if self.residuals is not None and len(self.residuals) != len(self.chunks):
            raise RodflowError("residuals must give one residual function per loss chunk")
        # set by the user-facing constructors: how to explain a failed derivative check, and which checks ran
        self.derivative_check: dict[str, Any] | None = None
        self._check_loss()
        self._check_residuals()

    # ----------------------------------------------------------------------------------------------- build
    @classmethod
    def from_loss(cls, loss_fn: LossFn, w0, name: str = "custom", dtype=None, device=None, check: bool = True,
                  **kwargs) -> "Problem":
        """A problem from ``loss_fn(w: Tensor) -> scalar Tensor`` and an initial flat vector ``w0``.

        ``dtype``/``device`` convert ``w0`` (default: keep its own); ``loss_fn`` must accept a ``w`` of that
        dtype on that device (tensors it closes over must live there too). ``check`` compares the HVP with
        finite differences of the gradient at ``w0`` (``rodflow.checks``; the third derivative too when a run
        uses central flow) and fails with one line on a mismatch."""
        if not callable(loss_fn):
            raise RodflowError("loss_fn must be callable: loss_fn(w: torch.Tensor) -> scalar tensor")
        problem = cls([loss_fn], _placed(_as_tensor(w0), dtype, device), name=name, **kwargs)
        return problem._checked(check)

    def _checked(self, check: bool, explain: Callable[[str], str] | None = None) -> "Problem":
        from . import checks

        if checks.wanted(check):
            checks.check_derivatives(self, explain=explain)
            self.derivative_check = {"explain": explain, "third": False}
        return self

    def check_third_derivative(self) -> None:
        """The third-derivative check of a user problem (once; central flow calls it before a run)."""
        from . import checks

        info = self.derivative_check
        if info is not None and not info["third"]:
            checks.check_derivatives(self, third=True, explain=info["explain"])
            info["third"] = True

    @classmethod
    def from_residual(cls, residual_fn: ResidualFn, w0, name: str = "custom", dtype=None, device=None,
                      check: bool = True, **kwargs) -> "Problem":
        """The least-squares problem ``L(w) = ½‖r(w)‖²`` from ``residual_fn(w) -> tensor`` (any shape)."""
        if not callable(residual_fn):
            raise RodflowError("residual_fn must be callable: residual_fn(w: torch.Tensor) -> tensor of residuals")

        def residual(w: Tensor) -> Tensor:
            return residual_fn(w).reshape(-1)

        def loss(w: Tensor) -> Tensor:
            r = residual(w)
            return 0.5 * (r * r).sum()

        problem = cls([loss], _placed(_as_tensor(w0), dtype, device), name=name, residuals=[residual], **kwargs)
        return problem._checked(check)

    @classmethod
    def from_data(
        cls,
        example_loss: Callable[..., Tensor],
        data: Sequence[Tensor],
        w0,
        chunk_size: int = 1024,
        name: str = "custom",
        example_residual: Callable[..., Tensor] | None = None,
        dtype=None,
        device=None,
        check: bool = True,
        explain: Callable[[str], str] | None = None,
        **kwargs,
    ) -> "Problem":
        """Mean of per-example losses over a dataset, evaluated ``chunk_size`` examples at a time.

        ``example_loss(w, *batch)`` returns the vector of per-example losses of one batch, where ``batch``
        holds the rows of every array in ``data`` for that batch. Optional ``example_residual(w, *batch)``
        returns one residual row per example with ``example_loss = ½‖row‖²`` (a least-squares loss, e.g. MSE);
        it gives the problem its Gauss-Newton structure (:meth:`jacobian_operator`). ``dtype``/``device``
        (default: ``w0``'s) place ``w0`` and the floating-point data; integer data (labels) keep their dtype.
        ``check`` runs the derivative checks of :meth:`from_loss`.
        """
        data = [a if isinstance(a, torch.Tensor) else torch.from_numpy(np.array(a)) for a in data]
        if not data:
            raise RodflowError("from_data needs at least one data array")
        n = data[0].shape[0]
        if any(a.shape[0] != n for a in data):
            raise RodflowError("every data array must have the same number of rows (examples)")
        if chunk_size < 1:
            raise RodflowError(f"chunk_size must be a positive integer, got {chunk_size}")
        w0 = _placed(_as_tensor(w0), dtype, device)
        data = [(a.to(device=w0.device, dtype=w0.dtype) if a.is_floating_point() else a.to(w0.device)) for a in data]

        def make_chunk(lo: int, hi: int) -> LossFn:
            def chunk(w: Tensor) -> Tensor:
                return example_loss(w, *(a[lo:hi] for a in data)).sum() / n

            return chunk

        def make_residual(lo: int, hi: int) -> ResidualFn:
            scale = 1.0 / math.sqrt(n)

            def residual(w: Tensor) -> Tensor:
                return example_residual(w, *(a[lo:hi] for a in data)).reshape(-1) * scale

            return residual

        bounds = [(lo, min(lo + chunk_size, n)) for lo in range(0, n, chunk_size)]
        _check_per_example(example_loss, w0, [a[: bounds[0][1]] for a in data])
        chunks = [make_chunk(lo, hi) for lo, hi in bounds]
        if example_residual is not None:
            kwargs["residuals"] = [make_residual(lo, hi) for lo, hi in bounds]

        def rebuild(dtype: torch.dtype, device: torch.device) -> "Problem":
            kw = {k: v for k, v in kwargs.items() if k != "residuals"}
            return cls.from_data(example_loss, data, w0, chunk_size=chunk_size, name=name,
                                 example_residual=example_residual, dtype=dtype, device=device, check=False, **kw)

        kwargs.setdefault("rebuild", rebuild)
        return cls(chunks, w0, name=name, **kwargs)._checked(check, explain)

    @classmethod
    def from_module(cls, module, data, loss="mse", chunk_size: int = 1024, name: str | None = None, dtype=None,
                    device=None, check: bool = True, plain: bool = False, **kwargs) -> "Problem":
        """The full-batch loss of any ``torch.nn.Module`` on a dataset.

        ``w`` is the module's trainable parameters flattened in ``named_parameters()`` order; ``w0`` their
        current value (the module itself is copied, never changed; buffers and frozen parameters are kept).
        ``data`` is ``(inputs, targets)`` (or ``(input1, ..., targets)``, or a ``TensorDataset``) with one row
        per example. ``loss``: ``"mse"`` (per example ``½‖f(x) − y‖²``; integer labels become one-hot targets;
        it gives the problem its Gauss-Newton residual), ``"ce"`` (cross-entropy on integer labels), or a
        callable ``loss(outputs, targets)`` returning one loss per example; sequence outputs ``(n, T, k)`` are
        averaged over positions. ``dtype`` defaults to the module's own; ``device`` to the CPU. BatchNorm and
        dropout must be in eval mode. Derivatives are checked as in :meth:`from_loss`; a mismatch names the
        module's fragile layers and their plain-op replacements in ``rodflow.models``; ``plain=True`` swaps every
        ``nn.LayerNorm`` for ``rodflow.models.LayerNorm`` (same values; PyTorch's has a wrong third derivative,
        which central flow uses). See ``rodflow.modules``.
        """
        from .modules import from_module

        return from_module(module, data, loss=loss, chunk_size=chunk_size, name=name, dtype=dtype, device=device,
                           check=check, plain=plain, **kwargs)

    def to(self, dtype: str | torch.dtype | None = None, device: str | torch.device | None = None) -> "Problem":
        """The same problem in another floating-point precision and/or on another device (default: unchanged).

        Registry and ``from_data`` problems rebuild themselves (data included); a ``from_loss`` problem keeps
        its functions, which must then accept ``w`` in the new dtype/device."""
        dtype = self.dtype if dtype is None else resolve_dtype(dtype)
        device = self.device if device is None else resolve_device(device)
        if dtype == self.dtype and device == self.device:
            return self
        if self._rebuild is not None:
            moved = self._rebuild(dtype, device)
            moved.derivative_check = self.derivative_check
            return moved
        where = dtype_name(dtype) if device == self.device else f"{dtype_name(dtype)} on {device}"
        try:
            moved = Problem(
                self.chunks,
                self.w0.to(device=device, dtype=dtype),
                name=self.name,
                params=self.params,
                hvp_method=self.hvp_method,
                suggested_lr=self.suggested_lr,
                extras=self.extras,
                residuals=self.residuals,
            )
            moved.derivative_check = self.derivative_check
            return moved
        except (RuntimeError, RodflowError) as exc:
            raise RodflowError(
                f"loss_fn of problem {self.name!r} fails in {where} ({str(exc).splitlines()[0]}); build it there "
                f"(tensors it uses on that device, in that dtype) or keep dtype={dtype_name(self.dtype)!r}, "
                f"device={str(self.device)!r}"
            ) from None

    # ------------------------------------------------------------------------------------------ properties
    @property
    def d(self) -> int:
        return self.w0.numel()

    @property
    def dtype(self) -> torch.dtype:
        return self.w0.dtype

    @property
    def device(self) -> torch.device:
        return self.w0.device

    def __repr__(self) -> str:
        where = "" if self.device.type == "cpu" else f", device={self.device}"
        return f"Problem({self.name!r}, d={self.d}, dtype={dtype_name(self.dtype)}{where}, params={self.params})"

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
        total = torch.zeros((), dtype=w.dtype, device=w.device)
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

    @property
    def has_residual(self) -> bool:
        """Whether the loss is known as a least-squares residual ``½‖r(w)‖²``."""
        return self.residuals is not None

    def residual(self, w: Tensor) -> Tensor:
        """The flat residual r(w) (all chunks concatenated), ``L = ½‖r‖²``; one loss evaluation."""
        self._need_residual()
        self.counts.loss_evals += 1
        with torch.no_grad():
            return torch.cat([f(w.detach()).reshape(-1) for f in self.residuals])

    def jacobian_operator(self, w: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
        """``(r(w), v ↦ J v, u ↦ Jᵀ u)`` at a fixed ``w`` with ``J = ∂r/∂w`` (m × d), for a least-squares solver's
        many products at one point. Each chunk's graph is built once (one gradient evaluation) and reused; each
        product counts one ``jvps``. ``J v`` is the derivative of the linear map ``u ↦ Jᵀ u`` (double backward,
        the same autodiff path as the default HVP)."""
        self._need_residual()
        self.counts.grad_evals += 1
        xs, outs, duals, jtus = [], [], [], []
        with torch.enable_grad():
            for f in self.residuals:
                x = w.detach().clone().requires_grad_(True)
                out = f(x).reshape(-1)
                u = torch.zeros_like(out, requires_grad=True)
                if out.requires_grad:
                    (jtu,) = torch.autograd.grad(out, x, u, create_graph=True, allow_unused=True)
                else:  # a residual that does not depend on w
                    jtu = None
                xs.append(x)
                outs.append(out)
                duals.append(u)
                jtus.append(jtu)
        sizes = [o.numel() for o in outs]
        r = torch.cat([o.detach() for o in outs])

        def jv(v: Tensor) -> Tensor:
            self.counts.jvps += 1
            parts = []
            for u, jtu, m in zip(duals, jtus, sizes):
                if jtu is None or not jtu.requires_grad:
                    parts.append(torch.zeros(m, dtype=w.dtype, device=w.device))
                    continue
                (p,) = torch.autograd.grad(jtu, u, v, retain_graph=True, allow_unused=True)
                parts.append(torch.zeros(m, dtype=w.dtype, device=w.device) if p is None else p)
            return torch.cat(parts)

        def jtu_(u: Tensor) -> Tensor:
            self.counts.jvps += 1
            total = torch.zeros_like(w)
            for x, out, part in zip(xs, outs, torch.split(u, sizes)):
                if not out.requires_grad:
                    continue
                (g,) = torch.autograd.grad(out, x, part, retain_graph=True, allow_unused=True)
                if g is not None:
                    total += g
            return total

        return r, jv, jtu_

    def _need_residual(self) -> None:
        if self.residuals is None:
            raise RodflowError(f"problem {self.name!r} has no least-squares residual; build it with "
                               "Problem.from_residual or from_data(..., example_residual=...)")

    def hessian(self, w: Tensor) -> Tensor:
        """Dense Hessian by d HVPs (small problems and tests only)."""
        H = self.hvp_block(w, torch.eye(self.d, dtype=w.dtype, device=w.device))
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

    def _check_residuals(self) -> None:
        if self.residuals is None:
            return
        w = self.w0
        try:
            with torch.no_grad():
                half = sum(0.5 * float((r(w).reshape(-1) ** 2).sum()) for r in self.residuals)
        except Exception as exc:
            raise RodflowError(f"residual function of problem {self.name!r} raised {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        with torch.no_grad():
            loss = float(sum(f(w) for f in self.chunks))
        tol = 1e3 * float(torch.finfo(w.dtype).eps) * max(1.0, abs(loss))
        if not abs(half - loss) <= tol:
            raise RodflowError(f"the residual does not match the loss at w0: ½‖r‖² = {half:.6g} but L = {loss:.6g}; "
                               "the residual must satisfy L(w) = ½‖r(w)‖²")


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
            t = torch.from_numpy(np.array(w0, dtype=float))
        except (TypeError, ValueError):
            raise RodflowError(f"w0 must be a flat vector of numbers, got {type(w0).__name__}") from None
    if not t.is_floating_point():
        t = t.to(torch.float64)
    return t


def _check_per_example(example_loss, w0: Tensor, batch: list[Tensor]) -> None:
    """``example_loss`` must return one loss per example: a mean or sum would be divided by n again."""
    try:
        with torch.no_grad():
            out = example_loss(w0, *batch)
    except Exception as exc:  # the user's function: report it in one line
        raise RodflowError(f"example_loss raised {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    m = batch[0].shape[0]
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (m,):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise RodflowError(f"example_loss must return one loss per example, shape ({m},) for a batch of {m}, got "
                           f"{shape}; do not reduce it with .mean() or .sum() (rodflow averages over the dataset)")


def _placed(w0: Tensor, dtype, device) -> Tensor:
    """``w0`` converted to the requested dtype/device (each ``None``: keep)."""
    return w0.to(device=None if device is None else resolve_device(device),
                 dtype=None if dtype is None else resolve_dtype(dtype))


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
