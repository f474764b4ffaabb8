"""The CLI's progress reporter: every phase of ``sampler_bench.progress`` on stderr.

- In a terminal: one rich progress display; each phase is a bar (transient ones vanish when done).
- In a pipe or a CI log: plain lines, never a redrawn bar. A phase that lasts over a second gets
  ``progress: NAME k/N (elapsed)`` at most every 10 s while it runs and ``progress: NAME done ...``
  at its end; shorter phases print nothing.
- ``--quiet``: nothing.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

from sampler_bench.commands import err_console, is_tty, progress_bar
from sampler_bench.progress import reporting


PIPE_FIRST_S = 1.0
PIPE_EVERY_S = 10.0


class CliProgress:
    """``with CliProgress(quiet) as prog:`` installs the reporter; ``prog.bar`` is the rich display
    (commands may add their own tasks to it, e.g. a sweep's cell counter)."""

    def __init__(self, quiet: bool = False, transient: bool = False):
        self.quiet, self.transient = quiet, transient  # transient: every phase vanishes when done (sweeps)
        self.pipe = not is_tty(stderr=True)
        self.bar = progress_bar(quiet=quiet or self.pipe)
        self._live = False

    def __enter__(self) -> "CliProgress":
        self._ctx = reporting(None if self.quiet else self.report)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)
        if self._live:
            self.bar.stop()
            self._live = False

    def start(self) -> None:
        if not self._live and not self.quiet and not self.pipe:
            self.bar.start()
            self._live = True

    @contextlib.contextmanager
    def report(self, name: str, total: int | None, transient: bool) -> Iterator:
        if self.pipe:
            with self._lines(name, total) as adv:
                yield adv
            return
        self.start()
        task = self.bar.add_task(name, total=total)
        try:
            yield lambda k=1: self.bar.advance(task, k)
            if total is None:
                self.bar.update(task, total=1, completed=1)
        finally:
            if transient or self.transient:
                self.bar.remove_task(task)
            else:
                self.bar.stop_task(task)

    @contextlib.contextmanager
    def _lines(self, name: str, total: int | None) -> Iterator:
        t0 = time.perf_counter()
        state = {"done": 0, "last": None}

        def count() -> str:
            return f"{state['done']}/{total}" if total is not None else f"{state['done']}"

        def advance(k: int = 1) -> None:
            state["done"] += k
            now = time.perf_counter()
            last = state["last"]
            if now - t0 >= PIPE_FIRST_S and (last is None or now - last >= PIPE_EVERY_S):
                state["last"] = now
                err_console.print(f"progress: {name} {count()} ({now - t0:.1f} s)")

        ok = False
        try:
            yield advance
            ok = True
        finally:
            dt = time.perf_counter() - t0
            if ok and dt >= PIPE_FIRST_S:
                done = f" {count()}" if total is not None else ""
                err_console.print(f"progress: {name} done{done} ({dt:.1f} s)")
