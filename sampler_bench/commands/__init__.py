"""CLI commands; each module exposes ``register(app)``. Shared helpers for rendering live here."""

from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console
from rich.progress import Progress
from rich.text import Text

from sampler_bench.errors import BenchError
from sampler_bench.textfmt import fmt_num

def make_console(stderr: bool = False) -> Console:
    """A rich console for user and file text: no markup or highlighting is ever interpreted in it
    (styles are given as ``Text`` objects, see :func:`tagged`); in a pipe or a CI log (not a
    terminal) lines are never wrapped or truncated. Colour only in a terminal, or when forced with
    ``FORCE_COLOR`` (rich's rule; ``NO_COLOR`` turns it off)."""
    kw = dict(stderr=stderr, markup=False, highlight=False, emoji=False)
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
    for k, v in metrics.items():
        if k == "warnings":
            continue
        console.print(f"  {k}: {fmt_num(v)}" if isinstance(v, float) else f"  {k}: {v}")
    for w in metrics.get("warnings", []):
        warn(w)
