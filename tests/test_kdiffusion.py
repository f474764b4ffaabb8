"""k-diffusion classics (sampler_bench/solvers/kdiffusion.py) and iPNDM-v (diffsampler.py).

Exact equivalences to float64 rounding with the same noise stream: euler-ancestral = DDIM(eta);
dpm-2-ancestral(eta 0) = dpm-2; dpmpp-2s-ancestral(eta 0) = dpmpp-sde(eta 0) = DPM-Solver++(2S);
iPNDM-v with max_order 1 = euler. Orders (n = 32/64, grid ending above 0): dpm-2 2.01,
dpm-2-ancestral / dpmpp-2s-ancestral / dpmpp-sde at eta 0 2.0; iPNDM-v 2 (its Euler first step).
"""

from __future__ import annotations

import math

import pytest
import torch

from baseline_support import BasisNoise, exact_moments, log_grid, observed_order, run
from baseline_support import gauss, z  # noqa: F401 -- shared fixtures
from baseline_support import close as _close
from sampler_bench.models.analytic import Gaussian
from sampler_bench.models.base import F64, BoundDenoiser, Denoiser
from sampler_bench.schedules import make_schedule
from sampler_bench.solvers import diffsampler as DS
from sampler_bench.solvers import kdiffusion as K



class ListNoise:
    """A fixed stream of draws: call k returns draw k (the same stream for two solvers)."""

    def __init__(self, shape, n=64, seed=3):
        self.eps = torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
        self.calls = 0
        self.sigmas = []

    def __call__(self, s_from, s_to):
        self.sigmas.append((float(s_from), float(s_to)))
        self.calls += 1
        return self.eps[self.calls - 1]


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_euler_ancestral_is_ddim_eta(gauss, z, eta):
    sig = make_schedule("karras", 10, gauss)
    a, b = ListNoise(z.shape), ListNoise(z.shape)
    out, _ = run(gauss, "euler-ancestral", sig, z, {"eta": eta}, noise=a)
    ref, _ = run(gauss, "ddim", sig, z, {"eta": eta}, noise=b)
    assert _close(out, ref) and a.calls == b.calls == 9  # no draw on the step to 0
    assert a.sigmas == [(float(sig[i]), float(sig[i + 1])) for i in range(9)]


@pytest.mark.parametrize("ends_at_zero", [True, False])
def test_eta_0_equivalences(gauss, z, ends_at_zero):
    sig = make_schedule("karras", 8, gauss) if ends_at_zero else log_grid(8)
    assert _close(run(gauss, "dpm-2-ancestral", sig, z, {"eta": 0})[0], run(gauss, "dpm-2", sig, z)[0])
    ref = run(gauss, "dpmpp-2s", sig, z)[0]
    assert _close(run(gauss, "dpmpp-2s-ancestral", sig, z, {"eta": 0})[0], ref)
    assert _close(run(gauss, "dpmpp-sde", sig, z, {"eta": 0})[0], ref)
    assert _close(run(gauss, "euler-ancestral", sig, z, {"eta": 0})[0], run(gauss, "euler", sig, z)[0])


@pytest.mark.parametrize("name,opts", [("dpm-2", None), ("dpm-2-ancestral", {"eta": 0}), ("dpmpp-2s-ancestral", {"eta": 0}),
                                       ("dpmpp-sde", {"eta": 0})])
def test_second_order(gauss, z, name, opts):
    p, _ = observed_order(gauss, name, z, opts)
    assert 1.9 < p < 2.15, p


class Zero(Denoiser):
    image_shape = (1, 2, 2)
    time_map = None
    sigma_min, sigma_max = 0.002, 80.0

    def denoise(self, x, sigma, labels=None):
        return torch.zeros_like(x)


def test_dpmpp_sde_noise_has_the_brownian_correlation():
    """With D = 0 one step is x -> (sd/s) x + su * w; w must be (sqrt(s - s_mid) z1 + sqrt(s_mid - t) z2)/sqrt(s - t),
    the second normalised increment k-diffusion's Brownian tree gives on the nested interval."""
    s, t = 2.0, 0.5
    sig = torch.tensor([s, t], dtype=F64)
    d = 4
    basis = torch.zeros(1 + 3 * d, 3, d, dtype=F64)
    basis[1:].view(-1, 3 * d)[:, :] = torch.eye(3 * d, dtype=F64)
    noise = BasisNoise(basis, (1, 2, 2))
    x = K.dpmpp_sde(BoundDenoiser(Zero()), basis[:, 0].reshape(-1, 1, 2, 2) * s, sig, noise=noise).reshape(-1, d)
    s_mid = math.sqrt(s * t)
    sd, su = K.ancestral_step(s, t)
    assert noise.calls == 2
    coef_z1 = x[1 + d: 1 + 2 * d].diagonal()
    coef_z2 = x[1 + 2 * d:].diagonal()
    assert torch.allclose(coef_z1, torch.full((d,), su * math.sqrt((s - s_mid) / (s - t)), dtype=F64), rtol=1e-13)
    assert torch.allclose(coef_z2, torch.full((d,), su * math.sqrt((s_mid - t) / (s - t)), dtype=F64), rtol=1e-13)
    assert torch.allclose(x[1:1 + d].diagonal(), torch.full((d,), sd, dtype=F64), rtol=1e-13)  # latent: (sd/s) * s


@pytest.mark.parametrize("name,nfes,tol", [("euler-ancestral", (10, 20, 40), 0.3), ("dpm-2-ancestral", (19, 39, 79), 0.07),
                                           ("dpmpp-2s-ancestral", (19, 39, 79), 0.06), ("dpmpp-sde", (19, 39, 79), 0.03),
                                           ("dpm-2", (19, 39, 79), 0.05)])
def test_stochastic_moments(name, nfes, tol):
    """Exact moments on a small Gaussian. Measured rel. Frobenius cov error: euler-ancestral (NFE 10/20/40)
    0.64/0.43/0.25 (first order); at NFE 19/39/79: dpm-2-ancestral 1.5/0.25/0.053, dpmpp-2s-ancestral
    0.38/0.14/0.042, dpmpp-sde 0.26/0.082/0.020, dpm-2 with s_churn = 10 0.52/0.15/0.040."""
    small = Gaussian(shape=(1, 4, 4), rank=2)
    mu, cov = small.data_moments()
    opts = {"s_churn": 10} if name == "dpm-2" else None
    errs = []
    for nfe in nfes:
        mean, c, _ = exact_moments(small, name, nfe, opts)
        errs.append(((c - cov).norm() / cov.norm()).item())
        assert ((mean - mu).norm() / mu.norm()).item() < 0.01
    assert errs[0] > errs[1] > errs[2] and errs[2] < tol, errs


# ---------------------------------------------------------------------------------------------
# iPNDM-v
# ---------------------------------------------------------------------------------------------


def test_ipndm_v_max_order_1_is_euler(gauss, z):
    sig = make_schedule("karras", 9, gauss)
    assert _close(run(gauss, "ipndm-v", sig, z, {"max_order": 1})[0], run(gauss, "euler", sig, z)[0])


def test_ipndm_v_weights_by_hand():
    """Variable-step AB2: (1 + r/2, -r/2), r = h_n / h_{n-1}; uniform steps give AB2, AB3, but order 4
    gives the official [57, -65, 43, -11]/24, not AB4's [55, -59, 37, -9]/24 (its third-moment
    condition fails: the official 4th-order step is third order). The official order-4 weights sum to
    1 + temp2 q (h_{n-2}/h_{n-3} - h_{n-1}/h_{n-2}): 1 only when successive step ratios are equal
    (uniform or geometric grids); order <= 3 weights always sum to 1."""
    assert DS.ipndm_v_coefficients([3.0, 2.0, 1.5], 1, 2) == pytest.approx([1.25, -0.25], abs=1e-15)
    uni = [5.0, 4.0, 3.0, 2.0, 1.0]
    assert DS.ipndm_v_coefficients(uni, 1, 2) == pytest.approx([1.5, -0.5], abs=1e-15)
    assert DS.ipndm_v_coefficients(uni, 2, 3) == pytest.approx([23 / 12, -16 / 12, 5 / 12], abs=1e-15)
    assert DS.ipndm_v_coefficients(uni, 3, 4) == pytest.approx([57 / 24, -65 / 24, 43 / 24, -11 / 24], abs=1e-14)
    geo = [8.0, 4.0, 2.0, 1.0, 0.5]
    assert sum(DS.ipndm_v_coefficients(geo, 3, 4)) == pytest.approx(1.0, abs=1e-14)
    karras = [float(v) for v in make_schedule("karras", 8, Gaussian(shape=(1, 2, 2), rank=1))[:6]]
    assert sum(DS.ipndm_v_coefficients(karras, 2, 3)) == pytest.approx(1.0, abs=1e-14)
    assert abs(sum(DS.ipndm_v_coefficients(karras, 3, 4)) - 1.0) > 1e-4


def test_ipndm_v_order(gauss, z):
    """The Euler first step caps the global order at 2 (measured n = 32 -> 64: max_order 2 1.94,
    3 1.92; max_order 4 is pre-asymptotic there, 3.3, and falls towards 2 by n = 256)."""
    p2, e2 = observed_order(gauss, "ipndm-v", z, {"max_order": 2})
    p3, e3 = observed_order(gauss, "ipndm-v", z, {"max_order": 3})
    _, e4 = observed_order(gauss, "ipndm-v", z)
    assert 1.85 < p2 < 2.2 and 1.85 < p3 < 2.2 and e4 < e3 < e2, (p2, p3, e2, e3, e4)


@pytest.mark.parametrize("name,per_step", [("euler-ancestral", 1), ("dpm-2", 2), ("dpm-2-ancestral", 2), ("dpmpp-2s-ancestral", 2),
                                           ("dpmpp-sde", 2), ("ipndm-v", 1), ("unipc", 1), ("sa-solver", 1)])
def test_nfe_on_grids_ending_above_zero(gauss, z, name, per_step):
    for steps in (1, 2, 5):
        out, calls = run(gauss, name, log_grid(steps), z, noise=ListNoise(z.shape))
        assert calls == per_step * steps and bool(torch.isfinite(out).all()), (name, steps, calls)
