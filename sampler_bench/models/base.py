"""The sigma-space denoiser protocol and the VP <-> sigma helpers.

Convention (EDM): ``x_sigma = x0 + sigma * n`` with ``n ~ N(0, I)`` and a denoiser
``D(x_sigma, sigma, labels) ~= E[x0 | x_sigma]``. A VP model lives in ``x_vp = alpha * x_sigma``
with ``alpha = 1 / sqrt(1 + sigma^2)`` and ``sigma = sqrt(1 - abar) / sqrt(abar)``; its adapter does
that conversion, so solvers never see alpha.

Time-based methods (tAB-DEIS, DDIM's time-uniform grid) use a model's *native* VP time through a
:class:`VPTimeMap`: ``sigma(t)``, its inverse ``t(sigma)`` and ``dsigma_dt(t)``. The usable range of
``t`` is the model's sigma range mapped through ``t(sigma)``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np
import torch

F64 = torch.float64


def as_f64(v: Any, device: torch.device | str | None = None) -> torch.Tensor:
    return torch.as_tensor(v, dtype=F64, device=device)


def alpha_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """VP signal scale alpha = 1/sqrt(1+sigma^2) (so abar = alpha^2)."""
    return 1.0 / torch.sqrt(1.0 + sigma**2)


def sigma_from_abar(abar: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((1.0 - abar) / abar)


# ---------------------------------------------------------------------------------------------
# Native VP time maps
# ---------------------------------------------------------------------------------------------


class VPTimeMap(ABC):
    """A model's native VP time t <-> sigma. All functions take and return float64 tensors."""

    name: str = "vp"
    discrete: bool = False

    @abstractmethod
    def sigma(self, t: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def t(self, sigma: torch.Tensor) -> torch.Tensor: ...

    def dsigma_dt(self, t: torch.Tensor) -> torch.Tensor:
        """d sigma / d t, by autograd through :meth:`sigma` unless a subclass gives a closed form."""
        with torch.inference_mode(False), torch.enable_grad():  # also inside the sampling loop's inference mode
            t = as_f64(t).detach().clone().requires_grad_(True)
            s = self.sigma(t)
            (g,) = torch.autograd.grad(s.sum(), t)
        return g.detach()

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return alpha_from_sigma(self.sigma(t))

    def describe(self) -> dict:
        return {"name": self.name}


class LinearVP(VPTimeMap):
    """Continuous linear-beta VP (score_sde / DDPM limit): beta(t) = beta_min + t (beta_max - beta_min).

    log abar(t) = -(beta_min t + (beta_max - beta_min) t^2 / 2), sigma(t) = sqrt(1/abar - 1).
    """

    name = "linear"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min, self.beta_d = float(beta_min), float(beta_max) - float(beta_min)

    def _log_inv_abar(self, t):
        return self.beta_min * t + 0.5 * self.beta_d * t**2

    def sigma(self, t):
        t = as_f64(t)
        return torch.sqrt(torch.expm1(self._log_inv_abar(t)))

    def dsigma_dt(self, t):
        t = as_f64(t)
        L = self._log_inv_abar(t)
        return 0.5 * (self.beta_min + self.beta_d * t) * torch.exp(L) / torch.sqrt(torch.expm1(L))

    def t(self, sigma):
        L = torch.log1p(as_f64(sigma) ** 2)
        return (torch.sqrt(self.beta_min**2 + 2.0 * self.beta_d * L) - self.beta_min) / self.beta_d

    def describe(self):
        return {"name": self.name, "beta_min": self.beta_min, "beta_max": self.beta_min + self.beta_d}


class CosineVP(VPTimeMap):
    """Continuous cosine VP (Nichol & Dhariwal): abar(t) = f(t)/f(0), f(t) = cos^2((t+s)/(1+s) pi/2)."""

    name = "cosine"

    def __init__(self, s: float = 0.008):
        self.s = float(s)
        self._f0 = math.cos(self.s / (1 + self.s) * math.pi / 2) ** 2

    def sigma(self, t):
        t = as_f64(t)
        abar = torch.cos((t + self.s) / (1 + self.s) * math.pi / 2) ** 2 / self._f0
        return sigma_from_abar(abar)

    def t(self, sigma):
        abar = 1.0 / (1.0 + as_f64(sigma) ** 2)
        return torch.arccos(torch.sqrt(abar * self._f0)) * 2 * (1 + self.s) / math.pi - self.s

    def describe(self):
        return {"name": self.name, "s": self.s}


class DiscreteVP(VPTimeMap):
    """Discrete-time VP (DDPM / guided-diffusion): abar_n = prod_{i<=n} (1 - beta_i), n = 0..N-1.

    Native time is the integer step index. Between grid points log(sigma) is interpolated linearly
    in t (as k-diffusion does), which makes ``t(sigma)`` its exact inverse.
    """

    discrete = True

    def __init__(self, betas: Sequence[float] | np.ndarray | torch.Tensor, name: str = "discrete"):
        betas = as_f64(np.asarray(betas, dtype=np.float64))
        self.name = name
        self.abar = torch.cumprod(1.0 - betas, 0)
        self.sigmas = sigma_from_abar(self.abar)
        self.log_sigmas = torch.log(self.sigmas)
        self.num_steps = len(betas)

    @classmethod
    def linear(cls, n: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2) -> "DiscreteVP":
        return cls(np.linspace(beta_start, beta_end, n, dtype=np.float64), name="discrete-linear")

    @classmethod
    def cosine(cls, n: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "DiscreteVP":
        f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        betas = [min(1 - f((i + 1) / n) / f(i / n), max_beta) for i in range(n)]
        return cls(np.array(betas), name="discrete-cosine")

    def tables(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_sigmas, sigmas)`` on ``device``, copied there once and kept: a solver step on a GPU
        then makes no host-to-device copy (a blocking one, from pageable memory) of the tables."""
        cache = self.__dict__.setdefault("_device_tables", {})
        key = torch.device(device)
        if key not in cache:
            cache[key] = (self.log_sigmas.to(key), self.sigmas.to(key))
        return cache[key]

    def sigma(self, t):
        t = as_f64(t).clamp(0, self.num_steps - 1)
        lo = t.floor().long().clamp(max=self.num_steps - 2)
        w = t - lo
        ls = self.tables(t.device)[0]
        return torch.exp((1 - w) * ls[lo] + w * ls[lo + 1])

    def t(self, sigma):
        ls = self.tables(as_f64(sigma).device)[0]
        log_s = torch.log(as_f64(sigma)).clamp(ls[0], ls[-1])
        hi = torch.searchsorted(ls, log_s.reshape(-1).contiguous()).clamp(1, self.num_steps - 1)
        lo = hi - 1
        w = (log_s.reshape(-1) - ls[lo]) / (ls[hi] - ls[lo])
        return (lo.to(F64) + w).reshape(log_s.shape)

    def round_sigma(self, sigma):
        """Snap to the nearest grid sigma (nearest in log sigma)."""
        s = as_f64(sigma)
        ls, sigmas = self.tables(s.device)
        idx = (torch.log(s).reshape(-1, 1) - ls.reshape(1, -1)).abs().argmin(dim=1)
        return sigmas[idx].reshape(s.shape)

    def describe(self):
        return {"name": self.name, "num_steps": self.num_steps}


TIME_MAPS = {
    "linear": LinearVP,
    "cosine": CosineVP,
    "discrete-linear": DiscreteVP.linear,
    "discrete-cosine": DiscreteVP.cosine,
}


# ---------------------------------------------------------------------------------------------
# Denoiser protocol
# ---------------------------------------------------------------------------------------------


class Denoiser(ABC):
    """A model as a sigma-space denoiser.

    Subclasses set the attributes below and implement :meth:`denoise`. ``num_classes == 0`` means
    unconditional; ``label_required`` says a conditional model cannot run without labels (an
    analytic mixture can: it then denoises under the marginal).
    """

    name: str = "denoiser"
    image_shape: tuple[int, int, int] = (3, 32, 32)
    num_classes: int = 0
    label_required: bool = False
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    time_map: VPTimeMap | None = None
    device: torch.device = torch.device("cpu")

    @abstractmethod
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x0 estimate. ``x``: (B, C, H, W) float64 in sigma-space; ``sigma``: scalar or (B,) float64;
        ``labels``: (B,) int64 or None. Returns float64 of x's shape."""

    def round_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """Sigma the model can represent (identity for continuous models)."""
        return as_f64(sigma)

    def to(self, device: torch.device | str) -> "Denoiser":
        self.device = torch.device(device)
        return self

    def describe(self) -> dict:
        """JSON-able description for run.json."""
        return {
            "name": self.name,
            "class": type(self).__name__,
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "time_map": self.time_map.describe() if self.time_map else None,
        }


class BoundDenoiser:
    """What a solver sees: ``denoise(x, sigma) -> x0`` with labels (and guidance) bound, counting calls.

    One call is one batched network evaluation, i.e. one NFE. It forwards ``sigma_min``,
    ``sigma_max``, ``round_sigma`` and ``time_map`` from the model.
    """

    def __init__(self, model: Denoiser, labels: torch.Tensor | None = None):
        self.model = model
        self.labels = labels
        self.calls = 0

    @property
    def sigma_min(self) -> float:
        return self.model.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.model.sigma_max

    @property
    def time_map(self) -> VPTimeMap | None:
        return self.model.time_map

    def round_sigma(self, sigma):
        return self.model.round_sigma(sigma)

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        self.calls += 1
        if isinstance(sigma, torch.Tensor):
            sigma = sigma.to(device=x.device, dtype=F64)  # a no-op for the schedule's own entries
        else:  # a host float (DPM-Solver, k-diffusion): filled on the device, no blocking host-to-device copy
            sigma = torch.full((), float(sigma), dtype=F64, device=x.device)
        return self.model.denoise(x, sigma, self.labels).to(F64)
