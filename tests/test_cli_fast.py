"""Issue 9 item 18: listing commands never import torch (they run in well under a second).

Solver and model families register themselves on import; a family file that imports torch at
module level (instead of ``from sampler_bench.lazy import torch``) makes every listing pay ~2 s and
fails here. No timing is asserted: what is checked is the cause, ``torch`` in ``sys.modules``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import sys
from sampler_bench.cli import main
sys.argv = ["bench", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted(m for m in ("torch", "torchvision", "torch_fidelity", "scipy", "matplotlib") if m in sys.modules)
print("HEAVY:" + ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("args", [["solvers"], ["solvers", "-v"], ["models"], ["refs"], ["--help"], ["sample", "--help"]])
def test_listing_does_not_import_torch(args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip(), "the listing printed nothing"
    heavy = [ln for ln in res.stderr.splitlines() if ln.startswith("HEAVY:")]
    assert heavy == ["HEAVY:"], f"`bench {' '.join(args)}` imported {heavy}; import torch lazily (sampler_bench/lazy.py)"
