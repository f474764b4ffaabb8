"""Euler / DDIM / EDM samplers and the solver registry, against the Gaussian's exact ODE solution.

Convergence order: every solver here ends with a step to sigma = 0 that returns D(x, sigma_min)
exactly (the Euler step x + (0 - s)(x - D)/s = D). D(., sigma_min) is a fixed linear contraction,
so we keep that final step (we run the real schedule through run_solver, counting NFE) and compare
with D applied to the exact ODE solution at sigma_min: the error then measures the integration
from sigma_max to sigma_min alone, with no constant floor from the last step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sampler_bench.errors import BenchError
from sampler_bench.models.analytic import Gaussian, GaussianMixture
from sampler_bench.models.base import F64, BoundDenoiser
from sampler_bench.sampling import SeededNoise
from sampler_bench.schedules import make_schedule
from sampler_bench.solvers import (REGISTRY, Option, SolverSpec, get_solver, parse_opts, run_solver,
                                   steps_for_nfe)

Z_TOL = 5.0  # Monte-Carlo tolerance, in standard errors


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def gauss():
    return Gaussian(shape=(1, 8, 8), rank=4)


def _solve(model, name, steps, z, raw_opts=None, schedule="karras", noise=None):
    spec = get_solver(name)
    opts = parse_opts(spec, raw_opts)
    sig = make_schedule(schedule, steps, model)
    bound = BoundDenoiser(model)
    out = run_solver(spec, bound, z * sig[0], sig, noise=noise, opts=opts)
    return out, sig, bound.calls


def _exact(model, z, sig):
    smin = sig[-2]
    return model.denoise(model.ode_map(z * sig[0], sig[0], smin), smin)


@pytest.mark.parametrize("name,order", [("euler", 1.0), ("heun", 2.0)])
def test_observed_convergence_order(gauss, name, order):
    """Slope of log RMS error against log NFE over 16..256 steps (errors 1e-2..1e-5, far above float64 noise)."""
    z = torch.randn(8, *gauss.image_shape, generator=gen(0), dtype=F64)
    nfes, errs = [], []
    for steps in (16, 32, 64, 128, 256):
        out, sig, calls = _solve(gauss, name, steps, z)
        err = float((out - _exact(gauss, z, sig)).pow(2).mean().sqrt())
        nfes.append(calls)
        errs.append(err)
    assert min(errs) > 1e-9, f"errors {errs} reach float64 noise: the fit would be meaningless"
    slope = np.polyfit(np.log(nfes), np.log(errs), 1)[0]
    assert abs(-slope - order) < 0.15, f"{name}: observed order {-slope:.3f}, expected {order} (NFE {nfes}, err {errs})"
    assert all(b < a for a, b in zip(errs, errs[1:])), "error must fall monotonically with NFE"


@pytest.mark.parametrize("name", ["euler", "heun", "ddim"])
def test_final_step_returns_the_denoiser_output(gauss, name):
    x = 3.0 * torch.randn(2, *gauss.image_shape, generator=gen(1), dtype=F64)
    sig = torch.tensor([3.0, 0.0], dtype=F64)
    out = get_solver(name).fn(BoundDenoiser(gauss), x, sig, noise=None)
    assert torch.allclose(out, gauss.denoise(x, sig[0]), rtol=0, atol=1e-14)


def test_ddim_eta0_equals_euler():
    model = GaussianMixture(num_classes=3, per_class=2, shape=(3, 8, 8), rank=4)
    z = torch.randn(4, *model.image_shape, generator=gen(2), dtype=F64)
    for schedule in ("karras", "time-uniform"):
        e, _, ne = _solve(model, "euler", 12, z, schedule=schedule)
        d, _, nd = _solve(model, "ddim", 12, z, {"eta": "0"}, schedule=schedule)  # noise=None: must not be drawn
        assert ne == nd == 12
        assert torch.allclose(d, e, rtol=1e-12, atol=1e-12)


def test_ddim_eta0_and_edm_churn0_are_deterministic_versions():
    """edm with S_churn=0 is exactly heun; ddim with eta>0 actually injects noise."""
    model = GaussianMixture(num_classes=3, per_class=2, shape=(1, 8, 8), rank=4)
    z = torch.randn(3, *model.image_shape, generator=gen(3), dtype=F64)
    h, _, _ = _solve(model, "heun", 10, z)
    drawn = []
    e, _, _ = _solve(model, "edm", 10, z, {"S_churn": "0"}, noise=lambda *a: drawn.append(a) or torch.ones_like(z))
    assert torch.equal(h, e)
    assert len(drawn) == 10  # edm_sampler draws on every step, also where gamma = 0 (times 0)
    g = gen(4)
    noise = lambda *a: torch.randn(z.shape, generator=g, dtype=F64)  # noqa: E731
    a, _, _ = _solve(model, "ddim", 10, z, {"eta": "1"}, noise=noise)
    b, _, _ = _solve(model, "ddim", 10, z, {"eta": "1"}, noise=noise)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_ddim_eta_step_is_the_forward_process_posterior(gauss, eta):
    """One DDIM step with eta = 1 is the DDPM posterior q(x_sn | x_s, x0 = D) which, in sigma-space
    (x_s = x_sn + sqrt(s^2 - sn^2) n), has mean x0 + (sn/s)^2 (x_s - x0) and std sn sqrt(s^2 - sn^2) / s;
    eta scales that std, and the deterministic part keeps x_sn's total noise level sn."""
    s, sn = 2.0, 0.7
    x = s * torch.randn(2, *gauss.image_shape, generator=gen(6), dtype=F64)
    z = torch.randn(x.shape, generator=gen(7), dtype=F64)
    out = get_solver("ddim").fn(BoundDenoiser(gauss), x, torch.tensor([s, sn], dtype=F64),
                                noise=lambda *a: z, eta=eta)
    x0 = gauss.denoise(x, torch.tensor(s, dtype=F64))
    std = eta * sn * math.sqrt(s**2 - sn**2) / s
    want = x0 + math.sqrt(sn**2 - std**2) / s * (x - x0) + std * z
    assert torch.allclose(out, want, rtol=0, atol=1e-13)
    if eta == 1.0:
        assert torch.allclose(out, x0 + (sn / s) ** 2 * (x - x0) + std * z, rtol=0, atol=1e-13)


def test_edm_churn_raises_sigma_then_takes_a_heun_step(gauss):
    """Alg. 2, one step: gamma = min(S_churn / N, sqrt 2 - 1) inside [S_min, S_max]; noise std sqrt(s_hat^2 - s^2) S_noise."""
    s, sn = 2.0, 0.7
    x = s * torch.randn(2, *gauss.image_shape, generator=gen(8), dtype=F64)
    z = torch.randn(x.shape, generator=gen(9), dtype=F64)
    sig = torch.tensor([s, sn, 0.0], dtype=F64)[[0, 2]]  # one step, the final one (to sigma = 0)
    sn = 0.0
    fn = get_solver("edm").fn
    out = fn(BoundDenoiser(gauss), x, sig, noise=lambda *a: z, S_churn=0.3, S_min=0.0, S_max=10.0, S_noise=1.01)
    s_hat = s * 1.3
    x_hat = x + math.sqrt(s_hat**2 - s**2) * 1.01 * z
    d = (x_hat - gauss.denoise(x_hat, torch.tensor(s_hat, dtype=F64))) / s_hat
    euler = x_hat + (sn - s_hat) * d  # a single step is the final one: no Heun correction
    assert torch.allclose(out, euler, rtol=0, atol=1e-13)
    # outside [S_min, S_max] there is no churn: the draw (made anyway, as edm_sampler) is multiplied by 0
    out2 = fn(BoundDenoiser(gauss), x, sig, noise=lambda *a: z, S_churn=0.3, S_min=0.0, S_max=1.0, S_noise=1.01)
    assert torch.allclose(out2, x + (sn - s) * (x - gauss.denoise(x, torch.tensor(s, dtype=F64))) / s, rtol=0, atol=1e-13)
    # gamma is capped at sqrt(2) - 1
    out3 = fn(BoundDenoiser(gauss), x, sig, noise=lambda *a: z, S_churn=5.0, S_min=0.0, S_max=10.0, S_noise=1.0)
    s_hat = s * math.sqrt(2)
    x_hat = x + math.sqrt(s_hat**2 - s**2) * z
    euler = x_hat + (sn - s_hat) * (x_hat - gauss.denoise(x_hat, torch.tensor(s_hat, dtype=F64))) / s_hat
    assert torch.allclose(out3, euler, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name,raw,nfe", [("ddim", {"eta": "1"}, 500), ("edm", {}, 499)])
def test_stochastic_samplers_reproduce_the_gaussian(name, raw, nfe):
    """Mean and covariance of n = 2000 samples (d = 16) within 5 standard errors of the exact ones.

    Standard errors are exact for Gaussian samples: se(mean_j) = sqrt(C_jj / n) and
    se(C_jk) = sqrt((C_jj C_kk + C_jk^2) / n). At these NFEs the sampler's own bias (first-order
    weak error, ~3% of the variance for DDPM-ancestral at NFE 500 on the karras schedule; EDM's
    default S_noise = 1.003 adds < 1%) stays below one standard error (~3%).
    """
    model = Gaussian(shape=(1, 4, 4), rank=4, iso_var=0.01)
    n = 2000
    spec = get_solver(name)
    opts = parse_opts(spec, raw)
    assert spec.is_stochastic(opts)
    steps = steps_for_nfe(spec, nfe, opts)
    sig = make_schedule("karras", steps, model)
    g = gen(5)
    noise = lambda *a: torch.randn(n, *model.image_shape, generator=g, dtype=F64)  # noqa: E731
    bound = BoundDenoiser(model)
    x = run_solver(spec, bound, noise() * sig[0], sig, noise=noise, opts=opts).reshape(n, -1)
    assert bound.calls == nfe
    mean, cov = model.data_moments()
    z_mean = (x.mean(0) - mean).abs() / torch.sqrt(torch.diag(cov) / n)
    assert z_mean.max() < Z_TOL, f"mean max z {z_mean.max():.2f}"
    d = torch.diag(cov)
    se = torch.sqrt((d[:, None] * d[None, :] + cov**2) / n)
    z_cov = (torch.cov(x.T) - cov).abs() / se
    assert z_cov.max() < Z_TOL, f"cov max z {z_cov.max():.2f}"


# ------------------------------------------------------------------------------------------------
# NFE rules: counted == asked, for every registered solver
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_nfe_counted_equals_nfe_asked(name):
    spec = get_solver(name)
    opts = parse_opts(spec, None)
    model = GaussianMixture(num_classes=2, per_class=1, shape=(1, 4, 4), rank=2)
    gens = [gen(s) for s in range(2)]
    for steps in range(spec.min_steps, spec.min_steps + 4):
        nfe = spec.nfe(steps, opts)
        assert steps_for_nfe(spec, nfe, opts) == steps
        sig = make_schedule(spec.schedule_for(model), steps, model)
        bound = BoundDenoiser(model)
        z = torch.randn(2, *model.image_shape, generator=gen(steps), dtype=F64)
        out = run_solver(spec, bound, z * sig[0], sig, noise=SeededNoise(gens, model.image_shape, "cpu"), opts=opts)
        assert bound.calls == nfe
        assert out.shape == z.shape and bool(torch.isfinite(out).all())


def test_run_solver_catches_a_miscounting_solver():
    def twice(denoise, x, sigmas, *, noise=None):
        for i in range(len(sigmas) - 1):
            denoise(x, sigmas[i])
            x = denoise(x, sigmas[i])
        return x

    spec = SolverSpec(name="bad", fn=twice, family="test", summary="", nfe=lambda s, o: s, nfe_rule="steps")
    model = Gaussian(shape=(1, 2, 2), rank=1)
    with pytest.raises(RuntimeError, match="made 6 denoiser calls, its NFE rule says 3"):
        run_solver(spec, BoundDenoiser(model), torch.zeros(1, 1, 2, 2, dtype=F64),
                   make_schedule("karras", 3, model), noise=None, opts={})


@pytest.mark.parametrize("name,nfe,nearest", [("heun", 4, "3 or 5"), ("edm", 36, "35 or 37"), ("heun", 2, "1 or 3")])
def test_unreachable_nfe_names_the_nearest_values(name, nfe, nearest):
    spec = get_solver(name)
    with pytest.raises(BenchError, match=f"nearest valid values are {nearest}") as exc:
        steps_for_nfe(spec, nfe, parse_opts(spec, None))
    assert "2*steps - 1" in str(exc.value)


def test_nfe_below_minimum():
    spec = SolverSpec(name="ms3", fn=lambda *a, **k: None, family="test", summary="",
                      nfe=lambda s, o: s + 1, nfe_rule="steps + 1", min_steps=3)
    with pytest.raises(BenchError, match="needs at least 4 NFE .*use --nfe 4 or more"):
        steps_for_nfe(spec, 3, {})
    assert steps_for_nfe(spec, 4, {}) == 3
    assert steps_for_nfe(get_solver("euler"), 7, {}) == 7
    assert steps_for_nfe(get_solver("heun"), 35, {}) == 18
    with pytest.raises(BenchError, match="needs at least 1 NFE"):
        steps_for_nfe(get_solver("euler"), 0, {})


def test_unknown_solver_suggests_close_names():
    with pytest.raises(BenchError, match="unknown solver 'huen'; did you mean heun"):
        get_solver("huen")


# ------------------------------------------------------------------------------------------------
# Options
# ------------------------------------------------------------------------------------------------


def test_option_defaults_and_parsing():
    assert parse_opts(get_solver("ddim"), None) == {"eta": 0.0}
    assert parse_opts(get_solver("ddim"), ["eta=0.5"]) == {"eta": 0.5}
    assert parse_opts(get_solver("ddim"), {"eta": 1}) == {"eta": 1.0}
    edm = parse_opts(get_solver("edm"), [" S_churn = 10 "])
    assert edm == {"S_churn": 10.0, "S_min": 0.05, "S_max": 50.0, "S_noise": 1.003}
    assert parse_opts(get_solver("heun"), []) == {}


@pytest.mark.parametrize("solver,raw,match", [
    ("ddim", ["eta=2"], "too large; use a value <= 1.0"),
    ("ddim", ["eta=-0.5"], "too small; use a value >= 0.0"),
    ("ddim", ["eta=abc"], "eta='abc' is not valid; use a finite number"),
    ("ddim", ["eta"], "not of the form key=value; write e.g. --opt eta=VALUE"),
    ("ddim", ["beta=1"], "has no option 'beta'; its options are: eta"),
    ("heun", ["eta=1"], "has no option 'eta'; its options are: none"),
    ("edm", {"S_churn": "lots"}, "S_churn='lots' is not valid"),
])
def test_option_errors(solver, raw, match):
    with pytest.raises(BenchError, match=match) as exc:
        parse_opts(get_solver(solver), raw)
    assert "\n" not in str(exc.value)


def test_option_types():
    b = Option(bool, False, "flag")
    assert [b.parse("s", "k", v) for v in ("1", "true", "Yes", "off", "0", True)] == [True, True, True, False, False, True]
    with pytest.raises(BenchError, match="use true or false"):
        b.parse("s", "k", "maybe")
    i = Option(int, 3, "order", choices=(1, 2, 3))
    assert i.parse("s", "order", "2") == 2
    with pytest.raises(BenchError, match="use one of 1, 2, 3"):
        i.parse("s", "order", "4")
    with pytest.raises(BenchError, match="not valid"):
        i.parse("s", "order", 2.5)
    with pytest.raises(BenchError, match="not valid"):
        i.parse("s", "order", "2.5")


def test_overhead_benchmark_script_runs_every_solver(tmp_path, capsys):
    """scripts/bench_overhead.py (a benchmark, not a timed test): smoke run on a tiny state."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_overhead.py"
    mod_spec = importlib.util.spec_from_file_location("bench_overhead", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    mod.main(["--batch", "2", "--shape", "1x4x4", "--steps", "3", "--repeats", "1", "--json", str(tmp_path / "o.json")])
    rows = json.loads((tmp_path / "o.json").read_text())["rows"]
    ran = {r["solver"] for r in rows if not r.get("peer")}
    assert "edm-generate loop" in {r["solver"] for r in rows if r.get("peer")}  # the peers side by side
    skipped = {ln.split()[0] for ln in capsys.readouterr().out.splitlines() if " skipped: " in ln}
    assert ran | skipped == set(REGISTRY) and {"euler", "ddim", "heun", "edm"} <= ran
    for r in (r for r in rows if not r.get("peer")):
        spec = REGISTRY[r["solver"]]
        assert r["nfe"] == spec.nfe(r["steps"], parse_opts(spec, r["opts"]))
        assert r["total_s"] >= r["denoiser_s"] + r["noise_s"] > 0
    assert any(r["stochastic"] and r["noise_s"] > 0 for r in rows if r["solver"] == "ddim")
