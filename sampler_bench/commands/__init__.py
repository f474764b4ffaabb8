"""CLI commands; each module exposes ``register(app)``. Shared helpers for rendering live here."""

from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console

from sampler_bench.errors import BenchError

console = Console(stderr=False)
err_console = Console(stderr=True)


def user_errors(fn):
    """Turn BenchError into a one-line message and exit code 2 (also under Typer's test runner)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BenchError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: nothing half-written was left behind")
            sys.exit(130)

    return wrapper


def print_metrics(metrics: dict) -> None:
    """One line per metric on stdout; the ``warnings`` entry goes to stderr as warnings."""
    spreads = {k: metrics[k + sfx] for k in metrics for sfx in ("_se", "_std") if isinstance(metrics.get(k + sfx), float)}
    for k, v in metrics.items():
        if k == "warnings" or (k.endswith(("_se", "_std")) and k.rsplit("_", 1)[0] in spreads):
            continue
        if isinstance(v, float) and k in spreads:  # value +- its spread (standard error / std, see README)
            sfx = "se" if isinstance(metrics.get(k + "_se"), float) else "std"
            console.print(f"  {k}: {v:.6g} +- {spreads[k]:.3g} ({sfx})")
        else:
            console.print(f"  {k}: {v:.6g}" if isinstance(v, float) else f"  {k}: {v}")
    for w in metrics.get("warnings", []):
        err_console.print(f"[yellow]warning:[/yellow] {w}", highlight=False, soft_wrap=True)
