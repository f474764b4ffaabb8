"""``--threads`` / sweep key ``threads``: the run uses and records exactly that many CPU threads,
the previous setting comes back afterwards, the samples do not change, bad values are user errors."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sampler_bench.cli import app
from sampler_bench.errors import BenchError
from sampler_bench.sampling import RunConfig, run_sample
from sampler_bench.sweep import load_sweep
from sampler_bench.threads import resolve_threads

SMALL = "gmm:shape=3x8x8,rank=4"
runner = CliRunner()


def test_cli_threads_are_used_recorded_and_restored(tmp_path, monkeypatch):
    seen = []
    import sampler_bench.sampling as sampling

    real = sampling.run_solver
    monkeypatch.setattr(sampling, "run_solver", lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    before = torch.get_num_threads()
    outs = {}
    for n in (1, 2):
        res = runner.invoke(app, ["sample", "--solver", "heun", "--nfe", "5", "--num", "4", "--model", SMALL,
                                  "--threads", str(n), "--out", str(tmp_path / f"t{n}")])
        assert res.exit_code == 0, res.output
        rec = json.loads((tmp_path / f"t{n}" / "run.json").read_text())
        assert rec["threads"] == n and "threads" not in rec["config"]
        assert seen[-1] == n and torch.get_num_threads() == before
        outs[n] = np.load(tmp_path / f"t{n}" / "samples.npz")["images"]
    assert np.array_equal(outs[1], outs[2])


@pytest.mark.parametrize("value", ["0", "-3"])
def test_bad_thread_counts_are_user_errors(tmp_path, value):
    res = runner.invoke(app, ["sample", "--solver", "heun", "--nfe", "5", "--num", "2", "--model", SMALL,
                              "--threads", value, "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and res.stderr.startswith("error: threads") and "Traceback" not in res.output
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad*"))


def test_default_policy(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert resolve_threads(None, torch.device("cpu")) == 1
    assert resolve_threads(3, torch.device("cpu")) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert resolve_threads(None, torch.device("cpu")) == 2
    with pytest.raises(BenchError, match="positive integer"):
        resolve_threads(0, torch.device("cpu"))


def test_library_default_records_the_policy(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    rec = run_sample(RunConfig(model=SMALL, solver="euler", nfe=3, seeds=[0, 1], metrics=["none"]), tmp_path / "r")
    assert rec["threads"] == 1


def test_sweep_key_threads(tmp_path):
    def cfg(extra):
        p = tmp_path / "s.yaml"
        p.write_text(textwrap.dedent(f"""
            models: ['{SMALL}']
            solvers: [euler]
            nfe: [3]
            num: 2
            {extra}
        """))
        return p

    assert {c.cfg.threads for c in load_sweep(cfg("threads: 2")).cells} == {2}
    assert {c.cfg.threads for c in load_sweep(cfg("")).cells} == {None}
    with pytest.raises(BenchError, match="'threads'"):
        load_sweep(cfg("threads: 0"))
