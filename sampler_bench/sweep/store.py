"""The results store of a sweep: one JSON record per cell, the manifest, ``results.csv`` / ``results.md``."""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any, Iterable

from sampler_bench.errors import BenchError
from sampler_bench.fileio import write_json, write_text
from sampler_bench.textfmt import fmt_num
from sampler_bench.sweep.config import Cell, Sweep, compact_seeds

def record_path(out: Path, cell_id: str) -> Path:
    return Path(out) / "cells" / f"{cell_id}.json"


def run_dir(out: Path, cell_id: str) -> Path:
    return Path(out) / "runs" / cell_id


def read_record(out: Path, cell_id: str) -> dict[str, Any] | None:
    p = record_path(out, cell_id)
    if not p.is_file():
        return None
    return _read_json(p, "cell record", "delete it and run the sweep again to redo that cell")


def _read_json(p: Path, what: str, fix: str) -> dict[str, Any]:
    """A JSON object from ``p``, or a BenchError naming the file: records are written atomically, so
    an unreadable one was damaged from outside, and silently dropping it would hide results."""
    try:
        obj = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError):
        obj = None
    except OSError as exc:
        raise BenchError(f"cannot read {what} '{p}': {exc.strerror or exc}; check its permissions.") from None
    if not isinstance(obj, dict):
        raise BenchError(f"{what} '{p}' is corrupt (not a JSON object); {fix}.")
    return obj


def cell_status(out: Path, cell: Cell) -> str:
    """'ok', 'failed', 'skipped' (invalid NFE), or 'pending'."""
    if cell.skip_reason:
        return "skipped"
    rec = read_record(out, cell.id)
    if rec is None or rec.get("config") != cell.cfg.identity():
        return "pending"
    return rec.get("status", "pending")


def _base_record(sweep: Sweep, cell: Cell) -> dict[str, Any]:
    return {
        "cell": cell.id, "sweep": sweep.name, "model": cell.model, "model_spec": cell.cfg.model,
        "solver": cell.solver, "series": cell.series, "options": cell.options, "nfe": cell.nfe,
        "schedule": cell.cfg.schedule, "final_step": cell.cfg.final_step, "preset": cell.cfg.preset,
        "seeds": compact_seeds(cell.cfg.seeds), "num_images": len(cell.cfg.seeds),
        "batch": cell.cfg.batch, "class_label": cell.cfg.class_label, "fid_ref": cell.cfg.fid_ref,
        "config": cell.cfg.identity(), "run_dir": f"runs/{cell.id}",
    }


def _ok_record(sweep: Sweep, cell: Cell, rec: dict[str, Any]) -> dict[str, Any]:
    res = rec.get("resolved", {})
    out = _base_record(sweep, cell)
    out.update({
        "status": "ok", "reason": None, "schedule": res.get("schedule", cell.cfg.schedule),
        "options_resolved": res.get("options"), "schedule_resolved": res.get("schedule"), "steps": res.get("steps"),
        "stochastic": res.get("stochastic"), "nfe_counted": rec.get("nfe_counted"),
        **({"classifier_calls": rec["classifier_calls"]} if "classifier_calls" in rec else {}),
        "wall_time_s": rec.get("wall_time_s"), "images_per_s": rec.get("images_per_s"), "device": rec.get("device"),
        "metrics": rec.get("metrics") or {}, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    return out


def _fail_record(sweep: Sweep, cell: Cell, reason: str, tb: str | None = None) -> dict[str, Any]:
    out = _base_record(sweep, cell)
    out.update({"status": "failed", "reason": reason, "metrics": {}, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    if tb:
        out["traceback"] = tb
    return out


def _skip_record(sweep: Sweep, cell: Cell) -> dict[str, Any]:
    out = _base_record(sweep, cell)
    out.update({"status": "skipped", "reason": cell.skip_reason, "metrics": {}})
    return out


def write_manifest(sweep: Sweep) -> None:
    write_json(sweep.out / "sweep.json", {
        "name": sweep.name, "source": sweep.source, "description": sweep.description, "config": sweep.raw,
        "cells": [{"cell": c.id, "model": c.model, "series": c.series, "solver": c.solver, "nfe": c.nfe,
                   "options": c.options, "skip_reason": c.skip_reason} for c in sweep.cells],
    })


BASE_COLUMNS = ["cell", "status", "model", "series", "solver", "options", "schedule", "final_step", "preset", "nfe", "nfe_counted", "steps",
                "num_images", "seeds", "batch", "class_label", "fid_ref", "device", "wall_time_s", "images_per_s",
                "reason", "run_dir"]


def load_records(out: str | Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The manifest (or None) and the records of a results directory, in the manifest's cell order.

    With a manifest, only the cells of the current config count (records of cells since removed from
    the config are ignored); cells not run yet are absent.
    """
    out = Path(out)
    manifest = None
    if (out / "sweep.json").is_file():
        manifest = _read_json(out / "sweep.json", "sweep manifest", "run the sweep again (it rewrites the manifest)")
    recs: dict[str, dict[str, Any]] = {}
    for p in sorted((out / "cells").glob("*.json")) if (out / "cells").is_dir() else []:
        r = _read_json(p, "cell record", "delete it and run the sweep again to redo that cell")
        if "cell" in r:
            recs[r["cell"]] = r
    if manifest is None:
        return None, list(recs.values())
    ordered = []
    for c in manifest.get("cells", []):
        if c["cell"] in recs:
            ordered.append(recs[c["cell"]])
        elif c.get("skip_reason"):
            ordered.append({"cell": c["cell"], "status": "skipped", "reason": c["skip_reason"], "model": c["model"],
                            "series": c["series"], "solver": c["solver"], "nfe": c["nfe"], "metrics": {}})
    return manifest, ordered


def metric_names(records: Iterable[dict[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for r in records:
        for k, v in (r.get("metrics") or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                names[k] = None
    return sorted(names)


def _cell_text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return fmt_num(v, ".6g") if math.isfinite(v) else str(v)
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def results_rows(records: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    mets = metric_names(records)
    cols = BASE_COLUMNS + mets
    rows = []
    for r in records:
        row = [_cell_text(r.get(c)) for c in BASE_COLUMNS]
        row += [_cell_text((r.get("metrics") or {}).get(m)) for m in mets]
        rows.append(row)
    return cols, rows


MD_KEY_COLUMNS = ("series", "nfe", "status")  # always in the results.md table, after the metrics
# in results.csv only: reasons get their own section, the series names the solver and its options,
# nfe_counted always equals nfe in a finished cell, run_dir is runs/<cell>
MD_LEFT_OUT = ("reason", "run_dir", "solver", "options", "nfe_counted", "images_per_s")


def markdown_layout(cols: list[str], rows: list[list[str]], metrics: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """results.md's layout: (the columns with one value in every cell that has one, shown once above
    the table as (name, value)), and the table's columns: the metrics first (``fid`` leading when
    present), then series, NFE, status, the other columns that vary, and the cell id last.
    ``results.csv`` keeps every column."""
    def values(c: str) -> set[str]:
        return {row[cols.index(c)] for row in rows} - {""}

    rest = [c for c in cols if c not in metrics and c not in MD_KEY_COLUMNS and c not in MD_LEFT_OUT and c != "cell"]
    constant = [c for c in rest if len(values(c)) <= 1]
    head = [(c, next(iter(values(c)))) for c in constant if values(c)]
    lead = sorted(metrics, key=lambda m: (m != "fid", metrics.index(m)))
    table = lead + list(MD_KEY_COLUMNS) + [c for c in rest if c not in constant] + ["cell"]
    return head, table


def write_results(out: str | Path) -> tuple[Path, Path]:
    """(Re)write ``results.csv`` and ``results.md`` from the records on disk."""
    out = Path(out)
    manifest, records = load_records(out)
    cols, rows = results_rows(records)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    w.writerows(rows)
    write_text(out / "results.csv", buf.getvalue())
    name = (manifest or {}).get("name", out.name)
    n = {s: sum(r.get("status") == s for r in records) for s in ("ok", "failed", "skipped")}
    total = len((manifest or {}).get("cells", records))
    md = [f"# Sweep results: {name}", ""]
    if manifest and manifest.get("description"):
        md += [manifest["description"], ""]
    md += [f"{total} cells: {n['ok']} ok, {n['failed']} failed, {n['skipped']} skipped, "
           f"{total - sum(n.values())} not run yet. Config: `{(manifest or {}).get('source', '?')}`.", ""]

    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    head, md_cols = markdown_layout(cols, rows, metric_names(records))
    if head:
        md += ["Same in every cell:", ""] + [f"- {c}: {esc(v)}" for c, v in head] + [""]
    idx = [cols.index(c) for c in md_cols]
    md.append("| " + " | ".join(md_cols) + " |")
    md.append("|" + "---|" * len(md_cols))
    for row in rows:
        md.append("| " + " | ".join(esc(row[i]) for i in idx) + " |")
    bad = [r for r in records if r.get("status") in ("failed", "skipped")]
    if bad:
        md += ["", "## Failed and skipped cells", ""]
        md += [f"- `{r['cell']}` ({r['status']}): {esc(str(r.get('reason')))}" for r in bad]
    write_text(out / "results.md", "\n".join(md) + "\n")
    return out / "results.csv", out / "results.md"


