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
