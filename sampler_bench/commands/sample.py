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
        fid: Optional[str] = typer.Option(None, "--fid", help="Reference statistics, one per feature space, comma-separated: a known name (`bench refs`) or an .npz from `bench stats [--features ...]`; the Frechet distance of each is computed on the fly."),
        metrics: Optional[str] = typer.Option(None, "--metrics", help="Metrics, comma-separated: fid, kid, isc, prc, fd-dinov2, fd-clip (need --fid); pixel-fd, ode-error (analytic models, default both); none."),
        inception_weights: Optional[str] = typer.Option(None, "--inception-weights", help="Inception weights file for --fid (see `bench fid --help`)."),
        feature_weights: List[str] = typer.Option([], "--feature-weights", help="SPACE=PATH weights of another feature extractor (e.g. dinov2-vit-l-14=dinov2_vitl14_pretrain.pth); repeatable."),
        fid_subsets: int = typer.Option(3, "--fid-subsets", help="Spread of FID / FD: K disjoint seed subsets (mean +- standard error); 1 = one set, no spread."),
        fid_protocol: str = typer.Option("mean", "--fid-protocol", help="Headline over the K subsets: mean (default) or min (EDM's protocol; also 'edm')."),
        fid_bootstrap: int = typer.Option(0, "--fid-bootstrap", help="Also a bootstrap over images with B resamples (0 = off; keeps every feature row)."),
    ):
        """Sample with one solver at one NFE and write a run directory."""
        from sampler_bench.metrics import parse_feature_weights, parse_metrics
        from sampler_bench.metrics.uncertainty import SpreadOptions
        from sampler_bench.sampling import RunConfig, parse_seeds, run_sample
        from sampler_bench.solvers import split_opt_args

        if seeds is not None and num is not None:
            raise BenchError("--seeds and --num were both given; give only one.")
        if num is not None and num < 1:
            raise BenchError(f"--num must be a positive integer; got {num}.")
        seed_list = parse_seeds(seeds) if seeds is not None else list(range(num if num is not None else 64))
        cfg = RunConfig(model=model, solver=solver, nfe=nfe, seeds=seed_list, batch=batch, schedule=schedule,
                        opts=split_opt_args(opt), class_label=class_label, device=device, fid_ref=fid,
                        inception_weights=inception_weights, metrics=parse_metrics(metrics),
                        feature_weights=parse_feature_weights(feature_weights),
                        metric_opts=SpreadOptions.from_dict({"subsets": fid_subsets, "protocol": fid_protocol, "bootstrap": fid_bootstrap}).as_dict())
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
                          f"(NFE counted {rec['nfe_counted']}, {rec['wall_time_s']:.2f} s, {rec['resolved']['steps']} steps, schedule {rec['resolved']['schedule']})",
                          soft_wrap=True)
        print_metrics(rec.get("metrics") or {})
