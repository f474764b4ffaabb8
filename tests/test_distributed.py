"""torchrun: `bench sample` and `bench sweep` split over processes (gloo on CPU) write what one process writes.

Every test launches `torchrun` itself, as a user does (`torchrun --nproc_per_node N -m sampler_bench ...`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fid_support import random_inception_weights

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")

TINY = "gmm:shape=3x8x8"
SAMPLE = ["sample", "--model", TINY, "--solver", "heun", "--nfe", "5", "--batch", "3", "--device", "cpu"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def bench(args: list[str], nproc: int = 1, script: str | None = None, env: dict | None = None, cwd=None):
    if nproc == 1 and script is None:
        cmd = [sys.executable, "-m", "sampler_bench", *args]
    else:
        target = [script] if script else ["-m", "sampler_bench"]
        cmd = [str(TORCHRUN), "--standalone", "--nnodes", "1", "--nproc_per_node", str(nproc), *target, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={**_env(), **(env or {})}, cwd=cwd or ROOT, timeout=300)


def _same_run(a: Path, b: Path, world: int) -> None:
    sa, sb = np.load(a / "samples.npz"), np.load(b / "samples.npz")
    assert sorted(sa.files) == sorted(sb.files)
    for k in sa.files:
        assert np.array_equal(sa[k], sb[k]), k
    ra, rb = json.loads((a / "run.json").read_text()), json.loads((b / "run.json").read_text())
    assert ra["config"] == rb["config"] and ra["resolved"] == rb["resolved"]
    assert ra["nfe_counted"] == rb["nfe_counted"] == ra["nfe_requested"]
    assert ra["world_size"] == 1 and rb["world_size"] == world
    assert (a / "grid.png").read_bytes() == (b / "grid.png").read_bytes()
    return ra["metrics"], rb["metrics"]


def test_sample_is_identical_for_1_2_and_4_processes(tmp_path):
    # 11 seeds in batches of 3: 4 batches, uneven over 2 and 4 ranks; random labels drawn per sample
    args = [*SAMPLE, "--seeds", "0-10", "--class-label", "random"]
    runs = {}
    for n in (1, 2, 4):
        runs[n] = tmp_path / f"w{n}"
        r = bench([*args, "--out", str(runs[n])], nproc=n)
        assert r.returncode == 0, r.stderr[-3000:]
    for n in (2, 4):
        m1, mn = _same_run(runs[1], runs[n], n)
        # while the rows are kept (11 <= 192 pixel dims) the sums are replayed in run order: bit-identical
        assert mn == m1


def test_fid_under_torchrun_equals_one_process(tmp_path):
    w = str(random_inception_weights())  # random Inception weights: plumbing and equality, not scale
    ref = tmp_path / "ref.npz"
    r = bench(["stats", f"model:{TINY}", "--num", "8", "--out", str(ref), "--inception-weights", w])
    assert r.returncode == 0, r.stderr
    args = [*SAMPLE, "--seeds", "0-6", "--fid", str(ref), "--inception-weights", w, "--metrics", "isc"]
    runs = {}
    for n in (1, 2):
        runs[n] = tmp_path / f"w{n}"
        r = bench([*args, "--out", str(runs[n])], nproc=n)
        assert r.returncode == 0, r.stderr[-3000:]
    m1, m2 = _same_run(runs[1], runs[2], 2)
    assert set(m1) == set(m2) and "fid" in m1 and "fid_se" in m1 and "isc" in m1
    for k, v in m1.items():
        if isinstance(v, float) or (isinstance(v, list) and v and isinstance(v[0], float)):
            assert m2[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k  # at most float64 summation order
        else:
            assert m2[k] == v, k


@pytest.mark.parametrize("fault", ["raise", "die"])
def test_a_failing_rank_fails_the_run_and_leaves_nothing(tmp_path, fault):
    out = tmp_path / "sub" / "run"
    r = bench([*SAMPLE, "--seeds", "0-23", "--out", str(out)], nproc=2, script=str(ROOT / "tests" / "torchrun_faulty.py"),
              env={"FAULT": fault, "FAULT_RANK": "1", "FAULT_BATCH": "2"})
    assert r.returncode != 0
    if fault == "raise":  # one clear line from rank 0, no traceback from any rank
        assert "error: rank 1 of 2 failed: RuntimeError: injected fault" in r.stderr
        assert "[rank1]: Traceback" not in r.stderr and "[rank0]: Traceback" not in r.stderr
    else:  # the dead rank is reported by torchrun; rank 0 says in one line why it stopped
        assert "stopped by signal 15" in r.stderr or "error: lost contact with another rank" in r.stderr
        assert "[rank0]: Traceback" not in r.stderr
    left = list(out.parent.iterdir()) if out.parent.exists() else []
    assert left == [], left  # neither the run directory nor its hidden temporary one


def test_torchrun_sweep_matches_one_process_and_resumes(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(textwrap.dedent(f"""
        name: dist
        models: ['{TINY}']
        solvers: [euler, {{name: ddim, opts: {{eta: 1}}}}]
        nfe: [3, 4]
        seeds: 0-6
        batch: 2
        device: cpu
    """))
    one, two = tmp_path / "one", tmp_path / "two"
    r = bench(["sweep", str(cfg), "--out", str(one)])
    assert r.returncode == 0, r.stderr[-3000:]
    r = bench(["sweep", str(cfg), "--out", str(two)], nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    cells = sorted(p.name for p in (one / "runs").iterdir())
    assert len(cells) == 4 and cells == sorted(p.name for p in (two / "runs").iterdir())
    for c in cells:
        _same_run(one / "runs" / c, two / "runs" / c, 2)
        rec = json.loads((two / "cells" / f"{c}.json").read_text())
        assert rec["status"] == "ok"
    assert (two / "results.csv").is_file()
    # resume: a lost cell is redone, the others are left as they are
    lost = cells[1]
    shutil.rmtree(two / "runs" / lost)
    (two / "cells" / f"{lost}.json").unlink()
    kept = {c: (two / "runs" / c / "run.json").stat().st_mtime_ns for c in cells if c != lost}
    r = bench(["sweep", str(cfg), "--out", str(two)], nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    _same_run(one / "runs" / lost, two / "runs" / lost, 2)
    assert all((two / "runs" / c / "run.json").stat().st_mtime_ns == t for c, t in kept.items())
