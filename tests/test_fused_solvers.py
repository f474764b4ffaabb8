"""The in-place solver updates (issue 19.3) against the textbook expressions they replace.

Each reference below is the out-of-place formula (a temporary per term, ``x + sum(c * e)``); the
registered solvers work in preallocated buffers but perform the same float64 operations in the same
order, so the results must be bit-identical, on every family, warm-up and final step included.
"""

from __future__ import annotations

import pytest
import torch

from sampler_bench.models.analytic import GaussianMixture
from sampler_bench.models.base import F64, BoundDenoiser
from sampler_bench.schedules import make_schedule
from sampler_bench.solvers import get_solver, parse_opts, run_solver
from sampler_bench.solvers.deis import (RK_TABLEAUS, ipndm_coefficients, rhoab_coefficients, tab_coefficients)


def ref_euler(denoise, x, sigmas):
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x = x + (s_next - s) * ((x - denoise(x, s)) / s)
    return x


def ref_ddim0(denoise, x, sigmas):
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, s)
        x = x0 + (s_next / s) * (x - x0)
    return x


def ref_heun(denoise, x, sigmas):
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = (x - denoise(x, s)) / s
        x_next = x + (s_next - s) * d
        if i < n - 1:
            d_prime = (x_next - denoise(x_next, s_next)) / s_next
            x_next = x + (s_next - s) * (0.5 * d + 0.5 * d_prime)
        x = x_next
    return x


def ref_multistep(denoise, x, sigmas, coefs):
    hist = []
    for i, c in enumerate(coefs):
        hist.insert(0, (x - denoise(x, sigmas[i])) / sigmas[i])
        del hist[len(c):]
        x = x + sum(float(cj) * e for cj, e in zip(c, hist))
    return x


def ref_rhork(denoise, x, sigmas, method):
    c, a, b = RK_TABLEAUS[method]
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        h = s_next - s
        k = [(x - denoise(x, s)) / s]
        if s_next == 0:
            x = x + h * k[0]
            continue
        for st in range(1, len(c)):
            xs = x + h * sum(a[st - 1][j] * k[j] for j in range(st))
            k.append((xs - denoise(xs, s + c[st] * h)) / (s + c[st] * h))
        x = x + h * sum(bj * kj for bj, kj in zip(b, k))
    return x


@pytest.fixture(scope="module")
def model():
    return GaussianMixture(num_classes=3, per_class=2, shape=(3, 8, 8), rank=4)


CASES = [("euler", {}, ref_euler), ("ddim", {}, ref_ddim0), ("heun", {}, ref_heun)]
CASES += [(f"deis-tab{r}", {}, lambda d, x, s, r=r: ref_multistep(d, x, s, tab_coefficients(s, d.time_map, r))) for r in range(4)]
CASES += [(f"deis-rhoab{r}", {}, lambda d, x, s, r=r: ref_multistep(d, x, s, rhoab_coefficients(s, r))) for r in range(1, 4)]
CASES += [("ipndm", {}, lambda d, x, s: ref_multistep(d, x, s, ipndm_coefficients(s)))]
CASES += [(f"deis-rhork-{m}", {}, lambda d, x, s, m=m: ref_rhork(d, x, s, m)) for m in RK_TABLEAUS]


FMA = {f"deis-tab{r}" for r in range(4)} | {f"deis-rhoab{r}" for r in range(1, 4)} | {"ipndm"}


@pytest.mark.parametrize("name,opts,ref", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("steps", [2, 7])
def test_in_place_solver_matches_the_textbook_update(model, name, opts, ref, steps):
    spec = get_solver(name)
    sigmas = make_schedule(spec.schedule_for(model), steps, model)
    z = torch.randn(4, *model.image_shape, generator=torch.Generator().manual_seed(steps), dtype=F64)
    x_start = z * sigmas[0]
    keep = x_start.clone()
    got = run_solver(spec, BoundDenoiser(model), x_start, sigmas, noise=None, opts=parse_opts(spec, opts))
    assert torch.equal(x_start, keep), "the solver must not overwrite its input"
    want = ref(BoundDenoiser(model), keep.clone(), sigmas)
    if name in FMA:  # fused multiply-adds: one rounding per term instead of two (deis.py _multistep)
        # rounding is relative to the largest state the sum passes through (x_start = sigma_max z)
        err = float((got - want).abs().max() / keep.abs().max())
        assert 0 < err <= steps * 8 * 2.0**-52, err  # > 0: the fused path is the one that ran
    else:
        assert torch.equal(got, want)


def ref_ersde(denoise, x, sigmas, noise, order, d1="official", phi="ersde5"):
    """The textbook ER-SDE step, out of place (one temporary per term), as the solver read before."""
    from sampler_bench.solvers.ersde import resolve_phi, step_coefficients

    sig = [float(v) for v in sigmas]
    x0_prev = d1_prev = None
    for i, c in enumerate(step_coefficients(sig, resolve_phi(phi, 0.0), order)):
        x0 = denoise(x, sigmas[i])
        x_new = c.r * x + (1.0 - c.r) * x0
        dx0 = None
        if c.order >= 2:
            dx0 = (x0 - x0_prev) / (sig[i] - sig[i - 1])
            x_new = x_new + c.c1 * dx0
        if c.order >= 3:
            d2 = 2.0 * (dx0 - d1_prev) / (sig[i] - sig[i - 2])
            x_new = x_new + c.c2 * d2
            if d1 == "quadratic":
                x_new = x_new + c.c1 * ((sig[i] - sig[i - 1]) / 2) * d2
        if c.std > 0:
            x_new = x_new + c.std * noise(sigmas[i], sigmas[i + 1])
        x, x0_prev, d1_prev = x_new, x0, dx0
    return x


@pytest.mark.parametrize("name,opts", [("ersde", {}), ("ersde-1", {}), ("ersde-2", {}), ("ersde-3", {"d1": "quadratic"}),
                                       ("ersde-3", {"phi": "ode"})], ids=["ersde", "1", "2", "3-quadratic", "3-ode"])
@pytest.mark.parametrize("final_step", ["zero", "none"])
def test_in_place_ersde_is_bit_identical_to_the_textbook_update(model, name, opts, final_step):
    from sampler_bench.sampling import SeededNoise

    spec = get_solver(name)
    o = parse_opts(spec, opts)
    sigmas = make_schedule(spec.schedule_for(model), 7, model, final_step=final_step)
    seeds = [3, 4, 5, 6]

    def run(fn):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        z = torch.stack([torch.randn(model.image_shape, generator=g, dtype=F64) for g in gens])
        return fn(z * sigmas[0], SeededNoise(gens, model.image_shape, "cpu"))

    inputs = []

    def ours(x, n):
        inputs.append((x, x.clone()))
        return run_solver(spec, BoundDenoiser(model), x, sigmas, noise=n, opts=o, final_step=final_step)

    got = run(ours)
    assert torch.equal(*inputs[0]), "the solver must not overwrite its input"
    want = run(lambda x, n: ref_ersde(BoundDenoiser(model), x, sigmas, n, spec.fixed["order"], o.get("d1", "official"), o["phi"]))
    assert torch.equal(got, want)
