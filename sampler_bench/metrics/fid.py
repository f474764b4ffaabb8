"""Feature metrics of uint8 images against reference statistics, in one streamed pass per run.

- ``fid``: Frechet distance of Inception pool3 features (Heusel et al. 2017, eq. 6), TF-FID
  compatible through torch-fidelity's ``inception-v3-compat``; float64 streamed sums (:mod:`.stats`).
- ``fd_dinov2`` / ``fd_clip``: the same distance in a DINOv2 (Stein et al. 2023; EDM2, Karras et al.
  2024) or CLIP (Kynkaanniemi et al. 2023) feature space (:mod:`.extractors`).
- ``kid``: Kernel Inception Distance (Binkowski et al. 2018), torch-fidelity's ``kid_features_to_metric``
  (100 subsets of up to 1000, cubic polynomial kernel); ``kid_std`` is its std over the subsets.
- ``isc``: Inception Score (Salimans et al. 2016), torch-fidelity's ``isc_features_to_metric``
  (10 splits); ``isc_std`` is the std over the splits.
- ``precision``/``recall``/``f_score``: improved precision and recall (Kynkaanniemi et al. 2019),
  torch-fidelity's ``prc_features_to_metric`` (k = 3 nearest neighbours) on Inception pool3 features.

Every distance carries a spread (:mod:`.uncertainty`). Feature rows are kept (float16, 4 KiB per
Inception image) only when a metric needs them all (KID, precision/recall, the bootstrap); IS keeps
the 1008 logits per image (float32).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch

from sampler_bench.errors import BenchError
from sampler_bench.metrics.refs import RefStats
from sampler_bench.metrics.stats import few_images_warning
from sampler_bench.metrics.uncertainty import SpreadOptions, SubsetStats, binomial_se, f_score_se, fd_with_spread

# metric name (--metrics) -> feature-space family it is computed in
FEATURE_METRICS = {"fid": "inception", "kid": "inception", "isc": "inception", "prc": "inception",
                   "fd-dinov2": "dinov2", "fd-clip": "clip"}
NEEDS_REF_FEATURES = ("kid", "prc")
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # torch-fidelity's defaults
PRC_NEIGHBORHOOD = 3  # torch-fidelity's default (Kynkaanniemi et al. 2019)
INCEPTION_METRICS = {"kid": "Kernel Inception Distance", "isc": "Inception Score", "prc": "precision / recall"}


def fd_key(space: str) -> str:
    """The record key of the Frechet distance in ``space``: ``fid`` (Inception), ``fd_dinov2``, ``fd_clip``."""
    fam = space.split("-")[0]
    return "fid" if fam == "inception" else f"fd_{fam}"


def family_of(space: str) -> str:
    return space.split("-")[0]


def check_inception_metrics(metrics: Iterable[str], ref: RefStats | None) -> None:
    for m in metrics:
        if m in NEEDS_REF_FEATURES and ref is not None and ref.features is None:
            what = "KID" if m == "kid" else "precision/recall"
            raise BenchError(f"{what} needs the reference's feature rows, and '{ref.path}' has only mu/sigma; make the reference "
                             f"with `bench stats SOURCE --out ref.npz --keep-features`, or drop {m} from --metrics.")


class FeatureAccumulator:
    """Feeds uint8 NHWC batches through one extractor into subset statistics (and kept rows / logits)."""

    def __init__(self, extractor, metrics: Iterable[str] = (), *, total: int | None = None,
                 spread: SpreadOptions | None = None, keep_float32: bool = False):
        self.extractor = extractor
        self.metrics = list(metrics)
        self.spread = spread or SpreadOptions(subsets=1)
        self.dim = int(getattr(extractor, "dim", 2048))
        self.space = getattr(getattr(extractor, "space", None), "name", None) or "inception-v3-compat"
        self.subsets = SubsetStats(self.dim, total or 0, self.spread.subsets if total else 1)
        self.keep = any(m in NEEDS_REF_FEATURES for m in self.metrics) or self.spread.bootstrap > 0 or keep_float32
        self.keep_dtype = np.float32 if keep_float32 else np.float16
        self.rows: list[tuple[int, np.ndarray]] = []  # (run position of the first row, rows)
        self.logit_rows: list[tuple[int, torch.Tensor]] = []

    def update(self, images_nhwc, start: int | None = None) -> None:
        """Add a batch; ``start`` is its first image's position in the run (seed order; default: next)."""
        start = self.subsets.seen if start is None else int(start)
        f, lg = self.extractor.features(images_nhwc)
        f = f.numpy() if isinstance(f, torch.Tensor) else np.asarray(f)
        self.subsets.update(f, start)
        if self.keep:
            self.rows.append((start, f.astype(self.keep_dtype)))
        if "isc" in self.metrics:
            self.logit_rows.append((start, lg))

    @property
    def logits(self) -> list[torch.Tensor]:
        return [lg for _, lg in sorted(self.logit_rows, key=lambda t: t[0])]

    def all_features(self) -> np.ndarray:
        """Every kept feature row as float32, in run order (what KID / precision-recall / the bootstrap see)."""
        if not self.keep:
            raise RuntimeError("features were not kept")
        rows = [r for _, r in sorted(self.rows, key=lambda t: t[0])]
        return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, self.dim), np.float32)

    @property
    def stats(self):
        """Statistics of every row seen (:class:`~sampler_bench.metrics.stats.FeatureStats`)."""
        return self.subsets.pooled

    def state(self) -> dict:
        """Picklable sums and kept rows (torchrun: every process's state is merged in :meth:`merge`)."""
        return {"subsets": self.subsets.state(), "rows": self.rows, "logits": self.logit_rows}

    def merge(self, states: list[dict]) -> None:
        self.subsets.merge([s["subsets"] for s in states])
        self.rows = sorted((r for s in states for r in s["rows"]), key=lambda t: t[0])
        self.logit_rows = sorted((r for s in states for r in s["logits"]), key=lambda t: t[0])

    def result(self, ref: RefStats) -> dict[str, Any]:
        n = self.stats.count
        key = fd_key(self.space)
        feats = self.all_features() if self.keep else None
        out: dict[str, Any] = fd_with_spread(key, self.subsets, ref.mu, ref.sigma, self.spread, feats)
        out.update({f"{key}_ref": ref.label, f"{key}_num_images": n, f"{key}_extractor": self.space})
        if ref.num_images is not None:
            out[f"{key}_ref_num_images"] = ref.num_images
        if "kid" in self.metrics or "prc" in self.metrics:
            f1 = torch.from_numpy(feats)
            f2 = torch.from_numpy(np.asarray(ref.features, np.float32))
            if min(len(f1), len(f2)) < 2:
                raise BenchError(f"KID and precision/recall need at least 2 images on each side; got {len(f1)} and {len(f2)}.")
            if "kid" in self.metrics:
                out.update(kid_metrics(f1, f2))
            if "prc" in self.metrics:
                out.update(prc_metrics(f1, f2))
        if "isc" in self.metrics:
            out.update(isc_metrics(torch.cat(self.logits)))
        warn = few_images_warning(n, self.dim, "FID" if key == "fid" else key)
        if warn:
            out["warnings"] = [warn]
        return out


def kid_metrics(f1: torch.Tensor, f2: torch.Tensor) -> dict[str, Any]:
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    size = min(KID_SUBSET_SIZE, len(f1), len(f2))
    r = kid_features_to_metric(f1, f2, kid_subsets=KID_SUBSETS, kid_subset_size=size, verbose=False)
    return {"kid": float(r[KEY_METRIC_KID_MEAN]), "kid_std": float(r[KEY_METRIC_KID_STD]), "kid_subset_size": size,
            "kid_subsets": KID_SUBSETS}


def isc_metrics(logits: torch.Tensor) -> dict[str, Any]:
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    splits = min(10, len(logits))
    r = isc_features_to_metric(logits, splits=splits)
    return {"isc": float(r[KEY_METRIC_ISC_MEAN]), "isc_std": float(r[KEY_METRIC_ISC_STD]), "isc_splits": splits}


def prc_metrics(f1: torch.Tensor, f2: torch.Tensor) -> dict[str, Any]:
    """Precision/recall/F of generated ``f1`` against real ``f2`` (torch-fidelity), binomial standard errors."""
    from torch_fidelity.metric_prc import KEY_METRIC_F_SCORE, KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    k = min(PRC_NEIGHBORHOOD, len(f1) - 1, len(f2) - 1)
    r = prc_features_to_metric(f1, f2, prc_neighborhood=k, prc_batch_size=10000, save_cpu_ram=True, verbose=False)
    p, rc = float(r[KEY_METRIC_PRECISION]), float(r[KEY_METRIC_RECALL])
    sp, sr = binomial_se(p, len(f1)), binomial_se(rc, len(f2))
    return {"precision": p, "precision_se": sp, "recall": rc, "recall_se": sr, "f_score": float(r[KEY_METRIC_F_SCORE]),
            "f_score_se": f_score_se(p, rc, sp, sr), "prc_neighborhood": k}


@dataclass
class SpacePlan:
    """One feature space of a run: its reference and the metrics computed in it."""

    ref: RefStats
    metrics: list[str] = field(default_factory=list)


def plan_feature_metrics(refs: list[str], metrics: Iterable[str], *, allow_download: bool = True) -> list[SpacePlan]:
    """References (any feature spaces) + requested metrics -> one :class:`SpacePlan` per space, validated.

    The Frechet distance of every reference's space is always computed; ``fid``/``fd-dinov2``/``fd-clip``
    in ``metrics`` only insist that such a reference is given. A metric whose space has no reference,
    or two references of one space, is an error.
    """
    from sampler_bench.metrics.extractors import ALIASES
    from sampler_bench.metrics.refs import load_ref, ref_space

    wanted = [m for m in metrics if m in FEATURE_METRICS]
    spaces: dict[str, str] = {}  # family -> ref
    held: dict[str, str] = {}
    for r in refs:
        sp = ref_space(r, allow_download=allow_download)
        fam = family_of(sp)
        if fam in spaces:
            raise BenchError(f"two references in the {fam} feature space ('{spaces[fam]}' and '{r}'); give one per feature space.")
        spaces[fam], held[fam] = r, sp
    plans = []
    for m in wanted:
        fam = FEATURE_METRICS[m]
        if fam not in spaces:
            have = "; given: " + ", ".join(f"'{r}' ({held[f]})" for f, r in spaces.items()) if spaces else ""
            raise BenchError(f"--metrics {m} needs reference statistics in the {ALIASES.get(fam, fam)} feature space{have}; "
                             f"add one to --fid / --ref (comma-separated, one per feature space), made with "
                             f"`bench stats SOURCE --features {fam} --out ref.npz`.")
    for fam, r in spaces.items():
        ms = [m for m in wanted if FEATURE_METRICS[m] == fam and m not in ("fid", "fd-dinov2", "fd-clip")]
        ref = load_ref(r, space=held[fam], allow_download=allow_download, want_features=any(m in NEEDS_REF_FEATURES for m in ms),
                       needed_by=fd_key(held[fam]))
        check_inception_metrics(ms, ref)
        plans.append(SpacePlan(ref, ms))
    return plans


def split_refs(text: str | None) -> list[str]:
    """``"a.npz,cifar10-32x32"`` -> ["a.npz", "cifar10-32x32"] (one reference per feature space)."""
    return [p.strip() for p in str(text or "").split(",") if p.strip()]


def source_features(source, extractor, metrics: Iterable[str] = (), batch_size: int = 64,
                    on_progress: Callable[[int], None] | None = None, *, spread: SpreadOptions | None = None,
                    keep_float32: bool = False) -> FeatureAccumulator:
    acc = FeatureAccumulator(extractor, metrics, total=source.count, spread=spread, keep_float32=keep_float32)
    for b in source.batches(batch_size):
        acc.update(b)
        if on_progress:
            on_progress(len(b))
    return acc


class FeatureMetricsConsumer:
    """`bench sample --fid REF[,REF2] --metrics ...`: every feature space fed each generated batch, on the fly."""

    name = "features"

    def __init__(self, plans: list[tuple[SpacePlan, Any]], total: int, spread: SpreadOptions):
        self.items = [(p, FeatureAccumulator(ext, p.metrics, total=total, spread=spread)) for p, ext in plans]

    def update(self, batch) -> None:
        imgs = batch.images
        if imgs.shape[-1] == 1:
            imgs = imgs.expand(*imgs.shape[:-1], 3)
        for _, acc in self.items:
            acc.update(imgs, getattr(batch, "start", None))

    def state(self) -> list[dict]:
        return [acc.state() for _, acc in self.items]

    def merge(self, states: list[list[dict]]) -> None:
        """Combine every process's features (torchrun, see :class:`sampler_bench.metrics.BatchConsumer`);
        kept rows are put back in run order, so KID subsets and IS splits are those of one process."""
        for i, (_, acc) in enumerate(self.items):
            acc.merge([s[i] for s in states])

    def result(self) -> dict[str, Any]:
        return combined_result(self.items)


def combined_result(items) -> dict[str, Any]:
    """The metrics of every (plan, accumulator) pair in one record: each space's keys, the weights
    each extractor used, and all their warnings together under ``warnings``."""
    out: dict[str, Any] = {}
    warnings: list[str] = []
    for p, acc in items:
        r = acc.result(p.ref)
        warnings += r.pop("warnings", [])
        out.update(r)
        out[f"{fd_key(acc.space)}_weights"] = acc.extractor.weights_source
    if warnings:
        out["warnings"] = warnings
    return out
