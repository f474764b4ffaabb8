"""Exact metrics for analytic models (no Inception): pixel-space Frechet distance and ODE error.

- ``pixel_fd``: Frechet distance between the samples' mean/covariance (float64, pixels in [-1, 1]
  scale, before quantisation) and the exact data moments ``model.data_moments(label)`` (of the
  class for a fixed ``--class-label``, of the marginal otherwise: random labels are uniform, like
  the mixture's classes). Even exact samples give a positive value at finite N, so
  ``pixel_fd_floor`` is the same statistic for N exact data samples, averaged over several
  fixed-seed draws (``pixel_fd_floor_std`` is its spread over those draws, i.e. the noise of a
  single run's ``pixel_fd``): a solver is converged when ``pixel_fd`` is within about that spread of
  ``pixel_fd_floor``.
- ``ode_rms_error`` (deterministic solvers only): RMS over pixels and samples of ``x - x_ref``
  where ``x_ref`` is the exact probability-flow ODE solution from the same start ``sigma_0 * z``:
  the closed-form map for the Gaussian (``ode_map``), and :func:`reference_ode_solve` for mixtures;
  ``ode_rms_error_max`` is the worst sample's RMS. Reference solutions are cached in-process by
  (model, seeds, labels, sigma_0), so the cells of a sweep that share latents solve them once.
"""

from __future__ import annotations

import math
import json
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from sampler_bench.metrics.stats import FeatureStats, frechet_distance

F64 = torch.float64
EXACT_METRICS = {"pixel-fd": "Frechet distance to the exact data distribution in pixel space (analytic models)",
                 "ode-error": "RMS error against the exact PF-ODE solution from the same noise (analytic models, deterministic solvers)"}

# Dormand-Prince 5(4) tableau (Dormand & Prince 1980; Hairer, Norsett & Wanner, Table II.5.2)
_C = [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0]
_A = [[],
      [1 / 5],
      [3 / 40, 9 / 40],
      [44 / 45, -56 / 15, 32 / 9],
      [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
      [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
      [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]]
_E = [71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40]  # b5 - b4


def _mixture_eval(model, x, sigma: float, labels):
    """D(x, sigma) of an analytic mixture and, per sample, its dominant component and 1 - its weight."""
    b = x.shape[0]
    sig = torch.tensor(sigma, dtype=F64, device=x.device)
    logp, dk = model._component_terms(x, sig)
    logw = logp + model.log_pi
    if labels is not None:
        logw = logw.masked_fill(~model._mask(model._check_labels(labels, b), b), -math.inf)
    w = torch.softmax(logw, dim=1)
    d = (w.unsqueeze(-1) * dk).sum(1).reshape(x.shape)
    wmax, kmax = w.max(1)
    return d, kmax, (1.0 - wmax)


def _component_ode_map(model, k: torch.Tensor, x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    """Exact PF-ODE map of Gaussian component k (per sample): y(s_b) = y(s_a) sqrt((lam+s_b^2)/(lam+s_a^2))."""
    b = x.shape[0]
    mu, U = model.mu[k], model.U[k]  # (B,d), (B,d,r)
    lam = model.s[k] + model.iso_var  # (B,r)
    y = x.reshape(b, -1).to(F64) - mu
    proj = torch.einsum("bd,bdr->br", y, U)
    sa, sb = sigma_from**2, sigma_to**2
    f_iso = math.sqrt((model.iso_var + sb) / (model.iso_var + sa))
    f_lr = torch.sqrt((lam + sb) / (lam + sa))
    out = mu + f_iso * y + torch.einsum("br,bdr->bd", (f_lr - f_iso) * proj, U)
    return out.reshape(x.shape)


def reference_ode_solve(model, x: torch.Tensor, sigma_start: float, labels=None, *, rtol: float = 1e-6,
                        atol: float = 1e-7, switch_tol: float = 1e-13, max_evals: int = 20000) -> tuple[torch.Tensor, int]:
    """Tightly solved PF-ODE of an analytic mixture from ``sigma_start`` to 0 from the same start ``x``.

    Adaptive Dormand-Prince 5(4) in ``t = log sigma`` on ``dx/dt = x - D(x, e^t)`` (EDM eq. 4,
    ``dx/dsigma = (x - D)/sigma``, times sigma), with a per-step local error test (max over the batch
    of the RMS of ``err / (atol + rtol |x|)``), until every sample's posterior is saturated (one
    component holds weight > 1 - ``switch_tol``); from there the ODE is that component's linear ODE to
    within ``switch_tol`` and is finished with its exact closed-form map to sigma = 0. Measured on the
    Gaussian (exact to 1e-16, the map alone) and on the default mixture against a 1000x tighter
    tolerance: RMS error about 7e-7 at the default rtol 1e-6, about 150 evaluations per batch (tested
    below 5e-6). Returns (x0, denoiser evaluations).
    """
    x = x.to(F64)
    t = math.log(sigma_start)

    def f(xx, tt):
        d, k, other = _mixture_eval(model, xx, math.exp(tt), labels)
        return xx - d, k, other

    h = -0.1
    k1, kdom, other = f(x, t)
    evals = 1
    b = x.shape[0]
    t_floor = math.log(1e-6)
    while float(other.max()) > switch_tol:
        if t <= t_floor + 1e-12:
            break  # not saturated even at sigma=1e-6 (components overlap): finish with the map anyway
        h = max(h, t_floor - t)
        ks = [k1]
        for i in range(1, 7):
            xi = x + h * sum(a * kk for a, kk in zip(_A[i], ks) if a != 0.0)
            kk, kd, ot = f(xi, t + _C[i] * h)
            ks.append(kk)
        evals += 6
        x_new = x + h * sum(a * kk for a, kk in zip(_A[6], ks) if a != 0.0)  # = the stage-7 point (FSAL)
        err = h * sum(e * kk for e, kk in zip(_E, ks) if e != 0.0)
        scale = atol + rtol * torch.maximum(x.abs(), x_new.abs())
        ratio = float((err / scale).reshape(b, -1).pow(2).mean(1).sqrt().max())
        if ratio <= 1.0:
            t, x, k1, kdom, other = t + h, x_new, ks[6], kd, ot
        h *= min(5.0, max(0.2, 0.9 * (ratio if ratio > 0 else 1e-10) ** -0.2))
        if evals > max_evals:
            raise RuntimeError(f"reference ODE solve did not converge in {max_evals} evaluations")
    return _component_ode_map(model, kdom, x, math.exp(t), 0.0), evals


def _moments_np(model, label):
    mu, cov = model.data_moments(label)
    return mu.detach().cpu().numpy().astype(np.float64), cov.detach().cpu().numpy().astype(np.float64)


def pixel_fd(model, x_rows: FeatureStats, label: int | None, moments=None) -> float:
    mu, cov = moments if moments is not None else _moments_np(model, label)
    return frechet_distance(x_rows.mean(), x_rows.cov(), mu, cov)


FLOOR_DRAWS = 8  # exact-sample draws averaged into pixel_fd_floor (fewer for large N, see floor_draws)


def floor_draws(n: int) -> int:
    """Draws for the floor: 8 for small runs, down to 1 at N >= 16384 (the spread shrinks with N)."""
    return max(1, min(FLOOR_DRAWS, 16384 // max(n, 1)))


def data_floor_stats(model, n: int, label: int | None, seed: int = 12345) -> FeatureStats:
    """Statistics of ``n`` exact data samples (chunks seeded from ``seed``), same label policy."""
    st = FeatureStats(int(np.prod(model.image_shape)))
    dev = getattr(model, "device", torch.device("cpu"))
    for ci, start in enumerate(range(0, n, 256)):
        k = min(256, n - start)
        g = torch.Generator(dev).manual_seed(seed * 1_000_003 + ci)
        labels = None if label is None else torch.full((k,), int(label), dtype=torch.long, device=dev)
        x, _ = model.sample_data(k, generator=g, labels=labels)
        st.update(x.reshape(k, -1).cpu().numpy())
    return st


_REF_CACHE: "OrderedDict[tuple, tuple[torch.Tensor, int]]" = OrderedDict()
_REF_CACHE_SIZE = 256  # batches; a 64 x 3x32x32 float64 batch is 1.5 MB


class ExactMetricsConsumer:
    """Pixel-space Frechet distance and ODE error for an analytic model, fed every sample batch."""

    name = "exact"

    def __init__(self, model, sigmas, *, fixed_label: int | None, want_fd: bool, want_ode: bool):
        self.model, self.fixed_label = model, fixed_label
        self.sigma0 = float(sigmas[0])
        self.want_fd, self.want_ode = want_fd, want_ode
        self.stats = FeatureStats(int(np.prod(model.image_shape)))
        self.sq_err = 0.0
        self.count = 0
        self.worst = 0.0
        self.ref_evals = 0

    def _ode_reference(self, batch) -> torch.Tensor:
        dev = self.model.device if hasattr(self.model, "device") else batch.z.device
        x_start = batch.z.to(dev, F64) * self.sigma0
        if hasattr(self.model, "ode_map"):
            return self.model.ode_map(x_start, self.sigma0, 0.0)
        labels = None if batch.labels is None else batch.labels.to(dev)
        key = (json.dumps(self.model.describe(), sort_keys=True, default=str), tuple(batch.seeds),
               None if labels is None else tuple(labels.tolist()), self.sigma0)
        if key in _REF_CACHE:
            _REF_CACHE.move_to_end(key)
            x0, evals = _REF_CACHE[key]
        else:
            x0, evals = reference_ode_solve(self.model, x_start, self.sigma0, labels)
            _REF_CACHE[key] = (x0.cpu(), evals)
            while len(_REF_CACHE) > _REF_CACHE_SIZE:
                _REF_CACHE.popitem(last=False)
        self.ref_evals += evals
        return x0.to(dev)

    def update(self, batch) -> None:
        x = batch.x.to(F64)
        if self.want_fd:
            self.stats.update(x.reshape(len(x), -1).cpu().numpy())
        if self.want_ode:
            with torch.inference_mode():
                ref = self._ode_reference(batch).to(x.device)
            per = (x - ref).reshape(len(x), -1).pow(2).mean(1)
            self.sq_err += float(per.sum())
            self.count += len(x)
            self.worst = max(self.worst, float(per.max().sqrt()))

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.want_fd and self.stats.count >= 2:
            moments = _moments_np(self.model, self.fixed_label)
            out["pixel_fd"] = pixel_fd(self.model, self.stats, self.fixed_label, moments)
            n = self.stats.count
            floors = [pixel_fd(self.model, data_floor_stats(self.model, n, self.fixed_label, seed=12345 + k),
                               self.fixed_label, moments) for k in range(floor_draws(n))]
            out["pixel_fd_floor"] = float(np.mean(floors))
            out["pixel_fd_floor_std"] = float(np.std(floors, ddof=1)) if len(floors) > 1 else None
            out["pixel_fd_std"] = out["pixel_fd_floor_std"]  # the run's own noise, as a spread for reports/gates
            out["pixel_fd_target"] = "marginal" if self.fixed_label is None else f"class {self.fixed_label}"
        if self.want_ode and self.count:
            out["ode_rms_error"] = math.sqrt(self.sq_err / self.count)
            out["ode_rms_error_max"] = self.worst
            out["ode_reference"] = ("exact map (Gaussian)" if hasattr(self.model, "ode_map")
                                    else f"Dormand-Prince 5(4) rtol 1e-6 + exact component map, {self.ref_evals} evaluations")
        return out


def fixed_label_of(cfg) -> int | None:
    """The class a run's samples all share (an int --class-label), else None (marginal)."""
    if cfg.class_label is None or cfg.class_label == "random":
        return None
    return int(cfg.class_label)


def is_analytic(model) -> bool:
    return hasattr(model, "data_moments") and hasattr(model, "sample_data")

