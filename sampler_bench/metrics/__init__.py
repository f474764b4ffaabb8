"""Metrics computed while sampling: each is a consumer fed every batch of a run.

A consumer has ``update(batch: SampleBatch)`` and ``result() -> dict``; ``build_consumers`` picks
the ones a run asks for (FID with a reference, exact metrics for analytic models, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass
class SampleBatch:
    seeds: list[int]
    labels: torch.Tensor | None  # (B,) int64 or None
    z: torch.Tensor  # (B,C,H,W) float64 initial N(0, I) latents (x_start = sigmas[0] * z)
    x: torch.Tensor  # (B,C,H,W) float64 final samples in [-1, 1] scale
    images: torch.Tensor  # (B,H,W,C) uint8 on CPU, exactly as saved


class BatchConsumer(Protocol):
    name: str

    def update(self, batch: SampleBatch) -> None: ...

    def result(self) -> dict[str, Any]: ...


def build_consumers(cfg, model, spec, opts, sigmas) -> list[BatchConsumer]:
    """The metric consumers a run asks for (none yet at this layer)."""
    return []
