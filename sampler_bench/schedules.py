"""Sigma step schedules. Each returns a float64 tensor ``sigmas[0] > ... > sigmas[n-1] > sigmas[n] = 0``.

A schedule of ``n`` steps has ``n + 1`` entries; the last step goes to sigma = 0. Names and
parameters are given as ``NAME`` or ``NAME:key=value,key=value`` (e.g. ``karras:rho=5``,
``time-poly:order=2``).

| name            | grid                                                                  | source |
|-----------------|-----------------------------------------------------------------------|--------|
| karras          | (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho, rho = 7    | EDM eq. 5 |
| time-uniform    | t uniform from t(smax) to t(smin) in the model's native VP time       | DDIM |
| time-quadratic  | sqrt(t) uniform (t quadratic in the index)                            | DDIM (CIFAR) |
| time-poly       | t^(1/order) uniform, order = 2 by default                              | DEIS "t" grid |
| logsnr          | log-SNR = -2 log sigma uniform                                        | DPM-Solver |
| discrete-uniform| guided-diffusion / ER-SDE grid: linspace(0, N, n+1, endpoint=False)[::-1] on the integer grid | ER-SDE official |

Time-based grids need the model's native time map; with none (a pure EDM network) they are refused.
The first n entries are passed through the model's ``round_sigma`` (as EDM does).

``karras``, ``logsnr`` and the ``time-*`` grids also take ``t_min``/``t_max`` (the range in the model's
native time, instead of ``sigma_min``/``sigma_max``) and ``endpoint`` (1 = default: the n-th point is
sigma_min; 0 = the official DEIS ``get_rev_ts`` layout: n + 1 points from t_max to t_min of which
the last, never evaluated there, is replaced by sigma = 0, i.e. numpy's ``endpoint=False``). The
DEIS code's own grid is e.g. ``time-poly:order=2,t_min=1e-3,t_max=1,endpoint=0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from sampler_bench.errors import BenchError
from sampler_bench.models.base import F64, as_f64
from sampler_bench.params import parse_params


@dataclass(frozen=True)
class ScheduleSpec:
    name: str
    fn: Callable[..., torch.Tensor]
    params: dict[str, tuple[type, Any]]  # name -> (type, default)
    summary: str
    needs_time_map: bool = False


SCHEDULES: dict[str, ScheduleSpec] = {}


def _register(name, params, summary, needs_time_map=False):
    def deco(fn):
        SCHEDULES[name] = ScheduleSpec(name, fn, params, summary, needs_time_map)
        return fn

    return deco


def _range(model, sigma_min, sigma_max, t_min=None, t_max=None):
    if t_min is not None or t_max is not None:
        tm = getattr(model, "time_map", None)
        if tm is None:
            raise BenchError(f"t_min/t_max are native VP times, and model '{getattr(model, 'name', '?')}' has no time map; use sigma_min/sigma_max.")
        if t_min is not None:
            sigma_min = float(tm.sigma(as_f64(t_min)))
        if t_max is not None:
            sigma_max = float(tm.sigma(as_f64(t_max)))
    smin = float(model.sigma_min if sigma_min is None else sigma_min)
    smax = float(model.sigma_max if sigma_max is None else sigma_max)
    if not 0 < smin < smax:
        raise BenchError(f"schedule range sigma_min={smin}, sigma_max={smax} is invalid; need 0 < sigma_min < sigma_max.")
    return smin, smax


def _frac(n, endpoint):
    """i/(n-1) for i < n (the n-th point is the range's end), or i/n with ``endpoint=0`` (DEIS layout)."""
    if endpoint not in (0, 1):
        raise BenchError(f"schedule parameter endpoint={endpoint} is not valid; use 1 (default) or 0 (the DEIS grid layout).")
    return torch.arange(n, dtype=F64) / (max(n - 1, 1) if endpoint else n)


_GRID = {"endpoint": (int, 1), "t_min": (float, None), "t_max": (float, None)}


def _finish(model, sig: torch.Tensor) -> torch.Tensor:
    sig = model.round_sigma(as_f64(sig))
    return torch.cat([sig, torch.zeros(1, dtype=F64)])


@_register("karras", {"rho": (float, 7.0), **_GRID}, "EDM rho-schedule (Karras et al. eq. 5), rho=7")
def karras(n, model, *, rho=7.0, sigma_min=None, sigma_max=None, t_min=None, t_max=None, endpoint=1):
    smin, smax = _range(model, sigma_min, sigma_max, t_min, t_max)
    frac = _frac(n, endpoint)
    sig = (smax ** (1 / rho) + frac * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return _finish(model, sig)


@_register("logsnr", dict(_GRID), "uniform in log-SNR (= uniform in log sigma)")
def logsnr(n, model, *, sigma_min=None, sigma_max=None, t_min=None, t_max=None, endpoint=1):
    smin, smax = _range(model, sigma_min, sigma_max, t_min, t_max)
    if endpoint == 1:
        sig = torch.exp(torch.linspace(np.log(smax), np.log(smin), n, dtype=F64))
    else:
        sig = torch.exp(np.log(smax) + _frac(n, endpoint) * (np.log(smin) - np.log(smax)))
    return _finish(model, sig)


def _time_grid(n, model, sigma_min, sigma_max, power, t_min=None, t_max=None, endpoint=1):
    tm = model.time_map
    if tm is None:
        raise BenchError(f"this schedule is defined in the model's native VP time, and model '{getattr(model, 'name', '?')}' has no time map; use --schedule karras or logsnr.")
    smin, smax = _range(model, sigma_min, sigma_max, t_min, t_max)
    t_max, t_min = tm.t(as_f64(smax)), tm.t(as_f64(smin))
    frac = _frac(n, endpoint)
    t = (t_max ** (1 / power) + frac * (t_min ** (1 / power) - t_max ** (1 / power))) ** power
    return _finish(model, tm.sigma(t))


@_register("time-uniform", dict(_GRID), "uniform in native VP time t (DDIM)", needs_time_map=True)
def time_uniform(n, model, *, sigma_min=None, sigma_max=None, **grid):
    return _time_grid(n, model, sigma_min, sigma_max, 1.0, **grid)


@_register("time-quadratic", dict(_GRID), "quadratic in native VP time t (DDIM's CIFAR grid)", needs_time_map=True)
def time_quadratic(n, model, *, sigma_min=None, sigma_max=None, **grid):
    return _time_grid(n, model, sigma_min, sigma_max, 2.0, **grid)


@_register("time-poly", {"order": (float, 2.0), **_GRID}, "polynomial in native VP time, t^(1/order) uniform (DEIS)", needs_time_map=True)
def time_poly(n, model, *, order=2.0, sigma_min=None, sigma_max=None, **grid):
    return _time_grid(n, model, sigma_min, sigma_max, float(order), **grid)


@_register("discrete-uniform", {}, "guided-diffusion/ER-SDE integer grid linspace(0,N,n+1)[::-1] (discrete models)", needs_time_map=True)
def discrete_uniform(n, model, *, sigma_min=None, sigma_max=None):
    tm = model.time_map
    if tm is None or not tm.discrete:
        other = "time-uniform" if tm is not None else "karras or logsnr"
        raise BenchError(f"schedule 'discrete-uniform' needs a discrete-time model (guided-diffusion, DDPM); use --schedule {other}.")
    ts = np.linspace(0, tm.num_steps, n + 1, endpoint=False).astype(np.int64)[::-1][:-1].copy()
    return torch.cat([tm.sigmas[torch.from_numpy(ts)], torch.zeros(1, dtype=F64)])


def parse_schedule(text: str) -> tuple[str, dict[str, Any]]:
    """``"karras:rho=5"`` -> ``("karras", {"rho": 5.0})``, validated."""
    name, _, rest = text.partition(":")
    name = name.strip()
    if name not in SCHEDULES:
        raise BenchError(f"unknown schedule '{name}'; use one of: {', '.join(SCHEDULES)}.")
    spec = SCHEDULES[name]
    allowed = {k: typ for k, (typ, _default) in dict(spec.params, sigma_min=(float, None), sigma_max=(float, None)).items()}
    params = parse_params(rest, allowed, f"schedule '{name}'",
                          lambda k, v: f"schedule '{name}': {k}={v!r} is not a number; write e.g. --schedule {name}:{k}=NUMBER.")
    return name, params


def make_schedule(text: str, n_steps: int, model, allow_ties: bool = False) -> torch.Tensor:
    """``allow_ties``: a repeated sigma (two grid points that ``round_sigma`` snaps to the same
    discrete sigma, e.g. Karras with 61+ steps on iDDPM) is kept, as EDM's sampler keeps it (a
    zero-length Heun step); solvers that cannot take a zero-length step leave it False."""
    name, params = parse_schedule(text)
    if n_steps < 1:
        raise BenchError(f"a schedule needs at least one step; got {n_steps}.")
    sig = SCHEDULES[name].fn(n_steps, model, **params)
    step = sig[:-1] - sig[1:]
    if not bool((sig[:-1] > 0).all()) or not bool(((step > 0) | (allow_ties & (step == 0))).all()):
        fix = "use fewer steps, another schedule" + ("" if allow_ties else ", or the heun / edm solvers (which take a repeated sigma as EDM does)")
        raise BenchError(f"schedule '{text}' with {n_steps} steps is not strictly decreasing after round_sigma; {fix}.")
    return sig
