"""Atomic file and directory writes: nothing half-written is ever left under a final name."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Stream an uncompressed .npz to a temporary file (numpy writes it in chunks, so a memmapped
    array is never loaded whole) and rename it onto ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def write_png(path: str | os.PathLike, image_hwc: np.ndarray) -> None:
    from PIL import Image

    buf = io.BytesIO()
    arr = np.asarray(image_hwc, dtype=np.uint8)
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(buf, format="PNG")
    write_bytes(path, buf.getvalue())


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and move it onto ``path`` when the block succeeds.

    With ``overwrite`` an existing ``path`` is replaced only after the new one is complete. On any
    error (or KeyboardInterrupt) the temporary directory is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        if path.exists():
            if not overwrite:
                raise FileExistsError(path)
            trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, trash / "old")
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_writable(path: str | os.PathLike, flag: str = "--out") -> None:
    """BenchError unless ``path`` can be created: checked before any work, so a long computation is
    never lost to an unwritable output place."""
    from sampler_bench.errors import BenchError

    path = Path(path)
    probe = path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise BenchError(f"cannot write to '{path}': '{probe}' is a file, not a directory; choose another {flag}.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BenchError(f"cannot write to '{path}': '{probe}' is not writable; choose another {flag}.")
    if path.is_dir():
        raise BenchError(f"cannot write to '{path}': it is a directory; give a file name for {flag}.")


@contextlib.contextmanager
def user_write_errors(path: str | os.PathLike, flag: str = "--out") -> Iterator[None]:
    """Turn an OSError while writing ``path`` (disk full, permissions changed) into a one-line BenchError."""
    from sampler_bench.errors import BenchError

    try:
        yield
    except OSError as exc:
        raise BenchError(f"cannot write '{path}': {exc.strerror or exc}; choose another {flag}.") from None
