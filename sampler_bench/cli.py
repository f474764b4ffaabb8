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

# one line per command module; each adds its commands to `app`
from sampler_bench.commands import listing, sample  # noqa: E402

for _mod in (sample, listing):
    _mod.register(app)


def main() -> None:
    try:
        app()
    except BenchError as exc:  # raised outside a command body (commands handle their own)
        typer.secho(f"error: {exc}", err=True, fg="red")
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
