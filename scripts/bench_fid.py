"""Benchmark: our FID path vs torch-fidelity's own ``calculate_metrics`` on the same images, same run.

Measures feature-extraction images/s (ours: channels_last on CPU, inference_mode, streamed float64
sums; theirs: ``calculate_metrics`` on an in-memory Dataset) and the Frechet-distance time at d=2048
(ours: eigh-based trace on float64 statistics; theirs: ``fid_statistics_to_metric``), and checks
both FIDs agree. Without real weights it builds random ones with the exact keys/shapes (the timing is
the same; the FID values are meaningless in scale).

    python scripts/bench_fid.py --num 64 [--weights PATH] [--device cpu|cuda] [--batch 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from sampler_bench import _compat  # noqa: E402,F401


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num", type=int, default=64)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()

    import torch_fidelity
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    from sampler_bench.metrics.inception import get_extractor
    from sampler_bench.metrics.stats import FeatureStats, frechet_distance

    weights = a.weights
    if weights is None:
        from fid_support import random_inception_weights

        weights = str(random_inception_weights())
        print("weights: random (exact keys/shapes; timings valid, FID scale not)")
    rng = np.random.default_rng(0)
    imgs1 = rng.integers(0, 256, (a.num, a.size, a.size, 3), dtype=np.uint8)
    imgs2 = np.clip(imgs1.astype(np.int16) + rng.integers(-40, 40, imgs1.shape), 0, 255).astype(np.uint8)
    dev = torch.device(a.device)
    print(f"device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"{a.num} images per side, {a.size}x{a.size}, batch {a.batch}")

    # ours
    ext = get_extractor(weights, device=dev, batch_size=a.batch)
    ext.features(imgs1[:2])  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    stats = []
    for imgs in (imgs1, imgs2):
        st = FeatureStats(2048)
        for i in range(0, a.num, a.batch):
            st.update(ext.features(imgs[i:i + a.batch])[0])
        stats.append(st)
    t_ours = time.perf_counter() - t
    mus = [s.mean() for s in stats]
    sig = [s.dense_cov() for s in stats]
    t = time.perf_counter()
    fid_ours = frechet_distance(mus[0], stats[0].cov(), mus[1], stats[1].cov())  # what the pipeline does
    fd_ours = time.perf_counter() - t
    t = time.perf_counter()
    fid_tf_stats = fid_statistics_to_metric({"mu": mus[0], "sigma": sig[0]}, {"mu": mus[1], "sigma": sig[1]}, verbose=False)["frechet_inception_distance"]
    fd_tf = time.perf_counter() - t
    # full-rank case (N > d, as for a real 10k-50k evaluation): synthetic 2048-d statistics from 3000 rows
    X, Y = rng.normal(size=(3000, 2048)), rng.normal(size=(3000, 2048)) * 1.1 + 0.1
    f1 = {"mu": X.mean(0), "sigma": np.cov(X, rowvar=False)}
    f2 = {"mu": Y.mean(0), "sigma": np.cov(Y, rowvar=False)}
    t = time.perf_counter()
    full_ours = frechet_distance(f1["mu"], f1["sigma"], f2["mu"], f2["sigma"])
    fdf_ours = time.perf_counter() - t
    t = time.perf_counter()
    full_tf = fid_statistics_to_metric(f1, f2, verbose=False)["frechet_inception_distance"]
    fdf_tf = time.perf_counter() - t

    # torch-fidelity end to end
    from fid_support import ImageDataset as DS

    t = time.perf_counter()
    m = torch_fidelity.calculate_metrics(input1=DS(imgs1), input2=DS(imgs2), fid=True, cuda=dev.type == "cuda",
                                         batch_size=a.batch, feature_extractor_weights_path=weights, cache=False,
                                         save_cpu_ram=True, verbose=False)
    t_tf = time.perf_counter() - t
    fid_tf = m["frechet_inception_distance"]

    n = 2 * a.num
    print(f"feature extraction: ours {n / t_ours:.2f} img/s ({t_ours:.1f} s), torch-fidelity calculate_metrics "
          f"{n / t_tf:.2f} img/s ({t_tf:.1f} s incl. its Frechet distance), ratio {t_tf / t_ours:.2f}x")
    print(f"Frechet distance d=2048, these {a.num} images (rank-deficient): ours (n x n factor path) {fd_ours:.3f} s, "
          f"torch-fidelity fid_statistics_to_metric (eigvals of S1 S2) {fd_tf:.2f} s, ratio {fd_tf / fd_ours:.1f}x")
    print(f"Frechet distance d=2048, full rank (3000 rows): ours (Cholesky + eigvalsh) {fdf_ours:.2f} s, torch-fidelity "
          f"{fdf_tf:.2f} s, ratio {fdf_tf / fdf_ours:.2f}x, rel diff {abs(full_ours - full_tf) / full_tf:.1e}")
    print(f"FID ours {fid_ours:.9g}, torch-fidelity on our stats {fid_tf_stats:.9g}, torch-fidelity end to end {fid_tf:.9g} "
          f"(rel diff {abs(fid_ours - fid_tf) / max(abs(fid_tf), 1e-30):.2e})")


if __name__ == "__main__":
    main()
