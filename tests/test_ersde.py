"""ER-SDE-Solver (sampler_bench/solvers/ersde.py): orders, warm-up, VP = VE, official algorithm, moments."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sampler_bench.errors import BenchError
from sampler_bench.models.analytic import Gaussian
from sampler_bench.models.base import BoundDenoiser, DiscreteVP
from sampler_bench.schedules import make_schedule
from sampler_bench.solvers import get_solver, parse_opts, run_solver, steps_for_nfe
from sampler_bench.solvers.ddim import ddim, euler
from sampler_bench.solvers.ersde import PHIS, ersde, phi_integrals, register_phi, resolve_phi, step_coefficients

F64 = torch.float64
torch.set_num_threads(1)  # tiny tensors: extra intra-op threads only contend on a shared machine
ALL_PHIS = ("ode", "sde", "ersde1", "ersde2", "ersde3", "ersde4", "ersde5")


@pytest.fixture(scope="module")
def gauss():
    return Gaussian(shape=(1, 8, 8), rank=4)


@pytest.fixture(scope="module")
def z():
    return torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)


class ListNoise:
    """noise(sigma_from, sigma_to) -> the pre-drawn noise of the step that starts at sigma_from."""

    def __init__(self, sigmas, shape, seed=1):
        g = torch.Generator().manual_seed(seed)
        self.index = {float(s): i for i, s in enumerate(sigmas[:-1])}
        self.eps = torch.randn(len(sigmas) - 1, *shape, generator=g, dtype=F64)
        self.calls = 0

    def __call__(self, s_from, s_to):
        self.calls += 1
        return self.eps[self.index[float(s_from)]]


# -------------------------------------------------------------------------------------------------
# convergence order with the ODE phi (exact Gaussian ODE map, exact integrals n_int=0)
# -------------------------------------------------------------------------------------------------


def _log_grid(n, a=5.0, b=0.2, refined_start=False):
    u = np.linspace(math.log(a), math.log(b), n + 1)
    if refined_start:  # first step of size h^2: its first-order warm-up error is O(h^4)
        h = u[0] - u[1]
        u = np.concatenate([[u[0], u[0] - h * h], u[1:]])
    return torch.tensor(np.exp(u), dtype=F64)


def _ode_err(m, z, order, n, d1="official", refined_start=False):
    sig = _log_grid(n, refined_start=refined_start)
    a, b = float(sig[0]), float(sig[-1])
    x = ersde(BoundDenoiser(m), z * a, sig, order=order, phi="ode", n_int=0, d1=d1)
    return (x - m.ode_map(z * a, a, b)).abs().max().item()


def _observed_order(m, z, order, **kw):
    e32, e64 = _ode_err(m, z, order, 32, **kw), _ode_err(m, z, order, 64, **kw)
    return math.log2(e32 / e64), e64


def test_convergence_order_ode_phi(gauss, z):
    """Theory: ersde-1 order 1, ersde-2 order 2. ersde-3 as the official code writes it is order 2:
    its D1 = (x0_i - x0_{i-1})/(s_i - s_{i-1}) is a first-order estimate of x0'(s_i), so c1*D1
    (c1 = O(h^2)) leaves an O(h^3) local error. With D1 + (s_i - s_{i-1}) D2/2 (d1=quadratic) and a
    warm-up first step made small enough (h^2), it is order 3."""
    p1, _ = _observed_order(gauss, z, 1)
    p2, e2 = _observed_order(gauss, z, 2)
    p3, e3 = _observed_order(gauss, z, 3)
    p3q, e3q = _observed_order(gauss, z, 3, d1="quadratic", refined_start=True)
    assert 0.9 < p1 < 1.1
    assert 1.85 < p2 < 2.2
    assert 1.85 < p3 < 2.3 and e3 < e2
    assert 2.8 < p3q < 3.2 and e3q < 0.1 * e3


def test_n_int_riemann_error_limits_convergence(gauss, z):
    """The official left Riemann sum makes c1 wrong by O(1/N) relative, i.e. an O(h^2/N) local error:
    with a fixed n_int the order-2 solver falls back to order 1 once h is small (paper Fig. 4's knob)."""

    def err(n, n_int):
        sig = _log_grid(n)
        a, b = float(sig[0]), float(sig[-1])
        x = ersde(BoundDenoiser(gauss), z * a, sig, order=2, phi="ode", n_int=n_int)
        return (x - gauss.ode_map(z * a, a, b)).abs().max().item()

    exact = [err(n, 0) for n in (128, 256)]
    riem10 = [err(n, 10) for n in (128, 256)]
    assert 1.9 < math.log2(exact[0] / exact[1]) < 2.1
    assert 0.9 < math.log2(riem10[0] / riem10[1]) < 1.2
    e100, e1000 = err(256, 100), err(256, 1000)
    assert e100 > 2 * exact[1] and abs(e1000 - exact[1]) < 0.2 * (e100 - exact[1])


# -------------------------------------------------------------------------------------------------
# ODE phi, order 1 == Euler == DDIM
# -------------------------------------------------------------------------------------------------


def test_order1_ode_equals_euler_and_ddim(gauss, z):
    sig = make_schedule("karras", 12, gauss)
    x = z * sig[0]
    a = ersde(BoundDenoiser(gauss), x, sig, order=1, phi="ode")
    b = euler(BoundDenoiser(gauss), x, sig)
    c = ddim(BoundDenoiser(gauss), x, sig, eta=0.0)
    scale = a.abs().max().item()
    assert (a - b).abs().max().item() <= 1e-13 * max(scale, 1.0)
    assert (a - c).abs().max().item() <= 1e-13 * max(scale, 1.0)


# -------------------------------------------------------------------------------------------------
# NFE and warm-up
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ersde", "ersde-1", "ersde-2", "ersde-3"])
@pytest.mark.parametrize("phi", ["ode", "ersde5"])
def test_nfe_counted_equals_requested(gauss, name, phi):
    spec = get_solver(name)
    opts = parse_opts(spec, {"phi": phi})
    for nfe in (1, 2, 3, 4, 7):
        steps = steps_for_nfe(spec, nfe, opts)
        sig = make_schedule("karras", steps, gauss)
        d = BoundDenoiser(gauss)
        x = run_solver(spec, d, torch.ones(2, 1, 8, 8, dtype=F64) * sig[0], sig, noise=ListNoise(sig, (2, 1, 8, 8)), opts=opts)
        assert d.calls == nfe and steps == nfe and torch.isfinite(x).all()


def test_warmup_and_terminal_orders(gauss):
    sig = make_schedule("karras", 6, gauss)
    orders = {}
    for name in ("ersde-1", "ersde-2", "ersde-3", "ersde"):
        spec = get_solver(name)
        trace: list = []
        spec.fn(BoundDenoiser(gauss), torch.zeros(1, 1, 8, 8, dtype=F64) + sig[0], sig, noise=ListNoise(sig, (1, 1, 8, 8)),
                trace=trace, **spec.fixed, **parse_opts(spec, {}))
        orders[name] = [t["order"] for t in trace]
        assert trace[-1]["sigma_next"] == 0 and trace[-1]["r"] == 0 and trace[-1]["noise_std"] == 0
    assert orders["ersde-1"] == [1] * 6
    assert orders["ersde-2"] == [1, 2, 2, 2, 2, 1]  # first step order 1, step to sigma=0 order 1
    assert orders["ersde-3"] == orders["ersde"] == [1, 2, 3, 3, 3, 1]
    # ending at sigma > 0 (official VP code ends at lambda(t=0) ~ 0.01): no special last step
    trace = []
    ersde(BoundDenoiser(gauss), torch.zeros(1, 1, 8, 8, dtype=F64), sig[:-1] + 0.0, order=3, phi="ode", trace=trace)
    assert [t["order"] for t in trace] == [1, 2, 3, 3, 3]


def test_stochastic_flag_and_options(gauss):
    spec = get_solver("ersde")
    assert spec.is_stochastic(parse_opts(spec, {})) is True
    assert parse_opts(spec, {})["phi"] == "ersde5" and parse_opts(spec, {})["n_int"] == 100
    assert spec.is_stochastic(parse_opts(spec, ["phi=ode"])) is False
    for p in ALL_PHIS[1:]:
        assert spec.is_stochastic(parse_opts(spec, {"phi": p})) is True
    with pytest.raises(BenchError, match="noise-scale"):
        parse_opts(spec, ["phi=nope"])
    with pytest.raises(BenchError, match="no option"):
        parse_opts(get_solver("ersde-2"), ["d1=quadratic"])  # d1 only exists for order 3
    with pytest.raises(BenchError, match="too small"):
        parse_opts(spec, ["n_int=-1"])
    with pytest.raises(BenchError, match="eta=1"):
        resolve_phi("ersde1", eta=1.0)


def test_custom_phi_python_api(gauss, z):
    sig = make_schedule("karras", 8, gauss)
    ref = ersde(BoundDenoiser(gauss), z * sig[0], sig, phi="ode")
    # a callable, and a registered name: phi = 3 sigma has the same r and c1, c2 as the ODE
    a = ersde(BoundDenoiser(gauss), z * sig[0], sig, phi=lambda s: 3.0 * s)
    register_phi("test-3x", lambda s: 3.0 * s, "3 x", deterministic=True)
    try:
        spec = get_solver("ersde-3")
        opts = parse_opts(spec, ["phi=test-3x"])
        assert not spec.is_stochastic(opts)
        b = run_solver(spec, BoundDenoiser(gauss), z * sig[0], sig, noise=None, opts=opts)
    finally:
        PHIS.pop("test-3x")
    assert torch.allclose(a, ref, rtol=0, atol=1e-12) and torch.allclose(b, ref, rtol=0, atol=1e-12)
    with pytest.raises(BenchError, match="non-decreasing"):  # phi/sigma decreasing: inadmissible
        ersde(BoundDenoiser(gauss), z * sig[0], sig, phi=np.sqrt, noise=lambda *_: torch.zeros_like(z))


def test_phi_formulas_match_official_table():
    x = np.array([0.002, 0.5, 1.0, 7.0, 80.0])
    expect = {
        "ode": x, "sde": x**2, "ersde1": x * (np.exp(-1 / x) + 10), "ersde2": x**1.5, "ersde3": x**2.5,
        "ersde4": x**0.9 * np.log10(1 + 100 * x**1.5), "ersde5": x * (np.exp(x**0.3) + 10),
    }
    for name, val in expect.items():
        np.testing.assert_allclose(resolve_phi(name)(x), val, rtol=1e-15)
    np.testing.assert_allclose(resolve_phi("ersde1", eta=0.5)(x), x * (np.exp(x**-0.5 / -0.5) + 10), rtol=1e-15)


def test_integrals_exact_and_riemann():
    # phi = sigma^2: int_t^s du/u^2 = 1/t - 1/s; int_t^s (u - s)/u^2 du = ln(s/t) + s/s - s/t
    f = resolve_phi("sde")
    s, t = 3.0, 0.7
    i0, i1 = phi_integrals(f, s, t, 0)
    assert i0 == pytest.approx(1 / t - 1 / s, rel=1e-14)
    assert i1 == pytest.approx(math.log(s / t) + 1 - s / t, rel=1e-13)
    # the official 2-point left Riemann sum on [2, 4]: nodes 2, 3, weight 1
    r0, r1 = phi_integrals(f, 4.0, 2.0, 2)
    assert r0 == pytest.approx(1 / 4 + 1 / 9, rel=1e-15) and r1 == pytest.approx(-2 / 4 - 1 / 9, rel=1e-15)


# -------------------------------------------------------------------------------------------------
# step-by-step agreement with the official algorithm, worked out by hand
# -------------------------------------------------------------------------------------------------


def test_official_algorithm_by_hand():
    """1-D data N(0, 1): D(x, s) = x/(1+s^2). phi = sde (s^2), n_int = 2, noise z = 1 every step,
    sigmas 8, 4, 2, 1, 0, x_start = 8 (z0 = 1). With r = t^2/s^2 = 1/4 and var = t^2 (1 - t^2/s^2):
    step 0 (order 1, 8->4): x1 = 8/4 + (3/4)(8/65) + sqrt(12) = 2 + 6/65 + sqrt(12)
    step 1 (order 2, 4->2): Riemann nodes 2, 3 (weight 1): int du/u^2 ~ 1/4 + 1/9 = 13/36,
        c1 = (2-4) + 4*13/36 = -5/9; D1 = (x1/17 - 8/65)/(4-8);
        x2 = x1/4 + (3/4) x1/17 - 5/9 D1 + sqrt(3)
    step 2 (order 3, 2->1): nodes 1, 1.5 (weight 1/2): I0 = (1 + 1/2.25)/2 = 13/18, c1 = -1 + 13/18 = -5/18;
        I1 = ((1-2)/1 + (1.5-2)/2.25)/2 = -11/18, c2 = (1-2)^2/2 - 11/18 = -1/9;
        D1' = (x2/5 - x1/17)/(2-4), D2 = 2 (D1' - D1)/(2-8);
        x3 = x2/4 + (3/4) x2/5 - 5/18 D1' - 1/9 D2 + sqrt(3/4)
    step 3 (1->0, first order, r = 0, var = 0): x4 = x0 = x3/2.
    Evaluated: x1 = 5.556409307445447, x2 = 3.3945903229542846, x3 = 2.26812715001023, x4 = 1.134063575005115.
    d1=quadratic adds c1 (s_i - s_{i-1})/2 D2 = (-5/18)(-1) D2 at step 2: x3 = 2.279709794299528, x4 = 1.139854897149764.
    """
    calls = []

    def denoise(x, s):
        calls.append(x.clone())
        return x / (1 + s**2)

    sig = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.0], dtype=F64)
    trace: list = []
    out = ersde(denoise, torch.full((1, 1, 1, 1), 8.0, dtype=F64), sig, noise=lambda *_: torch.ones(1, 1, 1, 1, dtype=F64),
                order=3, phi="sde", n_int=2, trace=trace)
    states = [c.item() for c in calls]
    assert states[1:] == pytest.approx([5.556409307445447, 3.3945903229542846, 2.26812715001023], rel=1e-14)
    assert out.item() == pytest.approx(1.134063575005115, rel=1e-14)
    assert [t["c1"] for t in trace[1:3]] == pytest.approx([-5 / 9, -5 / 18], rel=1e-14)
    assert trace[2]["c2"] == pytest.approx(-1 / 9, rel=1e-14)
    assert [t["noise_std"] for t in trace] == pytest.approx([math.sqrt(12), math.sqrt(3), math.sqrt(0.75), 0.0], rel=1e-15)
    calls.clear()
    out_q = ersde(denoise, torch.full((1, 1, 1, 1), 8.0, dtype=F64), sig, noise=lambda *_: torch.ones(1, 1, 1, 1, dtype=F64),
                  order=3, phi="sde", n_int=2, d1="quadratic")
    assert out_q.item() == pytest.approx(1.139854897149764, rel=1e-14)


# -------------------------------------------------------------------------------------------------
# VP model == VE model: the official VP formula (alpha/lambda form, eps prediction) vs our sigma-space solver
# -------------------------------------------------------------------------------------------------


def _official_vp(eps_model, x, alphas, vp_sigmas, times, phi, noises, order, n_int=100):
    """The official ``vp_*_order_taylor`` update, transcribed from the published formulas (numpy scalars)."""
    lam = vp_sigmas / alphas
    old_x0 = old_d = None
    N = float(n_int)
    idx = np.arange(n_int, dtype=np.float64)
    for i in range(len(lam) - 1):
        eps = eps_model(x, i)
        x0 = (x - vp_sigmas[i] * eps) / alphas[i]
        r = phi(lam[i + 1]) / phi(lam[i])
        ra = alphas[i + 1] / alphas[i]
        var = lam[i + 1] ** 2 - lam[i] ** 2 * r**2
        var = 0.0 if abs(var) < 1e-6 else var
        nz = noises[i] * math.sqrt(var) * alphas[i + 1]
        base = ra * r * x + alphas[i + 1] * (1 - r) * x0
        if old_x0 is None or order == 1:
            x = base + nz
        else:
            nodes = lam[i + 1] + idx / N * (lam[i] - lam[i + 1])
            s_int = np.sum(1.0 / phi(nodes) * (lam[i] - lam[i + 1]) / N)
            d = (x0 - old_x0) / (lam[i] - lam[i - 1])
            x = base + alphas[i + 1] * (lam[i + 1] - lam[i] + s_int * phi(lam[i + 1])) * d
            if old_d is not None and order == 3:
                s_d_int = np.sum((nodes - lam[i]) / phi(nodes) * (lam[i] - lam[i + 1]) / N)
                dd = 2 * (d - old_d) / (lam[i] - lam[i - 2])
                x = x + alphas[i + 1] * ((lam[i + 1] - lam[i]) ** 2 / 2 + s_d_int * phi(lam[i + 1])) * dd
            x = x + nz
            old_d = d
        old_x0 = x0
    return x


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("phi", ["ersde5", "ode"])
def test_vp_official_equals_sigma_space(gauss, z, order, phi):
    # guided-diffusion grid of the official example: linspace(0, 1000, N+1, endpoint=False, int)[::-1], ends at t=0
    tm = DiscreteVP.linear()
    n = 10
    times = np.linspace(0, 1000, n + 1, endpoint=False).astype(np.int64)[::-1].copy()
    abar = tm.abar.numpy()[times]
    alphas, vp_sig = np.sqrt(abar), np.sqrt(1 - abar)
    lam = torch.tensor(vp_sig / alphas, dtype=F64)  # = our sigma grid; lam[-1] = lambda(t=0) ~ 0.01 > 0
    noises = ListNoise(lam, tuple(z.shape), seed=3)

    def eps_model(x_vp, i):  # a VP eps-prediction network made from the analytic Gaussian
        xs = x_vp / alphas[i]
        return (xs - gauss.denoise(xs, lam[i])) / lam[i]

    x_T = z.clone()  # VP start: x_vp ~ N(0, I)
    ref = _official_vp(eps_model, x_T, alphas, vp_sig, times, resolve_phi(phi), noises.eps, order)
    ours = ersde(BoundDenoiser(gauss), x_T / alphas[0], lam, order=order, phi=phi, noise=noises)
    assert torch.allclose(ours * alphas[-1], ref, rtol=1e-12, atol=1e-12)


def test_discrete_uniform_schedule_is_official_grid(gauss):
    m = Gaussian(shape=(1, 2, 2), rank=1)
    m.time_map = DiscreteVP.linear()
    sig = make_schedule("discrete-uniform", 20, m)
    official_t = [952, 904, 857, 809, 761, 714, 666, 619, 571, 523, 476, 428, 380, 333, 285, 238, 190, 142, 95, 47]
    assert torch.equal(sig[:-1], m.time_map.sigmas[official_t]) and sig[-1] == 0  # first time is 952, not 999
    assert float(sig[0]) == pytest.approx(98.99, abs=0.01)


# -------------------------------------------------------------------------------------------------
# stochastic variants: exact output moments on the Gaussian (the sampler is affine in latent and noises)
# -------------------------------------------------------------------------------------------------


def _output_moments(m, name, phi, nfe):
    """Mean and covariance of the solver's output, exactly: run it on the basis of (z, noise_1..noise_N)."""
    spec = get_solver(name)
    opts = parse_opts(spec, {"phi": phi})
    sig = make_schedule("karras", steps_for_nfe(spec, nfe, opts), m)
    d = m.d
    nblocks = 1 + len(sig) - 1
    B = 1 + d * nblocks
    basis = torch.zeros(B, nblocks, d, dtype=F64)
    basis[1:].view(-1, nblocks * d)[:, :] = torch.eye(nblocks * d, dtype=F64)
    index = {float(s): i for i, s in enumerate(sig[:-1])}

    def noise(s_from, s_to):
        return basis[:, 1 + index[float(s_from)]].reshape(B, *m.image_shape)

    x = run_solver(spec, BoundDenoiser(m), basis[:, 0].reshape(B, *m.image_shape) * sig[0], sig, noise=noise, opts=opts)
    x = x.reshape(B, d)
    mean = x[0]
    cols = x[1:] - mean
    return mean, cols.T @ cols


@pytest.mark.parametrize("name,phi,tol40", [("ersde", "ersde5", 0.03), ("ersde-1", "sde", 0.3), ("ersde-2", "ersde4", 0.03),
                                            ("ersde-3", "ersde3", 0.03)])
def test_stochastic_moments_converge(gauss, name, phi, tol40):
    """Measured (rel. Frobenius cov error at NFE 5/10/20/40): ersde 0.74/0.25/0.045/0.009, ersde-1 sde
    0.86/0.62/0.41/0.24 (first order), ersde-2 ersde4 0.78/0.29/0.052/0.010, ersde-3 ersde3 0.83/0.39/0.036/0.006;
    mean error ~1e-3 (the start at sigma_max = 80 instead of infinity)."""
    mu, cov = gauss.data_moments()
    errs = []
    for nfe in (5, 10, 20, 40):
        mean, c = _output_moments(gauss, name, phi, nfe)
        errs.append(((c - cov).norm() / cov.norm()).item())
        assert ((mean - mu).norm() / mu.norm()).item() < 0.02
    assert all(a > b for a, b in zip(errs, errs[1:])), errs  # falls with NFE
    assert errs[-1] < tol40, errs  # NFE 40


def test_seeded_sampling_matches_exact_moments(gauss):
    """Real per-sample-seeded noise: empirical moments of 1000 samples agree with the exact ones."""
    from sampler_bench.sampling import SeededNoise

    spec = get_solver("ersde")
    opts = parse_opts(spec, {})
    sig = make_schedule("karras", 10, gauss)
    n = 1000
    gens = [torch.Generator().manual_seed(s) for s in range(n)]
    z0 = torch.stack([torch.randn(gauss.image_shape, generator=g) for g in gens]).to(F64)
    x = run_solver(spec, BoundDenoiser(gauss), z0 * sig[0], sig, noise=SeededNoise(gens, gauss.image_shape, "cpu"), opts=opts)
    x = x.reshape(n, -1)
    mean_ex, cov_ex = _output_moments(gauss, "ersde", "ersde5", 10)
    emp_cov = torch.cov(x.T)
    assert ((x.mean(0) - mean_ex).norm() / cov_ex.trace().sqrt()).item() < 4 / math.sqrt(n) * 1.5
    assert ((emp_cov - cov_ex).norm() / cov_ex.norm()).item() < 0.15


# -------------------------------------------------------------------------------------------------
# CLI
# -------------------------------------------------------------------------------------------------


def test_cli_sample_ersde(tmp_path):
    from typer.testing import CliRunner

    from sampler_bench.cli import app

    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["sample", "--solver", "ersde", "--nfe", "20", "--num", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "run.json").read_text())
    assert rec["nfe_counted"] == 20 and rec["resolved"]["steps"] == 20 and rec["resolved"]["stochastic"] is True
    assert rec["resolved"]["options"] == {"phi": "ersde5", "n_int": 100, "eta": 0.0, "d1": "official"}
    assert np.load(out / "samples.npz")["images"].shape[0] == 4
    res = CliRunner().invoke(app, ["sample", "--solver", "ersde-2", "--opt", "phi=bogus", "--nfe", "5", "--num", "2", "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "noise-scale" in res.output
