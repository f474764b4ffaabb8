"""`bench fid` (FID of a run / folder / .npz against reference statistics) and `bench stats`."""

from __future__ import annotations

ORDER = 30

import contextlib
import json
from pathlib import Path
from typing import List, Optional

import typer

from sampler_bench.commands import console, print_json, print_metrics, user_errors, warn
from sampler_bench.commands.progress import CliProgress
from sampler_bench.errors import BenchError
from sampler_bench.textfmt import fmt_num


@contextlib.contextmanager
def _features_phase(total: int, quiet: bool):
    """Progress of the feature extraction (a phase of the CLI's reporter)."""
    from sampler_bench.progress import phase

    with CliProgress(quiet), phase("features", total=total) as step:
        yield step


def merge_run_metrics(run_dir: Path, new: dict) -> dict:
    """Merge ``new`` into ``run_dir/metrics.json`` (and run.json's ``metrics``), each written atomically."""
    from sampler_bench.fileio import write_json

    path = run_dir / "metrics.json"
    try:
        cur = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        raise BenchError(f"'{path}' is not valid JSON; delete it and run `bench fid` again.") from None
    cur.update(new)
    write_json(path, cur)
    run_json = run_dir / "run.json"
    if run_json.is_file():
        try:
            rec = json.loads(run_json.read_text())
        except ValueError:
            rec = None
        if isinstance(rec, dict):
            rec["metrics"] = {**(rec.get("metrics") or {}), **new}
            write_json(run_json, rec)
    return cur


def register(app: typer.Typer) -> None:
    @app.command("fid")
    @user_errors
    def fid(
        source: str = typer.Argument(..., help="A run directory, a folder of images, an .npz of uint8 images (images / arr_0) or a dataset .zip."),
        ref: str = typer.Option(..., "--ref", "-r", help="Reference statistics, one per feature space, comma-separated: known names (`bench refs`) or .npz files from `bench stats [--features ...]`."),
        metrics: Optional[str] = typer.Option(None, "--metrics", help="Metrics, comma-separated: fid, kid, isc, prc, fd-dinov2, fd-clip (the distance of every --ref is always computed)."),
        inception_weights: Optional[str] = typer.Option(None, "--inception-weights", help="Path of weights-inception-2015-12-05-6726825d.pth (else $SAMPLER_BENCH_INCEPTION_WEIGHTS, the torch hub cache, download)."),
        feature_weights: List[str] = typer.Option([], "--feature-weights", help="SPACE=PATH weights of another feature extractor (DINOv2, CLIP); repeatable."),
        num: Optional[int] = typer.Option(None, "--num", help="Use only the first N images of the source."),
        batch: int = typer.Option(64, "--batch", "-b", help="Feature extractor batch size."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        fid_subsets: int = typer.Option(3, "--fid-subsets", help="Spread: K disjoint subsets of the images in order (mean +- standard error); 1 = no spread."),
        fid_protocol: str = typer.Option("mean", "--fid-protocol", help="Headline over the K subsets: mean (default) or min (EDM's protocol; also 'edm')."),
        fid_bootstrap: int = typer.Option(0, "--fid-bootstrap", help="Also a bootstrap over images with B resamples (0 = off)."),
        as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object on stdout, nothing else.", metavar=""),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr.", metavar=""),
    ):
        """FID (and other feature metrics) of SOURCE against reference statistics; writes metrics.json into a run directory."""
        from sampler_bench.metrics import parse_feature_weights, parse_metrics
        from sampler_bench.metrics.extractors import get_space_extractor
        from sampler_bench.metrics.fid import (FEATURE_METRICS, FeatureAccumulator, combined_result, fd_key,
                                              plan_feature_metrics, split_refs)
        from sampler_bench.metrics.sources import open_source
        from sampler_bench.metrics.uncertainty import SpreadOptions

        wanted = parse_metrics(metrics)
        bad = [m for m in wanted if m not in FEATURE_METRICS]
        if bad:
            raise BenchError(f"bench fid computes {', '.join(FEATURE_METRICS)}; {', '.join(bad)} belong to `bench sample` (analytic models).")
        if source.startswith("model:"):
            raise BenchError("bench fid measures existing images; for exact data samples use `bench stats model:NAME --num N --out ref.npz`.")
        spread = SpreadOptions.from_dict({"subsets": fid_subsets, "protocol": fid_protocol, "bootstrap": fid_bootstrap})
        weights = parse_feature_weights(feature_weights)
        src = open_source(source, num=num)
        plans = plan_feature_metrics(split_refs(ref), wanted)
        exts = [get_space_extractor(p.ref.space, inception_weights if p.ref.space == "inception-v3-compat" else weights.get(p.ref.space),
                                    device=device, batch_size=batch) for p in plans]
        for w in src.warnings:
            warn(w)
        accs = [FeatureAccumulator(e, p.metrics, total=src.count, spread=spread) for p, e in zip(plans, exts)]
        with _features_phase(src.count, quiet) as step:
            for b in src.batches(batch):
                for acc in accs:
                    acc.update(b)
                step(len(b))
        result = combined_result(list(zip(plans, accs)))
        if src.run_dir is not None:
            merge_run_metrics(src.run_dir, result)
        if as_json:
            print_json(result)
        else:
            for p, acc in zip(plans, accs):
                k = fd_key(acc.space)
                se = f" +- {fmt_num(result[k + '_se'], '.4f')}" if (k + "_se") in result else ""
                console.print(f"{k.upper().replace('_', '-')} {fmt_num(result[k], '.4f')}{se}  ({src.description} vs {p.ref.label})")
            print_metrics({k: v for k, v in result.items() if k not in [fd_key(a.space) for a in accs]})
            if src.run_dir is not None:
                console.print(f"wrote {src.run_dir / 'metrics.json'}")

    @app.command("stats")
    @user_errors
    def stats(
        source: str = typer.Argument(..., help="An image folder, an .npz of uint8 images, an EDM dataset .zip, a run directory, or model:NAME (exact data samples of an analytic model)."),
        out: Path = typer.Option(..., "--out", "-o", help="Output .npz (mu, sigma, num_images, extractor)."),
        num: Optional[int] = typer.Option(None, "--num", help="Number of images (required for model:NAME; else the first N)."),
        seed: int = typer.Option(0, "--seed", help="Seed for model:NAME data samples."),
        class_label: Optional[int] = typer.Option(None, "--class-label", help="model:NAME: statistics of one class instead of the marginal."),
        features: str = typer.Option("inception", "--features", help="Feature space: inception (default), dinov2-vit-{s,b,l,g}-14 (dinov2 = l), clip-rn50, clip-vit-b-32 (clip), clip-vit-b-16, clip-vit-l-14."),
        keep_features: bool = typer.Option(False, "--keep-features", help="Also store every feature row (float32, 4 bytes x width per image), needed for KID and precision/recall.", metavar=""),
        inception_weights: Optional[str] = typer.Option(None, "--inception-weights", help="Path of the Inception weights file (see `bench fid --help`)."),
        weights: Optional[str] = typer.Option(None, "--weights", help="Weights file of the --features extractor (DINOv2 / CLIP; else its env var, the torch hub cache, download)."),
        batch: int = typer.Option(64, "--batch", "-b", help="Feature extractor batch size."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file.", metavar=""),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr.", metavar=""),
    ):
        """Reference statistics (feature mean and covariance, Inception pool3 by default) of a set of images."""
        import numpy as np

        from sampler_bench.fileio import check_writable, user_write_errors, write_npz
        from sampler_bench.metrics.extractors import get_space_extractor, space_of
        from sampler_bench.metrics.fid import source_features
        from sampler_bench.metrics.sources import open_source
        from sampler_bench.metrics.stats import few_images_warning

        if out.suffix != ".npz":
            raise BenchError(f"--out '{out}' must end in .npz.")
        if out.exists() and not overwrite:
            raise BenchError(f"'{out}' exists; choose another --out or pass --overwrite.")
        check_writable(out)
        space = space_of(features)
        if weights and space.family == "inception":
            raise BenchError("--weights is for DINOv2 / CLIP features; give Inception weights with --inception-weights.")
        src = open_source(source, num=num, seed=seed, class_label=class_label)
        ext = get_space_extractor(space.name, inception_weights if space.family == "inception" else weights, device=device, batch_size=batch)
        for w in src.warnings:
            warn(w)
        with _features_phase(src.count, quiet) as step:
            acc = source_features(src, ext, [], batch, step, keep_float32=keep_features)
        n = acc.stats.count
        if n < 2:
            raise BenchError(f"'{source}' gave {n} image(s); statistics need at least 2 (thousands for FID).")
        arrays = {"mu": acc.stats.mean(), "sigma": acc.stats.dense_cov(), "num_images": np.asarray(n, np.int64),
                  "extractor": np.asarray(space.name), "source": np.asarray(src.description)}
        if keep_features:
            arrays["features"] = acc.all_features()
        with user_write_errors(out):
            write_npz(out, **arrays)
        console.print(f"wrote {out}: {space.name} statistics of {n} images ({src.description})")
        few = few_images_warning(n, space.dim, ("FID" if space.family == "inception" else "the Frechet distance") + " against these statistics")
        if few:
            warn(few)

    @app.command("refs")
    @user_errors
    def refs():
        """Known reference statistics (`--ref NAME`), their source URL and whether they are cached."""
        from rich.table import Table

        from sampler_bench.metrics.refs import KNOWN_REFS, cache_dir

        t = Table(box=None, pad_edge=False, header_style="bold", title=f"reference statistics (cache: {cache_dir()})",
                  title_justify="left")
        for col in ("name", "features", "cached", "description", "url"):
            t.add_column(col, overflow="fold")
        for e in KNOWN_REFS.values():
            t.add_row(e.name, e.features, "yes" if (cache_dir() / e.filename).is_file() else "no", e.summary, e.url)
        console.print(t)
