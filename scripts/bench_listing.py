"""Benchmark: wall and CPU time of the listing commands (target: under 0.5 s; issue 9 item 18).

Each command runs in a fresh interpreter, ``--repeat`` times; the best run is reported (wall time
includes the interpreter's start, CPU time is user + system of the child). On a loaded machine wall
time is noisy: CPU time is the fairer number.

    python scripts/bench_listing.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [["solvers"], ["solvers", "-v"], ["models"], ["refs"], ["--help"]]


def run_once(args: list[str]) -> tuple[float, float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sampler_bench", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    print(f"{'command':<22} {'wall s':>7} {'cpu s':>7}")
    for args in COMMANDS:
        runs = [run_once(args) for _ in range(a.repeat)]
        print(f"{'bench ' + ' '.join(args):<22} {min(r[0] for r in runs):7.3f} {min(r[1] for r in runs):7.3f}")


if __name__ == "__main__":
    main()
