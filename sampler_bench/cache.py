"""One cache root for everything ``bench`` downloads, so a CI cache step keeps one folder.

``cache_root()`` is ``$SAMPLER_BENCH_CACHE`` when set, else ``$XDG_CACHE_HOME/sampler_bench``, else
``~/.cache/sampler_bench``. Each kind of file has its own sub-folder (``subdir(name)``):

    checkpoints/   model checkpoints (models/checkpoints.py)
    refs/          FID reference statistics (metrics/refs.py)
    weights/       feature-extractor weights (metrics/inception.py and other extractors)

``offline()`` is true when ``SAMPLER_BENCH_OFFLINE`` is set to 1/true/yes/on (``bench sweep
--offline`` sets it): every download is then refused with a one-line error naming the missing file.
This module imports nothing from the rest of the package, so any layer may use it.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SAMPLER_BENCH_CACHE"
OFFLINE_ENV = "SAMPLER_BENCH_OFFLINE"
SUBDIRS = ("checkpoints", "refs", "weights")


def cache_root() -> Path:
    """The cache root (not created here)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "sampler_bench"


def subdir(name: str) -> Path:
    """``cache_root() / name`` (not created here): one folder per kind of cached file."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"cache sub-folder must be a plain name, got {name!r}")
    return cache_root() / name


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def set_offline() -> None:
    """Turn downloads off for this process and its children (``--offline``)."""
    os.environ[OFFLINE_ENV] = "1"


def contents() -> list[tuple[str, int, int]]:
    """(sub-folder, number of files, total bytes) for each folder under the cache root."""
    root = cache_root()
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        n = size = 0
        for f in d.rglob("*"):
            if f.is_file():
                n += 1
                size += f.stat().st_size
        out.append((d.name, n, size))
    return out


def human_size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
