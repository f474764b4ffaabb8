"""Progress of long phases (sampling, metric reference solves, FID features, writing), reported
through one hook that the CLI installs; without it every phase is silent and costs nothing.

Library code wraps a phase::

    from sampler_bench.progress import phase

    with phase("exact metrics: ODE reference", total=n) as advance:
        for batch in ...:
            ...
            advance(len(batch))

A reporter is a function ``reporter(name, total, transient) -> context manager yielding advance``;
``bench`` installs one (``commands/progress.py``) with :func:`reporting`, ``--quiet`` does not.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterator

Advance = Callable[..., None]
Reporter = Callable[[str, "int | None", bool], ContextManager[Advance]]

_reporter: Reporter | None = None


def _nothing(k: int = 1) -> None:
    return None


@contextlib.contextmanager
def phase(name: str, total: int | None = None, transient: bool = False) -> Iterator[Advance]:
    """A named phase of ``total`` units (None: unknown); yields ``advance(k=1)``.

    ``transient`` phases (e.g. the steps of one batch) disappear from a terminal when done."""
    rep = _reporter
    if rep is None:
        yield _nothing
        return
    with rep(name, total, transient) as advance:
        yield advance


@contextlib.contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    """Install ``reporter`` for the duration of the block (None: silence)."""
    global _reporter
    prev, _reporter = _reporter, reporter
    try:
        yield
    finally:
        _reporter = prev
