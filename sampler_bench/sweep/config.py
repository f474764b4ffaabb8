"""Sweep configs: YAML validation (no model is loaded) and expansion into cells; shards."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sampler_bench.errors import BenchError, did_you_mean
from sampler_bench.limits import MAX_NFE, check_num_samples, check_seed
from sampler_bench.sampling import RunConfig, parse_seeds
from sampler_bench.solvers import FINAL_STEPS

TOP_KEYS = {
    "name": "sweep name (default: the file name)",
    "description": "free text",
    "out": "output directory (default: results/<name>)",
    "models": "list of model names, or mappings {model, label, class_label, fid, batch, classifier, guidance_scale}",
    "solvers": "list of solver names, or mappings {name, preset, label, opts, nfe, schedule, final_step, models}",
    "nfe": "list of NFE values",
    "seeds": "seed ranges such as 0-63 or a list of ints",
    "num": "number of samples (seeds 0..num-1), instead of seeds",
    "batch": "batch size",
    "schedule": "step schedule NAME[:k=v,...], a list of them, or null for each solver's default",
    "class_label": "null, 'random' or a class index",
    "classifier": "classifier guidance for every model: a classifier name, a .pt path or gmm (null: none)",
    "guidance_scale": "classifier guidance scale >= 0, or a list of scales (a sweep axis)",
    "device": "auto, cpu or cuda",
    "threads": "CPU threads per run (default: OMP_NUM_THREADS, else 1 on CPU)",
    "precision": "network autocast for every cell: fp32 (default, off), fp16 or bf16",
    "compile": "true to torch.compile the network in every cell",
    "metrics": "mapping {fid, names, inception_weights, feature_weights, subsets, protocol, bootstrap}",
    "on_invalid_nfe": "skip or error",
    "save_images": "true to also write one PNG per sample",
    "gates": "list of quality gates {metric, max|min|max_vs_baseline|min_vs_baseline|max_vs_floor, noise, where} (bench check)",
    "allow_large_nfe": "true to allow NFE above 10,000",
}
MODEL_KEYS = ("model", "label", "class_label", "fid", "batch", "classifier", "guidance_scale")
SOLVER_KEYS = ("name", "label", "opts", "nfe", "schedule", "preset", "final_step", "models", "noise")
METRIC_KEYS = ("fid", "names", "inception_weights", "feature_weights", "subsets", "protocol", "bootstrap")
INVALID_NFE = ("skip", "error")


@dataclass
class Cell:
    """One run of the sweep: a RunConfig plus where and how it is shown."""

    id: str
    index: int
    model: str  # model label
    series: str  # solver label shown in tables and plots (solver + explicit options + schedule)
    solver: str
    options: dict[str, Any]  # options the config sets explicitly (the rest are the solver's defaults)
    nfe: int
    cfg: RunConfig
    skip_reason: str | None = None  # set when the solver cannot hit this NFE exactly


@dataclass
class Sweep:
    name: str
    source: str  # the config file
    out: Path
    cells: list[Cell]
    save_images: bool = False
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    def shard(self, shard: tuple[int, int] | None) -> list[Cell]:
        """Cell k belongs to shard i/n (1-based) when k % n == i - 1: disjoint, and together all cells."""
        if shard is None:
            return list(self.cells)
        i, n = shard
        return [c for c in self.cells if c.index % n == i - 1]


# ---------------------------------------------------------------------------------------------
# Loading and validation (no model is loaded)
# ---------------------------------------------------------------------------------------------


class _Ctx:
    def __init__(self, source: str):
        self.source = source

    def err(self, key: str, problem: str) -> BenchError:
        return BenchError(f"{self.source}: key '{key}': {problem}")


def _slug(text: str) -> str:
    text = str(text).replace("/", "-").replace(":", "-").replace(",", "-").replace("=", "")
    text = re.sub(r"[^A-Za-z0-9._+-]+", "-", text)
    return re.sub(r"-{2,}", "-", text).strip("-.") or "x"


def _fmt_value(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def compact_seeds(seeds: list[int]) -> str:
    """[0,1,2,3,7] -> '0-3,7' (the inverse of :func:`parse_seeds`)."""
    parts, start = [], None
    for i, s in enumerate(seeds):
        if start is None:
            start = s
        if i + 1 == len(seeds) or seeds[i + 1] != s + 1:
            parts.append(f"{start}" if start == s else f"{start}-{s}")
            start = None
    return ",".join(parts)


def _int(ctx: _Ctx, key: str, v: Any, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ctx.err(key, f"{v!r} is not valid; use an integer >= {minimum}.")
    return v


def _nfe_list(ctx: _Ctx, key: str, v: Any) -> list[int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list) or not v:
        raise ctx.err(key, f"{v!r} is not valid; use a non-empty list of positive integers such as [5, 10, 20].")
    out = [_int(ctx, f"{key}[{i}]", x) for i, x in enumerate(v)]
    if len(set(out)) != len(out):
        raise ctx.err(key, f"{v!r} repeats a value; list each NFE once.")
    return out


def _schedules(ctx: _Ctx, key: str, v: Any) -> list[str | None]:
    from sampler_bench.schedules import SCHEDULES, parse_schedule

    vals = v if isinstance(v, list) else [v]
    if not vals:
        raise ctx.err(key, "is an empty list; give a schedule name or null.")
    out: list[str | None] = []
    for i, s in enumerate(vals):
        k = f"{key}[{i}]" if isinstance(v, list) else key
        if s is None:
            out.append(None)
            continue
        if not isinstance(s, str):
            raise ctx.err(k, f"{s!r} is not valid; use one of {', '.join(SCHEDULES)} (NAME or NAME:key=value) or null.")
        try:
            parse_schedule(s)
        except BenchError as exc:
            raise ctx.err(k, str(exc)) from None
        out.append(s)
    return out


def _class_label(ctx: _Ctx, key: str, v: Any) -> str | None:
    if v is None:
        return None
    if v == "random":
        return "random"
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return str(v)
    if isinstance(v, str) and v.isdigit():
        return v
    raise ctx.err(key, f"{v!r} is not valid; use null, 'random' or a class index.")


def _check_model(ctx: _Ctx, key: str, spec: Any) -> str:
    from sampler_bench.models.registry import MODELS, parse_model_spec

    if not isinstance(spec, str) or not spec.strip():
        raise ctx.err(key, f"{spec!r} is not a model; use a name from `bench models` ({', '.join(MODELS)}), NAME:key=value,... or a checkpoint path.")
    head = spec.split(":", 1)[0]
    if "=" in head:
        raise ctx.err(key, f"'{spec}' is not a model; it looks like a parameter split off a model spec by a YAML "
                           f"flow list [a,b]: quote the spec, e.g. ['gmm:classes=2,shape=3x8x8'], or use a block list.")
    try:
        parse_model_spec(spec)
    except BenchError as exc:
        raise ctx.err(key, str(exc)) from None
    path = Path(spec)
    if head not in MODELS and not path.suffix and not path.exists():
        hint = did_you_mean(head, MODELS)
        raise ctx.err(key, f"unknown model '{spec}'; {hint}run `bench models` to list them, or give a checkpoint path.")
    return spec


def model_availability(spec: str) -> str | None:
    """None for a built-in model or an existing checkpoint file; else a note on its state.

    Nothing is loaded: this is what a dry-run shows. A real run loads the model and a failure fails
    the cells of that model with the loader's message.
    """
    from sampler_bench.models.registry import LOADERS_BY_SUFFIX, MODELS

    name = spec.partition(":")[0]
    if name in MODELS:
        try:
            state = MODELS[name].status()
        except Exception as exc:  # a status probe must never break a dry-run
            state = f"unknown ({exc})"
        return None if state == "built in" else f"model '{spec}': registered, state: {state}"
    path = Path(spec)
    if path.is_file():
        if path.suffix.lower() in LOADERS_BY_SUFFIX:
            return None
        return f"'{spec}' has no loader for '{path.suffix}' in this install (loaders: {', '.join(LOADERS_BY_SUFFIX) or 'none'})"
    return f"model '{spec}' is not registered in this install and is not a checkpoint file; a real run fails its cells until it is (see `bench models`)"


def _solver_entry(ctx: _Ctx, key: str, entry: Any) -> dict[str, Any]:
    from sampler_bench.solvers import REGISTRY, get_solver

    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict):
        raise ctx.err(key, f"{entry!r} is not valid; use a solver name or a mapping with keys {', '.join(SOLVER_KEYS)}.")
    for k in entry:
        if k not in SOLVER_KEYS:
            raise ctx.err(f"{key}.{k}", f"unknown key; allowed keys: {', '.join(SOLVER_KEYS)}.")
    preset = _preset(ctx, key, entry)
    name = entry.get("name", preset.solver if preset is not None else None)
    if not isinstance(name, str):
        raise ctx.err(f"{key}.name", f"missing or not a string; use one of {', '.join(REGISTRY)} (or a preset: key preset).")
    try:
        spec = get_solver(name)
    except BenchError:
        raise ctx.err(f"{key}.name", f"unknown solver '{name}'; allowed: {', '.join(REGISTRY)}.") from None
    opts = entry.get("opts") or {}
    if not isinstance(opts, dict):
        raise ctx.err(f"{key}.opts", f"{opts!r} is not valid; use a mapping option: value (a list of values makes a grid axis).")
    if preset is not None:
        opts = {**preset.opts_for(name), **opts}  # the preset's options (those this solver has), overridden by the entry's
    axes: list[list[tuple[str, Any]]] = []
    for k, v in opts.items():
        if k not in spec.options:
            raise ctx.err(f"{key}.opts.{k}", f"solver '{name}' has no option '{k}'; allowed: {', '.join(spec.options) or 'none'}.")
        vals = v if isinstance(v, list) else [v]
        if not vals:
            raise ctx.err(f"{key}.opts.{k}", "is an empty list; give at least one value.")
        parsed = []
        for j, raw in enumerate(vals):
            try:
                parsed.append((k, spec.options[k].parse(name, k, raw)))
            except BenchError as exc:
                raise ctx.err(f"{key}.opts.{k}" + (f"[{j}]" if isinstance(v, list) else ""), str(exc)) from None
        axes.append(parsed)
    label = entry.get("label")
    if label is not None and not isinstance(label, (str, int, float)):
        raise ctx.err(f"{key}.label", f"{label!r} is not valid; use a short text.")
    final_step = entry.get("final_step", preset.final_step if preset is not None else "zero")
    if final_step not in FINAL_STEPS:
        raise ctx.err(f"{key}.final_step", f"{final_step!r} is not valid; allowed values: {', '.join(FINAL_STEPS)}.")
    from sampler_bench.noise import NOISE_STREAMS

    noise = entry.get("noise", preset.noise if preset is not None else "edm-generate")
    if noise not in NOISE_STREAMS:
        raise ctx.err(f"{key}.noise", f"{noise!r} is not valid; allowed values: {', '.join(NOISE_STREAMS)}.")
    only = entry.get("models")
    if only is not None and (not isinstance(only, list) or not only or not all(isinstance(m, str) for m in only)):
        raise ctx.err(f"{key}.models", f"{only!r} is not valid; use a list of model labels this entry runs on.")
    schedules = _schedules(ctx, f"{key}.schedule", entry["schedule"]) if "schedule" in entry else (
        [preset.schedule] if preset is not None else None)
    return {
        "name": name,
        "preset": None if preset is None else preset.name,
        # the series name: the preset's, with the solver when the entry picks another one
        "preset_base": name if preset is None else (preset.name if name == preset.solver else f"{preset.name} {name}"),
        "preset_opts": set() if preset is None else set(preset.opts_for(name)) - set(entry.get("opts") or {}),
        "final_step": final_step,
        "explicit_final_step": "final_step" in entry,
        "schedule_from_preset": preset is not None and "schedule" not in entry,
        "noise": noise,
        "models": only,
        "label": None if label is None else str(label),
        "grid": [dict(c) for c in itertools.product(*axes)] if axes else [{}],
        "multi": any(len(a) > 1 for a in axes),
        "nfe": _nfe_list(ctx, f"{key}.nfe", entry["nfe"]) if "nfe" in entry else None,
        "schedules": schedules,
    }


def _preset(ctx: _Ctx, key: str, entry: dict[str, Any]):
    from sampler_bench.presets import PRESETS, get_preset

    if "preset" not in entry:
        return None
    try:
        return get_preset(str(entry["preset"]))
    except BenchError:
        raise ctx.err(f"{key}.preset", f"unknown preset {entry['preset']!r}; allowed: {', '.join(PRESETS)} (`bench presets`).") from None


def _model_entry(ctx: _Ctx, key: str, entry: Any) -> dict[str, Any]:
    if isinstance(entry, str):
        entry = {"model": entry}
    if not isinstance(entry, dict):
        raise ctx.err(key, f"{entry!r} is not valid; use a model name or a mapping with keys {', '.join(MODEL_KEYS)}.")
    for k in entry:
        if k not in MODEL_KEYS:
            raise ctx.err(f"{key}.{k}", f"unknown key; allowed keys: {', '.join(MODEL_KEYS)}.")
    spec = _check_model(ctx, f"{key}.model", entry.get("model"))
    out = {"model": spec, "label": str(entry.get("label") or spec)}
    if "class_label" in entry:
        out["class_label"] = _class_label(ctx, f"{key}.class_label", entry["class_label"])
    if "fid" in entry:
        out["fid"] = _opt_str(ctx, f"{key}.fid", entry["fid"], "a reference statistics name (e.g. cifar10-32x32) or a .npz path")
    if "batch" in entry:
        out["batch"] = _int(ctx, f"{key}.batch", entry["batch"])
    if "classifier" in entry:
        out["classifier"] = _opt_str(ctx, f"{key}.classifier", entry["classifier"], "a classifier name, a .pt path or gmm")
    if "guidance_scale" in entry:
        out["guidance_scale"] = _scales(ctx, f"{key}.guidance_scale", entry["guidance_scale"])
    return out


def _scales(ctx: _Ctx, key: str, v: Any) -> list[float] | None:
    """A guidance scale or a list of them (each one a variant of the model: a sweep axis)."""
    from sampler_bench.models.guidance import check_scale

    if v is None:
        return None
    vals = v if isinstance(v, list) else [v]
    if not vals:
        raise ctx.err(key, "is an empty list; give a scale >= 0 or a list of them.")
    out = []
    for i, x in enumerate(vals):
        k = f"{key}[{i}]" if isinstance(v, list) else key
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise ctx.err(k, f"{x!r} is not valid; use a number >= 0.")
        try:
            out.append(check_scale(x))
        except BenchError as exc:
            raise ctx.err(k, str(exc)) from None
    if len(set(out)) != len(out):
        raise ctx.err(key, f"{v!r} repeats a scale; list each once.")
    return out


def _guided_variants(ctx: _Ctx, key: str, m: dict[str, Any], classifier: str | None, scales: list[float] | None) -> list[dict[str, Any]]:
    """One model entry per guidance scale; the label gets ' g=SCALE' when there are several."""
    classifier = m.get("classifier", classifier)
    scales = m["guidance_scale"] if "guidance_scale" in m else scales
    if classifier is None:
        if scales is not None and "guidance_scale" in m:
            raise ctx.err(f"{key}.guidance_scale", "needs a classifier; add classifier: NAME|PATH|gmm.")
        return [dict(m, classifier=None, guidance_scale=None)]
    if not scales:
        return [dict(m, classifier=classifier, guidance_scale=None)]
    return [dict(m, classifier=classifier, guidance_scale=s, label=m["label"] + (f" g={_fmt_value(s)}" if len(scales) > 1 else ""))
            for s in scales]


def classifier_availability(spec: str) -> str | None:
    """None for gmm or an existing file; else a note on the registered classifier's download state."""
    from sampler_bench.models.registry import CLASSIFIERS

    name = spec.partition(":")[0]
    if name in CLASSIFIERS:
        from sampler_bench.models.checkpoints import cache_state

        state = cache_state(CLASSIFIERS[name])
        return None if state.startswith("cached") else f"classifier '{spec}': registered, state: {state}"
    if name in ("gmm", "adm-classifier") or Path(spec).is_file():
        return None
    return f"classifier '{spec}' is not registered and is not a file; a real run fails its cells until it is (see `bench models`)"


def _opt_str(ctx: _Ctx, key: str, v: Any, what: str) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v.strip():
        raise ctx.err(key, f"{v!r} is not valid; use {what} or null.")
    return v


def _metric_options(ctx, metrics: dict) -> tuple[dict, dict]:
    """``metrics: {subsets, protocol, bootstrap, feature_weights}`` -> (RunConfig.metric_opts, RunConfig.feature_weights)."""
    from sampler_bench.errors import BenchError as _BE

    raw = {k: metrics[k] for k in ("subsets", "protocol", "bootstrap") if k in metrics}
    for k in ("subsets", "bootstrap"):
        if k in raw and (isinstance(raw[k], bool) or not isinstance(raw[k], int)):
            raise ctx.err(f"metrics.{k}", f"{raw[k]!r} is not valid; use an integer.")
    try:
        from sampler_bench.metrics import parse_feature_weights
        from sampler_bench.metrics.uncertainty import SpreadOptions

        opts = SpreadOptions.from_dict(raw).as_dict()
        fw = metrics.get("feature_weights") or {}
        if not isinstance(fw, dict):
            raise _BE(f"{fw!r} is not valid; use a mapping {{SPACE: PATH}}.")
        weights = parse_feature_weights(fw)
    except _BE as exc:
        raise ctx.err("metrics", str(exc).rstrip(".") + ".") from None
    return opts, weights


def _known_metrics() -> list[str] | None:
    """The metric names the metrics layer accepts (``bench sample --metrics``), when it publishes them."""
    try:
        from sampler_bench.metrics import METRIC_NAMES  # type: ignore[attr-defined]
    except ImportError:
        return None
    return list(METRIC_NAMES)


def load_sweep(path: str | Path, out: str | Path | None = None) -> Sweep:
    """Read and validate a sweep YAML and expand it into cells. Loads no model."""
    import yaml

    from sampler_bench.solvers import get_solver, steps_for_nfe

    path = Path(path)
    src = str(path)
    if path.is_dir():
        hint = f" (a sweep's results: `bench report {src}` shows them)" if (path / "sweep.json").is_file() else ""
        raise BenchError(f"sweep config '{src}' is a directory, not a YAML file{hint}; give the path of a YAML file such as configs/quickstart.yaml.")
    if not path.is_file():
        raise BenchError(f"sweep config '{src}' does not exist; give the path of a YAML file such as configs/quickstart.yaml.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise BenchError(f"{src}: not valid YAML{where}: {getattr(exc, 'problem', exc)}; fix the syntax.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"cannot read sweep config '{src}': {exc}; check the file.") from None
    ctx = _Ctx(src)
    if not isinstance(raw, dict):
        raise BenchError(f"{src}: the top level must be a mapping with keys {', '.join(TOP_KEYS)}.")
    for k in raw:
        if k not in TOP_KEYS:
            raise ctx.err(str(k), f"unknown key; allowed keys: {', '.join(TOP_KEYS)}.")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise ctx.err("name", f"{name!r} is not valid; use a short text.")
    for req in ("models", "solvers"):
        if not isinstance(raw.get(req), list) or not raw[req]:
            raise ctx.err(req, f"missing or empty; give a list ({TOP_KEYS[req]}).")
    top_classifier = _opt_str(ctx, "classifier", raw.get("classifier"), "a classifier name, a .pt path or gmm")
    top_scales = _scales(ctx, "guidance_scale", raw.get("guidance_scale"))
    if top_scales is not None and top_classifier is None and not any("classifier" in m for m in raw["models"] if isinstance(m, dict)):
        raise ctx.err("guidance_scale", "needs a classifier; add classifier: NAME|PATH|gmm.")
    models = [v for i, m in enumerate(raw["models"])
              for v in _guided_variants(ctx, f"models[{i}]", _model_entry(ctx, f"models[{i}]", m), top_classifier, top_scales)]
    solvers = [_solver_entry(ctx, f"solvers[{i}]", s) for i, s in enumerate(raw["solvers"])]
    labels = [m["label"] for m in models]
    for i, s in enumerate(solvers):
        for j, lab in enumerate(s["models"] or []):
            if lab not in labels:
                raise ctx.err(f"solvers[{i}].models[{j}]", f"no model has the label '{lab}'; use one of {', '.join(labels)}.")
    nfes = _nfe_list(ctx, "nfe", raw["nfe"]) if "nfe" in raw else None
    if nfes is None and any(s["nfe"] is None for s in solvers):
        raise ctx.err("nfe", "missing; give a list of NFE values (or an nfe list in every solver entry).")
    if "seeds" in raw and "num" in raw:
        raise ctx.err("seeds", "given together with 'num'; keep one of them.")
    if "seeds" in raw:
        sv = raw["seeds"]
        if isinstance(sv, list) and sv and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sv):
            seeds = list(sv)
            try:
                check_num_samples(len(seeds))
                check_seed(max(seeds))
            except BenchError as exc:
                raise ctx.err("seeds", str(exc)) from None
            if len(set(seeds)) != len(seeds):
                raise ctx.err("seeds", "repeats a seed; each sample needs its own seed.")
        elif isinstance(sv, (str, int)) and not isinstance(sv, bool):
            try:
                seeds = parse_seeds(str(sv))
            except BenchError as exc:
                raise ctx.err("seeds", str(exc)) from None
        else:
            raise ctx.err("seeds", f"{sv!r} is not valid; use ranges such as '0-63' or a list of non-negative ints.")
    else:
        num = _int(ctx, "num", raw.get("num", 64))
        try:
            check_num_samples(num, "num")
        except BenchError as exc:
            raise ctx.err("num", str(exc)) from None
        seeds = list(range(num))
    batch = _int(ctx, "batch", raw.get("batch", 64))
    schedules = _schedules(ctx, "schedule", raw.get("schedule"))
    class_label = _class_label(ctx, "class_label", raw.get("class_label"))
    threads = None if raw.get("threads") is None else _int(ctx, "threads", raw.get("threads"))
    from sampler_bench.accel import PRECISIONS

    precision = raw.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise ctx.err("precision", f"{precision!r} is not valid; use one of {', '.join(PRECISIONS)}.")
    compile_net = raw.get("compile", False)
    if not isinstance(compile_net, bool):
        raise ctx.err("compile", f"{compile_net!r} is not valid; use true or false.")
    device = raw.get("device", "auto")
    if not isinstance(device, str) or not (device in ("auto", "cpu") or device.startswith("cuda")):
        raise ctx.err("device", f"{device!r} is not valid; use auto, cpu or cuda.")
    metrics = raw.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise ctx.err("metrics", f"{metrics!r} is not valid; use a mapping with keys {', '.join(METRIC_KEYS)}.")
    for k in metrics:
        if k not in METRIC_KEYS:
            raise ctx.err(f"metrics.{k}", f"unknown key; allowed keys: {', '.join(METRIC_KEYS)}.")
    fid_raw = metrics.get("fid")
    if isinstance(fid_raw, list) and all(isinstance(f, str) and f.strip() for f in fid_raw):
        fid_raw = ",".join(f.strip() for f in fid_raw)  # one reference per feature space
    fid = _opt_str(ctx, "metrics.fid", fid_raw, "a reference statistics name (e.g. cifar10-32x32), a .npz path, or a list of them (one per feature space)")
    metric_opts, feature_weights = _metric_options(ctx, metrics)
    extra = metrics.get("names") or []
    if isinstance(extra, str):
        extra = [e.strip() for e in extra.split(",") if e.strip()]
    if not isinstance(extra, list) or not all(isinstance(e, str) and e for e in extra):
        raise ctx.err("metrics.names", f"{extra!r} is not valid; use a list of metric names (e.g. [kid, isc]).")
    known = _known_metrics()
    for i, e in enumerate(extra):
        if known is not None and e.lower() not in known:
            raise ctx.err(f"metrics.names[{i}]", f"unknown metric '{e}'; allowed: {', '.join(known)}.")
    weights = _opt_str(ctx, "metrics.inception_weights", metrics.get("inception_weights"), "a path to the Inception weights file")
    from sampler_bench.sweep.gates import validate_gates

    validate_gates(raw.get("gates"), ctx.err)  # checked up front; `bench check` reads them from sweep.json
    policy = raw.get("on_invalid_nfe", "skip")
    if policy not in INVALID_NFE:
        raise ctx.err("on_invalid_nfe", f"{policy!r} is not valid; allowed values: {', '.join(INVALID_NFE)}.")
    save_images = raw.get("save_images", False)
    if not isinstance(save_images, bool):
        raise ctx.err("save_images", f"{save_images!r} is not valid; use true or false.")
    allow_large = raw.get("allow_large_nfe", False)
    if not isinstance(allow_large, bool):
        raise ctx.err("allow_large_nfe", f"{allow_large!r} is not valid; use true or false.")
    for key, vals in [("nfe", nfes or [])] + [(f"solvers[{i}].nfe", s["nfe"] or []) for i, s in enumerate(solvers)]:
        big = [v for v in vals if v > MAX_NFE]
        if big and not allow_large:
            raise ctx.err(key, f"NFE {big[0]} is above the maximum of {MAX_NFE:,}; use a smaller NFE, or set allow_large_nfe: true if you really mean it.")
    out_dir = Path(out) if out is not None else Path(raw.get("out") or f"results/{_slug(name)}")

    cells: list[Cell] = []
    seen: dict[str, str] = {}
    model_slugs: dict[str, str] = {}
    for mi, m in enumerate(models):
        mslug = _slug(m["label"])
        if mslug in model_slugs.values():
            raise ctx.err(f"models[{mi}]", f"model '{m['label']}' appears twice; give each entry its own label.")
        model_slugs[m["label"]] = mslug
        for si, s in enumerate(solvers):
            if s["models"] is not None and m["label"] not in s["models"]:
                continue
            spec = get_solver(s["name"])
            for opts in s["grid"]:
                for sched in (s["schedules"] if s["schedules"] is not None else schedules):
                    base = s["label"] or s["preset_base"]
                    shown_opts = {k: v for k, v in opts.items() if k not in s["preset_opts"]}  # a preset's own options are in its name
                    shown = base if (s["label"] and not s["multi"]) else (
                        base + "".join(f"-{_slug(k)}{_slug(_fmt_value(v))}" for k, v in shown_opts.items()))
                    series = s["label"] if (s["label"] and not s["multi"]) else (
                        base + (" (" + ", ".join(f"{k}={_fmt_value(v)}" for k, v in shown_opts.items()) + ")" if shown_opts else ""))
                    if s["explicit_final_step"] and not s["label"]:
                        shown += f"-final{s['final_step']}"
                        series += f" final_step={s['final_step']}"
                    if sched is not None and not s["schedule_from_preset"]:  # a preset's grid is in its name
                        shown += "@" + _slug(sched)
                        series += f" [{sched}]"
                    for nfe in (s["nfe"] if s["nfe"] is not None else nfes):
                        cid = f"{mslug}__{_slug(shown)}__nfe{nfe:03d}"
                        where = f"models[{mi}] x solvers[{si}]"
                        if cid in seen:
                            raise ctx.err(f"solvers[{si}]", f"cell '{cid}' ({where}) duplicates {seen[cid]}; remove the repeat or give it a different label.")
                        seen[cid] = where
                        # ode-error applies to deterministic solvers only: a grid-wide metric list
                        # leaves it out of stochastic cells instead of failing them
                        cell_metrics = [e for e in extra if not (e == "ode-error" and spec.is_stochastic(spec_opts(spec, opts)))]
                        if extra and not cell_metrics:
                            cell_metrics = ["none"]  # asked for ode-error only: no exact metric applies
                        cfg = RunConfig(model=m["model"], solver=s["name"], nfe=nfe, seeds=list(seeds),
                                        batch=m.get("batch", batch), schedule=sched, opts=dict(opts),
                                        class_label=m.get("class_label", class_label), device=device,
                                        fid_ref=m.get("fid", fid), metrics=cell_metrics, inception_weights=weights,
                                        final_step=s["final_step"], noise=s["noise"], preset=s["preset"],
                                        allow_large_nfe=allow_large, threads=threads, precision=precision,
                                        compile=compile_net,
                                        classifier=m["classifier"], guidance_scale=m["guidance_scale"],
                                        metric_opts=dict(metric_opts), feature_weights=dict(feature_weights))
                        reason = None
                        try:
                            steps_for_nfe(spec, nfe, spec_opts(spec, opts), s["final_step"])
                        except BenchError as exc:
                            if policy == "error":
                                raise BenchError(f"{src}: cell '{cid}': {exc} Set on_invalid_nfe: skip, or give this solver its own nfe list.") from None
                            reason = str(exc)
                        cells.append(Cell(cid, len(cells), m["label"], series, s["name"], dict(opts), nfe, cfg, reason))
    return Sweep(name=name, source=src, out=out_dir, cells=cells, save_images=save_images,
                 description=str(raw.get("description") or ""), raw=raw)


def spec_opts(spec, opts: dict[str, Any]) -> dict[str, Any]:
    from sampler_bench.solvers import parse_opts

    return parse_opts(spec, opts)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise BenchError(f"--shard '{text}' is not valid; use i/n with 1 <= i <= n, e.g. --shard 1/4.")
    return int(m.group(1)), int(m.group(2))


