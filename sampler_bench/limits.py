"""Documented bounds on what one run may ask for, checked before any work.

- NFE: at most :data:`MAX_NFE` denoiser calls per sample unless the user asks for more
  (``--allow-large-nfe``, or ``allow_large_nfe: true`` in a sweep), so a typo such as
  ``--nfe 1000000000`` is an error instead of hours of silence.
- Seeds: ``0 .. 2**32 - 1``, EDM's range (a seed is a 32-bit generator seed; larger values would
  wrap onto smaller ones and repeat samples).
- Samples per run: at most :data:`MAX_SAMPLES` (ten million; FID uses 50,000).
"""

from __future__ import annotations

from sampler_bench.errors import BenchError

MAX_NFE = 10_000
MAX_SEED = 2**32 - 1
MAX_SAMPLES = 10_000_000


def check_nfe(nfe: int, allow_large: bool = False, flag: str = "--allow-large-nfe") -> None:
    if nfe < 1:
        raise BenchError(f"--nfe must be a positive integer; got {nfe}.")
    if nfe > MAX_NFE and not allow_large:
        raise BenchError(f"--nfe {nfe} is above the maximum of {MAX_NFE:,} denoiser calls per sample; "
                         f"use a smaller --nfe, or pass {flag} if you really mean it.")


def check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise BenchError(f"seed {seed} is out of range; use seeds 0..{MAX_SEED} (2^32 - 1, EDM's range).")


def check_num_samples(n: int, what: str = "the seeds") -> None:
    if n > MAX_SAMPLES:
        raise BenchError(f"too many samples ({what}: {n:,}); at most {MAX_SAMPLES:,} per run, "
                         f"so split the work into several runs.")


def check_limits(cfg) -> None:
    """Check a :class:`~sampler_bench.sampling.RunConfig` against the bounds above."""
    check_nfe(cfg.nfe, getattr(cfg, "allow_large_nfe", False))
    if not cfg.seeds:
        raise BenchError("no seeds given; use --seeds 0-63 or --num 64.")
    check_num_samples(len(cfg.seeds))
    for s in (min(cfg.seeds), max(cfg.seeds)):
        check_seed(s)
