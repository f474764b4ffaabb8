"""`bench fid` (FID of a run / folder / .npz against reference statistics) and `bench stats`."""

from __future__ import annotations

ORDER = 30

import contextlib
import json
from pathlib import Path
from typing import Optional

import typer

from sampler_bench.commands import console, print_json, print_metrics, user_errors, warn
from sampler_bench.commands.progress import CliProgress
from sampler_bench.errors import BenchError
from sampler_bench.textfmt import fmt_num


@contextlib.contextmanager
def _features_phase(total: int, quiet: bool):
    """Progress of the Inception feature extraction (a phase of the CLI's reporter)."""
    from sampler_bench.progress import phase

    with CliProgress(quiet), phase("inception features", total=total) as step:
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
        ref: str = typer.Option(..., "--ref", "-r", help="Reference statistics: a known name (`bench refs`) or an .npz with mu/sigma."),
        metrics: Optional[str] = typer.Option(None, "--metrics", help="Extra metrics, comma-separated: kid, isc."),
        inception_weights: Optional[str] = typer.Option(None, "--inception-weights", help="Path of weights-inception-2015-12-05-6726825d.pth (else $SAMPLER_BENCH_INCEPTION_WEIGHTS, the torch hub cache, download)."),
        num: Optional[int] = typer.Option(None, "--num", help="Use only the first N images of the source."),
        batch: int = typer.Option(64, "--batch", "-b", help="Inception batch size."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object on stdout, nothing else.", metavar=""),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr.", metavar=""),
    ):
        """FID of SOURCE against reference statistics; writes metrics.json into a run directory."""
        from sampler_bench.metrics import parse_metrics
        from sampler_bench.metrics.fid import check_inception_metrics, source_features
        from sampler_bench.metrics.inception import get_extractor
        from sampler_bench.metrics.refs import load_ref
        from sampler_bench.metrics.sources import open_source

        wanted = parse_metrics(metrics)
        bad = [m for m in wanted if m not in ("kid", "isc")]
        if bad:
            raise BenchError(f"bench fid computes kid and isc besides FID; {', '.join(bad)} belong to `bench sample` (analytic models).")
        if source.startswith("model:"):
            raise BenchError("bench fid measures existing images; for exact data samples use `bench stats model:NAME --num N --out ref.npz`.")
        src = open_source(source, num=num)
        refstats = load_ref(ref, want_features="kid" in wanted)
        check_inception_metrics(wanted, refstats)
        ext = get_extractor(inception_weights, device=device, batch_size=batch)
        for w in src.warnings:
            warn(w)
        with _features_phase(src.count, quiet) as step:
            acc = source_features(src, ext, wanted, batch, step)
        result = acc.result(refstats)
        result["fid_weights"] = ext.weights_source
        if src.run_dir is not None:
            merge_run_metrics(src.run_dir, result)
        if as_json:
            print_json(result)
        else:
            console.print(f"FID {fmt_num(result['fid'], '.4f')}  ({src.description} vs {refstats.label})")
            print_metrics({k: v for k, v in result.items() if k != "fid"})
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
        keep_features: bool = typer.Option(False, "--keep-features", help="Also store every feature row (float32, 8 KiB per image), needed for KID.", metavar=""),
        inception_weights: Optional[str] = typer.Option(None, "--inception-weights", help="Path of the Inception weights file (see `bench fid --help`)."),
        batch: int = typer.Option(64, "--batch", "-b", help="Inception batch size."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file.", metavar=""),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr.", metavar=""),
    ):
        """Reference statistics (Inception pool3 mean and covariance) of a set of images."""
        import numpy as np

        from sampler_bench.fileio import check_writable, user_write_errors, write_npz
        from sampler_bench.metrics.fid import source_features
        from sampler_bench.metrics.inception import EXTRACTOR_NAME, get_extractor
        from sampler_bench.metrics.sources import open_source
        from sampler_bench.metrics.stats import few_images_warning

        if out.suffix != ".npz":
            raise BenchError(f"--out '{out}' must end in .npz.")
        if out.exists() and not overwrite:
            raise BenchError(f"'{out}' exists; choose another --out or pass --overwrite.")
        check_writable(out)
        src = open_source(source, num=num, seed=seed, class_label=class_label)
        ext = get_extractor(inception_weights, device=device, batch_size=batch)
        for w in src.warnings:
            warn(w)
        with _features_phase(src.count, quiet) as step:
            acc = source_features(src, ext, ["kid"] if keep_features else [], batch, step)
        n = acc.stats.count
        if n < 2:
            raise BenchError(f"'{source}' gave {n} image(s); statistics need at least 2 (thousands for FID).")
        arrays = {"mu": acc.stats.mean(), "sigma": acc.stats.dense_cov(), "num_images": np.asarray(n, np.int64),
                  "extractor": np.asarray(EXTRACTOR_NAME), "source": np.asarray(src.description)}
        if keep_features:
            arrays["features"] = acc.stats.all_features()
        with user_write_errors(out):
            write_npz(out, **arrays)
        console.print(f"wrote {out}: {EXTRACTOR_NAME} statistics of {n} images ({src.description})")
        few = few_images_warning(n, 2048, "FID against these statistics")
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
        for col in ("name", "cached", "description", "url"):
            t.add_column(col, overflow="fold")
        for e in KNOWN_REFS.values():
            t.add_row(e.name, "yes" if (cache_dir() / e.filename).is_file() else "no", e.summary, e.url)
        console.print(t)
