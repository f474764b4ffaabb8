"""`bench sample`: one sampling run into a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sampler_bench.commands import console, err_console, print_metrics, user_errors
from sampler_bench.errors import BenchError

ORDER = 10  # position among the CLI's commands (cli._register_commands)


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=False)


def guided_note(rec: dict) -> str:
    g = (rec.get("resolved", {}).get("model") or {}).get("guidance")
    return f", classifier calls {rec.get('classifier_calls', 0)} at scale {g['scale']:g}" if g else ""


def register(app: typer.Typer) -> None:
    @app.command("sample")
    @user_errors
    def sample(
        solver: str = typer.Option(..., "--solver", "-s", help="Solver name (see `bench solvers`)."),
        nfe: int = typer.Option(..., "--nfe", "-n", help="Exact number of denoiser calls per sample."),
        out: Path = typer.Option(..., "--out", "-o", help="Run directory to create (samples.npz, grid.png, run.json)."),
        model: str = typer.Option("gmm", "--model", "-m", help="Model name (see `bench models`), NAME:key=value,..., or a checkpoint path."),
        seeds: Optional[str] = typer.Option(None, "--seeds", help="Per-sample seeds, e.g. 0-63 or 0,5,10-19 (default 0-63)."),
        num: Optional[int] = typer.Option(None, "--num", help="Number of samples, seeds 0..num-1 (instead of --seeds)."),
        batch: int = typer.Option(32, "--batch", "-b", help="Batch size (does not change the samples)."),
        schedule: Optional[str] = typer.Option(None, "--schedule", help="Step schedule NAME[:k=v,...]: karras, time-uniform, time-quadratic, time-poly, logsnr, discrete-uniform (default: the solver's)."),
        opt: List[str] = typer.Option([], "--opt", help="Solver option key=value (repeatable); see `bench solvers -v`."),
        class_label: Optional[str] = typer.Option(None, "--class-label", help="Class index for conditional models, or 'random' (per-sample seeded)."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        save_images: bool = typer.Option(False, "--save-images", help="Also write one PNG per sample under images/."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
        fid: Optional[str] = typer.Option(None, "--fid", help="FID on the fly against reference statistics: a known name (`bench refs`) or an .npz with mu/sigma."),
        metrics: Optional[str] = typer.Option(None, "--metrics", help="Metrics, comma-separated: kid, isc (with --fid); pixel-fd, ode-error (analytic models, default both); none."),
        inception_weights: Optional[str] = typer.Option(None, "--inception-weights", help="Inception weights file for --fid (see `bench fid --help`)."),
        classifier: Optional[str] = typer.Option(None, "--classifier", help="Classifier guidance: a classifier name (`bench models`), a guided-diffusion .pt, or gmm (the analytic model's exact posterior)."),
        guidance_scale: Optional[str] = typer.Option(None, "--guidance-scale", help="Classifier guidance scale s >= 0 (default 1 with --classifier): D + s sigma^2 grad log p(y|x)."),
    ):
        """Sample with one solver at one NFE and write a run directory."""
        from sampler_bench.metrics import parse_metrics
        from sampler_bench.models.guidance import check_scale
        from sampler_bench.sampling import RunConfig, parse_seeds, run_sample
        from sampler_bench.solvers import split_opt_args

        if seeds is not None and num is not None:
            raise BenchError("--seeds and --num were both given; give only one.")
        if num is not None and num < 1:
            raise BenchError(f"--num must be a positive integer; got {num}.")
        seed_list = parse_seeds(seeds) if seeds is not None else list(range(num if num is not None else 64))
        cfg = RunConfig(model=model, solver=solver, nfe=nfe, seeds=seed_list, batch=batch, schedule=schedule,
                        opts=split_opt_args(opt), class_label=class_label, device=device, fid_ref=fid,
                        inception_weights=inception_weights, metrics=parse_metrics(metrics), classifier=classifier,
                        guidance_scale=None if guidance_scale is None else check_scale(guidance_scale))
        bar = progress_bar()
        task = bar.add_task(f"{solver} NFE={nfe}", total=len(seed_list), start=False)
        started = []  # stop (and so print) the bar only once it started: an early error stays one line
        try:
            rec = run_sample(cfg, out, overwrite=overwrite, save_images=save_images,
                             on_start=lambda n: (bar.start(), bar.start_task(task), started.append(True)),
                             on_progress=lambda k: bar.advance(task, k))
        finally:
            if started:
                bar.stop()
        if rec.get("skipped"):
            console.print(f"{out}: already holds this run (same config); nothing to do. Use --overwrite to redo it.", soft_wrap=True)
        else:
            console.print(f"wrote {rec['num_images']} samples to {out} "
                          f"(NFE counted {rec['nfe_counted']}{guided_note(rec)}, {rec['wall_time_s']:.2f} s, {rec['resolved']['steps']} steps, schedule {rec['resolved']['schedule']})",
                          soft_wrap=True)
        print_metrics(rec.get("metrics") or {})
