"""UniPC (sampler_bench/solvers/unipc.py) and SA-Solver (sasolver.py) on the exact Gaussian.

Orders on log-sigma grids ending above 0 with lower_order_final off (it lowers the last step to
order 1, which caps the global order at 2) and a refined first step where the warm-up would cap it.
Measured (n = 32/64, refined): UniPC-1 2.05, UniPC-2 3.04, UniPC-3 3.91, UniP-3 (no corrector) 3.19;
SA-Solver (eta = 0) is UniPC: predictor p + corrector p + 1 reproduces UniPC-p to rounding.
"""

from __future__ import annotations

import pytest
import torch

from baseline_support import exact_moments, log_grid, observed_order, run
from baseline_support import gauss, z  # noqa: F401 -- shared fixtures
from baseline_support import close as _close
from sampler_bench.models.analytic import Gaussian
from sampler_bench.models.base import F64
from sampler_bench.schedules import make_schedule
from sampler_bench.solvers import sasolver as S
from sampler_bench.solvers import unipc as U



NO_LOF = {"lower_order_final": False}


@pytest.mark.parametrize("ends_at_zero", [True, False])
def test_order_1_without_corrector_is_ddim(gauss, z, ends_at_zero):
    sig = make_schedule("karras", 10, gauss) if ends_at_zero else log_grid(10)
    ref, _ = run(gauss, "ddim", sig, z)
    for pred in ("data", "noise"):
        for variant in ("bh1", "bh2"):
            out, _ = run(gauss, "unipc", sig, z, {"order": 1, "corrector": False, "pred": pred, "variant": variant})
            assert _close(out, ref), (pred, variant)
    out, _ = run(gauss, "sa-solver", sig, z, {"eta": 0, "predictor_order": 1, "corrector_order": 0})
    assert _close(out, ref)


@pytest.mark.parametrize("order,lo,hi,refined", [(1, 1.9, 2.2, False), (2, 2.85, 3.25, False), (3, 3.7, 4.2, True)])
def test_unipc_with_corrector_has_order_p_plus_1(gauss, z, order, lo, hi, refined):
    p, _ = observed_order(gauss, "unipc", z, {"order": order, **NO_LOF}, refined_start=refined)
    assert lo < p < hi, p


def test_predictor_alone_has_order_p(gauss, z):
    p2, _ = observed_order(gauss, "unipc", z, {"order": 2, "corrector": False, **NO_LOF})
    p3, _ = observed_order(gauss, "unipc", z, {"order": 3, "corrector": False, **NO_LOF}, refined_start=True)
    assert 1.85 < p2 < 2.2 and 2.85 < p3 < 3.4, (p2, p3)


def test_variants_and_noise_prediction_converge(gauss, z):
    for opts in ({"order": 3, "variant": "bh2"}, {"order": 3, "pred": "noise"}, {"order": 3, "pred": "noise", "variant": "bh2"}):
        p, _ = observed_order(gauss, "unipc", z, {**opts, **NO_LOF}, refined_start=True)
        assert 3.5 < p < 4.3, (opts, p)


def test_lower_order_final_caps_the_order_at_2(gauss, z):
    p, _ = observed_order(gauss, "unipc", z, {"order": 3}, refined_start=True)
    assert 1.85 < p < 2.2, p


def test_rhos_by_hand():
    """UniC-1 uses rho = 1/2; UniP-2 uses rho = 1/2 (official simplified forms); order 3 solves R rho = b."""
    rp, rc, h_phi_1, b_h = U.unipc_rhos([1.0], 0.3, 1, True, "bh1")
    assert rp == [] and rc == [0.5] and b_h == -0.3 and h_phi_1 == pytest.approx(-0.2591817793182821, abs=1e-15)
    rp, rc, _, _ = U.unipc_rhos([-1.0, 1.0], 0.3, 2, True, "bh2")
    assert rp == [0.5] and len(rc) == 2
    rp, rc, _, b_h = U.unipc_rhos([-1.0, -2.0, 1.0], 0.2, 3, False, "bh1")
    assert len(rp) == 2 and len(rc) == 3 and b_h == 0.2


def test_corrector_costs_no_extra_call(gauss, z):
    sig = make_schedule("logsnr", 7, gauss)
    for corr in (True, False):
        _, calls = run(gauss, "unipc", sig, z, {"corrector": corr})
        assert calls == 7


@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize("ends_at_zero", [True, False])
def test_sa_solver_with_tau_0_is_unipc(gauss, z, p, ends_at_zero):
    """With tau = 0, SA-Predictor-p + SA-Corrector-(p+1) (exact Lagrange integrals, the official
    order-2 modification) equals UniPC-p (bh1 solves the same conditions; rho = 1/2 at order 2)."""
    sig = make_schedule("logsnr", 9, gauss) if ends_at_zero else log_grid(9)
    for lof in (True, False):
        sa, _ = run(gauss, "sa-solver", sig, z, {"eta": 0, "predictor_order": p, "corrector_order": p + 1, "lower_order_final": lof})
        un, _ = run(gauss, "unipc", sig, z, {"order": p, "lower_order_final": lof})
        assert _close(sa, un, 1e-11), (p, lof)


def test_sa_coefficients_by_hand():
    """tau = 0, one node: b_0 = int e^{lam - lam_t} = 1 - e^{-h}; two nodes sum to the same; tau = 1: 1 - e^{-2h}."""
    import math

    assert S.sa_coefficients([0.0], 0.0, 0.4, 0.0) == pytest.approx([-math.expm1(-0.4)], abs=1e-15)
    assert sum(S.sa_coefficients([0.0, -0.3], 0.0, 0.4, 0.0)) == pytest.approx(-math.expm1(-0.4), abs=1e-15)
    assert S.sa_coefficients([0.0], 0.0, 0.4, 1.0) == pytest.approx([-math.expm1(-0.8)], abs=1e-15)


def test_sa_tau_window(gauss, z):
    """Noise is drawn only on steps that start inside [tau_sigma_min, tau_sigma_max]."""
    sig = make_schedule("karras", 12, gauss)
    starts = []

    def noise(s_from, s_to):
        starts.append(float(s_from))
        return torch.zeros_like(z)

    run(gauss, "sa-solver", sig, z, noise=noise)
    inside = [float(s) for s in sig[:-2] if S._TAU_LO <= float(s) <= S._TAU_HI]
    assert starts == inside and len(inside) > 0
    assert (S._TAU_LO, S._TAU_HI) == (0.7204, 25.1085)


def test_sa_solver_reproduces_gaussian_moments():
    """Exact moments (affine in latent and noises). Measured rel. Frobenius cov error at NFE 10/20/40/80:
    2.4/0.050/0.00087/0.00070 (the ODE steps outside the tau window dominate at high NFE)."""
    small = Gaussian(shape=(1, 4, 4), rank=2)
    mu, cov = small.data_moments()
    errs = []
    for nfe in (10, 20, 40):
        mean, c, _ = exact_moments(small, "sa-solver", nfe, max_draws_per_step=1)
        errs.append(((c - cov).norm() / cov.norm()).item())
        assert ((mean - mu).norm() / mu.norm()).item() < 0.01
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.002, errs
