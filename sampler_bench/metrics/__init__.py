"""Metrics computed while sampling: each is a consumer fed every batch of a run.

A consumer has ``update(batch: SampleBatch)`` and ``result() -> dict``; ``build_consumers`` picks
the ones a run asks for (FID with a reference, exact metrics for analytic models, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch


@dataclass
class SampleBatch:
    seeds: list[int]
    labels: torch.Tensor | None  # (B,) int64 or None
    z: torch.Tensor  # (B,C,H,W) float64 initial N(0, I) latents (x_start = sigmas[0] * z)
    x: torch.Tensor  # (B,C,H,W) float64 final samples in [-1, 1] scale
    images: torch.Tensor  # (B,H,W,C) uint8 on CPU, exactly as saved
    start: int = 0  # position of the batch's first sample in the run (its seed order)


class BatchConsumer(Protocol):
    name: str

    def update(self, batch: SampleBatch) -> None: ...

    def result(self) -> dict[str, Any]: ...

    # Under torchrun (sampler_bench.distributed) each process feeds its own batches; then every
    # process's ``state()`` (picklable, small: sums, not images) is handed, in rank order, to
    # ``merge(states)`` on every process, after which ``result()`` describes the whole run. A
    # consumer without ``merge`` refuses to run under torchrun. Row-keeping metrics order their rows
    # by ``SampleBatch.start`` so the result equals one process's.


METRIC_NAMES = {
    "fid": "Frechet Inception Distance (needs an Inception reference: --fid REF; computed whenever one is given)",
    "kid": "Kernel Inception Distance (with --fid; the reference needs `bench stats --keep-features`)",
    "isc": "Inception Score (with --fid)",
    "prc": "precision / recall / F-score on Inception features (with --fid; the reference needs `bench stats --keep-features`)",
    "fd-dinov2": "Frechet distance in DINOv2 feature space (needs a DINOv2 reference: `bench stats --features dinov2`)",
    "fd-clip": "Frechet distance in CLIP feature space (needs a CLIP reference: `bench stats --features clip`)",
    "pixel-fd": "exact: Frechet distance to the data distribution in pixel space (analytic models; default)",
    "ode-error": "exact: RMS error against the exact PF-ODE solution (analytic models, deterministic solvers; default)",
    "modes": "exact: mode precision (inside the 99.9% ellipsoid of its component) and mode TV (component masses) (analytic models)",
    "none": "no exact metrics",
}


def parse_metrics(text: str | list[str] | None) -> list[str]:
    """``"kid,isc"`` -> ["kid", "isc"], validated against :data:`METRIC_NAMES`."""
    from sampler_bench.errors import BenchError

    if not text:
        return []
    parts = text if isinstance(text, list) else [text]
    names = [m.strip().lower() for p in parts for m in str(p).split(",") if m.strip()]
    for m in names:
        if m not in METRIC_NAMES:
            raise BenchError(f"unknown metric '{m}'; choose from {', '.join(METRIC_NAMES)} (comma-separated).")
    if "none" in names and len(names) > 1 and any(m in ("pixel-fd", "ode-error") for m in names):
        raise BenchError("--metrics none cannot be combined with pixel-fd or ode-error.")
    return list(dict.fromkeys(names))


def parse_feature_weights(items: list[str] | dict | None) -> dict[str, str]:
    """``["dinov2-vit-l-14=PATH", ...]`` -> {space: PATH} (spaces validated; ``inception`` is --inception-weights)."""
    from sampler_bench.errors import BenchError
    from sampler_bench.metrics.extractors import space_of

    if isinstance(items, dict):
        items = [f"{k}={v}" for k, v in items.items()]
    out: dict[str, str] = {}
    for it in items or []:
        name, sep, path = str(it).partition("=")
        if not sep or not name.strip() or not path.strip():
            raise BenchError(f"--feature-weights '{it}' is not SPACE=PATH; e.g. dinov2-vit-l-14=/path/dinov2_vitl14_pretrain.pth.")
        sp = space_of(name)
        if sp.family == "inception":
            raise BenchError("Inception weights are given with --inception-weights PATH, not --feature-weights.")
        out[sp.name] = path.strip()
    return out


def check_metrics(cfg, model, spec, opts) -> list[str]:
    """The checks of :func:`build_consumers` that need no weights or reference file (a sweep's
    dry run makes them for every cell); returns the parsed metric names."""
    from sampler_bench.errors import BenchError
    from sampler_bench.metrics.exact import is_analytic
    from sampler_bench.metrics.fid import FEATURE_METRICS, split_refs

    metrics = parse_metrics(cfg.metrics)
    feature = [m for m in metrics if m in FEATURE_METRICS]
    if feature and not split_refs(cfg.fid_ref):
        raise BenchError(f"--metrics {','.join(feature)} needs reference statistics in its feature space; add --fid REF (see `bench refs`, `bench stats`).")
    if "modes" in metrics and not hasattr(model, "_component_terms"):
        raise BenchError(f"--metrics modes needs an analytic mixture model (gmm, gaussian); model '{cfg.model}' has no exact components.")
    exact = [m for m in metrics if m in ("pixel-fd", "ode-error")]
    if exact and not is_analytic(model):
        raise BenchError(f"--metrics {','.join(exact)} needs an analytic model (gmm, gaussian); model '{cfg.model}' has no exact data distribution.")
    if "ode-error" in exact and spec.is_stochastic(opts):
        raise BenchError(f"--metrics ode-error needs a deterministic solver; '{spec.name}' with these options is stochastic (its samples do not follow the ODE).")
    return metrics


def build_consumers(cfg, model, spec, opts, sigmas) -> list[BatchConsumer]:
    """The metric consumers a run asks for, built (weights and reference resolved) before sampling.

    - ``cfg.fid_ref``: one reference per feature space (comma-separated): FID / FD-DINOv2 / FD-CLIP on
      the fly, each with its spread (``cfg.metric_opts``), + ``kid``/``isc``/``prc`` from ``cfg.metrics``;
    - analytic models: ``pixel-fd`` and (deterministic solvers) ``ode-error`` by default; an explicit
      ``cfg.metrics`` naming either selects exactly those, ``none`` turns them off.
    """
    metrics = check_metrics(cfg, model, spec, opts)
    consumers: list[BatchConsumer] = []
    from sampler_bench.metrics.fid import FEATURE_METRICS, FeatureMetricsConsumer, plan_feature_metrics, split_refs

    refs = split_refs(cfg.fid_ref)
    feature = [m for m in metrics if m in FEATURE_METRICS]
    if refs:
        from sampler_bench.metrics.extractors import get_space_extractor
        from sampler_bench.metrics.uncertainty import SpreadOptions

        spread = SpreadOptions.from_dict(getattr(cfg, "metric_opts", None))
        plans = plan_feature_metrics(refs, feature)
        weights = dict(getattr(cfg, "feature_weights", None) or {})
        built = []
        for p in plans:
            w = cfg.inception_weights if p.ref.space == "inception-v3-compat" else weights.get(p.ref.space)
            built.append((p, get_space_extractor(p.ref.space, w, device=cfg.device, batch_size=max(1, min(cfg.batch, 256)))))
        consumers.append(FeatureMetricsConsumer(built, len(cfg.seeds), spread))
    from sampler_bench.metrics.exact import ExactMetricsConsumer, fixed_label_of, is_analytic

    if "modes" in metrics:
        from sampler_bench.metrics.modes import ModeConsumer

        consumers.append(ModeConsumer(model, fixed_label=fixed_label_of(cfg)))

    exact = [m for m in metrics if m in ("pixel-fd", "ode-error")]
    stochastic = spec.is_stochastic(opts)
    if is_analytic(model) and "none" not in metrics:
        want_fd = "pixel-fd" in exact or not exact
        want_ode = ("ode-error" in exact or not exact) and not stochastic
        consumers.append(ExactMetricsConsumer(model, sigmas, fixed_label=fixed_label_of(cfg), want_fd=want_fd, want_ode=want_ode))
    return consumers
