"""`bench sample`, `bench solvers`, `bench models` and `--help` through Typer's test runner.

Every bad input of the foundation issue: exit code 2, one line `error: <problem>; <fix>.` on
stderr, no traceback, and nothing half-written left (no run directory, no temporary directory).
"""

from __future__ import annotations

import json
import os
import re

import pytest
from typer.testing import CliRunner

from sampler_bench.cli import app
from sampler_bench.models.registry import MODELS
from sampler_bench.solvers import REGISTRY, SolverSpec

runner = CliRunner()
SMALL = ["--model", "gmm:shape=3x8x8,rank=4"]


def bench(*args):
    return runner.invoke(app, [str(a) for a in args])


def sample(out, *extra, solver="heun", nfe=3, num=2):
    return bench("sample", "--solver", solver, "--nfe", nfe, "--num", num, "--out", out, *SMALL, *extra)


def assert_user_error(res, *fragments):
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
    # a progress bar may precede an error that happens mid-run; the error itself is one line
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and "━" not in ln and not ln.startswith("progress: ")]
    assert len(lines) == 1, f"expected one line, got: {res.stderr!r}"
    assert lines[0].startswith("error: ") and lines[0].rstrip().endswith("."), lines[0]
    assert ";" in lines[0], f"message should name the problem and the fix: {lines[0]}"
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def snapshot(d):
    return sorted(os.listdir(d))


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------

BAD = [
    (["--model", "nope"], ["unknown model 'nope'", "bench models"]),
    (["--model", "gmn"], ["did you mean gmm"]),
    (["--model", "gmm:colour=red"], ["takes parameters", "colour=red"]),
    (["--model", "gmm:shape=3x"], ["shape='3x' is not valid; give C x H x W"]),
    (["--model", "gmm:rank=two"], ["rank='two' is not valid; give an integer"]),
    (["--solver", "huen"], ["unknown solver 'huen'; did you mean heun"]),
    (["--solver", "nope"], ["unknown solver 'nope'", "bench solvers"]),
    (["--nfe", "0"], ["--nfe must be a positive integer"]),
    (["--nfe", "4"], ["cannot use exactly 4 NFE", "nearest valid values are 3 or 5"]),
    (["--seeds", "0-"], ["malformed seeds '0-'"]),
    (["--seeds", "a,b"], ["malformed seeds"]),
    (["--seeds", "9-3"], ["reversed; write 3-9"]),
    (["--seeds", "1,1"], ["repeat a seed"]),
    (["--seeds", "0-3", "--num", "4"], ["--seeds and --num", "give only one"]),
    (["--num", "0"], ["--num must be a positive integer"]),
    (["--batch", "0"], ["--batch must be a positive integer"]),
    (["--class-label", "10"], ["--class-label 10 is out of range", "use 0..9"]),
    (["--class-label", "-1"], ["out of range"]),
    (["--class-label", "cat"], ["not a class index"]),
    (["--model", "gaussian:shape=1x4x4", "--class-label", "0"], ["unconditional; drop --class-label"]),
    (["--model", "gaussian:shape=1x4x4", "--class-label", "random"], ["unconditional"]),
    (["--schedule", "nope"], ["unknown schedule 'nope'"]),
    (["--schedule", "karras:rho=x"], ["not a number"]),
    (["--schedule", "discrete-uniform"], ["needs a discrete-time model"]),
    (["--opt", "eta"], ["not of the form key=value"]),
    (["--solver", "ddim", "--opt", "eta=1", "--opt", "eta=0"], ["given twice"]),
    (["--opt", "eta=1"], ["solver 'heun' has no option 'eta'"]),
    (["--solver", "ddim", "--opt", "eta=3"], ["too large"]),
    (["--device", "tpu"], ["unknown device 'tpu'"]),
]


@pytest.mark.parametrize("extra,fragments", BAD, ids=[" ".join(e) for e, _ in BAD])
def test_bad_input(tmp_path, extra, fragments):
    num = [] if {"--seeds", "--num"} & set(extra) else ["--num", 2]
    res = bench("sample", "--solver", "heun", "--nfe", 3, *num, "--out", tmp_path / "run", *SMALL, *extra)
    assert_user_error(res, *fragments)
    assert snapshot(tmp_path) == []


def test_nfe_below_a_solvers_minimum(tmp_path, monkeypatch):
    """A solver whose fewest steps cost more than one NFE (multistep methods): the error names the minimum."""
    spec = SolverSpec(name="three-step", fn=lambda *a, **k: None, family="test", summary="test",
                      nfe=lambda s, o: s + 1, nfe_rule="steps + 1", min_steps=3)
    monkeypatch.setitem(REGISTRY, "three-step", spec)
    assert_user_error(sample(tmp_path / "run", solver="three-step", nfe=2),
                      "needs at least 4 NFE", "use --nfe 4 or more")
    assert snapshot(tmp_path) == []


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda(tmp_path):
    assert_user_error(sample(tmp_path / "run", "--device", "cuda"), "no CUDA device", "--device cpu")


def test_out_dir_that_is_not_a_run(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert_user_error(sample(out), "exists and is not a sampler_bench run", "choose another --out")
    assert snapshot(out) == ["notes.txt"] and snapshot(tmp_path) == ["mine"]
    (tmp_path / "file.npz").write_text("x")
    assert_user_error(sample(tmp_path / "file.npz"), "is not a sampler_bench run")
    assert snapshot(tmp_path) == ["file.npz", "mine"]
    # --overwrite never replaces what is not a run of ours
    assert_user_error(sample(out, "--overwrite"), "--overwrite will not replace", "not a sampler_bench run")
    assert_user_error(sample(tmp_path / "file.npz", "--overwrite"), "--overwrite will not replace")
    assert snapshot(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    assert snapshot(tmp_path) == ["file.npz", "mine"]
    # an empty directory is fine
    (tmp_path / "empty").mkdir()
    res = sample(tmp_path / "empty", "--overwrite")
    assert res.exit_code == 0, res.output
    assert sorted(snapshot(tmp_path / "empty")) == ["grid.png", "metrics.json", "run.json", "samples.npz"]


def test_out_dir_with_another_run(tmp_path):
    out = tmp_path / "run"
    assert sample(out).exit_code == 0
    before = (out / "run.json").read_text()
    res = sample(out, nfe=5)
    assert_user_error(res, "holds a run with a different config", "choose another --out or pass --overwrite")
    assert (out / "run.json").read_text() == before and snapshot(tmp_path) == ["run"]
    # the same config again: nothing to do, exit 0
    res = sample(out, "--batch", 1)
    assert res.exit_code == 0 and "already holds this run" in res.stdout
    assert (out / "run.json").read_text() == before
    res = sample(out, "--overwrite", nfe=5)
    assert res.exit_code == 0, res.output
    assert json.loads((out / "run.json").read_text())["nfe_counted"] == 5
    assert snapshot(tmp_path) == ["run"]


def test_out_under_a_regular_file(tmp_path):
    """Unwritable output that fails for root too: a path below a regular file."""
    (tmp_path / "plain").write_text("x")
    assert_user_error(sample(tmp_path / "plain" / "run"), "cannot write to", "is a file, not a directory", "choose another --out")
    assert snapshot(tmp_path) == ["plain"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: a 0o555 directory does not stop root from writing (covered by test_out_under_a_regular_file)")
def test_out_in_read_only_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert_user_error(sample(ro / "run"), "cannot write to", "not writable", "choose another --out")
        assert snapshot(ro) == []
        assert_user_error(sample(ro / "deeper" / "run"), "not writable")
        assert snapshot(ro) == []
    finally:
        ro.chmod(0o755)


def test_out_write_failure_mid_way_is_a_user_error(tmp_path, monkeypatch):
    """An OSError while writing (disk full, permissions changed): one-line error, no temporary directory left."""
    import sampler_bench.sampling as sampling

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sampling, "write_npz", full)
    assert_user_error(sample(tmp_path / "run"), "cannot write the run directory", "No space left on device")
    assert snapshot(tmp_path) == []


# ------------------------------------------------------------------------------------------------
# Good runs
# ------------------------------------------------------------------------------------------------


def test_sample_writes_a_run(tmp_path):
    out = tmp_path / "demo"
    res = bench("sample", "--solver", "ddim", "--opt", "eta=1", "--nfe", 6, "--seeds", "0-2,7", "--batch", 3,
                "--class-label", "random", "--save-images", "--out", out, *SMALL)
    assert res.exit_code == 0, res.output
    assert re.search(r"wrote 4 samples to .*demo \(NFE counted 6, .* 6 steps, schedule time-uniform\)", res.stdout)
    rec = json.loads((out / "run.json").read_text())
    assert rec["config"]["seeds"] == [0, 1, 2, 7] and rec["config"]["opts"] == {"eta": 1.0}
    assert rec["resolved"]["options"] == {"eta": 1.0} and rec["resolved"]["stochastic"] is True
    assert snapshot(out / "images") == ["000000.png", "000001.png", "000002.png", "000007.png"]
    assert snapshot(tmp_path) == ["demo"]


def test_short_flags_and_defaults(tmp_path):
    res = bench("sample", "-s", "euler", "-n", 2, "-o", tmp_path / "r", "-b", 64, "--num", 3, "-m", "gaussian:shape=1x4x4")
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "r" / "run.json").read_text())
    assert rec["resolved"]["schedule"] == "karras" and rec["resolved"]["class_labels"] is None
    assert rec["config"]["model"] == "gaussian:shape=1x4x4" and rec["num_images"] == 3


# ------------------------------------------------------------------------------------------------
# Listing and help
# ------------------------------------------------------------------------------------------------


def test_bench_solvers_one_line_each():
    res = bench("solvers")
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1 + len(REGISTRY)  # header + one line per solver, even at 80 columns
    for spec in REGISTRY.values():
        (line,) = [ln for ln in lines if ln.split()[0] == spec.name]
        assert spec.nfe_rule in line and spec.summary in line
    verbose = bench("solvers", "-v")
    assert verbose.exit_code == 0 and "S_churn=40.0" in verbose.stdout and "eta=0.0" in verbose.stdout


def test_bench_models_one_line_each():
    res = bench("models")
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    for name, entry in MODELS.items():
        (line,) = [ln for ln in lines if ln.split()[0] == name]
        assert entry.summary in line


SAMPLE_OPTIONS = ["--solver", "--nfe", "--out", "--model", "--seeds", "--num", "--batch", "--schedule", "--opt",
                  "--class-label", "--device", "--save-images", "--overwrite"]


def test_help():
    top = bench("--help")
    assert top.exit_code == 0
    for cmd in ("sample", "solvers", "models"):
        assert cmd in top.stdout
    h = bench("sample", "--help")
    assert h.exit_code == 0
    text = " ".join(h.stdout.split())
    for opt in SAMPLE_OPTIONS:
        assert opt in text, opt
    assert "Sample with one solver at one NFE" in text and "karras" in text and "discrete-uniform" in text
    assert "--verbose" in bench("solvers", "--help").stdout
    assert "List the available models" in " ".join(bench("models", "-h").stdout.split())


def test_module_entry_point_error_exit_code(tmp_path):
    """`python -m sampler_bench` (the `bench` script's entry) exits 2 with one line on a user error."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "sampler_bench", "sample", "--solver", "nope", "--nfe", "3",
                        "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().startswith("error: unknown solver 'nope'") and "\n" not in p.stderr.strip()
    assert snapshot(tmp_path) == []


def test_every_command_has_complete_help():
    """`--help` on every registered command (other modules' too): a description and help for every parameter."""
    import typer

    def walk(cmd, path):
        yield path, cmd
        for name, sub in (getattr(cmd, "commands", None) or {}).items():
            yield from walk(sub, path + [name])

    commands = list(walk(typer.main.get_command(app), []))
    assert {"sample", "solvers", "models"} <= {p[0] for p, _ in commands if p}
    for path, cmd in commands:
        assert cmd.help, f"`bench {' '.join(path)}` has no description"
        undocumented = [p.name for p in cmd.params if p.name != "help" and not getattr(p, "help", None)]
        assert not undocumented, f"`bench {' '.join(path)}`: no help for {undocumented}"
        res = bench(*path, "--help")
        assert res.exit_code == 0 and "Usage: bench" in res.stdout, (path, res.output)
