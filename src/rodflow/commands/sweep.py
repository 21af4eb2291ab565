"""`rodflow sweep` and `rodflow sweep-report`: grids of runs and their figures (see docs/sweeps.md)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .base import command, parse_pairs


@command
def sweep(
    config: Path = typer.Argument(..., help="sweep config (.toml), or a sweep directory to --resume"),
    engine: str = typer.Option("local", help="local (process pool), ray, or slurm (submitit)"),
    workers: int = typer.Option(2, help="parallel runs (local pool size, Ray CPUs, submitit jobs in flight)"),
    out: Optional[Path] = typer.Option(None, help="sweep directory (default sweeps/<config name>)"),
    resume: bool = typer.Option(False, "--resume", help="skip finished runs, resume unfinished ones"),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (default: start a local instance)"),
    cpus_per_task: float = typer.Option(1.0, help="Ray CPUs reserved per run"),
    cluster: Optional[str] = typer.Option(None, help="submitit cluster: slurm (default when available) or local"),
    slurm: Optional[List[str]] = typer.Option(None, "--slurm", help="submitit parameter key=value (repeatable), "
                                              "e.g. slurm_partition=cpu, timeout_min=120"),
    progress: bool = typer.Option(True, help="progress bar"),
):
    """Run a grid of runs (a sweep config) in parallel; write one run directory per run and index.parquet."""
    from .. import sweep as sw

    spec = sw.load_config(config)
    out = out or (config if (config / "sweep.json").is_file() else Path("sweeps") / spec.name)
    try:
        index = sw.run_sweep(spec, out=out, engine=engine, workers=workers, resume=resume, address=address,
                             cpus_per_task=cpus_per_task, cluster=cluster, slurm=parse_pairs(slurm, "--slurm"),
                             progress=progress)
    except KeyboardInterrupt:
        typer.echo(f"interrupted: queued runs cancelled, running ones stopped (their checkpoints are kept). "
                   f"Continue with: rodflow sweep {config} --out {out} --resume", err=True)
        raise typer.Exit(130) from None
    counts = index["status"].map(sw._kind).value_counts()
    typer.echo(f"{len(index)} runs -> {out}: {counts.get('done', 0)} done, {counts.get('diverged', 0)} diverged, "
               f"{counts.get('failed', 0)} failed")
    for _, row in index[~index["status"].isin(["done"])].iterrows():
        typer.echo(f"  {row['id']}: {row['status']}")
    typer.echo(f"report: rodflow sweep-report {out}")


@command
def sweep_report(
    sweep_dir: Path = typer.Argument(..., help="a sweep directory"),
    fmt: str = typer.Option("png", help="figure format"),
):
    """Draw a sweep's grid figures into DIR/plots and print its summary table."""
    from ..sweep_report import report

    table, paths = report(sweep_dir, fmt=fmt)
    typer.echo(table)
    for p in paths:
        typer.echo(f"plot: {p}")
