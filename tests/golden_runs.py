"""Golden toy runs: their metrics are pinned in tests/golden/toy_runs.json so a refactor of the run pipeline
cannot change a number unnoticed. Regenerate (only when a change of numbers is intended, and say so in the
commit): ``.venv/bin/python tests/golden_runs.py``."""

import json
from pathlib import Path

import numpy as np

import rodflow

PATH = Path(__file__).parent / "golden" / "toy_runs.json"
COLUMNS = ("loss", "loss_pred", "sharpness", "dist_gd", "dist_gd_mid", "grad_norm", "grad_evals", "hvps", "d3")
METHODS = ["gd", "gradient_flow", "central_flow", "rod_flow"]
RUNS = {
    # (problem, params, lr, steps): each enters the edge of stability, short enough that rounding is not amplified
    "self-stabilization": ("self-stabilization", {"alpha": 0.7, "w0": [0.2, 7.5]}, 0.25, 40),
    "self-stabilization-diverging": ("self-stabilization", {}, 0.8, 12),  # GD diverges at step 8
    "sharp-valley": ("sharp-valley", {"zeta": 1.0, "eps": 0.05}, 0.35, 30),
    "quartic": ("quartic", {"S": 12.0, "Q": 1.0, "w0": 0.05}, 0.18, 25),
    "reference-mlp": ("reference-mlp", {"n": 32}, 0.2, 8),
}


def run(name: str) -> dict:
    problem, params, lr, steps = RUNS[name]
    r = rodflow.simulate(rodflow.problems.make(problem, **params), lr=lr, steps=steps, methods=METHODS,
                         sharpness_every=1, progress=False)
    out = {"status": {m: str(r.status[m]) for m in METHODS}, "metrics": {}}
    for m in METHODS:
        frame = r.method(m)
        out["metrics"][m] = {c: [None if not np.isfinite(v) else float(v) for v in frame[c].to_numpy(float)]
                             for c in COLUMNS if c in frame}
    return out


if __name__ == "__main__":
    PATH.parent.mkdir(exist_ok=True)
    PATH.write_text(json.dumps({name: run(name) for name in RUNS}, indent=0) + "\n")
    print(f"wrote {PATH}")
