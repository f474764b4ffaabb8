"""Sweeps in CI: the end-to-end rehearsal (two shards, merge, gates against a baseline with one
regressed cell, JUnit, benchmark JSON, step summary), conflicting merges, --offline, --shard auto."""

from __future__ import annotations

import csv
import json
import math
import shutil
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sampler_bench.cli import app
from sampler_bench.errors import BenchError
from sampler_bench.sweep.shards import resolve_shard, shard_from_env

ROOT = Path(__file__).resolve().parents[1]
CI_CFG = ROOT / "configs" / "ci.yaml"
REGRESSED = "gmm-8x8__ddim-eta0__nfe005"


@pytest.fixture(autouse=True)
def _no_real_step_summary(monkeypatch):
    """Under GitHub Actions the suite must not append its test summaries to the real job summary."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def invoke(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def validate_benchmark_json(data) -> None:
    """github-action-benchmark's custom tool format: a list of {name, unit, value[, range, extra]}."""
    assert isinstance(data, list) and data
    names = set()
    for e in data:
        assert isinstance(e, dict) and set(e) <= {"name", "unit", "value", "range", "extra"}, e
        assert isinstance(e["name"], str) and e["name"] and isinstance(e["unit"], str)
        assert isinstance(e["value"], (int, float)) and not isinstance(e["value"], bool) and math.isfinite(e["value"])
        for k in ("range", "extra"):
            assert k not in e or isinstance(e[k], str)
        assert e["name"] not in names  # one series per name
        names.add(e["name"])


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """configs/ci.yaml run as two shards into two directories (as on two machines), then merged."""
    base = tmp_path_factory.mktemp("ci")
    r1 = invoke("sweep", CI_CFG, "--shard", "auto", "--out", base / "s1",
                env={"SAMPLER_BENCH_SHARD_INDEX": "1", "SAMPLER_BENCH_SHARD_COUNT": "2"})
    assert r1.exit_code == 0, r1.output
    r2 = invoke("sweep", CI_CFG, "--shard", "auto", "--out", base / "s2",
                env={"SAMPLER_BENCH_SHARD_INDEX": "", "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2"})
    assert r2.exit_code == 0, r2.output
    one = {p.name for p in (base / "s1" / "cells").glob("*.json")}
    two = {p.name for p in (base / "s2" / "cells").glob("*.json")}
    assert one and two and not one & two  # disjoint shards
    assert (base / "s1" / "env" / "shard-1-of-2.json").is_file() and (base / "s2" / "env" / "shard-2-of-2.txt").is_file()
    res = invoke("merge", base / "m", base / "s1", base / "s2")
    assert res.exit_code == 0, res.output
    return base


def test_merged_shards_equal_one_run(shards):
    m = shards / "m"
    rows = list(csv.DictReader((m / "results.csv").read_text().splitlines()))
    assert len(rows) == 15 and sum(r["status"] == "ok" for r in rows) == 13 and sum(r["status"] == "skipped" for r in rows) == 2
    assert sorted(p.name for p in (m / "env").iterdir()) == ["shard-1-of-2.json", "shard-1-of-2.txt", "shard-2-of-2.json", "shard-2-of-2.txt"]
    env = json.loads((m / "env" / "shard-1-of-2.json").read_text())
    assert env["torch"] and "cache_root" in env and env["needs"] == []
    # run directories are referenced where the shards wrote them; report reads them
    rec = json.loads((m / "cells" / f"{REGRESSED}.json").read_text())
    assert (m / rec["run_dir"] / "samples.npz").is_file()
    res = invoke("report", m, "--out", shards / "rep")
    assert res.exit_code == 0, res.output
    assert (shards / "rep" / "samples.png").is_file()
    # --copy makes a self-contained directory; an earlier merge is replaced only with --overwrite
    res = invoke("merge", shards / "mc", shards / "s1", shards / "s2", "--copy")
    assert res.exit_code == 0 and (shards / "mc" / "runs" / REGRESSED / "samples.npz").is_file()
    res = invoke("merge", shards / "mc", shards / "s1", shards / "s2")
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert invoke("merge", shards / "mc", shards / "s1", shards / "s2", "--overwrite").exit_code == 0
    res = invoke("merge", shards / "s1", shards / "s2")  # OUT is a shard's own non-merge directory
    assert res.exit_code == 2 and "not an earlier merge" in res.output


def test_gates_pass_on_the_merged_shards(shards):
    res = invoke("check", shards / "m", "--json", "--baseline", shards / "m" / "results.csv",
                 "--gates", CI_CFG)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # one JSON object, nothing else on stdout
    assert out["passed"] is True and out["counts"]["fail"] == 0 and out["counts"]["pass"] >= 8
    res = invoke("check", shards / "m")  # the gates stored in sweep.json
    assert res.exit_code == 0 and "all gates passed" in res.output


def test_regressed_cell_fails_with_junit_summary_and_benchmark_json(shards, tmp_path, monkeypatch):
    m = shards / "m"
    # a baseline in which one cell was much better: the current run regressed there
    rows = list(csv.DictReader((m / "results.csv").read_text().splitlines()))
    for r in rows:
        if r["cell"] == REGRESSED:
            r["pixel_fd"] = str(float(r["pixel_fd"]) / 10)
    base = tmp_path / "baseline.csv"
    with open(base, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    gates = tmp_path / "gates.yaml"
    own = yaml.safe_load(CI_CFG.read_text())["gates"]  # the config's gates plus one against the baseline
    gates.write_text(yaml.safe_dump({"gates": own + [{"metric": "pixel_fd", "max_vs_baseline": {"ratio": 1.02, "slack": 0.05}}]}))
    summary = tmp_path / "step_summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    junit, bench = tmp_path / "junit.xml", tmp_path / "bench.json"
    res = invoke("check", m, "--baseline", base, "--gates", gates, "--junit", junit, "--benchmark-json", bench)
    assert res.exit_code == 1, res.output
    assert "FAIL" in res.output and REGRESSED in res.output
    suites = ET.parse(junit).getroot()
    cases = suites.findall("./testsuite/testcase")
    failed = [c for c in cases if c.find("failure") is not None]
    assert len(failed) == 1 and REGRESSED in failed[0].get("name") and "baseline" in failed[0].get("name")
    assert "limit" in failed[0].find("failure").get("message")
    assert int(suites.get("failures")) == 1 and int(suites.get("tests")) == len(cases)
    assert len([c for c in cases if c.find("skipped") is not None]) == int(suites.get("skipped")) > 0  # heun/edm NFE 6
    md = summary.read_text()
    assert md.startswith("earlier step\n") and "FAILED" in md  # appended, not replaced
    assert REGRESSED in md.split("### Failed")[1].split("###")[0]
    data = json.loads(bench.read_text())
    validate_benchmark_json(data)
    assert any(e["name"] == f"{REGRESSED} pixel_fd" for e in data)
    assert not any("floor" in e["name"] for e in data)


def test_sweep_check_runs_the_gates_at_the_end(tmp_path):
    cfg = tmp_path / "g.yaml"
    cfg.write_text(textwrap.dedent("""\
        name: g
        models: ['gmm:classes=2,shape=3x8x8']
        solvers: [euler, heun]
        nfe: [3]
        num: 2
        device: cpu
        gates:
          - metric: ode_rms_error
            max: 1.0
    """))
    res = invoke("sweep", cfg, "--out", tmp_path / "o", "--check", "--junit", tmp_path / "j.xml")
    assert res.exit_code == 1, res.output  # heun at NFE 3 (two steps) is far off the exact ODE solution
    failed = [c.get("name") for c in ET.parse(tmp_path / "j.xml").getroot().iter("testcase") if c.find("failure") is not None]
    assert failed == ["gmm-classes2-shape3x8x8__heun__nfe003 | ode_rms_error <= 1"]
    # with a shard, the gates are checked on that shard's cells (resumed: nothing re-run)
    res = invoke("sweep", cfg, "--out", tmp_path / "o", "--check", "--shard", "1/2")
    assert res.exit_code == 0 and "heun" not in res.output.split("gates of")[1]  # euler only
    res = invoke("sweep", cfg, "--out", tmp_path / "o", "--check", "--shard", "2/2")
    assert res.exit_code == 1 and "FAIL" in res.output
    cfg.write_text(cfg.read_text().replace("max: 1.0", "max: 1.0\n    where: {solver: euler}"))
    res = invoke("sweep", cfg, "--out", tmp_path / "o", "--check")
    assert res.exit_code == 0, res.output


def test_failed_missing_and_unmatched_cells_fail_their_gates(shards, tmp_path):
    m = tmp_path / "m"
    shutil.copytree(shards / "m", m)
    (m / "cells" / "gmm-8x8__euler__nfe005.json").unlink()  # a cell without a result (a missing shard)
    rec = json.loads((m / "cells" / "gmm-8x8__ddim-eta1__nfe005.json").read_text())
    rec.update(status="failed", reason="RuntimeError: boom", metrics={})
    (m / "cells" / "gmm-8x8__ddim-eta1__nfe005.json").write_text(json.dumps(rec))
    gates = tmp_path / "g.yaml"
    gates.write_text(textwrap.dedent("""\
        gates:
          - metric: pixel_fd
            max: 1.0e9
            where: {solver: [euler, ddim], nfe: 5}
          - metric: pixel_fd
            max: 1.0e9
            where: {model: nothing-*}
    """))
    res = invoke("check", m, "--gates", gates, "--json")
    assert res.exit_code == 1
    out = json.loads(res.stdout)
    by_cell = {(r["gate"], r["cell"]): r for r in out["results"]}
    assert by_cell[(0, "gmm-8x8__euler__nfe005")]["status"] == "fail" and "not run" in by_cell[(0, "gmm-8x8__euler__nfe005")]["message"]
    assert by_cell[(0, "gmm-8x8__ddim-eta1__nfe005")]["status"] == "fail" and "boom" in by_cell[(0, "gmm-8x8__ddim-eta1__nfe005")]["message"]
    assert by_cell[(0, "gmm-8x8__ddim-eta0__nfe005")]["status"] == "pass"
    assert by_cell[(1, "(no cell)")]["status"] == "fail"


def test_conflicting_merge_is_refused(shards, tmp_path):
    s2 = tmp_path / "s2"
    shutil.copytree(shards / "s2", s2)
    # the same cell with a different result in both shards
    cell = sorted((shards / "s1" / "cells").glob("*.json"))[0]
    rec = json.loads(cell.read_text())
    if rec["status"] == "ok":
        rec["metrics"]["pixel_fd"] = rec["metrics"]["pixel_fd"] + 1.0
    (s2 / "cells" / cell.name).write_text(json.dumps(rec))
    res = invoke("merge", tmp_path / "m", shards / "s1", s2)
    assert res.exit_code == 2 and "two different results" in res.output and rec["cell"] in res.output
    assert not (tmp_path / "m").exists()  # nothing half-written
    # the identical record twice (a shard uploaded twice) is not a conflict
    (s2 / "cells" / cell.name).write_text(cell.read_text())
    assert invoke("merge", tmp_path / "m", shards / "s1", s2).exit_code == 0
    # shards of a different config are refused
    s3 = tmp_path / "s3"
    shutil.copytree(shards / "s2", s3)
    man = json.loads((s3 / "sweep.json").read_text())
    man["config"]["num"] = 8
    (s3 / "sweep.json").write_text(json.dumps(man))
    res = invoke("merge", tmp_path / "m3", shards / "s1", s3)
    assert res.exit_code == 2 and "different config" in res.output and "num" in res.output


def test_offline_with_a_missing_file_fails_before_sampling(tmp_path, monkeypatch):
    import sampler_bench.sampling as sampling

    monkeypatch.setenv("SAMPLER_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SAMPLER_BENCH_OFFLINE", "")  # recorded, so what --offline sets is undone afterwards
    calls = []
    monkeypatch.setattr(sampling, "run_sample", lambda *a, **k: calls.append(a))
    cfg = tmp_path / "edm.yaml"
    cfg.write_text(textwrap.dedent("""\
        name: needs-a-checkpoint
        models:
          - 'gmm:classes=2,shape=3x8x8'
          - edm-cifar10-32x32-cond-vp
        solvers: [euler]
        nfe: [3]
        num: 2
        device: cpu
    """))
    out = tmp_path / "o"
    res = invoke("sweep", cfg, "--out", out, "--offline")
    assert res.exit_code == 2 and "offline" in res.output and "edm-cifar10-32x32-cond-vp" in res.output
    assert "bench download" in res.output and str(tmp_path / "cache" / "checkpoints") in res.output
    assert not out.exists() and not calls  # refused before the first cell, nothing written
    monkeypatch.setenv("SAMPLER_BENCH_OFFLINE", "1")  # the variable alone does the same
    res = invoke("sweep", cfg, "--out", out)
    assert res.exit_code == 2 and "offline" in res.output and not out.exists() and not calls
    res = invoke("download", cfg)
    assert res.exit_code == 2 and "edm-cifar10-32x32-cond-vp" in res.output
    res = invoke("env", cfg)
    assert res.exit_code == 0 and "checkpoint edm-cifar10-32x32-cond-vp: MISSING" in res.output


def test_download_config_fetches_into_the_cache_root(tmp_path, monkeypatch):
    from sampler_bench.metrics import inception, refs

    monkeypatch.setenv("SAMPLER_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SAMPLER_BENCH_OFFLINE", raising=False)
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    got = []

    def fake(url, dst):
        got.append(url)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(b"x" * 1500)

    monkeypatch.setattr(refs, "_download", fake)
    monkeypatch.setattr(inception, "_download", fake)
    cfg = tmp_path / "fid.yaml"
    cfg.write_text("models: ['gmm:classes=2,shape=3x8x8']\nsolvers: [euler]\nnfe: [3]\nnum: 2\nmetrics: {fid: cifar10-32x32}\n")
    res = invoke("download", cfg)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cache" / "refs" / "cifar10-32x32.npz").is_file()
    assert (tmp_path / "cache" / "weights" / inception.WEIGHTS_FILENAME).is_file()
    assert "1.5 KB" in res.output and "3.0 KB in all" in res.output and len(got) == 2
    res = invoke("download", cfg)  # everything present: nothing fetched again
    assert res.exit_code == 0 and "already present" in res.output and len(got) == 2
    res = invoke("env", cfg, "--json")
    info = json.loads(res.stdout)
    assert {n["kind"]: n["present"] for n in info["needs"]} == {"reference statistics": True, "Inception weights": True}
    assert {c["folder"]: c["files"] for c in info["cache"]} == {"refs": 1, "weights": 1}


def test_cache_root_and_subfolders(tmp_path, monkeypatch):
    from sampler_bench.cache import cache_root, subdir
    from sampler_bench.metrics import inception, refs
    from sampler_bench.models import checkpoints

    monkeypatch.delenv("SAMPLER_BENCH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "sampler_bench"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "sampler_bench"
    monkeypatch.setenv("SAMPLER_BENCH_CACHE", str(tmp_path / "c"))
    assert checkpoints.cache_dir() == subdir("checkpoints") == tmp_path / "c" / "checkpoints"
    assert refs.cache_dir() == tmp_path / "c" / "refs"
    assert inception.cache_path().parent == tmp_path / "c" / "weights"
    with pytest.raises(ValueError):
        subdir("../x")


def test_shard_auto_from_the_environment():
    assert shard_from_env({"SAMPLER_BENCH_SHARD_INDEX": "2", "SAMPLER_BENCH_SHARD_COUNT": "3"})[0] == (2, 3)
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4"})[0] == (1, 4)
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"})[0] == (4, 4)
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_STEP": "2"})[0] == (4, 4)
    assert shard_from_env({"CI_NODE_INDEX": "1", "CI_NODE_TOTAL": "2"})[0] == (1, 2)
    assert resolve_shard("2/5", {}) == (2, 5) and resolve_shard(None, {}) is None
    for env, msg in (({}, "no job index"), ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4"}, "out of range"),
                     ({"SAMPLER_BENCH_SHARD_INDEX": "x", "SAMPLER_BENCH_SHARD_COUNT": "2"}, "not an integer"),
                     ({"SLURM_ARRAY_TASK_ID": "1"}, "SLURM_ARRAY_TASK_COUNT")):
        with pytest.raises(BenchError, match=msg):
            resolve_shard("auto", env)


@pytest.mark.parametrize("gate, key", [
    ("{metric: fid}", "gates[0]"),
    ("{metric: fid, max: 1, min: 0}", "gates[0]"),
    ("{metric: fid, max: high}", "gates[0].max"),
    ("{metric: fid, maxx: 1}", "gates[0].maxx"),
    ("{metric: fid, max_vs_baseline: {ratio: 1.02, slck: 1}}", "gates[0].max_vs_baseline.slck"),
    ("{metric: fid, max: 1, where: {nfe: 'about 10'}}", "gates[0].where.nfe"),
    ("{metric: fid, max: 1, where: {sampler: heun}}", "gates[0].where.sampler"),
    ("{metric: fid, max_vs_floor: -1}", "gates[0].max_vs_floor"),
])
def test_bad_gates_are_one_line_errors_naming_the_key(tmp_path, gate, key):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"models: [gmm]\nsolvers: [euler]\nnfe: [3]\nnum: 2\ngates:\n  - {gate}\n")
    res = invoke("sweep", cfg, "--dry-run")
    assert res.exit_code == 2 and f"key '{key}'" in res.output and len(res.output.strip().splitlines()) == 1


def test_check_usage_errors(shards, tmp_path):
    res = invoke("check", tmp_path)
    assert res.exit_code == 2 and "not a sweep results directory" in res.output
    g = tmp_path / "g.yaml"
    g.write_text("gates:\n  - {metric: pixel_fd, max_vs_baseline: {ratio: 1.1}}\n")
    res = invoke("check", shards / "m", "--gates", g)
    assert res.exit_code == 2 and "--baseline" in res.output
    res = invoke("check", shards / "m", "--gates", g, "--baseline", tmp_path / "nope.csv")
    assert res.exit_code == 2 and "does not exist" in res.output
    res = invoke("sweep", CI_CFG, "--junit", tmp_path / "j.xml")
    assert res.exit_code == 2 and "--check" in res.output


def test_sample_json_prints_one_object(tmp_path):
    res = CliRunner().invoke(app, ["sample", "--model", "gmm:classes=2,shape=3x8x8", "--solver", "heun", "--nfe", "3",
                                   "--num", "2", "--out", str(tmp_path / "r"), "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["nfe_counted"] == 3 and rec["num_images"] == 2 and "pixel_fd" in rec["metrics"]
    assert rec == {**json.loads((tmp_path / "r" / "run.json").read_text()), "out": str(tmp_path / "r")}


def test_other_torchrun_ranks_write_no_ci_files(shards, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets both
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    res = invoke("check", shards / "m", "--junit", tmp_path / "j.xml", "--json")
    assert res.exit_code == 0 and res.stdout == "" and not (tmp_path / "j.xml").exists() and not summary.exists()
    monkeypatch.setenv("RANK", "0")
    res = invoke("check", shards / "m", "--junit", tmp_path / "j.xml", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["passed"] and (tmp_path / "j.xml").is_file() and summary.is_file()
