"""Exact metrics for analytic models: reference ODE solver accuracy, ODE error, pixel Frechet distance."""

import math

import pytest
import torch

from sampler_bench.errors import BenchError
from sampler_bench.metrics.exact import data_floor_stats, pixel_fd, reference_ode_solve
from sampler_bench.models.registry import load_model
from sampler_bench.sampling import RunConfig, run_sample

SMALL_GMM = "gmm:shape=3x8x8"


def _z(n, seed=0):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_reference_solver_integrates_gaussian_to_its_exact_map():
    g = load_model("gaussian:shape=3x8x8")
    z = _z(4)
    # switch_tol < 0: never hand over to the closed form early, integrate numerically down to sigma=1e-6
    x0, evals = reference_ode_solve(g, 80 * z, 80.0, switch_tol=-1.0)
    exact = g.ode_map(80 * z, 80.0, 0.0)
    assert evals > 50 and float((x0 - exact).pow(2).mean().sqrt()) < 2e-6


def test_reference_solver_on_mixture_is_converged():
    m = load_model(SMALL_GMM)
    z = _z(4, 1)
    x0, ev = reference_ode_solve(m, 80 * z, 80.0)
    tight, ev_t = reference_ode_solve(m, 80 * z, 80.0, rtol=1e-9, atol=1e-10)
    assert ev < ev_t and float((x0 - tight).pow(2).mean().sqrt()) < 5e-6
    labels = torch.tensor([0, 3, 3, 9])
    xl, _ = reference_ode_solve(m, 80 * z, 80.0, labels)
    # with labels each sample ends in a component of its class
    d = ((xl.reshape(4, 1, -1) - m.mu.unsqueeze(0)) ** 2).sum(-1)
    assert (m.comp_class[d.argmin(1)] == labels).all()


def _run(tmp_path, name, **kw):
    cfg = RunConfig(**{"model": SMALL_GMM, "seeds": list(range(8)), "batch": 8, "device": "cpu", **kw})
    return run_sample(cfg, tmp_path / name)


def test_heun_converges_to_the_reference_ode_solution(tmp_path):
    lo = _run(tmp_path, "lo", solver="heun", nfe=5)["metrics"]
    hi = _run(tmp_path, "hi", solver="heun", nfe=79)["metrics"]
    assert hi["ode_rms_error"] < 2e-3 and hi["ode_rms_error"] < lo["ode_rms_error"] / 10
    assert hi["ode_rms_error_max"] >= hi["ode_rms_error"] and "Dormand-Prince" in hi["ode_reference"]
    # pixel Frechet distance: converged sampler near the finite-sample floor, a crude one far above
    assert hi["pixel_fd"] < 1.5 * hi["pixel_fd_floor"] and lo["pixel_fd"] > hi["pixel_fd"]


def test_gaussian_uses_exact_map_and_stochastic_solvers_skip_ode_error(tmp_path):
    g = _run(tmp_path, "g", model="gaussian:shape=3x8x8", solver="euler", nfe=200)["metrics"]
    assert g["ode_reference"] == "exact map (Gaussian)" and g["ode_rms_error"] < 5e-3
    st = _run(tmp_path, "st", solver="ddim", nfe=10, opts={"eta": "1"})["metrics"]
    assert "pixel_fd" in st and "ode_rms_error" not in st
    with pytest.raises(BenchError, match="deterministic solver"):
        _run(tmp_path, "st2", solver="ddim", nfe=10, opts={"eta": "1"}, metrics=["ode-error"])
    rec = _run(tmp_path, "none", solver="euler", nfe=3, metrics=["none"])
    assert "metrics" not in rec and not (tmp_path / "none" / "metrics.json").exists()
    with pytest.raises(BenchError, match="add --fid"):
        _run(tmp_path, "kid", solver="euler", nfe=3, metrics=["kid"])


def test_pixel_fd_of_exact_samples_is_at_the_floor_and_class_target(tmp_path):
    m = load_model(SMALL_GMM)
    a, b = data_floor_stats(m, 64, None, seed=1), data_floor_stats(m, 64, None, seed=2)
    fa, fb = pixel_fd(m, a, None), pixel_fd(m, b, None)
    assert 0 < fa < 1.5 * fb and 0 < fb < 1.5 * fa
    # exact moments against themselves: 0; a wrong class is far off
    from sampler_bench.metrics.stats import frechet_distance

    mu, cov = (t.numpy() for t in m.data_moments(3))
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-10 * cov.trace()
    c3 = data_floor_stats(m, 64, 3, seed=1)
    assert pixel_fd(m, c3, 3) < pixel_fd(m, c3, 5) / 3
    rec = _run(tmp_path, "c3", solver="heun", nfe=19, class_label="3", metrics=["pixel-fd"])["metrics"]
    assert rec["pixel_fd_target"] == "class 3" and "ode_rms_error" not in rec and math.isfinite(rec["pixel_fd"])


def test_reference_solutions_are_cached_across_runs(monkeypatch):
    """Cells of a sweep share latents: the second consumer reuses the first one's reference solve."""
    import sampler_bench.metrics.exact as exact
    from sampler_bench.metrics import SampleBatch

    m = load_model(SMALL_GMM)
    z = _z(3, seed=5)
    batch = SampleBatch(seeds=[7, 8, 9], labels=None, z=z, x=torch.zeros_like(z),
                        images=torch.zeros(3, 8, 8, 3, dtype=torch.uint8))
    from sampler_bench.metrics import exact_cache

    exact_cache.clear_memory()
    calls = []
    real = exact.reference_ode_solve
    monkeypatch.setattr(exact, "reference_ode_solve", lambda *a, **k: calls.append(1) or real(*a, **k))
    sig = torch.tensor([80.0, 1.0, 0.0], dtype=torch.float64)
    first = exact.ExactMetricsConsumer(m, sig, fixed_label=None, want_fd=False, want_ode=True)
    first.update(batch)
    second = exact.ExactMetricsConsumer(m, sig, fixed_label=None, want_fd=False, want_ode=True)
    second.update(batch)
    assert len(calls) == 1
    assert first.result()["ode_rms_error"] == second.result()["ode_rms_error"] > 0
    # a different start sigma is a different reference
    third = exact.ExactMetricsConsumer(m, torch.tensor([40.0, 0.0], dtype=torch.float64),
                                       fixed_label=None, want_fd=False, want_ode=True)
    third.update(batch)
    assert len(calls) == 2


def test_floor_is_an_average_over_draws_with_its_spread():
    from sampler_bench.metrics.exact import floor_draws

    m = load_model(SMALL_GMM)
    n = 40
    singles = [pixel_fd(m, data_floor_stats(m, n, None, seed=12345 + k), None) for k in range(floor_draws(n))]
    cfg = RunConfig(model=SMALL_GMM, solver="heun", nfe=35, seeds=list(range(n)), metrics=["pixel-fd"])
    assert floor_draws(n) == 8 and floor_draws(50_000) == 1
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        rec = run_sample(cfg, f"{d}/run")
    met = rec["metrics"]
    assert met["pixel_fd_floor"] == pytest.approx(sum(singles) / len(singles), rel=1e-12)
    assert met["pixel_fd_floor_std"] > 0 and met["pixel_fd_std"] == met["pixel_fd_floor_std"]
    # the draws really differ (a single fixed draw would make the spread meaningless)
    assert max(singles) - min(singles) > 0
