"""``--shard auto``: the shard of this job from the job scheduler's environment.

Read in this order (the first pair that is set wins):

- ``SAMPLER_BENCH_SHARD_INDEX`` (1-based) and ``SAMPLER_BENCH_SHARD_COUNT``: set them from any CI
  matrix (GitHub Actions: ``${{ matrix.shard }}`` and the matrix size);
- Slurm job arrays: ``SLURM_ARRAY_TASK_ID`` with ``SLURM_ARRAY_TASK_COUNT`` (and ``SLURM_ARRAY_TASK_MIN``
  / ``SLURM_ARRAY_TASK_STEP``, so ``--array=0-7``, ``1-8`` and ``0-14:2`` all map onto shards 1..n);
- GitLab CI ``parallel: N``: ``CI_NODE_INDEX`` (1-based) and ``CI_NODE_TOTAL``.
"""

from __future__ import annotations

import os
from typing import Mapping

from sampler_bench.errors import BenchError
from sampler_bench.sweep.config import parse_shard

EXPLICIT = ("SAMPLER_BENCH_SHARD_INDEX", "SAMPLER_BENCH_SHARD_COUNT")
SLURM = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT")
GITLAB = ("CI_NODE_INDEX", "CI_NODE_TOTAL")


def _int(env: Mapping[str, str], name: str) -> int:
    v = env.get(name, "").strip()
    if not v.lstrip("-").isdigit():
        raise BenchError(f"--shard auto: ${name}={v!r} is not an integer; fix the job's environment or pass --shard i/n.")
    return int(v)


def shard_from_env(env: Mapping[str, str] | None = None) -> tuple[tuple[int, int], str]:
    """(i, n) with 1 <= i <= n, and which variables it came from."""
    env = os.environ if env is None else env
    if env.get(EXPLICIT[0]) or env.get(EXPLICIT[1]):
        i, n, src = _int(env, EXPLICIT[0]), _int(env, EXPLICIT[1]), " and ".join(EXPLICIT)
    elif env.get(SLURM[0]):
        if not env.get(SLURM[1]):
            raise BenchError("--shard auto: SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; pass --shard i/n.")
        tid, n = _int(env, SLURM[0]), _int(env, SLURM[1])
        lo = _int(env, "SLURM_ARRAY_TASK_MIN") if env.get("SLURM_ARRAY_TASK_MIN") else 0
        step = _int(env, "SLURM_ARRAY_TASK_STEP") if env.get("SLURM_ARRAY_TASK_STEP") else 1
        if step < 1 or (tid - lo) % step:
            raise BenchError(f"--shard auto: Slurm task {tid} is not on the array grid (min {lo}, step {step}); pass --shard i/n.")
        i, src = (tid - lo) // step + 1, "SLURM_ARRAY_TASK_ID/MIN/STEP and SLURM_ARRAY_TASK_COUNT"
    elif env.get(GITLAB[0]):
        i, n, src = _int(env, GITLAB[0]), _int(env, GITLAB[1]), " and ".join(GITLAB)
    else:
        raise BenchError("--shard auto found no job index; set SAMPLER_BENCH_SHARD_INDEX (1-based) and SAMPLER_BENCH_SHARD_COUNT, "
                         "run inside a Slurm job array or a GitLab parallel job, or pass --shard i/n.")
    if not 1 <= i <= n:
        raise BenchError(f"--shard auto: shard {i} of {n} from {src} is out of range; the index must be between 1 and the count.")
    return (i, n), src


def resolve_shard(text: str | None, env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``--shard``: None, ``i/n`` or ``auto``."""
    if text is not None and text.strip().lower() == "auto":
        return shard_from_env(env)[0]
    return parse_shard(text)
