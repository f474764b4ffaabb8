"""DEIS family: tAB-DEIS, rhoAB-DEIS, rhoRK-DEIS, iPNDM (sampler_bench/solvers/deis.py).

Ground truth: hand-computed coefficients from the published formulas, and the exact PF-ODE map of
the analytic Gaussian. Convergence is measured at sigma_end = 0.5 > 0 (schedule without the final
step to 0) so the asymptotic order is clean; the final step to 0 is tested separately.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction as Fr

import pytest
import torch

from sampler_bench.errors import BenchError
from sampler_bench.models.analytic import Gaussian
from sampler_bench.models.base import F64, BoundDenoiser, Denoiser, VPTimeMap, as_f64
from sampler_bench.schedules import make_schedule
from sampler_bench.solvers import REGISTRY, get_solver, parse_opts, run_solver, steps_for_nfe
from sampler_bench.solvers import deis as D

MULTISTEP = ["deis-tab0", "deis-tab1", "deis-tab2", "deis-tab3", "deis", "deis-rhoab1", "deis-rhoab2", "deis-rhoab3", "ipndm"]
RK = [f"deis-rhork-{m}" for m in ("euler", "heun", "kutta3", "ral3", "heun3", "vdh3", "ssprk3", "rk4")]
ALL = MULTISTEP + RK


@pytest.fixture(scope="module")
def gauss():
    return Gaussian(shape=(1, 8, 8), rank=4)


def _z(n=2, seed=0):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=F64)


# --------------------------------------------------------------------------------------------
# Toy models with hand-computable answers
# --------------------------------------------------------------------------------------------


class SquareTime(VPTimeMap):
    """sigma(t) = t^2: tAB coefficients int l_j(t) 2t dt are polynomials, integrable by hand."""

    name = "square"

    def sigma(self, t):
        return as_f64(t) ** 2

    def t(self, sigma):
        return torch.sqrt(as_f64(sigma))

    def dsigma_dt(self, t):
        return 2 * as_f64(t)


class EpsOfSigma(Denoiser):
    """eps(x, sigma) = g(sigma) (x-independent), i.e. D = x - sigma g(sigma)."""

    def __init__(self, g, time_map=None):
        self.g, self.time_map = g, time_map

    def denoise(self, x, sigma, labels=None):
        return x - sigma * self.g(sigma)


class LinearEps(Denoiser):
    """eps = k x: dx/dsigma = k x, so one RK step multiplies x by the method's stability polynomial."""

    def __init__(self, k):
        self.k = k

    def denoise(self, x, sigma, labels=None):
        return x - sigma * self.k * x


def _run(fn, model, sigmas, x0=0.0, **kw):
    d = BoundDenoiser(model)
    x = torch.full((1, 1, 1, 1), float(x0), dtype=F64)
    return float(fn(d, x, as_f64(sigmas), noise=None, **kw)), d.calls


# --------------------------------------------------------------------------------------------
# Registry and NFE
# --------------------------------------------------------------------------------------------


def test_registry_names_and_rules():
    for name in ALL:
        assert name in REGISTRY, name
    assert get_solver("deis-tab3").needs_time_map and get_solver("deis").fixed == {"order": 3}
    assert not get_solver("deis-rhoab3").needs_time_map and not get_solver("ipndm").needs_time_map
    assert get_solver("deis-tab2").default_schedule == "time-poly"
    assert get_solver("ipndm").default_schedule == "time-uniform|karras"
    # official rk.py tableaus, all of them
    assert sorted(D.RK_OFFICIAL) == sorted(["1euler", "2heun", "3kutta", "3ral", "3heun", "3vdh", "3ssprk", "4rk"])
    assert get_solver("deis-rhork-kutta3").nfe(7, {}) == 3 * 6 + 1
    assert get_solver("deis-rhork-rk4").nfe_rule == "4*(steps - 1) + 1"
    with pytest.raises(BenchError, match="cannot use exactly 9 NFE"):
        steps_for_nfe(get_solver("deis-rhork-kutta3"), 9, {})


@pytest.mark.parametrize("name", ALL)
def test_nfe_counted_equals_asked(name, gauss):
    spec = get_solver(name)
    opts = parse_opts(spec, None)
    for steps in (1, 2, 5):
        nfe = spec.nfe(steps, opts)
        assert steps_for_nfe(spec, nfe, opts) == steps
        sig = make_schedule(spec.schedule_for(gauss), steps, gauss)
        d = BoundDenoiser(gauss)
        x = run_solver(spec, d, _z() * sig[0], sig, noise=None, opts=opts)  # raises on a count mismatch
        assert d.calls == nfe and bool(torch.isfinite(x).all())


def test_options_validated():
    spec = get_solver("deis-tab3")
    assert parse_opts(spec, ["quad=gauss", "quad_points=100"]) == {"quad": "gauss", "quad_points": 100}
    with pytest.raises(BenchError, match="quad="):
        parse_opts(spec, ["quad=simpson"])
    with pytest.raises(BenchError, match="has no option 'order'"):
        parse_opts(spec, ["order=2"])
    with pytest.raises(BenchError, match="too small"):
        parse_opts(spec, ["quad_points=0"])


def test_tab_refused_without_time_map(gauss):
    from sampler_bench.sampling import RunConfig, plan_run

    m = Gaussian(shape=(1, 8, 8), rank=4)
    m.time_map = None
    with pytest.raises(BenchError, match="native VP time.*deis-rhoab3"):
        plan_run(RunConfig(model="gaussian", solver="deis-tab3", nfe=5, seeds=[0]), model=m)
    with pytest.raises(BenchError, match="no time map"):
        D.deis_tab(BoundDenoiser(m), _z(), as_f64([2.0, 1.0, 0.0]), order=1)
    # rho-space methods run without one
    sig = make_schedule(get_solver("deis-rhoab3").schedule_for(m), 4, m)
    assert get_solver("deis-rhoab3").schedule_for(m) == "karras"
    run_solver(get_solver("deis-rhoab3"), BoundDenoiser(m), _z() * sig[0], sig, noise=None, opts=parse_opts(get_solver("deis-rhoab3"), None))


# --------------------------------------------------------------------------------------------
# Step-by-step agreement with the published formulas (hand-computed)
# --------------------------------------------------------------------------------------------


def _close(got, want, tol):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert [float(v) for v in g] == pytest.approx([float(v) for v in w], abs=tol)


def test_rhoab_coefficients_by_hand():
    """rho grid 4, 2, 1, 0.5; order 2 (warm-up: orders 0, 1, 2). C_ij = int_{rho_i}^{rho_{i+1}} l_j(rho) drho.

    step 0, order 0: [1 - 0 ...] -> C = [2 - 4] = [-2]
    step 1, nodes (2, 4): l_0 = (r-4)/(2-4), l_1 = (r-2)/(4-2); int_2^1 -> [-5/4, 1/4]
    step 2, nodes (1, 2, 4): l_0 = (r-2)(r-4)/3, l_1 = -(r-1)(r-4)/2, l_2 = (r-1)(r-2)/6;
            int_1^{1/2} -> [(79/24 - 128/24)/3, -(34/24 - 44/24)/2, (16/24 - 20/24)/6] = [-49/72, 5/24, -1/36]
    each row sums to rho_{i+1} - rho_i (the Lagrange basis sums to 1).
    """
    want = [[Fr(-2)], [Fr(-5, 4), Fr(1, 4)], [Fr(-49, 72), Fr(5, 24), Fr(-1, 36)]]
    _close(D.rhoab_coefficients([4.0, 2.0, 1.0, 0.5], 2, "gauss"), want, 1e-13)
    # the official left Riemann sum with 10000 points: O(h^2 / N) off
    _close(D.rhoab_coefficients([4.0, 2.0, 1.0, 0.5], 2, "riemann", 10000), want, 5e-4)
    # official rule literally: sum_k l_j(rho_i + k d) d, d = (rho_{i+1} - rho_i) / N, k = 0..N-1 (N = 4 here)
    d = (1.0 - 2.0) / 4
    lj = [sum((2.0 + k * d - 4.0) / (2.0 - 4.0) for k in range(4)) * d, sum((2.0 + k * d - 2.0) / (4.0 - 2.0) for k in range(4)) * d]
    _close(D.rhoab_coefficients([4.0, 2.0, 1.0], 1, "riemann", 4)[1:], [lj], 1e-15)


def test_tab_coefficients_and_steps_by_hand():
    """tAB with sigma(t) = t^2 on the t grid 2, 1.5, 1, 0.5 (sigma 4, 2.25, 1, 0.25), order 3.

    Warm-up: steps 0, 1, 2 use orders 0, 1, 2 (min(i, 3)), so the first step of order 3 is DDIM.
    C_ij = int_{t_i}^{t_{i+1}} l_j(t) sigma'(t) dt, sigma' = 2t:
    step 0: [sigma_1 - sigma_0] = [-7/4]
    step 1, nodes (1.5, 2): l_0 = -2(t-2), l_1 = 2(t-1.5)
            C_0 = -4 [t^3/3 - t^2]_{1.5}^{1} = -11/6,  C_1 = 4 [t^3/3 - 3t^2/4]_{1.5}^{1} = 7/12
    step 2, nodes (1, 1.5, 2): l_0 = 2(t^2 - 3.5t + 3), l_1 = -4(t^2 - 3t + 2), l_2 = 2(t^2 - 2.5t + 1.5)
            C_0 = 4 [t^4/4 - 3.5t^3/3 + 1.5t^2]_1^{0.5} = -65/48, C_1 = -8 [t^4/4 - t^3 + t^2]_1^{0.5} = 7/8,
            C_2 = 4 [t^4/4 - 2.5t^3/3 + 0.75t^2]_1^{0.5} = -13/48
    With eps = g(sigma) = sigma = t^2 (eps values 4, 2.25, 1 at the nodes):
    x1 - x0 = -7/4 * 4 = -7
    x2 - x1 = -11/6 * 9/4 + 7/12 * 4 = -43/24
    x3 - x2 = -65/48 * 1 + 7/8 * 9/4 - 13/48 * 4 = -15/32 (= int_1^{0.5} t^2 2t dt: order 2 in t is exact here)
    """
    tm = SquareTime()
    sig = [4.0, 2.25, 1.0, 0.25]
    want = [[Fr(-7, 4)], [Fr(-11, 6), Fr(7, 12)], [Fr(-65, 48), Fr(7, 8), Fr(-13, 48)]]
    _close(D.tab_coefficients(sig, tm, 3, "gauss"), want, 1e-13)
    _close(D.tab_coefficients(sig, tm, 3, "riemann", 10000), want, 5e-4)
    model = EpsOfSigma(lambda s: s, tm)
    for quad, tol in (("gauss", 1e-13), ("riemann", 2e-3)):
        x, calls = _run(D.deis_tab, model, sig, order=3, quad=quad)
        assert calls == 3
        assert x == pytest.approx(float(Fr(-7) - Fr(43, 24) - Fr(15, 32)), abs=tol)
    # order 0 is exactly DDIM (x + (sigma_{i+1} - sigma_i) eps) even with the official Riemann rule off
    x, _ = _run(D.deis_tab, model, sig, order=0, quad="gauss")
    assert x == pytest.approx(-1.75 * 4 - 1.25 * 2.25 - 0.75 * 1.0, abs=1e-13)


def test_rhoab_steps_by_hand_and_warmup():
    """rhoAB-3 on rho grid 4, 2, 1, 0.5 with eps = sigma^2 (coefficients of test_rhoab_coefficients_by_hand):
    x1 - x0 = -2 * 16 = -32                         (order 0 warm-up: error vs exact -56/3)
    x2 - x1 = -5/4 * 4 + 1/4 * 16 = -1               (order 1 warm-up: exact would be -7/3)
    x3 - x2 = -49/72 * 1 + 5/24 * 4 - 1/36 * 16 = -7/24 (order 2: exact for a quadratic, int_1^{1/2} r^2 dr)
    """
    model = EpsOfSigma(lambda s: s**2)
    x, calls = _run(D.deis_rhoab, model, [4.0, 2.0, 1.0, 0.5], order=3, quad="gauss")
    assert calls == 3 and x == pytest.approx(-32 - 1 - 7 / 24, abs=1e-13)
    assert float(Fr(-49, 72) + Fr(5, 24) * 4 - Fr(1, 36) * 16) == pytest.approx((0.5**3 - 1) / 3, abs=1e-15)


def test_ipndm_steps_by_hand():
    """iPNDM on sigma 4, 2, 1, 0.5, 0.25 with eps = sigma (eps 4, 2, 1, 0.5), official AB weights:
    step 0: -2 * 4                                      = -8
    step 1: -1 * (3*2 - 4)/2                            = -1
    step 2: -1/2 * (23*1 - 16*2 + 5*4)/12              = -11/24
    step 3: -1/4 * (55*0.5 - 59*1 + 37*2 - 9*4)/24     = -13/192
    """
    x, calls = _run(D.ipndm, EpsOfSigma(lambda s: s), [4.0, 2.0, 1.0, 0.5, 0.25])
    assert calls == 4 and x == pytest.approx(float(Fr(-8) - 1 - Fr(11, 24) - Fr(13, 192)), abs=1e-14)


@pytest.mark.parametrize("method", sorted(D.RK_TABLEAUS))
def test_rk_tableaus(method):
    """One step h of an order-p, p-stage explicit RK (p <= 4) on dx/dsigma = k x multiplies x by
    sum_{m <= p} (kh)^m / m!; on dx/dsigma = g(sigma) it integrates polynomials of degree p - 1 exactly."""
    p = D.RK_ORDER[method]
    stages = len(D.RK_TABLEAUS[method][0])
    k, s0, s1 = 0.7, 2.0, 1.5
    z = k * (s1 - s0)
    x, calls = _run(D.deis_rhork, LinearEps(k), [s0, s1], x0=1.0, method=method)
    assert calls == stages
    want = sum(z**m / math.factorial(m) for m in range(p + 1))
    assert x == pytest.approx(want, abs=1e-14)
    assert abs(x - math.exp(z)) > 1e-6  # and not more: the order is exactly p on this problem
    x, _ = _run(D.deis_rhork, EpsOfSigma(lambda s: s ** (p - 1)), [s0, s1], method=method)
    assert x == pytest.approx((s1**p - s0**p) / p, abs=1e-13)


def test_rk_final_step_to_zero_is_euler():
    """To sigma = 0 rhoRK takes one Euler step, which returns D(x, sigma_{N-1}); NFE = stages*(N-1) + 1."""
    k = 0.3
    x, calls = _run(D.deis_rhork, LinearEps(k), [2.0, 1.0, 0.0], x0=1.0, method="kutta3")
    x1 = sum((-k) ** m / math.factorial(m) for m in range(4))
    assert calls == 3 + 1 and x == pytest.approx(x1 - k * x1, abs=1e-14)


def test_tab0_is_ddim(gauss):
    """tAB-DEIS order 0 = DDIM exactly (exponential integrator of a constant eps)."""
    sig = make_schedule("time-poly", 6, gauss)
    x0 = _z() * sig[0]
    a = D.deis_tab(BoundDenoiser(gauss), x0, sig, order=0, quad="gauss")
    b = get_solver("ddim").fn(BoundDenoiser(gauss), x0, sig, eta=0.0)
    assert float((a - b).abs().max()) < 1e-12 * float(b.abs().max())


def test_quadrature_rules_agree(gauss):
    """The official Riemann rule (10000 points) and Gauss-Legendre differ by O(h / N) only, and the
    final step to sigma = 0 is integrated in sigma (finite, sums to -sigma_{N-1})."""
    sig = make_schedule("time-poly", 10, gauss)
    a = D.tab_coefficients(sig, gauss.time_map, 3, "riemann")
    b = D.tab_coefficients(sig, gauss.time_map, 3, "gauss")
    for i, (ra, rb) in enumerate(zip(a, b)):
        assert float(rb.sum()) == pytest.approx(float(sig[i + 1] - sig[i]), rel=1e-12)
        assert float((ra - rb).abs().max()) < 1e-3 * float(rb.abs().max())
    assert torch.equal(a[-1], b[-1])  # step to 0: same (sigma-space Gauss) in both modes


# --------------------------------------------------------------------------------------------
# Convergence on the exact Gaussian
# --------------------------------------------------------------------------------------------


def _error(name, model, steps, sched, opts=None):
    """Relative error at sigma_end (schedule without its final 0) vs the exact ODE map; and calls."""
    spec = get_solver(name)
    o = parse_opts(spec, opts)
    sig = make_schedule(sched, steps + 1, model)[:-1]
    x0 = _z() * sig[0]
    d = BoundDenoiser(model)
    x = spec.fn(d, x0, sig, noise=None, **spec.fixed, **o)
    ref = model.ode_map(x0, sig[0], sig[-1])
    return float((x - ref).norm() / ref.norm()), d.calls


def _slope(name, model, steps_pair, sched, opts=None):
    (e1, n1), (e2, n2) = (_error(name, model, s, sched, opts) for s in steps_pair)
    return math.log(e1 / e2) / math.log(n2 / n1), (n1, n2)


# Theory: a Lagrange extrapolation of degree r gives local error O(h^(r+2)), global O(h^(r+1)).
# Measured on logsnr 80 -> 0.5 at 80 -> 160 steps (observed 1.97/2.93/3.82 for tAB, 1.96/2.91/3.82 for
# rhoAB, 2.01 for iPNDM); tolerance 0.3.
# iPNDM: its fixed AB4 weights assume equal steps; on a non-uniform sigma grid the weight error is
# O(h^2) per unit step, so the global order is 2 (and its AB1 first step alone is O(h^2) globally).
@pytest.mark.parametrize("name,order", [("deis-tab1", 2), ("deis-tab2", 3), ("deis-tab3", 4),
                                        ("deis-rhoab1", 2), ("deis-rhoab2", 3), ("deis-rhoab3", 4), ("ipndm", 2)])
def test_multistep_convergence_order(name, order, gauss):
    slope, (n1, n2) = _slope(name, gauss, (80, 160), "logsnr:sigma_min=0.5,sigma_max=80",
                             {"quad": "gauss"} if get_solver(name).options else None)
    assert (n1, n2) == (80, 160)
    assert abs(slope - order) < 0.3, f"{name}: observed order {slope:.2f}, theory {order}"


# RK of order p: global O(h^p). Measured at 40 -> 80 steps on the same grid (observed 1.00, 2.03,
# 2.93-3.00, 4.01); tolerance 0.15.
@pytest.mark.parametrize("name", RK)
def test_rk_convergence_order(name, gauss):
    spec = get_solver(name)
    stages = len(D.RK_TABLEAUS[spec.fixed["method"]][0])
    slope, (n1, n2) = _slope(name, gauss, (40, 80), "logsnr:sigma_min=0.5,sigma_max=80")
    assert (n1, n2) == (40 * stages, 80 * stages)  # no final step to 0 here: NFE = stages * steps
    order = D.RK_ORDER[spec.fixed["method"]]
    assert abs(slope - order) < 0.15, f"{name}: observed order {slope:.2f}, theory {order}"


@pytest.mark.parametrize("name", ["deis-tab3", "deis-rhoab3"])
def test_warmup_limits_order_to_two(name, gauss):
    """With the official warm-up the first step is order 0 (local error O(h^2)), so when eps is curved
    at the start (sigma_max = 5 here, not 80) orders r >= 2 converge at rate 2 asymptotically
    (observed 2.13 / 2.36 at 32 -> 64 steps), well below r + 1 = 4."""
    slope, _ = _slope(name, gauss, (32, 64), "time-poly:sigma_min=0.5,sigma_max=5", {"quad": "gauss"})
    assert 1.8 < slope < 2.6, slope


def test_final_step_to_zero_by_hand():
    """Multistep methods take the last step to sigma = 0 as a regular step of their order: no model
    call at sigma = 0 (NFE = steps), eps extrapolated down to 0.
    rhoAB-3, rho grid 3, 2, 1, 0, eps = sigma^2 (eps 9, 4, 1):
      step 0: -1 * 9 = -9; step 1, nodes (2, 3): int_2^1 (3 - r) dr = -3/2, int_2^1 (r - 2) dr = 1/2 ->
      -3/2 * 4 + 1/2 * 9 = -3/2; step 2 to 0, order 2, exact for a quadratic: int_1^0 r^2 dr = -1/3.
    tAB-3 with sigma = t^2 on t grid 2, 1.5, 1, 0 and eps = sigma: steps 0, 1 as in
      test_tab_coefficients_and_steps_by_hand (-7, -43/24), step 2 to 0 exact: int_1^0 sigma dsigma = -1/2.
    """
    x, calls = _run(D.deis_rhoab, EpsOfSigma(lambda s: s**2), [3.0, 2.0, 1.0, 0.0], order=3, quad="riemann")
    assert calls == 3 and x == pytest.approx(-9 - 1.5 - 1 / 3, abs=1e-3)
    x, calls = _run(D.deis_rhoab, EpsOfSigma(lambda s: s**2), [3.0, 2.0, 1.0, 0.0], order=3, quad="gauss")
    assert x == pytest.approx(-9 - 1.5 - 1 / 3, abs=1e-13)
    for quad, tol in (("gauss", 1e-13), ("riemann", 2e-3)):
        x, calls = _run(D.deis_tab, EpsOfSigma(lambda s: s, SquareTime()), [4.0, 2.25, 1.0, 0.0], order=3, quad=quad)
        assert calls == 3 and x == pytest.approx(-7 - 43 / 24 - 0.5, abs=tol)
    x, calls = _run(D.ipndm, EpsOfSigma(lambda s: s), [2.0, 1.0, 0.0])
    assert calls == 2 and x == pytest.approx(-1 * 2 - 1 * (3 * 1 - 2) / 2, abs=1e-15)


@pytest.mark.parametrize("name", ["deis-tab2", "deis-rhoab3", "ipndm"])
def test_final_step_to_zero_converges(name):
    """Including the step to 0 on a grid whose last step shrinks too (sigma_i = 2 (1 - i/N)^2) the
    error against the exact map to 0 converges at least at the warm-up-limited rate 2 (observed
    2.53 / 2.34 / 2.09 at 40 -> 80 steps; sigma_max = 2 makes the start curved); tolerance: > 1.8."""
    g = Gaussian(shape=(1, 8, 8), rank=4, iso_var=0.05)
    spec = get_solver(name)
    errs = []
    for n in (40, 80):
        sig = 2.0 * (1 - torch.arange(n + 1, dtype=F64) / n) ** 2
        x0 = _z() * sig[0]
        x = run_solver(spec, BoundDenoiser(g), x0, sig, noise=None, opts=parse_opts(spec, {"quad": "gauss"} if spec.options else None))
        ref = g.ode_map(x0, sig[0], 0.0)
        errs.append(float((x - ref).norm() / ref.norm()))
    assert math.log2(errs[0] / errs[1]) > 1.8, errs


# --------------------------------------------------------------------------------------------
# Schedules: the official DEIS grid
# --------------------------------------------------------------------------------------------


def test_official_time_grid(gauss):
    """get_rev_ts(ts_phase="t", ts_order=2, t0=1e-3, T=1, N=10): 1.0, .8157, ..., .0165, 1e-3 (11 points);
    ours evaluates at the first 10 and replaces the never-evaluated t0 by sigma = 0."""
    sig = make_schedule("time-poly:order=2,t_min=1e-3,t_max=1,endpoint=0", 10, gauss)
    t = gauss.time_map.t(sig[:-1])
    want = [(1 + i / 10 * (math.sqrt(1e-3) - 1)) ** 2 for i in range(10)]
    assert [float(v) for v in t] == pytest.approx(want, rel=1e-10)
    assert float(t[1]) == pytest.approx(0.8157, abs=1e-4) and float(sig[-1]) == 0.0
    # "rho" and "log" phases: EDM rho-grid / log-uniform on N+1 points, last dropped
    k = make_schedule("karras:rho=7,sigma_min=0.002,sigma_max=80,endpoint=0", 4, gauss)
    want = [(80 ** (1 / 7) + i / 4 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7 for i in range(4)]
    assert [float(v) for v in k[:-1]] == pytest.approx(want, rel=1e-12)
    lg = make_schedule("logsnr:endpoint=0", 2, gauss)
    assert [float(v) for v in lg] == pytest.approx([80.0, math.sqrt(80 * 0.002), 0.0], rel=1e-12)
    with pytest.raises(BenchError, match="endpoint"):
        make_schedule("karras:endpoint=2", 4, gauss)


# --------------------------------------------------------------------------------------------
# CLI end-to-end on the default model
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_cli_sample(name, tmp_path):
    from typer.testing import CliRunner

    from sampler_bench.cli import app

    spec = get_solver(name)
    nfe = spec.nfe(3, parse_opts(spec, None))
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["sample", "--solver", name, "--nfe", str(nfe), "--num", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "run.json").read_text())
    assert rec["nfe_counted"] == nfe and rec["resolved"]["steps"] == 3
