"""Data-parallel scaling of `bench sample` under torchrun: images/s for 1..N processes.

    python scripts/bench_scaling.py                         # CPU: 1 and 2 processes (gloo), tiny EDM net
    python scripts/bench_scaling.py --device cuda --procs 1,2,4,8 --resolution 32 --num 2048 --batch 256

Each point is one `bench sample` run (through `torchrun --nproc_per_node N` for N > 1) on the same
network and seeds; images/s is read from its run.json (rank 0's sampling wall time, which covers the
whole run: the ranks finish together). Efficiency = images/s at N / (N x images/s at 1). The samples
of every run are checked to be identical to the 1-process run. On CPU each process gets
``--threads-per-proc`` threads (default 1), so N processes use N cores: run it on N idle cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", default="1,2", help="comma-separated process counts (default 1,2)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--resolution", type=int, default=16)
    ap.add_argument("--arch", default="ddpmpp")
    ap.add_argument("--num", type=int, default=64, help="images per run")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--solver", default="heun")
    ap.add_argument("--nfe", type=int, default=9)
    ap.add_argument("--threads-per-proc", type=int, default=1)
    args = ap.parse_args()
    procs = [int(p) for p in args.procs.split(",")]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads_per_proc),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    torchrun = Path(sys.executable).with_name("torchrun")
    with tempfile.TemporaryDirectory(prefix="sb_scaling_") as tmp:
        tmp = Path(tmp)
        net = tmp / "net.pkl"
        subprocess.run([sys.executable, "-m", "sampler_bench", "tiny-edm", "--out", str(net), "--arch", args.arch,
                        "--resolution", str(args.resolution)], check=True, env=env, capture_output=True)
        common = ["sample", "--model", str(net), "--solver", args.solver, "--nfe", str(args.nfe),
                  "--seeds", f"0-{args.num - 1}", "--batch", str(args.batch), "--device", args.device, "--metrics", "none"]
        rows, base, ref = [], None, None
        for n in procs:
            out = tmp / f"p{n}"
            prefix = [sys.executable, "-m", "sampler_bench"] if n == 1 else \
                [str(torchrun), "--standalone", "--nnodes", "1", "--nproc_per_node", str(n), "-m", "sampler_bench"]
            r = subprocess.run([*prefix, *common, "--out", str(out)], env=env, capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"{n} processes failed:\n{r.stderr[-2000:]}")
            rec = json.loads((out / "run.json").read_text())
            imgs = np.load(out / "samples.npz")["images"]
            if ref is None:
                ref = imgs
            same = bool(np.array_equal(imgs, ref))
            ips = rec["images_per_s"]
            base = base or ips
            rows.append((n, ips, ips / (n * base), same))
    print(f"{args.solver} NFE {args.nfe}, tiny EDM {args.arch} {args.resolution}x{args.resolution}, {args.num} images, "
          f"batch {args.batch}, {args.device}, {args.threads_per_proc} thread(s)/process")
    print("| processes | images/s | efficiency | samples identical to 1 process |")
    print("|---|---|---|---|")
    for n, ips, eff, same in rows:
        print(f"| {n} | {ips:.2f} | {eff:.2f} | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
