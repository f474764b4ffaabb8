"""Protocol presets: one name selects an official protocol (solver, options, grid, final step, noise).

``--preset NAME`` (``bench sample``) or ``preset: NAME`` (a sweep's solver entry) expands to the
fields below; anything the user gives explicitly (``--solver``, ``--opt``, ``--schedule``,
``--final-step``, ``--noise``) overrides the preset's value; with another solver the preset keeps
the options that solver has (e.g. ``quad`` for every DEIS multistep solver). The run record (``run.json``,
``resolved.preset``) names the preset, what it expanded to and what was overridden.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from sampler_bench.errors import BenchError, did_you_mean


@dataclass(frozen=True)
class Preset:
    name: str
    solver: str
    schedule: str
    final_step: str
    noise: str
    source: str  # the official code / paper setting it reproduces
    summary: str
    opts: Mapping[str, Any] = field(default_factory=dict)

    def opts_for(self, solver: str) -> dict[str, Any]:
        """The preset's options that ``solver`` has (all of them for the preset's own solver)."""
        from sampler_bench.solvers import REGISTRY

        spec = REGISTRY.get(solver)
        return {k: v for k, v in self.opts.items() if solver == self.solver or (spec is not None and k in spec.options)}

    def expansion(self) -> dict[str, Any]:
        return {"solver": self.solver, "opts": dict(self.opts), "schedule": self.schedule,
                "final_step": self.final_step, "noise": self.noise}


PRESETS: dict[str, Preset] = {}


def _add(p: Preset) -> None:
    PRESETS[p.name] = p


_add(Preset(
    "edm-generate", "edm", "karras", "zero", "edm-generate",
    "NVlabs/edm generate.py edm_sampler with its defaults (num_steps=18 -> NFE 35, sigma 0.002..80, rho=7, "
    "S_churn=0, S_min=0, S_max=inf, S_noise=1; per-seed StackedRandomGenerator)",
    "EDM generate.py: Alg. 2 with generate.py's defaults (deterministic Heun unless S_churn is set), noise drawn every step",
    {"S_churn": 0.0, "S_min": 0.0, "S_max": float("inf"), "S_noise": 1.0}))
_add(Preset(
    "edm-imagenet", "edm", "karras", "zero", "edm-generate",
    "NVlabs/edm README, ImageNet-64: generate.py --steps=256 --S_churn=40 --S_min=0.05 --S_max=50 --S_noise=1.003 (NFE 511)",
    "EDM stochastic sampler with the paper's ImageNet-64 setting (FID 1.36 at NFE 511)",
    {"S_churn": 40.0, "S_min": 0.05, "S_max": 50.0, "S_noise": 1.003}))
_add(Preset(
    "deis-official", "deis", "deis-t:order=2,t_min=0.001,t_max=1", "none", "edm-generate",
    "qsh-zh/deis v1.0 README / CIFAR demo: method='t_ab', ab_order=3, ts_phase='t', ts_order=2, "
    "sampling_eps=1e-3, sampling_T=1, 10000-point Riemann coefficients; stops at t = 1e-3 without a final denoise",
    "official DEIS protocol: tAB-DEIS order 3 on the 't' grid (order 2) over t in [1e-3, 1], no final step to 0",
    {"quad": "riemann", "quad_points": 10000}))
_add(Preset(
    "ersde-official", "ersde", "karras", "zero", "edm-generate",
    "QinpengCui/ER-SDE-Solver examples/edm (run.sh --steps=20): ER-SDE-Solver-3, func_type 7, 100 Riemann points, "
    "EDM karras grid rho=7 0.002..80, first-order last step to sigma = 0. The official noise uses the global RNG (not per seed)",
    "official ER-SDE EDM protocol: order 3, phi = ER SDE 5, n_int 100, karras grid, last step to sigma = 0",
    {"phi": "ersde5", "n_int": 100}))
_add(Preset(
    "ersde-guided", "ersde", "ersde-guided", "none", "edm-generate",
    "QinpengCui/ER-SDE-Solver examples/guided-diffusion: times linspace(0, 1000, N+1, endpoint=False, int)[::-1], "
    "a full-order step to t = 0 and no final denoise. The official noise uses the global RNG (not per seed)",
    "official ER-SDE guided-diffusion protocol: order 3, phi = ER SDE 5, integer grid ending at t = 0, state returned there",
    {"phi": "ersde5", "n_int": 100}))
_add(Preset(
    "ddim-official", "ddim", "ddim-uniform", "zero", "edm-generate",
    "ermongroup/ddim runners/diffusion.py: skip_type='uniform' (range(0, T, T//N)), eta=0, last step to abar = 1",
    "official DDIM protocol: eta 0 on DDIM's uniform integer grid, last step from t = 0 to sigma = 0",
    {"eta": 0.0}))
_add(Preset(
    "ddim-quad", "ddim", "ddim-quad", "zero", "edm-generate",
    "ermongroup/ddim runners/diffusion.py: skip_type='quad' (the paper's CIFAR-10 grid), eta=0",
    "official DDIM CIFAR-10 protocol: eta 0 on DDIM's quadratic integer grid",
    {"eta": 0.0}))


def get_preset(name: str) -> Preset:
    if name in PRESETS:
        return PRESETS[name]
    hint = did_you_mean(name, PRESETS)
    raise BenchError(f"unknown preset '{name}'; {hint}use one of {', '.join(PRESETS)} (`bench presets` lists them).")


def expand(preset: str | None, *, solver: str | None = None, opts: Mapping[str, Any] | None = None,
           schedule: str | None = None, final_step: str | None = None, noise: str | None = None) -> dict[str, Any]:
    """The run fields: the preset's values, overridden by every value given explicitly.

    Returns ``solver``, ``opts``, ``schedule``, ``final_step``, ``noise`` (None where neither gives one)
    and ``overrides`` (the explicit fields that replaced a preset value).
    """
    given = {"solver": solver, "schedule": schedule, "final_step": final_step, "noise": noise}
    if preset is None:
        if solver is None:
            raise BenchError("no solver given; use --solver NAME (`bench solvers`) or --preset NAME (`bench presets`).")
        return {**given, "opts": dict(opts or {}), "overrides": []}
    p = get_preset(preset)
    base = p.expansion()
    out: dict[str, Any] = {}
    overrides = []
    for k, v in given.items():
        out[k] = base[k] if v is None else v
        if v is not None and v != base[k]:
            overrides.append(k)
    merged = p.opts_for(out["solver"])  # with another solver: the preset's options that solver has
    for k, v in (opts or {}).items():
        merged[k] = v
        overrides.append(f"opts.{k}")
    out["opts"] = merged
    out["overrides"] = overrides
    return out
