"""What a sweep checks before its first cell, in a real run and in ``--dry-run`` alike.

- results already under ``out`` of a different config for a cell (e.g. ``num`` changed);
- for every cell whose model is here (built in, or a checkpoint file on disk): the device, the
  model, the solver, options, NFE, schedule, class label and metrics, exactly as ``bench sample``
  plans a run (models are loaded one at a time; nothing is sampled). A registered checkpoint that
  is not downloaded yet is not fetched: its cells are checked when the real run loads it.
"""

from __future__ import annotations

from typing import Any

from sampler_bench.errors import BenchError
from sampler_bench.sweep.config import Cell, Sweep, model_availability
from sampler_bench.sweep.store import read_record


def check_consistent(sweep: Sweep) -> None:
    """Refuse to mix results: a record under a cell's id with a different config is an error."""
    for c in sweep.cells:
        rec = read_record(sweep.out, c.id)
        if rec is not None and "config" in rec and rec["config"] != c.cfg.identity():
            diff = sorted(k for k in set(rec["config"]) | set(c.cfg.identity()) if rec["config"].get(k) != c.cfg.identity().get(k))
            raise BenchError(f"'{sweep.out}' holds results of a different config for cell '{c.id}' (differs in: {', '.join(diff)}); use another --out or delete that directory.")


def preflight(sweep: Sweep, cells: list[Cell]) -> list[str]:
    """Check ``cells`` as the real run would before sampling; BenchError naming the first bad cell.

    Returns notes on models that could not be checked here (not downloaded yet)."""
    from sampler_bench.metrics import check_metrics
    from sampler_bench.models.registry import load_model, resolve_device
    from sampler_bench.sampling import check_config, plan_run

    check_consistent(sweep)
    notes: list[str] = []
    loaded: tuple[tuple[str, str], Any] | None = None
    for c in cells:
        if c.skip_reason:
            continue
        try:
            check_config(c.cfg)
            note = model_availability(c.cfg.model)
            if note:
                if note not in notes:
                    notes.append(note)
                continue
            key = (c.cfg.model, c.cfg.device)
            if loaded is None or loaded[0] != key:
                loaded = None  # one model in memory at a time (cells are model-major)
                loaded = (key, load_model(c.cfg.model, resolve_device(c.cfg.device)))
            plan = plan_run(c.cfg, loaded[1])
            check_metrics(c.cfg, plan.model, plan.spec, plan.opts)
        except BenchError as exc:
            raise BenchError(f"{sweep.source}: cell '{c.id}': {exc}") from None
    return notes


def estimated_calls(cells: list[Cell]) -> int:
    """Denoiser calls the cells ask for: the sum over cells of NFE x samples."""
    return sum(c.nfe * len(c.cfg.seeds) for c in cells if not c.skip_reason)
