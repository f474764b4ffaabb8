"""Running a sweep: the cells of a shard that are not finished, one record each, resumable."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sampler_bench import distributed
from sampler_bench.errors import BenchError
from sampler_bench.fileio import write_json
from sampler_bench.sweep.config import Cell, Sweep
from sampler_bench.sweep.preflight import preflight
from sampler_bench.sweep.store import (_fail_record, _ok_record, _skip_record, cell_status, read_record, record_path,
                                       run_dir, write_manifest, write_results)


@dataclass
class SweepHooks:
    """Callbacks for the CLI's progress display (all optional)."""

    cell_start: Callable[[Cell, int, int], None] | None = None  # cell, position, number of cells to run
    samples_start: Callable[[int], None] | None = None
    samples_progress: Callable[[int], None] | None = None
    cell_end: Callable[[Cell, dict[str, Any]], None] | None = None
    # called on rank 0 once the checks passed and the manifest is written, before any cell (bench
    # sweep saves `bench env` there); an OSError is reported like a failed manifest write
    prepared: Callable[[], None] | None = None


def _remove_leftovers(out: Path, cell_id: str) -> None:
    """Remove the temporary files of a cell left by a process killed with SIGKILL (or a power cut).

    Only the cells about to run are cleaned, so shards running side by side never touch each other's
    work in progress.
    """
    import shutil

    for pattern, where in ((f".{cell_id}.*.tmp", "runs"), (f".{cell_id}.*.old", "runs"), (f".{cell_id}.json.*.tmp", "cells")):
        for p in (Path(out) / where).glob(pattern) if (Path(out) / where).is_dir() else []:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def run_sweep(sweep: Sweep, shard: tuple[int, int] | None = None, hooks: SweepHooks | None = None) -> dict[str, int]:
    """Run the cells of ``shard`` (all by default) that are not finished; return counts by outcome."""
    from sampler_bench.models.registry import load_model, resolve_device
    from sampler_bench.sampling import existing_run_matches, run_sample

    hooks = hooks or SweepHooks()
    # Under torchrun every rank runs every cell together (run_sample splits its seeds); rank 0 alone
    # writes the sweep's files, and the ranks agree after each step that can fail.
    dist = distributed.current(sweep.cells[0].cfg.device if sweep.cells else "auto")
    mine = sweep.shard(shard)
    statuses = {c.id: cell_status(sweep.out, c) for c in mine}
    todo = [c for c in mine if statuses[c.id] not in ("skipped", "ok")]
    preflight(sweep, todo)  # bad input is refused before anything is written
    err: BaseException | None = None
    if dist.is_main:
        try:
            write_manifest(sweep)
            if hooks.prepared:
                hooks.prepared()
        except OSError as exc:
            err = BenchError(f"cannot write into the output directory '{sweep.out}': {exc.strerror or exc}; choose another --out.")
    dist.agree(err)
    counts = {"ok": 0, "failed": 0, "skipped": 0, "done_before": 0}
    for c in mine:
        st = statuses[c.id]
        if st == "skipped":
            if dist.is_main and read_record(sweep.out, c.id) is None:
                write_json(record_path(sweep.out, c.id), _skip_record(sweep, c))
            counts["skipped"] += 1
        elif st == "ok":
            counts["done_before"] += 1
    if dist.is_main:
        for c in todo:
            _remove_leftovers(sweep.out, c.id)
        write_results(sweep.out)
    dist.barrier()
    model_cache: dict[tuple[str, str], Any] = {}
    for pos, c in enumerate(todo):
        if hooks.cell_start:
            hooks.cell_start(c, pos, len(todo))
        rdir = run_dir(sweep.out, c.id)
        try:
            model = None
            if not existing_run_matches(rdir, c.cfg):
                key = (c.cfg.model, c.cfg.device)
                if key not in model_cache:
                    model_cache.clear()  # one model in memory at a time (cells are model-major)
                    try:
                        device = distributed.local_device(resolve_device(c.cfg.device), dist)
                        model_cache[key] = load_model(c.cfg.model, device)
                    except Exception as exc:  # noqa: BLE001 -- every cell of this model fails with it
                        model_cache[key] = exc
                model = model_cache[key]
                dist.agree(model if isinstance(model, Exception) else None)
            rec = run_sample(c.cfg, rdir, save_images=sweep.save_images, model=model,
                             on_start=hooks.samples_start, on_progress=hooks.samples_progress)
            record = _ok_record(sweep, c, rec)
        except BenchError as exc:
            record = _fail_record(sweep, c, str(exc))
        except Exception as exc:  # any solver / model error fails this cell only
            record = _fail_record(sweep, c, f"{type(exc).__name__}: {' '.join(str(exc).split())}", traceback.format_exc())
        if dist.is_main:
            write_json(record_path(sweep.out, c.id), record)
            write_results(sweep.out)
        dist.barrier()
        counts[record["status"]] += 1
        if hooks.cell_end:
            hooks.cell_end(c, record)
    return counts
