"""Exactness of the analytic models (models/analytic.py) and the VP time maps (models/base.py).

Everything here is checked against an independent computation: a tight numerical ODE solve
(scipy), Monte-Carlo posterior means, autograd, finite differences, closed-form VP formulas.
Statistical checks use fixed seeds and a tolerance of 5 Monte-Carlo standard errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from sampler_bench.errors import BenchError
from sampler_bench.models.analytic import Gaussian, GaussianMixture
from sampler_bench.models.base import F64, CosineVP, DiscreteVP, LinearVP

Z_TOL = 5.0  # Monte-Carlo tolerance, in standard errors


@pytest.fixture(scope="module")
def gauss():
    return Gaussian(shape=(1, 8, 8), rank=4)


@pytest.fixture(scope="module")
def gmm():
    # 3 classes x 2 components, 16 dims: small enough for large Monte-Carlo samples
    return GaussianMixture(num_classes=3, per_class=2, shape=(1, 4, 4), rank=3, scale=0.3, iso_var=0.01)


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------
# Gaussian: exact ODE map
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma_a,sigma_b", [(80.0, 0.002), (10.0, 0.05), (1.0, 0.3), (0.01, 5.0)])
def test_ode_map_matches_numerical_ode_solve(gauss, sigma_a, sigma_b):
    """dx/dsigma = (x - D(x, sigma)) / sigma, integrated in u = log sigma with DOP853, rtol 1e-12."""
    x_a = gauss.sample_data(2, gen(1))[0] + sigma_a * torch.randn(2, *gauss.image_shape, generator=gen(2), dtype=F64)
    shape = x_a.shape

    def rhs(u, y):  # dx/du = sigma dx/dsigma = x - D
        x = torch.from_numpy(y).reshape(shape)
        return (x - gauss.denoise(x, torch.tensor(math.exp(u), dtype=F64))).reshape(-1).numpy()

    sol = solve_ivp(rhs, (math.log(sigma_a), math.log(sigma_b)), x_a.reshape(-1).numpy(),
                    method="DOP853", rtol=1e-12, atol=1e-12)
    assert sol.success
    numeric = torch.from_numpy(sol.y[:, -1]).reshape(shape)
    exact = gauss.ode_map(x_a, sigma_a, sigma_b)
    scale = (exact - gauss.mu[0].reshape(1, *gauss.image_shape)).abs().max()
    assert (exact - numeric).abs().max() <= 1e-9 * max(1.0, float(scale))


def test_ode_map_is_a_flow(gauss):
    """Identity at equal sigmas, composes, inverts, and accepts per-sample (B,) sigmas."""
    x = 3.0 * torch.randn(4, *gauss.image_shape, generator=gen(3), dtype=F64)
    assert torch.allclose(gauss.ode_map(x, 3.0, 3.0), x, rtol=0, atol=1e-13)
    via = gauss.ode_map(gauss.ode_map(x, 3.0, 0.7), 0.7, 0.01)
    assert torch.allclose(via, gauss.ode_map(x, 3.0, 0.01), rtol=0, atol=1e-12)
    back = gauss.ode_map(gauss.ode_map(x, 3.0, 0.1), 0.1, 3.0)
    assert torch.allclose(back, x, rtol=0, atol=1e-11)
    per_sample = gauss.ode_map(x, torch.full((4,), 3.0, dtype=F64), torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64))
    for i, s in enumerate((0.1, 0.2, 0.3, 0.4)):
        assert torch.allclose(per_sample[i], gauss.ode_map(x[i:i + 1], 3.0, s)[0], rtol=0, atol=1e-13)


def test_ode_map_to_zero_pushes_the_noise_distribution_to_the_data(gauss):
    """x(sigma) ~ N(mu, Sigma + sigma^2 I) maps to N(mu, Sigma): check along the top eigendirection."""
    n = 20000
    s = 5.0
    x0, _ = gauss.sample_data(n, gen(4))
    xs = x0 + s * torch.randn(x0.shape, generator=gen(5), dtype=F64)
    mapped = gauss.ode_map(xs, s, 0.0).reshape(n, -1) - gauss.mu[0]
    proj = mapped @ gauss.U[0]  # (n, r): variance should be s_k + iso_var
    var = proj.var(0)
    want = gauss.s[0] + gauss.iso_var
    se = want * math.sqrt(2 / (n - 1))
    assert ((var - want).abs() / se).max() < Z_TOL


# ------------------------------------------------------------------------------------------------
# GMM: denoiser, class posterior, data sampler
# ------------------------------------------------------------------------------------------------


def _importance_posterior_mean(model, x_sigma, sigma, n, seed, labels=None):
    """E[x0 | x_sigma] by self-normalised importance sampling with the exact data sampler as proposal.

    Returns the estimate, its delta-method standard error (per coordinate) and the effective sample size.
    """
    x0, _ = model.sample_data(n, gen(seed), labels=labels)
    x0 = x0.reshape(n, -1)
    logw = -0.5 * ((x_sigma.reshape(1, -1) - x0) ** 2).sum(1) / sigma**2
    w = torch.softmax(logw, 0)
    est = (w[:, None] * x0).sum(0)
    se = torch.sqrt((w[:, None] ** 2 * (x0 - est) ** 2).sum(0))
    ess = 1.0 / (w**2).sum()
    return est, se, float(ess)


@pytest.mark.parametrize("sigma", [0.5, 1.5, 4.0])
@pytest.mark.parametrize("label", [None, 1])
def test_gmm_denoiser_matches_monte_carlo_posterior_mean(gmm, sigma, label):
    n = 100_000
    lab = None if label is None else torch.tensor(label)
    x0, _ = gmm.sample_data(1, gen(10), labels=lab)
    x_sigma = x0 + sigma * torch.randn(x0.shape, generator=gen(11), dtype=F64)
    est, se, ess = _importance_posterior_mean(gmm, x_sigma, sigma, n, seed=12, labels=lab)
    assert ess > 500, f"importance sampling too degenerate (ESS {ess:.0f}); the test setup is wrong"
    d = gmm.denoise(x_sigma, torch.tensor(sigma, dtype=F64), None if label is None else torch.tensor([label])).reshape(-1)
    z = (d - est).abs() / se
    assert z.max() < Z_TOL, f"max z {z.max():.2f}"


def test_gmm_denoiser_limits(gmm):
    """D(x, sigma -> 0) = x for x in the data's support region; D(x, huge sigma) = data mean."""
    x0, _ = gmm.sample_data(3, gen(13))
    assert torch.allclose(gmm.denoise(x0, torch.tensor(1e-6, dtype=F64)), x0, atol=1e-8)
    mean, _ = gmm.data_moments()
    far = gmm.denoise(x0, torch.tensor(1e6, dtype=F64))
    assert torch.allclose(far, mean.reshape(1, *gmm.image_shape).expand_as(far), atol=1e-8)


@pytest.mark.parametrize("sigma", [0.01, 0.5, 3.0, 80.0])
def test_gmm_class_posterior_sums_to_one_and_is_bayes(gmm, sigma):
    x0, _ = gmm.sample_data(8, gen(20))
    x = x0 + sigma * torch.randn(x0.shape, generator=gen(21), dtype=F64)
    s = torch.tensor(sigma, dtype=F64)
    lp = gmm.class_log_posterior(x, s)
    assert lp.shape == (8, gmm.num_classes)
    assert torch.allclose(lp.exp().sum(1), torch.ones(8, dtype=F64), rtol=0, atol=1e-12)
    # Bayes: log p(y|x) = log p(x|y) + log p(y) - log p(x), with the exact marginals
    for y in range(gmm.num_classes):
        bayes = gmm.log_marginal(x, s, torch.full((8,), y)) - math.log(gmm.num_classes) - gmm.log_marginal(x, s)
        assert torch.allclose(lp[:, y], bayes, rtol=0, atol=1e-9)


def test_gmm_class_posterior_gradient_matches_autograd_and_finite_differences(gmm):
    sigma = torch.tensor(0.7, dtype=F64)
    x0, _ = gmm.sample_data(4, gen(30))
    x = (x0 + 0.7 * torch.randn(x0.shape, generator=gen(31), dtype=F64)).requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 1])
    lp = gmm.class_log_posterior(x, sigma).gather(1, labels[:, None]).sum()
    (auto,) = torch.autograd.grad(lp, x)
    exact = gmm.class_log_posterior_grad(x.detach(), sigma, labels)
    assert torch.allclose(exact, auto, rtol=1e-8, atol=1e-10)
    # central finite difference along a random direction
    v = torch.randn(x.shape, generator=gen(32), dtype=F64)
    h = 1e-5
    f = lambda xx: gmm.class_log_posterior(xx, sigma).gather(1, labels[:, None])[:, 0]  # noqa: E731
    fd = (f(x.detach() + h * v) - f(x.detach() - h * v)) / (2 * h)
    assert torch.allclose((exact * v).flatten(1).sum(1), fd, rtol=1e-6, atol=1e-8)


def test_gmm_class_posterior_gradient_per_sample_sigma(gmm):
    x0, _ = gmm.sample_data(3, gen(33))
    sig = torch.tensor([0.2, 1.0, 5.0], dtype=F64)
    x = x0 + sig.reshape(-1, 1, 1, 1) * torch.randn(x0.shape, generator=gen(34), dtype=F64)
    labels = torch.tensor([2, 0, 1])
    batched = gmm.class_log_posterior_grad(x, sig, labels)
    for i in range(3):
        one = gmm.class_log_posterior_grad(x[i:i + 1], sig[i], labels[i:i + 1])
        assert torch.allclose(batched[i:i + 1], one, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("label", [None, 2])
def test_gmm_data_sampler_matches_data_moments(gmm, label):
    n = 50_000
    x, labels = gmm.sample_data(n, gen(40), labels=None if label is None else torch.tensor(label))
    x = x.reshape(n, -1)
    mean, cov = gmm.data_moments(label)
    # mean: z-score with the exact variance
    z_mean = (x.mean(0) - mean).abs() / torch.sqrt(torch.diag(cov) / n)
    assert z_mean.max() < Z_TOL, f"mean max z {z_mean.max():.2f}"
    # covariance: standard error of each entry from the sample's own fourth moments (a mixture is not Gaussian)
    xc = x - mean
    emp = xc.T @ xc / n
    prods = xc[:, :, None] * xc[:, None, :]
    se = prods.std(0) / math.sqrt(n)
    z_cov = (emp - cov).abs() / se
    assert z_cov.max() < Z_TOL + 1, f"cov max z {z_cov.max():.2f}"  # 136 entries: a little more room
    if label is None:
        counts = torch.bincount(labels, minlength=gmm.num_classes).to(F64)
        p = 1.0 / gmm.num_classes
        assert ((counts / n - p).abs() / math.sqrt(p * (1 - p) / n)).max() < Z_TOL
    else:
        assert bool((labels == label).all())


def test_gmm_sampler_is_seeded_and_labels_validated(gmm):
    a, la = gmm.sample_data(5, gen(50))
    b, lb = gmm.sample_data(5, gen(50))
    assert torch.equal(a, b) and torch.equal(la, lb)
    with pytest.raises(BenchError, match="out of range"):
        gmm.sample_data(2, gen(0), labels=torch.tensor(3))
    with pytest.raises(BenchError, match="unconditional"):
        Gaussian(shape=(1, 4, 4), rank=2).denoise(torch.zeros(1, 1, 4, 4, dtype=F64), torch.tensor(1.0), torch.tensor([0]))


def test_gaussian_moments_and_means_are_pictures():
    g = Gaussian(shape=(3, 16, 16), rank=8)
    mean, cov = g.data_moments()
    assert torch.equal(mean, g.mu[0])
    want = g.U[0] @ torch.diag(g.s[0]) @ g.U[0].T + g.iso_var * torch.eye(g.d, dtype=F64)
    assert torch.allclose(cov, want, atol=1e-14)
    assert torch.allclose(g.U[0].T @ g.U[0], torch.eye(8, dtype=F64), atol=1e-12)
    # deterministic from the seed, different for another seed, within the image range
    assert torch.equal(Gaussian(shape=(3, 16, 16), rank=8).mu, g.mu)
    assert not torch.equal(Gaussian(shape=(3, 16, 16), rank=8, seed=1).mu, g.mu)
    assert float(g.mu.abs().max()) <= 0.95
    # a picture, not noise: neighbouring pixels are strongly correlated
    img = g.mu[0].reshape(3, 16, 16)
    dx = img[:, :, 1:] - img[:, :, :-1]
    assert float(dx.abs().mean()) < 0.25 * float((img - img.mean()).abs().mean())


@pytest.mark.parametrize("kw,match", [
    ({"shape": (3, 0, 4)}, "shape=3x32x32"), ({"shape": (3, 4)}, "shape"), ({"rank": 0}, "rank=0"),
    ({"per_class": 0}, "per_class=0"), ({"num_classes": -1}, "classes=-1"), ({"iso_var": 0.0}, "iso_var=0.0"),
    ({"scale": -1.0}, "scale"), ({"sigma_min": 5.0, "sigma_max": 1.0}, "0 < sigma_min < sigma_max"),
])
def test_bad_parameters_are_user_errors(kw, match):
    with pytest.raises(BenchError, match=match):
        GaussianMixture(**kw)


# ------------------------------------------------------------------------------------------------
# VP time maps
# ------------------------------------------------------------------------------------------------

TIME_MAPS = {
    "linear": LinearVP(),
    "cosine": CosineVP(),
    "discrete-linear": DiscreteVP.linear(),
    "discrete-cosine": DiscreteVP.cosine(),
}


def _t_grid(tm):
    if tm.discrete:  # inside segments, away from the grid points where sigma(t) has kinks
        return torch.arange(0, tm.num_steps - 1, 37, dtype=F64) + 0.3
    return torch.linspace(1e-3, 0.99, 50, dtype=F64)


@pytest.mark.parametrize("name", list(TIME_MAPS))
def test_time_map_inverts(name):
    tm = TIME_MAPS[name]
    t = _t_grid(tm)
    s = tm.sigma(t)
    assert bool((s[1:] > s[:-1]).all()), "sigma(t) must increase with t"
    assert torch.allclose(tm.t(s), t, rtol=1e-9, atol=1e-9)
    sig = torch.logspace(-2, 1.5, 40, dtype=F64)
    if tm.discrete:
        sig = sig.clamp(float(tm.sigmas[0]), float(tm.sigmas[-1]))
    assert torch.allclose(tm.sigma(tm.t(sig)), sig, rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", list(TIME_MAPS))
def test_time_map_derivative_matches_finite_differences(name):
    tm = TIME_MAPS[name]
    t = _t_grid(tm)
    h = 1e-6 if not tm.discrete else 1e-4
    fd = (tm.sigma(t + h) - tm.sigma(t - h)) / (2 * h)
    assert torch.allclose(tm.dsigma_dt(t), fd, rtol=1e-6, atol=0)


def test_time_maps_match_their_closed_forms():
    t = torch.linspace(0.01, 0.95, 20, dtype=F64)
    lin = LinearVP(0.1, 20.0)
    abar = torch.exp(-(0.1 * t + 0.5 * 19.9 * t**2))
    assert torch.allclose(lin.alpha(t) ** 2, abar, rtol=1e-12)
    cos = CosineVP(0.008)
    f = lambda u: torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert torch.allclose(cos.alpha(t) ** 2, f(t) / f(torch.zeros(1, dtype=F64)), rtol=1e-12)
    disc = DiscreteVP.linear()
    betas = np.linspace(1e-4, 2e-2, 1000)
    abar_d = torch.from_numpy(np.cumprod(1 - betas))
    n = torch.arange(0, 1000, 111)
    assert torch.allclose(disc.sigma(n.to(F64)), torch.sqrt((1 - abar_d[n]) / abar_d[n]), rtol=1e-12)
    # round_sigma snaps to the grid, to the nearest point in log sigma
    probe = disc.sigmas[[5, 500, 999]] * torch.tensor([1.0001, 0.9999, 1.0], dtype=F64)
    assert torch.equal(disc.round_sigma(probe), disc.sigmas[[5, 500, 999]])
