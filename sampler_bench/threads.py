"""CPU thread policy for sampling runs (``--threads N``, sweep key ``threads``).

torch's intra-op pool defaults to one thread per core and its OpenMP workers spin-wait between
operations. On a machine shared with other jobs that is very slow (issue 19: one forward of a small
EDM network took 9.3 s at 2 threads under load, 0.37 s at 1 thread); on an idle machine with a large
network more threads help. Policy:

- ``--threads N`` (N >= 1): exactly N intra-op threads for the run, recorded in run.json;
- default (``None``): ``OMP_NUM_THREADS`` when it is set, else 1 thread on CPU (a run is usually one
  of several processes: sweep shards, other users; scale out with ``--shard`` processes instead);
  on CUDA torch's own default (host threads only feed the GPU).

The previous setting is restored when the run ends, so a sweep's cells or a library caller are not
affected by another run's choice.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch

from sampler_bench.errors import BenchError


def check_threads(value) -> int | None:
    """``None`` or a positive int (BenchError otherwise)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BenchError(f"threads {value!r} is not valid; use a positive integer such as 1 (or leave it unset for the default policy).")
    return value


def resolve_threads(requested: int | None, device: torch.device) -> int:
    """The intra-op thread count a run uses (see the module docstring)."""
    requested = check_threads(requested)
    if requested is not None:
        return requested
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    if torch.device(device).type == "cuda":
        return torch.get_num_threads()
    return 1


@contextmanager
def thread_count(n: int) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(n)``, then restore the previous count."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
