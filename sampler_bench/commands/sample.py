"""`bench sample`: one sampling run into a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from sampler_bench.commands import console, print_metrics, user_errors, warn
from sampler_bench.commands.progress import CliProgress
from sampler_bench.errors import BenchError

ORDER = 10  # position among the CLI's commands (cli._register_commands)


def guided_note(rec: dict) -> str:
    g = (rec.get("resolved", {}).get("model") or {}).get("guidance")
    return f", classifier calls {rec.get('classifier_calls', 0)} at scale {g['scale']:g}" if g else ""


def register(app: typer.Typer) -> None:
    @app.command("sample")
    @user_errors
    def sample(
        solver: Optional[str] = typer.Option(None, "--solver", "-s", help="Solver name (see `bench solvers`); required unless --preset gives it."),
        nfe: int = typer.Option(..., "--nfe", "-n", help="Exact number of denoiser calls per sample."),
        out: Path = typer.Option(..., "--out", "-o", help="Run directory to create (samples.npz, grid.png, run.json)."),
        model: str = typer.Option("gmm", "--model", "-m", help="Model name (see `bench models`), NAME:key=value,..., or a checkpoint path."),
        seeds: Optional[str] = typer.Option(None, "--seeds", help="Per-sample seeds, e.g. 0-63 or 0,5,10-19 (default 0-63)."),
        num: Optional[int] = typer.Option(None, "--num", help="Number of samples, seeds 0..num-1 (instead of --seeds)."),
        batch: int = typer.Option(32, "--batch", "-b", help="Batch size (does not change the samples)."),
        schedule: Optional[str] = typer.Option(None, "--schedule", help="Step schedule NAME[:k=v,...]: karras, time-uniform, time-quadratic, time-poly, logsnr, discrete-uniform, or an official grid: deis-t, ddim-uniform, ddim-quad, diffusers-leading, diffusers-trailing, diffusers-linspace, ersde-guided (default: the solver's)."),
        opt: List[str] = typer.Option([], "--opt", help="Solver option key=value (repeatable); see `bench solvers -v`."),
        preset: Optional[str] = typer.Option(None, "--preset", help="Official protocol preset (solver, options, grid, final step, noise; see `bench presets`); explicit options override it."),
        final_step: Optional[str] = typer.Option(None, "--final-step", help="zero (default: last step to sigma 0), none (stop at the last grid sigma) or denoise (one more counted D call there)."),
        noise: Optional[str] = typer.Option(None, "--noise", help="Per-sample noise stream: edm-generate (default: EDM's per-sample generators, reproduces generate.py) or philox (counter-based, batched; fast on GPU)."),
        class_label: Optional[str] = typer.Option(None, "--class-label", help="Class index for conditional models, or 'random' (per-sample seeded)."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        save_images: bool = typer.Option(False, "--save-images", help="Also write one PNG per sample under images/.", metavar=""),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory (only a sampler_bench run, never other files).", metavar=""),
        allow_large_nfe: bool = typer.Option(False, "--allow-large-nfe", help="Allow --nfe above 10,000.", metavar=""),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines on stderr.", metavar=""),
        precision: str = typer.Option("fp32", "--precision", help="Network autocast: fp32 (off), fp16 or bf16 (changes the numbers; recorded)."),
        compile_net: bool = typer.Option(False, "--compile", help="torch.compile the network (network models; first batch pays the compilation).", metavar=""),
        threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: OMP_NUM_THREADS if set, else 1 on CPU); recorded in run.json."),
        fid: Optional[str] = typer.Option(None, "--fid", help="Reference statistics, one per feature space, comma-separated: a known name (`bench refs`) or an .npz from `bench stats [--features ...]`; the Frechet distance of each is computed on the fly."),
        metrics: Optional[str] = typer.Option(None, "--metrics", help="Metrics, comma-separated: fid, kid, isc, prc, fd-dinov2, fd-clip (need --fid); pixel-fd, ode-error (analytic models, default both); none."),
        inception_weights: Optional[str] = typer.Option(None, "--inception-weights", help="Inception weights file for --fid (see `bench fid --help`)."),
        feature_weights: List[str] = typer.Option([], "--feature-weights", help="SPACE=PATH weights of another feature extractor (e.g. dinov2-vit-l-14=dinov2_vitl14_pretrain.pth); repeatable."),
        fid_subsets: int = typer.Option(3, "--fid-subsets", help="Spread of FID / FD: K disjoint seed subsets (mean +- standard error); 1 = one set, no spread."),
        fid_protocol: str = typer.Option("mean", "--fid-protocol", help="Headline over the K subsets: mean (default) or min (EDM's protocol; also 'edm')."),
        fid_bootstrap: int = typer.Option(0, "--fid-bootstrap", help="Also a bootstrap over images with B resamples (0 = off; keeps every feature row)."),
        classifier: Optional[str] = typer.Option(None, "--classifier", help="Classifier guidance: a classifier name (`bench models`), a guided-diffusion .pt, or gmm (the analytic model's exact posterior)."),
        guidance_scale: Optional[str] = typer.Option(None, "--guidance-scale", help="Classifier guidance scale s >= 0 (default 1 with --classifier): D + s sigma^2 grad log p(y|x)."),
        as_json: bool = typer.Option(False, "--json", help="Print the run record (run.json: config, counted NFE, timings, metrics) as one JSON object on stdout, nothing else.", metavar=""),
    ):
        """Sample with one solver at one NFE and write a run directory."""
        from sampler_bench.limits import check_nfe, check_num_samples, check_seed
        from sampler_bench.metrics import parse_feature_weights, parse_metrics
        from sampler_bench.metrics.uncertainty import SpreadOptions
        from sampler_bench.presets import expand
        from sampler_bench.models.guidance import check_scale
        from sampler_bench.sampling import RunConfig, parse_seeds, run_sample
        from sampler_bench.solvers import split_opt_args

        if seeds is not None and num is not None:
            raise BenchError("--seeds and --num were both given; give only one.")
        if num is not None and num < 1:
            raise BenchError(f"--num must be a positive integer; got {num}.")
        if num is not None:
            check_num_samples(num, "--num")
            check_seed(num - 1)
        check_nfe(nfe, allow_large_nfe)
        seed_list = parse_seeds(seeds) if seeds is not None else list(range(num if num is not None else 64))
        run = expand(preset, solver=solver, opts=split_opt_args(opt), schedule=schedule, final_step=final_step, noise=noise)
        solver = run["solver"]
        cfg = RunConfig(model=model, solver=solver, nfe=nfe, seeds=seed_list, batch=batch, schedule=run["schedule"],
                        opts=run["opts"], class_label=class_label, device=device, fid_ref=fid,
                        inception_weights=inception_weights, metrics=parse_metrics(metrics),
                        final_step=run["final_step"] or "zero", noise=run["noise"] or "edm-generate", preset=preset,
                        allow_large_nfe=allow_large_nfe, threads=threads, precision=precision, compile=compile_net,
                        classifier=classifier, guidance_scale=None if guidance_scale is None else check_scale(guidance_scale),
                        feature_weights=parse_feature_weights(feature_weights),
                        metric_opts=SpreadOptions.from_dict({"subsets": fid_subsets, "protocol": fid_protocol, "bootstrap": fid_bootstrap}).as_dict())
        with CliProgress(quiet):
            rec = run_sample(cfg, out, overwrite=overwrite, save_images=save_images)
        if as_json:
            from sampler_bench.commands import print_json

            for w in (rec.get("metrics") or {}).get("warnings", []):
                warn(w)
            print_json({**rec, "out": str(out)})
            return
        if rec.get("skipped"):
            console.print(f"{out}: already holds this run (same config); nothing to do. Use --overwrite to redo it.", soft_wrap=True)
        else:
            console.print(f"wrote {rec['num_images']} samples to {out} "
                          f"(NFE counted {rec['nfe_counted']}{guided_note(rec)}, {rec['wall_time_s']:.2f} s, {rec['resolved']['steps']} steps, schedule {rec['resolved']['schedule']}"
                          + (f", final step {rec['resolved']['final_step']}" if rec['resolved'].get('final_step', 'zero') != 'zero' else "")
                          + (f", preset {rec['resolved']['preset']['name']}" if rec['resolved'].get('preset') else "") + ")",
                          soft_wrap=True)
        print_metrics(rec.get("metrics") or {})
