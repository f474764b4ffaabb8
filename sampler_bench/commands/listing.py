"""`bench solvers` and `bench models`: one line per entry."""

from __future__ import annotations

import typer
from rich.table import Table

from sampler_bench.commands import console, user_errors

ORDER = 90  # position among the CLI's commands (cli._register_commands)


def _print_unwrapped(table: Table) -> None:
    """Print ``table`` with one line per row: rich would wrap cells at the terminal width (80 when piped)."""
    from rich.console import Console
    from rich.measure import Measurement

    need = Measurement.get(console, console.options.update(width=100_000), table).maximum
    (console if need <= console.width else Console(width=need, markup=False, highlight=False, emoji=False)).print(table)


def register(app: typer.Typer) -> None:
    @app.command("solvers")
    @user_errors
    def solvers(verbose: bool = typer.Option(False, "--verbose", "-v", help="Also list each solver's options with defaults.", metavar="")):
        """List the available solvers with their NFE rule and default schedule."""
        from sampler_bench.solvers import all_solvers

        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        for col in ("solver", "NFE", "kind", "schedule", "description"):
            table.add_column(col, overflow="fold")
        for s in all_solvers():
            kind = "stochastic" if s.stochastic is True else ("ODE/SDE" if callable(s.stochastic) else "ODE")
            desc = s.summary
            if verbose and s.options:
                desc += "\n  " + "\n  ".join(f"{k}={o.default!r}: {o.help}" for k, o in s.options.items())
            rule = s.nfe_rule if s.rule("none") == s.nfe_rule else f"{s.nfe_rule} (ending above 0: {s.rule('none')})"
            table.add_row(s.name, rule, kind, s.default_schedule, desc)
        _print_unwrapped(table)

    @app.command("models")
    @user_errors
    def models():
        """List the available models (built-in analytic models and known checkpoints) with their state."""
        from sampler_bench.models.registry import LOADERS_BY_SUFFIX, MODELS

        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        for col in ("model", "kind", "state", "description"):
            table.add_column(col, overflow="fold")
        for m in MODELS.values():
            table.add_row(m.name, m.kind, m.status(), m.summary)
        from sampler_bench.models.checkpoints import cache_state
        from sampler_bench.models.registry import CLASSIFIERS

        for ck in CLASSIFIERS.values():  # for --classifier (guidance), not --model
            table.add_row(ck.name, "classifier", cache_state(ck),
                          f"--classifier: guided-diffusion noisy classifier, {ck.resolution}x{ck.resolution}, {ck.classes} classes; "
                          f"README classifier_scale {ck.paper.get('classifier_scale')}")
        _print_unwrapped(table)
        if LOADERS_BY_SUFFIX:
            console.print(f"Any checkpoint path also works: {', '.join(sorted(LOADERS_BY_SUFFIX))}")
