"""Named official grids: each is the grid of one official implementation, point for point.

Every function returns ``m`` positive sigmas (decreasing); ``schedules.make_schedule`` lays them
out under the final-step policy (``zero``: the first ``n`` points then 0 for ``endpoint=1`` grids,
the first ``n`` of ``n + 1`` points then 0 for ``endpoint=0`` grids; ``none``/``denoise``: ``n + 1``
points). ``tests/test_official_grids.py`` writes each official formula out and compares.

| name                | official formula (N = number of grid points the official code makes)            | source |
|---------------------|---------------------------------------------------------------------------------|--------|
| deis-t              | t_i = (t_max^(1/k) + i/N (t_min^(1/k) - t_max^(1/k)))^k, i = 0..N (N+1 points)   | DEIS ``get_rev_ts(..., ts_phase="t")`` |
| ddim-uniform        | times range(0, T, T // N), reversed                                              | DDIM ``skip_type="uniform"`` |
| ddim-quad           | times int(linspace(0, sqrt(0.8 T), N)^2), reversed                               | DDIM ``skip_type="quad"`` |
| diffusers-leading   | times (arange(N) * (T // N)).round()[::-1] + offset                              | diffusers ``timestep_spacing="leading"`` |
| diffusers-trailing  | times round(arange(T, 0, -T / N)) - 1                                            | diffusers ``timestep_spacing="trailing"`` |
| diffusers-linspace  | times linspace(0, T - 1, N).round()[::-1]                                        | diffusers ``timestep_spacing="linspace"`` |
| ersde-guided        | times linspace(0, T, N + 1, endpoint=False, int)[::-1] (N+1 points, last t = 0)   | ER-SDE-Solver guided-diffusion example |

The integer-time grids need a discrete-time model (``T`` = its number of training steps) and take
sigma at those integer times; ``deis-t`` needs a continuous VP time map (score_sde VP, EDM's VP).
EDM's own grid is ``karras`` (schedules.py).
"""

from __future__ import annotations

import numpy as np

from sampler_bench.errors import BenchError
from sampler_bench.models.base import as_f64
from sampler_bench.schedules import _finish, _frac, _register, at_times, discrete_time_map, discrete_uniform


@_register("deis-t", {"order": (float, 2.0), "t_min": (float, 1e-3), "t_max": (float, 1.0)},
           "official DEIS 't' grid: t^(1/order) uniform on [t_min, t_max] = [1e-3, 1], N+1 points (continuous VP models)",
           needs_time_map=True, endpoint=0,
           source="DEIS th_deis get_rev_ts(sde, N, ts_order, ts_phase='t'), sampling_eps = 1e-3, sampling_T = 1")
def deis_t(m, model, *, order=2.0, t_min=1e-3, t_max=1.0):
    tm = getattr(model, "time_map", None)
    if tm is None or tm.discrete:
        what = "has no native VP time" if tm is None else "is discrete-time (the official code casts that grid to integers)"
        raise BenchError(f"schedule 'deis-t' is the official DEIS grid of continuous VP models and model '{getattr(model, 'name', '?')}' {what}; use time-poly or karras.")
    if not 0 < t_min < t_max:
        raise BenchError(f"schedule 'deis-t': need 0 < t_min < t_max; got t_min={t_min}, t_max={t_max}.")
    k = float(order)
    t = (t_max ** (1 / k) + _frac(m) * (t_min ** (1 / k) - t_max ** (1 / k))) ** k
    return _finish(model, tm.sigma(as_f64(t)))


@_register("ddim-uniform", {}, "official DDIM 'uniform' times range(0, T, T//N) reversed (discrete models)",
           needs_time_map=True, source="DDIM runners/diffusion.py sample_image, skip_type='uniform'")
def ddim_uniform(m, model):
    T = discrete_time_map(model, "ddim-uniform").num_steps
    seq = list(range(0, T, max(T // m, 1)))
    if len(seq) != m:
        raise BenchError(f"schedule 'ddim-uniform': DDIM's range(0, {T}, {T}//{m}) has {len(seq)} times, not {m} (the official "
                         f"run would make {len(seq)} model calls); use a number of grid points that divides {T}, e.g. 10, 20, 50 or 100 steps.")
    return at_times(model, "ddim-uniform", seq[::-1])


@_register("ddim-quad", {}, "official DDIM 'quad' times int(linspace(0, sqrt(0.8 T), N)^2) reversed (discrete models)",
           needs_time_map=True, source="DDIM runners/diffusion.py sample_image, skip_type='quad'")
def ddim_quad(m, model):
    T = discrete_time_map(model, "ddim-quad").num_steps
    seq = [int(s) for s in list(np.linspace(0, np.sqrt(T * 0.8), m) ** 2)]
    if len(set(seq)) != len(seq):
        raise BenchError(f"schedule 'ddim-quad' with {m} points repeats a time ({seq[:4]}...: the official code would take zero-length steps); use fewer steps.")
    return at_times(model, "ddim-quad", seq[::-1])


@_register("diffusers-leading", {"offset": (int, 0)}, "diffusers timestep_spacing='leading': (arange(N) * (T//N))[::-1] + offset",
           needs_time_map=True, source="diffusers DDIMScheduler.set_timesteps, timestep_spacing='leading', steps_offset")
def diffusers_leading(m, model, *, offset=0):
    T = discrete_time_map(model, "diffusers-leading").num_steps
    ratio = T // m
    ts = (np.arange(0, m) * ratio).round()[::-1].copy().astype(np.int64) + int(offset)
    return at_times(model, "diffusers-leading", ts)


@_register("diffusers-trailing", {}, "diffusers timestep_spacing='trailing': round(arange(T, 0, -T/N)) - 1",
           needs_time_map=True, source="diffusers DDIMScheduler.set_timesteps, timestep_spacing='trailing'")
def diffusers_trailing(m, model):
    T = discrete_time_map(model, "diffusers-trailing").num_steps
    ts = np.round(np.arange(T, 0, -T / m)).astype(np.int64) - 1
    if len(ts) != m:
        raise BenchError(f"schedule 'diffusers-trailing' gives {len(ts)} times for {m} points; use another number of steps.")
    return at_times(model, "diffusers-trailing", ts)


@_register("diffusers-linspace", {}, "diffusers timestep_spacing='linspace': linspace(0, T-1, N).round()[::-1]",
           needs_time_map=True, source="diffusers DDIMScheduler.set_timesteps, timestep_spacing='linspace'")
def diffusers_linspace(m, model):
    T = discrete_time_map(model, "diffusers-linspace").num_steps
    ts = np.linspace(0, T - 1, m).round()[::-1].copy().astype(np.int64)
    return at_times(model, "diffusers-linspace", ts)


@_register("ersde-guided", {}, "official ER-SDE guided-diffusion grid linspace(0, T, N+1, endpoint=False, int)[::-1] (= discrete-uniform)",
           needs_time_map=True, endpoint=0,
           source="ER-SDE-Solver examples/guided-diffusion er_sde_diffusion_classifier.py: linspace(0, 1000, N+1, endpoint=False, int32)[::-1]")
def ersde_guided(m, model):
    return discrete_uniform(m, model)

