"""FID (and KID / Inception Score on request) of uint8 images against reference statistics.

FID = ``|mu - mu_ref|^2 + tr(S) + tr(S_ref) - 2 tr((S S_ref)^(1/2))`` (Heusel et al. 2017, eq. 6) on
Inception pool3 features, computed in float64 from streamed sums (:mod:`.stats`). KID and IS use
torch-fidelity's own metric functions (``kid_features_to_metric``, ``isc_features_to_metric``);
they need every feature row (KID: 2048 float32 = 8 KiB per image on both sides) or every logit row
(IS: 1008 float32 = 4 KiB per image), so they are computed only when asked for.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import torch

from sampler_bench.errors import BenchError
from sampler_bench.metrics.inception import EXTRACTOR_NAME, FEATURE_DIM, InceptionExtractor
from sampler_bench.metrics.refs import RefStats
from sampler_bench.metrics.stats import FeatureStats, few_images_warning, frechet_distance

INCEPTION_METRICS = {"kid": "Kernel Inception Distance (needs reference features: `bench stats --keep-features`)",
                     "isc": "Inception Score (from the samples alone)"}
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # torch-fidelity's defaults


def check_inception_metrics(metrics: Iterable[str], ref: RefStats | None) -> None:
    for m in metrics:
        if m == "kid" and ref is not None and ref.features is None:
            raise BenchError(f"KID needs the reference's feature rows, and '{ref.path}' has only mu/sigma; make the reference "
                             f"with `bench stats SOURCE --out ref.npz --keep-features`, or drop kid from --metrics.")


class FeatureAccumulator:
    """Feeds uint8 NHWC batches through the extractor into streaming statistics (and kept rows)."""

    def __init__(self, extractor: InceptionExtractor, metrics: Iterable[str] = ()):
        self.extractor = extractor
        self.metrics = list(metrics)
        self.stats = FeatureStats(FEATURE_DIM, keep_features="kid" in self.metrics)
        self.logits: list[torch.Tensor] = []

    def update(self, images_nhwc, start: int | None = None) -> None:
        f, lg = self.extractor.features(images_nhwc)
        self.stats.update(f, start)
        if "isc" in self.metrics:
            self.logits.append(lg)

    def result(self, ref: RefStats) -> dict[str, Any]:
        n = self.stats.count
        out: dict[str, Any] = {
            "fid": frechet_distance(self.stats.mean(), self.stats.cov(), ref.mu, ref.sigma),
            "fid_ref": ref.label,
            "fid_num_images": n,
            "fid_extractor": EXTRACTOR_NAME,
        }
        if ref.num_images is not None:
            out["fid_ref_num_images"] = ref.num_images
        if "kid" in self.metrics:
            from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

            f1 = torch.from_numpy(self.stats.all_features())
            f2 = torch.from_numpy(np.asarray(ref.features, np.float32))
            size = min(KID_SUBSET_SIZE, len(f1), len(f2))
            if size < 2:
                raise BenchError(f"KID needs at least 2 images on each side; got {len(f1)} and {len(f2)}.")
            r = kid_features_to_metric(f1, f2, kid_subsets=KID_SUBSETS, kid_subset_size=size, verbose=False)
            out.update(kid_mean=r[KEY_METRIC_KID_MEAN], kid_std=r[KEY_METRIC_KID_STD], kid_subset_size=size)
        if "isc" in self.metrics:
            from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

            splits = min(10, n)
            r = isc_features_to_metric(torch.cat(self.logits), splits=splits)
            out.update(isc_mean=r[KEY_METRIC_ISC_MEAN], isc_std=r[KEY_METRIC_ISC_STD], isc_splits=splits)
        warn = few_images_warning(n, FEATURE_DIM)
        if warn:
            out["warnings"] = [warn]
        return out


def source_features(source, extractor: InceptionExtractor, metrics: Iterable[str] = (), batch_size: int = 64,
                    on_progress: Callable[[int], None] | None = None) -> FeatureAccumulator:
    acc = FeatureAccumulator(extractor, metrics)
    for b in source.batches(batch_size):
        acc.update(b)
        if on_progress:
            on_progress(len(b))
    return acc


class FIDConsumer:
    """`bench sample --fid REF`: Inception features of each generated batch, on the fly."""

    name = "fid"

    def __init__(self, ref: RefStats, extractor: InceptionExtractor, metrics: Iterable[str] = ()):
        self.ref = ref
        self.acc = FeatureAccumulator(extractor, [m for m in metrics if m in INCEPTION_METRICS])

    def update(self, batch) -> None:
        imgs = batch.images
        if imgs.shape[-1] == 1:
            imgs = imgs.expand(*imgs.shape[:-1], 3)
        self.acc.update(imgs, start=batch.start)

    def state(self) -> dict[str, Any]:
        return {"stats": self.acc.stats.state(), "logits": self.acc.logits}

    def merge(self, states: list[dict[str, Any]]) -> None:
        """Combine every process's features (torchrun). Kept rows (KID features, IS logits) are put
        back in the run's sample order, so KID subsets and IS splits are those of one process."""
        stats = [st["stats"] for st in states]
        self.acc.stats = FeatureStats.combine(stats)
        if "isc" in self.acc.metrics:
            order = sorted((s["starts"][j], r, j) for r, s in enumerate(stats) for j in range(len(s["starts"])))
            self.acc.logits = [states[r]["logits"][j] for _, r, j in order]

    def result(self) -> dict[str, Any]:
        return {**self.acc.result(self.ref), "fid_weights": self.acc.extractor.weights_source}
