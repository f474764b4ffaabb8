"""Sweeps: a YAML grid of models x solvers (with option grids) x NFE, expanded into cells, each run
with :func:`sampler_bench.sampling.run_sample` (the code path of ``bench sample``), and a resumable
results store.

Layout of a sweep's output directory::

    OUT/sweep.json            the validated config and the list of cells (rewritten at each start)
    OUT/runs/<cell>/          one run directory per cell (samples.npz, grid.png, run.json, ...)
    OUT/cells/<cell>.json     one record per cell: status ok / failed / skipped, reason, config,
                              counted NFE, wall time, images/s, metrics
    OUT/results.csv, .md      every cell of the current config, rewritten after each cell

Every file is written atomically, and a run directory appears only when complete, so a sweep killed
at any moment loses at most the cell in progress. A re-run skips cells whose record says ``ok`` (and
finishes a cell whose run directory is complete but whose record was not yet written); failed cells
are retried.

NFE a solver cannot hit exactly (e.g. an even NFE for Heun, NFE = 2*steps - 1): with
``on_invalid_nfe: skip`` (the default) the cell is kept as ``skipped`` with the reason (which names
the nearest valid NFEs) in its record and in the results; with ``on_invalid_nfe: error`` the config is
refused up front, naming the cell.

The package is split by job: :mod:`.config` (YAML validation and cell expansion, shards),
:mod:`.store` (cell records, ``results.csv`` / ``results.md``), :mod:`.preflight` (the checks of a
real run and of ``--dry-run`` before the first cell) and :mod:`.run` (the runner).
"""

from sampler_bench.sweep.config import (Cell, Sweep, compact_seeds, load_sweep, model_availability, parse_shard,
                                        spec_opts)
from sampler_bench.sweep.preflight import check_consistent, estimated_calls, preflight
from sampler_bench.sweep.run import SweepHooks, run_sweep
from sampler_bench.sweep.store import (BASE_COLUMNS, cell_status, load_records, metric_names, read_record, record_path,
                                       results_rows, run_dir, write_manifest, write_results)

__all__ = ["BASE_COLUMNS", "Cell", "Sweep", "SweepHooks", "cell_status", "check_consistent", "compact_seeds",
           "estimated_calls", "load_records", "load_sweep", "metric_names", "model_availability", "parse_shard", "preflight", "read_record",
           "record_path", "results_rows", "run_dir", "run_sweep", "spec_opts", "write_manifest", "write_results"]
