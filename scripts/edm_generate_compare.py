"""Compare a `bench sample --preset edm-generate` run with the PNGs of EDM's own ``generate.py``.

Not part of the test suite: the EDM code and checkpoints are not shipped. On a GPU machine, run
EDM's ``generate.py`` (NVlabs/edm) and ours on the same network and seeds, e.g.

    python generate.py --outdir=edm_out --seeds=0-63 --batch=64 --network=edm-cifar10-32x32-cond-vp.pkl
    bench sample --preset edm-generate --model edm-cifar10-32x32-cond-vp --class-label random \\
                 --nfe 35 --seeds 0-63 --out ours
    python scripts/edm_generate_compare.py ours edm_out

EDM saves sample i as ``{seed:06d}.png`` (``--subdirs``: in ``{seed - seed % 1000:06d}/``). The
script prints, over the seeds of our run, how many images are identical and the largest per-pixel
difference (uint8 levels); with the same device and dtype it should be 64 identical, 0 levels.
It exits 1 if any image differs by more than ``--tolerance`` levels (default 1: float rounding on
another device or another batch size can move a pixel across a quantisation boundary).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def edm_png(edm_dir: Path, seed: int) -> Path | None:
    for p in (edm_dir / f"{seed:06d}.png", edm_dir / f"{seed - seed % 1000:06d}" / f"{seed:06d}.png"):
        if p.is_file():
            return p
    return None


def compare(run_dir: Path, edm_dir: Path) -> dict:
    from PIL import Image

    with np.load(run_dir / "samples.npz") as f:
        images, seeds = f["images"], f["seeds"]
    same, missing, worst = 0, [], 0
    for img, seed in zip(images, seeds):
        p = edm_png(edm_dir, int(seed))
        if p is None:
            missing.append(int(seed))
            continue
        ref = np.asarray(Image.open(p))
        if ref.ndim == 2:
            ref = ref[..., None]
        if ref.shape != img.shape:
            raise SystemExit(f"error: {p} is {ref.shape}, our image is {img.shape}; compare runs of the same network.")
        diff = int(np.abs(ref.astype(np.int16) - img.astype(np.int16)).max())
        same += diff == 0
        worst = max(worst, diff)
    return {"compared": len(seeds) - len(missing), "identical": same, "max_level_diff": worst, "missing": missing}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="our run directory (samples.npz)")
    ap.add_argument("edm_dir", type=Path, help="EDM generate.py --outdir")
    ap.add_argument("--tolerance", type=int, default=1, help="largest allowed per-pixel difference in uint8 levels")
    args = ap.parse_args(argv)
    if not (args.run_dir / "samples.npz").is_file():
        raise SystemExit(f"error: {args.run_dir} has no samples.npz; give a `bench sample` run directory.")
    r = compare(args.run_dir, args.edm_dir)
    print(f"compared {r['compared']} seeds: {r['identical']} identical, largest difference {r['max_level_diff']} levels"
          + (f"; no EDM image for {len(r['missing'])} seeds (first {r['missing'][:5]})" if r["missing"] else ""))
    return 0 if r["compared"] and r["max_level_diff"] <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
