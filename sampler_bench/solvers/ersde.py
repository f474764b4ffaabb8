"""ER-SDE-Solver (Cui et al., arXiv 2309.06169 / WACV 2025), orders 1-3, written once in sigma-space.

The extended reverse-time SDE is reparameterised by a noise-scale function ``phi``; from sigma_s to
sigma_t < sigma_s its exact solution (VE form, x0 = data prediction) is

    x_t = r x_s + phi(t) int_t^s phi'(u)/phi(u)^2 x0(x_u, u) du + sqrt(t^2 - s^2 r^2) z,   r = phi(t)/phi(s)

and Taylor-expanding x0 at sigma_s (integration by parts) gives the official Taylor solvers

    x_t = r x_s + (1 - r) x0 + c1 D1 + c2 D2 + sqrt(t^2 - s^2 r^2) z
    c1  = (t - s)     + phi(t) int_t^s du / phi(u)
    c2  = (t - s)^2/2 + phi(t) int_t^s (u - s) / phi(u) du

with D1 = (x0_i - x0_{i-1})/(s_i - s_{i-1}) and D2 = 2 (D1_i - D1_{i-1})/(s_i - s_{i-2}) (backward
divided differences of the data predictions; one model call per step, NFE = steps).

The VP form of the official code (lambda = sigma_vp/alpha, every x0 and noise term times alpha_t,
x_s times alpha_t/alpha_s) is this algorithm applied to x_vp/alpha: in our sigma-space lambda IS
sigma, so VP and VE models share this one function (tests/test_ersde.py checks it against the
official VP formula).

Details taken from the official code (QinpengCui/ER-SDE-Solver, commit 25ca6c2):
- the integrals are left Riemann sums with ``n_int`` = 100 points, nodes t + k/N (s - t), k = 0..N-1
  (``n_int=0`` here means composite Gauss-Legendre quadrature, exact to float64 rounding);
- warm-up: order 2 takes a first-order first step; order 3 takes orders 1, 2, then 3;
- a step to sigma = 0 is first order (there r = phi(0)/phi(s) = 0 and the variance is 0, so x <- x0),
  as in the official VE/EDM example;
- the noise variance t^2 - s^2 r^2 is set to 0 when its magnitude is below 1e-6 (``numerical_clip``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from sampler_bench.lazy import torch

from sampler_bench.errors import BenchError
from sampler_bench.solvers import Option, SolverSpec, host_floats, register

PhiFn = Callable[[np.ndarray], np.ndarray]

#: official ``numerical_clip``: |variance| below this is set to 0
VAR_CLIP = 1e-6
#: official number of Riemann points (``nums_intergrate = 100.0``)
OFFICIAL_N_INT = 100


# ---------------------------------------------------------------------------------------------
# Noise-scale functions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phi:
    name: str
    fn: Callable[..., np.ndarray]  # fn(x: float64 ndarray, **params) -> ndarray
    formula: str
    official: str  # official ``customized_func`` func_type
    deterministic: bool = False
    params: tuple[str, ...] = ()


def _ersde1(x, eta=0.0):
    with np.errstate(divide="ignore", over="ignore"):
        return x * (np.exp(x ** (eta - 1.0) / (eta - 1.0)) + 10.0)


PHIS: dict[str, Phi] = {}


def register_phi(name: str, fn: PhiFn, formula: str = "custom", deterministic: bool = False) -> Phi:
    """Add a noise-scale function usable as ``phi=<name>`` (``--opt phi=<name>``, sweeps, FIE).

    ``fn`` maps a float64 ndarray of sigmas to phi(sigma). It must be positive for sigma > 0 with
    phi(sigma)/sigma non-decreasing (the paper's admissibility constraint); phi(sigma) = sigma is
    the probability-flow ODE. ``deterministic=True`` marks a phi that adds no noise.
    """
    if not name or not isinstance(name, str) or "," in name or "=" in name:
        raise BenchError(f"phi name {name!r} is not valid; use a plain word such as 'mine'.")
    if not callable(fn):
        raise BenchError(f"phi '{name}' must be a callable sigma -> phi(sigma).")
    phi = Phi(name, lambda x, **_: fn(x), formula, "custom", deterministic)
    PHIS[name] = phi
    return phi


for _p in (
    Phi("ode", lambda x, **_: x, "x", "1 (ODE)", deterministic=True),
    Phi("sde", lambda x, **_: x**2, "x^2", "2 (Original SDE)"),
    Phi("ersde1", lambda x, eta=0.0, **_: _ersde1(x, eta), "x (exp(x^(eta-1)/(eta-1)) + 10), eta=0: x (exp(-1/x) + 10)",
        "3 (SDE_1)", params=("eta",)),
    Phi("ersde2", lambda x, **_: x**1.5, "x^1.5", "4 (SDE_2)"),
    Phi("ersde3", lambda x, **_: x**2.5, "x^2.5", "5 (SDE_3)"),
    Phi("ersde4", lambda x, **_: x**0.9 * np.log10(1.0 + 100.0 * x**1.5), "x^0.9 log10(1 + 100 x^1.5)", "6 (SDE_4)"),
    Phi("ersde5", lambda x, **_: x * (np.exp(x**0.3) + 10.0), "x (exp(x^0.3) + 10)", "7 (SDE_5, official default)"),
):
    PHIS[_p.name] = _p

DEFAULT_PHI = "ersde5"


def resolve_phi(phi: str | PhiFn, eta: float = 0.0) -> PhiFn:
    """A phi name (or a callable, Python API) -> a float64 function of sigma."""
    if callable(phi):
        return lambda x: np.asarray(phi(np.asarray(x, dtype=np.float64)), dtype=np.float64)
    spec = PHIS.get(str(phi))
    if spec is None:
        raise BenchError(f"unknown noise-scale function phi='{phi}'; use one of {', '.join(PHIS)} (or register_phi() a custom one).")
    if eta == 1.0 and "eta" in spec.params:
        raise BenchError("phi 'ersde1' is undefined for eta=1 (it divides by eta-1); use another eta, e.g. 0.")
    kw = {"eta": float(eta)} if "eta" in spec.params else {}
    return lambda x: np.asarray(spec.fn(np.asarray(x, dtype=np.float64), **kw), dtype=np.float64)


def phi_is_deterministic(phi: Any) -> bool:
    return not callable(phi) and str(phi) in PHIS and PHIS[str(phi)].deterministic


def _phi_option(raw: Any):
    """Option type for ``phi``: a registered name (checked at parse time) or a callable."""
    if callable(raw):
        return raw
    name = str(raw).strip()
    if name not in PHIS:
        raise BenchError(f"option phi={raw!r} is not a known noise-scale function; use one of {', '.join(PHIS)}.")
    return name


_phi_option.__name__ = "phi name"


# ---------------------------------------------------------------------------------------------
# The integrals int_t^s (u - s)^k / phi(u) du, k = 0, 1
# ---------------------------------------------------------------------------------------------

_GL_X, _GL_W = np.polynomial.legendre.leggauss(24)


def phi_integrals(phi: PhiFn, s: float, t: float, n_int: int = OFFICIAL_N_INT) -> tuple[float, float]:
    """(I0, I1) = (int_t^s du/phi(u), int_t^s (u - s)/phi(u) du) for 0 < t < s.

    ``n_int >= 1``: the official left Riemann sum with nodes t + k/N (s - t), k = 0..N-1.
    ``n_int == 0``: composite 24-point Gauss-Legendre in log(u) on panels of width <= 0.25
    (the integrand u/phi(u) is smooth in log u), exact to float64 rounding for the built-in phis.
    """
    s, t = float(s), float(t)
    if not 0.0 < t < s:
        raise ValueError(f"phi_integrals needs 0 < t < s, got t={t}, s={s}")
    if n_int >= 1:
        N = float(n_int)
        k = np.arange(n_int, dtype=np.float64)
        nodes = t + k / N * (s - t)
        w = (s - t) / N
        inv = 1.0 / phi(nodes)
        return float(np.sum(inv * w)), float(np.sum((nodes - s) * inv * w))
    a, b = math.log(t), math.log(s)
    panels = max(1, math.ceil((b - a) / 0.25))
    edges = np.linspace(a, b, panels + 1)
    half = 0.5 * (edges[1:] - edges[:-1])
    mid = 0.5 * (edges[1:] + edges[:-1])
    logu = (mid[:, None] + half[:, None] * _GL_X[None, :]).reshape(-1)
    w = (half[:, None] * _GL_W[None, :]).reshape(-1)
    u = np.exp(logu)
    g = u / phi(u) * w  # du = u dlog(u)
    return float(np.sum(g)), float(np.sum((u - s) * g))


@dataclass(frozen=True)
class StepCoef:
    """Coefficients of one step sigma_s -> sigma_t: x <- r x + (1-r) x0 + c1 D1 + c2 D2 + std z."""

    order: int
    r: float
    std: float
    c1: float
    c2: float


def step_coefficients(sigmas, phi: PhiFn, order: int, n_int: int = OFFICIAL_N_INT) -> list[StepCoef]:
    """Per-step order (warm-up, terminal rule) and coefficients for a whole schedule."""
    sig = host_floats(sigmas)
    out = []
    for i in range(len(sig) - 1):
        s, t = sig[i], sig[i + 1]
        if not (s > 0 and 0 <= t < s):
            raise BenchError(f"ER-SDE needs a strictly decreasing schedule with sigma > 0 before the last step; got {s} -> {t}.")
        k = 1 if (t == 0.0 or i == 0) else min(order, i + 1)
        phi_s = float(phi(np.float64(s)))
        phi_t = float(phi(np.float64(t))) if t > 0 else 0.0
        if not (phi_s > 0 and math.isfinite(phi_s)) or (t > 0 and not (phi_t > 0 and math.isfinite(phi_t))):
            raise BenchError(f"noise-scale function gives phi({s})={phi_s}, phi({t})={phi_t}; phi must be positive and finite for sigma > 0.")
        r = phi_t / phi_s
        var = t * t - s * s * r * r
        if abs(var) < VAR_CLIP:
            var = 0.0
        if var < 0:
            raise BenchError(f"noise-scale function violates the ER-SDE constraint (phi(sigma)/sigma must be non-decreasing): step {s:.6g} -> {t:.6g} has negative noise variance {var:.3g}.")
        c1 = c2 = 0.0
        if k >= 2:
            i0, i1 = phi_integrals(phi, s, t, n_int)
            c1 = (t - s) + i0 * phi_t
            if k >= 3:
                c2 = (t - s) ** 2 / 2 + i1 * phi_t
        out.append(StepCoef(k, r, math.sqrt(var), c1, c2))
    return out


# ---------------------------------------------------------------------------------------------
# The solver
# ---------------------------------------------------------------------------------------------


def ersde(denoise, x, sigmas, *, noise=None, order: int = 3, phi: str | PhiFn = DEFAULT_PHI, n_int: int = OFFICIAL_N_INT,
          eta: float = 0.0, d1: str = "official", trace: list | None = None):
    """ER-SDE-Solver-1/2/3 (Cui et al. 2023; official ``ve_*_order_taylor``/``vp_*_order_taylor``): Taylor steps of the exact ER SDE solution.

    ``sigmas`` may end at sigma = 0 (first-order terminal step, x <- x0) or at a positive sigma
    (``final_step`` none/denoise; then the last step is a full-order stochastic step, as the official
    VP code does at t = 0). ``trace``: if a list, one dict per step (order and coefficients) is appended to it.
    """
    if order not in (1, 2, 3):
        raise BenchError(f"ER-SDE order must be 1, 2 or 3; got {order}.")
    if d1 not in ("official", "quadratic"):
        raise BenchError(f"ER-SDE option d1={d1!r} is not valid; use official or quadratic.")
    phi_fn = resolve_phi(phi, eta)
    sig = host_floats(sigmas)  # one device-to-host copy, none per step
    coefs = step_coefficients(sig, phi_fn, order, n_int)
    # In place, bit-identical to the textbook expressions (tests/test_fused_solvers.py): the state
    # lives in one buffer owned here (the caller's x is never written), each product is rounded into
    # ``tmp`` and then added, D1 alternates between two buffers (the previous one is D2's input).
    state = d2 = None
    tmp = torch.empty_like(x)
    d1_bufs: list = [None, None]
    x0_prev = d1_prev = None
    for i, c in enumerate(coefs):
        x0 = denoise(x if state is None else state, sigmas[i])
        state = torch.mul(x, c.r) if state is None else state.mul_(c.r)  # r x
        state.add_(torch.mul(x0, 1.0 - c.r, out=tmp))  # + (1 - r) x0
        dx0 = None
        if c.order >= 2:
            dx0 = d1_bufs[i % 2] = torch.sub(x0, x0_prev, out=d1_bufs[i % 2]).div_(sig[i] - sig[i - 1])
            state.add_(torch.mul(dx0, c.c1, out=tmp))
        if c.order >= 3:
            d2 = torch.sub(dx0, d1_prev, out=d2).mul_(2.0).div_(sig[i] - sig[i - 2])
            state.add_(torch.mul(d2, c.c2, out=tmp))
            if d1 == "quadratic":  # x0'(s_i) of the parabola through the last 3 points: D1 + (s_i - s_{i-1}) D2 / 2
                state.add_(torch.mul(d2, c.c1 * ((sig[i] - sig[i - 1]) / 2), out=tmp))
        if c.std > 0:
            if noise is None:
                raise BenchError("this ER-SDE configuration is stochastic and needs a noise source.")
            state.add_(torch.mul(noise(sigmas[i], sigmas[i + 1]), c.std, out=tmp))
        if trace is not None:
            trace.append({"step": i, "sigma": sig[i], "sigma_next": sig[i + 1], "order": c.order,
                          "r": c.r, "c1": c.c1, "c2": c.c2, "noise_std": c.std})
        x0_prev, d1_prev = x0, dx0
    return x if state is None else state


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

_steps = lambda steps, opts: steps  # noqa: E731


def _options(order: int) -> dict[str, Option]:
    opts = {
        "phi": Option(_phi_option, DEFAULT_PHI, f"noise-scale function: {', '.join(PHIS)} (ersde5 = official default func_type 7)"),
        "n_int": Option(int, OFFICIAL_N_INT, "Riemann points for the c1/c2 integrals (official 100); 0 = exact quadrature", minimum=0),
        "eta": Option(float, 0.0, "parameter of phi=ersde1 (official eta, default 0); must not be 1"),
    }
    if order == 3:
        opts["d1"] = Option(str, "official", "x0' estimate: official = backward difference (global order 2), "
                            "quadratic = + (s_i - s_{i-1}) D2/2 (global order 3)", choices=("official", "quadratic"))
    return opts


def _stochastic(opts) -> bool:
    return not phi_is_deterministic(opts.get("phi", DEFAULT_PHI))


for _order in (1, 2, 3):
    register(SolverSpec(
        name=f"ersde-{_order}", fn=ersde, family="ersde", nfe=_steps, nfe_rule="steps",
        summary=f"ER-SDE-Solver-{_order} (Cui et al.), Taylor order {_order} in sigma-space; --opt phi=ode|sde|ersde1..5",
        options=_options(_order), fixed={"order": _order}, stochastic=_stochastic, default_schedule="karras",
    ))
register(SolverSpec(
    name="ersde", fn=ersde, family="ersde", nfe=_steps, nfe_rule="steps",
    summary="ER-SDE-Solver recommended default: order 3, phi=ersde5 (official default), n_int=100",
    options=_options(3), fixed={"order": 3}, stochastic=_stochastic, default_schedule="karras",
))
