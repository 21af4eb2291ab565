"""Datasets for the network problems: fixed full-batch subsets, standardised, cached in-process.

``load(name, n=..., classes=..., seed=..., **options)`` returns a :class:`Dataset`. Real image datasets
(``digits``, ``fashion``, ``cifar10``) take the anchors' subset convention: the first ``n / classes``
examples (in file order) of each of the first ``classes`` classes (when ``n`` is not a multiple of
``classes`` the first ``n mod classes`` classes get one more); ``seed > 0`` instead picks that many examples
of each class at random with that seed. Inputs are standardised per channel over the chosen subset (mean 0,
variance 1). Synthetic datasets (``teacher``, ``chebyshev``, ``sorting``) are drawn from ``seed``.

Targets: ``dataset.targets("mse")`` is one-hot (classification) or the regression targets;
``dataset.targets("ce")`` is the integer labels.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import numpy as np

from ..errors import RodflowError
from ..registry import Registry, check_params, parameters

TASKS = ("classification", "regression")


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A full-batch dataset.

    ``x``: float inputs (n, *input_shape), or int64 tokens (n, length) for sequence tasks.
    ``y``: int64 labels (n,) or (n, positions) for classification; float targets (n, outputs) for regression.
    ``classes``: number of classes (classification) or of outputs (regression).
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    classes: int
    task: str
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def tokens(self) -> bool:
        return self.x.dtype.kind in "iu"

    def targets(self, loss: str) -> np.ndarray:
        """Targets for ``loss``: "mse" gives one-hot (float64) or regression targets, "ce" integer labels."""
        loss = check_loss(loss)
        if self.task == "regression":
            if loss == "ce":
                raise RodflowError(f"dataset {self.name!r} is a regression task; use loss='mse'")
            return self.y
        if loss == "ce":
            return self.y
        return np.eye(self.classes, dtype=np.float64)[self.y]

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, n={self.n}, input_shape={self.input_shape}, classes={self.classes}, task={self.task})"


def check_loss(loss: str) -> str:
    if loss not in ("mse", "ce"):
        raise RodflowError(f"unknown loss {loss!r}; use 'mse' (½ squared error) or 'ce' (cross-entropy)")
    return loss


REGISTRY: Registry = Registry("dataset")
register = REGISTRY.register


def names() -> list[str]:
    return REGISTRY.names()


def params(name: str) -> dict[str, Any]:
    return parameters(REGISTRY.get(name))


def load(name: str, **kwargs: Any) -> Dataset:
    """The dataset ``name`` with the given options (cached: equal arguments return the same object)."""
    loader = REGISTRY.get(name)
    check_params("dataset", name, loader, kwargs)
    full = {**params(name), **kwargs}
    try:
        key = tuple(sorted((k, _hashable(v)) for k, v in full.items()))
    except TypeError:
        raise RodflowError(f"dataset {name!r}: options must be numbers, strings or lists of them") from None
    return _cached(name, key)


@functools.lru_cache(maxsize=32)
def _cached(name: str, key: tuple) -> Dataset:
    ds = REGISTRY.get(name)(**dict(key))
    ds.x.setflags(write=False)
    ds.y.setflags(write=False)
    return ds


def _hashable(v):
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(u) for u in v)
    hash(v)
    return v


# ------------------------------------------------------------------------------------------ helpers
def positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not float(value).is_integer() or int(value) < minimum:
        raise RodflowError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def class_subset(labels: np.ndarray, n: int, classes: int, seed: int, dataset: str, total_classes: int) -> np.ndarray:
    """Indices of the subset: n split evenly over classes 0..classes-1 (first in file order, or random)."""
    n = positive_int("n", n)
    classes = positive_int("classes", classes, minimum=2)
    if classes > total_classes:
        raise RodflowError(f"{dataset} has {total_classes} classes; use classes <= {total_classes}")
    if n < classes:
        raise RodflowError(f"n={n} is smaller than classes={classes}; use n >= classes")
    per = [n // classes + (1 if c < n % classes else 0) for c in range(classes)]
    rng = np.random.default_rng(seed) if seed else None
    chosen = []
    for c, k in enumerate(per):
        idx = np.flatnonzero(labels == c)
        if idx.size < k:
            most = min(int((labels == c2).sum()) for c2 in range(classes)) * classes
            raise RodflowError(
                f"{dataset} has only {idx.size} examples of class {c}; use n <= {most} for classes={classes}"
            )
        chosen.append(np.sort(rng.choice(idx, size=k, replace=False)) if rng is not None else idx[:k])
    # interleave nothing: class-blocked order, like the anchors' subset
    return np.concatenate(chosen)


def standardise(x: np.ndarray, channel_axis: int | None = 1) -> np.ndarray:
    """Per-channel mean 0 / variance 1 over the subset (channel_axis None: over everything)."""
    x = np.asarray(x, dtype=np.float64)
    axes = tuple(i for i in range(x.ndim) if i != channel_axis) if channel_axis is not None else None
    mean = x.mean(axis=axes, keepdims=True)
    std = x.std(axis=axes, keepdims=True)
    std = np.where(std > 0, std, 1.0)
    return (x - mean) / std


# Built-in datasets: one import line per module.
from . import images  # noqa: E402,F401
from . import synthetic  # noqa: E402,F401
