"""Neural-network problems ``<arch>-<dataset>``: a plain-op network (rodflow.models) on a full-batch dataset
(rodflow.data), with MSE (½ Σ_classes (f − y)², mean over examples) or cross-entropy loss.

Every problem takes ``n``, ``classes``, ``width``, ``depth``, ``activation``, ``loss`` ("mse" or "ce"),
``seed`` (the initialisation), ``data_seed`` (0: the first examples of each class in file order, the anchors'
convention; k > 0: a random subset drawn with k) and ``chunk_size`` (examples per chunk: memory does not grow
with ``n``), plus the dataset's own options (``data_dir`` for files) and the architecture's (``heads``,
``patch``). Run ``rodflow.simulate(problem, lr, steps=0, sharpness_every=1)`` to see the initial sharpness
and pick ``lr`` relative to it.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from .. import data, models
from ..errors import RodflowError
from ..problem import HVP_BY_ARCH, Problem
from . import register

# dataset -> (dataset options with defaults, default n, default classes)
DATASETS: dict[str, tuple[dict[str, Any], int, int]] = {
    "digits": ({}, 400, 10),
    "fashion": ({"data_dir": None}, 400, 10),
    "cifar10": ({"data_dir": None}, 200, 10),
    "teacher": ({"dim": 10, "teacher_width": 16, "noise": 0.0}, 200, 1),
    "chebyshev": ({"degree": 5}, 64, 1),
    "sorting": ({"length": 5}, 128, 8),
}
# architecture -> (width, depth, activation, extra options)
ARCHS: dict[str, tuple[int, int, str, dict[str, Any]]] = {
    "mlp": (64, 2, "tanh", {}),
    "cnn": (16, 2, "gelu", {}),
    "resnet": (16, 2, "gelu", {}),
    "vit": (32, 2, "gelu", {"heads": 2, "patch": None}),
    "transformer": (32, 2, "gelu", {"heads": 2}),
}
# patch size giving 16 tokens on each image dataset
DEFAULT_PATCH = {"digits": 2, "fashion": 7, "cifar10": 8}
COMBOS = [
    *(f"{a}-{d}" for a in ("mlp", "cnn", "resnet", "vit") for d in ("digits", "fashion", "cifar10")),
    "mlp-teacher", "mlp-chebyshev", "transformer-sorting",
]


def build(arch: str, dataset: str, dtype: torch.dtype = torch.float64, device=None, **kw: Any) -> Problem:
    """The problem ``<arch>-<dataset>`` (parameters as in the module docstring)."""
    loss = data.check_loss(kw.pop("loss"))
    n, classes, seed, data_seed = kw.pop("n"), kw.pop("classes"), kw.pop("seed"), kw.pop("data_seed")
    width, depth, act = kw.pop("width"), kw.pop("depth"), kw.pop("activation")
    chunk_size = kw.pop("chunk_size")
    data_opts = {k: kw.pop(k) for k in list(kw) if k in DATASETS[dataset][0]}
    ds = data.load(dataset, n=n, classes=classes, seed=data_seed, **data_opts)
    extra = dict(kw)
    if arch == "vit" and extra.get("patch") is None:
        extra["patch"] = DEFAULT_PATCH[dataset]
    if arch == "transformer":
        extra.update(vocab=ds.classes, positions=ds.y.shape[1])
    model = models.build(arch, ds.input_shape, ds.classes, width, depth, act, seed=int(seed), **extra)
    targets = torch.from_numpy(ds.targets(loss).copy())
    x = torch.from_numpy(ds.x.copy())
    loss_fn = models.LOSSES[loss]

    residual_fn = models.RESIDUALS.get(loss)

    def example_loss(w, xb, yb):
        return loss_fn(model(w, xb), yb)

    def example_residual(w, xb, yb):
        return residual_fn(model(w, xb), yb)

    return Problem.from_data(example_loss, [x, targets], model.initial(dtype), chunk_size=int(chunk_size),
                             extras={"dataset": repr(ds), "architecture": arch, **_ce_terms(loss, targets)},
                             hvp_method=HVP_BY_ARCH[arch],
                             example_residual=example_residual if residual_fn is not None else None, device=device)


def _ce_terms(loss: str, targets: torch.Tensor) -> dict[str, int]:
    """Cross-entropy: how many −log p terms the loss averages (examples × positions), for the GFS solver's
    certificate that gradient flow has no finite limit (every network here ends in a linear layer)."""
    return {"cross_entropy_terms": int(targets.numel())} if loss == "ce" else {}


def _factory(arch: str, dataset: str):
    data_opts, n, classes = DATASETS[dataset]
    width, depth, act, arch_opts = ARCHS[arch]
    defaults = dict(n=n, classes=classes, width=width, depth=depth, activation=act, loss="mse", seed=0,
                    data_seed=0, chunk_size=256, **data_opts, **arch_opts)

    def factory(dtype=torch.float64, device=None, **kw):
        unknown = set(kw) - set(defaults)
        if unknown:  # make() checks this already; direct calls get the same one-line error
            raise RodflowError(f"{arch}-{dataset} has no parameter {sorted(unknown)[0]!r}")
        return build(arch, dataset, dtype=dtype, device=device, **{**defaults, **kw})

    kind = data.REGISTRY.get(dataset).__doc__.strip().splitlines()[0]
    factory.__doc__ = f"{_DESC[arch]} on: {kind}"
    params = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in defaults.items()]
    params.append(inspect.Parameter("dtype", inspect.Parameter.KEYWORD_ONLY, default=torch.float64))
    params.append(inspect.Parameter("device", inspect.Parameter.KEYWORD_ONLY, default=None))
    factory.__signature__ = inspect.Signature(params)
    factory.__name__ = f"{arch}_{dataset}"
    return factory


_DESC = {"mlp": "MLP (depth × width, flattened inputs)", "cnn": "CNN (3×3 convolutions + 2×2 average pooling)",
         "resnet": "Small ResNet (3×3 stem, residual blocks, no normalisation)",
         "vit": "Tiny ViT (patches, pre-LN attention blocks)", "transformer": "Small causal transformer"}

for _name in COMBOS:
    _arch, _dataset = _name.split("-", 1)
    register(_name)(_factory(_arch, _dataset))
