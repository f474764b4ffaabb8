"""Shared test settings.

Tiny tensors dominate the suite; torch's default intra-op threading makes them much slower on a
loaded 2-core machine, so tests run single-threaded (this does not change any result).
"""

import torch

torch.set_num_threads(1)

# The exact metrics' disk cache (metrics/exact_cache.py) goes to a per-session temporary directory,
# never into the user's ~/.cache.
import atexit  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

if "SAMPLER_BENCH_EXACT_CACHE" not in os.environ:
    _exact_cache = tempfile.mkdtemp(prefix="sb-exact-cache-")
    os.environ["SAMPLER_BENCH_EXACT_CACHE"] = _exact_cache
    atexit.register(shutil.rmtree, _exact_cache, True)
