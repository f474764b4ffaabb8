"""The sampling loop shared by `bench sample` and every sweep cell.

- Per-sample seeds (as EDM's ``StackedRandomGenerator``): sample i draws its latent, then its class
  label (if random), then every stochastic-solver noise from its own ``torch.Generator`` seeded with
  its seed, so it is bit-identical whatever the batch size. Latents are drawn in float32 (as EDM's
  ``generate.py``), the state is float64. This is the noise stream ``edm-generate``
  (``RunConfig.noise``, :data:`NOISE_STREAMS`); each solver draws where its reference draws
  (README "Reproducing the papers").
- ``RunConfig.final_step`` (``zero|none|denoise``, solvers/__init__.py) shapes the schedule and the
  last call; ``RunConfig.preset`` names the protocol preset the fields were expanded from.
- Images are quantised once, as EDM saves them: ``(x * 127.5 + 128).clip(0, 255).to(uint8)``; that
  uint8 tensor is what is saved and what metric consumers (FID) see.
- The run directory is built under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sampler_bench import __version__, distributed
from sampler_bench.errors import BenchError
from sampler_bench.fileio import atomic_dir, write_json, write_npz, write_png
from sampler_bench.images import make_grid
from sampler_bench.metrics import SampleBatch, build_consumers
from sampler_bench.models.base import F64, BoundDenoiser, Denoiser
from sampler_bench.models.registry import apply_guidance, load_model, resolve_device
from sampler_bench.limits import check_limits, check_num_samples, check_seed
from sampler_bench.progress import phase
from sampler_bench.rundir import check_replaceable, config_diff, read_run_record
from sampler_bench.schedules import make_schedule, parse_schedule
from sampler_bench.solvers import check_final_step, get_solver, parse_opts, run_solver, steps_for_nfe
from sampler_bench.accel import check_precision, network_options
from sampler_bench.memory import keep_freed_memory
from sampler_bench.noise import NOISE_STREAMS, PhiloxNoise, philox_normal, philox_randint
from sampler_bench.threads import check_threads, resolve_threads, thread_count
from sampler_bench.transfer import HostCopy, pipeline_depth, start_host_copy


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
        check_seed(hi)
        check_num_samples(len(seeds) + hi - lo + 1)
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
    final_step: str = "zero"  # zero | none | denoise (solvers/__init__.py)
    noise: str = "edm-generate"  # the noise stream (NOISE_STREAMS)
    preset: str | None = None  # the protocol preset these fields were expanded from (presets.py)
    allow_large_nfe: bool = False  # NFE above limits.MAX_NFE (not part of the run's identity)
    threads: int | None = None  # CPU intra-op threads (None: the policy in threads.py); not part of identity
    precision: str = "fp32"  # network autocast (accel.py): fp32 (off), fp16, bf16
    compile: bool = False  # torch.compile the network (accel.py)
    classifier: str | None = None  # classifier guidance (models/guidance.py): NAME, PATH or gmm
    guidance_scale: float | None = None  # None: 1.0 when a classifier is given
    feature_weights: dict[str, str] = field(default_factory=dict)  # feature space -> weights file (DINOv2, CLIP)
    metric_opts: dict[str, Any] = field(default_factory=dict)  # spread of feature metrics: subsets, protocol, bootstrap

    def identity(self) -> dict[str, Any]:
        """The part of the config that must match for a directory to count as the same run."""
        d = asdict(self)
        d.pop("inception_weights", None)  # where the weights come from does not change the run
        d.pop("allow_large_nfe", None)  # a permission, not a property of the samples
        d.pop("threads", None)  # the thread count does not change the samples either
        if batch_invariant(self.model):  # per-sample seeds and float64 arithmetic: the batch size does not change the images
            d.pop("batch", None)
        d.pop("feature_weights", None)  # where the weights come from does not change the run
        if not d.get("metric_opts"):
            d.pop("metric_opts", None)  # defaults: identical to runs made before the option existed
        d["opts"] = canonical_opts(self.solver, self.opts)  # eta=1 and eta=1.0 are the same run
        # fields at their defaults are left out, so runs recorded before these fields existed still match
        for k, default in (("final_step", "zero"), ("noise", "edm-generate"), ("preset", None), ("precision", "fp32"),
                           ("compile", False)):
            if d.get(k) == default:
                d.pop(k)
        if self.classifier is None and self.guidance_scale is None:  # unguided runs keep their old identity
            d.pop("classifier"), d.pop("guidance_scale")
        return d


def batch_invariant(model: str) -> bool:
    """True for the analytic models, whose images do not depend on the batch size. A network's
    float32 kernels may round differently for another batch size, so there it is part of the run."""
    from sampler_bench.models.registry import MODELS

    entry = MODELS.get(str(model).partition(":")[0])
    return entry is not None and entry.kind == "analytic"


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


def check_noise(name: str) -> str:
    if name not in NOISE_STREAMS:
        raise BenchError(f"unknown noise stream '{name}'; use one of {', '.join(NOISE_STREAMS)}.")
    return name


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
    final_step: str = "zero"
    classifier_calls: list[int] = field(default_factory=list)  # per batch, counted apart from NFE


def check_config(cfg: RunConfig, dist=None) -> tuple[torch.device, Any, dict[str, Any], int]:
    """Validate everything about ``cfg`` that needs no model: device, solver, options, NFE, schedule."""
    check_limits(cfg)
    if cfg.batch < 1:
        raise BenchError(f"--batch must be a positive integer; got {cfg.batch}.")
    check_final_step(cfg.final_step)
    check_noise(cfg.noise)
    check_precision(cfg.precision)
    check_threads(cfg.threads)
    if cfg.preset is not None:
        from sampler_bench.presets import get_preset

        get_preset(cfg.preset)
    device = resolve_device(cfg.device)
    if dist is not None:
        device = distributed.local_device(device, dist)
    spec = get_solver(cfg.solver)
    opts = parse_opts(spec, cfg.opts)
    steps = steps_for_nfe(spec, cfg.nfe, opts, cfg.final_step)
    if cfg.schedule is not None:
        parse_schedule(cfg.schedule)
    return device, spec, opts, steps


def plan_run(cfg: RunConfig, model: Denoiser | None = None, dist=None) -> Plan:
    device, spec, opts, steps = check_config(cfg, dist)
    if model is None:
        model = load_model(cfg.model, device)
    model = apply_guidance(model, cfg.classifier, cfg.guidance_scale, device)
    if spec.needs_time_map and model.time_map is None:
        raise BenchError(f"solver '{spec.name}' works in the model's native VP time, and model '{cfg.model}' has none; use a rho-space solver (e.g. deis-rhoab3) instead.")
    schedule = cfg.schedule or spec.schedule_for(model)
    sigmas = make_schedule(schedule, steps, model, cfg.final_step, allow_ties=spec.family == "edm").to(device)
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
    return Plan(cfg, model, spec, opts, steps, schedule, sigmas, device, label_mode, cfg.final_step)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@dataclass
class LaunchedBatch:
    """A batch whose solver has been launched and whose host copies are under way (transfer.py)."""

    plan: Plan
    seeds: list[int]
    start: int
    z: torch.Tensor
    x: torch.Tensor
    copy: HostCopy
    calls: int

    def finish(self) -> tuple[SampleBatch, int]:
        """Wait for the host copies; refuse a non-finite batch; return it and its denoiser calls."""
        c = self.copy.wait()
        if not bool(c.finite):
            raise BenchError(f"solver '{self.plan.spec.name}' produced non-finite samples at NFE {self.plan.cfg.nfe}; try more NFE or another schedule.")
        return SampleBatch(self.seeds, c.labels, self.z, self.x, c.images, self.start), self.calls


def launch_batch(plan: Plan, bseeds: list[int], start: int = 0) -> LaunchedBatch:
    """Run the solver on one batch of seeds (``start``: the position of its first seed in the run)
    and start copying its images to the host; on CUDA this returns as soon as the work is queued
    (no host sync), so the caller can handle the previous batch. ``.finish()`` gives the
    :class:`SampleBatch` and the denoiser calls it took."""
    model, dev = plan.model, plan.device
    shape = model.image_shape
    if plan.cfg.noise == "philox":  # noise.py: one batched computation per draw, batch-size independent
        seed_t = torch.tensor([int(s) for s in bseeds], dtype=torch.int64, device=dev)
        z, noise = philox_normal(seed_t, 0, shape, dev), PhiloxNoise(bseeds, shape, dev)
        draw_labels = lambda: philox_randint(seed_t, 1, model.num_classes, dev)  # noqa: E731
    else:  # edm-generate; seeds are checked to be < 2^32
        gens = [torch.Generator(dev).manual_seed(int(s)) for s in bseeds]
        z, noise = torch.stack([torch.randn(shape, generator=g, device=dev) for g in gens]).to(F64), SeededNoise(gens, shape, dev)
        draw_labels = lambda: torch.stack([torch.randint(model.num_classes, (), generator=g, device=dev) for g in gens])  # noqa: E731
    if plan.label_mode == "random":
        labels = draw_labels()
    elif plan.label_mode is None:
        labels = None
    else:
        labels = torch.full((len(bseeds),), int(plan.label_mode), device=dev, dtype=torch.long)
    step_progress = plan.cfg.nfe >= STEP_PROGRESS_NFE
    nbatches = -(-len(plan.cfg.seeds) // plan.cfg.batch)
    with phase(f"batch {start // plan.cfg.batch + 1}/{nbatches}: denoiser calls", total=plan.cfg.nfe,
               transient=True) if step_progress else contextlib.nullcontext(None) as on_call:
        bound = BoundDenoiser(model, labels) if on_call is None else _ReportingDenoiser(model, labels, on_call)
        c0 = getattr(model, "classifier_calls", None)  # guidance (models/guidance.py) counts its own calls
        with torch.inference_mode(not getattr(model, "needs_grad", False)):
            x = run_solver(plan.spec, bound, z * plan.sigmas[0], plan.sigmas,
                           noise=noise, opts=plan.opts, final_step=plan.final_step)
        if c0 is not None:
            plan.classifier_calls.append(model.classifier_calls - c0)
    return LaunchedBatch(plan, list(bseeds), start, z, x, start_host_copy(x, labels), bound.calls)


STEP_PROGRESS_NFE = 100  # from this NFE on, each batch also reports its denoiser calls


class _ReportingDenoiser(BoundDenoiser):
    """A BoundDenoiser that reports each call (per-step progress of long runs)."""

    def __init__(self, model, labels, on_call):
        super().__init__(model, labels)
        self.on_call = on_call

    def __call__(self, x, sigma):
        out = super().__call__(x, sigma)
        self.on_call(1)
        return out


def generate(plan: Plan, seeds: list[int], on_progress: Callable[[int], None] | None = None):
    """Yield one :class:`SampleBatch` per batch of ``seeds`` and the denoiser calls it took, in order;
    on CUDA the next batch is launched before one is yielded (transfer.py)."""
    depth = pipeline_depth(plan.device)
    in_flight: list[LaunchedBatch] = []
    starts = list(range(0, len(seeds), plan.cfg.batch))
    for n, start in enumerate(starts):
        in_flight.append(launch_batch(plan, seeds[start: start + plan.cfg.batch], start))
        for batch, calls in _finished(in_flight, depth, last=n == len(starts) - 1):
            if on_progress:
                on_progress(len(batch.seeds))
            yield batch, calls


def _finished(in_flight: list[LaunchedBatch], depth: int, last: bool):
    """Finish, oldest first, the launched batches beyond ``depth`` in flight (all of them when
    ``last``), yielding each one's :class:`SampleBatch` and denoiser calls."""
    while in_flight and (len(in_flight) > depth or last):
        yield in_flight.pop(0).finish()


def preset_record(cfg: RunConfig) -> dict[str, Any] | None:
    """Which preset the run came from, what it expands to, and which fields the run set otherwise."""
    if cfg.preset is None:
        return None
    from sampler_bench.presets import get_preset

    p = get_preset(cfg.preset)
    exp = p.expansion()
    used = {"solver": cfg.solver, "schedule": cfg.schedule, "final_step": cfg.final_step, "noise": cfg.noise}
    differs = [k for k, v in used.items() if v != exp[k]]
    differs += [f"opts.{k}" for k in sorted(set(exp["opts"]) | set(cfg.opts))
                if k not in exp["opts"] or k not in cfg.opts or canonical_opts(cfg.solver, {k: cfg.opts[k]}) != canonical_opts(cfg.solver, {k: exp["opts"][k]})]
    return {"name": p.name, "source": p.source, "expands_to": exp, "overridden": differs}


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
    if not out.exists():
        return False
    if out.is_dir() and not any(out.iterdir()):
        return False
    if out.is_dir() and (out / "run.json").is_file():
        prev = read_run_record(out)
        if prev is None:
            raise BenchError(f"output directory '{out}' holds an unreadable run.json; choose another --out, or move that directory away.")
        diff = config_diff(prev, cfg.identity(), str(resolve_device(cfg.device)))
        if not diff:
            return True
        raise BenchError(f"output directory '{out}' holds a run with a different config (differs in: {', '.join(diff)}); choose another --out or pass --overwrite.")
    raise BenchError(f"output directory '{out}' exists and is not a sampler_bench run; choose another --out.")


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
    check_config(cfg)  # bad input is reported as such, whatever ``out`` holds
    if overwrite:
        check_replaceable(out)
    elif existing_run_matches(out, cfg):
        rec = read_run_record(out) or {}
        rec["skipped"] = True
        return rec
    check_writable(out)
    dist = distributed.current(cfg.device)
    plan = plan_run(cfg, model, dist)
    if plan.device.type == "cpu":
        keep_freed_memory()  # memory.py: network activations reuse freed heap instead of page-faulting
    with thread_count(resolve_threads(cfg.threads, plan.device)) as threads, \
            network_options(plan.model, plan.device, compile=cfg.compile, precision=cfg.precision) as accel:
        accel = {"threads": threads, "noise": cfg.noise, "precision": cfg.precision, **accel}
        return _run_planned(cfg, plan, out, dist, save_images, on_start, on_progress, accel)


def _run_planned(cfg: RunConfig, plan: Plan, out: Path, dist, save_images: bool, on_start, on_progress,
                 accel: dict[str, Any]) -> dict[str, Any]:
    consumers = build_consumers(cfg, plan.model, plan.spec, plan.opts, plan.sigmas)
    if dist.enabled:
        unsupported = [type(c).__name__ for c in consumers if not hasattr(c, "merge")]
        if unsupported:
            raise BenchError(f"metric consumer(s) {', '.join(unsupported)} cannot be combined across processes yet; run without torchrun or without those metrics.")
    if on_start:
        on_start(len(cfg.seeds))
    t0 = time.perf_counter()
    try:
        with shared_atomic_dir(out, dist) as tmp:
            record, _metrics_time = _sample_into(plan, consumers, tmp, dist, save_images, on_progress, t0, accel)
    except OSError as exc:
        raise BenchError(f"cannot write the run directory '{out}': {exc.strerror or exc}; choose another --out.") from None
    return record


@contextlib.contextmanager
def shared_atomic_dir(out: Path, dist):
    """:func:`fileio.atomic_dir` made by rank 0 and shared with every rank (one process: the same)."""
    if not dist.enabled:
        with atomic_dir(out, overwrite=True) as tmp:
            yield tmp
        return
    if dist.is_main:
        try:
            cm = atomic_dir(out, overwrite=True)
            tmp = cm.__enter__()
        except BaseException as exc:
            dist.broadcast_object(("error", f"{type(exc).__name__}: {exc}"))
            raise
        dist.broadcast_object(("ok", str(tmp)))
        try:
            yield tmp
        except BaseException:
            if not cm.__exit__(*sys.exc_info()):
                raise
        else:
            cm.__exit__(None, None, None)
    else:
        kind, value = dist.broadcast_object(None)
        if kind != "ok":
            raise distributed.RankFailed(value)
        yield Path(value)


def _sample_into(plan: Plan, consumers, tmp: Path, dist, save_images: bool,
                 on_progress: Callable[[int], None] | None, t0: float, accel: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Sample every batch of this rank into the run directory ``tmp`` being built; rank 0 writes the
    files that describe the whole run and returns its record (broadcast to every rank)."""
    cfg = plan.cfg
    n, (c, h, w) = len(cfg.seeds), plan.model.image_shape
    err: BaseException | None = None
    images = None
    try:
        if dist.is_main:
            images = np.lib.format.open_memmap(tmp / "images.npy.tmp", mode="w+", dtype=np.uint8, shape=(n, h, w, c))
            if save_images:
                (tmp / "images").mkdir()
    except Exception as exc:  # noqa: BLE001 -- reported through the round protocol
        err = exc
    dist.agree(err)
    if images is None:
        images = np.lib.format.open_memmap(tmp / "images.npy.tmp", mode="r+")
    labels = np.full((n,), -1, np.int64)
    calls: list[int] = []
    starts = list(range(0, n, cfg.batch))
    rounds = -(-len(starts) // dist.world)
    phases = contextlib.ExitStack()
    adv_samples = phases.enter_context(phase(f"sampling {plan.spec.name} NFE={cfg.nfe}", total=n))
    adv_metrics = (phases.enter_context(phase(f"metrics ({', '.join(c.name for c in consumers)})", total=n))
                   if consumers else None)
    with phases:
        metrics_time = _rounds(plan, consumers, tmp, dist, save_images, on_progress, images, labels, calls, starts,
                               rounds, adv_samples, adv_metrics)
    wall = time.perf_counter() - t0 - metrics_time
    images.flush()
    del images
    if dist.enabled:
        gathered = dist.all_gather_object((calls, labels, [cons.state() for cons in consumers], plan.classifier_calls))
        calls = [k for g in gathered for k in g[0]]
        plan.classifier_calls = [k for g in gathered for k in g[3]]
        labels = np.max(np.stack([g[1] for g in gathered]), axis=0)
        for j, cons in enumerate(consumers):
            cons.merge([g[2][j] for g in gathered])
    result: tuple[str, Any] = ("ok", None)
    if dist.is_main:
        try:
            record, m_time = _finish_run(plan, consumers, tmp, labels, calls, wall, dist.world, accel)
            metrics_time += m_time
            result = ("ok", record)
        except Exception as exc:  # noqa: BLE001 -- told to the other ranks, then raised here
            result = ("error", f"{type(exc).__name__}: {exc}")
            if dist.enabled:
                dist.broadcast_object(result)
            raise
    result = dist.broadcast_object(result)
    if result[0] != "ok":
        raise distributed.RankFailed(result[1])
    return result[1], metrics_time


def _rounds(plan, consumers, tmp, dist, save_images, on_progress, images, labels, calls, starts, rounds,
            adv_samples, adv_metrics) -> float:
    """The sampling rounds of :func:`_sample_into`: round r launches batch ``r*world + rank`` on each
    rank and handles the batches launched ``depth`` rounds before (transfer.py: on CUDA depth 1, so a
    batch's files and metric inputs are written while the next one computes; on CPU depth 0). The
    last ``depth`` rounds only drain. Returns the time spent in metric consumers."""
    cfg = plan.cfg
    depth = pipeline_depth(plan.device)
    metrics_time = 0.0
    in_flight: list[LaunchedBatch] = []
    for r in range(rounds + depth):
        k = r * dist.world + dist.rank
        done = 0
        err = None
        try:
            if r < rounds and k < len(starts):
                i = starts[k]
                in_flight.append(launch_batch(plan, cfg.seeds[i: i + cfg.batch], i))
            for batch, ncalls in _finished(in_flight, depth, last=r >= rounds):
                metrics_time += _handle(batch, consumers, tmp, save_images, images, labels)
                calls.append(ncalls)
                done += len(batch.seeds)
        except Exception as exc:  # noqa: BLE001 -- every rank stops at this round's end
            in_flight.clear()
            err = exc
        dist.agree(err)
        k_all = sum(dist.all_gather_object(done)) if dist.enabled else done
        adv_samples(k_all)
        if adv_metrics:
            adv_metrics(k_all)
        if on_progress:
            on_progress(k_all)
    return metrics_time


def _handle(batch: SampleBatch, consumers, tmp: Path, save_images: bool, images, labels) -> float:
    """Write one finished batch into the run being built and feed it to the metric consumers;
    return the time the consumers took."""
    i, b = batch.start, len(batch.seeds)
    images[i: i + b] = batch.images.numpy()
    if batch.labels is not None:
        labels[i: i + b] = batch.labels.numpy()
    if save_images:
        for j, seed in enumerate(batch.seeds):
            write_png(tmp / "images" / f"{seed:06d}.png", images[i + j])
    t_m = time.perf_counter()
    for cons in consumers:
        cons.update(batch)
    return time.perf_counter() - t_m


def _finish_run(plan: Plan, consumers, tmp: Path, labels: np.ndarray, calls: list[int], wall: float,
                world: int, accel: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Write samples.npz, grid.png, metrics.json and run.json of a complete run into ``tmp``."""
    cfg = plan.cfg
    n = len(cfg.seeds)
    images = np.lib.format.open_memmap(tmp / "images.npy.tmp", mode="r")
    arrays = {"images": images, "seeds": np.asarray(cfg.seeds, np.int64)}
    if (labels >= 0).any():
        arrays["labels"] = labels
    with phase("writing samples.npz and grid.png"):
        write_npz(tmp / "samples.npz", **arrays)
        write_png(tmp / "grid.png", make_grid(np.asarray(images[:64])))
    del images, arrays
    (tmp / "images.npy.tmp").unlink()
    metrics: dict[str, Any] = {}
    t_m = time.perf_counter()
    for cons in consumers:
        with phase(f"metrics ({cons.name}): final statistics"):
            metrics.update(cons.result())
    metrics_time = time.perf_counter() - t_m
    record = {
        "config": cfg.identity(),
        "resolved": {
            "solver": plan.spec.name, "family": plan.spec.family, "options": plan.opts,
            "steps": plan.steps, "nfe_rule": plan.spec.rule(plan.final_step), "schedule": plan.schedule,
            "final_step": plan.final_step, "noise": cfg.noise, "preset": preset_record(cfg),
            "sigmas": [float(s) for s in plan.sigmas.cpu()],
            "stochastic": plan.spec.is_stochastic(plan.opts),
            "class_labels": plan.label_mode, "model": plan.model.describe(),
        },
        "nfe_requested": cfg.nfe,
        "nfe_counted": calls[0] if len(set(calls)) == 1 else calls,
        **({"classifier_calls": plan.classifier_calls[0] if len(set(plan.classifier_calls)) == 1
            else plan.classifier_calls} if plan.classifier_calls else {}),
        "num_images": n,
        "device": str(plan.device) + (f" ({torch.cuda.get_device_name(plan.device)})" if plan.device.type == "cuda" else ""),
        "world_size": world,
        "threads": accel["threads"],
        "accel": accel,
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
    return record, metrics_time
