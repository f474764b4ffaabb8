"""Per-sample noise streams.

- ``edm-generate`` (default): EDM ``generate.py``'s ``StackedRandomGenerator``: one
  ``torch.Generator`` per sample, seeded with its seed; the latent (float32), the class label and
  every solver noise are drawn from it in order. One kernel launch per sample per draw.
- ``philox``: a counter-based stream. Element ``e`` of draw ``j`` of the sample with seed ``s`` is a
  pure function of ``(s, j, e)``: Philox4x32-10 (Salmon et al., *Parallel random numbers: as easy as
  1, 2, 3*, SC 2011; the generator inside cuRAND and torch's CUDA RNG) with key ``s`` (two 32-bit
  halves) and counter ``(e // 2, 0, j, 0)``, whose four 32-bit words make two 53-bit uniforms and,
  by Box-Muller, the normals of elements ``2i`` and ``2i + 1`` in float64. A whole batch is one
  vectorised computation (a fixed number of kernels, whatever the batch size), and sample i is
  bit-identical whatever the batch size or the other seeds. Draw 0 is the latent (float64), draw 1
  the class label (``floor(u K)``), draws 2, 3, ... the solver's noise calls in order.
  The integer part is exact on every device; the float64 ``log``/``sqrt``/``cos`` of Box-Muller may
  differ in the last bit between CPU and CUDA libraries, so CPU and CUDA streams agree to ~1e-16,
  each bit-identical run to run.
"""

from __future__ import annotations

import math

import torch

#: noise streams a run can name (``RunConfig.noise``): name -> what it is. ``edm-generate``: one
#: torch.Generator per sample seeded with its seed, latent (float32), label, then each solver draw
#: (float64, shaped like one sample) in order, as EDM's generate.py StackedRandomGenerator.
NOISE_STREAMS: dict[str, str] = {
    "edm-generate": "per-sample torch.Generator (EDM generate.py StackedRandomGenerator): latent, label, then every solver draw",
    "philox": "counter-based Philox4x32-10 per (seed, draw, element), one batched computation per draw (fast on GPU)",
}

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK = 0xFFFFFFFF


def philox4x32(c0, c1, c2, c3, k0, k1, rounds: int = 10):
    """Philox4x32-``rounds`` on int64 tensors holding uint32 values (broadcast); returns 4 words."""
    for r in range(rounds):
        if r:
            k0 = (k0 + _W0) & _MASK
            k1 = (k1 + _W1) & _MASK
        p0 = c0 * _M0  # < 2^64: int64 wraps, the low 64 bits are exact
        p1 = c2 * _M1
        hi0, lo0 = (p0 >> 32) & _MASK, p0 & _MASK
        hi1, lo1 = (p1 >> 32) & _MASK, p1 & _MASK
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def _uniform53(a, b):
    """Two uint32 words -> a float64 uniform in the open interval (0, 1) with 53 random bits."""
    return ((a >> 5).to(torch.float64) * 67108864.0 + (b >> 6).to(torch.float64) + 0.5) * (1.0 / 9007199254740992.0)


def _words(seeds: torch.Tensor, draw: int, pairs: int, device):
    s = seeds.to(device=device, dtype=torch.int64).reshape(-1, 1)
    k0, k1 = s & _MASK, (s >> 32) & _MASK
    c0 = torch.arange(pairs, device=device, dtype=torch.int64).reshape(1, -1)
    zero = torch.zeros((), device=device, dtype=torch.int64)
    return philox4x32(c0, zero, torch.full((), int(draw) & _MASK, device=device, dtype=torch.int64), zero, k0, k1)


def philox_normal(seeds: torch.Tensor, draw: int, shape, device) -> torch.Tensor:
    """float64 N(0, I) of shape ``(len(seeds), *shape)``: draw ``draw`` of each sample's stream."""
    n = math.prod(shape)
    pairs = (n + 1) // 2
    x0, x1, x2, x3 = _words(seeds, draw, pairs, device)
    u1, u2 = _uniform53(x0, x1), _uniform53(x2, x3)
    r = torch.sqrt(-2.0 * torch.log(u1))
    theta = (2.0 * math.pi) * u2
    out = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], -1).reshape(len(seeds), 2 * pairs)
    return out[:, :n].reshape(len(seeds), *shape)


def philox_randint(seeds: torch.Tensor, draw: int, high: int, device) -> torch.Tensor:
    """int64 in ``[0, high)`` per sample: ``floor(u * high)`` from draw ``draw``'s first uniform."""
    x0, x1, _, _ = _words(seeds, draw, 1, device)
    return torch.clamp((_uniform53(x0, x1)[:, 0] * high).floor().to(torch.int64), max=high - 1)


class PhiloxNoise:
    """``noise(sigma_from, sigma_to)`` for solvers: draws 2, 3, ... of each sample's Philox stream."""

    FIRST_SOLVER_DRAW = 2

    def __init__(self, seeds, shape, device):
        self.seeds = torch.as_tensor(list(seeds), dtype=torch.int64).to(device)
        self.shape, self.device = tuple(shape), device
        self.draw = self.FIRST_SOLVER_DRAW

    def __call__(self, *_sigmas) -> torch.Tensor:
        out = philox_normal(self.seeds, self.draw, self.shape, self.device)
        self.draw += 1
        return out
