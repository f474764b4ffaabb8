"""`bench fie`: an FIE coefficient (our definition, see metrics/fie.py) per step and vs NFE for several noise-scale functions."""

from __future__ import annotations

ORDER = 60

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from sampler_bench.commands import console, user_errors
from sampler_bench.errors import BenchError


def _int_list(text: str, what: str) -> list[int]:
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            raise BenchError(f"{what} '{text}' has an empty entry; write e.g. 10,20,50,100.")
        try:
            out.append(int(part))
        except ValueError:
            raise BenchError(f"{what} entry '{part}' is not an integer; write e.g. 10,20,50,100.") from None
    return out


def register(app: typer.Typer) -> None:
    @app.command("fie")
    @user_errors
    def fie(
        out: Path = typer.Option(..., "--out", "-o", help="Directory for fie.csv, fie.md, fie.json, fie.png, fie.svg."),
        nfe: str = typer.Option("10,20,50,100", "--nfe", "-n", help="Comma-separated NFE values (ER-SDE: NFE = steps)."),
        phi: str = typer.Option("ode,sde,ersde1,ersde2,ersde3,ersde4,ersde5", "--phi",
                                help="Comma-separated noise-scale functions: ode, sde, ersde1..ersde5."),
        model: Optional[str] = typer.Option(None, "--model", "-m", help="Model whose sigma range/time map the schedule uses (default: the analytic default's, 0.002..80)."),
        schedule: str = typer.Option("karras", "--schedule", help="Step schedule NAME[:k=v,...] (default karras, rho=7, as the official EDM example)."),
        agg: str = typer.Option("sum", "--agg", help="How steps combine: sum (default) or max of |FIE_i|."),
        n_int: int = typer.Option(0, "--n-int", help="0: exact integral; N: the official N-point Riemann sum."),
    ):
        """Compute an FIE coefficient (our definition, derived from the ER-SDE solution) per step and vs NFE: table and plot, no model calls."""
        from sampler_bench.fileio import write_bytes, write_json, write_text
        from sampler_bench.metrics import fie as F

        if n_int < 0:
            raise BenchError(f"--n-int must be 0 (exact) or a positive number of points; got {n_int}.")
        if agg not in F.AGGREGATES:
            raise BenchError(f"unknown --agg '{agg}'; use one of {', '.join(F.AGGREGATES)}.")
        phis = F.check_phis(phi.split(","))
        nfes = F.check_nfes(_int_list(nfe, "--nfe"))
        if out.exists() and not out.is_dir():
            raise BenchError(f"--out '{out}' exists and is not a directory; choose another path.")
        table = F.fie_table(phis, nfes, schedule, model, agg=agg, n_int=n_int)
        try:
            out.mkdir(parents=True, exist_ok=True)
            write_text(out / "fie.csv", F.to_csv(table))
            write_text(out / "fie.md", F.to_markdown(table))
            write_json(out / "fie.json", table)
            write_bytes(out / "fie.png", F.plot(table, "png"))
            write_bytes(out / "fie.svg", F.plot(table, "svg"))
        except OSError as exc:
            raise BenchError(f"cannot write to '{out}': {exc.strerror or exc}; choose another --out.") from None

        t = Table(box=None, pad_edge=False, header_style="bold", title=f"FIE ({agg}), schedule {schedule}")
        t.add_column("NFE", justify="right")
        for p in phis:
            t.add_column(p, justify="right")
        for j, n in enumerate(nfes):
            t.add_row(str(n), *(f"{table['fie'][p][j]:.4g}" for p in phis))
        console.print(t)
        console.print(f"wrote fie.csv, fie.md, fie.json, fie.png, fie.svg to {out}")
