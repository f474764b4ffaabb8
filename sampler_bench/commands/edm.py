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
        fp16: bool = typer.Option(False, "--fp16", help="Mark the network use_fp16 (runs in fp16 on CUDA).", metavar=""),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file.", metavar=""),
    ):
        """Write a tiny random EDM network (a real architecture, small channel counts) as an EDM pickle.

        For tests and demos: `bench sample --model OUT.pkl ...` runs it like an NVlabs EDM checkpoint."""
        from sampler_bench.fileio import check_writable, user_write_errors
        from sampler_bench.models.edm import make_tiny_network, save_edm_pickle

        if out.suffix.lower() != ".pkl":
            raise BenchError(f"--out '{out}' must end in .pkl (that is how --model recognises EDM networks).")
        if out.exists() and not overwrite:
            raise BenchError(f"'{out}' exists; choose another --out or pass --overwrite.")
        check_writable(out)
        if channels < 1 or classes < 0:
            raise BenchError("--channels must be >= 1 and --classes >= 0.")
        net = make_tiny_network(precond, arch, resolution=resolution, channels=channels, label_dim=classes,
                                seed=seed, use_fp16=fp16)
        with user_write_errors(out):
            save_edm_pickle(net, out)
        n = sum(p.numel() for p in net.parameters())
        console.print(f"wrote {out}: {type(net).__name__} + {type(net.model).__name__} ({arch}), "
                      f"{channels}x{resolution}x{resolution}, {classes or 'no'} classes, {n:,} parameters")

    @app.command("download")
    @user_errors
    def download(names: List[str] = typer.Argument(None, help="Registered checkpoint names (`bench models`), or one sweep config (.yaml): everything it needs; none = list the cache."),
                 clear: bool = typer.Option(False, "--clear", help="Delete the named entries from the cache (file, checksum record, partial download) instead of downloading.", metavar="")):
        """Download registered checkpoints, or everything a sweep config needs, into the cache (resumable; size and checksum verified); `--clear` deletes a bad cache entry."""
        from sampler_bench.models.checkpoints import KNOWN, cache_dir, cache_state, clear_entry, ensure_checkpoint

        if names and len(names) == 1 and names[0].lower().endswith((".yaml", ".yml")):
            from sampler_bench.commands.env import download_for_config

            download_for_config(Path(names[0]))
            return
        if not names:
            if clear:
                raise BenchError("--clear needs the names of the entries to delete; run `bench download` to list them.")
            console.print(f"cache: {cache_dir()}")
            for ck in KNOWN.values():
                console.print(f"  {ck.name}: {cache_state(ck)}")
            return
        unknown = [n for n in names if n not in KNOWN]
        if unknown:
            raise BenchError(f"unknown checkpoint(s) {', '.join(unknown)}; run `bench download` to list them.")
        for n in names:
            if clear:
                gone = clear_entry(KNOWN[n])
                console.print(f"{n}: " + (f"deleted {', '.join(p.name for p in gone)}" if gone else "nothing cached"))
                continue
            path, digest = ensure_checkpoint(KNOWN[n])
            console.print(f"{n}: {path} (sha256 {digest})")
