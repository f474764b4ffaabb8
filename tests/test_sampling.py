"""The sampling loop (sampling.py): per-sample seeds, determinism across batch sizes, run directories."""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest
import torch

from sampler_bench.errors import BenchError
from sampler_bench.images import make_grid, quantize
from sampler_bench.sampling import RunConfig, generate, parse_seeds, plan_run, run_sample

SMALL = "gmm:shape=3x8x8,rank=4"


def cfg(**kw):
    base = dict(model=SMALL, solver="heun", nfe=5, seeds=list(range(8)), batch=8, device="cpu")
    base.update(kw)
    return RunConfig(**base)


def load(run_dir):
    with np.load(run_dir / "samples.npz") as f:
        return {k: f[k] for k in f.files}


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------------------
# Seeds
# ------------------------------------------------------------------------------------------------


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("7") == [7]
    assert parse_seeds("1,5,9-11") == [1, 5, 9, 10, 11]
    assert parse_seeds(" 2 , 4-5 ") == [2, 4, 5]


@pytest.mark.parametrize("text,match", [
    ("", "malformed seeds"), ("0-", "malformed seeds"), ("a-b", "malformed seeds"), ("1,,2", "malformed seeds"),
    ("-3", "malformed seeds"), ("1.5", "malformed seeds"), ("0-3-5", "malformed seeds"),
    ("5-3", "reversed; write 3-5"), ("1,1", "repeat a seed"), ("0-4,3", "repeat a seed"),
])
def test_parse_seeds_errors(text, match):
    with pytest.raises(BenchError, match=match):
        parse_seeds(text)


# ------------------------------------------------------------------------------------------------
# Determinism
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver,opts,label", [("heun", {}, None), ("ddim", {"eta": "1"}, "random"), ("edm", {}, "3")])
def test_samples_identical_across_batch_sizes(tmp_path, solver, opts, label):
    """samples.npz arrays are bit-identical for batch 1, 3 and 8 (stochastic solvers included)."""
    runs = {}
    for b in (1, 3, 8):
        out = tmp_path / f"b{b}"
        rec = run_sample(cfg(solver=solver, nfe=5, opts=opts, batch=b, class_label=label), out)
        runs[b] = load(out)
        assert rec["nfe_counted"] == 5
    for b in (3, 8):
        assert runs[b].keys() == runs[1].keys()
        for k in runs[1]:
            assert np.array_equal(runs[b][k], runs[1][k]), (b, k)
    assert ("labels" in runs[1]) == (label is not None)
    # the float64 states too: the analytic denoiser's products pad their rows (models/analytic.py _rows_mm)
    plan = plan_run(cfg(solver=solver, opts=opts, class_label=label))
    xs = {}
    for b in (1, 3, 8):
        plan.cfg.batch = b
        xs[b] = torch.cat([batch.x for batch, _ in generate(plan, list(range(8)))])
    assert torch.equal(xs[1], xs[8]) and torch.equal(xs[3], xs[8])


def test_per_sample_seeds(tmp_path):
    full = run_sample(cfg(solver="ddim", opts={"eta": "1"}, seeds=list(range(10)), batch=4, class_label="random"), tmp_path / "a")
    sub = run_sample(cfg(solver="ddim", opts={"eta": "1"}, seeds=[7, 2], batch=4, class_label="random"), tmp_path / "b")
    a, b = load(tmp_path / "a"), load(tmp_path / "b")
    assert full["num_images"] == 10 and sub["num_images"] == 2
    assert np.array_equal(b["seeds"], [7, 2])
    assert np.array_equal(b["images"], a["images"][[7, 2]])
    assert np.array_equal(b["labels"], a["labels"][[7, 2]])
    # different seeds give different samples, and random labels vary
    assert not np.array_equal(a["images"][0], a["images"][1])
    assert len(set(a["labels"].tolist())) > 1


def test_same_seed_same_config_is_reproducible_and_seed_changes_it(tmp_path):
    run_sample(cfg(seeds=[3]), tmp_path / "a")
    run_sample(cfg(seeds=[3]), tmp_path / "b", overwrite=True)
    run_sample(cfg(seeds=[4]), tmp_path / "c")
    a, b, c = (load(tmp_path / n)["images"] for n in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_class_label_fixes_the_class(tmp_path):
    """A fixed class draws from that class's components: samples are closer to its means than to others'."""
    from sampler_bench.models.registry import load_model

    model = load_model(SMALL)
    run_sample(cfg(class_label="4", nfe=15), tmp_path / "r")
    d = load(tmp_path / "r")
    assert (d["labels"] == 4).all()
    x = torch.from_numpy(d["images"]).permute(0, 3, 1, 2).reshape(8, -1).double() / 127.5 - 1
    dist = torch.cdist(x, model.mu)  # (8, components)
    assert (model.comp_class[dist.argmin(1)] == 4).all()


# ------------------------------------------------------------------------------------------------
# Run directory
# ------------------------------------------------------------------------------------------------


def test_run_directory_contents(tmp_path):
    out = tmp_path / "run"
    rec = run_sample(cfg(nfe=7, seeds=[0, 1, 2], batch=2, class_label="random"), out, save_images=True)
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "images", "metrics.json", "run.json", "samples.npz"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    d = load(out)
    assert d["images"].dtype == np.uint8 and d["images"].shape == (3, 8, 8, 3)
    assert d["labels"].dtype == np.int64 and d["labels"].shape == (3,)
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(out / "images" / "000001.png")), d["images"][1])
    saved = json.loads((out / "run.json").read_text())
    assert saved == json.loads(json.dumps(rec))
    assert saved["nfe_requested"] == saved["nfe_counted"] == 7
    assert saved["resolved"]["steps"] == 4 and saved["resolved"]["schedule"] == "karras"
    assert saved["resolved"]["sigmas"][-1] == 0.0 and len(saved["resolved"]["sigmas"]) == 5
    assert saved["config"]["seeds"] == [0, 1, 2] and "batch" not in saved["config"]
    assert saved["device"] == "cpu" and saved["wall_time_s"] > 0
    assert {"sampler_bench", "torch", "numpy", "python"} <= set(saved["versions"])
    # readable by others like any file the user writes (not mkstemp's 0600)
    assert (out / "run.json").stat().st_mode & stat.S_IRGRP
    assert leftovers(tmp_path) == []


def test_quantize_and_grid():
    x = torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.0, 2.0], dtype=torch.float64).reshape(1, 1, 2, 3)
    q = quantize(x)
    assert q.shape == (1, 2, 3, 1) and q.dtype == torch.uint8
    assert q.flatten().tolist() == [0, 0, 128, 191, 255, 255]  # (x*127.5+128) truncated, clipped
    grid = make_grid(np.zeros((5, 4, 4, 3), np.uint8))
    assert grid.shape == (2 * 6 + 2, 3 * 6 + 2, 3)


def test_rerun_same_config_skips_other_config_refused(tmp_path):
    out = tmp_path / "run"
    run_sample(cfg(), out)
    before = (out / "run.json").read_text()
    again = run_sample(cfg(batch=3), out)  # batch does not change the run
    assert again["skipped"] is True and (out / "run.json").read_text() == before
    with pytest.raises(BenchError, match=r"holds a run with a different config \(differs in: nfe\); choose another --out or pass --overwrite"):
        run_sample(cfg(nfe=7), out)
    rec = run_sample(cfg(nfe=7), out, overwrite=True)
    assert rec["nfe_counted"] == 7 and "skipped" not in rec
    assert json.loads((out / "run.json").read_text())["nfe_requested"] == 7
    assert leftovers(tmp_path) == []


def test_existing_non_run_refused(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(BenchError, match="exists and is not a sampler_bench run"):
        run_sample(cfg(), out)
    assert (out / "keep.txt").read_text() == "mine"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(BenchError, match="exists and is not a sampler_bench run"):
        run_sample(cfg(), tmp_path / "afile")
    # an empty directory is fine to fill
    (tmp_path / "empty").mkdir()
    run_sample(cfg(), tmp_path / "empty")
    assert (tmp_path / "empty" / "run.json").is_file()


@pytest.mark.parametrize("exc", [BenchError("boom; fix it."), KeyboardInterrupt(), SystemExit(143)],
                         ids=["error", "ctrl-c", "sigterm"])  # `bench` turns SIGTERM/SIGHUP into SystemExit
def test_failure_mid_run_leaves_nothing(tmp_path, monkeypatch, exc):
    """An error after the first batch: no run directory, no temporary directory, old run untouched."""
    import sampler_bench.sampling as sampling

    real = sampling.run_solver
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise exc
        return real(*a, **k)

    monkeypatch.setattr(sampling, "run_solver", flaky)
    with pytest.raises(type(exc)):
        run_sample(cfg(batch=4), tmp_path / "new")
    assert list(tmp_path.iterdir()) == []
    # with --overwrite over a finished run: the old run survives a failed replacement
    monkeypatch.setattr(sampling, "run_solver", real)
    run_sample(cfg(), tmp_path / "old")
    before = load(tmp_path / "old")["images"]
    calls.clear()
    monkeypatch.setattr(sampling, "run_solver", flaky)
    with pytest.raises(type(exc)):
        run_sample(cfg(batch=4, nfe=7), tmp_path / "old", overwrite=True)
    assert np.array_equal(load(tmp_path / "old")["images"], before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_plan_errors():
    with pytest.raises(BenchError, match="--batch must be a positive integer"):
        plan_run(cfg(batch=0))
    with pytest.raises(BenchError, match="--nfe must be a positive integer"):
        plan_run(cfg(nfe=0))
    with pytest.raises(BenchError, match="no seeds given"):
        plan_run(cfg(seeds=[]))
    with pytest.raises(BenchError, match="unconditional; drop --class-label"):
        plan_run(cfg(model="gaussian:shape=1x4x4", class_label="random"))
    with pytest.raises(BenchError, match="not a class index; use 0..9 or 'random'"):
        plan_run(cfg(class_label="cat"))
    with pytest.raises(BenchError, match="unknown device 'tpu'"):
        plan_run(cfg(device="tpu"))
    with pytest.raises(BenchError, match="takes parameters .* got 'colour=3'"):
        plan_run(cfg(model="gmm:colour=3"))
    with pytest.raises(BenchError, match="rank='x' is not valid"):
        plan_run(cfg(model="gmm:rank=x"))


def test_identity_canonicalises_solver_options():
    from sampler_bench.sampling import RunConfig

    a = RunConfig(solver="ddim", opts={"eta": "1"}).identity()
    b = RunConfig(solver="ddim", opts={"eta": 1.0}).identity()
    c = RunConfig(solver="ddim", opts={"eta": "0.5"}).identity()
    assert a == b
    assert a != c
    assert a["opts"] == {"eta": 1.0}


# ------------------------------------------------------------------------------------------------
# The pipelined loop (transfer.py): on CUDA batch k is handled while batch k+1 computes
# ------------------------------------------------------------------------------------------------


def _same_run(a, b):
    da, db = load(a), load(b)
    assert da.keys() == db.keys()
    for k in da:
        assert np.array_equal(da[k], db[k]), k
    ra, rb = (json.loads((d / "run.json").read_text()) for d in (a, b))
    assert ra["config"] == rb["config"] and ra["nfe_counted"] == rb["nfe_counted"]
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    drop = lambda m: {k: v for k, v in m.items() if not k.endswith("time_s")}  # noqa: E731
    assert drop(ma) == drop(mb)


@pytest.mark.parametrize("depth", [1, 2])
def test_pipelined_loop_writes_the_same_run(tmp_path, monkeypatch, depth):
    """Handling each batch ``depth`` rounds after its launch (as on CUDA) changes nothing in the run:
    the same images, labels, latents, metrics and call counts, and progress still adds up to N."""
    import sampler_bench.sampling as sampling

    c = cfg(nfe=7, seeds=list(range(7)), batch=2, class_label="random", solver="ersde")
    run_sample(c, tmp_path / "serial", save_images=True)
    seen: list[int] = []
    monkeypatch.setattr(sampling, "pipeline_depth", lambda device: depth)
    launched, finished = [], []
    real_launch, real_finish, real_handle = sampling.launch_batch, sampling.LaunchedBatch.finish, sampling._handle
    monkeypatch.setattr(sampling, "launch_batch", lambda plan, s, i: launched.append(i) or real_launch(plan, s, i))
    monkeypatch.setattr(sampling.LaunchedBatch, "finish", lambda self: finished.append(self.start) or real_finish(self))
    order = []
    monkeypatch.setattr(sampling, "_handle", lambda batch, *a: order.append((list(launched), batch.start)) or real_handle(batch, *a))
    run_sample(c, tmp_path / "piped", save_images=True, on_progress=seen.append)
    _same_run(tmp_path / "serial", tmp_path / "piped")
    for sub in ("serial", "piped"):
        assert sorted(p.name for p in (tmp_path / sub / "images").iterdir()) == [f"{s:06d}.png" for s in range(7)]
    assert launched == finished == [0, 2, 4, 6] and sum(seen) == 7
    # batch k is handled only once batch k+depth has been launched (or every batch has)
    for was_launched, start in order:
        k = start // 2
        assert len(was_launched) == min(k + 1 + depth, 4)


def test_pipelined_loop_refuses_a_non_finite_batch_and_leaves_nothing(tmp_path, monkeypatch):
    import sampler_bench.sampling as sampling

    monkeypatch.setattr(sampling, "pipeline_depth", lambda device: 1)
    real = sampling.run_solver
    n = []

    def nan_on_second(*a, **k):
        x = real(*a, **k)
        n.append(1)
        return x * float("nan") if len(n) == 2 else x

    monkeypatch.setattr(sampling, "run_solver", nan_on_second)
    with pytest.raises(BenchError, match="produced non-finite samples at NFE 5; try more NFE"):
        run_sample(cfg(batch=2, seeds=list(range(6))), tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_host_copy_on_cpu():
    from sampler_bench.transfer import pipeline_depth, start_host_copy

    x = torch.linspace(-1.2, 1.2, 2 * 3 * 4 * 4, dtype=torch.float64).reshape(2, 3, 4, 4)
    c = start_host_copy(x, torch.tensor([3, 1])).wait()
    assert torch.equal(c.images, quantize(x)) and c.labels.tolist() == [3, 1] and bool(c.finite)
    x[1, 2, 0, 0] = float("inf")
    assert not bool(start_host_copy(x, None).wait().finite)
    assert pipeline_depth(torch.device("cpu")) == 0 and pipeline_depth(torch.device("cuda", 0)) == 1


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_generate_yields_every_batch_in_order_whatever_the_depth(monkeypatch, depth):
    import sampler_bench.sampling as sampling

    plan = plan_run(cfg(seeds=list(range(7)), batch=2, solver="edm"))
    serial = [(b.start, b.images, n) for b, n in generate(plan, list(range(7)))]
    monkeypatch.setattr(sampling, "pipeline_depth", lambda device: depth)
    seen: list[int] = []
    piped = [(b.start, b.images, n) for b, n in generate(plan, list(range(7)), on_progress=seen.append)]
    assert [s for s, _, _ in piped] == [0, 2, 4, 6] and seen == [2, 2, 2, 1]
    assert all(a[0] == b[0] and torch.equal(a[1], b[1]) and a[2] == b[2] for a, b in zip(serial, piped))
