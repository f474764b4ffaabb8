"""CLI commands; each module exposes ``register(app)``. Shared helpers for rendering live here."""

from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console
from rich.progress import Progress
from rich.text import Text

from sampler_bench.distributed import is_main_process
from sampler_bench.errors import BenchError
from sampler_bench.textfmt import fmt_num

# Under torchrun every rank runs the command; only rank 0 prints (progress, results, errors).
def make_console(stderr: bool = False) -> Console:
    """A rich console for user and file text: no markup or highlighting is ever interpreted in it
    (styles are given as ``Text`` objects, see :func:`tagged`); in a pipe or a CI log (not a
    terminal) lines are never wrapped or truncated. Colour only in a terminal, or when forced with
    ``FORCE_COLOR`` (rich's rule; ``NO_COLOR`` turns it off)."""
    kw = dict(stderr=stderr, markup=False, highlight=False, emoji=False, quiet=not is_main_process())
    if not is_tty(stderr):
        kw.update(width=_PIPE_WIDTH, soft_wrap=True)
    return Console(**kw)


def is_tty(stderr: bool = False) -> bool:
    """Whether stdout (stderr) is an interactive terminal; ``FORCE_COLOR`` forces colour, not this."""
    stream = sys.stderr if stderr else sys.stdout
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


_PIPE_WIDTH = 100_000  # "no wrapping": wider than any line we print
console = make_console(stderr=False)
err_console = make_console(stderr=True)


def tagged(tag: str, style: str, rest: str = "") -> Text:
    """``tag`` in ``style`` followed by ``rest`` as plain text (``rest`` may hold any user text)."""
    return Text.assemble((tag, style), rest)


def progress_bar(transient: bool = False, quiet: bool = False, unit: str = "count") -> Progress:
    """The progress bar of every long phase, on stderr (descriptions are plain text)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=transient, disable=quiet)


def user_errors(fn):
    """Turn BenchError into a one-line message and exit code 2 (also under Typer's test runner)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BenchError as exc:
            err_console.print(tagged("error:", "red", f" {exc}"), soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: nothing half-written was left behind")
            sys.exit(130)

    return wrapper


def warn(text: str) -> None:
    err_console.print(tagged("warning:", "yellow", f" {text}"), soft_wrap=True)


def print_metrics(metrics: dict) -> None:
    """One line per metric on stdout; the ``warnings`` entry goes to stderr as warnings."""
    spreads = {k: metrics[k + sfx] for k in metrics for sfx in ("_se", "_std") if isinstance(metrics.get(k + sfx), float)}
    for k, v in metrics.items():
        if k == "warnings" or (k.endswith(("_se", "_std")) and k.rsplit("_", 1)[0] in spreads):
            continue
        if isinstance(v, float) and k in spreads:  # value +- its spread (standard error / std, see README)
            sfx = "se" if isinstance(metrics.get(k + "_se"), float) else "std"
            console.print(f"  {k}: {fmt_num(v)} +- {fmt_num(spreads[k], '.3g')} ({sfx})")
        else:
            console.print(f"  {k}: {fmt_num(v)}" if isinstance(v, float) else f"  {k}: {v}")
    for w in metrics.get("warnings", []):
        warn(w)


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


def print_json(obj) -> None:
    """``--json``: exactly one JSON object on stdout, one line, nothing else (messages go to stderr)."""
    import json

    if not is_main_process():  # other torchrun ranks print nothing
        return
    sys.stdout.write(json.dumps(_plain(obj)) + "\n")
    sys.stdout.flush()
