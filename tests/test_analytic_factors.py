"""The mixture's low-rank formulation (models/analytic.py) against the dense textbook formula.

The dense formula builds ``y = x - mu_k`` for every sample and component (batch x components x
pixels) and ``D_k`` in full; the model never does. Both must agree to float64 rounding of the
magnitudes involved, for the denoiser, the class posterior, the log marginal and the reference ODE.
"""

from __future__ import annotations

import math

import pytest
import torch

from sampler_bench.metrics.exact import reference_ode_solve
from sampler_bench.models.analytic import GaussianMixture
from sampler_bench.models.base import F64


def dense_terms(m, x, sigma):
    """log N(x; mu_k, Sigma_k + sigma^2 I) (B, K) and D_k(x) (B, K, d), materialising B x K x d."""
    b = x.shape[0]
    y = x.reshape(b, 1, m.d).to(F64) - m.mu.unsqueeze(0)
    proj = torch.einsum("bkd,kdr->bkr", y, m.U)
    s2 = torch.as_tensor(sigma, dtype=F64).reshape(-1, 1, 1) ** 2
    lam = m.s.unsqueeze(0) + m.iso_var
    iso = m.iso_var + s2
    maha = (y * y).sum(-1) / iso[..., 0] + (proj**2 * (1 / (lam + s2) - 1 / iso)).sum(-1)
    logdet = (m.d - m.rank) * torch.log(iso[..., 0]) + torch.log(lam + s2).sum(-1)
    logp = -0.5 * (maha + logdet + m.d * math.log(2 * math.pi))
    shrink = m.iso_var / iso
    dk = m.mu.unsqueeze(0) + shrink * y + torch.einsum("bkr,kdr->bkd", (lam / (lam + s2) - shrink) * proj, m.U)
    return logp, dk


def dense_denoise(m, x, sigma, labels=None):
    logp, dk = dense_terms(m, x, sigma)
    logw = logp + m.log_pi
    if labels is not None:
        logw = logw.masked_fill(m.comp_class.unsqueeze(0) != labels.reshape(-1, 1), -math.inf)
    w = torch.softmax(logw, 1)
    return (w.unsqueeze(-1) * dk).sum(1).reshape(x.shape), w


@pytest.fixture(scope="module")
def gmm():
    return GaussianMixture(num_classes=4, per_class=3, shape=(3, 8, 8), rank=5, seed=3)


@pytest.fixture(scope="module")
def noisy(gmm):
    g = torch.Generator().manual_seed(7)
    x0, _ = gmm.sample_data(12, g)
    z = torch.randn(x0.shape, generator=g, dtype=F64)
    return x0, z


SIGMAS = [80.0, 10.0, 2.0, 0.7, 0.2, 0.05, 0.002]


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("labelled", [False, True])
def test_denoiser_and_weights_match_the_dense_formula(gmm, noisy, sigma, labelled):
    x0, z = noisy
    x = x0 + sigma * z
    labels = torch.arange(12) % gmm.num_classes if labelled else None
    d, w = gmm.posterior_denoise(x, torch.tensor(sigma, dtype=F64), labels)
    d_ref, w_ref = dense_denoise(gmm, x, sigma, labels)
    # rounding is relative to the state and, through the weights, to |log p| (~ d / sigma^2 near the data)
    scale = float(x.abs().max()) + 1.0
    assert (d - d_ref).abs().max() <= 1e-12 * scale
    assert (w - w_ref).abs().max() <= 1e-12
    assert torch.equal(gmm.denoise(x, torch.tensor(sigma, dtype=F64), labels), d)
    if labelled:  # masked components get exactly zero weight
        assert float(w.masked_select(gmm.comp_class.unsqueeze(0) != labels.reshape(-1, 1)).abs().max()) == 0.0


def test_per_sample_sigma_and_posterior_match_the_dense_formula(gmm, noisy):
    x0, z = noisy
    sig = torch.tensor(SIGMAS * 2, dtype=F64)[:12]
    x = x0 + sig.reshape(-1, 1, 1, 1) * z
    d_ref, _ = dense_denoise(gmm, x, sig)
    assert (gmm.denoise(x, sig) - d_ref).abs().max() <= 1e-13 * (float(x.abs().max()) + 1)
    logp, _ = dense_terms(gmm, x, sig)
    logw = (logp + gmm.log_pi).reshape(12, gmm.num_classes, gmm.per_class)
    lc = torch.logsumexp(logw, -1)
    ref = lc - torch.logsumexp(lc, -1, keepdim=True)
    lp = gmm.class_log_posterior(x, sig)
    assert ((lp - ref).abs() / ref.abs().clamp_min(1.0)).max() <= 1e-12
    ref_marg = torch.logsumexp(logp + gmm.log_pi, 1)
    assert ((gmm.log_marginal(x, sig) - ref_marg).abs() / ref_marg.abs()).max() <= 1e-13


@pytest.mark.parametrize("sigma", [80.0, 1.0, 0.01])
def test_subspace_reduction_is_exact(gmm, noisy, sigma):
    """On span(Q) the reduced mixture has the same weights and denoiser; off it D only shrinks x."""
    x0, z = noisy
    x = (x0 + sigma * z).reshape(12, -1)
    q, red = gmm.subspace()
    assert q.shape == (gmm.d, gmm.n_components * (gmm.rank + 1))
    assert torch.allclose(q.T @ q, torch.eye(q.shape[1], dtype=F64), atol=1e-13)
    s = torch.tensor(sigma, dtype=F64)
    d_full, w_full = dense_denoise(gmm, x, s)
    d_red, w_red = red.posterior_denoise(x @ q, s)
    assert (w_red - w_full).abs().max() <= 1e-12
    assert (d_red - d_full @ q).abs().max() <= 1e-12 * (float(x.abs().max()) + 1)
    perp = x - (x @ q) @ q.T
    shrink = gmm.iso_var / (gmm.iso_var + sigma**2)
    assert (d_full - (d_full @ q) @ q.T - shrink * perp).abs().max() <= 1e-12 * (float(x.abs().max()) + 1)


def test_reference_ode_matches_a_full_dense_solve(gmm, noisy, monkeypatch):
    _, z = noisy
    x = 80.0 * z[:4]
    labels = torch.tensor([0, 1, 2, 3])
    fast, evals = reference_ode_solve(gmm, x, 80.0, labels)
    # the same solver on all d pixels with the dense textbook denoiser
    monkeypatch.setattr(gmm, "subspace", lambda: (None, gmm))
    monkeypatch.setattr(gmm, "posterior_denoise", lambda xx, s, lab=None: dense_denoise(gmm, xx, s, lab))
    slow, evals_slow = reference_ode_solve(gmm, x, 80.0, labels)
    assert evals > 20 and evals_slow > 20
    assert float((fast - slow).pow(2).mean().sqrt()) <= 1e-6  # both within ~1e-7 of the true solution


@pytest.mark.parametrize("reduced", [True, False], ids=["subspace", "full"])
def test_denoiser_rows_do_not_depend_on_the_batch(gmm, reduced, monkeypatch):
    """Sample i's D(x_i) is bit-identical whatever rows come with it (BLAS would otherwise round a row
    differently for another batch size): the analytic models' run identity leaves the batch size out."""
    if not reduced:
        monkeypatch.setattr(gmm, "subspace", lambda: (None, gmm))
    x = torch.randn(70, *gmm.image_shape, generator=torch.Generator().manual_seed(1), dtype=F64) * 1.5
    labels = torch.arange(70) % gmm.num_classes
    for lab in (None, labels):
        full = gmm.denoise(x, torch.tensor(0.7, dtype=F64), lab)
        for n, off in ((1, 0), (1, 9), (3, 2), (5, 11), (33, 4), (64, 6)):
            part = gmm.denoise(x[off: off + n], torch.tensor(0.7, dtype=F64), None if lab is None else lab[off: off + n])
            assert torch.equal(part, full[off: off + n]), (n, off)
