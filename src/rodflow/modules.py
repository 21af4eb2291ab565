"""A user's ``torch.nn.Module`` as a :class:`rodflow.Problem` (``Problem.from_module``).

The module's trainable parameters (``requires_grad``, in ``named_parameters()`` order) are flattened into one
vector ``w``; ``w0`` is their current value. The module is evaluated with ``torch.func.functional_call`` on a
private copy (the caller's module is never changed); frozen parameters and buffers keep their values.

Higher derivatives through standard layers: every forward runs with PyTorch's math attention kernel
(``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``) and the ``nn.MultiheadAttention`` fast path off, because
the fused CPU attention kernel has no second derivative (measured with torch 2.13:
``nn.TransformerEncoderLayer`` HVPs raise "derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward
is not implemented"; under the math kernel they match finite differences to 1.6e-9). Layers that would make
the loss depend on how the data are chunked or on chance (BatchNorm or dropout in training mode) are refused.
Everything else is caught by the derivative checks of ``rodflow.checks``; on a mismatch the error names the
module's layers known to be fragile and rodflow's plain-op replacement.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import models
from .errors import RodflowError

Tensor = torch.Tensor

# layers whose higher derivatives PyTorch has got wrong or could not take, with rodflow's plain-op replacement
FRAGILE = (
    (nn.LayerNorm, "rodflow.models.LayerNorm"),
    (nn.MultiheadAttention, "rodflow.models.Attention"),
    (nn.TransformerEncoderLayer, "rodflow.models.Block"),
    (nn.TransformerDecoderLayer, "rodflow.models.Block"),
)
# layers whose training mode makes the full-batch loss ill-defined
TRAINING_ONLY = (
    (nn.modules.batchnorm._BatchNorm,
     "normalises with each chunk's statistics (the loss would depend on chunk_size) and updates its buffers"),
    (nn.modules.dropout._DropoutNd, "drops random units, so the loss is not a function of w"),
)


@contextlib.contextmanager
def plain_attention() -> Iterator[None]:
    """PyTorch's math attention kernel (differentiable to any order) and no MultiheadAttention fast path."""
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


class ModuleFunction(models.FlatModel):
    """``f(w, *inputs)``: the module evaluated on the trainable parameters cut from the flat vector ``w``."""

    def __init__(self, module: nn.Module):
        super().__init__(module, trainable_only=True)
        if not self.names:
            raise RodflowError("the module has no trainable parameters (none with requires_grad=True)")

    def initial(self, dtype: torch.dtype | None = None) -> Tensor:
        return super().initial(dtype)

    def __call__(self, w: Tensor, *inputs: Tensor) -> Tensor:
        with plain_attention():
            out = torch.func.functional_call(self.module, self.unflatten(w), inputs)
        if not isinstance(out, torch.Tensor):
            raise RodflowError(f"the module must return one tensor of outputs, got {type(out).__name__}; wrap it in "
                               "a module whose forward returns the tensor the loss is computed from")
        return out


def per_example_loss(loss: str | Callable[[Tensor, Tensor], Tensor], classes: int | None):
    """``(per-example loss, per-example residual or None)`` from ``loss`` = "mse", "ce" or a callable."""
    if callable(loss):
        return loss, None
    if loss not in models.LOSSES:
        raise RodflowError(f"unknown loss {loss!r}; use 'mse', 'ce' or a callable loss(outputs, targets) returning "
                           "one loss per example")
    if loss == "ce":
        return models.cross_entropy, None

    def target(out: Tensor, y: Tensor) -> Tensor:
        if y.is_floating_point():
            return y
        return nn.functional.one_hot(y.long(), classes).to(out.dtype)  # integer labels: one-hot targets

    return (lambda out, y: models.mse(out, target(out, y)),
            lambda out, y: models.mse_residual(out, target(out, y)))


def plain_layers(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every ``nn.LayerNorm`` over one dimension replaced by the same-valued
    ``rodflow.models.LayerNorm`` (same parameter names, so ``w`` keeps its layout). PyTorch's fused LayerNorm
    has a wrong third derivative (measured with torch 2.13: 38 % relative error against finite differences of
    HVPs on a small MLP; its HVPs are right), which central flow uses."""
    module = copy.deepcopy(module)
    for path, layer in list(module.named_modules()):
        if type(layer) is nn.LayerNorm and len(layer.normalized_shape) == 1:
            plain = models.LayerNorm(layer.normalized_shape[0], eps=layer.eps)
            with torch.no_grad():
                if layer.weight is not None:
                    plain.weight = nn.Parameter(layer.weight.detach().clone(), requires_grad=layer.weight.requires_grad)
                else:  # no affine transform: a frozen identity scale and zero shift
                    plain.weight.requires_grad_(False)
                    plain.weight.copy_(torch.ones_like(plain.weight))
                if layer.bias is not None:
                    plain.bias = nn.Parameter(layer.bias.detach().clone(), requires_grad=layer.bias.requires_grad)
                else:
                    plain.bias.requires_grad_(False)
            plain.to(dtype=next((p.dtype for p in layer.parameters()), torch.get_default_dtype()))
            if not path:
                return plain
            parent, _, child = path.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, child, plain)
    return module


def from_module(module: nn.Module, data, loss: str | Callable = "mse", chunk_size: int = 1024,
                name: str | None = None, dtype=None, device=None, check: bool = True, plain: bool = False,
                **kwargs):
    from .problem import Problem, resolve_dtype

    if not isinstance(module, nn.Module):
        raise RodflowError(f"from_module needs a torch.nn.Module, got {type(module).__name__}; for a plain "
                           "function of a flat vector use Problem.from_loss")
    _refuse_training_layers(module)
    arrays = _arrays(data)
    inputs, targets = arrays[:-1], arrays[-1]
    # a private CPU copy in the module's own precision: every dtype/device is built from it, so a float64
    # module moved to float32 and back keeps its values
    source = (plain_layers(module) if plain else copy.deepcopy(module)).cpu()
    if dtype is None:  # the module's own precision (half precisions: float32, the lowest rodflow supports)
        own = next(p.dtype for p in source.parameters() if p.is_floating_point()) if any(
            p.is_floating_point() for p in source.parameters()) else torch.float64
        dtype = own if own in (torch.float32, torch.float64) else torch.float32
    dtype = resolve_dtype(dtype)
    user_params = kwargs.pop("params", {})
    name = name or type(module).__name__
    classes = _classes(source, inputs, targets, loss)
    example_loss, example_residual = per_example_loss(loss, classes)
    loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
    if loss == "ce" and _affine_output(source, inputs):
        # the GFS solver's certificate that gradient flow has no finite limit (gfs.py, _no_finite_limit)
        kwargs["extras"] = {**kwargs.get("extras", {}), "cross_entropy_terms": int(targets.numel())}

    def build(dtype: torch.dtype, device, check: bool) -> "Problem":
        from .devices import resolve_device

        where = torch.device("cpu") if device is None else resolve_device(device)
        f = ModuleFunction(copy.deepcopy(source).to(device=where, dtype=dtype))

        def loss_fn(w: Tensor, *batch: Tensor) -> Tensor:
            return example_loss(f(w, *batch[:-1]), batch[-1])

        def residual_fn(w: Tensor, *batch: Tensor) -> Tensor:
            return example_residual(f(w, *batch[:-1]), batch[-1])

        def rebuild(dtype: torch.dtype, device: torch.device) -> "Problem":
            return build(dtype, device, check=False)

        params = {"module": type(module).__name__, "loss": loss_name, "n": int(targets.shape[0]), "d": f.d}
        return Problem.from_data(
            loss_fn, [*inputs, targets], f.initial().to(dtype), chunk_size=chunk_size, name=name,
            example_residual=residual_fn if example_residual is not None else None, dtype=dtype, device=where,
            check=check, explain=_explainer(source), rebuild=rebuild, params={**params, **user_params},
            **kwargs)

    return build(dtype, device, check)


def _arrays(data) -> list[Tensor]:
    if isinstance(data, torch.utils.data.TensorDataset):
        data = data.tensors
    if isinstance(data, (torch.Tensor, np.ndarray)) or not isinstance(data, Sequence) or len(data) < 2:
        raise RodflowError("data must be (inputs, targets) — or (input1, ..., targets) for a module with several "
                           "inputs — as tensors or arrays with one row per example, or a TensorDataset")
    arrays = [a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a)) for a in data]
    rows = {int(a.shape[0]) if a.dim() else -1 for a in arrays}
    if -1 in rows or len(rows) != 1:
        raise RodflowError(f"data's arrays must have one row per example, the same number each; got shapes "
                           f"{', '.join(str(tuple(a.shape)) for a in arrays)}")
    if rows == {0}:
        raise RodflowError("data has no examples (0 rows); give at least one (inputs, targets) pair")
    return arrays


def _classes(module: nn.Module, inputs: list[Tensor], targets: Tensor, loss) -> int | None:
    """The number of outputs per position (for one-hot MSE targets), from one forward pass on two examples."""
    if loss != "mse" or targets.is_floating_point():
        if loss == "ce" and targets.is_floating_point():
            raise RodflowError("loss='ce' needs integer class labels as targets; for soft labels pass a callable loss")
        return None
    f = ModuleFunction(module)
    batch = _two_examples(inputs, f.initial().dtype)
    try:
        with torch.no_grad():
            out = f(f.initial(), *batch)
    except RodflowError:
        raise
    except Exception as exc:  # the user's module: report it in one line
        raise RodflowError(f"the module raised {type(exc).__name__} on the inputs: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if tuple(out.shape[:-1]) != tuple(targets[:2].shape):
        raise RodflowError(f"integer targets of shape {tuple(targets.shape[1:])} per example do not match outputs of "
                           f"shape {tuple(out.shape[1:])}: labels need one entry per output row (one-hot over the "
                           "last dimension); or pass float targets of the output's shape")
    return int(out.shape[-1])


def _two_examples(inputs: list[Tensor], dtype: torch.dtype) -> list[Tensor]:
    """The first two examples of each input, floating ones in ``dtype``: a cheap probe forward pass."""
    return [a[:2].to(dtype) if a.is_floating_point() else a[:2] for a in inputs]


def _affine_output(module: nn.Module, inputs: list[Tensor]) -> bool:
    """Whether the logits scale with a layer's parameters: the last ``nn.Linear`` (with a trainable weight), its
    weight and bias doubled, must double the output on two examples. Cross-entropy then has no critical point
    where every label is predicted (the GFS solver's certificate of no finite limit)."""
    probe = copy.deepcopy(module)
    linears = [m for m in probe.modules() if type(m) is nn.Linear and m.weight.requires_grad]
    if not linears:
        return False
    layer = linears[-1]
    batch = _two_examples(inputs, next(p.dtype for p in probe.parameters() if p.is_floating_point()))
    try:
        with torch.no_grad():
            out = probe(*batch)
            for p in (layer.weight, layer.bias):
                if p is not None:
                    p.mul_(2.0)
            doubled = probe(*batch)
    except Exception:  # noqa: BLE001 - any failure: no certificate (the module's own errors surface elsewhere)
        return False
    if not (isinstance(out, Tensor) and isinstance(doubled, Tensor)) or not bool(torch.isfinite(out).all()):
        return False
    scale = float(out.abs().max())
    return scale > 0 and float((doubled - 2 * out).abs().max()) <= 1e-6 * scale


def _refuse_training_layers(module: nn.Module) -> None:
    for path, layer in module.named_modules():
        for kind, why in TRAINING_ONLY:
            if isinstance(layer, kind) and layer.training and not (isinstance(layer, nn.modules.dropout._DropoutNd)
                                                                   and layer.p == 0):
                raise RodflowError(f"layer {path or '(module)'} ({type(layer).__name__}) is in training mode, where it "
                                   f"{why}; call module.eval() first")


def _explainer(module: nn.Module) -> Callable[[str], str]:
    """The hint of a failed derivative check: the module's fragile layers, grouped by kind, with replacements."""
    groups = []
    for kind, replacement in FRAGILE:
        paths = [path or "(module)" for path, layer in module.named_modules() if type(layer) is kind]
        if paths:
            more = f" and {len(paths) - 2} more" if len(paths) > 2 else ""
            swap = " or from_module(..., plain=True)" if kind is nn.LayerNorm else ""
            groups.append(f"nn.{kind.__name__} at {', '.join(paths[:2])}{more} (use {replacement}{swap})")

    def explain(cause: str) -> str:
        if groups:
            return "; suspect layers: " + "; ".join(groups)
        return "; look for a custom torch.autograd.Function (e.g. a @once_differentiable backward) in the forward"

    return explain
