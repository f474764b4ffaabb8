"""SA-Solver (Xue et al., NeurIPS 2023, arXiv 2309.05019): stochastic Adams predictor-corrector, in sigma-space.

The official repository (scxue/SA-Solver) publishes its algorithm as the diffusers
``SASolverScheduler`` (its README points there); this follows that code, data-prediction branch
(``predict_x0=True``, the default), with alpha = 1 and lambda = -log sigma:

    predictor  x_{i+1} = e^{-tau^2 h} (sigma_{i+1}/sigma_i) x_i + sum_j b_j D_{i-j} + sigma_{i+1} sqrt(1 - e^{-2 tau^2 h}) z
    b_j        = (1 + tau^2) int_{lambda_i}^{lambda_{i+1}} e^{(1 + tau^2)(lambda - lambda_{i+1})} l_j(lambda) dlambda

(l_j: Lagrange basis over lambda_i, lambda_{i-1}, ...; the official code's (1 + tau^2) sigma_t
e^{-tau^2 lambda_t} times its integral of e^{(1+tau^2) lambda} l_j, with sigma_t e^{lambda_t} = 1).
The corrector redoes the step from x_i with the Adams-Moulton nodes lambda_{i+1}, lambda_i, ...,
using the model value at the *predicted* x_{i+1} and the *same* noise z; the corrected x_{i+1} is
not evaluated again (the next model call is the one at x_{i+1}'s successor), so it costs no NFE.
Order 2 adds the official O(h^3) modification to b_0, b_1 (predictor and corrector).

Official details kept: warm-up predictor order min(p, i + 1), corrector min(c, i + 2);
``lower_order_final`` (default on) predictor min(p, steps - i), corrector min(c, steps - i + 1);
tau is evaluated at the start sigma of the step (predictor and corrector); noise is drawn once per
predictor step (``noise(sigma_i, sigma_{i+1})``), where the official code draws it.

Differences (documented):
- the b_j integrals are evaluated by 32-point Gauss-Legendre quadrature in lambda - lambda_{i+1}
  (exact to float64 rounding); the official code uses closed-form antiderivatives in absolute
  lambda (float32 in diffusers);
- the tau function: the official one is ``eta if 0.2 <= t <= 0.8 else 0`` in continuous VP time
  (t in [0, 1]; 200..800 on the 1000-step grid). Here the window is given in sigma,
  ``tau_sigma_min``..``tau_sigma_max``, by default sigma(t = 0.2) = 0.7204 .. sigma(t = 0.8) = 25.1085
  of the linear VP schedule (beta 0.1 -> 20) that t refers to, so every model (with or without a
  native time map) gets the same window;
- the step to sigma = 0 (the official grid ends above 0) returns D(x, sigma_last) (the official
  run on the positive sigmas followed by a denoise-to-zero call, as in dpmsolver.py).
NFE = steps (grids ending at 0 and above 0).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from sampler_bench.errors import BenchError
from sampler_bench.solvers import Option, SolverSpec, host_floats, register
from sampler_bench.solvers.dpmsolver import lincomb


@lru_cache(maxsize=1)
def _gl(n: int = 32):
    return np.polynomial.legendre.leggauss(n)


def sa_coefficients(nodes: list[float], lam_s: float, lam_t: float, tau: float) -> list[float]:
    """b_j = (1+tau^2) int_{lam_s}^{lam_t} e^{(1+tau^2)(lam - lam_t)} l_j(lam) dlam, l_j the Lagrange basis on ``nodes``."""
    k = 1.0 + tau * tau
    x, w = _gl()
    half = 0.5 * (lam_t - lam_s)
    lam = lam_s + half * (x + 1.0)
    weight = k * np.exp(k * (lam - lam_t)) * w * half
    out = []
    for j, nj in enumerate(nodes):
        lj = np.ones_like(lam)
        for m, nm in enumerate(nodes):
            if m != j:
                lj = lj * (lam - nm) / (nj - nm)
        out.append(float(np.sum(weight * lj)))
    return out


def _order2_fix(h: float, tau: float, corrector: bool, lam_gap: float) -> float:
    """The official order-2 modification (an O(h^3) term), in sigma-space units; add to b_0, subtract from b_1."""
    k = 1.0 + tau * tau
    inner = k * h - 1.0 + math.exp(-k * h)
    if corrector:
        return k * (h / 2 - inner / (k * k * h))
    return k * (h * h / 2 - inner / (k * k)) / lam_gap


def sa_step(x_start, ms: list, lams: list[float], sig_s: float, sig_t: float, tau: float, z, corrector: bool):
    """x_t = e^{-tau^2 h}(sig_t/sig_s) x_start + sum_j b_j ms[-(j+1)] + noise; ``lams`` are the nodes, newest first."""
    lam_s, lam_t = -math.log(sig_s), -math.log(sig_t)
    h = lam_t - lam_s
    b = sa_coefficients(lams, lam_s, lam_t, tau)
    if len(lams) == 2:
        fix = _order2_fix(h, tau, corrector, lams[0] - lams[1])
        b[0] += fix
        b[1] -= fix
    terms = [(math.exp(-tau * tau * h) * sig_t / sig_s, x_start)] + [(bj, ms[-(j + 1)]) for j, bj in enumerate(b)]
    if tau > 0:
        terms.append((sig_t * math.sqrt(-math.expm1(-2.0 * tau * tau * h)), z))
    return lincomb(terms)


def sa_solver(denoise, x, sigmas, *, noise=None, predictor_order=3, corrector_order=4, eta=1.0,
              tau_sigma_min=0.7204, tau_sigma_max=25.1085, lower_order_final=True):
    """SA-Solver (official diffusers ``SASolverScheduler``, data prediction): SA-Predictor + SA-Corrector, NFE = steps."""
    sig = host_floats(sigmas)
    for a, b in zip(sig, sig[1:]):
        if not (a > b >= 0):
            raise BenchError(f"SA-Solver needs a strictly decreasing schedule ending at or above 0; got {a} -> {b}.")
    if tau_sigma_min > tau_sigma_max:
        raise BenchError(f"SA-Solver: tau_sigma_min={tau_sigma_min} is above tau_sigma_max={tau_sigma_max}; swap them.")
    to_zero = sig[-1] == 0.0
    pos = sig[:-1] if to_zero else sig
    n = len(pos) - 1  # official steps
    lams = [-math.log(s) for s in pos]

    def tau_of(s: float) -> float:
        return eta if tau_sigma_min <= s <= tau_sigma_max else 0.0

    keep = max(predictor_order, corrector_order, 1)
    ms: list = []
    last_x = last_z = None
    c_used = 0
    for i in range(n + 1):
        m = denoise(x, pos[i])
        if i > 0 and c_used > 0:  # SA-Corrector of step i-1 -> i, with the model value at the predicted x_i
            nodes = [lams[i - j] for j in range(c_used)]
            x = sa_step(last_x, ms + [m], nodes, pos[i - 1], pos[i], tau_of(pos[i - 1]), last_z, True)
        ms = (ms + [m])[-keep:]
        if i == n:
            return m if to_zero else x  # the last call is the official denoise_to_zero; without it, i == n is never evaluated
        p_used = min(predictor_order, i + 1)
        c_used = min(corrector_order, i + 2)
        if lower_order_final:
            p_used = min(p_used, n - i)
            c_used = min(c_used, n - i + 1)
        tau = tau_of(pos[i])
        z = noise(pos[i], pos[i + 1]) if tau > 0 else None
        last_x, last_z = x, z
        nodes = [lams[i - j] for j in range(p_used)]
        x = sa_step(x, ms, nodes, pos[i], pos[i + 1], tau, z, False)
        if i == n - 1 and not to_zero:
            return x  # the official code makes no call after the last predictor step
    return x


def _linear_vp_sigma(t: float, beta_min: float = 0.1, beta_max: float = 20.0) -> float:
    return math.sqrt(math.expm1(beta_min * t + 0.5 * (beta_max - beta_min) * t * t))


_TAU_LO, _TAU_HI = round(_linear_vp_sigma(0.2), 4), round(_linear_vp_sigma(0.8), 4)

# NFE on a grid ending above 0 (final_step=none): steps, as on a grid ending at 0
register(SolverSpec(
    name="sa-solver", fn=sa_solver, family="sa-solver", nfe=lambda steps, opts: steps, nfe_rule="steps",
    summary="SA-Solver (Xue et al. 2023): stochastic Adams predictor + corrector (free), tau = eta on a sigma window",
    options={
        "predictor_order": Option(int, 3, "SA-Predictor order (official README, unconditional: 3)", minimum=1, maximum=4),
        "corrector_order": Option(int, 4, "SA-Corrector order (official README, unconditional: 4); 0 = no corrector", minimum=0, maximum=4),
        "eta": Option(float, 1.0, "tau inside the window (official 1); 0 = ODE", minimum=0.0),
        "tau_sigma_min": Option(float, _TAU_LO, "low end of the stochastic window (default: sigma at VP t = 0.2)", minimum=0.0),
        "tau_sigma_max": Option(float, _TAU_HI, "high end of the stochastic window (default: sigma at VP t = 0.8)", minimum=0.0),
        "lower_order_final": Option(bool, True, "official lower_order_final (default on)"),
    },
    stochastic=lambda opts: opts.get("eta", 1.0) > 0, default_schedule="logsnr",
))
