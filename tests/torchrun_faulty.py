"""`bench` with an injected fault on one rank, for tests/test_distributed.py (run under torchrun).

FAULT_RANK (default 1) misbehaves at its FAULT_BATCH-th batch (default 2): FAULT=raise raises an
ordinary exception, FAULT=die kills the process (SIGKILL), as an out-of-memory kill would.
"""

import os
import signal

from sampler_bench import sampling
from sampler_bench.cli import main

_real = sampling.launch_batch
_seen = [0]


def _faulty(plan, bseeds, start=0):
    _seen[0] += 1
    if int(os.environ.get("RANK", "0")) == int(os.environ.get("FAULT_RANK", "1")) and _seen[0] == int(os.environ.get("FAULT_BATCH", "2")):
        if os.environ.get("FAULT") == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError("injected fault")
    return _real(plan, bseeds, start)


sampling.launch_batch = _faulty
main()
