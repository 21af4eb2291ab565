"""Hessian trace by Hutchinson's estimator: tr H ≈ (1/k) Σ zᵢᵀ H zᵢ with Rademacher zᵢ (E[zzᵀ] = I), reported
with its standard error s/√k (s the sample standard deviation of the k values zᵢᵀ H zᵢ)."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import RodflowError
from . import register
from .base import Measurement


@register("hessian_trace")
class HessianTrace(Measurement):
    """``hessian_trace``, ``hessian_trace_se`` (standard error), ``hessian_trace_hvps``: ``samples`` Rademacher
    probes (at least 2, for the error) in blocks of ``block`` HVPs at one point."""

    name = "hessian_trace"

    def __init__(self, problem, seed: int, samples: int = 32, block: int = 8):
        super().__init__(problem, seed)
        for key, value, lo in (("samples", samples, 2), ("block", block, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise RodflowError(f"hessian_trace {key} must be an integer >= {lo}, got {value!r}")
        self.samples, self.block = samples, block

    def measure(self, w: torch.Tensor, step: int) -> dict[str, Any]:
        # probes from (seed, step), drawn on the CPU: the same on every device and after a resume
        gen = torch.Generator(device="cpu").manual_seed(1_000_003 * self.seed + step)
        hvp = self.problem.hvp_operator(w)
        values = []
        with self.problem.counting() as spent:
            for lo in range(0, self.samples, self.block):
                m = min(self.block, self.samples - lo)
                Z = torch.randint(0, 2, (w.numel(), m), generator=gen, device="cpu").to(w.dtype).mul_(2).sub_(1)
                Z = Z.to(w.device)
                values.append((Z * hvp(Z)).sum(dim=0).double().cpu())
        v = torch.cat(values)
        if not bool(torch.isfinite(v).all()):
            return {"hessian_trace": math.nan, "hessian_trace_se": math.nan, "hessian_trace_hvps": spent.hvps,
                    "hessian_trace_reason": "non-finite Hessian-vector products"}
        return {"hessian_trace": float(v.mean()), "hessian_trace_se": float(v.std(unbiased=True)) / math.sqrt(len(v)),
                "hessian_trace_hvps": spent.hvps}
