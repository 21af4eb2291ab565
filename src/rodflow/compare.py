"""The flagship experiment: GD, gradient flow, central flow and rod flow from one start, through progressive
sharpening into the edge of stability, with figures and a summary table.

A config is a TOML file (or the same dict)::

    name = "demo"                 # run directory runs/<name> unless given
    problem = "mlp-digits"        # a registered problem ...
    steps = 400
    lr = 0.08                     # ... and either a learning rate, or
    # s0_fraction = 0.4           # η chosen so that the initial sharpness is this fraction of 2/η
    methods = ["gd", "gradient_flow", "central_flow", "rod_flow"]   # default: all registered, in this order
    sharpness_every = 5           # any further rodflow.simulate keyword: neigs, dtype, seed, record_iterates, ...
    neigs = 3
    [params]                      # the problem's parameters
    n = 400
    [options.rod_flow]            # per-method options (rodflow.processes.options(name))
    rtol = 1e-6

``compare(config)`` runs it (``rodflow.simulate``), writes ``summary.csv``/``summary.md`` and the figures
into the run directory and returns a :class:`Comparison`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import problems, processes
from .configfile import read_toml
from .errors import RodflowError
from .records import Result, write_json
from .panels import gd_oscillation  # noqa: F401  (public name kept)
from .runconfig import RunConfig, check_keys, positive_float
from .simulate import simulate

EOS_FRACTION = 0.995
ORDER = ("gd", "gradient_flow", "central_flow", "rod_flow")
_RESERVED = {"name", "problem", "params", "steps", "lr", "s0_fraction", "methods", "options", "description"}
_SIM_KEYS = set(RunConfig.fields()) - {"lr", "steps", "methods", "options"}


@dataclasses.dataclass
class Comparison:
    result: Result
    summary: pd.DataFrame
    figures: list[Path]
    config: dict[str, Any]
    initial_sharpness: float | None


def default_methods(optimizer: str = "gd") -> list[str]:
    """Every registered method that models ``optimizer``: GD and the known flows first, then any others."""
    names = [m for m in processes.names()
             if processes.REGISTRY.get(m).optimizers is None or optimizer in processes.REGISTRY.get(m).optimizers]
    return [m for m in ORDER if m in names] + [m for m in names if m not in ORDER]


def _rule(config: dict[str, Any]):
    from . import optimizers

    return optimizers.make(config.get("optimizer", "gd"), **dict(config.get("optimizer_options", {})))


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    return read_toml(path, "config", "see configs/demo.toml")


def check_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config with defaults filled in; one-line errors for anything unusable."""
    config = dict(config)
    if "problem" not in config:
        raise RodflowError("config needs problem = \"<name>\" (see `rodflow problems`)")
    problems.REGISTRY.get(config["problem"])
    check_keys(config, sorted(_RESERVED | _SIM_KEYS), "config")
    if ("lr" in config) == ("s0_fraction" in config):
        raise RodflowError("config needs exactly one of lr = η or s0_fraction = S0 / (2/η) (e.g. 0.4)")
    if "lr" in config:
        config["lr"] = positive_float("lr", config["lr"])
    if "s0_fraction" in config:
        f = config["s0_fraction"]
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < math.inf:
            raise RodflowError(f"s0_fraction must be a positive number, got {f!r}")
    if not isinstance(config.get("params", {}), dict) or not isinstance(config.get("options", {}), dict):
        raise RodflowError("params and options must be TOML tables ([params], [options.<method>])")
    rule = _rule(config)
    if "s0_fraction" in config and rule.preconditioned:
        raise RodflowError(f"s0_fraction sets η from the Hessian's sharpness, but optimizer {rule.name!r} has its "
                           "threshold on λ_max(P⁻¹H): give lr = η instead")
    config.setdefault("steps", 200)
    config.setdefault("methods", default_methods(rule.name))
    config.setdefault("name", config["problem"])
    return config


def compare(config: dict[str, Any] | str | os.PathLike, out: str | os.PathLike | None = None,
            progress: bool | None = None, plots: bool = True) -> Comparison:
    """Run a comparison config; write the run directory, summary table and figures (see module docstring)."""
    if not isinstance(config, dict):
        config = load_config(config)
    config = check_config(config)
    out = Path(out) if out is not None else Path("runs") / str(config["name"])
    rule = _rule(config)
    sim_kwargs = {k: v for k, v in config.items() if k in _SIM_KEYS}
    dtype = sim_kwargs.get("dtype", "float64")
    problem = problems.make(config["problem"], dtype=dtype, device=sim_kwargs.get("device"),
                            **config.get("params", {}))
    s0 = None
    lr = config.get("lr")
    if "s0_fraction" in config or config.get("sharpness_every", 1):
        start = time.perf_counter()
        probe = simulate(problem, 1.0, steps=0, methods=["gd"], sharpness_every=1, dtype=dtype, progress=False)
        s0 = float(probe.metrics["sharpness"].iloc[0])
        s0_seconds = time.perf_counter() - start
        if lr is None:
            if not s0 > 0:
                raise RodflowError(f"initial sharpness is {s0:.3g} <= 0; give lr explicitly")
            # the threshold is ∝ 1/η: the η whose threshold is S0 / s0_fraction
            lr = float(config["s0_fraction"]) * rule.threshold(rule.init(problem.w0), 1.0, 1e6) / s0
    result = simulate(problem, lr=lr, steps=config["steps"], methods=config["methods"],
                      options=config.get("options", {}), out=out, progress=progress, **sim_kwargs)
    table = summary_table(result)
    table.to_csv(out / "summary.csv", index=False)
    info = {"config": config, "lr": lr, "optimizer": str(rule), "initial_sharpness": s0,
            "threshold": None if rule.preconditioned else rule.threshold(rule.init(problem.w0), lr, 1e6)}
    if s0 is not None:
        info["initial_sharpness_seconds"] = s0_seconds
    write_json(out / "compare.json", info)
    (out / "summary.md").write_text(markdown_report(result, table, s0))
    figures = plot_comparison(result, out / "plots") if plots else []
    return Comparison(result, table, figures, config, s0)


# --------------------------------------------------------------------------------------------- summary
def summary_table(result: Result) -> pd.DataFrame:
    """The run's per-method summary (rodflow.summary) plus the edge-of-stability facts and relative cost.

    Added columns: ``eos_step`` (first step whose sharpness, measured at the method's own point, reaches
    ``EOS_FRACTION`` · 2/η, or of the optimizer's threshold on its (preconditioned) sharpness: central flow holds
    its sharpness at 2/η up to the eigensolver's tolerance),
    ``time_vs_gd`` (seconds relative to GD's), ``rod_vs_gd_osc`` (mean over steps of |rod length −
    GD half step| / mean GD half step, rod flow only).
    """
    table = result.summary()
    eos, tvg = [], []
    gd_wall = float(table.loc[table["method"] == "gd", "wall_s"].iloc[0]) if (table["method"] == "gd").any() else None
    # the quantity the optimizer's threshold bounds: λ_max(P⁻¹H) with a preconditioner, else λ_max(H); the
    # threshold recorded by the method (2/η for plain GD, whose runs do not record it)
    col = "preconditioned_sharpness" if "preconditioned_sharpness" in result.metrics else "sharpness"
    for m in table["method"]:
        df = result.method(m)
        s = df[col].dropna() if col in result.metrics else pd.Series(dtype=float)
        thr = df["threshold"].reindex(s.index) if "threshold" in df else pd.Series(2.0 / result.lr, index=s.index)
        hit = s.index[s.values >= EOS_FRACTION * thr.values]
        eos.append(int(hit[0]) if len(hit) else np.nan)
        wall = float(table.loc[table["method"] == m, "wall_s"].iloc[0])
        tvg.append(wall / gd_wall if gd_wall else np.nan)
    table["eos_step"] = eos
    table["time_vs_gd"] = tvg
    osc = gd_oscillation(result)
    if osc is not None and "rod_length" in result.metrics:
        rel = []
        for m in table["method"]:
            rod = result.method(m).get("rod_length")
            if rod is None or rod.isna().all():
                rel.append(np.nan)
                continue
            both = pd.concat([rod, osc], axis=1, keys=["rod", "gd"]).dropna()
            scale = both["gd"].abs().mean()
            rel.append(float((both["rod"] - both["gd"]).abs().mean() / scale) if scale > 0 else np.nan)
        table["rod_vs_gd_osc"] = rel
    return table


COLUMNS = ("method", "status", "final_loss", "final_sharpness", "eos_step", "compared_to", "dist_mean",
           "dist_final", "loss_pred_err", "rod_vs_gd_osc", "grad_evals", "hvps", "d3", "wall_s", "time_vs_gd")


def markdown_table(table: pd.DataFrame, columns=COLUMNS) -> str:
    cols = [c for c in columns if c in table]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return "–"
        if float(v).is_integer() and abs(v) < 1e9:
            return str(int(v))
        return f"{v:.4g}"
    return str(v)


def markdown_report(result: Result, table: pd.DataFrame, s0: float | None) -> str:
    cfg = result.config
    from .optimizers import threshold_text

    head = (f"**{cfg['problem']['name']}** (d = {cfg['problem']['d']}, {cfg['dtype']}), η = {result.lr:.4g}, "
            f"{threshold_text(cfg, result.lr)}" + (f", initial sharpness {s0:.4g}" if s0 is not None else "")
            + f", {cfg['steps']} steps")
    params = ", ".join(f"{k}={v}" for k, v in cfg["problem"]["params"].items())
    return f"{head}\n\nparameters: {params}\n\n{markdown_table(table)}\n"


# --------------------------------------------------------------------------------------------- figures
def plot_comparison(result: Result, outdir: str | os.PathLike, fmt: str = "png") -> list[Path]:
    """Loss, sharpness & top eigenvalues vs 2/η, distance to GD, rod length vs GD oscillation, GFS sharpness
    (when recorded), each as its own file, plus ``overview`` with all panels."""
    import matplotlib.pyplot as plt

    from .panels import PANELS
    from .plotting import panel_figure, save_figure

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    active = [(name, fn) for name, fn in PANELS.items() if fn(result, None)]
    paths = [save_figure(panel_figure(result, fn, name), outdir, name, fmt) for name, fn in active]
    if active:
        cols = min(3, len(active))
        rows = math.ceil(len(active) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
        for ax, (name, fn) in zip(axes.flat, active):
            fn(result, ax)
            ax.set_title(name, fontsize=10)
        for ax in list(axes.flat)[len(active):]:
            ax.axis("off")
        fig.suptitle(f"{result.config['problem']['name']}, η = {result.lr:.4g} (2/η = {2 / result.lr:.4g})")
        fig.tight_layout()
        path = outdir / f"overview.{fmt}"
        fig.savefig(path, dpi=130, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths
