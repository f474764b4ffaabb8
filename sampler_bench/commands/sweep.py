"""`bench sweep` and `bench report`: run a YAML grid of cells, then turn its results into tables and plots."""

from __future__ import annotations

ORDER = 30

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from sampler_bench.commands import console, err_console, tagged, user_errors
from sampler_bench.commands.progress import CliProgress
from sampler_bench.errors import BenchError
from sampler_bench.textfmt import fmt_num


def _dry_run(sweep, shard) -> None:
    from sampler_bench.sweep import cell_status, estimated_calls, preflight

    cells = sweep.shard(shard)
    statuses = {c.id: cell_status(sweep.out, c) for c in cells}
    try:  # what the real run checks before its first cell; the cells are listed either way
        notes, refused = preflight(sweep, [c for c in cells if statuses[c.id] not in ("ok", "skipped")]), None
    except BenchError as exc:  # e.g. a GPU config on a CPU machine: listed, then refused as the real run would
        from sampler_bench.sweep import model_availability

        notes = [n for n in (model_availability(m) for m in dict.fromkeys(c.cfg.model for c in cells)) if n]
        refused = exc
    table = Table(box=None, pad_edge=False, header_style="bold", title=f"sweep '{sweep.name}' -> {sweep.out}", title_justify="left")
    multi = len({c.model for c in cells}) > 1
    for col in ("#", "cell") + (("model",) if multi else ()) + ("solver", "NFE", "state"):
        table.add_column(col, overflow="fold", no_wrap=col == "cell")
    counts: dict[str, int] = {}
    for c in cells:
        st = statuses[c.id]
        counts[st] = counts.get(st, 0) + 1
        shown = {"ok": tagged("done", "green"), "failed": tagged("failed (will retry)", "red"), "pending": "to run",
                 "skipped": tagged("skip", "yellow", ": NFE not reachable")}[st]
        table.add_row(str(c.index), c.id, *((c.model,) if multi else ()), c.series, str(c.nfe), shown)
    console.print(table)
    n = len(sweep.cells)
    where = f" (shard {shard[0]}/{shard[1]} of {n})" if shard else ""
    console.print(f"{len(cells)} cells{where}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) +
                  f"; {len(cells[0].cfg.seeds) if cells else 0} samples each.")
    for c in cells:
        if c.skip_reason:
            console.print(tagged("skip", "yellow", f" {c.id}: {c.skip_reason}"))
    todo = [c for c in cells if statuses[c.id] in ("pending", "failed")]
    console.print(f"estimated cost: {estimated_calls(todo):,} denoiser calls ({len(todo)} cells to run x NFE x samples).")
    for note in notes:
        console.print(tagged("note", "yellow", f": {note}"))
    from sampler_bench.sweep.config import classifier_availability

    for spec in dict.fromkeys(c.cfg.classifier for c in cells if c.cfg.classifier):
        note = classifier_availability(spec)
        if note:
            console.print(tagged("note", "yellow", f": {note}"))
    if refused is not None:
        raise refused


def register(app: typer.Typer) -> None:
    @app.command("sweep")
    @user_errors
    def sweep(
        config: Path = typer.Argument(..., help="Sweep YAML (see configs/)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (overrides the config's 'out')."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Validate the config and list the cells with their state; run nothing.", metavar=""),
        shard: Optional[str] = typer.Option(None, "--shard", help="Run only shard i/n of the cells (1 <= i <= n), or 'auto' (from SAMPLER_BENCH_SHARD_INDEX/COUNT, Slurm or GitLab variables)."),
        offline: bool = typer.Option(False, "--offline", help="No downloads: fail before the first cell when a checkpoint, reference or weights file is missing (also SAMPLER_BENCH_OFFLINE=1).", metavar=""),
        check: bool = typer.Option(False, "--check", help="Evaluate the config's gates at the end (as `bench check`; with --shard on that shard's cells): exit 1 when one fails.", metavar=""),
        baseline: Optional[Path] = typer.Option(None, "--baseline", help="With --check: baseline results directory or results.csv for *_vs_baseline gates."),
        junit: Optional[Path] = typer.Option(None, "--junit", help="With --check: write JUnit XML here."),
        benchmark_json: Optional[Path] = typer.Option(None, "--benchmark-json", help="With --check: write github-action-benchmark JSON here."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or phase lines on stderr (the per-cell lines stay).", metavar=""),
    ):
        """Run a sweep: every model x solver (x options) x NFE cell, resumable; writes results.csv/.md."""
        from sampler_bench.commands.env import before_sweep
        from sampler_bench.errors import BenchError
        from sampler_bench.sweep import SweepHooks, load_sweep, run_sweep
        from sampler_bench.sweep.shards import resolve_shard

        if not check and (baseline or junit or benchmark_json):
            raise BenchError("--baseline, --junit and --benchmark-json belong to --check; add --check (or run `bench check` afterwards).")
        sh = resolve_shard(shard)
        sw = load_sweep(config, out)
        if dry_run:
            _dry_run(sw, sh)
            return
        if check and not sw.raw.get("gates"):
            raise BenchError(f"--check: '{config}' has no gates: section; add one (see README, Running in CI) or drop --check.")
        save_env = before_sweep(sw, sh, config, offline)
        prog = CliProgress(quiet, transient=True)  # one cell's phases at a time under the cell counter
        bar = prog.bar
        overall = bar.add_task("cells", total=None)

        def cell_start(cell, pos, n):
            prog.start()
            bar.update(overall, total=n, completed=pos, description=f"sweep {sw.name}: {cell.id}")

        def cell_end(cell, rec):
            bar.advance(overall)
            if rec["status"] == "ok":
                mets = ", ".join(f"{k}={fmt_num(v, '.4g')}" for k, v in (rec.get("metrics") or {}).items() if isinstance(v, (int, float)))
                err_console.print(tagged("ok", "green", f"     {cell.id}  {rec['wall_time_s']:.2f} s  {mets}"))
            else:
                err_console.print(tagged("failed", "red", f" {cell.id}: {rec['reason']}"))

        with prog:
            counts = run_sweep(sw, sh, SweepHooks(cell_start=cell_start, cell_end=cell_end, prepared=save_env))
        where = f" (shard {sh[0]}/{sh[1]})" if sh else ""
        console.print(f"sweep '{sw.name}'{where}: {counts['ok']} ran ok, {counts['failed']} failed, "
                      f"{counts['done_before']} already done, {counts['skipped']} skipped (NFE not reachable). "
                      f"Results: {sw.out / 'results.csv'}, {sw.out / 'results.md'}", highlight=False)
        if counts["failed"]:
            console.print("failed cells are listed with their reason in results.md; re-running the same command retries them.")
        console.print(f"tables and plots: bench report {sw.out}", highlight=False)
        if check:
            from sampler_bench.commands.check import check_and_write

            raise typer.Exit(check_and_write(sw.out, baseline, None, junit, benchmark_json, None, False, sh))

    @app.command("report")
    @user_errors
    def report(
        results: Path = typer.Argument(..., help="A sweep's output directory (holds sweep.json, cells/, runs/)."),
        metric: Optional[str] = typer.Option(None, "--metric", "-m", help="Metric of the table and plot (default: fid if present, else the first metric)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write tables and plots (default: RESULTS/report)."),
        samples_per_cell: int = typer.Option(4, "--samples", help="Pictures per cell in the sample grids."),
    ):
        """Tables (terminal, Markdown, CSV) and plots (PNG, SVG) of a sweep's results."""
        from sampler_bench.report import make_report, render_terminal

        rep = make_report(results, metric=metric, out=out, samples_per_cell=samples_per_cell)
        for tbl in render_terminal(rep):
            console.print(tbl)
        for note in rep.notes:
            console.print(tagged("note", "yellow", f": {note}"))
        console.print(f"wrote {len(rep.files)} files to {rep.out}:", highlight=False)
        for f in rep.files:
            console.print(f"  {f}", highlight=False)
