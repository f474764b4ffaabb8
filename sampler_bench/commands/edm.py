"""`bench tiny-edm` (a tiny random EDM network in the real pickle format) and `bench download`."""

from __future__ import annotations

ORDER = 80

from pathlib import Path
from typing import List

import typer

from sampler_bench.commands import console, user_errors
from sampler_bench.errors import BenchError


def register(app: typer.Typer) -> None:
    @app.command("tiny-edm")
    @user_errors
    def tiny_edm(
        out: Path = typer.Option(..., "--out", "-o", help="Where to write the .pkl file."),
        precond: str = typer.Option("vp", "--precond", help="Preconditioner: vp, ve, iddpm or edm."),
        arch: str = typer.Option("ddpmpp", "--arch", help="Architecture: ddpmpp, ncsnpp, songunet-skip (SongUNet) or adm (DhariwalUNet)."),
        resolution: int = typer.Option(8, "--resolution", help="Image resolution (power of two >= 4)."),
        channels: int = typer.Option(3, "--channels", help="Image channels."),
        classes: int = typer.Option(0, "--classes", help="Number of classes (0 = unconditional)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the random weights."),
        fp16: bool = typer.Option(False, "--fp16", help="Mark the network use_fp16 (runs in fp16 on CUDA)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
    ):
        """Write a randomly initialised EDM network of a real architecture (small channel counts) in
        NVlabs' EDM pickle format, for tests and demos: `bench sample --model OUT.pkl ...`."""
        from sampler_bench.models.edm import make_tiny_network, save_edm_pickle

        if out.suffix.lower() != ".pkl":
            raise BenchError(f"--out '{out}' must end in .pkl (that is how --model recognises EDM networks).")
        if out.exists() and not overwrite:
            raise BenchError(f"'{out}' exists; choose another --out or pass --overwrite.")
        if channels < 1 or classes < 0:
            raise BenchError("--channels must be >= 1 and --classes >= 0.")
        net = make_tiny_network(precond, arch, resolution=resolution, channels=channels, label_dim=classes,
                                seed=seed, use_fp16=fp16)
        save_edm_pickle(net, out)
        n = sum(p.numel() for p in net.parameters())
        console.print(f"wrote {out}: {type(net).__name__} + {type(net.model).__name__} ({arch}), "
                      f"{channels}x{resolution}x{resolution}, {classes or 'no'} classes, {n:,} parameters")

    @app.command("download")
    @user_errors
    def download(names: List[str] = typer.Argument(None, help="Registered checkpoint names (`bench models`); none = list the cache."),):
        """Download registered checkpoints into the cache (resumable) and verify their checksums."""
        from sampler_bench.models.checkpoints import KNOWN, cache_dir, cache_state, ensure_checkpoint, load_registry

        KNOWN = {**KNOWN, **load_registry(fmt="adm-pt")}  # noqa: N806 -- EDM and guided-diffusion files

        if not names:
            console.print(f"cache: {cache_dir()}")
            for ck in KNOWN.values():
                console.print(f"  {ck.name}: {cache_state(ck)}")
            return
        unknown = [n for n in names if n not in KNOWN]
        if unknown:
            raise BenchError(f"unknown checkpoint(s) {', '.join(unknown)}; run `bench download` to list them.")
        for n in names:
            path, digest = ensure_checkpoint(KNOWN[n])
            console.print(f"{n}: {path} (sha256 {digest})")
