"""`bench env`: versions, torch/CUDA, GPUs, the cache and, given a sweep config, what it needs."""

from __future__ import annotations

ORDER = 85

from pathlib import Path
from typing import Optional

import typer

from sampler_bench.commands import console, print_json, user_errors


def register(app: typer.Typer) -> None:
    @app.command("env")
    @user_errors
    def env(
        config: Optional[Path] = typer.Argument(None, help="A sweep config: also list what it needs (checkpoints, reference statistics, weights) and whether each is present."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    ):
        """Versions, Python, torch and CUDA, GPUs, the cache root and its contents (and a sweep's needs)."""
        from sampler_bench.envinfo import collect, render
        from sampler_bench.needs import sweep_needs

        needs = None
        if config is not None:
            from sampler_bench.sweep import load_sweep

            needs = sweep_needs(load_sweep(config).cells)
        info = collect(needs)
        if as_json:
            print_json(info)
        else:
            console.print(render(info), end="", highlight=False, soft_wrap=True, markup=False)


def download_for_config(config: Path) -> None:
    """`bench download CONFIG`: fetch every file the sweep needs into the cache and print the sizes."""
    from sampler_bench.cache import cache_root, human_size, offline
    from sampler_bench.errors import BenchError
    from sampler_bench.needs import missing_error, sweep_needs
    from sampler_bench.sweep import load_sweep

    needs = sweep_needs(load_sweep(config).cells)
    unfetchable = [n for n in needs if not n.present and n.fetch is None]
    if unfetchable:
        n = unfetchable[0]
        raise BenchError(f"{n.kind} '{n.name}' is not present and bench cannot download it ({n.note or 'no download source'}); "
                         f"fix the config or put the file in place.")
    missing = [n for n in needs if not n.present]
    if missing and offline():
        raise missing_error(missing, str(config))
    console.print(f"cache root: {cache_root()}", highlight=False)
    total = 0
    for n in needs:
        fetched = not n.present
        if fetched:
            n.fetch()
        total += n.size or 0
        console.print(f"  {n.kind} {n.name}: {human_size(n.size)} at {n.path}" + (" (downloaded)" if fetched else " (already present)"),
                      highlight=False, soft_wrap=True)
    console.print(f"{len(needs)} file(s), {human_size(total)} in all" + ("" if needs else ": this sweep uses built-in models only") + ".",
                  highlight=False)


def before_sweep(sw, shard, config: Path, offline_flag: bool):
    """Before a sweep starts: with --offline (or SAMPLER_BENCH_OFFLINE) refuse to start when a needed
    file is missing. Returns the callback that saves `bench env` output (with the needs) into
    OUT/env/; the runner calls it once its own checks passed, so bad input leaves nothing behind."""
    from sampler_bench.cache import offline, set_offline
    from sampler_bench.envinfo import collect, save
    from sampler_bench.needs import missing_error, sweep_needs

    if offline_flag:
        set_offline()
    needs = sweep_needs(sw.shard(shard))
    missing = [n for n in needs if not n.present]
    if missing and offline():
        raise missing_error(missing, str(config))
    tag = f"shard-{shard[0]}-of-{shard[1]}" if shard else "all"
    return lambda: save(sw.out, tag, collect(needs))
