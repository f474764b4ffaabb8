"""Step schedules (schedules.py): shape, end points, spacing rules, and their errors."""

from __future__ import annotations

import math

import pytest
import torch

from sampler_bench.errors import BenchError
from sampler_bench.models.analytic import GaussianMixture
from sampler_bench.models.base import F64, Denoiser, DiscreteVP
from sampler_bench.schedules import SCHEDULES, make_schedule, parse_schedule
from sampler_bench.solvers import get_solver


class _NoTimeMap(Denoiser):
    """A pure-EDM style model: continuous sigma, no native VP time."""

    name = "edm-like"
    sigma_min, sigma_max = 0.002, 80.0

    def denoise(self, x, sigma, labels=None):
        return x * 0


class _Discrete(Denoiser):
    """A DDPM-style model: 1000-step linear-beta grid, round_sigma snaps to it."""

    name = "ddpm-like"

    def __init__(self):
        self.time_map = DiscreteVP.linear()
        self.sigma_min = float(self.time_map.sigmas[0])
        self.sigma_max = float(self.time_map.sigmas[-1])

    def round_sigma(self, sigma):
        return self.time_map.round_sigma(sigma)

    def denoise(self, x, sigma, labels=None):
        return x * 0


GMM = GaussianMixture(num_classes=2, per_class=1, shape=(1, 4, 4), rank=2)
CONTINUOUS = ["karras", "logsnr", "time-uniform", "time-quadratic", "time-poly"]  # the official named grids: test_official_grids.py


def _check_shape(sig, n, smax, smin):
    assert sig.dtype == F64 and sig.shape == (n + 1,)
    assert float(sig[-1]) == 0.0
    assert bool((sig[:-1] > 0).all())
    assert bool((sig[1:] < sig[:-1]).all()), "not strictly decreasing"
    assert math.isclose(float(sig[0]), smax, rel_tol=1e-12)
    if n > 1:
        assert math.isclose(float(sig[-2]), smin, rel_tol=1e-9)


@pytest.mark.parametrize("name", CONTINUOUS)
@pytest.mark.parametrize("n", [1, 2, 7, 50])
def test_continuous_schedules_shape_and_end_points(name, n):
    sig = make_schedule(name, n, GMM)
    _check_shape(sig, n, GMM.sigma_max, GMM.sigma_min)


@pytest.mark.parametrize("name", CONTINUOUS)
def test_sigma_range_parameters(name):
    sig = make_schedule(f"{name}:sigma_min=0.01,sigma_max=20", 10, GMM)
    _check_shape(sig, 10, 20.0, 0.01)


def test_karras_formula_and_rho():
    n, smin, smax = 6, GMM.sigma_min, GMM.sigma_max
    for rho in (7.0, 3.0):
        sig = make_schedule(f"karras:rho={rho}", n, GMM)
        i = torch.arange(n, dtype=F64)
        want = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
        assert torch.allclose(sig[:-1], want, rtol=1e-14, atol=0)
    assert not torch.allclose(make_schedule("karras:rho=3", n, GMM), make_schedule("karras", n, GMM))


def test_logsnr_is_uniform_in_log_sigma():
    d = torch.diff(torch.log(make_schedule("logsnr", 12, GMM)[:-1]))
    assert torch.allclose(d, d[0].expand_as(d), rtol=1e-10)


@pytest.mark.parametrize("text,power", [("time-uniform", 1), ("time-quadratic", 2), ("time-poly:order=3", 3)])
def test_time_schedules_are_polynomial_in_native_time(text, power):
    t = GMM.time_map.t(make_schedule(text, 9, GMM)[:-1])
    d = torch.diff(t ** (1 / power))
    assert torch.allclose(d, d[0].expand_as(d), rtol=1e-8)
    assert bool((d < 0).all())


def test_discrete_uniform_on_a_discrete_model():
    m = _Discrete()
    n = 10
    sig = make_schedule("discrete-uniform", n, m)
    assert sig.shape == (n + 1,) and float(sig[-1]) == 0.0
    assert bool((sig[1:] < sig[:-1]).all())
    # every sigma is a grid point, at the integer steps linspace(0, N, n+1, endpoint=False)[::-1][:-1]
    idx = [k * 1000 // (n + 1) for k in range(n + 1)][::-1][:-1]
    assert torch.equal(sig[:-1], m.time_map.sigmas[idx])


def test_time_schedules_snap_to_a_discrete_grid():
    m = _Discrete()
    for name in ("karras", "time-uniform", "logsnr"):
        sig = make_schedule(name, 8, m)
        grid = m.time_map.sigmas
        assert all(bool((grid == s).any()) for s in sig[:-1]), name


@pytest.mark.parametrize("name", [n for n, s in SCHEDULES.items() if s.needs_time_map])
def test_time_schedules_need_a_time_map(name):
    with pytest.raises(BenchError, match="karras") as exc:
        make_schedule(name, 5, _NoTimeMap())
    assert "\n" not in str(exc.value)


def test_discrete_uniform_refused_on_continuous_model():
    with pytest.raises(BenchError, match="discrete-time model"):
        make_schedule("discrete-uniform", 5, GMM)


def test_solver_default_schedule_falls_back_without_time_map():
    ddim = get_solver("ddim")
    assert ddim.schedule_for(GMM) == "time-uniform"
    assert ddim.schedule_for(_NoTimeMap()) == "karras"


def test_too_many_steps_for_a_discrete_grid_is_a_user_error():
    with pytest.raises(BenchError, match="strictly decreasing"):
        make_schedule("karras", 2000, _Discrete())


@pytest.mark.parametrize("text,match", [
    ("nope", "unknown schedule 'nope'"),
    ("karras:rho", "as key=value"),
    ("karras:beta=2", "as key=value; got 'beta=2'"),
    ("karras:rho=abc", "not a number"),
    ("logsnr:rho=7", "as key=value"),
    ("karras:sigma_min=5,sigma_max=1", "need 0 < sigma_min < sigma_max"),
    ("karras:sigma_min=0", "need 0 < sigma_min < sigma_max"),
])
def test_schedule_errors(text, match):
    with pytest.raises(BenchError, match=match) as exc:
        make_schedule(text, 5, GMM)
    assert "\n" not in str(exc.value)


def test_parse_schedule_values_and_step_count():
    assert parse_schedule("karras") == ("karras", {})
    assert parse_schedule("karras:rho=5, sigma_max=10") == ("karras", {"rho": 5.0, "sigma_max": 10.0})
    assert parse_schedule("time-poly:order=3") == ("time-poly", {"order": 3.0})
    with pytest.raises(BenchError, match="at least one step"):
        make_schedule("karras", 0, GMM)
