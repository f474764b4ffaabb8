"""`bench presets`: the official protocol presets, what each expands to, and its source."""

from __future__ import annotations

import typer
from rich.table import Table

from sampler_bench.commands import user_errors
from sampler_bench.commands.listing import _print_unwrapped

ORDER = 91  # position among the CLI's commands (cli._register_commands)


def register(app: typer.Typer) -> None:
    @app.command("presets")
    @user_errors
    def presets():
        """List the protocol presets (`bench sample --preset NAME`, `preset:` in sweeps) with what they expand to."""
        from sampler_bench.presets import PRESETS

        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        for col in ("preset", "solver", "options", "schedule", "final step", "noise", "description"):
            table.add_column(col, overflow="fold")
        for p in PRESETS.values():
            opts = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.opts.items()) or "-"
            desc = f"{p.summary}\n  source: {p.source}"
            table.add_row(p.name, p.solver, opts, p.schedule, p.final_step, p.noise, desc)
        _print_unwrapped(table)
