"""`bench merge`: combine shards that ran on different machines into one results directory."""

from __future__ import annotations

ORDER = 31

from pathlib import Path
from typing import List

import typer

from sampler_bench.commands import console, tagged, user_errors


def register(app: typer.Typer) -> None:
    @app.command("merge")
    @user_errors
    def merge(
        out: Path = typer.Argument(..., help="The merged results directory to create."),
        sources: List[Path] = typer.Argument(..., help="The shards' results directories (same sweep config)."),
        copy: bool = typer.Option(False, "--copy", help="Copy the run directories into OUT/runs (default: reference them where they are)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT when it holds an earlier merge."),
    ):
        """Merge shard results (records, run directories, results.csv/md); refuses two different results for one cell."""
        from sampler_bench.sweep.merge import merge_results
        from sampler_bench.sweep.store import load_records

        summary = merge_results(out, sources, copy=copy, overwrite=overwrite)
        manifest, recs = load_records(out)
        n = {s: sum(r.get("status") == s for r in recs) for s in ("ok", "failed", "skipped")}
        total = len(manifest["cells"]) if manifest else len(recs)
        console.print(f"merged {len(sources)} directories into {out}: {total} cells, {n['ok']} ok, {n['failed']} failed, "
                      f"{n['skipped']} skipped, {total - sum(n.values())} without a result; run directories "
                      f"{'copied' if copy else 'referenced'}.", highlight=False)
        for note in summary["notes"]:
            console.print(tagged("note", "yellow", f": {note}"))
        console.print(f"next: bench report {out}   bench check {out}", highlight=False)
