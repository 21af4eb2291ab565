"""The benchmark table B1..B7 of issue 7 (what users pay), every entry a ratio measured in this one process run.

    .venv/bin/python benchmarks/bench_table.py [--full]

B1 rod flow vs central flow, wall time per unit of GD time (network problem; reference-mlp window 475..535)
B2 rod flow vs plain GD over the same horizon, at the loosest rod tolerance within 10% of a tight solve's
   distance to GD
B3 our central flow vs the reference implementation's recorded wall time (README §6; different machine/load)
B4 warm-started sharpness tracking vs a cold scipy eigsh (Lanczos) call: HVPs per call at 1e-4
B5 one GFS evaluation vs fixed-step RK4 at h = 1/S (and what RK4 needs to reach the same φ accuracy)
B5-net the same on real data (mlp-digits n = 20, 10 classes, width 32, d = 2410), work in gradient-equivalents
B6 HVP/gradient throughput per architecture and HVP path (bench_hvp)
B7 cost per step and peak RSS of GD, rod flow, central flow vs parameter count and dataset size (subprocesses)
B2/B2a/B8 (issue 12, bench_integrators): rod flow and gradient flow gradients per GD step with their default
   integrator on every benchmark case, and the change of their accuracy against a tight Dormand-Prince solve

Only the dynamics are timed (``advance``), not the per-step observations every process records in simulate.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rodflow import problems, processes  # noqa: E402
from rodflow.linalg.eigs import top_eigs  # noqa: E402
from rodflow.problems.reference_mlp import mlp_problem  # noqa: E402

ROOT = HERE.parent
COMPACT = ROOT / "tests" / "data" / "central_flow_reference.npz"
TARGETS = {"B1": 1 / 40, "B2": 3.5, "B3": 1.0, "B4": 1 / 3, "B5": 1 / 5, "B5-net": 1 / 5}
# the flagship network problem (the demo's: 2 x 32 tanh MLP on 200 digits, MSE), lr with 2/lr = S0 / 0.95
NETWORK = ("mlp-digits", dict(n=200, width=32, depth=2, activation="tanh", loss="mse"), 0.95)
# rod tolerances (rtol, atol, rod_rtol), loosest first; the last is the tight reference solve
# the loosest: within 0.1% of the tight solve's distance to GD in B2 (the model error dominates)
LOOSE = dict(rtol=1e-3, atol=1e-5, rod_rtol=1e-2)
ROD_TOLS = ((1e-3, 1e-5, 1e-2), (1e-4, 1e-6, 1e-3), (1e-6, 1e-8, 1e-4), (1e-10, 1e-12, 1e-7))


def sharpness(problem, w, tol=1e-6) -> float:
    return float(top_eigs(lambda V: problem.hvp_block(w, V), problem.d, 1, tol=tol).values[0])


def timed_process(name, problem, lr, w0, steps, **opts) -> dict:
    """Start ``name`` at w0 and advance ``steps`` unit times; wall time and work of the advances only."""
    proc = processes.make(name, problem, lr, **opts)
    with problem.counting() as spent_start:
        t0 = time.perf_counter()
        proc.start(w0)
        t_start = time.perf_counter() - t0
    walls, points = [], [proc.point().clone()]
    with problem.counting() as spent:
        for _ in range(steps):
            t0 = time.perf_counter()
            proc.advance()
            walls.append(time.perf_counter() - t0)
            points.append(proc.point().clone())
    walls = np.array(walls)
    return dict(process=proc, walls=walls, wall_s=float(walls.sum() + t_start), start_s=t_start,
                grad_evals=spent.grad_evals + spent_start.grad_evals, hvps=spent.hvps + spent_start.hvps,
                d3=spent.d3 + spent_start.d3, points=torch.stack(points).numpy())


def network_problem():
    name, params, frac = NETWORK
    p = problems.make(name, **params)
    s0 = sharpness(p, p.w0)
    return p, 2 * frac / s0, s0


# ----------------------------------------------------------------------------------------------- B1, B3
def b1_b3_reference(steps: int) -> dict:
    """Central flow and rod flow on reference-mlp (lr 0.2) from the stored central-flow iterate at step 475."""
    with np.load(COMPACT) as d:
        ref = {k: d[k] for k in d.files}
    row = int(np.flatnonzero(ref["cf_rows"] == 475)[0])
    w = torch.as_tensor(ref["w_cf"][row])
    p = mlp_problem(ref["x"], ref["y"], w)
    lr = float(ref["lr"])
    cf = timed_process("central_flow", p, lr, w, steps)
    rod = timed_process("rod_flow", p, lr, w, steps)
    loose = timed_process("rod_flow", p, lr, w, steps, **LOOSE)
    rows_t = 475 + np.arange(steps)  # the advance out of w_t computes row t+1's step: count it at t+1
    walls = cf["walls"]
    pre, post = walls[rows_t + 1 <= 489], walls[rows_t + 1 > 489]
    from bench_central_flow import REF_WALL  # the reference's recorded wall times
    ref_total, ref_excl = REF_WALL[0.2]
    ref_pre, ref_post = 0.050, 0.092  # s per step before / after the SDCP becomes active (README §6)
    # the early steps (from w0, stored row 0) stand for most of the 489 pre-onset steps
    early = timed_process("central_flow", mlp_problem(ref["x"], ref["y"], ref["w0"]), lr, torch.as_tensor(ref["w0"]), 15)
    early_s = float(early["walls"].mean())
    est_1000 = 489 * early_s + 511 * float(post.mean())
    return dict(
        window=[475, 475 + steps], lr=lr, d=p.d,
        cf_s_per_step=cf["wall_s"] / steps, rod_s_per_step=rod["wall_s"] / steps,
        cf_hvps_per_step=cf["hvps"] / steps, cf_d3_per_step=cf["d3"] / steps,
        rod_grad_evals_per_step=rod["grad_evals"] / steps,
        B1_ratio=rod["wall_s"] / cf["wall_s"], B1_ratio_loose=loose["wall_s"] / cf["wall_s"],
        rod_loose_grad_evals_per_step=loose["grad_evals"] / steps,
        cf_s_per_step_pre=float(pre.mean()), cf_s_per_step_post=float(post.mean()),
        ref_s_per_step_pre=ref_pre, ref_s_per_step_post=ref_post,
        cf_s_per_step_early=early_s, B3_ratio_early=early_s / ref_pre, B3_ratio_pre=float(pre.mean()) / ref_pre, B3_ratio_post=float(post.mean()) / ref_post,
        cf_est_1000_steps_s=est_1000, ref_1000_steps_s_excl_row0=ref_excl,
        B3_ratio=est_1000 / ref_excl,
    )


def b1_network(steps: int) -> dict:
    p, lr, s0 = network_problem()
    cf = timed_process("central_flow", p, lr, p.w0, steps)
    rod = timed_process("rod_flow", p, lr, p.w0, steps)
    loose = timed_process("rod_flow", p, lr, p.w0, steps, **LOOSE)
    return dict(problem=NETWORK[0], params=NETWORK[1], d=p.d, lr=lr, s0=s0, steps=steps,
                cf_s_per_step=cf["wall_s"] / steps, rod_s_per_step=rod["wall_s"] / steps,
                cf_hvps_per_step=cf["hvps"] / steps, cf_d3_per_step=cf["d3"] / steps,
                cf_max_k=int(cf["process"].k_track), rod_grad_evals_per_step=rod["grad_evals"] / steps,
                B1_ratio=rod["wall_s"] / cf["wall_s"], B1_ratio_loose=loose["wall_s"] / cf["wall_s"],
                rod_loose_grad_evals_per_step=loose["grad_evals"] / steps)


# --------------------------------------------------------------------------------------------------- B2
def b2_rod_vs_gd(steps: int) -> dict:
    p, lr, s0 = network_problem()
    gd = timed_process("gd", p, lr, p.w0, steps + 1)
    W = gd["points"]  # w_0 .. w_{steps+1}
    rows = []
    for rtol, atol, rod_rtol in ROD_TOLS:
        r = timed_process("rod_flow", p, lr, p.w0, steps, rtol=rtol, atol=atol, rod_rtol=rod_rtol)
        C = r["points"]  # the rod centre c_t models GD's midpoint (w_t + w_{t+1})/2
        rows.append(dict(rtol=rtol, atol=atol, rod_rtol=rod_rtol, wall_s=r["wall_s"], grad_evals=r["grad_evals"],
                         dist_mid_mean=float(np.linalg.norm(C - 0.5 * (W[:-1] + W[1:]), axis=1).mean())))
    tight = rows[-1]["dist_mid_mean"]
    for r in rows:
        r["dist_vs_tight"] = r["dist_mid_mean"] / tight - 1
    chosen = next(r for r in rows if abs(r["dist_vs_tight"]) <= 0.10)
    return dict(problem=NETWORK[0], d=p.d, lr=lr, steps=steps, gd_wall_s=gd["wall_s"], gd_grad_evals=gd["grad_evals"],
                rows=rows, chosen=dict(rtol=chosen["rtol"], atol=chosen["atol"], rod_rtol=chosen["rod_rtol"]),
                rod_grad_evals_per_step=chosen["grad_evals"] / steps,
                B2_ratio=chosen["wall_s"] / (gd["wall_s"] * steps / (steps + 1)),
                B2_grad_eval_ratio=chosen["grad_evals"] / steps)


# --------------------------------------------------------------------------------------------------- B7
def _teacher(width: int, n: int, data: str = "teacher"):
    """B7's problems: a 2 x width tanh MLP on Gaussian teacher data (10 inputs) or on n image-shaped examples
    (Fashion-MNIST 28 x 28 when the dataset is installed, else Gaussian 784-dimensional inputs of a teacher)."""
    if data == "images":
        try:
            return problems.make("mlp-fashion", n=n, classes=10, width=width, depth=2, activation="tanh", loss="mse")
        except RodflowError:
            return problems.make("mlp-teacher", n=n, width=width, depth=2, activation="tanh", loss="mse", dim=784,
                                 classes=10)
    return problems.make("mlp-teacher", n=n, width=width, depth=2, activation="tanh", loss="mse")


def b7_child(method: str, width: int, n: int, lr: float, steps: int, data: str = "teacher") -> dict:
    """(in a subprocess) per-step wall time and peak RSS of one process on one size."""
    torch.set_num_threads(1)
    p = _teacher(width, n, data)
    rss0 = peak_rss_mb()
    if method == "idle":
        return dict(d=p.d, rss_mb=rss0)
    r = timed_process(method, p, lr, p.w0, steps)
    walls = r["walls"][1:] if steps > 1 else r["walls"]
    return dict(d=p.d, s_per_step=float(np.median(walls)), grad_evals_per_step=r["grad_evals"] / steps,
                hvps_per_step=r["hvps"] / steps, rss_mb=peak_rss_mb(),
                rss_before_mb=rss0)


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM; ru_maxrss would carry the parent's peak over fork + exec)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, str(Path(__file__)), "--child", *args], capture_output=True, text=True,
                         env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}, timeout=900)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


B7_SIZES = [(22, 1000, "teacher"), (90, 1000, "teacher"), (300, 1000, "teacher"), (90, 250, "teacher"),
            (90, 4000, "teacher")]
# d ≈ 1e6 and n up to 5000 image-shaped examples (issue 13): a few steps each, the first (cold-start) included
B7_LARGE_SIZES = [(994, 1000, "teacher"), (600, 1000, "images"), (600, 5000, "images")]


def b7_scaling(quick: bool, sizes=None, steps=None) -> dict:
    sizes = B7_SIZES if sizes is None else sizes
    if steps is None:
        steps = {"gd": 20, "rod_flow": 10, "central_flow": 4} if quick else {"gd": 50, "rod_flow": 20,
                                                                             "central_flow": 10}
    rows = []
    for width, n, data in sizes:
        torch.set_num_threads(1)
        p = _teacher(width, n, data)
        # η S0 = 1: below the edge, the flows' everyday regime (S0 to 1e-3: η needs no more)
        s0 = float(top_eigs(lambda V: p.hvp_block(p.w0, V), p.d, 1, tol=1e-3).values[0])
        lr = 1.0 / s0
        row = dict(width=width, n=n, d=p.d, lr=lr, data=data, problem=p.name, dtype="float64")
        del p
        row["idle_rss_mb"] = _child(["idle", str(width), str(n), "0", "0", data]).get("rss_mb")
        for m, k in steps.items():
            r = _child([m, str(width), str(n), repr(lr), str(k), data])
            for key in ("s_per_step", "grad_evals_per_step", "hvps_per_step", "rss_mb", "error"):
                if key in r:
                    row[f"{m}_{key}"] = r[key]
        rows.append(row)
        print("  B7", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return dict(rows=rows, steps=steps)


def b7_large() -> dict:
    """B7 at d ≈ 1e6 and n = 5000 (≈ 25 min on one core; `bench_table.py --rerun B7_large`, or `run.py --full`)."""
    return b7_scaling(True, sizes=B7_LARGE_SIZES, steps={"gd": 5, "rod_flow": 3, "central_flow": 2})


def _plot_b7(out: dict) -> None:
    """docs/figures/bench_scaling.png from the rows of B7 and B7_large (whichever were measured)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401
    rows = [r for key in ("B7", "B7_large") for r in (_get(out, key, "rows") or [])]
    if not rows:
        return
    def image(r: dict) -> bool:
        return r.get("data") == "images"

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.0))
    colors = {"gd": "C0", "rod_flow": "C1", "central_flow": "C2"}
    rs = sorted((r for r in rows if r["n"] == 1000 and not image(r)), key=lambda r: r["d"])
    for m in colors:
        axes[0].loglog([r["d"] for r in rs], [r.get(f"{m}_s_per_step", np.nan) for r in rs], "o-", color=colors[m],
                       label=m)
    axes[0].set_xlabel("parameters d (teacher data, n = 1000)")
    for group, style, sel in (("teacher, d ≈ 9e3", "o-", lambda r: r["width"] == 90 and not image(r)),
                              ("images, d ≈ 8e5", "s--", image)):
        rs = sorted((r for r in rows if sel(r)), key=lambda r: r["n"])
        for m in colors:
            axes[1].loglog([r["n"] for r in rs], [r.get(f"{m}_s_per_step", np.nan) for r in rs], style,
                           color=colors[m], label=f"{m} ({group})")
    axes[1].set_xlabel("examples n")
    for ax in axes[:2]:
        ax.set_ylabel("seconds per unit GD time")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    rs = sorted(rows, key=lambda r: (r["d"], r["n"]))
    def short(x: int) -> str:
        return f"{x / 1e6:.1f}M" if x >= 1e6 else (f"{x / 1e3:.0f}k" if x >= 1e4 else str(x))

    labels = [f"d {short(r['d'])}\nn {r['n']}" for r in rs]
    x = np.arange(len(rs))
    for i, m in enumerate(("idle", "gd", "rod_flow", "central_flow")):
        key = "idle_rss_mb" if m == "idle" else f"{m}_rss_mb"
        axes[2].bar(x + 0.2 * (i - 1.5), [r.get(key, np.nan) for r in rs], 0.2, label=m)
    axes[2].set_xticks(x, labels, fontsize=7)
    axes[2].set_ylabel("peak RSS (MB)")
    axes[2].legend(fontsize=7)
    fig.suptitle("B7: cost per step and peak memory (2 x width tanh MLP, float64, 1 thread)")
    fig.tight_layout()
    out_dir = ROOT / "docs" / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / "bench_scaling.png", dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ table
def _cheap_flows(quick: bool) -> dict:
    """Issue 12's table (bench_integrators): gradients per GD step and the accuracy rule, every case."""
    import bench_integrators

    out = bench_integrators.run(quick=quick)
    return {"cases": out["cases"].to_dict(orient="records"), "table": out["table"].to_dict(orient="records")}


def run(quick: bool = True) -> dict:
    torch.set_num_threads(1)
    import bench_gfs
    import bench_hvp
    import bench_sharpness
    out: dict = {"load_avg_start": os.getloadavg()}
    parts = (
        ("B6", lambda: bench_hvp.run(quick=quick)),
        ("B4", lambda: bench_sharpness.run(quick=quick)),
        ("B5", lambda: bench_gfs.run()),
        ("B5-net", lambda: bench_gfs.run_network()),
        ("B1_B3_reference", lambda: b1_b3_reference(60 if quick else 120)),
        ("B1_network", lambda: b1_network(150 if quick else 300)),
        ("B2", lambda: b2_rod_vs_gd(150 if quick else 300)),
        ("B7", lambda: b7_scaling(quick)),
        *((("B7_large", b7_large),) if not quick else ()),
        ("B2_B8", lambda: _cheap_flows(quick)),
    )
    for key, fn in parts:
        t0 = time.perf_counter()
        print(f"-- {key}", flush=True)
        try:
            out[key] = fn()
        except Exception as exc:  # one broken entry must not hide the others
            import traceback
            traceback.print_exc()
            out[key] = {"error": f"{type(exc).__name__}: {exc}"}
        out[key]["seconds"] = round(time.perf_counter() - t0, 1)
        out[key]["load_avg"] = os.getloadavg()[0]
    _plot_b7(out)
    out["table"] = table(out)
    print_table(out["table"])
    return out


def _get(d: dict, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def table(out: dict) -> list[dict]:
    b6 = out.get("B6", {})
    rows = [
        dict(id="B1", what="rod (default tol) / central flow wall per unit GD time, " + str(_get(out, "B1_network", "problem")),
             value=_get(out, "B1_network", "B1_ratio"), target=TARGETS["B1"]),
        dict(id="B1", what="rod / central flow wall per unit GD time, reference-mlp steps 475-535",
             value=_get(out, "B1_B3_reference", "B1_ratio"), target=TARGETS["B1"]),
        dict(id="B1", what="same, network, rod flow at the loose B2 tolerance (rtol 1e-3)",
             value=_get(out, "B1_network", "B1_ratio_loose"), target=TARGETS["B1"]),
        dict(id="B1", what="same, reference-mlp, rod flow at the loose B2 tolerance (rtol 1e-3)",
             value=_get(out, "B1_B3_reference", "B1_ratio_loose"), target=TARGETS["B1"]),
        dict(id="B2", what=f"rod flow / GD wall, same horizon (grad evals ratio {_fmt(_get(out, 'B2', 'B2_grad_eval_ratio'))})",
             value=_get(out, "B2", "B2_ratio"), target=TARGETS["B2"]),
        dict(id="B3", what="our central flow / reference wall (1000-step estimate from the window; other machine)",
             value=_get(out, "B1_B3_reference", "B3_ratio"), target=TARGETS["B3"]),
        dict(id="B3", what="same, steps 0-15 (s per step vs the reference's pre-onset 0.050)",
             value=_get(out, "B1_B3_reference", "B3_ratio_early"), target=TARGETS["B3"]),
        dict(id="B3", what="same, steps 475-489, just before the onset (vs 0.050)",
             value=_get(out, "B1_B3_reference", "B3_ratio_pre"), target=TARGETS["B3"]),
        dict(id="B3", what="same, after the onset (s per step vs 0.092)",
             value=_get(out, "B1_B3_reference", "B3_ratio_post"), target=TARGETS["B3"]),
        dict(id="B4", what="warm tracking HVPs per call / cold eigsh (Lanczos) HVPs per call, tol 1e-4",
             value=_get(out, "B4", "hvp_ratio_vs_eigsh"), target=TARGETS["B4"]),
        dict(id="B5", what="GFS grad evals (+2 per HVP) / RK4 grad evals at the same φ accuracy",
             value=_get(out, "B5", "B5_grad_eval_ratio"), target=TARGETS["B5"]),
        dict(id="B5", what="GFS wall / RK4 wall at the same φ accuracy",
             value=_get(out, "B5", "B5_wall_ratio"), target=TARGETS["B5"]),
        dict(id="B5-net", what="mlp-digits d=2410: GFS / RK4 at the same φ accuracy, gradient-equivalents (HVP, J "
                                "products at their measured time ratio; grad evals alone "
                                f"{_fmt(_get(out, 'B5-net', 'B5net_grad_eval_ratio'))}"
                                f"{'' if _get(out, 'B5-net', 'rk4_matched') is not False else '; RK4 never matched: a bound'})",
             value=_get(out, "B5-net", "B5net_grad_equiv_ratio"), target=TARGETS["B5-net"]),
        dict(id="B5-net", what="same, wall time",
             value=_get(out, "B5-net", "B5net_wall_ratio"), target=TARGETS["B5-net"]),
    ]
    for r in _get(out, "B2_B8", "table") or []:
        rows.append(dict(id=r["id"], what=r["what"], value=r["measured"], target=r["target"]))
    for arch, best in (b6.get("fastest") or {}).items():
        rows.append(dict(id="B6", what=f"{arch}: fastest HVP path {best['method']} (HVP/grad time)",
                         value=best["hvp_over_grad"], target=None))
    for r in (_get(out, "B7", "rows") or []) + (_get(out, "B7_large", "rows") or []):
        rows.append(dict(id="B7", what=f"d={r['d']} n={r['n']}: rod/GD, central/GD per step; RSS MB gd/rod/cf "
                                      f"{_fmt(r.get('gd_rss_mb'))}/{_fmt(r.get('rod_flow_rss_mb'))}/{_fmt(r.get('central_flow_rss_mb'))}",
                         value=_ratio(r.get("rod_flow_s_per_step"), r.get("gd_s_per_step")),
                         value2=_ratio(r.get("central_flow_s_per_step"), r.get("gd_s_per_step")), target=None))
    for r in rows:
        t, v = r["target"], r["value"]
        r["met"] = None if t is None or v is None else bool(v <= t)
    return rows


def _ratio(a, b):
    return None if a is None or b is None else a / b


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def print_table(rows: list[dict]) -> None:
    print(f"\n{'id':6} {'value':>8} {'target':>7} {'met':>4}  what")
    for r in rows:
        v = _fmt(r["value"]) + (f", {_fmt(r['value2'])}" if "value2" in r else "")
        t = "report" if r["target"] is None else f"{r['target']:.3g}"
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        print(f"{r['id']:6} {v:>8} {t:>7} {met:>4}  {r['what']}")


def rerun(parts: list[str], quick: bool = True) -> None:
    """Re-measure some parts of the table in benchmarks/results/latest.json (e.g. at a quieter moment)."""
    path = HERE / "results" / "latest.json"
    res = json.loads(path.read_text())
    out = res["benchmarks"]["table"]
    fns = {"B1_B3_reference": lambda: b1_b3_reference(60 if quick else 120), "B7": lambda: b7_scaling(quick),
           "B7_large": b7_large, "B1_network": lambda: b1_network(150 if quick else 300), "B2": lambda: b2_rod_vs_gd(150 if quick else 300),
           "B5-net": lambda: __import__("bench_gfs").run_network()}
    for key in parts:
        t0 = time.perf_counter()
        out[key] = fns[key]()
        out[key].update(seconds=round(time.perf_counter() - t0, 1), load_avg=os.getloadavg()[0],
                        remeasured=time.strftime("%Y-%m-%dT%H:%M"))
    _plot_b7(out)
    out["table"] = table(out)
    print_table(out["table"])
    path.write_text(json.dumps(res, indent=2, default=float) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--rerun":
        torch.set_num_threads(1)
        rerun(sys.argv[2].split(","))
    elif len(sys.argv) > 1 and sys.argv[1] == "--child":
        m, width, n, lr, steps, data = sys.argv[2:8]
        print(json.dumps(b7_child(m, int(width), int(n), float(lr), int(steps), data)))
    else:
        res = run(quick="--full" not in sys.argv)
