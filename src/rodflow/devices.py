"""Devices: parse a user's ``device=`` and run rodflow's numerics in a precise, reproducible mode there.

``resolve_device`` accepts "cpu", "cuda", "cuda:N", "mps", "auto" (CUDA, else MPS, else the CPU) or a
`torch.device`, and fails with one line when the device is not available. ``precise(device)`` is the context
every run executes in: on CUDA it turns TF32 off for matmuls and cuDNN convolutions (TF32 rounds the inputs
of a product to 10 mantissa bits, which silently breaks the accuracy of Hessian-vector products) and asks
torch for deterministic algorithms where it has them (``warn_only``: an op without one still runs); on exit
the previous settings are restored.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Iterator

import torch

from .errors import RodflowError

DEVICES = ("cpu", "cuda", "cuda:N", "mps", "auto")


def available(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    return kind == "cpu"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The `torch.device` for a user's spelling; ``None`` is the CPU."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        spec = str(device)
    elif isinstance(device, str):
        spec = device.strip().lower()
    else:
        raise RodflowError(f"device must be a string such as 'cpu' or 'cuda:0', got {type(device).__name__}")
    if spec == "auto":
        return torch.device("cuda" if available("cuda") else "mps" if available("mps") else "cpu")
    m = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", spec)
    if m is None:
        raise RodflowError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    kind, index = m.group(1), m.group(2)
    if not available(kind):
        build = "this torch build has no CUDA" if kind == "cuda" and torch.version.cuda is None else "none is visible"
        raise RodflowError(f"device {spec!r} is not available on this machine ({kind}: {build}); "
                           "use --device cpu (or device='auto')")
    if kind == "cuda" and index is not None and int(index) >= torch.cuda.device_count():
        raise RodflowError(f"device {spec!r} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                           "device(s), cuda:0 ...")
    if kind == "cpu":
        return torch.device("cpu")
    return torch.device(spec)


@contextlib.contextmanager
def precise(device: torch.device | str | None) -> Iterator[None]:
    """TF32 off and deterministic algorithms on (CUDA) for the duration; the caller's settings come back after."""
    device = torch.device(device or "cpu")
    if device.type != "cuda":
        yield
        return
    # cuBLAS needs a fixed workspace for deterministic results; it is read when the CUDA context starts
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    settings = _settings()
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in settings]
    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    for obj, attr, value in settings:
        setattr(obj, attr, value)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        for obj, attr, value in saved:
            setattr(obj, attr, value)
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])


def _settings() -> list[tuple[object, str, object]]:
    """(object, attribute, value) that turn TF32 off and cuDNN's autotuning nondeterminism off. torch >= 2.9
    spells TF32 as ``fp32_precision`` ("ieee" = full float32); older versions as ``allow_tf32``."""
    cudnn = torch.backends.cudnn
    out: list[tuple[object, str, object]] = [(cudnn, "deterministic", True), (cudnn, "benchmark", False)]
    if hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(cudnn, "conv"):
        out += [(torch.backends.cuda.matmul, "fp32_precision", "ieee"), (cudnn.conv, "fp32_precision", "ieee")]
    else:
        out += [(torch.backends.cuda.matmul, "allow_tf32", False), (cudnn, "allow_tf32", False)]
    return out
