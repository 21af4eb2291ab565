"""HVP throughput of the three autodiff paths (double backward, vjp of grad, jvp of grad), per vector and
for a block of vectors, on a tanh MLP; gradient cost for reference. The default path is the fastest here."""

from __future__ import annotations

import time

import torch

from rodflow.problem import DEFAULT_HVP_METHOD, HVP_METHODS, Problem


def mlp_problem(width: int, n: int = 512, din: int = 20, seed: int = 0) -> Problem:
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


def run() -> dict:
    out = {"default": DEFAULT_HVP_METHOD, "rows": []}
    print(f"{'model':>8} {'d':>7} {'method':>16} {'grad ms':>8} {'1 HVP ms':>9} {'4 HVPs ms':>10} {'HVP/grad':>9}")
    for width in (16, 64, 256):
        base = mlp_problem(width)
        w = base.w0
        V = torch.randn(base.d, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        t_grad = timed(lambda: base.loss_grad(w), 10)
        fastest = None
        for method in HVP_METHODS:
            p = Problem.from_loss(base.chunks[0], w, hvp_method=method)
            t1 = timed(lambda: p.hvp_block(w, V[:, :1]), 10)
            t4 = timed(lambda: p.hvp_block(w, V), 5)
            row = dict(model=base.name, d=base.d, method=method, grad_ms=1e3 * t_grad, hvp_ms=1e3 * t1,
                       block4_ms=1e3 * t4, hvp_over_grad=t1 / t_grad)
            out["rows"].append(row)
            fastest = (method, t1) if not isinstance(fastest, tuple) or t1 < fastest[1] else fastest
            print(f"{base.name:>8} {base.d:>7} {method:>16} {row['grad_ms']:8.2f} {row['hvp_ms']:9.2f} "
                  f"{row['block4_ms']:10.2f} {row['hvp_over_grad']:9.2f}")
        out[f"fastest_{base.name}"] = fastest[0]
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    run()
