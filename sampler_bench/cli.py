"""The `bench` command line: thin. Parse, call the library, render with rich.

Each command lives in ``sampler_bench/commands/<name>.py`` and exposes ``register(app)``.
User errors (:class:`BenchError`) print one line and exit with code 2, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from sampler_bench.errors import BenchError

app = typer.Typer(
    name="bench",
    help="Benchmark diffusion-model samplers: sample, measure FID and exact errors, sweep NFE grids, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _help_as_flag() -> None:
    """Show ``-h/--help`` as a flag in the help panel, like our own boolean options (``metavar=""``)
    instead of Typer's ``<bool>``."""
    cmd_cls = getattr(getattr(typer, "core", None), "TyperCommand", None)
    for cls in (cmd_cls, getattr(typer.core, "TyperGroup", None)):
        orig = getattr(cls, "get_help_option", None)
        if orig is None or getattr(orig, "_bench_flag", False):
            continue

        def get_help_option(self, ctx, _orig=orig):
            opt = _orig(self, ctx)
            if opt is not None and getattr(opt, "metavar", None) is None:
                opt.metavar = ""
            return opt

        get_help_option._bench_flag = True
        cls.get_help_option = get_help_option


def _version(value: bool) -> None:
    if value:
        from sampler_bench import __version__

        typer.echo(f"sampler_bench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.", metavar="",
                                       callback=_version, is_eager=True)) -> None:
    """Benchmark diffusion-model samplers: sample, measure FID and exact errors, sweep NFE grids, report."""


def _register_commands() -> None:
    """Every module in ``sampler_bench/commands`` adds its commands, in the order of its ``ORDER``."""
    import importlib
    import pkgutil

    import sampler_bench.commands as pkg

    mods = [importlib.import_module(f"{pkg.__name__}.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)]
    for mod in sorted(mods, key=lambda m: (getattr(m, "ORDER", 50), m.__name__)):
        if hasattr(mod, "register"):  # helper modules (e.g. progress.py) add no command
            mod.register(app)


_help_as_flag()
_register_commands()


def _exit_on_signal(signum, _frame):
    """SIGTERM/SIGHUP (``kill``, ``timeout``, a closed terminal, a scheduler) unwind like Ctrl-C, so
    ``finally`` blocks run and no temporary run directory is left behind."""
    from sampler_bench import distributed

    rank, world, _ = distributed.env_world()
    if world > 1 and rank == 0:
        sys.stderr.write(f"error: stopped by signal {signum}: under torchrun this usually means another rank failed "
                         "(see torchrun's summary); nothing half-written was left behind.\n")
    sys.exit(128 + signum)


def main() -> None:
    import signal

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, _exit_on_signal)
    from sampler_bench import distributed

    try:
        app()
    except BenchError as exc:  # raised outside a command body (commands handle their own)
        if distributed.is_main_process():
            typer.secho(f"error: {exc}", err=True, fg="red")
        sys.exit(exc.exit_code)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
