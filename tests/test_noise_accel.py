"""The GPU-path options on CPU: the counter-based noise stream (noise.py) and accel.py's precision,
channels-last and compile options each change only what they say."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sampler_bench import accel
from sampler_bench.cli import app
from sampler_bench.models.edm import EDMDenoiser, make_tiny_network
from sampler_bench.noise import philox4x32, philox_normal, philox_randint
from sampler_bench.sampling import RunConfig, run_sample

SMALL = "gmm:shape=3x8x8,rank=4"
runner = CliRunner()


@pytest.mark.parametrize("counter,key,expected", [  # Random123's known-answer tests for Philox4x32-10
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0), (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_known_answers(counter, key, expected):
    t = [torch.tensor(v, dtype=torch.int64) for v in (*counter, *key)]
    assert tuple(int(v) for v in philox4x32(*t)) == expected


def test_philox_stream_is_per_sample_and_normal():
    seeds = torch.tensor([0, 1, 5, 2**40 + 3, 77])
    full = philox_normal(seeds, 3, (3, 5, 7), "cpu")  # odd element count: the last pair is cut
    for i in range(5):  # any sub-batch, any order: the same bits
        assert torch.equal(philox_normal(seeds[i:i + 1], 3, (3, 5, 7), "cpu")[0], full[i])
    assert torch.equal(philox_normal(seeds.flip(0), 3, (3, 5, 7), "cpu"), full.flip(0))
    assert not torch.equal(philox_normal(seeds, 4, (3, 5, 7), "cpu"), full)  # another draw
    big = philox_normal(torch.arange(40), 0, (2500,), "cpu").reshape(-1)  # 100k normals
    se = 1 / big.numel() ** 0.5
    assert abs(float(big.mean())) < 5 * se and abs(float(big.var()) - 1) < 5 * 2**0.5 * se
    assert abs(float((big[::2] * big[1::2]).mean())) < 5 * 2**0.5 * se  # Box-Muller pair independent
    assert abs(float((big[:-1:3] * philox_normal(torch.arange(40), 1, (2500,), "cpu").reshape(-1)[:-1:3]).mean())) < 10 * se
    labels = philox_randint(torch.arange(2000), 1, 10, "cpu")
    assert labels.min() == 0 and labels.max() == 9 and (labels.bincount(minlength=10) > 150).all()


@pytest.mark.parametrize("solver,opts,label", [("edm", {"S_churn": "40"}, "random"), ("ddim", {"eta": "1"}, "3")])
def test_philox_runs_are_identical_across_batch_sizes(tmp_path, solver, opts, label):
    imgs = {}
    for batch in (1, 3, 7):
        cfg = RunConfig(model=SMALL, solver=solver, nfe=7, seeds=[4, 9, 2, 11, 0, 5, 8], batch=batch, opts=opts,
                        class_label=label, noise="philox", metrics=["none"])
        rec = run_sample(cfg, tmp_path / f"b{batch}")
        assert rec["config"]["noise"] == "philox" and rec["accel"]["noise"] == "philox"
        z = np.load(tmp_path / f"b{batch}" / "samples.npz")
        imgs[batch] = (z["images"], z["labels"] if "labels" in z.files else None)
    for b in (3, 7):
        assert np.array_equal(imgs[b][0], imgs[1][0])
        assert (imgs[b][1] is None) == (imgs[1][1] is None) and (imgs[b][1] is None or np.array_equal(imgs[b][1], imgs[1][1]))
    # and the stream is not the edm-generate one
    base = run_sample(RunConfig(model=SMALL, solver=solver, nfe=7, seeds=[4, 9, 2, 11, 0, 5, 8], batch=7, opts=opts,
                                class_label=label, metrics=["none"]), tmp_path / "edm")
    assert "noise" not in base["config"] and base["accel"]["noise"] == "edm-generate"
    assert not np.array_equal(np.load(tmp_path / "edm" / "samples.npz")["images"], imgs[7][0])


def test_precision_leaves_float64_models_alone_and_is_recorded(tmp_path):
    recs, imgs = {}, {}
    for p in ("fp32", "bf16"):
        recs[p] = run_sample(RunConfig(model=SMALL, solver="heun", nfe=5, seeds=[0, 1, 2], precision=p), tmp_path / p)
        imgs[p] = np.load(tmp_path / p / "samples.npz")["images"]
    assert np.array_equal(imgs["fp32"], imgs["bf16"])  # autocast never touches float64
    assert recs["fp32"]["metrics"] == recs["bf16"]["metrics"]
    assert "precision" not in recs["fp32"]["config"] and recs["bf16"]["config"]["precision"] == "bf16"
    assert recs["bf16"]["accel"]["precision"] == "bf16"


@pytest.fixture(scope="module")
def tiny_net():
    return EDMDenoiser(make_tiny_network(precond="edm", resolution=8))


def test_precision_autocasts_the_network_only(tiny_net):
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = tiny_net.denoise(x, 1.5)
    with accel.network_options(tiny_net, torch.device("cpu"), precision="fp32", channels_last=False):
        assert torch.equal(tiny_net.denoise(x, 1.5), ref)
    with accel.network_options(tiny_net, torch.device("cpu"), precision="bf16", channels_last=False):
        low = tiny_net.denoise(x, 1.5)
    assert low.dtype == torch.float64 and not torch.equal(low, ref)
    assert float((low - ref).abs().max()) < 0.1 * float(ref.abs().max())  # bf16 rounding, not garbage
    assert torch.equal(tiny_net.denoise(x, 1.5), ref)  # undone


def test_channels_last_and_compile_change_only_the_layout_and_are_undone(tiny_net, monkeypatch):
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = tiny_net.denoise(x, 0.7)
    conv_w = next(p for p in tiny_net.net.parameters() if p.ndim == 4)
    with accel.network_options(tiny_net, torch.device("cpu"), channels_last=True) as applied:
        assert applied == {"channels_last": True, "compile": False}
        assert conv_w.is_contiguous(memory_format=torch.channels_last) and not conv_w.is_contiguous()
        out = tiny_net.denoise(x, 0.7)
    assert conv_w.is_contiguous() and torch.allclose(out, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
    monkeypatch.setattr(accel, "COMPILE_KWARGS", {"backend": "eager"})  # inductor takes minutes on CPU
    with accel.network_options(tiny_net, torch.device("cpu"), compile=True, channels_last=False) as applied:
        assert applied["compile"] and tiny_net.net._compiled_call_impl is not None
        out = tiny_net.denoise(x, 0.7)
    assert tiny_net.net._compiled_call_impl is None
    assert torch.allclose(out, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
    with accel.network_options(object(), torch.device("cuda"), compile=True) as applied:  # analytic: untouched
        assert applied == {"channels_last": False, "compile": False}


@pytest.mark.parametrize("args,fragment", [(["--noise", "xorshift"], "noise stream"), (["--precision", "fp8"], "precision")])
def test_bad_noise_or_precision_are_user_errors(tmp_path, args, fragment):
    res = runner.invoke(app, ["sample", "--solver", "heun", "--nfe", "3", "--num", "2", "--model", SMALL,
                              "--out", str(tmp_path / "r"), *args])
    assert res.exit_code == 2 and res.stderr.startswith("error: unknown " + fragment) and not (tmp_path / "r").exists()


def test_cli_noise_and_precision_are_recorded(tmp_path):
    res = runner.invoke(app, ["sample", "--solver", "edm", "--nfe", "5", "--num", "2", "--model", SMALL,
                              "--noise", "philox", "--precision", "bf16", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "r" / "run.json").read_text())
    assert rec["config"]["noise"] == "philox" and rec["config"]["precision"] == "bf16"
    assert rec["accel"] == {"threads": 1, "noise": "philox", "precision": "bf16", "channels_last": False, "compile": False}


def test_throughput_script_runs_and_matches_the_edm_loop(tmp_path):
    """scripts/bench_throughput.py (a benchmark, not a timed test): smoke run on a tiny batch."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_throughput.py"
    spec = importlib.util.spec_from_file_location("bench_throughput", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--size", "tiny", "--batch", "2", "--nfe", "3", "--json", str(tmp_path / "t.json")])
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["same_images"] and rows[0]["ours_img_s"] > 0 and rows[0]["edm_img_s"] > 0


def test_sweep_keys_noise_precision_compile(tmp_path):
    """The GPU-path options as sweep keys: per solver entry `noise`, top-level `precision` and `compile`."""
    from sampler_bench.errors import BenchError
    from sampler_bench.sweep import load_sweep

    cfg = tmp_path / "s.yaml"
    cfg.write_text("models: ['gmm:shape=3x8x8']\nsolvers: [euler, {name: ersde, noise: philox}]\nnfe: [4]\n"
                   "num: 2\nprecision: bf16\ncompile: true\n")
    cells = {c.solver: c.cfg for c in load_sweep(cfg, tmp_path / "o").cells}
    assert cells["euler"].noise == "edm-generate" and cells["ersde"].noise == "philox"
    assert all(c.precision == "bf16" and c.compile is True for c in cells.values())
    for text, key in (("solvers: [{name: ersde, noise: xorshift}]", "solvers[0].noise"),
                      ("solvers: [euler]\nprecision: fp8", "'precision'"),
                      ("solvers: [euler]\ncompile: maybe", "'compile'")):
        cfg.write_text("models: ['gmm:shape=3x8x8']\nnfe: [4]\nnum: 2\n" + text + "\n")
        with pytest.raises(BenchError, match=key.replace("[", r"\[").replace("]", r"\]")):
            load_sweep(cfg, tmp_path / "o")
