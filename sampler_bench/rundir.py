"""What a run directory is, and what ``--overwrite`` may replace.

A run directory holds only the files ``bench sample`` (or a sweep cell) writes: ``run.json``,
``samples.npz``, ``grid.png``, ``metrics.json`` and ``images/``. ``--overwrite`` replaces a
directory only when it is such a run (its ``run.json`` is ours) or empty, never a directory with
anything else in it, never a file, and never the working directory or one of its parents.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sampler_bench.errors import BenchError

RUN_FILES = frozenset({"run.json", "samples.npz", "grid.png", "metrics.json", "images"})


def read_run_record(out: Path) -> dict[str, Any] | None:
    """The ``run.json`` record of a run directory, or None when ``out`` holds no readable run."""
    try:
        rec = json.loads((out / "run.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("config"), dict) else None


def check_replaceable(out: Path) -> None:
    """BenchError unless ``--overwrite`` may replace ``out`` (absent, empty, or one of our runs)."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    here = Path.cwd().resolve()
    target = out.resolve()
    if target == here or target in here.parents:
        raise BenchError(f"--overwrite will not replace '{out}': it is the working directory or a parent of it; "
                         f"give a new directory as --out, e.g. --out runs/NAME.")
    if out.is_symlink() or not out.is_dir():
        raise BenchError(f"--overwrite will not replace '{out}': it is not a sampler_bench run directory; "
                         f"choose another --out.")
    names = sorted(p.name for p in out.iterdir())
    if not names:
        return
    if read_run_record(out) is None:
        raise BenchError(f"--overwrite will not replace '{out}': it is not a sampler_bench run (no run.json of ours); "
                         f"choose another --out.")
    foreign = [n for n in names if n not in RUN_FILES]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise BenchError(f"--overwrite will not replace '{out}': besides a run it holds files that are not ours "
                         f"({shown}); move them away or choose another --out.")


def config_diff(prev_rec: dict[str, Any], identity: dict[str, Any], device: str) -> list[str]:
    """Keys of the run config that differ between a recorded run and ``identity``.

    ``device`` is the resolved device of the new run; it is compared with the device the recorded
    run actually used, so ``--device cpu`` matches a run made with ``auto`` on a CPU machine.
    """
    prev = dict(prev_rec.get("config") or {})
    new = dict(identity)
    used = str(prev_rec.get("device") or "").split(" ")[0]
    if used:
        prev["device"] = _norm_device(used)
        new["device"] = _norm_device(device)
    return sorted(k for k in set(prev) | set(new) if prev.get(k) != new.get(k))


def _norm_device(d: str) -> str:
    return "cuda" if d in ("cuda", "cuda:0") else d
