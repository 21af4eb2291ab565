"""The ``rodflow`` command line: a thin layer over the Python API."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import List, Optional

import typer

from .commands.base import app, check_out, command, parse_options, parse_pairs, parse_value, set_threads  # noqa: F401
from .errors import RodflowError


# what `run --resume DIR` may still be told: where and how to run, not what to run
RESUME_FLAGS = ("resume", "device", "threads", "progress", "plots")


def _given(ctx, name: str) -> bool:
    """Whether the parameter ``name`` was set on the command line (or the environment), not left at its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


@command
def run(
    ctx: typer.Context,
    problem: Optional[str] = typer.Option(None, "--problem", "-p", help="registered problem (see `rodflow problems`)"),
    param: Optional[List[str]] = typer.Option(None, "--param", help="problem parameter key=value (repeatable)"),
    lr: Optional[float] = typer.Option(None, help="learning rate η (default: the problem's suggested one)"),
    steps: Optional[int] = typer.Option(None, help="number of GD steps (default 1000)"),
    methods: str = typer.Option("gd,gradient_flow", help="comma-separated methods (see `rodflow methods`)"),
    reference: str = typer.Option("gd", help="the method every method's distances (dist_gd, dist_gd_mid) are to"),
    out: Optional[Path] = typer.Option(None, help="run directory (default runs/<problem>)"),
    resume: Optional[Path] = typer.Option(None, help="continue the run in this directory from its checkpoint"),
    sharpness_every: int = typer.Option(1, help="top Hessian eigenvalues every N steps (0: never)"),
    neigs: int = typer.Option(1, help="number of top eigenvalues tracked"),
    dtype: str = typer.Option("float64", help="float64 or float32"),
    device: Optional[str] = typer.Option(
        None, help="cpu, cuda, cuda:N, mps or auto (default cpu; with --resume: the run's own device)"),
    seed: int = typer.Option(0),
    opt: Optional[List[str]] = typer.Option(None, "--opt", help="method option method.key=value (repeatable)"),
    optimizer: Optional[str] = typer.Option(
        None, help="update rule of GD and every flow: gd, momentum, nesterov, rmsprop, adam, nadam (default gd)"),
    optimizer_opt: Optional[List[str]] = typer.Option(
        None, "--optimizer-opt", help="optimizer option key=value, e.g. beta1=0.9 (repeatable)"),
    iterates: str = typer.Option("full", help="record iterates: full, none, or an integer k (random projection)"),
    checkpoint_every: Optional[int] = typer.Option(None, help="checkpoint every N steps (default: every 30 s)"),
    threads: int = typer.Option(1, help="intra-op threads (torch and BLAS)"),
    progress: bool = typer.Option(True, help="progress bar"),
    plots: bool = typer.Option(True, help="write plots/ when the run ends"),
    gfs_every: int = typer.Option(0, help="GFS sharpness φ of every method's point every N steps (0: never)"),
    gfs_opt: Optional[List[str]] = typer.Option(None, "--gfs-opt", help="GFS solver option key=value, e.g. tol=1e-3"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run directory at --out"),
    measure: Optional[List[str]] = typer.Option(
        None, "--measure", help="plug-in measurement name.option=value, e.g. hessian_trace.every=10 (repeatable)"),
):
    """Run GD and its models on a problem; write a run directory, plots and a summary table."""
    set_threads(threads)
    import rodflow

    if resume is None and problem is not None:
        check_out(out or Path("runs") / problem, overwrite, resumable=True)
    if resume is not None:
        given = ["--" + p.name.replace("_", "-") for p in ctx.command.params
                 if p.name not in RESUME_FLAGS and _given(ctx, p.name)]
        if given:
            raise RodflowError(f"--resume continues the run as configured in {resume}/config.json; drop "
                               f"{', '.join(given)} (to change the run, start a new one)")
    with _interrupt_message():
        if resume is not None:
            result = rodflow.resume(resume, progress=progress, device=device)
        else:
            if problem is None:
                raise RodflowError("give --problem NAME (see `rodflow problems`) or --resume DIR")
            if gfs_opt and not gfs_every:
                raise RodflowError("--gfs-opt is given but --gfs-every is 0 (the GFS sharpness is not tracked); add "
                                   "--gfs-every N or drop --gfs-opt")
            prob = rodflow.problems.make(problem, dtype=dtype, device=device, **parse_pairs(param, "--param"))
            if lr is None:
                if prob.suggested_lr is None:
                    raise RodflowError(f"problem {problem!r} has no suggested learning rate; give --lr")
                lr = prob.suggested_lr
            record: bool | int
            if iterates in ("full", "none"):
                record = iterates == "full"
            elif iterates.isdigit():
                record = int(iterates)
            else:
                raise RodflowError(f"--iterates must be full, none or an integer, got {iterates!r}")
            result = rodflow.simulate(
                prob, lr=lr, steps=1000 if steps is None else steps, methods=methods, reference=reference,
                sharpness_every=sharpness_every, neigs=neigs, record_iterates=record, dtype=dtype, seed=seed,
                options=parse_options(opt), optimizer="gd" if optimizer is None else optimizer,
                optimizer_options=parse_pairs(optimizer_opt, "--optimizer-opt"),
                out=out or Path("runs") / problem, checkpoint_every=checkpoint_every, progress=progress,
                gfs_every=gfs_every, gfs_options=parse_pairs(gfs_opt, "--gfs-opt"),
                measurements=parse_options(measure, "--measure", "a measurement: name.option=value, e.g. "
                                                                 "hessian_trace.every=10"),
            )
    _report(result, plots)


@contextlib.contextmanager
def _interrupt_message():
    """A run stopped by SIGINT/SIGTERM (with its checkpoint written) ends with the resume command, not a
    traceback; exit status 128 + the signal."""
    from .simulate import Interrupted

    try:
        yield
    except Interrupted as exc:
        if exc.path is None:
            raise
        typer.echo(f"interrupted after step {exc.step}; checkpoint written. Continue with: "
                   f"rodflow run --resume {exc.path}", err=True)
        raise typer.Exit(128 + int(exc.signum)) from None


def _report(result, plots: bool) -> None:
    from .summary import format_table

    summary = result.summary()
    summary.to_csv(result.path / "summary.csv", index=False)
    from .optimizers import threshold_text

    typer.echo(f"{result.config['problem']['name']}: η = {result.lr:g}, {threshold_text(result.config, result.lr)}, "
               f"{result.config['steps']} steps -> {result.path}")
    typer.echo(format_table(summary))
    if plots:
        from .plotting import plot_run

        for path in plot_run(result):
            typer.echo(f"plot: {path}")


@command
def problems():
    """List the registered problems and their parameters."""
    from . import problems as registry

    for name in registry.names():
        params = ", ".join(f"{k}={v!r}" for k, v in registry.params(name).items())
        typer.echo(f"{name:22s} {registry.describe(name)}\n{'':22s} params: {params}")


@command
def methods():
    """List the processes (GD and the flows) and their options."""
    from . import processes

    _list_registry(processes, 16)


@command
def optimizers():
    """List the update rules (--optimizer) and their options (--optimizer-opt)."""
    from . import optimizers as registry

    _list_registry(registry, 10)


def _list_registry(module, width: int) -> None:
    """One entry per name of a registry module (``names``, ``REGISTRY``, ``options``): docstring line, options."""
    for name in module.names():
        doc = (module.REGISTRY.get(name).__doc__ or "").strip().splitlines()[0]
        opts = ", ".join(f"{k}={v!r}" for k, v in module.options(name).items())
        typer.echo(f"{name:{width}s} {doc}\n{'':{width}s} options: {opts or 'none'}")


@command
def plot(run_dir: Path = typer.Argument(..., help="a run directory")):
    """(Re)draw the figures of a run directory into its plots/."""
    import rodflow
    from .plotting import plot_run

    for path in plot_run(rodflow.load(run_dir)):
        typer.echo(f"plot: {path}")


@command
def summary(run_dir: Path = typer.Argument(..., help="a run directory")):
    """Print the summary table of a run directory."""
    import rodflow
    from .summary import format_table

    typer.echo(format_table(rodflow.load(run_dir).summary()))


def main(argv: list[str] | None = None) -> None:
    """The ``rodflow`` entry point: usage errors (a missing value, a bad number, an unknown flag) end in one line
    on stderr naming the command's --help, exit status 2, like every other bad input."""
    import sys

    # typer may vendor click: its usage-error class is the base of the BadParameter it exports
    usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
    args = sys.argv[1:] if argv is None else list(argv)
    if not args:  # no arguments: the help text
        app(args=args, prog_name="rodflow")
        return
    try:
        rc = app(args=args, prog_name="rodflow", standalone_mode=False)
    except usage_error as exc:
        where = f"{exc.ctx.command_path} --help" if exc.ctx is not None else "rodflow --help"
        typer.echo(f"error: {exc.format_message()} (see {where})", err=True)
        raise SystemExit(2) from None
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        raise SystemExit(1) from None
    raise SystemExit(rc if isinstance(rc, int) else 0)


# Command groups in rodflow/commands/ (theory, gfs, compare, sweep, ...) register themselves on `app`.
from .commands import load_all as _load_commands  # noqa: E402

_load_commands()


if __name__ == "__main__":
    main()
