"""`make gpu-check`: the demo on a CUDA device in float64 and float32, against the CPU float64 run.

For GD, central flow and rod flow it prints, per (device, dtype), the largest relative iterate difference from
the CPU float64 run, the difference in mean distance to GD, the largest relative sharpness difference, the largest
loss-prediction difference, and the per-step cost (gradient evaluations and wall time per GD step). Without
CUDA it says so and exits 0. One command, well under 10 minutes on one GPU (the CPU reference is the slow part:
~2 CPU-minutes at the default 300 steps).

    .venv/bin/python benchmarks/gpu_check.py                    # cuda, 300 steps
    .venv/bin/python benchmarks/gpu_check.py --device cuda:1 --steps 150 --out benchmarks/results/gpu.json
    .venv/bin/python benchmarks/gpu_check.py --device cpu --steps 20  # the same comparison on the CPU (tests)

What to expect (docs/performance.md): float64 on CUDA matches the CPU to rounding amplified by the dynamics
(≲1e-10 relative before the edge of stability; GD's oscillation at the edge amplifies any difference, so later
steps can differ by more); float32 by ~1e-6 before the edge, and the sharpness to the eigensolver's tolerance.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import rodflow  # noqa: E402
from rodflow.devices import resolve_device  # noqa: E402

METHODS = ("gd", "central_flow", "rod_flow")
DEMO = {"problem": "mlp-digits", "params": dict(n=200, classes=10, width=32, depth=2, activation="tanh", loss="mse"),
        "s0_fraction": 0.95, "sharpness_every": 5, "neigs": 2}


def run(device: str, dtype: str, lr: float, steps: int):
    problem = rodflow.problems.make(DEMO["problem"], device=device, **DEMO["params"])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = rodflow.simulate(problem, lr=lr, steps=steps, methods=METHODS, sharpness_every=DEMO["sharpness_every"],
                              neigs=DEMO["neigs"], dtype=dtype, device=device, progress=False)
    return result, time.perf_counter() - start


def compare(result, reference, steps: int) -> list[dict]:
    rows = []
    summary = result.summary().set_index("method")
    ref_summary = reference.summary().set_index("method")
    for m in METHODS:
        w, w_ref = result.iterates[m].astype(np.float64), reference.iterates[m].astype(np.float64)
        rel = np.linalg.norm(w - w_ref, axis=1) / np.maximum(np.linalg.norm(w_ref, axis=1), 1e-300)
        a, b = result.method(m), reference.method(m)
        s, s_ref = a["sharpness"].to_numpy(float), b["sharpness"].to_numpy(float)
        both = np.isfinite(s) & np.isfinite(s_ref)
        rows.append({
            "method": m,
            "status": result.status[m],
            "iterate_rel_max": float(np.nanmax(rel)),
            "iterate_rel_final": float(rel[-1]),
            "dist_mean": float(summary.loc[m, "dist_mean"]),
            "dist_mean_cpu64": float(ref_summary.loc[m, "dist_mean"]),
            "sharpness_rel_max": float(np.max(np.abs(s[both] - s_ref[both]) / np.abs(s_ref[both]))) if both.any()
            else math.nan,
            "sharpness_nan": int(np.sum(~np.isfinite(s) & np.isfinite(s_ref))),
            "loss_pred_abs_max": float(np.nanmax(np.abs(a["loss_pred"].to_numpy(float) - b["loss_pred"].to_numpy(float)))),
            "grad_evals_per_step": float(summary.loc[m, "grad_evals_per_step"]),
            "wall_ms_per_step": 1e3 * float(summary.loc[m, "wall_s"]) / steps,
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="the device to check (default cuda)")
    parser.add_argument("--steps", type=int, default=300, help="GD steps (default 300, the demo's)")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        print(f"gpu-check: no CUDA device on this machine (torch {torch.__version__}, {build}); nothing to check")
        return 0
    device = str(resolve_device(args.device))
    # the demo's η from the CPU float64 initial sharpness, so every run uses the same η
    reference_problem = rodflow.problems.make(DEMO["problem"], **DEMO["params"])
    probe = rodflow.simulate(reference_problem, 1.0, steps=0, methods=["gd"], sharpness_every=1, progress=False)
    lr = 2.0 * DEMO["s0_fraction"] / float(probe.metrics["sharpness"].iloc[0])
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"
    print(f"gpu-check: demo ({DEMO['problem']}, {args.steps} steps, lr {lr:.5g}) on {device} ({name})")
    reference, ref_seconds = run("cpu", "float64", lr, args.steps)
    print(f"  cpu float64 reference: {ref_seconds:.1f} s")
    rows = []
    for dtype in ("float64", "float32"):
        result, seconds = run(device, dtype, lr, args.steps)
        print(f"\n  {device} {dtype}: {seconds:.1f} s")
        print(f"  {'method':<13}{'status':<8}{'iterate rel':>12}{'dist_mean':>11}{'(cpu f64)':>11}"
              f"{'sharp rel':>11}{'loss_pred':>11}{'grads/step':>11}{'ms/step':>9}")
        for row in compare(result, reference, args.steps):
            row.update(device=device, dtype=dtype)
            rows.append(row)
            print(f"  {row['method']:<13}{row['status'][:7]:<8}{row['iterate_rel_max']:>12.2e}{row['dist_mean']:>11.4g}"
                  f"{row['dist_mean_cpu64']:>11.4g}{row['sharpness_rel_max']:>11.2e}{row['loss_pred_abs_max']:>11.2e}"
                  f"{row['grad_evals_per_step']:>11.2f}{row['wall_ms_per_step']:>9.2f}")
    for row in compare(reference, reference, args.steps):
        row.update(device="cpu", dtype="float64")
        rows.append(row)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"lr": lr, "steps": args.steps, "device_name": name, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
