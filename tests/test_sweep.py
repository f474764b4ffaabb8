"""bench sweep: config validation, grid expansion, resume after a kill, shards, failing cells, configs/."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sampler_bench.cli import app
from sampler_bench.errors import BenchError
from sampler_bench.solvers import REGISTRY, SolverSpec
from sampler_bench.sweep import (compact_seeds, load_records, load_sweep, parse_shard, record_path, run_sweep)

ROOT = Path(__file__).resolve().parents[1]
TINY = "'gmm:classes=2,shape=3x8x8'"  # quoted: a YAML flow list [a,b] splits at commas
TINY_ID = "gmm-classes2-shape3x8x8"
# solver families written in other branches; a shipped config naming them validates once they are merged
INCOMING = ("deis-", "ipndm", "ersde")


def write_cfg(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_grid_expansion(tmp_path):
    cfg = write_cfg(tmp_path, f"""
        name: grid
        models:
          - {TINY}
          - model: gaussian:shape=3x4x4
            label: g4
            fid: some-ref
            batch: 3
        solvers:
          - euler
          - name: ddim
            opts: {{eta: [0, 0.5, 1]}}
          - name: edm
            opts: {{S_churn: [0, 40], S_noise: 1.0}}
          - name: heun
            label: EDM-Heun
            nfe: [3, 7]
            schedule: logsnr
        nfe: [3, 4]
        seeds: 0-2,10
        batch: 2
        metrics: {{names: [kid]}}
    """)
    sw = load_sweep(cfg)
    assert sw.name == "grid" and sw.out == Path("results/grid")
    per_model = 2 + 3 * 2 + 2 * 2 + 2  # euler, ddim x3, edm x2 (x2 NFE each), heun (own NFE list)
    assert len(sw.cells) == 2 * per_model
    ids = [c.id for c in sw.cells]
    assert len(set(ids)) == len(ids)
    assert [c.index for c in sw.cells] == list(range(len(sw.cells)))
    assert "gmm-classes2-shape3x8x8__ddim-eta0.5__nfe004" in ids
    assert "g4__edm-S_churn40-S_noise1__nfe003" in ids
    assert "g4__EDM-Heun-logsnr__nfe007" in ids
    by_id = {c.id: c for c in sw.cells}
    c = by_id["g4__edm-S_churn40-S_noise1__nfe003"]
    assert c.cfg.opts == {"S_churn": 40.0, "S_noise": 1.0} and c.series == "edm (S_churn=40, S_noise=1)"
    assert c.cfg.seeds == [0, 1, 2, 10] and c.cfg.batch == 3 and c.cfg.fid_ref == "some-ref" and c.cfg.metrics == ["kid"]
    assert by_id["gmm-classes2-shape3x8x8__euler__nfe003"].cfg.batch == 2
    assert by_id["gmm-classes2-shape3x8x8__euler__nfe003"].cfg.fid_ref is None
    h = by_id["g4__EDM-Heun-logsnr__nfe007"]
    assert h.series == "EDM-Heun [logsnr]" and h.cfg.schedule == "logsnr" and h.skip_reason is None
    # heun/edm at NFE 4 cannot be hit (2*steps - 1): kept as skipped, with the nearest valid values
    e4 = by_id["gmm-classes2-shape3x8x8__edm-S_churn0-S_noise1__nfe004"]
    assert "3 or 5" in e4.skip_reason
    assert sum(c.skip_reason is not None for c in sw.cells) == 2 * 2  # edm x2 options at NFE 4, per model
    # the expansion is deterministic
    assert [c.id for c in load_sweep(cfg).cells] == ids
    assert compact_seeds([0, 1, 2, 10, 12, 13]) == "0-2,10,12-13"


@pytest.mark.parametrize("body, expected", [
    ("solvers: [euler]\nnfe: [3]", ["'models'", "missing"]),
    (f"models: [{TINY}]\nsolvers: [eulr]\nnfe: [3]", ["'solvers[0].name'", "unknown solver 'eulr'", "allowed: euler, ddim, ", "heun, edm"]),
    (f"models: [{TINY}]\nsolvers: [{{name: ddim, opts: {{eta: [0, 2]}}}}]\nnfe: [3]", ["'solvers[0].opts.eta[1]'", "<= 1.0"]),
    (f"models: [{TINY}]\nsolvers: [{{name: ddim, opts: {{etta: 1}}}}]\nnfe: [3]", ["'solvers[0].opts.etta'", "allowed: eta"]),
    (f"models: [{TINY}]\nsolvers: [{{name: ddim, order: 2}}]\nnfe: [3]", ["'solvers[0].order'", "name, label, opts, nfe, schedule"]),
    (f"models: [{TINY}]\nsolvers: [euler]\nnfe: [3, 0]", ["'nfe[1]'", "integer >= 1"]),
    (f"models: [{TINY}]\nsolvers: [euler]\nnfe: [3, 3]", ["'nfe'", "repeats"]),
    (f"models: [{TINY}]\nsolvers: [euler]", ["'nfe'", "missing"]),
    (f"models: [{TINY}]\nsolvers: [euler]\nnfe: [3]\nseeds: 5-1", ["'seeds'", "reversed"]),
    (f"models: [{TINY}]\nsolvers: [euler]\nnfe: [3]\nseeds: 0-3\nnum: 4", ["'seeds'", "'num'"]),
    (f"models: [{TINY}]\nsolvers: [euler]\nnfe: [3]\nschedule: karas", ["'schedule'", "karras"]),
    (f"models: [{TINY}]\nsolvers: [euler]\nnfe: [3]\non_invalid_nfe: round", ["'on_invalid_nfe'", "skip, error"]),
    (f"models: [{TINY}]\nsolvers: [euler]\nnfe: [3]\nmetrics: {{fdi: x}}", ["'metrics.fdi'", "fid, names, inception_weights"]),
    (f"models: [{TINY}]\nsolvers: [euler]\nnfe: [3]\ndevice: tpu", ["'device'", "auto, cpu or cuda"]),
    (f"models: [{TINY}]\nsolvers: [euler]\nnfe: [3]\nbatchsize: 4", ["'batchsize'", "allowed keys", "batch"]),
    ("models: ['gmm:shape=3x8x8,colour=1']\nsolvers: [euler]\nnfe: [3]", ["'models[0].model'", "parameters"]),
    ("models: [gmm:classes=2,shape=3x8x8]\nsolvers: [euler]\nnfe: [3]", ["'models[1].model'", "quote the spec"]),
    (f"models: [{TINY}]\nsolvers: [euler, euler]\nnfe: [3]", ["'solvers[1]'", "duplicates"]),
    (f"models: [{TINY}]\nsolvers: [heun]\nnfe: [4]\non_invalid_nfe: error", ["cell 'gmm-classes2-shape3x8x8__heun__nfe004'", "3 or 5"]),
    ("models: [gmm\nsolvers: [euler]", ["not valid YAML", "line"]),
])
def test_validation_errors(tmp_path, body, expected):
    cfg = write_cfg(tmp_path, body, "bad.yaml")
    with pytest.raises(BenchError) as exc:
        load_sweep(cfg)
    msg = str(exc.value)
    assert str(cfg) in msg
    for part in expected:
        assert part in msg, msg
    assert "\n" not in msg


def test_metric_names_are_checked_against_the_metrics_layer(tmp_path, monkeypatch):
    import sampler_bench.metrics as metrics

    monkeypatch.setattr(metrics, "METRIC_NAMES", {"kid": "", "isc": ""}, raising=False)
    cfg = write_cfg(tmp_path, f"models: [{TINY}]\nsolvers: [euler]\nnfe: [3]\nmetrics: {{names: [kid, kdi]}}", "m.yaml")
    with pytest.raises(BenchError, match=r"m.yaml: key 'metrics.names\[1\]': unknown metric 'kdi'; allowed: kid, isc"):
        load_sweep(cfg)


def test_unregistered_model_is_refused_up_front(tmp_path):
    """A model name that is neither registered nor a file would fail every cell: the config is refused
    (dry run and real run alike), with a suggestion for a typo."""
    cfg = write_cfg(tmp_path, f"""
        models: [gmmm, {TINY}]
        solvers: [euler]
        nfe: [2, 3]
        num: 2
        device: cpu
    """)
    runner = CliRunner()
    for args in (["--dry-run"], []):
        res = runner.invoke(app, ["sweep", str(cfg), *args, "--out", str(tmp_path / "o")])
        assert res.exit_code == 2, res.output
        assert "unknown model 'gmmm'; did you mean gmm?" in " ".join(res.output.split())
        assert not (tmp_path / "o").exists()


def _register(monkeypatch, name, fn):
    spec = SolverSpec(name=name, fn=fn, family="test", summary="test", nfe=lambda s, o: s, nfe_rule="steps")
    monkeypatch.setitem(REGISTRY, name, spec)


def test_failing_cells_are_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    def nan_solver(denoise, x, sigmas, *, noise):
        for i in range(len(sigmas) - 1):
            x = denoise(x, sigmas[i])
        return x * float("nan")

    def broken_solver(denoise, x, sigmas, *, noise):
        raise ValueError("matrix went sideways")

    _register(monkeypatch, "nan-test", nan_solver)
    _register(monkeypatch, "broken-test", broken_solver)
    cfg = write_cfg(tmp_path, f"""
        models: [{TINY}]
        solvers: [nan-test, broken-test, euler]
        nfe: [2]
        num: 2
        device: cpu
    """)
    sw = load_sweep(cfg, tmp_path / "o")
    counts = run_sweep(sw)
    assert counts == {"ok": 1, "failed": 2, "skipped": 0, "done_before": 0}
    recs = {r["solver"]: r for r in load_records(sw.out)[1]}
    assert "non-finite" in recs["nan-test"]["reason"]
    assert recs["broken-test"]["reason"] == "ValueError: matrix went sideways"
    assert "Traceback" in recs["broken-test"]["traceback"]
    assert recs["euler"]["status"] == "ok"
    assert not (sw.out / "runs" / recs["nan-test"]["cell"]).exists()  # no half-written run directory
    md = (sw.out / "results.md").read_text()
    assert "matrix went sideways" in md and "1 ok, 2 failed" in md
    # failed cells are retried on a re-run, finished ones are not
    counts = run_sweep(sw)
    assert counts["done_before"] == 1 and counts["failed"] == 2


def test_ci_config_end_to_end_and_rerun_skips(tmp_path):
    out = tmp_path / "ci"
    runner = CliRunner()
    res = runner.invoke(app, ["sweep", str(ROOT / "configs" / "ci.yaml"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    sw = load_sweep(ROOT / "configs" / "ci.yaml", out)
    _, recs = load_records(out)
    assert [r["cell"] for r in recs] == [c.id for c in sw.cells]
    ok = [r for r in recs if r["status"] == "ok"]
    assert len(ok) == sum(c.skip_reason is None for c in sw.cells) > 0
    import sampler_bench.metrics as metrics_layer

    for r in ok:
        assert r["nfe_counted"] == r["nfe"]
        if hasattr(metrics_layer, "METRIC_NAMES"):  # the metrics layer is merged: analytic models get exact metrics
            assert r["metrics"] and all(k in r for k in ("wall_time_s", "images_per_s"))
        assert r["wall_time_s"] > 0 and r["images_per_s"] > 0
        run = json.loads((out / r["run_dir"] / "run.json").read_text())
        assert run["config"] == r["config"]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(sw.cells)
    for col in ("cell", "status", "model", "solver", "options", "schedule", "nfe", "nfe_counted", "seeds", "batch",
                "wall_time_s", "images_per_s", "reason"):
        assert col in rows[0]
    assert (out / "results.md").read_text().startswith("# Sweep results: ci")
    # the second run does nothing and rewrites no run
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/run.json")}
    res = runner.invoke(app, ["sweep", str(ROOT / "configs" / "ci.yaml"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert f"0 ran ok, 0 failed, {len(ok)} already done" in " ".join(res.output.split())
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.glob("runs/*/run.json")}


def test_resume_after_kill(tmp_path):
    """SIGKILL a real `bench sweep` process mid-sweep; the re-run finishes exactly the missing cells."""
    cfg = write_cfg(tmp_path, f"""
        models: [{TINY}]
        solvers: [euler, heun]
        nfe: [5, 7, 9]
        num: 8
        batch: 1
        device: cpu
        metrics: {{names: [none]}}   # no exact metrics: this test is about files, not numbers
    """)
    out = tmp_path / "o"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "sampler_bench", "sweep", str(cfg), "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        def mid_cell():  # two cells done and the third one's temporary run directory being filled
            return len(list(out.glob("cells/*.json"))) >= 2 and any(out.glob("runs/.*.tmp/images.npy.tmp"))

        while time.time() < deadline and not mid_cell() and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    sw = load_sweep(cfg, out)
    finished = {p.stem for p in out.glob("cells/*.json")}
    assert 2 <= len(finished) < len(sw.cells), "the kill should land mid-sweep"
    assert any((out / "runs").glob(".*.tmp")), "the kill should land mid-cell"
    # nothing half-written under a final name: every run directory that exists is complete
    for d in (out / "runs").iterdir():
        if not d.name.startswith("."):
            assert (d / "run.json").is_file() and (d / "samples.npz").is_file()
    for p in out.rglob("*"):
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts):
            assert not p.name.endswith(".tmp")
    before = {c: json.loads(record_path(out, c).read_text())["finished"] for c in finished}
    counts = run_sweep(sw)
    assert counts["done_before"] == len(finished)
    assert counts["ok"] == len(sw.cells) - len(finished)
    _, recs = load_records(out)
    assert sorted(r["cell"] for r in recs) == sorted(c.id for c in sw.cells)  # no lost cell, no duplicate
    assert all(r["status"] == "ok" for r in recs)
    assert {c: json.loads(record_path(out, c).read_text())["finished"] for c in finished} == before
    # the temporary directory of the killed cell is cleaned up by the re-run
    assert sorted(d.name for d in (out / "runs").iterdir()) == sorted(c.id for c in sw.cells)
    assert not [p for p in out.rglob(".*") if p.parent.name in ("runs", "cells")]


def test_interrupt_mid_cell_loses_only_that_cell(tmp_path):
    from sampler_bench.sweep import SweepHooks

    cfg = write_cfg(tmp_path, f"""
        models: [{TINY}]
        solvers: [euler]
        nfe: [2, 3, 4]
        num: 4
        batch: 1
        device: cpu
    """)
    sw = load_sweep(cfg, tmp_path / "o")
    seen = []

    def progress(k):
        seen.append(k)
        if len(seen) == 6:  # second sample batch of the second cell
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(sw, hooks=SweepHooks(samples_progress=progress))
    assert [p.stem for p in (sw.out / "cells").glob("*.json")] == [sw.cells[0].id]
    assert sorted(os.listdir(sw.out / "runs")) == [sw.cells[0].id]  # the temp dir of cell 2 is gone
    counts = run_sweep(sw)
    assert counts["done_before"] == 1 and counts["ok"] == 2


def test_shards_are_disjoint_and_cover(tmp_path):
    cfg = write_cfg(tmp_path, f"""
        models: [{TINY}]
        solvers: [euler, {{name: ddim, opts: {{eta: [0, 1]}}}}, heun]
        nfe: [2, 3, 5]
        num: 2
        device: cpu
    """)
    sw = load_sweep(cfg, tmp_path / "o")
    for n in (1, 2, 3, 5, 7, 20):
        parts = [[c.id for c in sw.shard((i, n))] for i in range(1, n + 1)]
        flat = [x for p in parts for x in p]
        assert sorted(flat) == sorted(c.id for c in sw.cells) and len(flat) == len(set(flat))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/3", "4/3", "1", "a/b", "1/0"):
        with pytest.raises(BenchError, match="--shard"):
            parse_shard(bad)
    # two shards into one directory give the whole sweep
    c1 = run_sweep(sw, (1, 2))
    c2 = run_sweep(sw, (2, 2))
    assert c1["ok"] + c1["skipped"] + c2["ok"] + c2["skipped"] == len(sw.cells)
    with open(sw.out / "results.csv") as f:
        assert sorted(r["cell"] for r in csv.DictReader(f)) == sorted(c.id for c in sw.cells)


def test_results_of_another_config_are_refused(tmp_path):
    base = f"models: [{TINY}]\nsolvers: [euler]\nnfe: [2]\ndevice: cpu\n"
    cfg = write_cfg(tmp_path, base + "num: 2\n")
    run_sweep(load_sweep(cfg, tmp_path / "o"))
    cfg2 = write_cfg(tmp_path, base + "num: 3\n", "s2.yaml")
    with pytest.raises(BenchError, match="different config.*seeds"):
        run_sweep(load_sweep(cfg2, tmp_path / "o"))


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    (tmp_path / "file").write_text("x")
    res = runner.invoke(app, ["sweep", str(ROOT / "configs" / "ci.yaml"), "--out", str(tmp_path / "file" / "o")])
    assert res.exit_code == 2 and "cannot write into the output directory" in " ".join(res.output.split())
    res = runner.invoke(app, ["sweep", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "does not exist" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["sweep", str(ROOT / "configs" / "ci.yaml"), "--shard", "3/2", "--dry-run"])
    assert res.exit_code == 2 and "--shard" in res.output


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_validate_with_dry_run(config, tmp_path):
    """Every shipped config validates and dry-runs without loading a model (checkpoints absent here).

    Solvers of families merged from other branches (DEIS, iPNDM, ER-SDE) are dropped from the copy
    under test only while they are not registered; once merged, the config is checked whole.
    """
    import yaml

    raw = yaml.safe_load((ROOT / "configs" / config).read_text())
    def name(s):
        from sampler_bench.presets import get_preset

        return s if isinstance(s, str) else s.get("name") or get_preset(s["preset"]).solver
    raw["solvers"] = [s for s in raw["solvers"] if name(s) in REGISTRY or not name(s).startswith(INCOMING)]
    path = tmp_path / config
    path.write_text(yaml.safe_dump(raw))
    sw = load_sweep(path, tmp_path / "o")
    assert sw.cells and all(c.skip_reason is None for c in sw.cells if "on_invalid_nfe" in raw)
    res = CliRunner().invoke(app, ["sweep", str(path), "--dry-run", "--out", str(tmp_path / "o")])
    import torch

    if str(raw.get("device", "auto")).startswith("cuda") and not torch.cuda.is_available():
        # a GPU config on a CPU machine: the dry run says what the real run would (every cell fails)
        assert res.exit_code == 2 and "no CUDA device is available" in res.output, res.output
    else:
        assert res.exit_code == 0, res.output
        assert f"{len(sw.cells)} cells" in res.output
    assert not (tmp_path / "o").exists()


def test_a_complete_run_without_its_record_is_picked_up_without_resampling(tmp_path):
    """A kill between a run directory's rename and its record's write costs nothing on the re-run."""
    cfg = write_cfg(tmp_path, f"models: [{TINY}]\nsolvers: [euler]\nnfe: [2, 3]\nnum: 2\ndevice: cpu\n")
    sw = load_sweep(cfg, tmp_path / "o")
    run_sweep(sw)
    c = sw.cells[1]
    run_json = sw.out / "runs" / c.id / "run.json"
    before = run_json.stat().st_mtime_ns
    record_path(sw.out, c.id).unlink()
    counts = run_sweep(sw)
    assert counts["done_before"] == 1 and counts["ok"] == 1
    rec = json.loads(record_path(sw.out, c.id).read_text())
    assert rec["status"] == "ok" and rec["nfe_counted"] == 3 and rec["wall_time_s"] > 0
    assert run_json.stat().st_mtime_ns == before


def test_ode_error_is_left_out_of_stochastic_cells(tmp_path):
    """A grid-wide `ode-error` applies to deterministic cells; stochastic cells run without it."""
    cfg = write_cfg(tmp_path, f"""
        name: odeerr
        out: {tmp_path / 'out'}
        models: [{TINY}]
        solvers:
          - euler
          - name: ddim
            opts: {{eta: [0, 1]}}
        nfe: [4]
        seeds: 0-3
        metrics: {{names: [pixel-fd, ode-error]}}
    """)
    sw = load_sweep(cfg)
    by_id = {c.id: c for c in sw.cells}
    assert [c.cfg.metrics for c in sw.cells if c.solver == "euler"] == [["pixel-fd", "ode-error"]]
    stoch = [c for c in sw.cells if c.options.get("eta") == 1]
    det = [c for c in sw.cells if c.options.get("eta") == 0]
    assert stoch[0].cfg.metrics == ["pixel-fd"] and det[0].cfg.metrics == ["pixel-fd", "ode-error"]
    counts = run_sweep(sw)
    assert counts.get("failed", 0) == 0, counts
    recs = {r["cell"]: r for r in load_records(sw.out)[1]}
    assert "ode_rms_error" in recs[det[0].id]["metrics"]
    assert "ode_rms_error" not in recs[stoch[0].id]["metrics"] and "pixel_fd" in recs[stoch[0].id]["metrics"]
    assert len(by_id) == 3
    # asking for ode-error alone leaves a stochastic cell with no exact metric at all
    only = write_cfg(tmp_path, f"""
        name: odeonly
        models: [{TINY}]
        solvers: [{{name: ddim, opts: {{eta: 1}}}}]
        nfe: [4]
        seeds: 0-1
        metrics: {{names: [ode-error]}}
    """, name="only.yaml")
    assert load_sweep(only).cells[0].cfg.metrics == ["none"]


def test_metrics_key_takes_refs_per_space_and_spread_options(tmp_path):
    cfg = write_cfg(tmp_path, """
        name: m
        models: [gaussian:shape=1x4x4]
        solvers: [euler]
        nfe: [3]
        seeds: 0-3
        metrics:
          fid: [cifar10-32x32, dino.npz]
          names: [fid, kid, prc, fd-dinov2]
          subsets: 5
          protocol: min
          bootstrap: 20
          feature_weights: {dinov2: /w/dinov2_vitl14_pretrain.pth}
    """)
    (c,) = load_sweep(cfg).cells
    assert c.cfg.fid_ref == "cifar10-32x32,dino.npz" and c.cfg.metrics == ["fid", "kid", "prc", "fd-dinov2"]
    assert c.cfg.metric_opts == {"subsets": 5, "protocol": "min", "bootstrap": 20}
    assert c.cfg.feature_weights == {"dinov2-vit-l-14": "/w/dinov2_vitl14_pretrain.pth"}
    assert "feature_weights" not in c.cfg.identity() and c.cfg.identity()["metric_opts"]["protocol"] == "min"
    for bad, match in (("protocol: median", "fid-protocol 'median'"), ("subsets: two", "metrics.subsets"),
                       ("feature_weights: {vgg: x}", "unknown feature space 'vgg'")):
        cfg = write_cfg(tmp_path, f"""
            name: m
            models: [gaussian:shape=1x4x4]
            solvers: [euler]
            nfe: [3]
            metrics:
              {bad}
        """, name="bad.yaml")
        with pytest.raises(BenchError, match=match):
            load_sweep(cfg)
