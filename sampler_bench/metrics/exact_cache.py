"""Cache of the exact metrics' expensive pure functions, in process and on disk.

The exact-ODE reference of a batch is a pure function of (model, latents, labels, sigma_0) (keyed by
the seeds plus a SHA-256 of the latents, which depend on the noise stream) and the pixel-FD floor
of (model, N, label): both are computed once and reused by every run and sweep cell
that asks again. Each entry is keyed by a SHA-256 over its full key (the model's fingerprint: its
description and the bytes of its parameters; the solver version and tolerances), stored as an
``.npz`` with the key text and a SHA-256 of its arrays; an entry whose key text or checksum does not
match is ignored and recomputed (and rewritten), so a changed key never returns a stale value.

Location: ``$SAMPLER_BENCH_EXACT_CACHE``, else ``$XDG_CACHE_HOME/sampler_bench/exact`` (default
``~/.cache/sampler_bench/exact``); ``SAMPLER_BENCH_EXACT_CACHE=off`` keeps it in memory only. A cache
that cannot be written is skipped silently (the value is still returned).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sampler_bench.fileio import write_npz

_MEMORY: "OrderedDict[str, dict[str, np.ndarray]]" = OrderedDict()
_MEMORY_BYTES = 512 * 2**20  # in-process budget (a 64 x 3x32x32 float64 reference is 1.5 MB)


def cache_root() -> Path | None:
    env = os.environ.get("SAMPLER_BENCH_EXACT_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sampler_bench" / "exact"


def model_fingerprint(model) -> str:
    """SHA-256 of the model's description and of every parameter tensor (memoised on the model)."""
    fp = getattr(model, "_exact_fingerprint", None)
    if fp is None:
        h = hashlib.sha256(json.dumps(model.describe(), sort_keys=True, default=str).encode())
        for name in ("mu", "U", "s", "comp_class", "log_pi"):
            t = getattr(model, name, None)
            if t is not None:
                h.update(name.encode())
                h.update(np.ascontiguousarray(t.detach().cpu().numpy()).tobytes())
        h.update(repr(float(getattr(model, "iso_var", 0.0))).encode())
        fp = h.hexdigest()
        model._exact_fingerprint = fp
    return fp


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(k.encode())
        h.update(str(a.dtype).encode())
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _remember(digest: str, arrays: dict[str, np.ndarray]) -> None:
    _MEMORY[digest] = arrays
    _MEMORY.move_to_end(digest)
    total = sum(a.nbytes for v in _MEMORY.values() for a in v.values())
    while total > _MEMORY_BYTES and len(_MEMORY) > 1:
        _, old = _MEMORY.popitem(last=False)
        total -= sum(a.nbytes for a in old.values())


def _read(path: Path, key_text: str) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["_key"]) != key_text:
                return None
            arrays = {k: z[k] for k in z.files if not k.startswith("_")}
            return arrays if str(z["_sha256"]) == _checksum(arrays) else None
    except (OSError, KeyError, ValueError, EOFError):
        return None


def cached(kind: str, key: dict[str, Any], compute: Callable[[], dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], str]:
    """``compute()``'s arrays for ``key``, from memory, from disk, or computed (then stored in both).

    Returns the arrays and where they came from: ``memory``, ``disk`` or ``computed``.
    """
    key_text = json.dumps({"kind": kind, **key}, sort_keys=True, default=str)
    digest = hashlib.sha256(key_text.encode()).hexdigest()
    if digest in _MEMORY:
        _MEMORY.move_to_end(digest)
        return _MEMORY[digest], "memory"
    root = cache_root()
    path = None if root is None else root / f"{kind}-{digest[:32]}.npz"
    if path is not None and path.is_file():
        arrays = _read(path, key_text)
        if arrays is not None:
            _remember(digest, arrays)
            return arrays, "disk"
    arrays = {k: np.asarray(v) for k, v in compute().items()}
    _remember(digest, arrays)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_npz(path, _key=np.array(key_text), _sha256=np.array(_checksum(arrays)), **arrays)
        except OSError:
            pass  # a read-only or full cache directory only costs the recomputation next time
    return arrays, "computed"


def clear_memory() -> None:
    _MEMORY.clear()
