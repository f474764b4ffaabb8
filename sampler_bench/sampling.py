"""The sampling loop shared by `bench sample` and every sweep cell.

- Per-sample seeds (as EDM's ``StackedRandomGenerator``): sample i draws its latent, then its class
  label (if random), then every stochastic-solver noise from its own ``torch.Generator`` seeded with
  its seed, so it is bit-identical whatever the batch size. Latents are drawn in float32 (as EDM's
  ``generate.py``), the state is float64.
- Images are quantised once, as EDM saves them: ``(x * 127.5 + 128).clip(0, 255).to(uint8)``; that
  uint8 tensor is what is saved and what metric consumers (FID) see.
- The run directory is built under a temporary name and renamed when complete.
"""

from __future__ import annotations

import platform
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sampler_bench import __version__
from sampler_bench.errors import BenchError
from sampler_bench.fileio import atomic_dir, write_json, write_npz, write_png
from sampler_bench.images import make_grid, quantize
from sampler_bench.metrics import SampleBatch, build_consumers
from sampler_bench.models.base import F64, BoundDenoiser, Denoiser
from sampler_bench.models.registry import load_model, resolve_device
from sampler_bench.schedules import make_schedule
from sampler_bench.solvers import get_solver, parse_opts, run_solver, steps_for_nfe


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def parse_seeds(text: str) -> list[int]:
    """``"0-63"``, ``"1,5,9-12"`` -> list of ints (ranges inclusive, as EDM's --seeds)."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise BenchError(f"malformed seeds '{text}'; use a list of ranges such as 0-63 or 0,5,10-19.")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise BenchError(f"seed range '{part}' is reversed; write {hi}-{lo}.")
        seeds.extend(range(lo, hi + 1))
    if len(set(seeds)) != len(seeds):
        raise BenchError(f"seeds '{text}' repeat a seed; each sample needs its own seed.")
    return seeds


@dataclass
class RunConfig:
    """Everything that determines a run's samples (and so its identity for resume/skip)."""

    model: str = "gmm"
    solver: str = "heun"
    nfe: int = 35
    seeds: list[int] = field(default_factory=lambda: list(range(64)))
    batch: int = 32
    schedule: str | None = None  # None: the solver's default for this model
    opts: dict[str, Any] = field(default_factory=dict)
    class_label: str | None = None  # None (model default), "random", or an int as text
    device: str = "auto"
    fid_ref: str | None = None  # reference statistics, one per feature space, comma-separated
    metrics: list[str] = field(default_factory=list)  # extra metrics (kid, isc, ...) where available
    inception_weights: str | None = None
    feature_weights: dict[str, str] = field(default_factory=dict)  # feature space -> weights file (DINOv2, CLIP)
    metric_opts: dict[str, Any] = field(default_factory=dict)  # spread of feature metrics: subsets, protocol, bootstrap

    def identity(self) -> dict[str, Any]:
        """The part of the config that must match for a directory to count as the same run."""
        d = asdict(self)
        d.pop("inception_weights", None)  # where the weights come from does not change the run
        d.pop("feature_weights", None)
        if not d.get("metric_opts"):
            d.pop("metric_opts", None)  # defaults: identical to runs made before the option existed
        d.pop("batch", None)  # per-sample seeds: the batch size does not change the samples
        d["opts"] = canonical_opts(self.solver, self.opts)  # eta=1 and eta=1.0 are the same run
        return d


def canonical_opts(solver: str, opts: dict[str, Any]) -> dict[str, Any]:
    """The user's solver options parsed to their types (keys as given, defaults not added)."""
    from sampler_bench.solvers import REGISTRY

    spec = REGISTRY.get(solver)
    if spec is None:
        return dict(opts)
    try:
        parsed = parse_opts(spec, opts)
    except BenchError:
        return dict(opts)  # invalid options are reported by plan_run
    return {k: parsed[k] for k in opts}


class SeededNoise:
    """``noise(sigma_from, sigma_to)`` -> per-sample-seeded N(0, I) shaped like the state."""

    def __init__(self, generators: list[torch.Generator], shape, device):
        self.generators, self.shape, self.device = generators, tuple(shape), device

    def __call__(self, *_sigmas) -> torch.Tensor:
        return torch.stack([torch.randn(self.shape, generator=g, device=self.device, dtype=F64) for g in self.generators])


@dataclass
class Plan:
    """A validated run: model, solver, options, schedule; built before anything is written."""

    cfg: RunConfig
    model: Denoiser
    spec: Any
    opts: dict[str, Any]
    steps: int
    schedule: str
    sigmas: torch.Tensor
    device: torch.device
    label_mode: str | int | None


def plan_run(cfg: RunConfig, model: Denoiser | None = None) -> Plan:
    if cfg.nfe < 1:
        raise BenchError(f"--nfe must be a positive integer; got {cfg.nfe}.")
    if cfg.batch < 1:
        raise BenchError(f"--batch must be a positive integer; got {cfg.batch}.")
    if not cfg.seeds:
        raise BenchError("no seeds given; use --seeds 0-63 or --num 64.")
    device = resolve_device(cfg.device)
    spec = get_solver(cfg.solver)
    opts = parse_opts(spec, cfg.opts)
    steps = steps_for_nfe(spec, cfg.nfe, opts)
    if model is None:
        model = load_model(cfg.model, device)
    if spec.needs_time_map and model.time_map is None:
        raise BenchError(f"solver '{spec.name}' works in the model's native VP time, and model '{cfg.model}' has none; use a rho-space solver (e.g. deis-rhoab3) instead.")
    schedule = cfg.schedule or spec.schedule_for(model)
    sigmas = make_schedule(schedule, steps, model).to(device)
    label_mode: str | int | None
    if cfg.class_label is None:
        label_mode = "random" if model.label_required else None
    elif model.num_classes == 0:
        raise BenchError(f"model '{cfg.model}' is unconditional; drop --class-label.")
    elif cfg.class_label == "random":
        label_mode = "random"
    else:
        try:
            label_mode = int(cfg.class_label)
        except ValueError:
            raise BenchError(f"--class-label '{cfg.class_label}' is not a class index; use 0..{model.num_classes - 1} or 'random'.") from None
        if not 0 <= label_mode < model.num_classes:
            raise BenchError(f"--class-label {label_mode} is out of range for model '{cfg.model}'; use 0..{model.num_classes - 1} or 'random'.")
    return Plan(cfg, model, spec, opts, steps, schedule, sigmas, device, label_mode)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def generate(plan: Plan, seeds: list[int], on_progress: Callable[[int], None] | None = None):
    """Yield one :class:`SampleBatch` per batch of ``seeds`` and the denoiser calls it took."""
    model, dev = plan.model, plan.device
    shape = model.image_shape
    for start in range(0, len(seeds), plan.cfg.batch):
        bseeds = seeds[start: start + plan.cfg.batch]
        gens = [torch.Generator(dev).manual_seed(int(s) % (1 << 32)) for s in bseeds]
        z = torch.stack([torch.randn(shape, generator=g, device=dev) for g in gens]).to(F64)
        if plan.label_mode == "random":
            labels = torch.stack([torch.randint(model.num_classes, (), generator=g, device=dev) for g in gens])
        elif plan.label_mode is None:
            labels = None
        else:
            labels = torch.full((len(bseeds),), int(plan.label_mode), device=dev, dtype=torch.long)
        bound = BoundDenoiser(model, labels)
        with torch.inference_mode(not getattr(model, "needs_grad", False)):
            x = run_solver(plan.spec, bound, z * plan.sigmas[0], plan.sigmas,
                           noise=SeededNoise(gens, shape, dev), opts=plan.opts)
        if not bool(torch.isfinite(x).all()):
            raise BenchError(f"solver '{plan.spec.name}' produced non-finite samples at NFE {plan.cfg.nfe}; try more NFE or another schedule.")
        batch = SampleBatch(list(bseeds), None if labels is None else labels.cpu(), z, x, quantize(x).cpu())
        if on_progress:
            on_progress(len(bseeds))
        yield batch, bound.calls


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"sampler_bench": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__}
    for pkg in ("torch-fidelity", "torchvision"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def existing_run_matches(out: Path, cfg: RunConfig) -> bool:
    """True if ``out`` is a finished run of the same config; BenchError if it is something else."""
    import json

    if not out.exists():
        return False
    if out.is_dir() and not any(out.iterdir()):
        return False
    run_json = out / "run.json"
    if out.is_dir() and run_json.is_file():
        try:
            prev = json.loads(run_json.read_text())["config"]
        except (ValueError, KeyError):
            prev = None
        if prev == cfg.identity():
            return True
        raise BenchError(f"output directory '{out}' holds a run with a different config; choose another --out or pass --overwrite.")
    raise BenchError(f"output directory '{out}' exists and is not a sampler_bench run; choose another --out or pass --overwrite.")


def check_writable(out: Path) -> None:
    parent = out.parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    import os

    if not probe.is_dir():
        raise BenchError(f"cannot write to '{out}': '{probe}' is a file, not a directory; choose another --out.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BenchError(f"cannot write to '{out}': '{probe}' is not writable; choose another --out.")


def run_sample(cfg: RunConfig, out: str | Path, *, overwrite: bool = False, save_images: bool = False,
               on_start: Callable[[int], None] | None = None, on_progress: Callable[[int], None] | None = None,
               model: Denoiser | None = None) -> dict[str, Any]:
    """Run a whole sampling job into the run directory ``out`` and return its run.json record.

    A finished run of the same config already at ``out`` is returned as is (``"skipped": True``)
    unless ``overwrite``.
    """
    out = Path(out)
    if not overwrite and existing_run_matches(out, cfg):
        import json

        rec = json.loads((out / "run.json").read_text())
        rec["skipped"] = True
        return rec
    check_writable(out)
    plan = plan_run(cfg, model)
    consumers = build_consumers(cfg, plan.model, plan.spec, plan.opts, plan.sigmas)
    if on_start:
        on_start(len(cfg.seeds))
    n, (c, h, w) = len(cfg.seeds), plan.model.image_shape
    t0 = time.perf_counter()
    calls: list[int] = []
    metrics_time = 0.0  # consumer (metric) time, kept out of the sampling wall time
    try:
        with atomic_dir(out, overwrite=True) as tmp:
            images = np.lib.format.open_memmap(tmp / "images.npy.tmp", mode="w+", dtype=np.uint8, shape=(n, h, w, c))
            labels = np.full((n,), -1, np.int64)
            i = 0
            if save_images:
                (tmp / "images").mkdir()
            for batch, ncalls in generate(plan, cfg.seeds, on_progress):
                b = len(batch.seeds)
                images[i: i + b] = batch.images.numpy()
                if batch.labels is not None:
                    labels[i: i + b] = batch.labels.numpy()
                if save_images:
                    for j, seed in enumerate(batch.seeds):
                        write_png(tmp / "images" / f"{seed:06d}.png", images[i + j])
                t_m = time.perf_counter()
                for cons in consumers:
                    cons.update(batch)
                metrics_time += time.perf_counter() - t_m
                calls.append(ncalls)
                i += b
            wall = time.perf_counter() - t0 - metrics_time
            images.flush()
            arrays = {"images": images, "seeds": np.asarray(cfg.seeds, np.int64)}
            if (labels >= 0).any():
                arrays["labels"] = labels
            write_npz(tmp / "samples.npz", **arrays)
            write_png(tmp / "grid.png", make_grid(np.asarray(images[:64])))
            del images, arrays
            (tmp / "images.npy.tmp").unlink()
            metrics: dict[str, Any] = {}
            t_m = time.perf_counter()
            for cons in consumers:
                metrics.update(cons.result())
            metrics_time += time.perf_counter() - t_m
            record = {
                "config": cfg.identity(),
                "resolved": {
                    "solver": plan.spec.name, "family": plan.spec.family, "options": plan.opts,
                    "steps": plan.steps, "nfe_rule": plan.spec.nfe_rule, "schedule": plan.schedule,
                    "sigmas": [float(s) for s in plan.sigmas.cpu()],
                    "stochastic": plan.spec.is_stochastic(plan.opts),
                    "class_labels": plan.label_mode, "model": plan.model.describe(),
                },
                "nfe_requested": cfg.nfe,
                "nfe_counted": calls[0] if len(set(calls)) == 1 else calls,
                "num_images": n,
                "device": str(plan.device) + (f" ({torch.cuda.get_device_name(plan.device)})" if plan.device.type == "cuda" else ""),
                "wall_time_s": round(wall, 4),
                "images_per_s": round(n / wall, 3) if wall > 0 else None,
                "versions": versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            if any(c != cfg.nfe for c in calls):
                raise RuntimeError(f"counted NFE {calls} differs from requested {cfg.nfe}")
            if metrics:
                write_json(tmp / "metrics.json", metrics)
                record["metrics"] = metrics
                record["metrics_time_s"] = round(metrics_time, 4)
            write_json(tmp / "run.json", record)
    except OSError as exc:
        raise BenchError(f"cannot write the run directory '{out}': {exc.strerror or exc}; choose another --out.") from None
    return record
