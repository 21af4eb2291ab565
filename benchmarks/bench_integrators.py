"""Cheap flows (issue 12): gradient evaluations per GD step of rod flow and gradient flow with each integrator
(srk4, the default; rkc; dopri),
and the accuracy rule — the relative change of each flow's mean distance to GD and of its loss-prediction error
against a tight Dormand-Prince solve (rtol 1e-10) — on the demo, reference-mlp, the configs/results networks and
the toys of science.md §5.

    .venv/bin/python benchmarks/bench_integrators.py [--quick] [case ...]

Rows: B2 (rod grads/step), B2a (rod accuracy change), B8 (gradient-flow grads/step and its accuracy change),
B2w (rod / GD wall over the same steps, demo). Only ``advance`` is counted and timed (what a model costs);
the observations (distances, losses) are computed afterwards from the recorded states.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from rodflow import integrators, problems, processes  # noqa: E402
from rodflow.compare import check_config, load_config  # noqa: E402
from rodflow.linalg.eigs import top_eigs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TIGHT = {"rod_flow": dict(integrator="dopri", rtol=1e-10, atol=1e-12, rod_rtol=1e-7),
         "gradient_flow": dict(integrator="dopri", rtol=1e-10, atol=1e-12)}
DEFAULT = integrators.DEFAULT
INTEGRATORS = (DEFAULT, *(name for name in integrators.SOLVERS if name != DEFAULT))
# RODFLOW_BENCH_OPTS="rod_flow.rtol=1e-3,gradient_flow.rtol=1e-4": options of the default integrator other than
# its defaults (the tolerance search of docs/performance.md)
EXTRA: dict = {}
for _item in filter(None, os.environ.get("RODFLOW_BENCH_OPTS", "").split(",")):
    _key, _value = _item.split("=")
    _m, _opt = _key.split(".")
    EXTRA.setdefault(_m, {})[_opt] = float(_value)
TARGETS = {"B2": 3.0, "B2a": 0.01, "B8": 1.5, "B8a": 0.01, "B2w": 3.5}


def _s0(p) -> float:
    return float(top_eigs(lambda V: p.hvp_block(p.w0, V), p.d, 1, tol=1e-8).values[0])


def _from_config(path: Path, steps: int | None = None):
    cfg = check_config(load_config(path))
    p = problems.make(cfg["problem"], **cfg.get("params", {}))
    lr = cfg["lr"] if "lr" in cfg else 2 * cfg["s0_fraction"] / _s0(p)
    return p, float(lr), int(steps or cfg["steps"])


def cases(quick: bool = False) -> dict:
    """name -> () -> (problem, lr, steps)."""
    out = {"demo": lambda: _from_config(ROOT / "src/rodflow/configs/demo.toml"),
           "reference-mlp": lambda: (problems.make("reference-mlp"), 0.2, 300 if quick else 1000)}
    for cfg in sorted((ROOT / "configs/results").glob("*.toml")):
        out[cfg.stem] = (lambda c=cfg: _from_config(c))
    for name in ("quadratic", "quartic", "self-stabilization", "sharp-valley", "scalar-network",
                 "squared-regression"):
        steps = 400 if quick or name != "sharp-valley" else 1500
        out[name] = (lambda n=name, s=steps: (problems.make(n), problems.make(n).suggested_lr, s))
    out["xyzw"] = lambda: (problems.make("scalar-network", depth=4, y=1.0), 0.2, 400)
    return out


def gd_reference(p, lr, steps):
    w = p.w0.clone()
    ws, losses = [w.clone()], []
    t0 = time.perf_counter()
    for _ in range(steps + 1):
        loss, g = p.loss_grad(w)
        losses.append(float(loss))
        w = w - lr * g
        ws.append(w.clone())
    wall = time.perf_counter() - t0
    loss, _ = p.loss_grad(w)
    losses.append(float(loss))
    return torch.stack(ws), np.array(losses), wall / (steps + 1)


def run_flow(p, lr, steps, method, **opts):
    """States at t = 1..steps; work and wall of ``advance`` only."""
    proc = processes.make(method, p, lr, **opts)
    states, walls = [], 0.0
    status = "ok"
    with p.counting() as spent:
        t0 = time.perf_counter()
        proc.start(p.w0)
        walls += time.perf_counter() - t0
        for _ in range(steps):
            t0 = time.perf_counter()
            try:
                proc.advance()
            except Exception as exc:  # noqa: BLE001 - a failed integration is a row, not a crash
                status = f"failed at step {proc.t}: {exc}"
                break
            walls += time.perf_counter() - t0
            states.append((proc.centre.clone(), proc.delta.clone()) if method == "rod_flow" else (proc.point().clone(), None))
    n = max(1, len(states))
    return dict(states=states, grads=spent.grad_evals / n, wall=walls / n, status=status,
                nfev=getattr(proc.ode, "nfev", np.nan), naccept=getattr(proc.ode, "naccept", np.nan),
                nreject=getattr(proc.ode, "nreject", np.nan))


def accuracy(p, W, L, states, method):
    """(mean distance to what the flow estimates, loss-prediction error) as in the run summary."""
    T = len(states)
    if T == 0:
        return np.nan, np.nan
    Lbar = 0.5 * (L[1:T + 1] + L[2:T + 2])
    if method == "rod_flow":
        ref = 0.5 * (W[1:T + 1] + W[2:T + 2])
        pts = torch.stack([c for c, _ in states])
        pred = np.array([0.5 * (float(p.loss(c + d)) + float(p.loss(c - d))) for c, d in states])
    else:
        ref = W[1:T + 1]
        pts = torch.stack([w for w, _ in states])
        pred = np.array([float(p.loss(w)) for w, _ in states])
    dist = float((pts - ref).norm(dim=1).mean())
    err = float(np.abs(pred - Lbar).sum() / max(np.abs(Lbar).sum(), 1e-300))
    return dist, err


def measure(name: str, make_case) -> list[dict]:
    torch.manual_seed(0)
    p, lr, steps = make_case()
    W, L, gd_wall = gd_reference(p, lr, steps)
    rows = []
    for method in ("rod_flow", "gradient_flow"):
        tight = run_flow(p, lr, steps, method, **TIGHT[method])
        d0, e0 = accuracy(p, W, L, tight["states"], method)
        for integ in INTEGRATORS:
            extra = EXTRA.get(method, {}) if integ == DEFAULT else {}
            r = run_flow(p, lr, steps, method, integrator=integ, **extra)
            d, e = accuracy(p, W, L, r["states"], method)
            rows.append(dict(case=name, d=p.d, steps=steps, method=method, integrator=integ, status=r["status"],
                             grads_per_step=r["grads"], wall_vs_gd=r["wall"] / gd_wall, dist_mean=d,
                             dist_change=d / d0 - 1, loss_err=e, loss_err_change=e / e0 - 1,
                             tight_grads_per_step=tight["grads"], naccept=r["naccept"], nreject=r["nreject"]))
    return rows


def summary_rows(frame: pd.DataFrame) -> list[dict]:
    """The issue's table: worst case over the cases for the default integrator (srk4)."""
    rk = frame[frame.integrator == DEFAULT]
    rod, gf = rk[rk.method == "rod_flow"], rk[rk.method == "gradient_flow"]
    demo = rod[rod.case == "demo"]
    worst = lambda s: float(s.abs().max()) if len(s) else np.nan  # noqa: E731
    rows = [
        dict(id="B2", what="rod flow gradients per GD step, max over cases", measured=float(rod.grads_per_step.max())),
        dict(id="B2", what="rod flow gradients per GD step, mean over cases", measured=float(rod.grads_per_step.mean())),
        dict(id="B2a", what="rod flow: max |relative change| of mean distance / loss error vs tight DOPRI",
             measured=max(worst(rod.dist_change), worst(rod.loss_err_change))),
        dict(id="B2w", what="rod flow / plain GD wall, demo", measured=float(demo.wall_vs_gd.iloc[0]) if len(demo) else np.nan),
        dict(id="B8", what="gradient flow gradients per GD step, max over cases", measured=float(gf.grads_per_step.max())),
        dict(id="B8a", what="gradient flow: max |relative change| of mean distance / loss error vs tight DOPRI",
             measured=max(worst(gf.dist_change), worst(gf.loss_err_change))),
    ]
    for r in rows:
        target = TARGETS.get(r["id"])
        r["target"] = target
        r["met"] = bool(r["measured"] <= target) if target is not None and np.isfinite(r["measured"]) else None
    return rows


def run(quick: bool = False, only: list[str] | None = None) -> dict:
    torch.set_num_threads(1)
    rows = []
    for name, make_case in cases(quick).items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        rows.extend(measure(name, make_case))
        print(f"# {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    frame = pd.DataFrame(rows)
    return {"cases": frame, "table": pd.DataFrame(summary_rows(frame))}


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    out = run(quick="--quick" in sys.argv, only=args or None)
    pd.set_option("display.width", 250)
    fmt = lambda x: f"{x:.4g}"  # noqa: E731
    print(out["cases"].drop(columns=["naccept", "nreject"]).to_string(index=False, float_format=fmt))
    print()
    print(out["table"].to_string(index=False, float_format=fmt))
