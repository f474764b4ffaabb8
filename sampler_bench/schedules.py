"""Sigma step schedules. Each builds a float64 tensor of ``n + 1`` sigmas for ``n`` steps.

Under the final-step policy ``zero`` (default) the schedule is ``sigmas[0] > ... > sigmas[n-1] > sigmas[n] = 0``:
the last step goes to sigma = 0. Under ``none`` / ``denoise`` it ends at the grid's own last
positive point (see ``make_schedule`` and solvers/__init__.py). Names and parameters are given as
``NAME`` or ``NAME:key=value,key=value`` (e.g. ``karras:rho=5``, ``time-poly:order=2``).

| name            | grid                                                                  | source |
|-----------------|-----------------------------------------------------------------------|--------|
| karras          | (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho, rho = 7    | EDM eq. 5 / generate.py |
| time-uniform    | t uniform from t(smax) to t(smin) in the model's native VP time       | DDIM |
| time-quadratic  | sqrt(t) uniform (t quadratic in the index)                            | DDIM (CIFAR) |
| time-poly       | t^(1/order) uniform, order = 2 by default                              | DEIS "t" grid |
| logsnr          | log-SNR = -2 log sigma uniform                                        | DPM-Solver |
| discrete-uniform| guided-diffusion / ER-SDE integer grid: linspace(0, N, n+1, endpoint=False)[::-1] on the integer grid | ER-SDE official |

The official named grids (``deis-t``, ``ddim-uniform``, ``ddim-quad``, ``diffusers-leading``,
``diffusers-trailing``, ``diffusers-linspace``, ``ersde-guided``) are in ``official_grids.py``.

Time-based grids need the model's native time map; with none (a pure EDM network) they are refused.
The positive entries are passed through the model's ``round_sigma`` (as EDM does).

``karras``, ``logsnr`` and the ``time-*`` grids also take ``t_min``/``t_max`` (the range in the model's
native time, instead of ``sigma_min``/``sigma_max``) and ``endpoint`` (1 = default: the n-th point is
sigma_min; 0 = the official DEIS ``get_rev_ts`` layout: n + 1 points from t_max to t_min of which
the last, never evaluated there, is replaced by sigma = 0 under ``zero``, i.e. numpy's
``endpoint=False``). Under ``none``/``denoise`` both layouts are the same n + 1 points ending at
the range's end. The DEIS code's own grid is ``deis-t`` (= ``time-poly:order=2,t_min=1e-3,t_max=1,endpoint=0``).
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
    fn: Callable[..., torch.Tensor]  # fn(m, model, **params) -> m positive sigmas, decreasing
    params: dict[str, tuple[type, Any]]  # name -> (type, default)
    summary: str
    needs_time_map: bool = False
    endpoint: int = 1  # default layout: 1 = the grid's end is the last sigma > 0 (EDM), 0 = n + 1 points, last replaced by 0
    source: str = ""  # where the official formula comes from (official grids)


SCHEDULES: dict[str, ScheduleSpec] = {}


def _register(name, params, summary, needs_time_map=False, endpoint=1, source=""):
    def deco(fn):
        SCHEDULES[name] = ScheduleSpec(name, fn, params, summary, needs_time_map, endpoint, source)
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


def _frac(m):
    """i/(m-1) for the m points of a grid from its start (0) to its end (1)."""
    return torch.arange(m, dtype=F64) / max(m - 1, 1)


_GRID = {"endpoint": (int, 1), "t_min": (float, None), "t_max": (float, None)}


def _finish(model, sig: torch.Tensor) -> torch.Tensor:
    return model.round_sigma(as_f64(sig))


@_register("karras", {"rho": (float, 7.0), **_GRID}, "EDM rho-schedule (Karras et al. eq. 5), rho=7",
           source="EDM generate.py edm_sampler: (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, then 0")
def karras(m, model, *, rho=7.0, sigma_min=None, sigma_max=None, t_min=None, t_max=None):
    smin, smax = _range(model, sigma_min, sigma_max, t_min, t_max)
    sig = (smax ** (1 / rho) + _frac(m) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return _finish(model, sig)


@_register("logsnr", dict(_GRID), "uniform in log-SNR (= uniform in log sigma)")
def logsnr(m, model, *, sigma_min=None, sigma_max=None, t_min=None, t_max=None):
    smin, smax = _range(model, sigma_min, sigma_max, t_min, t_max)
    if m > 1:
        sig = torch.exp(torch.linspace(np.log(smax), np.log(smin), m, dtype=F64))
    else:
        sig = torch.tensor([smax], dtype=F64)
    return _finish(model, sig)


def _time_grid(m, model, sigma_min, sigma_max, power, t_min=None, t_max=None):
    tm = model.time_map
    if tm is None:
        raise BenchError(f"this schedule is defined in the model's native VP time, and model '{getattr(model, 'name', '?')}' has no time map; use --schedule karras or logsnr.")
    smin, smax = _range(model, sigma_min, sigma_max, t_min, t_max)
    t_max, t_min = tm.t(as_f64(smax)), tm.t(as_f64(smin))
    t = (t_max ** (1 / power) + _frac(m) * (t_min ** (1 / power) - t_max ** (1 / power))) ** power
    return _finish(model, tm.sigma(t))


@_register("time-uniform", dict(_GRID), "uniform in native VP time t (DDIM)", needs_time_map=True)
def time_uniform(m, model, *, sigma_min=None, sigma_max=None, **grid):
    return _time_grid(m, model, sigma_min, sigma_max, 1.0, **grid)


@_register("time-quadratic", dict(_GRID), "quadratic in native VP time t (DDIM's CIFAR grid)", needs_time_map=True)
def time_quadratic(m, model, *, sigma_min=None, sigma_max=None, **grid):
    return _time_grid(m, model, sigma_min, sigma_max, 2.0, **grid)


@_register("time-poly", {"order": (float, 2.0), **_GRID}, "polynomial in native VP time, t^(1/order) uniform (DEIS)", needs_time_map=True)
def time_poly(m, model, *, order=2.0, sigma_min=None, sigma_max=None, **grid):
    return _time_grid(m, model, sigma_min, sigma_max, float(order), **grid)


def discrete_time_map(model, name: str):
    """The model's discrete VP time map (DDPM / guided-diffusion integer grid), or a BenchError."""
    tm = getattr(model, "time_map", None)
    if tm is None or not tm.discrete:
        other = "time-uniform" if tm is not None else "karras or logsnr"
        raise BenchError(f"schedule '{name}' needs a discrete-time model (guided-diffusion, DDPM); use --schedule {other}.")
    return tm


def at_times(model, name: str, times) -> torch.Tensor:
    """Sigmas of the model's discrete grid at integer ``times`` (listed from high to low)."""
    tm = discrete_time_map(model, name)
    ts = torch.as_tensor(np.array(times, dtype=np.int64))  # a copy: no negative strides
    if len(ts) and (int(ts.min()) < 0 or int(ts.max()) >= tm.num_steps):
        raise BenchError(f"schedule '{name}' gives times outside the model's 0..{tm.num_steps - 1}; use fewer steps or another schedule.")
    return tm.sigmas[ts].clone()


@_register("discrete-uniform", {}, "guided-diffusion/ER-SDE integer grid linspace(0,N,n+1)[::-1] (discrete models)",
           needs_time_map=True, endpoint=0,
           source="ER-SDE-Solver examples/guided-diffusion: times = linspace(0, 1000, N+1, endpoint=False, int32)[::-1]")
def discrete_uniform(m, model, *, sigma_min=None, sigma_max=None):
    tm = discrete_time_map(model, "discrete-uniform")
    return at_times(model, "discrete-uniform", np.linspace(0, tm.num_steps, m, endpoint=False).astype(np.int64)[::-1])


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
    for k, v in params.items():
        if isinstance(v, float) and not np.isfinite(v):
            raise BenchError(f"schedule '{name}': {k}={v} is not a finite number; give a finite value.")
        if k in _POSITIVE and v <= 0:
            raise BenchError(f"schedule '{name}': {k}={v:g} is not valid; {k} must be > 0 (e.g. {name}:{k}={_POSITIVE[k]}).")
    if params.get("endpoint", 1) not in (0, 1):
        raise BenchError(f"schedule parameter endpoint={params['endpoint']} is not valid; use 1 (default) or 0 (the DEIS grid layout).")
    return name, params


_POSITIVE = {"rho": 7, "order": 2}  # exponents: 0 divides by zero, < 0 reverses the grid


def make_schedule(text: str, n_steps: int, model, final_step: str = "zero", allow_ties: bool = False) -> torch.Tensor:
    """The float64 sigmas of ``n_steps`` steps of schedule ``text`` under a final-step policy.

    ``zero``: ``n_steps + 1`` entries ending in 0 (with ``endpoint=1`` the grid's end is the last
    positive sigma; with ``endpoint=0`` the grid has ``n_steps + 1`` points of which the last is
    replaced by 0). ``none``/``denoise``: ``n_steps + 1`` positive entries, the grid's own end last
    (both layouts are then the same grid).

    ``allow_ties``: a repeated sigma (two grid points that ``round_sigma`` snaps to the same discrete
    sigma, e.g. Karras with 61+ steps on iDDPM) is kept, as EDM's sampler keeps it (a zero-length
    Heun step); solvers that cannot take a zero-length step leave it False.
    """
    from sampler_bench.solvers import check_final_step

    check_final_step(final_step)
    name, params = parse_schedule(text)
    if n_steps < 1:
        raise BenchError(f"a schedule needs at least one step; got {n_steps}.")
    spec = SCHEDULES[name]
    endpoint = params.pop("endpoint", spec.endpoint)
    if endpoint not in (0, 1):
        raise BenchError(f"schedule parameter endpoint={endpoint} is not valid; use 1 (default) or 0 (the DEIS grid layout).")
    def points(m):
        pts = as_f64(spec.fn(m, model, **params))
        if len(pts) == m + 1 and float(pts[-1]) == 0.0:  # a schedule written for the older contract (points, then 0)
            pts = pts[:-1]
        if len(pts) != m:
            raise RuntimeError(f"schedule {name} returned {len(pts)} points for {m}")
        return pts

    if final_step == "zero":
        pts = points(n_steps) if endpoint else points(n_steps + 1)[:-1]
        sig = torch.cat([pts, torch.zeros(1, dtype=F64)])
        pos = sig[:-1]
    else:
        sig = points(n_steps + 1)
        pos = sig
    step = sig[:-1] - sig[1:]
    if not bool((pos > 0).all()) or not bool(((step > 0) | (allow_ties & (step == 0))).all()):
        fix = "use fewer steps, another schedule" + ("" if allow_ties else ", or the heun / edm solvers (which take a repeated sigma as EDM does)")
        raise BenchError(f"schedule '{text}' with {n_steps} steps is not strictly decreasing after round_sigma; {fix}.")
    return sig


from sampler_bench import official_grids  # noqa: E402,F401  (registers the official named grids)
