"""Frechet distance and streaming statistics: closed-form Gaussian cases, low-rank paths, torch-fidelity parity."""

import numpy as np
import pytest

from sampler_bench import _compat  # noqa: F401
from sampler_bench.errors import BenchError
from sampler_bench.metrics.stats import FeatureStats, LowRankCov, few_images_warning, frechet_distance, trace_sqrt_product


def _rand_spd(rng, d, rank=None):
    A = rng.normal(size=(rank or d, d))
    return A.T @ A / d + (0 if rank else 1e-3 * np.eye(d))


def test_commuting_gaussians_closed_form():
    rng = np.random.default_rng(0)
    d = 30
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    S1, S2 = (Q * a) @ Q.T, (Q * b) @ Q.T
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(m1, S1, m2, S2) == pytest.approx(expected, rel=1e-10)


def test_non_commuting_2x2_closed_form():
    # for 2x2 PSD: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) with M = S1 S2
    S1 = np.array([[2.0, 0.7], [0.7, 1.0]])
    S2 = np.array([[0.5, -0.2], [-0.2, 1.5]])
    M = S1 @ S2
    tr_sqrt = np.sqrt(np.trace(M) + 2 * np.sqrt(np.linalg.det(M)))
    expected = 1.0 ** 2 + np.trace(S1) + np.trace(S2) - 2 * tr_sqrt
    assert frechet_distance([1.0, 0.0], S1, [0.0, 0.0], S2) == pytest.approx(expected, rel=1e-12)


def test_identical_and_scaled_isotropic():
    rng = np.random.default_rng(1)
    S = _rand_spd(rng, 40)
    mu = rng.normal(size=40)
    assert abs(frechet_distance(mu, S, mu, S)) < 1e-9
    # N(0, a I) vs N(0, b I): d (sqrt a - sqrt b)^2
    assert frechet_distance(np.zeros(5), 4 * np.eye(5), np.zeros(5), np.eye(5)) == pytest.approx(5.0, rel=1e-12)


def test_matches_torch_fidelity_formula():
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    rng = np.random.default_rng(2)
    d = 64
    X, Y = rng.normal(size=(300, d)), rng.normal(size=(200, d)) @ rng.normal(size=(d, d)) * 0.3 + 0.5
    s1 = {"mu": X.mean(0), "sigma": np.cov(X, rowvar=False)}
    s2 = {"mu": Y.mean(0), "sigma": np.cov(Y, rowvar=False)}
    ref = fid_statistics_to_metric(s1, s2, verbose=False)["frechet_inception_distance"]
    assert frechet_distance(s1["mu"], s1["sigma"], s2["mu"], s2["sigma"]) == pytest.approx(ref, rel=1e-9)


def test_low_rank_paths_equal_dense():
    rng = np.random.default_rng(3)
    d = 50
    A, B = rng.normal(size=(12, d)), rng.normal(size=(20, d))
    S2 = _rand_spd(rng, d)
    dense = trace_sqrt_product(A.T @ A, S2)
    assert trace_sqrt_product(LowRankCov(A), S2) == pytest.approx(dense, rel=1e-7)
    assert trace_sqrt_product(S2, LowRankCov(A)) == pytest.approx(dense, rel=1e-7)
    both = trace_sqrt_product(A.T @ A, B.T @ B)
    assert trace_sqrt_product(LowRankCov(A), LowRankCov(B)) == pytest.approx(both, rel=1e-7)  # dense path: sqrt of ~0 eigenvalues


def test_streaming_stats_equal_numpy_and_fold():
    rng = np.random.default_rng(4)
    d = 16
    X = rng.normal(size=(40, d)) * rng.uniform(0.5, 2, d) + 3.0
    st = FeatureStats(d)
    for i in range(0, 12, 5):  # 12 rows <= d: kept as a factor
        st.update(X[i:min(i + 5, 12)])
    assert isinstance(st.cov(), LowRankCov)
    np.testing.assert_allclose(st.dense_cov(), np.cov(X[:12], rowvar=False), atol=1e-12)
    for i in range(12, 40, 7):
        st.update(X[i:i + 7])
    assert st._rows is None and st.count == 40  # folded: memory d x d from here on
    np.testing.assert_allclose(st.mean(), X.mean(0), rtol=1e-12)
    np.testing.assert_allclose(st.cov(), np.cov(X, rowvar=False), atol=1e-10)
    # FID of a set against itself, low-rank vs dense: ~0
    st2 = FeatureStats(d)
    st2.update(X[:12])
    assert abs(frechet_distance(st2.mean(), st2.cov(), st2.mean(), st2.dense_cov())) < 1e-9


def test_too_few_rows_and_warning():
    st = FeatureStats(4)
    with pytest.raises(BenchError):
        st.mean()
    st.update(np.ones((1, 4)))
    with pytest.raises(BenchError, match="too few"):
        st.cov()
    assert "only 100 images" in few_images_warning(100, 2048)
    assert few_images_warning(50000, 2048) is None
    with pytest.raises(BenchError, match="same feature extractor"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_factor_cov_paths_equal_dense():
    """F F^T + c I (an analytic model's exact covariance) against every other form: the same distance
    as with the dense matrices, whichever side it is on."""
    from sampler_bench.metrics.stats import FactorCov

    rng = np.random.default_rng(5)
    d = 40
    fc = FactorCov(rng.normal(size=(d, 7)) / 3, 0.04)
    dense_f = fc.F @ fc.F.T + 0.04 * np.eye(d)
    assert np.allclose(fc.dense(), dense_f, rtol=0, atol=1e-15) and fc.trace() == pytest.approx(np.trace(dense_f), rel=1e-14)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    for other in (LowRankCov(rng.normal(size=(12, d)) / 4), _rand_spd(rng, d), FactorCov(rng.normal(size=(d, 5)), 0.1)):
        other_dense = other.dense() if isinstance(other, FactorCov) else other  # a LowRankCov stays: its dense form is singular
        want = frechet_distance(m1, dense_f, m2, other_dense)
        assert frechet_distance(m1, fc, m2, other) == pytest.approx(want, rel=1e-11)
        assert frechet_distance(m2, other, m1, fc) == pytest.approx(want, rel=1e-11)
    with pytest.raises(BenchError, match="dimension"):
        frechet_distance(m1, fc, m2[:-1], np.eye(d - 1))


def test_analytic_cov_factor_is_the_data_covariance():
    import torch

    from sampler_bench.models.analytic import GaussianMixture

    m = GaussianMixture(num_classes=3, per_class=2, shape=(2, 4, 4), rank=3)
    for label in (None, 1):
        mean, cov = m.data_moments(label)
        mean_f, F, c = m.data_cov_factor(label)
        assert torch.equal(mean, mean_f)
        assert torch.allclose(F @ F.T + c * torch.eye(m.d, dtype=torch.float64), cov, rtol=0, atol=1e-15)
