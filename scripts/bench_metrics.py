"""Benchmark: feature-extraction throughput per extractor, ours vs torch-fidelity's ``calculate_metrics``.

For each feature space (Inception, DINOv2, CLIP) both sides run the *same network* on the same uint8
images: ours through ``get_space_extractor`` + streamed float64 statistics (+ kept float16 rows when
``--kid``), torch-fidelity through ``calculate_metrics(input1, input2, fid=True, feature_extractor=...)``
on in-memory datasets. It prints images/s and checks that both Frechet distances agree.

Offline, with no real weights, random ones are built with the real architecture's size, so the timings
are those of the real networks (values meaningless in scale): Inception with its exact keys; CLIP
ViT-B/32 with torch-fidelity's own architecture at its real size (224 input, width 768, 12 layers);
DINOv2 ViT-S/14 with a stand-in ViT of the same size (12 blocks, width 384, MLP 1536, 257 tokens),
because DINOv2's code comes from torch hub (github), which is not reachable here. torch-fidelity's
DINOv2 extractor itself calls ``torch.hub.load``: the benchmark points that call at the same stand-in.

    python scripts/bench_metrics.py --num 16 [--spaces inception,dinov2-vit-s-14,clip-vit-b-32] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from sampler_bench import _compat  # noqa: E402,F401
from fid_support import ImageDataset  # noqa: E402  (tests/ is on the path above)


def _weights(space: str, given: str | None) -> str:
    import fid_support

    if given:
        return given
    if space == "inception-v3-compat":
        return str(fid_support.random_inception_weights())
    if space.startswith("dinov2"):
        if space != "dinov2-vit-s-14":
            raise SystemExit("offline stand-in weights exist for dinov2-vit-s-14 only; pass --weights SPACE=PATH")
        os.environ.setdefault("SAMPLER_BENCH_DINOV2_REPO", str(fid_support.fake_dinov2_repo(12, 1536)))
        return str(fid_support.random_dinov2_weights(12, 1536))
    if space != "clip-vit-b-32":
        raise SystemExit("offline random weights exist for clip-vit-b-32 only; pass --weights SPACE=PATH")
    return str(fid_support.random_clip_weights(True, True))


def bench_space(space: str, weights: str, imgs1, imgs2, batch: int, dev: torch.device, kid: bool) -> dict:
    import torch_fidelity

    from sampler_bench.metrics.extractors import get_space_extractor
    from sampler_bench.metrics.fid import FeatureAccumulator
    from sampler_bench.metrics.stats import frechet_distance
    from sampler_bench.metrics.uncertainty import SpreadOptions

    ext = get_space_extractor(space, weights, device=dev, batch_size=batch)
    ext.features(imgs1[:2])  # warm-up
    t = time.perf_counter()
    accs = []
    for imgs in (imgs1, imgs2):
        acc = FeatureAccumulator(ext, ["kid"] if kid else [], total=len(imgs), spread=SpreadOptions(subsets=1))
        for i in range(0, len(imgs), batch):
            acc.update(imgs[i:i + batch])
        accs.append(acc)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_ours = time.perf_counter() - t
    s1, s2 = accs[0].stats, accs[1].stats
    fd_ours = frechet_distance(s1.mean(), s1.cov(), s2.mean(), s2.cov())

    kwargs = dict(fid=True, cuda=dev.type == "cuda", batch_size=batch, cache=False, save_cpu_ram=True, verbose=False,
                  feature_extractor=space)
    restore = None
    if space == "inception-v3-compat" or space.startswith("clip"):
        kwargs["feature_extractor_weights_path"] = weights
    else:  # torch-fidelity's DINOv2 extractor always calls torch.hub.load("facebookresearch/dinov2", ...)
        real_load = torch.hub.load
        net = get_space_extractor(space, weights, device="cpu").net.model

        def hub_load(repo, entry, *a, **k):
            return net

        torch.hub.load, restore = hub_load, real_load
    try:
        t = time.perf_counter()
        m = torch_fidelity.calculate_metrics(input1=ImageDataset(imgs1), input2=ImageDataset(imgs2), **kwargs)
        t_tf = time.perf_counter() - t
    finally:
        if restore is not None:
            torch.hub.load = restore
    fd_tf = m["frechet_inception_distance"]
    n = len(imgs1) + len(imgs2)
    return {"space": space, "ours": n / t_ours, "tf": n / t_tf, "fd_ours": fd_ours, "fd_tf": fd_tf, "t_ours": t_ours, "t_tf": t_tf}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num", type=int, default=16, help="images per side")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--spaces", default="inception-v3-compat,dinov2-vit-s-14,clip-vit-b-32")
    ap.add_argument("--weights", action="append", default=[], help="SPACE=PATH (real weights); repeatable")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--kid", action="store_true", help="also keep every feature row (as KID/PRC do)")
    a = ap.parse_args()
    given = dict(w.split("=", 1) for w in a.weights)
    rng = np.random.default_rng(0)
    imgs1 = rng.integers(0, 256, (a.num, a.size, a.size, 3), dtype=np.uint8)
    imgs2 = np.clip(imgs1.astype(np.int16) + rng.integers(-40, 40, imgs1.shape), 0, 255).astype(np.uint8)
    dev = torch.device(a.device)
    print(f"device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"{a.num} images per side, {a.size}x{a.size}, batch {a.batch}; weights: {'given' if given else 'random, real sizes'}")
    print("| extractor | ours img/s | torch-fidelity calculate_metrics img/s | ratio | FD ours | FD torch-fidelity | rel diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for space in a.spaces.split(","):
        from sampler_bench.metrics.extractors import space_of

        sp = space_of(space).name
        r = bench_space(sp, _weights(sp, given.get(sp)), imgs1, imgs2, a.batch, dev, a.kid)
        rel = abs(r["fd_ours"] - r["fd_tf"]) / max(abs(r["fd_tf"]), 1e-30)
        print(f"| {sp} | {r['ours']:.2f} | {r['tf']:.2f} | {r['t_tf'] / r['t_ours']:.2f}x | {r['fd_ours']:.6g} | {r['fd_tf']:.6g} | {rel:.1e} |",
              flush=True)


if __name__ == "__main__":
    main()
