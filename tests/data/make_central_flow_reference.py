"""Extract tests/data/central_flow_reference.npz from the full reference fixture (shared/reference/).

    .venv/bin/python tests/data/make_central_flow_reference.py /path/to/central_flow_mlp_swish.npz

The compact file holds the problem (x, y, w0, lr), the reference's central-flow iterates inside a few
windows (restart points for the tests), per-step scalars over the whole run, and GD iterates up to the
step where GD turns chaotic. See docs/central_flow.md.
"""

import sys
from pathlib import Path

import numpy as np

# (start, steps): before the edge, across the onset (~489), during the EoS, near the end
WINDOWS = ((0, 15), (475, 25), (700, 15), (980, 15))
GD_ROWS = np.arange(0, 551, 25)


def main(src: str, dst: str | None = None) -> None:
    d = np.load(src)
    rows = sorted({t for t0, n in WINDOWS for t in range(t0, t0 + n + 1)})
    out = {
        "x": d["x"], "y": d["y"], "w0": d["w0"], "lr": d["lr"],
        "windows": np.array(WINDOWS),
        "cf_rows": np.array(rows), "w_cf": d["w_cf"][rows],
        "cf_loss": d["cf_loss"], "cf_loss_pred": d["cf_loss_pred"], "cf_X_trace": d["cf_X_trace"],
        "cf_eig_eff_1": d["cf_eigs_eff"][:, 0],
        "gd_loss": d["gd_loss"], "gd_rows": GD_ROWS, "w_gd": d["w_gd"][GD_ROWS],
    }
    dst = Path(dst or Path(__file__).with_name("central_flow_reference.npz"))
    np.savez_compressed(dst, **out)
    print(f"wrote {dst} ({dst.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main(*sys.argv[1:])
