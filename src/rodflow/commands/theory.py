"""``rodflow theory``: rod flow's theory checks measured on the integrated ODE, with plots (docs/rod_flow.md)."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from .base import app, command, set_threads  # noqa: F401  (app: commands register on it)


def run_checks(out: Path) -> list[dict]:
    """Run every check, write its figure to ``out`` and return rows (check, measured, predicted, ok)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from .. import problems
    from ..simulate import simulate
    from ..rod_theory import fit_rate, onset_step, run_gd, run_rod, top_sharpness

    out.mkdir(parents=True, exist_ok=True)
    rows = []

    # 1. critical threshold on a quadratic: the rod grows iff S > 2/η, at rate ηS − 2
    eta = 0.2
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for S in (6.0, 9.0, 10.0, 11.0, 14.0):
        prob = problems.make("quadratic", lambdas=(S,), w0=(0.0,))
        r = run_rod(prob, eta, 25, c=torch.zeros(1, dtype=torch.float64),
                    delta=torch.full((1,), 1e-4, dtype=torch.float64), seed="none")
        rate = fit_rate(np.arange(26), r["rod_length"])
        ax.semilogy(r["rod_length"], label=f"S={S:g}: fitted rate {rate:+.5f} (ηS−2 = {eta * S - 2:+.3f})")
        rows.append(dict(check=f"quadratic S={S:g}: growth rate of ‖δ‖", measured=rate, predicted=eta * S - 2,
                         ok=abs(rate - (eta * S - 2)) < 1e-4))
    ax.set_xlabel("t (GD steps)"), ax.set_ylabel("‖δ‖"), ax.legend(fontsize=7)
    ax.set_title(f"quadratic, η = {eta:g}: rod opens iff S > 2/η = {2 / eta:g}", fontsize=10)
    fig.savefig(out / "threshold.png", dpi=150, bbox_inches="tight"), plt.close(fig)

    # 2. quartic: δ → δ* = √((S − 2/η)/Q) = GD's period-2 orbit; secant sharpness 2/η there
    S, Q, eta = 12.0, 1.0, 0.2
    prob = problems.make("quartic", S=S, Q=Q, w0=0.01)
    star = math.sqrt((S - 2 / eta) / Q)
    gd = run_gd(prob, eta, 300)
    r = run_rod(prob, eta, 300)
    rows += [
        dict(check="quartic: rod length at t=300", measured=r["rod_length"][-1], predicted=star,
             ok=abs(r["rod_length"][-1] / star - 1) < 1e-6),
        dict(check="quartic: GD |w_300| (period-2 orbit)", measured=abs(gd[-1, 0]), predicted=star,
             ok=abs(abs(gd[-1, 0]) / star - 1) < 1e-6),
        dict(check="quartic: secant sharpness at t=300", measured=r["secant"][-1], predicted=2 / eta,
             ok=abs(r["secant"][-1] * eta / 2 - 1) < 1e-6),
    ]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(np.abs(gd[:, 0]), color="black", lw=0.8, label="GD |w_t|")
    ax.plot(r["rod_length"], color="tab:red", label="rod length ‖δ‖")
    ax.axhline(star, color="grey", ls=":", label="δ* = √((S−2/η)/Q)")
    ax.set_xlabel("t"), ax.legend(fontsize=8)
    ax.set_title(f"quartic S={S:g}, Q={Q:g}, η={eta:g}", fontsize=10)
    fig.savefig(out / "quartic.png", dpi=150, bbox_inches="tight"), plt.close(fig)

    # 3. centre sharpness vs gradient flow on self-stabilization and sharp-valley; onset with/without seed
    cases = (("self-stabilization", dict(w0=(0.5, 15.0)), 0.1, 400),
             ("sharp-valley", dict(eps=0.03, w0=(0.1, 3.5)), 0.3, 750))
    for name, params, eta, T in cases:
        prob = problems.make(name, **params)
        gd = run_gd(prob, eta, T + 1)
        seeded, bare = run_rod(prob, eta, T), run_rod(prob, eta, T, seed="none")
        s_gf = simulate(prob, lr=eta, steps=T, methods=["gradient_flow"], sharpness_every=1, progress=False,
                        diverge_factor=1e300).method("gradient_flow")["sharpness"].tolist()
        s_rod = [top_sharpness(prob, c) for c in seeded["centre"]]
        s_bare = [top_sharpness(prob, c) for c in bare["centre"]]
        tail = np.array(s_rod[T // 4:])
        rows.append(dict(check=f"{name}: mean centre sharpness, t>{T // 4}", measured=tail.mean(),
                         predicted=2 / eta, ok=abs(tail.mean() * eta / 2 - 1) < 0.05))
        rows.append(dict(check=f"{name}: gradient-flow sharpness at t={T}", measured=s_gf[-1],
                         predicted=float("nan"), ok=s_gf[-1] > 1.1 * 2 / eta))
        osc = np.concatenate([[np.nan], np.linalg.norm(gd[2:] - 2 * gd[1:-1] + gd[:-2], axis=1) / 4])
        level = 0.1 * np.nanmedian(osc[-T // 5:])
        on = {k: onset_step(v, level) for k, v in (("GD", osc), ("rod, seed", seeded["rod_length"]),
                                                   ("rod, no seed", bare["rod_length"]))}
        # The seed decides the onset only where rounding limits GD's oscillation, i.e. where the unseeded rod
        # collapses far below the level at which the seed holds it; elsewhere the onset is set by the ODE itself (docs/rod_flow.md).
        rounding_limited = np.nanmin(bare["rod_length"]) < 1e-3 * np.nanmin(seeded["rod_length"])
        ok = (on["rod, seed"] is not None and on["GD"] is not None and abs(on["rod, seed"] - on["GD"]) <= 0.1 * on["GD"]
              ) if rounding_limited else None
        tag = "rounding-limited" if rounding_limited else "not rounding-limited"
        rows.append(dict(check=f"{name}: EoS onset, rod (seed) vs GD [{tag}]", measured=on["rod, seed"],
                         predicted=on["GD"], ok=ok))
        rows.append(dict(check=f"{name}: EoS onset, rod (no seed) vs GD", measured=on["rod, no seed"],
                         predicted=on["GD"], ok=None))
        fig, (ax, bx) = plt.subplots(2, 1, figsize=(6.4, 6.5), sharex=True)
        ax.plot(s_gf, label="gradient flow", color="tab:blue", ls="--")
        ax.plot(s_rod, label="rod centre (seed = precision)", color="tab:red")
        ax.plot(s_bare, label="rod centre (seed = none)", color="tab:purple", lw=0.8)
        ax.axhline(2 / eta, color="grey", ls=":", label="2/η")
        ax.set_ylabel("sharpness"), ax.legend(fontsize=7)
        ax.set_title(f"{name} {params}, η = {eta:g}", fontsize=10)
        bx.semilogy(osc, color="black", lw=0.8, label=f"GD oscillation (onset {on['GD']})")
        bx.semilogy(seeded["rod_length"], color="tab:red", label=f"rod, seed (onset {on['rod, seed']})")
        bx.semilogy(np.maximum(bare["rod_length"], 1e-300), color="tab:purple", lw=0.8,
                    label=f"rod, no seed (onset {on['rod, no seed']})")
        bx.axhline(level, color="grey", ls=":", lw=0.8)
        bx.set_xlabel("t"), bx.set_ylabel("amplitude"), bx.legend(fontsize=7)
        fig.savefig(out / f"{name}.png", dpi=150, bbox_inches="tight"), plt.close(fig)
    return rows


@command
def theory(
    out: Path = typer.Option(Path("runs/theory"), help="directory for the figures"),
    threads: int = typer.Option(1, help="intra-op threads"),
):
    """Rod flow's theory checks (threshold, quartic orbit, self-stabilization, onset seed) with plots."""
    set_threads(threads)
    rows = run_checks(out)
    width = max(len(r["check"]) for r in rows)
    typer.echo(f"{'check':{width}s}  {'measured':>12s}  {'predicted':>12s}  result")
    for r in rows:
        verdict = "-" if r["ok"] is None else ("ok" if r["ok"] else "FAIL")
        m, p = (f"{x:12.6g}" if x is not None else f"{'never':>12s}" for x in (r["measured"], r["predicted"]))
        typer.echo(f"{r['check']:{width}s}  {m}  {p}  {verdict}")
    typer.echo(f"plots: {out}")
    failed = [r["check"] for r in rows if r["ok"] is False]
    if failed:  # a check command: a failed check is a non-zero exit
        typer.echo(f"{len(failed)} check(s) failed: {'; '.join(failed)}", err=True)
        raise typer.Exit(1)
