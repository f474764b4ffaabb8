"""`bench check`: load a results directory, its gates and a baseline, evaluate, write the CI files."""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sampler_bench.errors import BenchError
from sampler_bench.fileio import write_json, write_text
from sampler_bench.sweep.gates import (Gate, Outcome, benchmark_entries, counts, evaluate, gates_from_config, junit_xml,
                                       summary_markdown)
from sampler_bench.sweep.store import BASE_COLUMNS, load_records

SUMMARY_ENV = "GITHUB_STEP_SUMMARY"


@dataclass
class CheckResult:
    suite: str
    outcomes: list[Outcome]
    records: list[dict[str, Any]]

    @property
    def passed(self) -> bool:
        return not any(o.status == "fail" for o in self.outcomes)

    def as_dict(self) -> dict[str, Any]:
        return {"sweep": self.suite, "passed": self.passed, "counts": counts(self.outcomes),
                "results": [o.as_dict() for o in self.outcomes]}


def load_results(results: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    results = Path(results)
    if not (results / "sweep.json").is_file():
        raise BenchError(f"'{results}' is not a sweep results directory (no sweep.json); pass the output directory of `bench sweep` or `bench merge`.")
    manifest, records = load_records(results)
    if manifest is None:
        raise BenchError(f"'{results / 'sweep.json'}' is not readable JSON; re-run the sweep (or the merge) to rewrite it.")
    return manifest, records


def load_gates_file(path: str | Path) -> list[Gate]:
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise BenchError(f"cannot read gates file '{path}' ({exc.strerror or exc}); pass a YAML file with a gates: list.") from None
    except yaml.YAMLError as exc:
        raise BenchError(f"'{path}' is not valid YAML ({' '.join(str(exc).split())[:120]}); fix it.") from None
    if not isinstance(doc, dict) or "gates" not in doc:
        raise BenchError(f"'{path}' has no top-level gates: list; give a sweep config or a file with gates: [...].")
    return gates_from_config(doc, str(path))


def _float(text: str) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def load_baseline(path: str | Path) -> dict[str, dict[str, Any]]:
    """Cell id -> metrics of the ok cells of a baseline: a results directory or its ``results.csv``."""
    path = Path(path)
    if path.is_dir():
        if not (path / "sweep.json").is_file() and not (path / "cells").is_dir():
            raise BenchError(f"baseline '{path}' is not a sweep results directory (no sweep.json or cells/); pass a previous run's results directory or its results.csv.")
        _, records = load_records(path)
        return {r["cell"]: dict(r.get("metrics") or {}) for r in records if r.get("status") == "ok"}
    if path.is_file() and path.suffix.lower() == ".csv":
        try:
            rows = list(csv.DictReader(path.read_text().splitlines()))
        except (OSError, csv.Error, UnicodeDecodeError) as exc:
            raise BenchError(f"cannot read baseline '{path}' ({exc}); pass a results.csv written by bench sweep.") from None
        if not rows or "cell" not in rows[0] or "status" not in rows[0]:
            raise BenchError(f"baseline '{path}' has no cell/status columns; pass a results.csv written by bench sweep.")
        out = {}
        for row in rows:
            if row.get("status") == "ok":
                out[row["cell"]] = {k: _float(v) for k, v in row.items() if k not in BASE_COLUMNS and _float(v) is not None}
        return out
    if not path.exists():
        raise BenchError(f"baseline '{path}' does not exist; pass a previous run's results directory or its results.csv.")
    raise BenchError(f"baseline '{path}' is neither a results directory nor a .csv file; pass a previous run's results directory or its results.csv.")


def run_check(results: str | Path, *, baseline: str | Path | None = None, gates_file: str | Path | None = None,
              shard: tuple[int, int] | None = None) -> CheckResult:
    """Evaluate the gates on every cell of the results (or, with ``shard``, on that shard's cells only)."""
    manifest, records = load_results(results)
    gates = load_gates_file(gates_file) if gates_file else gates_from_config(manifest.get("config"), str(Path(results) / "sweep.json"))
    if not gates:
        raise BenchError(f"no gates to check for '{results}': add a gates: section to the sweep config (then re-run the sweep) or pass --gates FILE.")
    base = load_baseline(baseline) if baseline is not None else None
    by_id = {r["cell"]: r for r in records}
    cells = manifest.get("cells") or [{"cell": r["cell"], "model": r.get("model"), "series": r.get("series"),
                                       "solver": r.get("solver"), "nfe": r.get("nfe")} for r in records]
    part = None
    if shard is not None:
        cells = [c for k, c in enumerate(cells) if k % shard[1] == shard[0] - 1]  # Sweep.shard's rule
        records = [r for r in records if r["cell"] in {c["cell"] for c in cells}]
        part = f"shard {shard[0]}/{shard[1]}"
    outcomes = evaluate(gates, cells, by_id, base, part)
    return CheckResult(str(manifest.get("name") or Path(results).name), outcomes, records)


def write_outputs(res: CheckResult, *, junit: str | Path | None = None, benchmark_json: str | Path | None = None,
                  summary: str | Path | None = None) -> list[Path]:
    """Write the requested CI files (atomically) and append the Markdown summary to $GITHUB_STEP_SUMMARY."""
    written = []
    try:
        if junit:
            write_text(junit, junit_xml(res.outcomes, res.suite))
            written.append(Path(junit))
        if benchmark_json:
            write_json(benchmark_json, benchmark_entries(res.records))
            written.append(Path(benchmark_json))
        md = summary_markdown(res.outcomes, res.suite)
        if summary:
            write_text(summary, md)
            written.append(Path(summary))
        step = os.environ.get(SUMMARY_ENV)
        if step:
            with open(step, "a", encoding="utf-8") as f:  # the CI runner owns this file: append, as it asks
                f.write(md + "\n")
            written.append(Path(step))
    except OSError as exc:
        raise BenchError(f"cannot write '{exc.filename}' ({exc.strerror or exc}); choose a writable path.") from None
    return written

