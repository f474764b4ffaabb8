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
  ``ode_rms_error_max`` is the worst sample's RMS. Reference solutions are cached by (model, seeds,
  labels, sigma_0, latents' SHA-256) and floors by (model, N, label), in process and on disk (``exact_cache.py``), so
  the cells of a sweep and later runs that share them compute them once; the data moments are
  computed once per (model, label) in process.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from sampler_bench.metrics.exact_cache import cached, model_fingerprint
from sampler_bench.metrics.reference_ode import reference_ode_solve
from sampler_bench.metrics.stats import FactorCov, FeatureStats, frechet_distance

F64 = torch.float64
EXACT_METRICS = {"pixel-fd": "Frechet distance to the exact data distribution in pixel space (analytic models)",
                 "ode-error": "RMS error against the exact PF-ODE solution from the same noise (analytic models, deterministic solvers)"}


def _moments_np(model, label):
    """Exact data mean and covariance as float64 numpy; the covariance as a :class:`FactorCov` when
    the model gives one (its Frechet distance then never forms a d x d matrix)."""
    if hasattr(model, "data_cov_factor"):
        mu, fac, iso = model.data_cov_factor(label)
        return mu.detach().cpu().numpy().astype(np.float64), FactorCov(fac.detach().cpu().numpy().astype(np.float64), float(iso))
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


REF_VERSION = "dopri54-subspace-v1"  # part of the reference's cache key: bump when the solve changes
_MOMENTS: "OrderedDict[tuple, tuple]" = OrderedDict()  # (mean, covariance); a dense 3072^2 covariance is 75 MB: keep 2


def data_moments_np(model, label: int | None):
    """``model.data_moments(label)`` as float64 numpy, computed once per (model, label) in process."""
    key = (model_fingerprint(model), label)
    if key not in _MOMENTS:
        _MOMENTS[key] = _moments_np(model, label)
        while len(_MOMENTS) > 2:
            _MOMENTS.popitem(last=False)
    _MOMENTS.move_to_end(key)
    return _MOMENTS[key]


def pixel_fd_floor(model, n: int, label: int | None, moments=None) -> tuple[list[float], str]:
    """The ``floor_draws(n)`` floor values for N exact samples, cached by (model, N, label)."""
    key = {"model": model_fingerprint(model), "n": int(n), "label": label, "draws": floor_draws(n), "seed": 12345}

    def compute():
        mom = moments if moments is not None else data_moments_np(model, label)
        return {"floors": np.array([pixel_fd(model, data_floor_stats(model, n, label, seed=12345 + k), label, mom)
                                    for k in range(floor_draws(n))], dtype=np.float64)}

    arrays, source = cached("floor", key, compute)
    return [float(v) for v in arrays["floors"]], source


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
        self.ref_sources: dict[str, int] = {}  # batches whose reference came from computed / memory / disk

    def _ode_reference(self, batch) -> torch.Tensor:
        dev = self.model.device if hasattr(self.model, "device") else batch.z.device
        x_start = batch.z.to(dev, F64) * self.sigma0
        if hasattr(self.model, "ode_map"):
            return self.model.ode_map(x_start, self.sigma0, 0.0)
        labels = None if batch.labels is None else batch.labels.to(dev)
        # the seeds name the latents only for one noise stream (edm-generate, philox, ...): the key
        # also holds a SHA-256 of the latents themselves
        z_sha = hashlib.sha256(np.ascontiguousarray(batch.z.detach().to(F64).cpu().numpy()).tobytes()).hexdigest()
        key = {"model": model_fingerprint(self.model), "seeds": [int(v) for v in batch.seeds],
               "labels": None if labels is None else [int(v) for v in labels.tolist()],
               "sigma0": repr(self.sigma0), "z_sha256": z_sha, "solver": REF_VERSION}

        def compute():
            x0, evals = reference_ode_solve(self.model, x_start, self.sigma0, labels)
            return {"x0": x0.cpu().numpy(), "evals": np.array(evals)}

        arrays, source = cached("odref", key, compute)
        self.ref_evals += int(arrays["evals"])
        self.ref_sources[source] = self.ref_sources.get(source, 0) + 1
        return torch.from_numpy(arrays["x0"]).to(dev)

    def update(self, batch) -> None:
        x = batch.x.to(F64)
        if self.want_fd:
            self.stats.update(x.reshape(len(x), -1).cpu().numpy(), batch.start)
        if self.want_ode:
            with torch.inference_mode():
                ref = self._ode_reference(batch).to(x.device)
            per = (x - ref).reshape(len(x), -1).pow(2).mean(1)
            self.sq_err += float(per.sum())
            self.count += len(x)
            self.worst = max(self.worst, float(per.max().sqrt()))

    def state(self) -> dict[str, Any]:
        return {"stats": self.stats.state(), "sq_err": self.sq_err, "count": self.count, "worst": self.worst,
                "ref_evals": self.ref_evals}

    def merge(self, states: list[dict[str, Any]]) -> None:
        """Combine every process's state (torchrun; see :class:`sampler_bench.metrics.BatchConsumer`)."""
        self.stats = FeatureStats.combine([st["stats"] for st in states])
        self.sq_err = float(sum(st["sq_err"] for st in states))
        self.count = int(sum(st["count"] for st in states))
        self.worst = max(st["worst"] for st in states)
        self.ref_evals = int(sum(st["ref_evals"] for st in states))

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.want_fd and self.stats.count >= 2:
            moments = data_moments_np(self.model, self.fixed_label)
            out["pixel_fd"] = pixel_fd(self.model, self.stats, self.fixed_label, moments)
            floors, _ = pixel_fd_floor(self.model, self.stats.count, self.fixed_label, moments)
            out["pixel_fd_floor"] = float(np.mean(floors))
            out["pixel_fd_floor_std"] = float(np.std(floors, ddof=1)) if len(floors) > 1 else None
            out["pixel_fd_std"] = out["pixel_fd_floor_std"]  # the run's own noise, as a spread for reports/gates
            out["pixel_fd_target"] = "marginal" if self.fixed_label is None else f"class {self.fixed_label}"
        if self.want_ode and self.count:
            out["ode_rms_error"] = math.sqrt(self.sq_err / self.count)
            out["ode_rms_error_max"] = self.worst
            out["ode_reference"] = ("exact map (Gaussian)" if hasattr(self.model, "ode_map")
                                    else f"Dormand-Prince 5(4) rtol 1e-7 on the mixture subspace + exact component map, {self.ref_evals} evaluations")
        return out


def fixed_label_of(cfg) -> int | None:
    """The class a run's samples all share (an int --class-label), else None (marginal)."""
    if cfg.class_label is None or cfg.class_label == "random":
        return None
    return int(cfg.class_label)


def is_analytic(model) -> bool:
    return hasattr(model, "data_moments") and hasattr(model, "sample_data")

