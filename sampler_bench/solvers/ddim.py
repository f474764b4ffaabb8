"""DDIM (Song et al. 2021) in sigma-space: Euler on the probability-flow ODE, and DDIM with eta.

In sigma-space (x = x_vp / alpha) the DDIM update with eta = 0 is exactly the Euler step of
dx/dsigma = (x - D(x, sigma)) / sigma, whatever the VP schedule (DDIM paper eq. 12-14, rewritten as
in Karras et al. 2022, Sec. 3). With eta > 0 the DDIM step (eq. 12 with sigma_t(eta) of eq. 16)
becomes, dividing by sqrt(abar_next):

    s     = eta * sigma_next * sqrt(sigma^2 - sigma_next^2) / sigma    # fresh-noise std
    x_new = D + sqrt(sigma_next^2 - s^2) * (x - D) / sigma + s * z

which is independent of the VP schedule. eta = 1 is DDPM's ancestral sampler. The last step, to
sigma = 0, returns D. NFE = steps.
"""

from __future__ import annotations

from sampler_bench.lazy import torch

from sampler_bench.solvers import Option, SolverSpec, host_floats, register


def euler(denoise, x, sigmas, *, noise=None):
    """Euler on the PF-ODE (= DDIM, eta = 0): Karras et al. 2022, Alg. 1 without the correction.

    In place in two preallocated buffers, with the operations of ``x + (s' - s) * (x - D) / s``
    (bit-identical, tested)."""
    sig = host_floats(sigmas)  # one device-to-host copy, none per step
    x, d = x.clone(), torch.empty_like(x)
    for i in range(len(sigmas) - 1):
        x.add_(torch.sub(x, denoise(x, sigmas[i]), out=d).div_(sigmas[i]).mul_(sig[i + 1] - sig[i]))
    return x


def ddim(denoise, x, sigmas, *, noise=None, eta=0.0):
    """DDIM with eta (Song et al. 2021, eq. 12 and 16), in sigma-space."""
    sig = host_floats(sigmas)  # one device-to-host copy, none per step
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, s)
        if eta == 0 or sig[i + 1] == 0:
            x = (x - x0).mul_(s_next / s).add_(x0)  # x0 + (s_next / s) (x - x0), in one buffer
            continue
        s_up = eta * s_next * torch.sqrt((s**2 - s_next**2).clamp(min=0)) / s
        s_up = torch.minimum(s_up, s_next)
        x = x0 + torch.sqrt(s_next**2 - s_up**2) * (x - x0) / s + s_up * noise(s, s_next)
    return x


_steps = lambda steps, opts: steps  # noqa: E731

register(SolverSpec(
    name="euler", fn=euler, family="ddim", nfe=_steps, nfe_rule="steps",
    summary="Euler on the probability-flow ODE in sigma-space (= DDIM eta=0); order 1",
    default_schedule="karras",
))
register(SolverSpec(
    name="ddim", fn=ddim, family="ddim", nfe=_steps, nfe_rule="steps",
    summary="DDIM (Song et al.); eta=0 deterministic (order 1), eta>0 stochastic (eta=1: ancestral DDPM)",
    options={"eta": Option(float, 0.0, "noise level: 0 = deterministic DDIM, 1 = DDPM ancestral", minimum=0.0, maximum=1.0)},
    stochastic=lambda opts: opts.get("eta", 0.0) > 0,
    default_schedule="time-uniform|karras",
))
