"""Exact precision/recall-style diagnostics for the analytic mixtures (``--metrics modes``).

Feature-space precision/recall (Kynkaanniemi et al. 2019) estimates the data manifold from k-NN balls
of real samples. For the analytic models the data distribution is known, so both sides can be exact:

- ``mode_precision`` (fidelity): the fraction of samples that lie inside the 99.9% probability
  ellipsoid of their most likely mixture component, ``(x - mu_k)^T Sigma_k^-1 (x - mu_k) <=
  chi2_d.ppf(0.999)``. For an exact sample of component k that squared Mahalanobis distance is
  exactly chi-square with d degrees of freedom, so exact data scores 0.999 (``mode_precision_target``)
  up to the (negligible, well separated components) chance of a wrong assignment; a sampler that
  leaves the data manifold (e.g. too little denoising at the last step, d x error^2 / iso_var grows
  quickly) scores lower. ``mode_precision_se`` is the binomial standard error.
- ``mode_tv`` (coverage / diversity, recall-style): total variation distance between the fraction of
  samples assigned to each component and the true component weights (of the class for a fixed
  ``--class-label``, else all components, uniform). It catches dropped or over-weighted modes.
  Even exact samples give a positive value at finite N: ``mode_tv_floor`` is its expectation for
  N exact multinomial draws (Monte Carlo, 200 draws, fixed seed); ``mode_tv_std`` is the std of
  those draws, i.e. the sampling noise of ``mode_tv`` at this N.

Both use the float64 samples before quantisation (as ``pixel_fd``) and cost one evaluation of the
component log-densities per sample: cheap next to sampling.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from sampler_bench.metrics.uncertainty import binomial_se

PRECISION_LEVEL = 0.999
FLOOR_DRAWS, FLOOR_SEED = 200, 4321


def _maha_and_logw(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared Mahalanobis distance to every component (B, K) and the components' log weights + log-densities."""
    logp = model._component_terms(x, torch.tensor(0.0, dtype=torch.float64))[0]
    lam = model.s + model.iso_var  # (K, r)
    logdet = (model.d - model.rank) * math.log(model.iso_var) + torch.log(lam).sum(-1)  # (K,)
    maha = -2.0 * logp - logdet.unsqueeze(0) - model.d * math.log(2 * math.pi)
    return maha, logp + model.log_pi


class ModeConsumer:
    """``mode_precision`` and ``mode_tv`` of an analytic mixture's samples (see the module docstring)."""

    name = "modes"

    def __init__(self, model, *, fixed_label: int | None):
        from scipy.stats import chi2

        self.model = model
        k = model.n_components
        self.allowed = torch.ones(k, dtype=torch.bool)
        if fixed_label is not None:
            self.allowed = (model.comp_class.cpu() == int(fixed_label))
        self.weights = self.allowed.double() / self.allowed.sum()
        self.threshold = float(chi2.ppf(PRECISION_LEVEL, model.d))
        self.counts = torch.zeros(k, dtype=torch.float64)
        self.inside = 0
        self.n = 0

    def update(self, batch) -> None:
        x = batch.x.to(torch.float64).to(self.model.mu.device)
        with torch.inference_mode():
            maha, logw = _maha_and_logw(self.model, x.reshape(len(x), -1))
        logw = logw.cpu().masked_fill(~self.allowed.unsqueeze(0), -math.inf)
        kmap = logw.argmax(1)
        self.counts += torch.bincount(kmap, minlength=len(self.counts)).double()
        self.inside += int((maha.cpu().gather(1, kmap.unsqueeze(1)).squeeze(1) <= self.threshold).sum())
        self.n += len(x)

    def state(self) -> dict:
        return {"counts": self.counts, "inside": self.inside, "n": self.n}

    def merge(self, states: list[dict]) -> None:
        """Combine every process's counts (torchrun)."""
        self.counts = torch.stack([s["counts"] for s in states]).sum(0)
        self.inside = int(sum(s["inside"] for s in states))
        self.n = int(sum(s["n"] for s in states))

    def result(self) -> dict[str, Any]:
        if not self.n:
            return {}
        w = self.weights.numpy()
        tv = 0.5 * float(np.abs(self.counts.numpy() / self.n - w).sum())
        rng = np.random.default_rng(FLOOR_SEED)
        draws = rng.multinomial(self.n, w, size=FLOOR_DRAWS) / self.n
        floors = 0.5 * np.abs(draws - w).sum(1)
        p = self.inside / self.n
        return {"mode_precision": p, "mode_precision_se": binomial_se(p, self.n), "mode_precision_target": PRECISION_LEVEL,
                "mode_tv": tv, "mode_tv_std": float(floors.std(ddof=1)), "mode_tv_floor": float(floors.mean()),
                "mode_components": int(self.allowed.sum())}
