"""Device-to-host copies of finished batches, overlapped with the next batch.

On CUDA the sampling loop (sampling.py) launches batch k+1's solver before it handles batch k:
kernel launches return at once, so the GPU computes batch k+1 while the host writes batch k's
images, PNGs and metric inputs. What batch k needs on the host -- its uint8 images, its labels
and one "all finite" flag -- is copied on a side stream into pinned memory, behind an event that
:meth:`HostCopy.wait` waits on. Nothing else in the loop reads the device (no host sync per
step; tests/test_host_sync.py), so the only waits are that event and the metric consumers'
own reads.

On CPU there is nothing to overlap: the copies are plain tensors and the loop handles each batch
as soon as it is computed (:func:`pipeline_depth` 0), so progress is never a batch behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sampler_bench.images import quantize


def pipeline_depth(device: torch.device) -> int:
    """How many launched batches the loop keeps in flight before handling the oldest."""
    return 1 if device.type == "cuda" else 0


_STREAMS: dict[Any, Any] = {}


def _copy_stream(device: torch.device):
    key = device.index if device.index is not None else torch.cuda.current_device()
    if key not in _STREAMS:
        _STREAMS[key] = torch.cuda.Stream(device=device)
    return _STREAMS[key]


@dataclass
class HostCopy:
    """Host copies of one finished batch, valid after :meth:`wait`."""

    images: torch.Tensor  # (B,H,W,C) uint8 on the CPU
    labels: torch.Tensor | None  # (B,) int64 on the CPU
    finite: torch.Tensor  # 0-d bool on the CPU: every value of the float64 state is finite
    event: Any = None  # torch.cuda.Event recorded after the copies (None on the CPU)

    def wait(self) -> "HostCopy":
        if self.event is not None:
            self.event.synchronize()
            self.event = None
        return self


def start_host_copy(x: torch.Tensor, labels: torch.Tensor | None) -> HostCopy:
    """Quantise ``x`` (EDM's rule, images.py) and start copying what the host needs of it."""
    images = quantize(x)
    finite = torch.isfinite(x).all()
    if x.device.type != "cuda":
        return HostCopy(images.cpu(), None if labels is None else labels.cpu(), finite.cpu())
    stream = _copy_stream(x.device)
    stream.wait_stream(torch.cuda.current_stream(x.device))  # the copies start once the batch is computed
    srcs = [images, finite] + ([] if labels is None else [labels])
    with torch.cuda.stream(stream):
        dsts = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in srcs]
        for d, s in zip(dsts, srcs):
            d.copy_(s, non_blocking=True)
            s.record_stream(stream)  # the allocator must not hand the source out again before the copy ran
        event = torch.cuda.Event()
        event.record(stream)
    return HostCopy(dsts[0], None if labels is None else dsts[2], dsts[1], event)
