"""CLI commands; each module exposes ``register(app)``. Shared helpers for rendering live here."""

from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console

from sampler_bench.distributed import is_main_process
from sampler_bench.errors import BenchError

# Under torchrun every rank runs the command; only rank 0 prints (progress, results, errors).
_quiet = not is_main_process()
console = Console(stderr=False, quiet=_quiet)
err_console = Console(stderr=True, quiet=_quiet)


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
    for k, v in metrics.items():
        if k == "warnings":
            continue
        console.print(f"  {k}: {v:.6g}" if isinstance(v, float) else f"  {k}: {v}")
    for w in metrics.get("warnings", []):
        err_console.print(f"[yellow]warning:[/yellow] {w}", highlight=False, soft_wrap=True)


def _plain(obj):
    """JSON-safe copy: non-finite floats become null, paths and numpy scalars plain values."""
    import math

    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if hasattr(obj, "item"):  # numpy scalar
        return _plain(obj.item())
    return str(obj)


def first_process() -> bool:
    """False on the other ranks of a torchrun job (RANK > 0): they leave printing and CI files to rank 0."""
    return is_main_process()


def print_json(obj) -> None:
    """``--json``: exactly one JSON object on stdout, one line, nothing else (messages go to stderr)."""
    import json

    if not first_process():
        return
    sys.stdout.write(json.dumps(_plain(obj)) + "\n")
    sys.stdout.flush()
