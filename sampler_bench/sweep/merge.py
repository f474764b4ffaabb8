"""`bench merge OUT DIR...`: combine the results of shards that ran on different machines.

Every source must be a results directory of the same sweep config (same cells, same settings; the
``out`` key may differ). For each cell the merged directory takes the source that has it ``ok``; a
cell ``ok`` in two sources with different results (config, counted NFE or any metric) is refused, as
identical results (the same shard uploaded twice) are not a conflict. A cell that failed in one
source and ran ok in another takes the ok result (the failure is listed in ``merge.json``); a cell
that failed everywhere keeps its failure.

Run directories are referenced (the record's ``run_dir`` points into the source, relative to OUT)
or, with ``copy=True``, copied into ``OUT/runs``. The merged directory is built under a temporary
name and renamed when complete; an existing OUT is replaced only when it is an earlier merge
(holds ``merge.json``) and ``overwrite`` is set. Each source's ``env/`` files (``bench env`` output
saved by the sweep) are copied into ``OUT/env``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from sampler_bench.errors import BenchError
from sampler_bench.fileio import atomic_dir, write_json
from sampler_bench.sweep.store import load_records, write_results

# fields of a record that differ between two runs of the same cell without the result differing
VOLATILE = {"finished", "wall_time_s", "images_per_s", "device", "run_dir", "traceback", "sweep"}


def _manifest(src: Path) -> dict[str, Any]:
    p = src / "sweep.json"
    if not p.is_file():
        raise BenchError(f"'{src}' is not a sweep results directory (no sweep.json); pass the output directories of the shards.")
    try:
        m = json.loads(p.read_text())
    except ValueError:
        raise BenchError(f"'{p}' is not valid JSON; re-run that shard.") from None
    if not isinstance(m, dict) or not isinstance(m.get("cells"), list):
        raise BenchError(f"'{p}' has no cell list; re-run that shard.")
    return m


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        if not prefix and k in VOLATILE:
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def _pick(cell: str, found: list[tuple[int, dict[str, Any]]], sources: list[Path]) -> tuple[int, dict[str, Any], list[str]]:
    """The record to keep for ``cell`` among (source index, record); notes on superseded ones."""
    oks = [(i, r) for i, r in found if r.get("status") == "ok"]
    for i, r in oks[1:]:
        diff = _differences(oks[0][1], r)
        if diff:
            raise BenchError(f"cell '{cell}' has two different results, in '{sources[oks[0][0]]}' and '{sources[i]}' "
                             f"(differ in: {', '.join(diff[:6])}); merge only one of them (re-run that cell in one place).")
    if oks:
        keep = oks[0]
    else:
        ran = [(i, r) for i, r in found if r.get("status") == "failed"]
        keep = ran[-1] if ran else found[0]
    notes = [f"{cell}: {r.get('status')} in '{sources[i]}' superseded by {keep[1].get('status')} in '{sources[keep[0]]}'"
             for i, r in found if i != keep[0] and r.get("status") != keep[1].get("status")]
    return keep[0], keep[1], notes


def merge_results(out: str | Path, sources: list[str | Path], *, copy: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Merge ``sources`` into ``out``; returns the summary written to ``out/merge.json``."""
    out = Path(out)
    srcs = [Path(s) for s in sources]
    if not srcs:
        raise BenchError("bench merge needs at least one results directory after OUT.")
    if len({s.resolve() for s in srcs}) != len(srcs):
        raise BenchError("a results directory is listed twice; list each shard's directory once.")
    if out.resolve() in {s.resolve() for s in srcs}:
        raise BenchError(f"OUT '{out}' is also a source; merge into a new directory.")
    manifests = [_manifest(s) for s in srcs]
    first = manifests[0]
    ids = [c["cell"] for c in first["cells"]]
    for s, m in zip(srcs[1:], manifests[1:]):
        if [c["cell"] for c in m["cells"]] != ids or m.get("name") != first.get("name"):
            raise BenchError(f"'{s}' holds another sweep than '{srcs[0]}' (different name or cells); merge only shards of one config.")
        ca = {k: v for k, v in (first.get("config") or {}).items() if k != "out"}
        cb = {k: v for k, v in (m.get("config") or {}).items() if k != "out"}
        if ca != cb:
            diff = sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))
            raise BenchError(f"'{s}' ran a different config than '{srcs[0]}' (keys differ: {', '.join(diff)}); merge only shards of one config.")
    if out.exists():
        if not out.is_dir():
            raise BenchError(f"OUT '{out}' exists and is not a directory; choose another OUT.")
        if any(out.iterdir()):
            if not (out / "merge.json").is_file():
                raise BenchError(f"OUT '{out}' exists and is not an earlier merge; choose a new directory.")
            if not overwrite:
                raise BenchError(f"OUT '{out}' holds an earlier merge; pass --overwrite to replace it, or choose another OUT.")

    found: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for i, s in enumerate(srcs):
        _, recs = load_records(s)
        for r in recs:
            if (s / "cells" / f"{r['cell']}.json").is_file():  # skip entries synthesised from the manifest
                found.setdefault(r["cell"], []).append((i, r))
    out_abs = out.resolve()
    summary: dict[str, Any] = {"sources": [str(s) for s in srcs], "copy": copy, "cells": {}, "notes": []}
    try:
        with atomic_dir(out, overwrite=True) as tmp:
            write_json(tmp / "sweep.json", first)
            for cid in ids:
                if cid not in found:
                    continue
                i, rec, notes = _pick(cid, found[cid], srcs)
                summary["notes"] += notes
                summary["cells"][cid] = str(srcs[i])
                rec = dict(rec)
                rdir = srcs[i] / rec.get("run_dir", f"runs/{cid}")
                if rdir.is_dir():
                    if copy:
                        shutil.copytree(rdir, tmp / "runs" / cid)
                        rec["run_dir"] = f"runs/{cid}"
                    else:
                        rec["run_dir"] = os.path.relpath(rdir.resolve(), out_abs)
                write_json(tmp / "cells" / f"{cid}.json", rec)
            for i, s in enumerate(srcs):
                for f in sorted((s / "env").glob("*")) if (s / "env").is_dir() else []:
                    if f.is_file():
                        dst = tmp / "env" / f.name
                        if dst.exists():
                            dst = tmp / "env" / f"{i + 1}-{f.name}"
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(f, dst)
            write_json(tmp / "merge.json", summary)
            write_results(tmp)
    except OSError as exc:
        raise BenchError(f"cannot write the merged results to '{out}' ({exc.strerror or exc}); choose a writable OUT.") from None
    return summary
