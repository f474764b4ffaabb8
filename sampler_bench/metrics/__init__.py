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
    "kid": "Kernel Inception Distance (with --fid; the reference needs `bench stats --keep-features`)",
    "isc": "Inception Score (with --fid)",
    "pixel-fd": "exact: Frechet distance to the data distribution in pixel space (analytic models; default)",
    "ode-error": "exact: RMS error against the exact PF-ODE solution (analytic models, deterministic solvers; default)",
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


def check_metrics(cfg, model, spec, opts) -> list[str]:
    """The checks of :func:`build_consumers` that need no weights or reference file (a sweep's
    dry run makes them for every cell); returns the parsed metric names."""
    from sampler_bench.errors import BenchError
    from sampler_bench.metrics.exact import is_analytic

    metrics = parse_metrics(cfg.metrics)
    inception = [m for m in metrics if m in ("kid", "isc")]
    if inception and not cfg.fid_ref:
        raise BenchError(f"--metrics {','.join(inception)} needs Inception features; add --fid REF.")
    exact = [m for m in metrics if m in ("pixel-fd", "ode-error")]
    if exact and not is_analytic(model):
        raise BenchError(f"--metrics {','.join(exact)} needs an analytic model (gmm, gaussian); model '{cfg.model}' has no exact data distribution.")
    if "ode-error" in exact and spec.is_stochastic(opts):
        raise BenchError(f"--metrics ode-error needs a deterministic solver; '{spec.name}' with these options is stochastic (its samples do not follow the ODE).")
    return metrics


def build_consumers(cfg, model, spec, opts, sigmas) -> list[BatchConsumer]:
    """The metric consumers a run asks for, built (weights and reference resolved) before sampling.

    - ``cfg.fid_ref``: FID on the fly (+ ``kid``/``isc`` from ``cfg.metrics``);
    - analytic models: ``pixel-fd`` and (deterministic solvers) ``ode-error`` by default; an explicit
      ``cfg.metrics`` naming either selects exactly those, ``none`` turns them off.
    """
    metrics = check_metrics(cfg, model, spec, opts)
    consumers: list[BatchConsumer] = []
    inception = [m for m in metrics if m in ("kid", "isc")]
    if cfg.fid_ref:
        from sampler_bench.metrics.fid import FIDConsumer, check_inception_metrics
        from sampler_bench.metrics.inception import get_extractor
        from sampler_bench.metrics.refs import load_ref

        ref = load_ref(cfg.fid_ref, want_features="kid" in metrics)
        check_inception_metrics(inception, ref)
        ext = get_extractor(cfg.inception_weights, device=cfg.device, batch_size=max(1, min(cfg.batch, 256)))
        consumers.append(FIDConsumer(ref, ext, inception))
    from sampler_bench.metrics.exact import ExactMetricsConsumer, fixed_label_of, is_analytic

    exact = [m for m in metrics if m in ("pixel-fd", "ode-error")]
    stochastic = spec.is_stochastic(opts)
    if is_analytic(model) and "none" not in metrics:
        want_fd = "pixel-fd" in exact or not exact
        want_ode = ("ode-error" in exact or not exact) and not stochastic
        consumers.append(ExactMetricsConsumer(model, sigmas, fixed_label=fixed_label_of(cfg), want_fd=want_fd, want_ode=want_ode))
    return consumers
