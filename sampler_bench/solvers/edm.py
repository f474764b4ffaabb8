"""EDM samplers (Karras et al. 2022): deterministic Heun (Alg. 1) and stochastic (Alg. 2).

Both take the schedule as given (EDM's is ``karras``, rho = 7) and take a second-order Heun
correction on every step except the last one, to sigma = 0, where the Euler step already returns
D. NFE = 2 * steps - 1, as in EDM's ``generate.py``. EDM's code skips the correction by index
(``i < num_steps - 1``) on a grid that always ends at 0; we skip it where ``sigma_next == 0`` (the
same steps on every EDM grid), so a grid that ends above 0 (``final_step`` none/denoise) gets
full Heun steps throughout: NFE = 2 * steps there.

Noise (Algorithm 2): EDM's ``edm_sampler`` calls ``randn_like`` on every step, also where gamma = 0
(the draw is multiplied by 0). We draw on every step too, one N(0, I) per sample per step in
float64 from the sample's own generator, so with the ``edm-generate`` noise stream a seed gives
EDM's ``generate.py`` image for that seed.
"""

from __future__ import annotations

import math

from sampler_bench.lazy import torch

from sampler_bench.solvers import Option, SolverSpec, host_floats, register


def heun(denoise, x, sigmas, *, noise=None):
    """Karras et al. 2022, Algorithm 1 (deterministic 2nd-order Heun).

    In place in three preallocated buffers, with the operations of the algorithm's expressions in
    their order (bit-identical to them and to ``edm`` with ``S_churn = 0``; tests/test_fused_solvers.py)."""
    n = len(sigmas) - 1
    sig = host_floats(sigmas)  # one device-to-host copy, none per step
    x = x.clone()
    d, d_prime, x_next = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
    for i in range(n):
        h = sig[i + 1] - sig[i]
        torch.sub(x, denoise(x, sigmas[i]), out=d).div_(sigmas[i])
        if sig[i + 1] > 0:  # 2nd-order correction except on a final step to sigma = 0
            torch.add(x, torch.mul(d, h, out=x_next), out=x_next)
            torch.sub(x_next, denoise(x_next, sigmas[i + 1]), out=d_prime).div_(sigmas[i + 1])
            x.add_(d.mul_(0.5).add_(d_prime.mul_(0.5)).mul_(h))  # x + h * (0.5 d + 0.5 d')
        else:
            x.add_(d.mul_(h))
    return x


def edm_stochastic(denoise, x, sigmas, *, noise, S_churn=0.0, S_min=0.0, S_max=float("inf"), S_noise=1.0):
    """Karras et al. 2022, Algorithm 2: churn noise in, then a Heun step from sigma_hat."""
    n = len(sigmas) - 1
    sig = host_floats(sigmas)  # one device-to-host copy: the churn window and last-step tests use host floats
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        gamma = min(S_churn / n, math.sqrt(2) - 1) if S_min <= sig[i] <= S_max else 0.0
        s_hat = denoise.round_sigma(s + gamma * s)
        # drawn on every step, also where gamma = 0, exactly as edm_sampler (keeps the per-seed streams aligned)
        x = x + (s_hat**2 - s**2).sqrt() * S_noise * noise(s, s_hat)
        d = (x - denoise(x, s_hat)) / s_hat
        x_next = x + (s_next - s_hat) * d
        if sig[i + 1] > 0:
            d_prime = (x_next - denoise(x_next, s_next)) / s_next
            x_next = x + (s_next - s_hat) * (0.5 * d + 0.5 * d_prime)
        x = x_next
    return x


_heun_nfe = lambda steps, opts: 2 * steps - 1  # noqa: E731
_heun_nfe_above0 = lambda steps, opts: 2 * steps  # noqa: E731

register(SolverSpec(
    name="heun", fn=heun, family="edm", nfe=_heun_nfe, nfe_rule="2*steps - 1",
    nfe_above0=_heun_nfe_above0, nfe_rule_above0="2*steps",
    summary="EDM deterministic Heun, Karras et al. 2022 Alg. 1; order 2",
    default_schedule="karras",
))
register(SolverSpec(
    name="edm", fn=edm_stochastic, family="edm", nfe=_heun_nfe, nfe_rule="2*steps - 1",
    nfe_above0=_heun_nfe_above0, nfe_rule_above0="2*steps",
    summary="EDM stochastic sampler, Karras et al. 2022 Alg. 2 (S_churn, S_min, S_max, S_noise)",
    options={
        "S_churn": Option(float, 40.0, "total churn (EDM ImageNet setting: 40)", minimum=0.0),
        "S_min": Option(float, 0.05, "lowest sigma that gets churn", minimum=0.0),
        "S_max": Option(float, 50.0, "highest sigma that gets churn (inf: no upper bound, EDM's generate.py default)", minimum=0.0, allow_inf=True),
        "S_noise": Option(float, 1.003, "noise inflation", minimum=0.0),
    },
    stochastic=True,
    default_schedule="karras",
))
