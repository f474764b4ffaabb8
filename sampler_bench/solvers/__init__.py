"""Solver registry: name -> function, NFE rule, options, default schedule.

A solver is a plain function

    def solver(denoise, x, sigmas, *, noise, **options) -> x0

- ``denoise`` is a :class:`~sampler_bench.models.base.BoundDenoiser`: ``denoise(x, sigma) -> x0``,
  with ``sigma_min``, ``sigma_max``, ``round_sigma`` and ``time_map`` attributes; each call is one NFE.
- ``x`` starts at ``sigmas[0] * z`` (float64); ``sigmas`` is the float64 step schedule ending in 0.
- ``noise(sigma_from, sigma_to)`` returns per-sample-seeded N(0, I) noise shaped like ``x``
  (stochastic solvers only), so sample i is the same whatever the batch size.

Each :class:`SolverSpec` states its NFE rule ``nfe(steps, options)``; :func:`steps_for_nfe` turns
``--nfe N`` into a number of steps, or raises a :class:`BenchError` that names the nearest valid NFEs.
:func:`run_solver` checks the counted denoiser calls against the rule.

**Final step** (``final_step``, one of :data:`FINAL_STEPS`), handled here and in
``schedules.make_schedule`` so that every family gets it for free:

- ``zero`` (default): the schedule ends at sigma = 0 and the solver's own last step lands there
  (EDM, DDIM, ER-SDE's EDM example). Calls: ``nfe(steps, opts)``.
- ``none``: the schedule ends at its last positive sigma and the solver's state there is returned
  (the official DEIS code, ER-SDE's guided-diffusion code). Calls: ``nfe_above0(steps, opts)``.
- ``denoise``: as ``none``, then one more counted call ``x <- D(x, sigma_last)`` (DPM-Solver-style
  ``denoise_to_zero``). Calls: ``nfe_above0(steps, opts) + 1``.

Contract for a family: its function must integrate a grid that ends above 0 with regular steps
(a special step is only allowed where ``sigmas[i + 1] == 0``), and a family whose call count then
differs from ``nfe`` sets ``nfe_above0`` (and ``nfe_rule_above0`` for the listing), e.g. rhoRK:
``stages * steps`` instead of ``stages * (steps - 1) + 1``. When ``nfe_above0`` is absent the
``nfe`` rule applies to both kinds of grid.

**Adding a family.** Put it in a new module of this package that calls :func:`register` at import
(every module here is imported by :func:`_import_families`). The module must not import torch at
import time, so that ``bench solvers`` stays fast: write ``from sampler_bench.lazy import torch``
instead of ``import torch`` and use torch only inside functions (annotations are fine under
``from __future__ import annotations``); import other torch-heavy modules (``models.base``,
``schedules``) inside the functions that need them. ``tests/test_cli_fast.py`` fails when a listing
imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

if TYPE_CHECKING:
    import torch

from sampler_bench.errors import BenchError, did_you_mean


_TYPE_WORDS = {int: "an integer", float: "a finite number", bool: "true or false", str: "a text"}


@dataclass(frozen=True)
class Option:
    """One solver option: ``--opt name=value`` on the CLI or ``name: value`` in a sweep YAML."""

    type: type
    default: Any
    help: str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    allow_inf: bool = False  # +inf is meaningful (e.g. EDM's S_max = inf: churn at every sigma); NaN never is

    def parse(self, solver: str, key: str, raw: Any) -> Any:
        allowed = (f"one of {', '.join(map(str, self.choices))}" if self.choices else
                   _TYPE_WORDS.get(self.type, f"a {self.type.__name__}"))
        try:
            if self.type is bool:
                if isinstance(raw, bool):
                    val = raw
                elif str(raw).lower() in ("1", "true", "yes", "on"):
                    val = True
                elif str(raw).lower() in ("0", "false", "no", "off"):
                    val = False
                else:
                    raise ValueError
            elif self.type is int and isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            else:
                val = self.type(raw)
        except (TypeError, ValueError):
            raise BenchError(f"solver '{solver}': option {key}={raw!r} is not valid; use {allowed}.") from None
        if isinstance(val, float) and not math.isfinite(val) and not (self.allow_inf and val == math.inf):
            raise BenchError(f"solver '{solver}': option {key}={raw!r} is not a finite number; use {allowed}.")
        if self.choices and val not in self.choices:
            raise BenchError(f"solver '{solver}': option {key}={raw!r} is not valid; use {allowed}.")
        if self.minimum is not None and val < self.minimum:
            raise BenchError(f"solver '{solver}': option {key}={raw!r} is too small; use a value >= {self.minimum}.")
        if self.maximum is not None and val > self.maximum:
            raise BenchError(f"solver '{solver}': option {key}={raw!r} is too large; use a value <= {self.maximum}.")
        return val


@dataclass(frozen=True)
class SolverSpec:
    name: str
    fn: Callable[..., torch.Tensor]
    family: str
    summary: str  # one line for `bench solvers`
    nfe: Callable[[int, Mapping[str, Any]], int]  # steps -> denoiser calls
    nfe_rule: str  # human-readable, e.g. "2*steps - 1"
    options: Mapping[str, Option] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)  # passed to fn, not user-settable
    min_steps: int = 1
    stochastic: bool | Callable[[Mapping[str, Any]], bool] = False
    needs_time_map: bool = False
    default_schedule: str = "karras"  # schedules.py names, "a|b": the first the model supports
    nfe_above0: Callable[[int, Mapping[str, Any]], int] | None = None  # on a grid ending above 0; None: ``nfe``
    nfe_rule_above0: str | None = None

    def calls(self, steps: int, opts: Mapping[str, Any], final_step: str = "zero") -> int:
        """Denoiser calls of ``steps`` steps under a final-step policy (see the module docstring)."""
        if final_step == "zero":
            return self.nfe(steps, opts)
        n = (self.nfe_above0 or self.nfe)(steps, opts)
        return n + (1 if final_step == "denoise" else 0)

    def rule(self, final_step: str = "zero") -> str:
        if final_step == "zero":
            return self.nfe_rule
        rule = self.nfe_rule_above0 or self.nfe_rule
        return f"{rule} + 1" if final_step == "denoise" else rule

    def is_stochastic(self, opts: Mapping[str, Any]) -> bool:
        return self.stochastic(opts) if callable(self.stochastic) else bool(self.stochastic)

    def schedule_for(self, model) -> str:
        from sampler_bench.schedules import SCHEDULES

        names = self.default_schedule.split("|")
        for name in names:
            if not SCHEDULES[name].needs_time_map or getattr(model, "time_map", None) is not None:
                return name
        return names[-1]


REGISTRY: dict[str, SolverSpec] = {}

#: final-step policies (module docstring): zero = step to sigma 0, none = stop at the last grid
#: sigma, denoise = stop there and return one extra D call
FINAL_STEPS = ("zero", "none", "denoise")


def check_final_step(final_step: str) -> str:
    if final_step not in FINAL_STEPS:
        raise BenchError(f"final step '{final_step}' is not valid; use one of {', '.join(FINAL_STEPS)}.")
    return final_step


def register(spec: SolverSpec) -> SolverSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"solver {spec.name!r} registered twice")
    REGISTRY[spec.name] = spec
    return spec


def get_solver(name: str) -> SolverSpec:
    if name in REGISTRY:
        return REGISTRY[name]
    hint = did_you_mean(name, REGISTRY)
    raise BenchError(f"unknown solver '{name}'; {hint}run `bench solvers` to list the {len(REGISTRY)} available.")


def split_opt_args(args: Iterable[str], example: str = "key") -> dict[str, str]:
    """``["eta=1", ...]`` -> ``{"eta": "1"}``: checks the form (and no repeats); values stay text."""
    out: dict[str, str] = {}
    for kv in args:
        k, eq, v = kv.partition("=")
        k, v = k.strip(), v.strip()
        if not eq or not k or not v:
            raise BenchError(f"option '{kv}' is not of the form key=value; write e.g. --opt {example}=VALUE (`bench solvers -v` lists the options).")
        if k in out:
            raise BenchError(f"option {k} is given twice; give each option once.")
        out[k] = v
    return out


def parse_opts(spec: SolverSpec, raw: Iterable[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate user options (``["k=v", ...]`` or a mapping) and fill in defaults."""
    if raw is None:
        items: list[tuple[str, Any]] = []
    elif isinstance(raw, Mapping):
        items = list(raw.items())
    else:
        items = list(split_opt_args(raw, next(iter(spec.options), "key")).items())
    out = {k: o.default for k, o in spec.options.items()}
    for k, v in items:
        if k not in spec.options:
            valid = ", ".join(spec.options) or "none"
            raise BenchError(f"solver '{spec.name}' has no option '{k}'; its options are: {valid}.")
        out[k] = spec.options[k].parse(spec.name, k, v)
    return out


def steps_for_nfe(spec: SolverSpec, nfe: int, opts: Mapping[str, Any], final_step: str = "zero") -> int:
    """The number of steps whose NFE is exactly ``nfe``, or a BenchError naming the nearest valid NFEs."""
    check_final_step(final_step)
    rule = spec.rule(final_step) + ("" if final_step == "zero" else f", final step {final_step}")
    lo_nfe = spec.calls(spec.min_steps, opts, final_step)
    if nfe < lo_nfe:
        raise BenchError(f"solver '{spec.name}' needs at least {lo_nfe} NFE (NFE = {rule}); use --nfe {lo_nfe} or more.")
    below = above = None
    for steps in range(spec.min_steps, nfe + 2):
        n = spec.calls(steps, opts, final_step)
        if n == nfe:
            return steps
        if n < nfe:
            below = n
        else:
            above = n
            break
    near = " or ".join(str(v) for v in (below, above) if v is not None)
    raise BenchError(f"solver '{spec.name}' cannot use exactly {nfe} NFE (NFE = {rule}); the nearest valid values are {near}.")


def host_floats(sigmas) -> list[float]:
    """The schedule as Python floats for a solver's host-side decisions and coefficients: one
    device-to-host copy (``tolist``) up front, so the step loop reads nothing back from the device
    (tests/test_host_sync.py). The values equal ``float(sigmas[i])``."""
    from sampler_bench.lazy import torch

    if isinstance(sigmas, torch.Tensor):
        return sigmas.detach().to(torch.float64).tolist()
    return [float(v) for v in sigmas]


def run_solver(spec: SolverSpec, denoise, x, sigmas, *, noise, opts: Mapping[str, Any],
               final_step: str | None = None) -> torch.Tensor:
    """Run a solver under a final-step policy and check the counted denoiser calls against its rule.

    ``final_step`` None: ``zero`` when ``sigmas`` ends at 0, else ``none``. ``denoise`` adds one
    call ``D(x, sigmas[-1])`` after the solver on a grid that ends above 0.
    """
    steps = len(sigmas) - 1
    ends_at_zero = float(sigmas[-1]) == 0.0
    if final_step is None:
        final_step = "zero" if ends_at_zero else "none"
    check_final_step(final_step)
    if ends_at_zero != (final_step == "zero"):
        where = "ends at sigma = 0" if ends_at_zero else f"ends at sigma = {float(sigmas[-1]):.6g} > 0"
        raise BenchError(f"final step '{final_step}' does not fit a schedule that {where}; build the schedule with the same final_step.")
    expected = spec.calls(steps, opts, final_step)
    before = denoise.calls
    out = spec.fn(denoise, x, sigmas, noise=noise, **spec.fixed, **opts)
    if final_step == "denoise":
        out = denoise(out, sigmas[-1])
    used = denoise.calls - before
    if used != expected:
        raise RuntimeError(f"solver {spec.name} made {used} denoiser calls, its NFE rule says {expected}")
    return out


def all_solvers() -> list[SolverSpec]:
    return list(REGISTRY.values())


def _import_families() -> None:
    """Every module in this package is a solver family that registers itself on import."""
    import importlib
    import pkgutil

    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{m.name}")


_import_families()
