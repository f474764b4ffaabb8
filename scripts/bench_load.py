"""Checkpoint load time: an EDM-sized network pickle, read and rebuilt in a fresh process.

Builds a network of a published EDM architecture with random weights (nothing downloaded), writes it
as an EDM pickle, then times, each in a fresh Python process (so torch's lazy imports count as they
do for a user): reading the file's bytes alone, ``read_edm_pickle`` (allow-list unpickler + SHA-256),
``build_network`` (our network, weights loaded strictly), and the whole ``load_edm_denoiser``.

    python scripts/bench_load.py                    # DDPM++ CIFAR-10 size (56M parameters)
    python scripts/bench_load.py --size tiny        # 3.5M parameters
    python scripts/bench_load.py --size adm64       # ADM ImageNet-64 size (296M parameters)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {  # (preconditioner, constructor kwargs)
    "tiny": ("VPPrecond", dict(img_resolution=32, img_channels=3, label_dim=0, model_type="SongUNet",
                               embedding_type="positional", encoder_type="standard", decoder_type="standard",
                               channel_mult_noise=1, resample_filter=[1, 1], model_channels=32, channel_mult=[1, 2, 2])),
    "cifar": ("VPPrecond", dict(img_resolution=32, img_channels=3, label_dim=0, model_type="SongUNet",
                                embedding_type="positional", encoder_type="standard", decoder_type="standard",
                                channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2])),
    "adm64": ("EDMPrecond", dict(img_resolution=64, img_channels=3, label_dim=1000, model_type="DhariwalUNet",
                                 model_channels=192, channel_mult=[1, 2, 3, 4])),
}

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
from sampler_bench.models import edm
t1 = time.perf_counter()
if sys.argv[2] == "bytes":
    open(sys.argv[1], "rb").read()
    out = {"bytes_s": time.perf_counter() - t1}
elif sys.argv[2] == "phases":
    data = edm.read_edm_pickle(sys.argv[1])
    t2 = time.perf_counter()
    net = edm.build_network(data["ema"])
    t3 = time.perf_counter()
    out = {"import_s": t1 - t0, "read_s": t2 - t1, "build_s": t3 - t2}
else:
    edm.load_edm_denoiser(sys.argv[1])
    out = {"load_s": time.perf_counter() - t1}
print(json.dumps(out))
"""


def child(path: Path, what: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", CHILD, str(path), what], capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="cifar")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    import torch

    from sampler_bench.models import edm
    from sampler_bench.models.nets import edm as nets

    precond, kw = SIZES[args.size]
    with nets.skip_init():
        net = nets.PRECONDITIONERS[precond](**kw)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    n_params = sum(p.numel() for p in net.parameters())
    with tempfile.TemporaryDirectory() as d:
        path = edm.save_edm_pickle(net, Path(d) / "net.pkl")
        del net
        size_mb = path.stat().st_size / 2**20
        rows = []
        for _ in range(args.repeat):
            rows.append({**child(path, "bytes"), **child(path, "phases"), **child(path, "load")})
    best = {k: min(r[k] for r in rows) for k in rows[0]}
    print(f"{args.size}: {n_params / 1e6:.1f}M parameters, {size_mb:.0f} MB file, best of {args.repeat} fresh processes "
          f"(torch threads: {os.environ.get('OMP_NUM_THREADS', 'default')})")
    print("| phase | seconds |\n|---|---|")
    for k, label in (("bytes_s", "read the file's bytes (floor)"), ("read_s", "read_edm_pickle (unpickle + SHA-256)"),
                     ("build_s", "build_network (our net, strict load)"), ("load_s", "load_edm_denoiser, total"),
                     ("import_s", "import torch + sampler_bench (not counted above)")):
        print(f"| {label} | {best[k]:.2f} |")


if __name__ == "__main__":
    main()
