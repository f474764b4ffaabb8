"""Named official grids (official_grids.py, schedules.py): each equals its official formula point for point.

The official formulas are written out here from the official code (DEIS get_rev_ts, DDIM
runners/diffusion.py, diffusers DDIMScheduler.set_timesteps, ER-SDE guided-diffusion example, EDM
generate.py), independently of the implementation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sampler_bench.errors import BenchError
from sampler_bench.models.analytic import Gaussian
from sampler_bench.models.base import F64, DiscreteVP
from sampler_bench.schedules import SCHEDULES, make_schedule


def _discrete():
    m = Gaussian(shape=(1, 2, 2), rank=1)
    m.time_map = DiscreteVP.linear()
    return m


def _continuous():
    return Gaussian(shape=(1, 2, 2), rank=1)  # LinearVP beta 0.1..20, as score_sde VP


def _at(tm, times):
    return tm.sigmas[torch.tensor(list(times), dtype=torch.long)]


def _check(name, n, model, official, *, layout_end):
    """official: the n + 1 (endpoint-0 grids) or n (endpoint-1 grids) sigmas of the official code for n steps."""
    zero = make_schedule(name, n, model, "zero")
    assert float(zero[-1]) == 0.0 and len(zero) == n + 1
    assert torch.equal(zero[:-1], official[:n])
    if layout_end:  # official grid has n + 1 points; "none" keeps the last (never replaced by 0)
        none = make_schedule(name, n, model, "none")
        assert torch.equal(none, official)


@pytest.mark.parametrize("n,k", [(10, 2.0), (7, 2.0), (5, 1.0), (20, 3.0)])
def test_deis_t_grid_is_get_rev_ts(n, k):
    """DEIS get_rev_ts(ts_phase='t'): t_i = (T^(1/k) + i/N (t0^(1/k) - T^(1/k)))^k, i = 0..N, t0 = 1e-3, T = 1."""
    m = _continuous()
    t0, T = 1e-3, 1.0
    ts = np.array([(T ** (1 / k) + i / n * (t0 ** (1 / k) - T ** (1 / k))) ** k for i in range(n + 1)])
    official = m.time_map.sigma(torch.tensor(ts, dtype=F64))
    none = make_schedule(f"deis-t:order={k}", n, m, "none")
    assert torch.allclose(none, official, rtol=1e-14, atol=0)
    zero = make_schedule(f"deis-t:order={k}", n, m, "zero")
    assert torch.allclose(zero[:-1], official[:-1], rtol=1e-14, atol=0) and zero[-1] == 0
    # the same as the documented time-poly spelling with endpoint=0
    same = make_schedule(f"time-poly:order={k},t_min=1e-3,t_max=1,endpoint=0", n, m, "zero")
    assert torch.allclose(same, zero, rtol=1e-13, atol=0)


def test_deis_t_times_match_the_research_notes_example():
    """papers.md B.1.2: t0 = 1e-3, T = 1, N = 10 gives 1.0, .8157, .6502, .5034, .3753, .2661, .1755, .1038, .0508, .0165, .001."""
    m = _continuous()
    t = m.time_map.t(make_schedule("deis-t", 10, m, "none"))
    want = [1.0, .8157, .6502, .5034, .3753, .2661, .1755, .1038, .0508, .0165, .001]
    assert np.allclose(t.numpy(), want, atol=6e-5)


@pytest.mark.parametrize("n", [5, 10, 20, 50, 100])
def test_ddim_uniform_is_range_0_T_T_over_N(n):
    m = _discrete()
    seq = list(range(0, 1000, 1000 // n))  # DDIM skip_type="uniform"
    _check("ddim-uniform", n, m, _at(m.time_map, seq[::-1]), layout_end=False)
    assert seq[-1] == 1000 - 1000 // n and seq[0] == 0  # the last model time is 0: then the step to sigma = 0


def test_ddim_uniform_refuses_a_step_count_the_official_grid_does_not_have():
    with pytest.raises(BenchError, match=r"range\(0, 1000, 1000//15\) has 16 times"):
        make_schedule("ddim-uniform", 15, _discrete())


@pytest.mark.parametrize("n", [5, 10, 20])
def test_ddim_quad_is_official(n):
    m = _discrete()
    seq = [int(s) for s in list(np.linspace(0, np.sqrt(1000 * 0.8), n) ** 2)]  # DDIM skip_type="quad"
    _check("ddim-quad", n, m, _at(m.time_map, seq[::-1]), layout_end=False)
    with pytest.raises(BenchError, match="repeats a time"):
        make_schedule("ddim-quad", 100, m)


def test_diffusers_spacings_written_out():
    """diffusers DDIMScheduler.set_timesteps(10) with num_train_timesteps = 1000, the three spacings."""
    m = _discrete()
    tm = m.time_map
    leading = [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]          # (arange(10) * 100)[::-1] + steps_offset 0
    trailing = [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]        # round(arange(1000, 0, -100)) - 1
    linspace = [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]         # linspace(0, 999, 10).round()[::-1]
    _check("diffusers-leading", 10, m, _at(tm, leading), layout_end=False)
    _check("diffusers-leading:offset=1", 10, m, _at(tm, [t + 1 for t in leading]), layout_end=False)
    _check("diffusers-trailing", 10, m, _at(tm, trailing), layout_end=False)
    _check("diffusers-linspace", 10, m, _at(tm, linspace), layout_end=False)
    # the general formulas at another N
    n = 7
    _check("diffusers-leading", n, m, _at(tm, (np.arange(0, n) * (1000 // n)).round()[::-1].astype(int)), layout_end=False)
    _check("diffusers-trailing", n, m, _at(tm, np.round(np.arange(1000, 0, -1000 / n)).astype(int) - 1), layout_end=False)
    _check("diffusers-linspace", n, m, _at(tm, np.linspace(0, 999, n).round()[::-1].astype(int)), layout_end=False)


def test_ersde_guided_grid_and_its_final_point():
    """linspace(0, 1000, N+1, endpoint=False, int32)[::-1]: N = 20 starts at 952 and ends at t = 0."""
    m = _discrete()
    times = [952, 904, 857, 809, 761, 714, 666, 619, 571, 523, 476, 428, 380, 333, 285, 238, 190, 142, 95, 47, 0]
    _check("ersde-guided", 20, m, _at(m.time_map, times), layout_end=True)
    assert torch.equal(make_schedule("ersde-guided", 20, m, "none"), make_schedule("discrete-uniform", 20, m, "none"))
    assert float(make_schedule("ersde-guided", 20, m, "none")[-1]) == pytest.approx(0.0100, abs=1e-4)  # lambda(0)


@pytest.mark.parametrize("n", [18, 40, 256])
def test_karras_is_edm_generate(n):
    """EDM edm_sampler: (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, i < N, then 0 (rho 7, 0.002..80)."""
    m = Gaussian(shape=(1, 2, 2), rank=1)
    i = torch.arange(n, dtype=F64)
    want = (80 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    got = make_schedule("karras", n, m)
    assert torch.allclose(got[:-1], want, rtol=1e-14, atol=0) and got[-1] == 0
    # final_step none: n + 1 points on the same rule, ending at sigma_min
    none = make_schedule("karras", n, m, "none")
    assert len(none) == n + 1 and float(none[-1]) == pytest.approx(0.002, rel=1e-12) and float(none[0]) == 80.0


def test_named_grids_refuse_the_wrong_kind_of_model():
    with pytest.raises(BenchError, match="continuous VP models"):
        make_schedule("deis-t", 5, _discrete())
    for name in ("ddim-uniform", "ddim-quad", "diffusers-leading", "diffusers-trailing", "diffusers-linspace", "ersde-guided"):
        with pytest.raises(BenchError, match="needs a discrete-time model"):
            make_schedule(name, 5, _continuous())
    assert all(SCHEDULES[n].source for n in ("deis-t", "ddim-uniform", "ddim-quad", "diffusers-leading",
                                             "diffusers-trailing", "diffusers-linspace", "ersde-guided", "karras"))


def test_a_schedule_written_for_the_older_contract_still_works():
    """Older schedule functions returned their n points followed by 0; make_schedule drops that 0."""
    from sampler_bench.schedules import ScheduleSpec

    def old_style(n, model):
        return torch.cat([torch.linspace(80.0, 1.0, n, dtype=F64), torch.zeros(1, dtype=F64)])

    SCHEDULES["old-style-test"] = ScheduleSpec("old-style-test", old_style, {}, "test only")
    try:
        m = Gaussian(shape=(1, 2, 2), rank=1)
        assert torch.equal(make_schedule("old-style-test", 4, m), old_style(4, m))
        assert torch.equal(make_schedule("old-style-test", 4, m, "none"), old_style(5, m)[:-1])
    finally:
        del SCHEDULES["old-style-test"]
