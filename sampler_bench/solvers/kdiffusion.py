"""The k-diffusion samplers users type every day (crowsonkb/k-diffusion ``k_diffusion/sampling.py``;
ComfyUI ships the same functions): ``euler-ancestral``, ``dpm-2``, ``dpm-2-ancestral``,
``dpmpp-2s-ancestral`` and ``dpmpp-sde``. (``euler`` is in ddim.py, ``heun`` in edm.py,
``dpmpp-2m-sde``/``dpmpp-3m-sde`` in dpmsolver.py.)

They already work in sigma-space (k-diffusion's ``to_d(x, sigma, denoised) = (x - denoised) / sigma``)
and already handle a grid ending at 0: the step to sigma = 0 is an Euler step (it returns D).

Ancestral step (``get_ancestral_step``): sigma_up = min(sigma_to, eta * sqrt(sigma_to^2 (sigma_from^2 -
sigma_to^2) / sigma_from^2)), sigma_down = sqrt(sigma_to^2 - sigma_up^2). ``eta`` is limited to
[0, 1] for the two-stage samplers here, so that sigma_down > 0 on every step that does not end at
0 and their NFE rule holds (k-diffusion takes one call instead of two when sigma_down = 0).

Noise: one ``noise(sigma_i, sigma_{i+1})`` draw per step where k-diffusion calls its noise sampler
(only when sigma_{i+1} > 0). ``dpmpp-sde`` calls k-diffusion's default ``BrownianTreeNoiseSampler``
twice per step on nested intervals, [sigma_s, sigma_i] and [sigma_{i+1}, sigma_i], whose normalised
increments are correlated; we draw two independent normals z1 (for [sigma_s, sigma_i]) and z2 (for
[sigma_{i+1}, sigma_s]) and form the second draw as (sqrt(sigma_i - sigma_s) z1 + sqrt(sigma_s -
sigma_{i+1}) z2) / sqrt(sigma_i - sigma_{i+1}), the exact joint law of the Brownian increments (a
different random stream, the same distribution). ``dpm-2`` churn noise (s_churn > 0) is drawn only
on steps that use it (k-diffusion draws it every step and discards it when gamma = 0).

NFE (grid ending at 0 | grid ending above 0): euler-ancestral steps | steps; the two-stage samplers
2*steps - 1 | 2*steps.
"""

from __future__ import annotations

import math

from sampler_bench.solvers import Option, SolverSpec, host_floats, register


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """k-diffusion ``get_ancestral_step``: (sigma_down, sigma_up)."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    sigma_down = math.sqrt(max(sigma_to**2 - sigma_up**2, 0.0))
    return sigma_down, sigma_up


def euler_ancestral(denoise, x, sigmas, *, noise=None, eta=1.0, s_noise=1.0):
    """k-diffusion ``sample_euler_ancestral``: Euler to sigma_down, then noise up to sigma_{i+1}."""
    sig = host_floats(sigmas)
    for i in range(len(sig) - 1):
        s, t = sig[i], sig[i + 1]
        d = (x - denoise(x, s)) / s
        sd, su = ancestral_step(s, t, eta)
        x = x + d * (sd - s)
        if t > 0 and su > 0:
            x = x + noise(s, t) * (s_noise * su)
    return x


def dpm_2(denoise, x, sigmas, *, noise=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """k-diffusion ``sample_dpm_2``: midpoint in log sigma, Euler to sigma = 0; optional EDM churn."""
    sig = host_floats(sigmas)
    n = len(sig) - 1
    for i in range(n):
        s, t = sig[i], sig[i + 1]
        gamma = min(s_churn / n, 2**0.5 - 1) if s_tmin <= s <= s_tmax else 0.0
        s_hat = s * (gamma + 1)
        if gamma > 0:
            x = x + noise(s, s_hat) * (s_noise * math.sqrt(s_hat**2 - s**2))
        d = (x - denoise(x, s_hat)) / s_hat
        if t == 0:
            x = x + d * (t - s_hat)
        else:
            s_mid = math.exp(0.5 * (math.log(s_hat) + math.log(t)))
            x_2 = x + d * (s_mid - s_hat)
            d_2 = (x_2 - denoise(x_2, s_mid)) / s_mid
            x = x + d_2 * (t - s_hat)
    return x


def dpm_2_ancestral(denoise, x, sigmas, *, noise=None, eta=1.0, s_noise=1.0):
    """k-diffusion ``sample_dpm_2_ancestral``: a DPM-Solver-2 step to sigma_down, then noise up."""
    sig = host_floats(sigmas)
    for i in range(len(sig) - 1):
        s, t = sig[i], sig[i + 1]
        d = (x - denoise(x, s)) / s
        sd, su = ancestral_step(s, t, eta)
        if sd == 0:
            x = x + d * (sd - s)
        else:
            s_mid = math.exp(0.5 * (math.log(s) + math.log(sd)))
            x_2 = x + d * (s_mid - s)
            d_2 = (x_2 - denoise(x_2, s_mid)) / s_mid
            x = x + d_2 * (sd - s)
            if su > 0:
                x = x + noise(s, t) * (s_noise * su)
    return x


def dpmpp_2s_ancestral(denoise, x, sigmas, *, noise=None, eta=1.0, s_noise=1.0):
    """k-diffusion ``sample_dpmpp_2s_ancestral``: a DPM-Solver++(2S) step to sigma_down, then noise up."""
    sig = host_floats(sigmas)
    for i in range(len(sig) - 1):
        s, t = sig[i], sig[i + 1]
        den = denoise(x, s)
        sd, su = ancestral_step(s, t, eta)
        if sd == 0:
            x = x + ((x - den) / s) * (sd - s)
        else:
            lam, lam_next = -math.log(s), -math.log(sd)
            h = lam_next - lam
            s_mid = math.exp(-(lam + 0.5 * h))
            x_2 = (s_mid / s) * x - math.expm1(-0.5 * h) * den
            den_2 = denoise(x_2, s_mid)
            x = (sd / s) * x - math.expm1(-h) * den_2
        if t > 0 and su > 0:
            x = x + noise(s, t) * (s_noise * su)
    return x


def dpmpp_sde(denoise, x, sigmas, *, noise=None, eta=1.0, s_noise=1.0, r=0.5):
    """k-diffusion ``sample_dpmpp_sde`` (DPM-Solver++ stochastic, singlestep with an intermediate point at lambda + r h)."""
    sig = host_floats(sigmas)
    fac = 1 / (2 * r)
    for i in range(len(sig) - 1):
        s, t = sig[i], sig[i + 1]
        den = denoise(x, s)
        if t == 0:
            x = x + ((x - den) / s) * (t - s)
            continue
        lam, lam_next = -math.log(s), -math.log(t)
        h = lam_next - lam
        s_mid = math.exp(-(lam + h * r))
        z1 = z2 = None
        if eta and s_noise:
            z1, z2 = noise(s, s_mid), noise(s_mid, t)
        # stage 1: ancestral DPM-Solver++(1) step to s_mid
        sd, su = ancestral_step(s, s_mid, eta)
        x_2 = (sd / s) * x - math.expm1(math.log(sd / s)) * den
        if su > 0 and z1 is not None:
            x_2 = x_2 + z1 * (s_noise * su)
        den_2 = denoise(x_2, s_mid)
        # stage 2
        sd, su = ancestral_step(s, t, eta)
        den_d = (1 - fac) * den + fac * den_2
        x = (sd / s) * x - math.expm1(math.log(sd / s)) * den_d
        if su > 0 and z1 is not None:
            w = (math.sqrt(s - s_mid) * z1 + math.sqrt(s_mid - t) * z2) / math.sqrt(s - t)
            x = x + w * (s_noise * su)
    return x


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

_steps = lambda steps, opts: steps  # noqa: E731  (grids ending above 0: also steps)
_two = lambda steps, opts: 2 * steps - 1  # noqa: E731  (grids ending above 0, final_step=none: 2*steps)
_S_NOISE = Option(float, 1.0, "noise scale (k-diffusion s_noise)", minimum=0.0)
_ETA1 = Option(float, 1.0, "ancestral noise: 0 = deterministic, 1 = k-diffusion default", minimum=0.0, maximum=1.0)
_anc_stochastic = lambda opts: opts.get("eta", 1.0) > 0 and opts.get("s_noise", 1.0) > 0  # noqa: E731

register(SolverSpec(
    name="euler-ancestral", fn=euler_ancestral, family="k-diffusion", nfe=_steps, nfe_rule="steps",
    summary="k-diffusion Euler ancestral (eta, s_noise): Euler to sigma_down, fresh noise up to sigma_next",
    options={"eta": Option(float, 1.0, "ancestral noise: 0 = Euler, 1 = k-diffusion default", minimum=0.0), "s_noise": _S_NOISE},
    stochastic=_anc_stochastic, default_schedule="karras",
))
register(SolverSpec(
    name="dpm-2", fn=dpm_2, family="k-diffusion", nfe=_two, nfe_rule="2*steps - 1",
    nfe_above0=lambda steps, opts: 2 * steps, nfe_rule_above0="2*steps",
    summary="k-diffusion DPM-2: DPM-Solver-2 midpoint in log sigma, Euler last step; optional EDM churn",
    options={
        "s_churn": Option(float, 0.0, "EDM churn (0 = deterministic)", minimum=0.0),
        "s_tmin": Option(float, 0.0, "lowest sigma that gets churn", minimum=0.0),
        "s_tmax": Option(float, float("inf"), "highest sigma that gets churn", minimum=0.0),
        "s_noise": _S_NOISE,
    },
    stochastic=lambda opts: opts.get("s_churn", 0.0) > 0, default_schedule="karras",
))
register(SolverSpec(
    name="dpm-2-ancestral", fn=dpm_2_ancestral, family="k-diffusion", nfe=_two, nfe_rule="2*steps - 1",
    nfe_above0=lambda steps, opts: 2 * steps, nfe_rule_above0="2*steps",
    summary="k-diffusion DPM-2 ancestral: DPM-Solver-2 step to sigma_down, fresh noise up (eta <= 1)",
    options={"eta": _ETA1, "s_noise": _S_NOISE}, stochastic=_anc_stochastic, default_schedule="karras",
))
register(SolverSpec(
    name="dpmpp-2s-ancestral", fn=dpmpp_2s_ancestral, family="k-diffusion", nfe=_two, nfe_rule="2*steps - 1",
    nfe_above0=lambda steps, opts: 2 * steps, nfe_rule_above0="2*steps",
    summary="k-diffusion DPM-Solver++(2S) ancestral: 2S step to sigma_down, fresh noise up (eta <= 1)",
    options={"eta": _ETA1, "s_noise": _S_NOISE}, stochastic=_anc_stochastic, default_schedule="karras",
))
register(SolverSpec(
    name="dpmpp-sde", fn=dpmpp_sde, family="k-diffusion", nfe=_two, nfe_rule="2*steps - 1",
    nfe_above0=lambda steps, opts: 2 * steps, nfe_rule_above0="2*steps",
    summary="k-diffusion DPM-Solver++ SDE: two ancestral stages per step (r = 1/2), Brownian-correlated noise",
    options={"eta": _ETA1, "s_noise": _S_NOISE,
             "r": Option(float, 0.5, "intermediate point lambda + r h (k-diffusion r = 1/2)", minimum=0.01, maximum=1.0)},
    stochastic=_anc_stochastic, default_schedule="karras",
))
