"""`bench check`: quality gates on a sweep's results, with CI outputs (JUnit, benchmark JSON, summary)."""

from __future__ import annotations

ORDER = 32

from pathlib import Path
from typing import Optional

import typer

from sampler_bench.commands import console, err_console, print_json, tagged, user_errors
from sampler_bench.distributed import is_main_process


def report_check(res, *, as_json: bool = False) -> int:
    """Print the gate table (or the JSON object) and return the exit code: 0 all passed, 1 a gate failed."""
    from rich.table import Table
    from rich.text import Text

    from sampler_bench.sweep.gates import counts

    if as_json:
        print_json(res.as_dict())
        return 0 if res.passed else 1
    n = counts(res.outcomes)
    from sampler_bench.commands.listing import _print_unwrapped

    gates = {o.gate.index: o.gate for o in res.outcomes}
    console.print(f"gates of '{res.suite}':", highlight=False)
    for i, g in gates.items():
        console.print(f"  {i}: {g.describe()}" + (f"  where {g.where}" if g.where else ""), highlight=False, soft_wrap=True)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("gate", "cell", "value", "limit", "result"):
        table.add_column(col, no_wrap=True)
    style = {"pass": ("pass", "green"), "fail": ("FAIL", "red"), "skipped": ("skipped", "yellow")}
    for o in res.outcomes:
        val = "" if o.value is None else f"{o.value:.4g}"
        lim = "" if o.limit is None else f"{o.limit:.4g}"
        result = tagged(*style[o.status], "" if o.status == "pass" else f": {o.message}")
        table.add_row(Text(str(o.gate.index)), Text(o.cell), Text(val), Text(lim), result)
    _print_unwrapped(table)
    verdict = tagged("all gates passed", "green") if res.passed else tagged("gates FAILED", "red")
    verdict.append(f": {n['pass']} passed, {n['fail']} failed, {n['skipped']} skipped (skipped checks are not passes).")
    console.print(verdict)
    return 0 if res.passed else 1


def check_and_write(results: Path, baseline, gates, junit, benchmark_json, summary, as_json: bool, shard=None) -> int:
    from sampler_bench.sweep.check import run_check, write_outputs

    res = run_check(results, baseline=baseline, gates_file=gates, shard=shard)
    if not is_main_process():  # under torchrun every rank gets the verdict; rank 0 alone writes and prints
        return 0 if res.passed else 1
    written = write_outputs(res, junit=junit, benchmark_json=benchmark_json, summary=summary)
    code = report_check(res, as_json=as_json)
    for p in written:
        err_console.print(f"wrote {p}", highlight=False)
    return code


def register(app: typer.Typer) -> None:
    @app.command("check")
    @user_errors
    def check(
        results: Path = typer.Argument(..., help="A sweep's (or a merge's) results directory."),
        baseline: Optional[Path] = typer.Option(None, "--baseline", help="Baseline for *_vs_baseline gates: a previous results directory or its results.csv."),
        gates: Optional[Path] = typer.Option(None, "--gates", help="Take the gates from this YAML (a sweep config or a file with gates:) instead of the sweep's own."),
        junit: Optional[Path] = typer.Option(None, "--junit", help="Write a JUnit XML file: one test case per cell and gate."),
        benchmark_json: Optional[Path] = typer.Option(None, "--benchmark-json", help="Write github-action-benchmark customSmallerIsBetter JSON (one entry per cell and metric)."),
        summary: Optional[Path] = typer.Option(None, "--summary", help="Also write the Markdown summary here (it is always appended to $GITHUB_STEP_SUMMARY when that is set)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object (verdict, counts, every check) on stdout instead of the table."),
    ):
        """Evaluate the sweep's quality gates: a table of every gate; exit 1 when one fails, 0 when all pass."""
        code = check_and_write(results, baseline, gates, junit, benchmark_json, summary, as_json)
        raise typer.Exit(code)
