"""`bench tiny-adm`: tiny random guided-diffusion model and classifier files in the real ``.pt`` format."""

from __future__ import annotations

from pathlib import Path

import typer

from sampler_bench.commands import console, user_errors
from sampler_bench.errors import BenchError

ORDER = 81


def register(app: typer.Typer) -> None:
    @app.command("tiny-adm")
    @user_errors
    def tiny_adm(
        out: Path = typer.Option(..., "--out", "-o", help="Directory to write model.pt and classifier.pt into."),
        seed: int = typer.Option(0, "--seed", help="Seed of the random weights."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files."),
    ):
        """Write a tiny random guided-diffusion UNet (16x16, 10 classes, learned sigma) and its noisy classifier as .pt files.

        Flat state dicts (torch.save), the format of OpenAI's published .pt files:
        `bench sample --model OUT/model.pt --classifier OUT/classifier.pt --guidance-scale 2 ...`."""
        from sampler_bench.models.adm_files import make_tiny, save_state_dict

        targets = [out / "model.pt", out / "classifier.pt"]
        if out.exists() and not out.is_dir():
            raise BenchError(f"--out '{out}' is a file; give a directory.")
        existing = [str(p) for p in targets if p.exists()]
        if existing and not overwrite:
            raise BenchError(f"{', '.join(existing)} exist(s); choose another --out or pass --overwrite.")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BenchError(f"cannot create '{out}': {exc.strerror or exc}; choose another --out.") from None
        for role, path in zip(("model", "classifier"), targets):
            net = make_tiny(role, seed=seed)
            save_state_dict(net, path)
            n = sum(p.numel() for p in net.parameters())
            console.print(f"wrote {path}: {type(net).__name__}, 3x16x16, 10 classes, {n:,} parameters")
