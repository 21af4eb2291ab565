"""What sets rod flow's onset (issue 17, docs/rod_flow.md "What sets the onset"): the experiments behind that
section, reproducible.

    .venv/bin/python tools/onset_causes.py restart CASE K[,K...] [--init half|d4] [option=value ...]
    .venv/bin/python tools/onset_causes.py amplitude CASE T EVERY [option=value ...]
    .venv/bin/python tools/onset_causes.py inject CASE K LEVEL [option=value ...]
    .venv/bin/python tools/onset_causes.py fullcorr CASE
    .venv/bin/python tools/onset_causes.py precision CASE
    .venv/bin/python tools/onset_causes.py toy

CASE is ``demo``, the stem of a ``configs/results/*.toml`` file, ``sharp-valley`` or ``self-stabilization`` (the
onset tables' settings); options go to ``rod_flow``.

- ``restart``: the rod started from GD's own state at step K instead of step 0 — centre (w_K + w_{K+1})/2,
  half-vector (w_{K+1} − w_K)/2 (``--init half``) or GD's period-2 part only, minus its fourth difference / 16
  at K (``--init d4``, K ≥ 2) — and its first loss spike (steps before K are GD's own two-step average).
- ``amplitude``: along the top Hessian eigenvector, GD's period-2 amplitude (fourth and sixth differences of
  its iterates, which cancel a drift up to cubic and quintic order) against |δ·u| of the rod (linear rate) and
  of the ``gd-multiplier`` rod, each at its own top eigenvector, with ηλ₁ of each.
- ``inject``: the rod from step 0, with its δ along the top eigenvector of H(c) set to LEVEL at step K — what
  a seed of GD's size at the crossing would change (first spike, distance to GD, loss error).
- ``fullcorr``: the default rod, ``correction=True`` (the centre's −½F_c F), ``correction="full"`` (also
  −½F_δ G) and ``correction="both"`` (δ's −½(G_c F + G_δ G) too; alone, with ``gd-multiplier`` and with
  ``gd-eigen``): first spike, distance, loss error, and ηλ₁ of the centre at steps 3 and 40 against GD's.
- ``precision``: GD's onset and first spike in float64 and float32 from the same start (a rounding-seeded
  oscillation starts ~20 nats higher in float32).
- ``toy``: GD on x_{t+1} = x_t − ηλ_t (x_t − t) (a drift of 1 per step) with ηλ_t rising through 1 and 2,
  in 150 digits (mpmath): the period-2 amplitude it has at ηλ = 2 does not depend on the start; for a
  constant rate k it falls like exp(−c/k), c ≈ 1.5–1.8; a kink in the rate between ηλ = 1 and 2 makes it
  algebraically large — a seed made by the drift from the non-smoothness of GD's coefficients.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

from rodflow import problems, processes
from rodflow.compare import check_config, load_config
from rodflow.linalg.eigs import top_eigs
from rodflow.onset import first_spike_step, gd_oscillation, onset_step
from rodflow.processes.rod_flow import RodFlow

ROOT = Path(__file__).resolve().parent.parent


#: the two toys of docs/rod_flow.md's onset tables: (problem parameters, η, steps)
TOYS = {"sharp-valley": (dict(eps=0.03, w0=(0.1, 3.5)), 0.3, 750),
        "self-stabilization": (dict(w0=(0.5, 15.0)), 0.1, 400)}


def load(case: str, dtype: str = "float64"):
    """(problem, η, steps) of the demo, a configs/results case (η from its s0_fraction as `rodflow compare`) or
    one of the two toys of the onset tables."""
    if case in TOYS:
        params, lr, steps = TOYS[case]
        return problems.make(case, dtype=dtype, **params), lr, steps
    path = ROOT / "src/rodflow/configs/demo.toml" if case == "demo" else ROOT / f"configs/results/{case}.toml"
    cfg = check_config(load_config(path))
    p = problems.make(cfg["problem"], dtype=dtype, **cfg.get("params", {}))
    if "lr" in cfg:
        return p, float(cfg["lr"]), int(cfg["steps"])
    p64 = p if dtype == "float64" else problems.make(cfg["problem"], **cfg.get("params", {}))
    s0 = float(top_eigs(lambda V: p64.hvp_block(p64.w0, V), p64.d, 1, tol=1e-8,
                        generator=torch.Generator().manual_seed(0)).values[0])  # the same η, bit for bit, every run
    return p, 2 * cfg["s0_fraction"] / s0, int(cfg["steps"])


def gd(p, lr: float, steps: int):
    """GD's iterates w_0..w_{steps} and losses L_0..L_{steps}."""
    w, ws, losses = p.w0.clone(), [p.w0.clone()], []
    for _ in range(steps + 1):
        loss, g = p.loss_grad(w)
        losses.append(float(loss))
        w = w - lr * g
        ws.append(w.clone())
    return torch.stack(ws), np.array(losses)


def fourth(W, t):
    return (W[t - 2] - 4 * W[t - 1] + 6 * W[t] - 4 * W[t + 1] + W[t + 2]) / 16


def sixth(W, t):
    return (-W[t - 3] + 6 * W[t - 2] - 15 * W[t - 1] + 20 * W[t] - 15 * W[t + 1] + 6 * W[t + 2] - W[t + 3]) / 64


def options(args: list[str]) -> dict:
    out = {}
    for kv in args:
        key, value = kv.split("=", 1)
        out[key] = {"True": True, "False": False}.get(value, value)
    return out


def restart(case: str, ks: list[int], init: str, opts: dict) -> None:
    if init not in ("half", "d4"):
        sys.exit(f"--init {init!r}: choose half or d4")
    if init == "d4" and min(ks) < 2:
        sys.exit("--init d4 needs K >= 2 (the fourth difference uses w_{K-2} .. w_{K+2})")
    p, lr, steps = load(case)
    W, L = gd(p, lr, steps + 2)
    Lbar = 0.5 * (L[:-1] + L[1:])[:steps]
    print(f"{case}: GD first spike {first_spike_step(Lbar)}; rod {opts or 'default'}, init {init}")
    for k in ks:
        rod = processes.make("rod_flow", p, lr, **opts)
        delta = -fourth(W, k) if init == "d4" else 0.5 * (W[k + 1] - W[k])
        rod.start_state(0.5 * (W[k] + W[k + 1]), delta)
        pred = list(Lbar[:k])
        for t in range(k, steps):
            if t > k:
                rod.advance()
            c, d = rod.centre, rod.delta
            pred.append(0.5 * (float(p.loss(c + d)) + float(p.loss(c - d))))
        print(f"  started at step {k:4d}: first spike {first_spike_step(np.array(pred))}", flush=True)


def amplitude(case: str, T: int, every: int, opts: dict) -> None:
    p, lr, _ = load(case)
    W, _ = gd(p, lr, T + 4)
    rods = {}
    for name, extra in (("linear", {}), ("gd-multiplier", {"rate": "gd-multiplier"})):
        rod = processes.make("rod_flow", p, lr, **{**opts, **extra})
        rod.start(p.w0)
        path = [(rod.centre.clone(), rod.delta.clone())]
        for _ in range(T):
            rod.advance()
            path.append((rod.centre.clone(), rod.delta.clone()))
        rods[name] = path

    def top(w):
        e = top_eigs(lambda V: p.hvp_block(w, V), p.d, 1, tol=1e-9)
        return lr * float(e.values[0]), e.vectors[:, 0]

    print(f"{case}: step | GD ηλ₁, period-2 amplitude (4th / 6th difference) | rod ηλ₁, |δ·u| (linear) | (gd-multiplier)")
    for t in range(3, T + 1, every):
        s, u = top(0.5 * (W[t] + W[t + 1]))
        line = f"{t:4d} | {s:.3f} {abs(float(fourth(W, t) @ u)):.2e} {abs(float(sixth(W, t) @ u)):.2e}"
        for name in rods:
            c, d = rods[name][t]
            sr, ur = top(c)
            line += f" | {sr:.3f} {abs(float(d @ ur)):.2e}"
        print(line, flush=True)


def inject(case: str, K: int, level: float, opts: dict) -> None:
    """The rod from step 0; at step K its δ along the top eigenvector u of H(c) is set to ``level`` (sign kept):
    its first spike, mean distance to GD's midpoints and loss-prediction error with and without that seed."""
    p, lr, steps = load(case)
    W, L = gd(p, lr, steps + 2)
    Lbar = 0.5 * (L[:-1] + L[1:])[:steps]
    mids = 0.5 * (W[:-1] + W[1:])
    print(f"{case}: GD first spike {first_spike_step(Lbar)}; rod {opts or 'default'}")
    for seeded in (False, True):
        rod = processes.make("rod_flow", p, lr, **opts)
        rod.start(p.w0)
        pred, dist = [], []
        for t in range(steps):
            if t:
                rod.advance()
            if seeded and t == K:  # a new rod from the seeded state, its clock at 0 from here
                c, d = rod.centre.clone(), rod.delta.clone()
                u = top_eigs(lambda V: p.hvp_block(c, V), p.d, 1, tol=1e-9).vectors[:, 0]
                a = float(d @ u)
                d = d + (math.copysign(level, a) - a) * u
                rod = processes.make("rod_flow", p, lr, **opts)
                rod.start_state(c, d)
            c, d = rod.centre, rod.delta
            pred.append(0.5 * (float(p.loss(c + d)) + float(p.loss(c - d))))
            dist.append(float((c - mids[t]).norm()))
        err = float(np.abs(np.array(pred) - Lbar).sum() / np.abs(Lbar).sum())
        what = f"|δ·u| set to {level:g} at step {K}" if seeded else "as is"
        print(f"  {what}: first spike {first_spike_step(np.array(pred))}, distance {np.mean(dist):.4f}, "
              f"loss error {err:.4f}", flush=True)


def fullcorr(case: str) -> None:
    p, lr, steps = load(case)
    W, L = gd(p, lr, steps + 2)
    Lbar = 0.5 * (L[:-1] + L[1:])[:steps]
    mids = 0.5 * (W[:-1] + W[1:])
    print(f"{case}: GD first spike {first_spike_step(Lbar)}")
    for name, make in (("default", lambda: RodFlow(p, lr)), ("correction=True", lambda: RodFlow(p, lr, correction=True)),
                       ('correction="full"', lambda: RodFlow(p, lr, correction="full")),
                       ('correction="both"', lambda: RodFlow(p, lr, correction="both")),
                       ('"both" + gd-multiplier', lambda: RodFlow(p, lr, correction="both", rate="gd-multiplier")),
                       ('"both" + gd-eigen', lambda: RodFlow(p, lr, correction="both", rate="gd-eigen"))):
        rod = make()
        rod.start(p.w0)
        pred, dist, sharp = [], [], {}
        for t in range(steps):
            if t:
                rod.advance()
            c, d = rod.centre, rod.delta
            pred.append(0.5 * (float(p.loss(c + d)) + float(p.loss(c - d))))
            dist.append(float((c - mids[t]).norm()))
            if t in (3, 40) and p.d > 2:
                sharp[t] = tuple(lr * float(top_eigs(lambda V: p.hvp_block(w, V), p.d, 1, tol=1e-9).values[0])
                                 for w in (c, mids[t]))
        err = float(np.abs(np.array(pred) - Lbar).sum() / np.abs(Lbar).sum())
        lam = ", ".join(f"ηλ₁ at {t}: {a:.4f} (GD {b:.4f})" for t, (a, b) in sharp.items())
        print(f"  {name}: first spike {first_spike_step(np.array(pred))}, distance {np.mean(dist):.4f}, "
              f"loss error {err:.4f}" + (f"; {lam}" if lam else ""), flush=True)


def precision(case: str) -> None:
    for dtype in ("float64", "float32"):
        p, lr, steps = load(case, dtype)
        W, L = gd(p, torch.tensor(lr, dtype=p.w0.dtype), steps)
        Lbar = 0.5 * (L[:-1] + L[1:])
        osc = gd_oscillation(W.double().numpy())
        print(f"{case} {dtype}: GD onset {onset_step(np.asarray(osc))}, first spike {first_spike_step(Lbar)}")


def toy() -> None:
    import mpmath

    mpmath.mp.dps = 150  # exact enough that nothing below is rounding

    def seed(lam0: str, k1: str, k2: str | None = None, kink: str = "9") -> float:
        """ln of GD's period-2 amplitude at ηλ = 2, for a drift of 1 per step (target x*_t = t) and ηλ_t rising
        from lam0 by k1 per step (by k2 once ηλ ≥ kink), read at ηλ ≥ 3.5 by the 8th difference and carried
        back to ηλ = 2 with GD's own multipliers |1 − ηλ_t|."""
        a, b, split = mpmath.mpf(k1), mpmath.mpf(k2 or k1), mpmath.mpf(kink)
        lams = [mpmath.mpf(lam0)]
        while lams[-1] < 4.5:
            lams.append(lams[-1] + (a if lams[-1] < split else b))
        x, xs = mpmath.mpf(0), [mpmath.mpf(0)]
        for t, lam in enumerate(lams):
            x = x - lam * (x - t)
            xs.append(x)
        t2 = next(t for t, lam in enumerate(lams) if lam >= 2)
        t3 = next(t for t, lam in enumerate(lams) if lam >= 3.5)
        amp = abs(sum(c * xs[t3 + j] for j, c in zip(range(-4, 5), (1, -8, 28, -56, 70, -56, 28, -8, 1)))) / 256
        return float(mpmath.log(amp) - sum(mpmath.log(abs(1 - lams[t])) for t in range(t2, t3)))

    print("toy: GD x_{t+1} = x_t − ηλ_t (x_t − t), 150 digits: ln(period-2 amplitude at ηλ = 2)")
    print("constant sharpening rate k, from ηλ_0 = 0.5 / 1.0 (the step at ηλ = 1 erases all history):")
    for k in ("0.2", "0.125", "0.0625", "0.05"):
        a, b = seed("0.5", k), seed("1.0", k)
        print(f"  k = {k}: {a:.2f} / {b:.2f}   k·ln = {float(k) * a:.3f}")
    print("a kink: k = 0.05 then 0.125 (and 0.125 then 0.05) from ηλ ≈ 1.27 / 1.52 / 1.77 on:")
    for kink in ("1.27", "1.52", "1.77"):
        print(f"  at {kink}: {seed('0.5', '0.05', '0.125', kink):.2f} ({seed('0.5', '0.125', '0.05', kink):.2f})")


if __name__ == "__main__":
    torch.set_num_threads(1)
    argv = sys.argv[1:]
    if not argv:
        sys.exit(__doc__)
    cmd, rest = argv[0], argv[1:]
    if cmd == "restart":
        init = "half"
        if "--init" in rest:
            i = rest.index("--init")
            init = rest[i + 1]
            rest = rest[:i] + rest[i + 2:]
        restart(rest[0], [int(k) for k in rest[1].split(",")], init, options(rest[2:]))
    elif cmd == "amplitude":
        amplitude(rest[0], int(rest[1]), int(rest[2]), options(rest[3:]))
    elif cmd == "inject":
        inject(rest[0], int(rest[1]), float(rest[2]), options(rest[3:]))
    elif cmd == "fullcorr":
        fullcorr(rest[0])
    elif cmd == "precision":
        precision(rest[0])
    elif cmd == "toy":
        toy()
    else:
        sys.exit(f"unknown experiment {cmd!r}: choose restart, amplitude, inject, fullcorr, precision or toy")
