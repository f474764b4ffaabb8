"""Exact mode precision / mode TV for the analytic mixtures (--metrics modes)."""

import numpy as np
import pytest
import torch

from sampler_bench.errors import BenchError
from sampler_bench.metrics import SampleBatch
from sampler_bench.metrics.modes import ModeConsumer
from sampler_bench.models.registry import load_model
from sampler_bench.sampling import RunConfig, run_sample

MODEL = "gmm:shape=3x8x8"


def _feed(model, x, label=None):
    c = ModeConsumer(model, fixed_label=label)
    for i in range(0, len(x), 128):
        xb = x[i: i + 128]
        c.update(SampleBatch(list(range(len(xb))), None, torch.zeros_like(xb), xb, torch.zeros(len(xb), 8, 8, 3, dtype=torch.uint8)))
    return c.result()


@pytest.fixture(scope="module")
def model():
    return load_model(MODEL, device="cpu")


def test_exact_samples_score_the_target_and_the_floor(model):
    x, _ = model.sample_data(2000, generator=torch.Generator().manual_seed(5))
    m = _feed(model, x)
    assert m["mode_precision"] >= 0.995 and m["mode_precision_target"] == 0.999 and m["mode_components"] == 20
    assert abs(m["mode_tv"] - m["mode_tv_floor"]) < 4 * m["mode_tv_std"]
    # one class: the target is that class's components only
    xc, _ = model.sample_data(400, generator=torch.Generator().manual_seed(6), labels=torch.full((400,), 3))
    mc = _feed(model, xc, label=3)
    assert mc["mode_components"] == 2 and mc["mode_precision"] >= 0.99 and abs(mc["mode_tv"] - mc["mode_tv_floor"]) < 4 * mc["mode_tv_std"]


def test_mode_counts_merge_across_processes(model):
    x, _ = model.sample_data(300, generator=torch.Generator().manual_seed(11))
    one = _feed(model, x)
    parts = [ModeConsumer(model, fixed_label=None) for _ in range(3)]
    for i, c in enumerate(parts):
        xb = x[i::3]
        c.update(SampleBatch(list(range(len(xb))), None, torch.zeros_like(xb), xb, torch.zeros(len(xb), 8, 8, 3, dtype=torch.uint8)))
    states = [c.state() for c in parts]
    parts[0].merge(states)
    assert parts[0].result() == one


def test_off_manifold_noise_lowers_precision_and_dropped_modes_raise_tv(model):
    x, _ = model.sample_data(1000, generator=torch.Generator().manual_seed(7))
    noisy = x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)  # doubles the 0.02^2 iso variance
    assert _feed(model, noisy)["mode_precision"] < 0.5
    labels = torch.arange(1000) % 5  # only classes 0-4: half the mass missing
    xh, _ = model.sample_data(1000, generator=torch.Generator().manual_seed(9), labels=labels)
    m = _feed(model, xh)
    assert m["mode_tv"] == pytest.approx(0.5, abs=0.03) and m["mode_tv"] > m["mode_tv_floor"] + 10 * m["mode_tv_std"]


def test_modes_from_the_cli_path_and_refused_without_components(tmp_path):
    rec = run_sample(RunConfig(model=MODEL, solver="euler", nfe=6, seeds=list(range(40)), batch=20, device="cpu", metrics=["modes"]),
                     tmp_path / "run")
    m = rec["metrics"]
    assert 0 <= m["mode_precision"] <= 1 and m["mode_precision_se"] >= 0 and 0 <= m["mode_tv"] <= 1 and "pixel_fd" in m
    with pytest.raises(BenchError, match="--metrics modes needs an analytic mixture"):
        from sampler_bench.metrics import build_consumers

        class NotAnalytic:
            pass

        build_consumers(RunConfig(model="x", metrics=["modes", "none"]), NotAnalytic(), None, {}, [1.0])
