"""The exact metrics' cache (metrics/exact_cache.py): same values as uncached, keyed, checksummed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sampler_bench.metrics.exact as exact
from sampler_bench.metrics import SampleBatch, exact_cache
from sampler_bench.models.registry import load_model

SMALL = "gmm:shape=3x8x8,classes=3"


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMPLER_BENCH_EXACT_CACHE", str(tmp_path / "cache"))
    exact_cache.clear_memory()
    yield tmp_path / "cache"
    exact_cache.clear_memory()


@pytest.fixture()
def solves(monkeypatch):
    calls = []
    real = exact.reference_ode_solve
    monkeypatch.setattr(exact, "reference_ode_solve", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    return calls


def _batch(seeds, labels=None, z_seed=None):
    g = torch.Generator().manual_seed(seeds[0] if z_seed is None else z_seed)
    z = torch.randn(len(seeds), 3, 8, 8, generator=g, dtype=torch.float64)
    return SampleBatch(seeds=list(seeds), labels=labels, z=z, x=torch.zeros_like(z),
                       images=torch.zeros(len(seeds), 8, 8, 3, dtype=torch.uint8))


def _ref(model, batch, sigma0=80.0):
    c = exact.ExactMetricsConsumer(model, torch.tensor([sigma0, 0.0], dtype=torch.float64), fixed_label=None,
                                   want_fd=False, want_ode=True)
    return c._ode_reference(batch), c


def test_cached_reference_equals_uncached_from_memory_and_disk(cache_dir, solves):
    m = load_model(SMALL)
    b = _batch([3, 4, 5], torch.tensor([0, 2, 1]))
    direct, evals = exact.reference_ode_solve(m, 80.0 * b.z, 80.0, b.labels)  # uncached
    solves.clear()
    first, c1 = _ref(m, b)
    assert solves == [80.0] and c1.ref_sources == {"computed": 1} and c1.ref_evals == evals
    assert torch.equal(first, direct)
    again, c2 = _ref(m, b)
    assert c2.ref_sources == {"memory": 1} and torch.equal(again, direct)
    exact_cache.clear_memory()  # a new process: from disk, bit-identical
    disk, c3 = _ref(load_model(SMALL), b)
    assert c3.ref_sources == {"disk": 1} and torch.equal(disk, direct) and c3.ref_evals == evals
    assert solves == [80.0] and len(list(cache_dir.glob("odref-*.npz"))) == 1


def test_every_key_change_invalidates_the_reference(cache_dir, solves):
    m = load_model(SMALL)
    _ref(m, _batch([3, 4]))
    _ref(m, _batch([3, 4]))
    assert len(solves) == 1
    variants = [
        (m, _batch([3, 5]), 80.0),  # seeds
        (m, _batch([3, 4], torch.tensor([1, 1])), 80.0),  # labels
        (m, _batch([3, 4], torch.tensor([1, 2])), 80.0),  # other labels
        (m, _batch([3, 4]), 79.0),  # sigma_0
        (load_model(SMALL + ",scale=0.13"), _batch([3, 4]), 80.0),  # a model parameter describe() omits
        (load_model(SMALL + ",seed=1"), _batch([3, 4]), 80.0),  # the model's components
        (m, _batch([3, 4], z_seed=99), 80.0),  # same seeds, other latents (another noise stream)
    ]
    for i, (model, batch, s0) in enumerate(variants):
        exact_cache.clear_memory()
        _ref(model, batch, s0)
        assert len(solves) == 2 + i, f"variant {i} reused a reference with another key"
    assert len(list(cache_dir.glob("odref-*.npz"))) == 1 + len(variants)


def test_a_corrupted_or_foreign_entry_is_recomputed(cache_dir, solves):
    m = load_model(SMALL)
    b = _batch([7, 8])
    good, _ = _ref(m, b)
    (path,) = cache_dir.glob("odref-*.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["x0"] = arrays["x0"] + 1e-3  # silently changed values: the checksum no longer matches
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    exact_cache.clear_memory()
    again, c = _ref(m, b)
    assert c.ref_sources == {"computed": 1} and torch.equal(again, good) and len(solves) == 2
    path.write_bytes(b"not an npz")  # a truncated / foreign file
    exact_cache.clear_memory()
    again, c = _ref(m, b)
    assert c.ref_sources == {"computed": 1} and torch.equal(again, good) and len(solves) == 3


def test_pixel_fd_floor_is_computed_once_per_model_n_label(cache_dir, monkeypatch):
    m = load_model(SMALL)
    direct = [exact.pixel_fd(m, exact.data_floor_stats(m, 20, 1, seed=12345 + k), 1) for k in range(exact.floor_draws(20))]
    calls = []
    real = exact.data_floor_stats
    monkeypatch.setattr(exact, "data_floor_stats", lambda *a, **k: calls.append(1) or real(*a, **k))
    floors, src = exact.pixel_fd_floor(m, 20, 1)
    assert src == "computed" and floors == pytest.approx(direct, rel=1e-12, abs=0) and len(calls) == len(direct)
    assert exact.pixel_fd_floor(m, 20, 1) == (floors, "memory")
    exact_cache.clear_memory()
    assert exact.pixel_fd_floor(m, 20, 1) == (floors, "disk") and len(calls) == len(direct)
    for n, label in ((21, 1), (20, None), (20, 2)):
        assert exact.pixel_fd_floor(m, n, label)[1] == "computed"


def test_cache_off_keeps_memory_only(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMPLER_BENCH_EXACT_CACHE", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    exact_cache.clear_memory()
    m = load_model(SMALL)
    _, c = _ref(m, _batch([1, 2]))
    _, c2 = _ref(m, _batch([1, 2]))
    assert c.ref_sources == {"computed": 1} and c2.ref_sources == {"memory": 1}
    assert not any(tmp_path.rglob("*.npz"))
    exact_cache.clear_memory()
