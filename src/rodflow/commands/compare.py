"""`rodflow compare CONFIG.toml`: GD and its flows through the edge of stability, figures and a summary."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .base import check_out, command, set_threads


@command
def compare(
    config: Path = typer.Argument(..., help="comparison config (.toml), e.g. configs/demo.toml"),
    out: Optional[Path] = typer.Option(None, help="run directory (default runs/<config name>)"),
    steps: Optional[int] = typer.Option(None, help="override the config's number of GD steps"),
    threads: int = typer.Option(1, help="intra-op threads (torch and BLAS)"),
    progress: bool = typer.Option(True, help="progress bar"),
    plots: bool = typer.Option(True, help="write the figures"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run directory at --out"),
):
    """Run GD, gradient flow, central flow and rod flow from one start (a TOML config); table + figures."""
    set_threads(threads)
    from .. import compare as cmp

    cfg = cmp.load_config(config)
    if steps is not None:
        cfg["steps"] = steps
    check_out(out if out is not None else Path("runs") / str(cmp.check_config(cfg)["name"]), overwrite)
    echo_comparison(cmp.compare(cfg, out=out, progress=progress, plots=plots))


DEMO_CONFIG = "demo.toml"  # packaged copy of configs/demo.toml (a link to it)


@command
def demo(
    out: Optional[Path] = typer.Option(None, help="run directory (default runs/demo)"),
    threads: int = typer.Option(1, help="intra-op threads"),
    progress: bool = typer.Option(True, help="progress bar"),
):
    """The main job: GD, gradient, central and rod flow on an MLP on digits, into the edge of stability."""
    set_threads(threads)
    from importlib.resources import files

    from .. import compare as cmp

    config = cmp.load_config(files("rodflow") / "configs" / DEMO_CONFIG)
    target = out if out is not None else Path("runs") / str(config["name"])
    if (target / "config.json").is_file():
        typer.echo(f"replacing the earlier demo run in {target}")
    echo_comparison(cmp.compare(config, out=out, progress=progress))


def echo_comparison(res) -> None:
    """Print a comparison's header line, summary table and the files it wrote."""
    from .. import compare as cmp

    r = res.result
    s0 = f", initial sharpness {res.initial_sharpness:.4g}" if res.initial_sharpness is not None else ""
    typer.echo(f"{r.config['problem']['name']} (d = {r.config['problem']['d']}): η = {r.lr:.4g}, "
               f"2/η = {2 / r.lr:.4g}{s0}, {r.config['steps']} steps -> {r.path}")
    typer.echo(res.summary[[c for c in cmp.COLUMNS if c in res.summary]].to_string(
        index=False, float_format=lambda x: f"{x:.4g}"))
    for path in res.figures:
        typer.echo(f"plot: {path}")
    typer.echo(f"table: {r.path / 'summary.md'}")
