"""`bench sweep` and `bench report`: run a YAML grid of cells, then turn its results into tables and plots."""

from __future__ import annotations

ORDER = 30

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from sampler_bench.commands import console, err_console, user_errors


def _dry_run(sweep, shard) -> None:
    from sampler_bench.sweep import cell_status, model_availability

    cells = sweep.shard(shard)
    table = Table(box=None, pad_edge=False, header_style="bold", title=f"sweep '{sweep.name}' -> {sweep.out}", title_justify="left")
    multi = len({c.model for c in cells}) > 1
    for col in ("#", "cell") + (("model",) if multi else ()) + ("solver", "NFE", "state"):
        table.add_column(col, overflow="fold", no_wrap=col == "cell")
    counts: dict[str, int] = {}
    for c in cells:
        st = cell_status(sweep.out, c)
        counts[st] = counts.get(st, 0) + 1
        shown = {"ok": "[green]done[/green]", "failed": "[red]failed (will retry)[/red]", "pending": "to run",
                 "skipped": "[yellow]skip[/yellow]: NFE not reachable"}[st]
        table.add_row(str(c.index), c.id, *((c.model,) if multi else ()), c.series, str(c.nfe), shown)
    console.print(table)
    n = len(sweep.cells)
    where = f" (shard {shard[0]}/{shard[1]} of {n})" if shard else ""
    console.print(f"{len(cells)} cells{where}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) +
                  f"; {len(cells[0].cfg.seeds) if cells else 0} samples each.")
    for c in cells:
        if c.skip_reason:
            console.print(f"[yellow]skip[/yellow] {c.id}: {c.skip_reason}", highlight=False)
    for model in dict.fromkeys(c.cfg.model for c in cells):
        note = model_availability(model)
        if note:
            console.print(f"[yellow]note[/yellow]: {note}", highlight=False)
    from sampler_bench.sweep.config import classifier_availability

    for spec in dict.fromkeys(c.cfg.classifier for c in cells if c.cfg.classifier):
        note = classifier_availability(spec)
        if note:
            console.print(f"[yellow]note[/yellow]: {note}", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("sweep")
    @user_errors
    def sweep(
        config: Path = typer.Argument(..., help="Sweep YAML (see configs/)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (overrides the config's 'out')."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Validate the config and list the cells with their state; run nothing."),
        shard: Optional[str] = typer.Option(None, "--shard", help="Run only shard i/n of the cells (1 <= i <= n), e.g. for job arrays."),
    ):
        """Run a sweep: every model x solver (x options) x NFE cell, resumable; writes results.csv/.md."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from sampler_bench.sweep import SweepHooks, load_sweep, parse_shard, run_sweep

        sh = parse_shard(shard)
        sw = load_sweep(config, out)
        if dry_run:
            _dry_run(sw, sh)
            return
        bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TimeRemainingColumn(), console=err_console)
        overall = bar.add_task("cells", total=None)
        current = bar.add_task("", total=None, visible=False)

        def cell_start(cell, pos, n):
            bar.update(overall, total=n, completed=pos, description=f"sweep {sw.name}")
            bar.reset(current, total=len(cell.cfg.seeds), description=f"  {cell.id}", visible=True, start=False)

        def cell_end(cell, rec):
            bar.advance(overall)
            if rec["status"] == "ok":
                mets = ", ".join(f"{k}={v:.4g}" for k, v in (rec.get("metrics") or {}).items() if isinstance(v, (int, float)))
                bar.console.print(f"[green]ok[/green]     {cell.id}  {rec['wall_time_s']:.2f} s  {mets}", highlight=False)
            else:
                bar.console.print(f"[red]failed[/red] {cell.id}: {rec['reason']}", highlight=False)

        hooks = SweepHooks(cell_start=cell_start, cell_end=cell_end,
                           samples_start=lambda n: bar.start_task(current),
                           samples_progress=lambda k: bar.advance(current, k))
        with bar:
            counts = run_sweep(sw, sh, hooks)
            bar.update(current, visible=False)
        where = f" (shard {sh[0]}/{sh[1]})" if sh else ""
        console.print(f"sweep '{sw.name}'{where}: {counts['ok']} ran ok, {counts['failed']} failed, "
                      f"{counts['done_before']} already done, {counts['skipped']} skipped (NFE not reachable). "
                      f"Results: {sw.out / 'results.csv'}, {sw.out / 'results.md'}", highlight=False)
        if counts["failed"]:
            console.print("failed cells are listed with their reason in results.md; re-running the same command retries them.")
        console.print(f"tables and plots: bench report {sw.out}", highlight=False)

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
            console.print(f"[yellow]note[/yellow]: {note}", highlight=False)
        console.print(f"wrote {len(rep.files)} files to {rep.out}:", highlight=False)
        for f in rep.files:
            console.print(f"  {f}", highlight=False)
