"""Keep freed CPU memory in the process heap so large per-batch tensors do not page-fault.

torch's CPU allocator is plain ``malloc``: glibc serves blocks above ``M_MMAP_THRESHOLD`` (128 KiB
to 32 MiB, adaptive) with fresh ``mmap`` pages and returns them to the kernel on ``free``, so every
batch's activations (Inception features at 299x299, an EDM network's feature maps) are faulted in
page by page again. Measured on `bench fid`'s extractor (CPU, batch 32): 540k minor page faults and
6 s of kernel time per batch, 23k and 0.2 s with the thresholds raised. Raising ``M_MMAP_THRESHOLD``
and ``M_TRIM_THRESHOLD`` to 1 GiB keeps freed blocks in the heap for reuse (measured: no page
faults when 8-24 MiB tensors are reallocated; some larger single blocks still fault); the cost is
that the process keeps its peak heap (not returned to the system until exit). glibc only;
elsewhere a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_done = False


def keep_freed_memory(mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 30) -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True if applied."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    _done = bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
    return _done
