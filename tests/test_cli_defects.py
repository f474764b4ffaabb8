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
    assert "[/]net[red].pkl" in line and "keys: '[/]key'" in line  # the key's repr, bounded
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
                     "nested more than 64 levels deep")  # refused by the opcode scan before anything is built
    assert len(line) < 400
    line = one_error(bench("sample", "--solver", "heun", "--nfe", 3, "--num", 1, "--out", tmp_path / "r",
                           "--model", "gmm:shape=3x100000x100000"), "needs about", "TiB of memory", "smaller shape")
    assert os.listdir(tmp_path) == ["deep.pkl"]


# 7 -------------------------------------------------------------------------------------------
def test_07_seeds_beyond_32_bits_refused(tmp_path):
    one_error(bench("sample", "--solver", "heun", "--nfe", 3, "--seeds", "0,4294967296", "--out", tmp_path / "r", *SMALL),
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
    one_error(bench("sample", "--solver", "heun", "--nfe", 3, "--seeds", "0-2", "--out", run, *SMALL), "differs in: seeds")
    # --device cpu against a run made with the default auto, on the same (CPU) device: the same run
    import torch

    if not torch.cuda.is_available():
        res = sample(run, "--device", "cpu")
        assert res.exit_code == 0 and "already holds this run" in res.stdout, res.output
    assert tree(tmp_path) == before


# 13 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, model, fragment", [
    ("class_label: 42\n", None, "--class-label 42 is out of range"),
    ("metrics: {names: [kid]}\n", None, "needs reference statistics in its feature space; add --fid"),
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


# 14 ------------------------------------------------------------------------------------------
def _run_piped(*args, env_extra=None, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="80", OMP_NUM_THREADS="1")
    env.pop("FORCE_COLOR", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "sampler_bench", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd or ROOT, timeout=300)


def test_14_pipe_output_is_never_wrapped_truncated_or_coloured(tmp_path):
    cfg = write_sweep(tmp_path, model="'gmm:classes=2,shape=3x8x8,rank=4'")
    cfg.write_text(cfg.read_text().replace("nfe: [2]", "nfe: [2, 3]"))
    res = _run_piped("sweep", cfg, "--out", tmp_path / "a-rather-long-output-directory-name-for-a-sweep-with-results")
    assert res.returncode == 0, res.stderr
    out = res.stdout + res.stderr
    assert "\x1b[" not in out  # no colour in a pipe
    ok = [ln for ln in res.stderr.splitlines() if ln.startswith("ok ")]
    assert len(ok) == 2 and all("gmm-classes2-shape3x8x8-rank4__" in ln and ln.rstrip().endswith(tuple("0123456789")) for ln in ok), ok
    assert all(len(ln) > 80 for ln in ok)  # longer than a terminal line, and still one line each
    summary = [ln for ln in res.stdout.splitlines() if ln.startswith("sweep 't'")]
    assert len(summary) == 1 and summary[0].rstrip().endswith("results.md"), res.stdout
    refs = _run_piped("refs")
    assert refs.returncode == 0, refs.stderr
    assert "…" not in refs.stdout and "\x1b[" not in refs.stdout
    rows = [ln for ln in refs.stdout.splitlines() if "https://" in ln]
    assert rows and all(ln.split()[0] != "" and ln.rstrip().endswith(".npz") for ln in rows), refs.stdout
    # colour only when forced
    forced = _run_piped("download", "no-such-checkpoint", env_extra={"FORCE_COLOR": "1"})
    assert forced.returncode == 2 and "\x1b[" in forced.stderr and "no-such-checkpoint" in forced.stderr, forced.stderr


# 15 ------------------------------------------------------------------------------------------
def test_15_every_long_phase_has_a_progress_line_and_quiet_silences_them(tmp_path, monkeypatch):
    import sampler_bench.commands.progress as progress

    monkeypatch.setattr(progress, "PIPE_FIRST_S", 0.0)  # every phase counts as "over a second" here
    res = sample(tmp_path / "r", num=4, nfe=3)
    assert res.exit_code == 0, res.output
    err = res.stderr
    for phase in ("progress: sampling heun NFE=3 done 4/4", "progress: metrics (exact) done 4/4",
                  "progress: writing samples.npz and grid.png done", "progress: metrics (exact): final statistics done"):
        assert phase in err, err
    quiet = sample(tmp_path / "q", "--quiet", num=4, nfe=3)
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr
    assert "wrote 4 samples" in quiet.stdout
    res = bench("sweep", write_sweep(tmp_path), "--out", tmp_path / "o")
    assert res.exit_code == 0 and "progress: sampling euler NFE=2 done 2/2" in res.stderr, res.output


# 16 ------------------------------------------------------------------------------------------
def test_16_version_flags_messages_and_help(tmp_path, monkeypatch):
    from sampler_bench import __version__

    res = bench("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"sampler_bench {__version__}"
    for cmd in (["--help"], ["sample", "--help"], ["sweep", "--help"], ["fid", "--help"], ["solvers", "--help"]):
        res = bench(*cmd)
        assert res.exit_code == 0 and "<bool>" not in res.stdout, res.stdout
    one_error(sample(tmp_path / "r", "--opt", "n_int=1.5", solver="ersde", nfe=5), "use an integer")
    assert "a int" not in one_error(sample(tmp_path / "r", "--opt", "n_int=x", solver="ersde", nfe=5))
    one_error(bench("sweep", tmp_path), "is a directory, not a YAML file")
    # the first paragraph of every command's help is one line of source text (no hard line break)
    import inspect

    from sampler_bench.cli import app

    for c in app.registered_commands:
        first = inspect.cleandoc(c.callback.__doc__ or "").split("\n\n")[0]
        assert "\n" not in first, (c.name, first)
    # a metric that rounds to zero is printed without a minus sign
    import sampler_bench.sampling as sampling

    monkeypatch.setattr(sampling, "run_sample", lambda *a, **k: {"skipped": True, "metrics": {"fid": -0.0, "kid": -0.0}})
    res = sample(tmp_path / "r")
    assert res.exit_code == 0 and "fid: 0" in res.stdout and "-0" not in res.stdout, res.stdout
    from sampler_bench.textfmt import fmt_num  # what `bench fid` prints as "FID ..."

    assert fmt_num(-1e-9, ".4f") == "0.0000" and fmt_num(-0.5, ".4f") == "-0.5000" and fmt_num(-1e-9, ".6g") == "-1e-09"
    assert os.listdir(tmp_path) == []


# 17 ------------------------------------------------------------------------------------------
def test_17_results_md_leads_with_the_metric_and_hoists_constant_columns(tmp_path):
    cfg = write_sweep(tmp_path)
    cfg.write_text(cfg.read_text().replace("nfe: [2]", "nfe: [2, 3]"))
    out = tmp_path / "o"
    assert bench("sweep", cfg, "--out", out, "-q").exit_code == 0
    md = (out / "results.md").read_text().splitlines()
    head = md[md.index("Same in every cell:"):]
    assert "- model: gmm:classes=2,shape=3x8x8,rank=4" in head and "- device: cpu" in head and "- batch: 2" in head
    table = [ln for ln in md if ln.startswith("| ")]
    cols = [c.strip() for c in table[0].strip("|").split("|")]
    assert cols[0] == "ode_rms_error" and cols[:8] == ["ode_rms_error", "ode_rms_error_max", "pixel_fd", "pixel_fd_floor",
                                                     "pixel_fd_floor_std", "pixel_fd_std", "series", "nfe"], cols
    assert "model" not in cols and "device" not in cols and len(cols) < 15
    import csv

    with open(out / "results.csv") as f:
        csv_cols = next(csv.reader(f))
    from sampler_bench.sweep import BASE_COLUMNS

    assert csv_cols[:len(BASE_COLUMNS)] == BASE_COLUMNS and "pixel_fd" in csv_cols  # the CSV keeps everything
    res = bench("report", out)
    assert res.exit_code == 0 and (out / "report").is_dir(), res.output
