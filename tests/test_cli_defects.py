"""Issue 9: nothing a user types loses their data or prints a traceback (one test per item).

Every test goes through the CLI as a user types it (Typer's runner, or a subprocess where the
terminal/pipe or the interpreter's imports matter) and checks the exit code, the one-line message
and that nothing was written or deleted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sampler_bench.cli import app

runner = CliRunner()
SMALL = ["--model", "gmm:shape=3x8x8,rank=4"]
ROOT = Path(__file__).resolve().parents[1]


def bench(*args):
    return runner.invoke(app, [str(a) for a in args])


def sample(out, *extra, solver="heun", nfe=3, num=2):
    return bench("sample", "--solver", solver, "--nfe", nfe, "--num", num, "--out", out, *SMALL, *extra)


def one_error(res, *fragments) -> str:
    """Exit 2, no traceback, exactly one line `error: problem; fix.` on stderr holding ``fragments``."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and "━" not in ln and not ln.startswith("progress: ")]
    assert len(lines) == 1, f"expected one line, got: {res.stderr!r}"
    line = lines[0]
    assert line.startswith("error: ") and line.rstrip().endswith(".") and ";" in line, line
    for f in fragments:
        assert f in line, (f, line)
    return line


def tree(d: Path) -> dict[str, bytes]:
    """Every file under ``d`` with its content: a before/after snapshot."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(Path(d).rglob("*")) if p.is_file()}


# 1 -------------------------------------------------------------------------------------------
def test_01_overwrite_never_deletes_user_files(tmp_path, monkeypatch):
    out = tmp_path / "myresults"
    assert sample(out).exit_code == 0
    (out / "my_notes.txt").write_text("precious")
    before = tree(tmp_path)
    one_error(sample(out, "--overwrite", nfe=5), "--overwrite will not replace", "my_notes.txt")
    assert tree(tmp_path) == before
    # the working directory and its parents are never replaced, whatever they hold
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "data.csv").write_text("1,2\n")
    monkeypatch.chdir(proj)
    before = tree(tmp_path)
    one_error(sample(".", "--overwrite"), "working directory or a parent")
    one_error(sample("..", "--overwrite"), "working directory or a parent")
    assert tree(tmp_path) == before
    assert sorted(os.listdir(tmp_path)) == ["myresults", "proj"]  # no .old / .tmp left behind
    # a run of ours (and only that) is replaced
    (out / "my_notes.txt").unlink()
    res = sample(out, "--overwrite", nfe=5)
    assert res.exit_code == 0, res.output
    assert json.loads((out / "run.json").read_text())["nfe_counted"] == 5


# 2 -------------------------------------------------------------------------------------------
TINY_SWEEP = """
name: t
models: [{model}]
solvers: [euler]
nfe: [2]
num: 2
batch: 2
device: cpu
"""


def write_sweep(tmp_path, extra: str = "", model: str = "'gmm:classes=2,shape=3x8x8,rank=4'", name="s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(TINY_SWEEP.format(model=model) + extra)
    return p


@pytest.mark.parametrize("sched, fragment", [("karras:rho=0", "rho=0 is not valid; rho must be > 0"),
                                             ("time-poly:order=0", "order=0 is not valid; order must be > 0"),
                                             ("karras:rho=-2", "rho must be > 0"),
                                             ("karras:rho=nan", "not a finite number")])
def test_02_schedule_exponents_refused_everywhere(tmp_path, sched, fragment):
    one_error(sample(tmp_path / "run", "--schedule", sched, solver="euler"), fragment)
    one_error(bench("fie", "--out", tmp_path / "fie", "--schedule", sched), fragment)
    cfg = write_sweep(tmp_path, f"schedule: '{sched}'\n")
    one_error(bench("sweep", cfg, "--dry-run", "--out", tmp_path / "o"), fragment)
    assert sorted(os.listdir(tmp_path)) == ["s.yaml"]


# 3 -------------------------------------------------------------------------------------------
def test_03_huge_seed_refused_before_sampling(tmp_path):
    res = bench("sample", "--solver", "heun", "--nfe", 3, "--seeds", "99999999999999999999", "--out", tmp_path / "r", *SMALL)
    one_error(res, "seed 99999999999999999999 is out of range", "0..4294967295")
    one_error(bench("sample", "--solver", "heun", "--nfe", 3, "--num", 10**12, "--out", tmp_path / "r", *SMALL),
              "too many samples", "split the work")
    assert os.listdir(tmp_path) == []


# 4 -------------------------------------------------------------------------------------------
def test_04_user_text_is_never_markup(tmp_path):
    assert "unknown solver '[/red]'" in one_error(sample(tmp_path / "r", solver="[/red]"))
    assert "unknown solver '[heun]'; did you mean heun?" in one_error(sample(tmp_path / "r", solver="[heun]"))
    res = sample(tmp_path / "[bold]x")
    assert res.exit_code == 0, res.output
    assert "[bold]x" in res.stdout and (tmp_path / "[bold]x" / "run.json").is_file()
    # a checkpoint path and a pickle's content with markup: printed as they are
    (tmp_path / "[").mkdir()
    weird = tmp_path / "[/]net[red].pkl"  # a folder "[" holding "]net[red].pkl"
    weird.write_bytes(b"\x80\x04}\x8c\x06[/]key\x94K\x01s.")  # {'[/]key': 1}, no 'ema'
    line = one_error(bench("sample", "--solver", "heun", "--nfe", 3, "--num", 1, "--out", tmp_path / "r2", "--model", weird))
    assert "[/]net[red].pkl" in line and "keys: [/]key" in line
    assert sorted(os.listdir(tmp_path)) == ["[", "[bold]x"]


# 5 -------------------------------------------------------------------------------------------
def test_05_unwritable_out_checked_before_any_work(tmp_path, monkeypatch):
    import sampler_bench.metrics.sources as sources

    (tmp_path / "plain").write_text("a file")
    monkeypatch.setattr(sources, "open_source", lambda *a, **k: pytest.fail("stats computed before checking --out"))
    one_error(bench("stats", "model:gmm", "--num", 4, "--out", tmp_path / "plain" / "x.npz"), "cannot write to", "is a file, not a directory")
    one_error(bench("tiny-edm", "--out", tmp_path / "plain" / "t.pkl"), "cannot write to", "is a file, not a directory")
    assert os.listdir(tmp_path) == ["plain"] and (tmp_path / "plain").read_text() == "a file"
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):  # root writes into 0o555 directories
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        try:
            one_error(bench("tiny-edm", "--out", ro / "t.pkl"), "not writable")
            assert os.listdir(ro) == []
        finally:
            ro.chmod(0o755)


# 6 -------------------------------------------------------------------------------------------
def test_06_deep_pickle_and_huge_model_are_one_line(tmp_path):
    deep = tmp_path / "deep.pkl"
    deep.write_bytes(b"\x80\x04}" + b")" + b"\x85" * 100_000 + b"K\x01s.")  # {((((...),),),): 1}
    line = one_error(bench("sample", "--solver", "heun", "--nfe", 3, "--num", 1, "--out", tmp_path / "r", "--model", deep),
                     "has no 'ema' network")
    assert len(line) < 400
    line = one_error(bench("sample", "--solver", "heun", "--nfe", 3, "--num", 1, "--out", tmp_path / "r",
                           "--model", "gmm:shape=3x100000x100000"), "needs about", "TiB of memory", "smaller shape")
    assert os.listdir(tmp_path) == ["deep.pkl"]


# 7 -------------------------------------------------------------------------------------------
def test_07_seeds_beyond_32_bits_refused(tmp_path):
    one_error(sample(tmp_path / "r", "--seeds", "0,4294967296", num=None) if False else
              bench("sample", "--solver", "heun", "--nfe", 3, "--seeds", "0,4294967296", "--out", tmp_path / "r", *SMALL),
              "seed 4294967296 is out of range", "0..4294967295")
    cfg = write_sweep(tmp_path, "").read_text().replace("num: 2", "seeds: [0, 4294967296]")
    (tmp_path / "s.yaml").write_text(cfg)
    one_error(bench("sweep", tmp_path / "s.yaml", "--dry-run", "--out", tmp_path / "o"), "seed 4294967296 is out of range")
    assert os.listdir(tmp_path) == ["s.yaml"]
    res = bench("sample", "--solver", "heun", "--nfe", 3, "--seeds", "4294967295", "--out", tmp_path / "r", *SMALL)
    assert res.exit_code == 0, res.output  # the largest seed is fine


# 8 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver, opt", [("ddim", "eta=nan"), ("edm", "S_noise=nan"), ("edm", "S_churn=inf"), ("ersde", "eta=-inf")])
def test_08_non_finite_options_refused_up_front(tmp_path, solver, opt):
    one_error(sample(tmp_path / "r", "--opt", opt, solver=solver, nfe=5), f"option {opt.split('=')[0]}=", "is not a finite number")
    assert os.listdir(tmp_path) == []


# 9 -------------------------------------------------------------------------------------------
def test_09_nfe_maximum_and_per_step_progress(tmp_path, monkeypatch):
    one_error(sample(tmp_path / "r", nfe=1_000_000_000), "above the maximum of 10,000", "--allow-large-nfe")
    # the flag lifts the maximum: the next check (Heun cannot make an even NFE) is what stops this one
    one_error(sample(tmp_path / "r", "--allow-large-nfe", nfe=10_002), "cannot use exactly 10002 NFE")
    cfg = write_sweep(tmp_path, "").read_text().replace("nfe: [2]", "nfe: [20000]")
    (tmp_path / "s.yaml").write_text(cfg)
    one_error(bench("sweep", tmp_path / "s.yaml", "--dry-run", "--out", tmp_path / "o"), "above the maximum", "allow_large_nfe: true")
    assert os.listdir(tmp_path) == ["s.yaml"]
    # long runs report every denoiser call (a pipe prints lines; here every phase is "long")
    import sampler_bench.commands.progress as progress

    monkeypatch.setattr(progress, "PIPE_FIRST_S", 0.0)
    res = sample(tmp_path / "r", "--metrics", "none", solver="euler", nfe=100, num=1)
    assert res.exit_code == 0, res.output
    assert "progress: batch 1/1: denoiser calls done 100/100" in res.stderr


# 10 ------------------------------------------------------------------------------------------
def test_10_run_dir_without_samples_is_an_error(tmp_path):
    run = tmp_path / "run"
    assert sample(run).exit_code == 0
    (run / "samples.npz").unlink()
    before = tree(tmp_path)
    one_error(bench("fid", run, "--ref", tmp_path / "ref.npz"), "without its samples.npz", "--overwrite")
    assert tree(tmp_path) == before


# 11 ------------------------------------------------------------------------------------------
def test_11_corrupt_cell_record_is_named(tmp_path):
    cfg = write_sweep(tmp_path)
    out = tmp_path / "o"
    assert bench("sweep", cfg, "--out", out, "--quiet").exit_code == 0
    rec = next((out / "cells").glob("*.json"))
    rec.write_text('{"cell": "trunc')
    before = tree(tmp_path)
    for args in (["sweep", cfg, "--out", out], ["sweep", cfg, "--dry-run", "--out", out], ["report", out]):
        one_error(bench(*args), f"cell record '{rec}' is corrupt", "delete it and run the sweep again")
    assert tree(tmp_path) == before


# 12 ------------------------------------------------------------------------------------------
def test_12_validation_comes_before_the_existing_run(tmp_path):
    run = tmp_path / "run"
    assert sample(run).exit_code == 0
    before = tree(tmp_path)
    one_error(sample(run, solver="bogus"), "unknown solver 'bogus'")
    one_error(sample(run, "--opt", "eta=1"), "has no option 'eta'")
    one_error(sample(run, nfe=5), "holds a run with a different config (differs in: nfe)")
    one_error(sample(run, "--seeds", "0-2", num=None) if False else
              bench("sample", "--solver", "heun", "--nfe", 3, "--seeds", "0-2", "--out", run, *SMALL), "differs in: seeds")
    # --device cpu against a run made with the default auto, on the same (CPU) device: the same run
    import torch

    if not torch.cuda.is_available():
        res = sample(run, "--device", "cpu")
        assert res.exit_code == 0 and "already holds this run" in res.stdout, res.output
    assert tree(tmp_path) == before


# 13 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, model, fragment", [
    ("class_label: 42\n", None, "--class-label 42 is out of range"),
    ("metrics: {names: [kid]}\n", None, "needs Inception features; add --fid"),
    ("schedule: 'karras:rho=0'\n", None, "rho must be > 0"),
    ("", "gmmm", "unknown model 'gmmm'; did you mean gmm?"),
])
def test_13_dry_run_checks_what_the_real_run_checks(tmp_path, extra, model, fragment):
    cfg = write_sweep(tmp_path, extra, **({"model": model} if model else {}))
    for args in (["--dry-run"], []):
        one_error(bench("sweep", cfg, *args, "--out", tmp_path / "o"), fragment)
    assert os.listdir(tmp_path) == ["s.yaml"]


def test_13_dry_run_sees_a_changed_config_and_a_missing_gpu_and_prints_the_cost(tmp_path):
    cfg = write_sweep(tmp_path)
    out = tmp_path / "o"
    dry = bench("sweep", cfg, "--dry-run", "--out", out)
    assert dry.exit_code == 0, dry.output
    assert "estimated cost: 4 denoiser calls (1 cells to run x NFE x samples)" in dry.stdout  # NFE 2 x 2 samples
    assert bench("sweep", cfg, "--out", out, "-q").exit_code == 0
    cfg.write_text(cfg.read_text().replace("num: 2", "num: 3"))
    before = tree(tmp_path)
    for args in (["--dry-run"], []):
        one_error(bench("sweep", cfg, *args, "--out", out), "holds results of a different config", "differs in: seeds")
    assert tree(tmp_path) == before
    import torch

    if not torch.cuda.is_available():
        gpu = write_sweep(tmp_path, name="gpu.yaml")
        gpu.write_text(gpu.read_text().replace("device: cpu", "device: cuda"))
        one_error(bench("sweep", gpu, "--dry-run", "--out", tmp_path / "g"), "no CUDA device is available")
        assert not (tmp_path / "g").exists()
