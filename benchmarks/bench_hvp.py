"""HVP and gradient throughput per architecture (B6): double backward, vjp of grad, jvp of grad (torch.func,
vmapped over a block) and torch.compile'd jvp of grad, on each network family of rodflow.problems and on the
reference swish MLP; for one vector and for a block of 4. The fastest single-vector path per family is what
``rodflow.problem.HVP_BY_ARCH`` records (the network problems use it); this benchmark re-measures it.

    .venv/bin/python benchmarks/bench_hvp.py [--no-compile]
"""

from __future__ import annotations

import logging
import sys
import time

import torch

from rodflow import problems
from rodflow.problem import DEFAULT_HVP_METHOD, HVP_BY_ARCH, HVP_METHODS, Problem

# family -> (problem, parameters): small full-batch instances of every architecture
FAMILIES = {
    "reference-mlp": ("reference-mlp", {}),
    "mlp": ("mlp-digits", dict(n=256, width=64)),
    "cnn": ("cnn-digits", dict(n=64)),
    "resnet": ("resnet-digits", dict(n=16)),
    "vit": ("vit-digits", dict(n=64)),
    "transformer": ("transformer-sorting", dict(n=128)),
}


def mlp_problem(width: int, n: int = 512, din: int = 20, seed: int = 0) -> Problem:
    """A 2-hidden-layer tanh MLP on Gaussian regression data (used by bench_sharpness)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, din, dtype=torch.float64, generator=g)
    Y = torch.randn(n, dtype=torch.float64, generator=g)
    sizes = [(din, width), (width, width), (width, 1)]
    d = sum(a * b + b for a, b in sizes)

    def loss(w):
        i, h = 0, X
        for k, (a, b) in enumerate(sizes):
            W = w[i:i + a * b].view(a, b)
            i += a * b
            h = h @ W + w[i:i + b]
            i += b
            if k < len(sizes) - 1:
                h = torch.tanh(h)
        return 0.5 * ((h[:, 0] - Y) ** 2).mean()

    return Problem.from_loss(loss, 0.2 * torch.randn(d, dtype=torch.float64, generator=g), name=f"mlp{width}")


def timed(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - start) / repeat)
    return best


def compiled_hvp(problem: Problem):
    """torch.compile'd jvp-of-grad HVP summed over the chunks; (function, compile seconds)."""
    fns = [torch.compile(lambda w, v, f=f: torch.func.jvp(torch.func.grad(f), (w,), (v,))[1], dynamic=False)
           for f in problem.chunks]

    def hvp(w, v):
        return sum(f(w, v) for f in fns)

    t0 = time.perf_counter()
    hvp(problem.w0, torch.ones_like(problem.w0))
    return hvp, time.perf_counter() - t0


def run(quick: bool = False, compile: bool = True) -> dict:
    torch.set_num_threads(1)
    torch._logging.set_logs(dynamo=logging.CRITICAL, inductor=logging.CRITICAL)  # graph-break chatter
    repeat = 5 if quick else 20
    out = {"default": DEFAULT_HVP_METHOD, "by_arch_in_use": dict(HVP_BY_ARCH), "rows": [], "fastest": {}}
    print(f"{'family':>14} {'d':>7} {'method':>16} {'grad ms':>8} {'1 HVP ms':>9} {'op ms':>8} {'4 HVPs ms':>10} {'HVP/grad':>9}")
    for family, (name, params) in FAMILIES.items():
        base = problems.make(name, **params)
        w = base.w0
        V = torch.randn(base.d, 4, dtype=base.dtype, generator=torch.Generator().manual_seed(1))
        t_grad = timed(lambda: base.loss_grad(w), repeat)
        exact = Problem(base.chunks, w, hvp_method="double_backward").hvp_block(w, V)
        best = None
        for method in (*HVP_METHODS, "compiled_jvp_grad"):
            extra = {}
            if method == "compiled_jvp_grad":
                if not compile or (quick and family not in ("reference-mlp", "mlp")):
                    continue
                cols = [V[:, j].contiguous() for j in range(4)]
                try:
                    fn, extra["compile_s"] = compiled_hvp(base)
                    t1 = timed(lambda: fn(w, cols[0]), repeat)
                    t4 = timed(lambda: torch.stack([fn(w, c) for c in cols], 1), max(1, repeat // 2))
                    err = max(float((fn(w, c) - exact[:, j]).abs().max()) for j, c in enumerate(cols))
                except Exception as exc:  # torch.compile failing is a measurement, not a suite failure
                    out["rows"].append(dict(family=family, method=method, error=f"{type(exc).__name__}: {exc}"[:200]))
                    print(f"{family:>14} {base.d:>7} {method:>16} failed: {type(exc).__name__}", flush=True)
                    continue
            else:
                p = Problem(base.chunks, w, hvp_method=method)
                t1 = timed(lambda: p.hvp_block(w, V[:, :1]), repeat)
                t4 = timed(lambda: p.hvp_block(w, V), max(1, repeat // 2))
                err = float((p.hvp_block(w, V) - exact).abs().max())
                op = p.hvp_operator(w)  # what an eigensolver pays per HVP at one point (graph built once)
                extra["operator_hvp_ms"] = 1e3 * timed(lambda: op(V[:, :1]), repeat)
            row = dict(family=family, problem=name, d=base.d, method=method, grad_ms=1e3 * t_grad, hvp_ms=1e3 * t1,
                       block4_ms=1e3 * t4, hvp_over_grad=t1 / t_grad, max_abs_diff=err, **extra)
            out["rows"].append(row)
            # the choice: the eigensolvers' per-HVP price (operator) plus a one-off HVP's (hvp_block)
            score = t1 + extra.get("operator_hvp_ms", 1e3 * t1) / 1e3
            if method in HVP_METHODS and (best is None or score < best["score"]):
                best = dict(method=method, hvp_ms=1e3 * t1, operator_hvp_ms=extra["operator_hvp_ms"],
                            hvp_over_grad=t1 / t_grad, score=score)
            print(f"{family:>14} {base.d:>7} {method:>16} {row['grad_ms']:8.2f} {row['hvp_ms']:9.2f} "
                  f"{extra.get('operator_hvp_ms', float('nan')):8.2f} {row['block4_ms']:10.2f} "
                  f"{row['hvp_over_grad']:9.2f}", flush=True)
        out["fastest"][family] = best
    return out


if __name__ == "__main__":
    run(compile="--no-compile" not in sys.argv)
