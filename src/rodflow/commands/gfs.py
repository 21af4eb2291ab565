"""``rodflow gfs``: GFS sharpness along GD on scalar networks (depth 2–6, balanced and unbalanced starts with
φ0 > 2/η), on the squared regression model and on a small network on real data, with plots and tables."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import typer

from .base import command, parse_pairs, set_threads
from ..errors import RodflowError


def scalar_sweep(depths=(2, 3, 4, 5, 6), lrs=None, steps: int = 400, y: float = 1.0):
    """GD on ½(∏w − y)² from balanced and unbalanced starts whose φ0 exceeds 2/η; φ every step (``simulate``
    runs of GD with ``gfs_every=1``; a run whose loss passes 1e12 counts as diverged)."""
    import numpy as np

    from .. import problems
    from ..gfs import monotonicity, scalar_network_gfs
    from ..simulate import simulate

    rows, traces = [], {}
    for D in depths:
        for start in ("balanced", "unbalanced"):
            base = np.full(D, 1.3) if start == "balanced" else np.array([2.0] + [0.6] * (D - 1))
            phi0 = scalar_network_gfs(base, y)[1]
            for frac in (lrs or (1.05, 1.3, 1.8)):
                lr = frac * 2.0 / phi0  # φ0 = frac · 2/η > 2/η
                p = problems.make("scalar-network", depth=D, y=y, w0=list(base))
                loss0 = max(1.0, float(p.loss(p.w0)))
                res = simulate(p, lr=lr, steps=steps - 1, methods=["gd"], sharpness_every=1, gfs_every=1,
                               diverge_factor=1e12 / loss0, progress=False)
                df = res.method("gd")
                evaluated = df[df["gfs_converged"].notna()]
                loss, sharp, phis = (df[c].tolist() for c in ("loss", "sharpness", "gfs_sharpness"))
                final_phi = next((v for v in reversed(phis) if math.isfinite(v)), math.nan)
                diverged = res.status["gd"].kind == "diverged"
                converged = not diverged and loss[-1] < 1e-10
                rows.append(dict(depth=D, start=start, lr=lr, two_over_lr=2 / lr, phi0=phi0,
                                 final_sharpness=sharp[-1], final_phi=final_phi, final_loss=loss[-1],
                                 gd_converged=converged,
                                 outcome=("diverged" if diverged else
                                          f"not converged in {steps} steps" if not converged else
                                          "EoS (φ≈2/η)" if abs(final_phi - 2 / lr) <= 0.02 * 2 / lr else
                                          "below 2/η (overshoot)"),
                                 **monotonicity(evaluated["gfs_sharpness"], evaluated["gfs_error"])))
                traces[(D, start, round(frac, 3))] = (loss, sharp, phis, lr)
    return rows, traces


def phi_figure(path: Path, title: str, loss, sharpness, phi, lr: float, phi_error=None, loss_scale: str = "log"):
    """Two panels: GD's loss; sharpness S(w_t), GFS sharpness φ(w_t) (with error bars when given) and 2/η.
    ``loss``, ``sharpness``, ``phi`` (and ``phi_error``) are series over steps (pandas, or lists indexed 0..)."""
    import matplotlib.pyplot as plt
    import pandas as pd

    loss, sharpness, phi = (pd.Series(x) for x in (loss, sharpness, phi))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].plot(loss.index, loss.values, lw=0.8)
    if loss_scale == "symlog":  # losses that reach exactly 0
        axes[0].set_yscale("symlog", linthresh=1e-12)
    else:
        axes[0].set_yscale("log")
    axes[0].set_title(title, fontsize=9)
    axes[1].plot(sharpness.index, sharpness.values, lw=0.6, color="grey", label="sharpness S(w_t)")
    if phi_error is None:
        axes[1].plot(phi.index, phi.values, lw=1.5, color="tab:red", label="GFS sharpness φ(w_t)")
    else:
        axes[1].errorbar(phi.index, phi.values, yerr=pd.Series(phi_error).values, color="tab:red", lw=1.5,
                         marker=".", label="GFS sharpness φ(w_t)")
    axes[1].axhline(2 / lr, ls=":", color="black", label="2/η")
    for ax in axes:
        ax.set_xlabel("step")
    axes[1].legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# the network experiments' default sizes: small enough for many φ evaluations, wide enough to interpolate their
# data with MSE (more parameters than targets, and for pooled heads width ≥ n; docs/gfs.md "Practical
# architectures" says how each was chosen and measured)
NETWORK_DEFAULTS: dict[str, dict] = {
    "mlp-digits": {"n": 20, "classes": 10, "width": 32, "depth": 1},
    "cnn-digits": {"n": 10, "classes": 10, "width": 8, "depth": 1},
    "resnet-digits": {"n": 4, "classes": 2, "width": 8, "depth": 1},
    "vit-digits": {"n": 10, "classes": 10, "width": 16, "depth": 1},
    "transformer-sorting": {"n": 2, "classes": 4, "width": 16, "depth": 1},
}
# GFS options per network: the ResNet's and ViT's gradient flows are long and stiff (RKC measured 2-3x cheaper)
NETWORK_GFS: dict[str, dict] = {"resnet-digits": {"integrator": "rkc"}, "vit-digits": {"integrator": "rkc"}}
# how η is chosen: "gfs": 2/η = φ0/factor (GD enters the edge of stability once its sharpness has risen to
# 2/η < φ0); "sharpness": 2/η = S0/factor (above the threshold from the first step). Where gradient flow
# sharpens far beyond S0 (φ0/S0 = 8.8 on the ViT) the first rule puts 2/η where GD's sharpness does not get
# within hundreds of steps (ViT: S = 9.5 after 200 steps against 2/η = 59), so those networks use the second.
ETA_RULES = ("gfs", "sharpness")
NETWORK_ETA: dict[str, tuple[str, float]] = {"vit-digits": ("sharpness", 1.1), "resnet-digits": ("sharpness", 1.1)}


def network_run(name: str, params: dict, eta_factor: float, steps: int, every: int, out: Path, progress: bool,
                gfs_options: dict | None = None, eta_rule: str = "gfs", problem=None):
    """GD at η = eta_factor·2/φ0 (``eta_rule="gfs"``, so φ0 > 2/η) or η = eta_factor·2/S0 (``"sharpness"``) on a
    registered problem (``problem``: already built from ``name`` and ``params``), φ every ``every`` steps; a run
    directory. Returns (result, φ0). A finished run of the same experiment in ``out`` is read back, a killed one
    resumed."""
    import rodflow

    from ..gfs import gfs_sharpness

    if (out / "config.json").is_file():
        res = _existing_run(out, name, params, steps, every, gfs_options, progress)
        df = res.method("gd")
        phi0 = float(df["gfs_sharpness"].iloc[0])
        ref = phi0 if eta_rule == "gfs" else float(df["sharpness"].iloc[0])
        if not abs(res.lr * ref / 2.0 - eta_factor) <= 1e-3 * eta_factor:
            raise RodflowError(f"{out} holds a run at η = {res.lr:.4g} = {res.lr * ref / 2:.3g}·2/"
                               f"{'φ0' if eta_rule == 'gfs' else 'S0'}, not --eta-factor {eta_factor:g}; choose "
                               "another --out or delete it")
        return res, phi0
    p = rodflow.problems.make(name, **params) if problem is None else problem
    start = gfs_sharpness(p, **(gfs_options or {}))
    if not start.converged:
        raise RodflowError(f"φ at the initial point of {name} is undefined ({start.reason}); pick another problem "
                           "or parameters (gradient flow must reach a minimiser)")
    if eta_rule == "gfs":
        lr = eta_factor * 2.0 / start.sharpness
    else:
        from ..linalg.eigs import top_eigs

        s0 = top_eigs(lambda V: p.hvp_block(p.w0, V), p.d, 1, tol=1e-9, dtype=p.w0.dtype, device=p.w0.device)
        if not (s0.converged and float(s0.values[0]) > 0):
            raise RodflowError(f"the initial sharpness of {name} could not be measured (eigensolver not converged or "
                               "not positive); use --eta-rule gfs")
        lr = eta_factor * 2.0 / float(s0.values[0])
    res = rodflow.simulate(p, lr=lr, steps=steps, methods=["gd"], gfs_every=every, sharpness_every=1,
                           gfs_options=gfs_options or None, out=out, progress=progress)
    return res, start.sharpness


def _existing_run(out: Path, name: str, params: dict, steps: int, every: int, gfs_options: dict | None,
                  progress: bool):
    """The run already in ``out``: loaded when complete, resumed when killed; refused when it is another one."""
    import rodflow
    from ..records import is_complete, read_json

    config = read_json(out / "config.json", "config.json")
    problem = config.get("problem", {})
    same = (problem.get("name") == name and all(problem.get("params", {}).get(k) == v for k, v in params.items())
            and config.get("steps") == steps and config.get("gfs_every") == every
            and (config.get("gfs_options") or {}) == (gfs_options or {}))
    if not same:
        raise RodflowError(f"{out} holds a different run (not {name} {params}, {steps} steps, φ every {every}, "
                           f"GFS options {gfs_options or {}}); choose another --out or delete it")
    if is_complete(out):
        return rodflow.load(out)
    return rodflow.resume(out, progress=progress)


PHI_COLUMNS = ["gfs_sharpness", "gfs_error", "gfs_converged", "gfs_grad_evals", "gfs_jvps", "gfs_hvps", "gfs_wall_s"]


def network_experiment(name: str, params: dict, eta_factor: float, steps: int, every: int, out: Path, stem: str,
                       progress: bool, gfs_options: dict | None = None, eta_rule: str = "gfs") -> tuple[dict, dict]:
    """One network: the GD run with φ (``out/stem``), its table (``stem_gfs.csv``) and figure (``stem.png``).
    Returns (the summary row, the traces for a combined figure)."""
    import rodflow

    from ..gfs import cost_ratios, gradient_equivalents

    p = rodflow.problems.make(name, **params)
    res, phi0 = network_run(name, params, eta_factor, steps, every, out / stem, progress, gfs_options, eta_rule, p)
    df = res.method("gd")
    summ = res.summary().iloc[0]
    phi = df[PHI_COLUMNS].dropna(subset=["gfs_sharpness", "gfs_converged"], how="all")
    ratios = cost_ratios(p)
    phi = phi.assign(gfs_grad_equivalents=[gradient_equivalents(r, ratios) for r in phi.to_dict("records")])
    phi.to_csv(out / f"{stem}_gfs.csv")
    lr = res.lr
    good = phi[phi["gfs_converged"] == 1]
    row = dict(network=name, params=" ".join(f"{k}={v}" for k, v in params.items()), d=p.d,
               targets=int(p.residual(p.w0).numel()) if p.has_residual else math.nan, phi0=phi0, lr=lr,
               two_over_lr=2 / lr, steps=len(df) - 1, final_loss=float(df["loss"].iloc[-1]),
               final_sharpness=float(df["sharpness"].dropna().iloc[-1]), phi_min=float(good["gfs_sharpness"].min()),
               phi_max=float(good["gfs_sharpness"].max()), final_phi=float(summ["final_gfs_sharpness"]),
               evals=int(summ["gfs_evals"]), nan=int(summ["gfs_nan"]), increases=int(summ["gfs_increases"]),
               max_increase_rel=float(summ["gfs_max_increase_rel"]), max_error_rel=float(
                   (good["gfs_error"] / good["gfs_sharpness"]).max()),
               grads_per_phi=float(phi["gfs_grad_evals"].mean()), jvps_per_phi=float(phi["gfs_jvps"].mean()),
               hvps_per_phi=float(phi["gfs_hvps"].mean()), jvp_cost=ratios.get("jvp", math.nan),
               hvp_cost=ratios["hvp"], grad_equivalents_per_phi=float(phi["gfs_grad_equivalents"].mean()),
               max_grad_equivalents=float(phi["gfs_grad_equivalents"].max()),
               wall_s_per_phi=float(phi["gfs_wall_s"].mean()))
    typer.echo(f"{name} {params} (d = {p.d}): φ0 = {phi0:.6g}, η = {lr:.4g} (2/η = {2 / lr:.4g}); after "
               f"{row['steps']} steps: loss {row['final_loss']:.3g}, sharpness {row['final_sharpness']:.4g}, φ = "
               f"{row['final_phi']:.6g}; φ evaluations {row['evals']} (NaN {row['nan']}), increases above solver "
               f"error {row['increases']}, mean cost {row['grads_per_phi']:.0f} gradients + {row['jvps_per_phi']:.0f} "
               f"J-products + {row['hvps_per_phi']:.0f} HVPs = {row['grad_equivalents_per_phi']:.0f} "
               f"gradient-equivalents, {row['wall_s_per_phi']:.1f} s")
    phi_figure(out / f"{stem}.png", f"{name}: GD loss (η = {lr:.3g})", df["loss"], df["sharpness"],
               good["gfs_sharpness"], lr, phi_error=good["gfs_error"])
    trace = dict(sharpness=df["sharpness"], phi=good["gfs_sharpness"], error=good["gfs_error"], lr=lr)
    return row, trace


def networks_figure(path: Path, traces: dict[str, dict]) -> None:
    """One panel per network: sharpness, φ (with its error bars) and 2/η along GD."""
    import matplotlib.pyplot as plt

    k = len(traces)
    cols = min(k, 2)
    rows = (k + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.4 * rows), squeeze=False)
    for ax, (name, tr) in zip(axes.flat, traces.items()):
        ax.plot(tr["sharpness"].index, tr["sharpness"].values, lw=0.6, color="grey", label="sharpness S(w_t)")
        ax.errorbar(tr["phi"].index, tr["phi"].values, yerr=tr["error"].values, color="tab:red", lw=1.4,
                    marker=".", label="GFS sharpness φ(w_t)")
        ax.axhline(2 / tr["lr"], ls=":", color="black", label="2/η")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("GD step")
    for ax in list(axes.flat)[k:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


@command
def gfs(
    out: Path = typer.Option(Path("runs/gfs"), help="output directory for plots and tables"),
    steps: int = typer.Option(400, help="GD steps per setting"),
    depths: str = typer.Option("2,3,4,5,6", help="comma-separated depths of the scalar networks"),
    regression_steps: int = typer.Option(300, help="GD steps on the squared regression model (0: skip)"),
    network: str = typer.Option(
        "mlp-digits", help="problem(s) for the network experiment, comma-separated ARCH-DATASET names, e.g. "
        "cnn-digits,resnet-digits,vit-digits,transformer-sorting ('': skip)"),
    network_param: Optional[List[str]] = typer.Option(
        None, "--network-param", help="their parameters key=value, over each network's defaults (docs/gfs.md)"),
    network_steps: int = typer.Option(300, help="GD steps on the network"),
    network_gfs_every: int = typer.Option(10, help="φ every N GD steps on the network"),
    eta_factor: Optional[float] = typer.Option(
        None, help="network: η = eta_factor · 2/φ0 (--eta-rule gfs; default 1.5) or eta_factor · 2/S0 (sharpness; "
        "default 1.1)"),
    eta_rule: Optional[str] = typer.Option(
        None, help="network: 'gfs' (2/η below φ0: GD reaches the edge as it sharpens) or 'sharpness' (2/η below "
        "the initial sharpness S0: at the edge from the start); default per network (docs/gfs.md)"),
    only_network: bool = typer.Option(False, "--only-network", help="skip the scalar networks and squared regression"),
    gfs_opt: Optional[List[str]] = typer.Option(None, "--gfs-opt", help="GFS solver option key=value (networks)"),
    threads: int = typer.Option(1, help="intra-op threads"),
    progress: bool = typer.Option(True, help="progress bar for the network run"),
):
    """GFS sharpness φ along GD: scalar networks (depth 2–6, φ0 > 2/η), the squared regression model and
    networks on real data (an MLP on digits by default; CNN, ResNet, ViT and transformer with --network)."""
    set_threads(threads)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    try:
        ds = tuple(int(d) for d in depths.split(",") if d.strip())
    except ValueError:
        raise RodflowError(f"--depths must be comma-separated integers, got {depths!r}") from None
    if not only_network and (not ds or min(ds) < 1 or steps < 2):
        raise RodflowError("--depths needs integers >= 1 and --steps >= 2")
    if regression_steps < 0:
        raise RodflowError(f"--regression-steps must be >= 0 (0 skips the squared regression), got {regression_steps}")
    names = [n.strip() for n in network.split(",") if n.strip()]
    if only_network and not names:
        raise RodflowError("--only-network needs --network NAME")
    if names and not ((eta_factor is None or eta_factor > 0) and network_steps >= 1 and network_gfs_every >= 1):
        raise RodflowError("the network experiment needs --eta-factor > 0, --network-steps >= 1 and "
                           "--network-gfs-every >= 1")
    if eta_rule is not None and eta_rule not in ETA_RULES:
        raise RodflowError(f"--eta-rule must be one of {', '.join(ETA_RULES)}, got {eta_rule!r}")
    net_params: dict[str, dict] = {}
    gfs_options = parse_pairs(gfs_opt, "--gfs-opt")
    if names:
        from .. import problems
        from ..gfs import checked_options

        user = parse_pairs(network_param, "--network-param")
        for name in names:
            known = problems.params(name)  # also checks the name
            for key in user:
                if key not in known:
                    raise RodflowError(f"--network-param {key}: {name} has no parameter {key!r}; its parameters: "
                                       f"{', '.join(sorted(known))}")
            net_params[name] = {**{k: v for k, v in NETWORK_DEFAULTS.get(name, {}).items() if k in known}, **user}
        checked_options(gfs_options, "--gfs-opt")  # names and values checked before anything runs
    out.mkdir(parents=True, exist_ok=True)
    if not only_network:
        scalar_and_regression(out, ds, steps, regression_steps)
    if names:
        rows, traces = [], {}
        for name in names:
            stem = "network" if len(names) == 1 else f"network-{name}"
            rule = eta_rule or NETWORK_ETA.get(name, ("gfs", 1.5))[0]
            factor = eta_factor or (NETWORK_ETA[name][1] if eta_rule is None and name in NETWORK_ETA else
                                    1.5 if rule == "gfs" else 1.1)
            row, trace = network_experiment(name, net_params[name], factor, network_steps, network_gfs_every, out,
                                            stem, progress, {**NETWORK_GFS.get(name, {}), **gfs_options}, rule)
            rows.append(row)
            traces[name] = trace
        pd.DataFrame(rows).to_csv(out / "networks.csv", index=False)
        networks_figure(out / "networks.png", traces)
    plt.close("all")
    typer.echo(f"plots and tables -> {out}")


def scalar_and_regression(out: Path, ds, steps: int, regression_steps: int) -> None:
    """The scalar-network sweep and the squared regression run, with their tables and figures."""
    import matplotlib.pyplot as plt
    import pandas as pd

    rows, traces = scalar_sweep(ds, steps=steps)
    table = pd.DataFrame(rows)
    table.to_csv(out / "scalar_networks.csv", index=False)
    cols = ["depth", "start", "two_over_lr", "phi0", "final_sharpness", "final_phi", "final_loss", "outcome",
            "gfs_increases", "gfs_max_increase_rel"]
    typer.echo(table[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    for key, (loss, sharp, phis, lr) in traces.items():
        phi_figure(out / f"scalar_d{key[0]}_{key[1]}_{key[2]}.png",
                   f"loss — depth {key[0]}, {key[1]}, φ0 = {key[2]}·2/η", loss, sharp, phis, lr, loss_scale="symlog")
    fig, ax = plt.subplots(figsize=(5, 4))
    for start, marker in (("balanced", "o"), ("unbalanced", "s")):
        sub = table[table.start == start]
        ax.scatter(sub.two_over_lr, sub.final_phi, marker=marker, label=start)
    lim = [table.two_over_lr.min() * 0.8, table.two_over_lr.max() * 1.1]
    ax.plot(lim, lim, ls=":", color="black", label="φ = 2/η")
    ax.set_xlabel("2/η")
    ax.set_ylabel("final GFS sharpness")
    ax.legend(fontsize=8)
    fig.savefig(out / "scalar_final_vs_threshold.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    if regression_steps:
        import rodflow

        p = rodflow.problems.make("squared-regression")
        from ..gfs import gfs_sharpness

        phi0 = gfs_sharpness(p).sharpness
        lr = 1.2 * 2 / phi0
        res = rodflow.simulate(p, lr=lr, steps=regression_steps, methods=["gd"], gfs_every=1, sharpness_every=1,
                               progress=False)
        df = res.method("gd")
        summ = res.summary()
        typer.echo(f"squared regression: φ0 = {phi0:.4g}, η = {lr:.4g} (2/η = {2 / lr:.4g}); final φ = "
                   f"{summ['final_gfs_sharpness'].iloc[0]:.4g}, increases above solver error: "
                   f"{summ['gfs_increases'].iloc[0]}, final loss {df['loss'].iloc[-1]:.3g}")
        phi_figure(out / "squared_regression.png", "squared regression: GD loss", df["loss"], df["sharpness"],
                   df["gfs_sharpness"], lr)
