"""Model names -> how to build a sigma-space denoiser.

``--model`` takes a registered name (``bench models`` lists them), a name with parameters
(``gmm:classes=5,shape=3x16x16``) or a path to a checkpoint file, dispatched on its suffix through
:data:`LOADERS_BY_SUFFIX`.

A model family registers here at import time without importing torch (``bench models`` must stay
fast): ``from sampler_bench.lazy import torch``, and import its network / loader modules inside the
build and load functions (see ``_register_edm_family``). ``tests/test_cli_fast.py`` checks it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from sampler_bench.errors import BenchError, did_you_mean
from sampler_bench.lazy import torch
from sampler_bench.params import parse_params

if TYPE_CHECKING:
    from sampler_bench.models.base import Denoiser


@dataclass(frozen=True)
class ModelEntry:
    name: str
    summary: str
    kind: str  # "analytic", "edm", ...
    build: Callable[..., Denoiser]  # build(device=..., **params) -> Denoiser
    params: dict[str, type] | Callable[[], dict[str, type]] | None = None  # user-settable parameters, name -> type (or a function giving them, called on first use)
    status: Callable[[], str] = lambda: "built in"


MODELS: dict[str, ModelEntry] = {}
# file suffix -> loader(path, device) -> Denoiser; checkpoint formats register here
LOADERS_BY_SUFFIX: dict[str, Callable[[Path, torch.device], Denoiser]] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    MODELS[entry.name] = entry
    return entry


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.lower().replace(",", "x").split("x"))


def _analytic_params():
    return {"classes": int, "per_class": int, "shape": _shape, "rank": int, "seed": int,
            "iso_var": float, "scale": float, "sigma_min": float, "sigma_max": float}


def _build_gmm(device, classes=10, **kw):
    from sampler_bench.models.analytic import GaussianMixture

    return GaussianMixture(num_classes=classes, **kw).to(device)


def _build_gaussian(device, **kw):
    from sampler_bench.models.analytic import Gaussian

    return Gaussian(**kw).to(device)


register_model(ModelEntry("gmm", "analytic class-conditional Gaussian mixture, 10 classes x 2 components, 3x32x32, exact score (default)",
                          "analytic", _build_gmm, _analytic_params()))
register_model(ModelEntry("gaussian", "analytic Gaussian (low-rank + isotropic), 3x32x32, exact score and exact ODE map",
                          "analytic", _build_gaussian, {k: v for k, v in _analytic_params().items() if k not in ("classes", "per_class")}))


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError("--device cuda was asked for but no CUDA device is available; use --device cpu or auto.")
    if device != "cpu" and not device.startswith("cuda"):
        raise BenchError(f"unknown device '{device}'; use auto, cpu or cuda.")
    return torch.device(device)


def parse_model_spec(spec: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = spec.partition(":")
    entry = MODELS.get(name)
    if entry is None:
        return name, {}
    allowed = (entry.params() if callable(entry.params) else entry.params) or {}  # a callable: built on first use

    def bad_value(k: str, v: str) -> str:
        hint = "C x H x W such as 3x32x32" if k == "shape" else {int: "an integer", float: "a number"}.get(allowed[k], "a value")
        return f"model '{name}': {k}={v!r} is not valid; give {hint}."

    params = parse_params(rest, allowed, f"model '{name}'", bad_value)
    return name, params


def load_model(spec: str, device: str | torch.device = "cpu") -> Denoiser:
    """Build the denoiser for a registered name, a name with parameters, or a checkpoint path."""
    device = torch.device(device)
    # rejoin a comma-split shape like shape=3,16,16 is not supported: use 3x16x16
    name, params = parse_model_spec(spec)
    if name in MODELS:
        return MODELS[name].build(device=device, **params)
    path = Path(spec)
    loader = LOADERS_BY_SUFFIX.get(path.suffix.lower())
    if path.suffix and loader is not None:
        if not path.is_file():
            raise BenchError(f"checkpoint file '{spec}' does not exist; check the path.")
        return loader(path, device)
    if path.suffix and path.exists():
        kinds = ", ".join(LOADERS_BY_SUFFIX) or "none yet"
        raise BenchError(f"cannot load '{spec}': unknown checkpoint format '{path.suffix}'; supported: {kinds}.")
    hint = did_you_mean(name, MODELS)
    raise BenchError(f"unknown model '{spec}'; {hint}run `bench models` to list them, or pass a checkpoint path.")


# ---------------------------------------------------------------------------------------------
# Checkpoint families. The cache (models/checkpoints.py) knows files and checksums only; the
# registry knows families and their loaders, so the dependency is one-way: registry -> cache.
# ---------------------------------------------------------------------------------------------


def _bool(text: str) -> bool:
    if str(text).lower() in ("1", "true", "yes", "on"):
        return True
    if str(text).lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _build_edm_checkpoint(ck, device: torch.device, fp32: bool = False) -> Denoiser:
    from sampler_bench.models.checkpoints import ensure_checkpoint
    from sampler_bench.models.edm import load_edm_denoiser

    path, digest = ensure_checkpoint(ck)
    expected = {"resolution": ck.resolution, "channels": ck.channels, "classes": ck.classes,
                "parameters": ck.parameters,
                # the preconditioner is certain for config F (train.py's default); inferred for the baselines
                "precond": ck.precond if ck.verified and ck.config == "F" else None}
    return load_edm_denoiser(path, device, name=ck.name, force_fp32=fp32, expected=expected,
                             extra_info={"checkpoint": ck.name, "sha256": digest})


def _load_edm_pkl(path: Path, device: torch.device) -> Denoiser:
    from sampler_bench.models.edm import load_edm_denoiser

    return load_edm_denoiser(path, device)


def _register_edm_family() -> None:
    """EDM pickles: the ``.pkl`` suffix and every ``format: edm-pkl`` entry of ``checkpoints/*.yaml``."""
    from sampler_bench.models.checkpoints import KNOWN

    LOADERS_BY_SUFFIX[".pkl"] = _load_edm_pkl
    for ck in KNOWN.values():
        register_model(edm_checkpoint_entry(ck))


def edm_checkpoint_entry(ck) -> ModelEntry:
    """The model entry of one cached EDM checkpoint (a :class:`~sampler_bench.models.checkpoints.Checkpoint`)."""
    from sampler_bench.models.checkpoints import cache_state

    return ModelEntry(name=ck.name, summary=ck.summary(), kind="edm",
                      build=lambda device, _ck=ck, **kw: _build_edm_checkpoint(_ck, device, **kw),
                      params={"fp32": _bool}, status=lambda _ck=ck: cache_state(_ck))


_register_edm_family()


# ---------------------------------------------------------------------------------------------
# guided-diffusion (ADM) family: `format: adm-pt` entries, the `.pt` suffix, `adm:path=FILE,...`,
# and classifiers for guidance (`--classifier`).
# ---------------------------------------------------------------------------------------------

CLASSIFIERS: dict[str, Any] = {}  # registered classifier name -> Checkpoint
_CLASSIFIER_CACHE: dict[tuple, Any] = {}  # the last classifier loaded from a file (one at a time)


def _adm_summary(ck) -> str:
    cls = f"{ck.classes} classes" if ck.classes else "unconditional"
    what = "classifier (EncoderUNetModel)" if ck.role == "classifier" else "UNetModel"
    extra = "".join(f"; {k} {v}" for k, v in ck.paper.items())
    ref = f"; FID ref {ck.fid_ref}" if ck.fid_ref else ""
    return f"guided-diffusion {what}, {ck.resolution}x{ck.resolution}, {cls}, {ck.flags.get('noise_schedule', 'linear')} betas{ref}{extra}"


def _build_adm_checkpoint(ck, device: torch.device, fp32: bool = False, time_mode: str = "interp") -> Denoiser:
    from sampler_bench.models.adm import load_adm_denoiser
    from sampler_bench.models.checkpoints import ensure_checkpoint

    path, digest = ensure_checkpoint(ck)
    return load_adm_denoiser(path, device, flags=ck.flags, name=ck.name, time_mode=time_mode, force_fp32=fp32,
                             extra_info={"checkpoint": ck.name, "sha256": digest})


def _build_adm_spec(device: torch.device, **params) -> Denoiser:
    from sampler_bench.models.adm import load_adm_denoiser, split_params

    flags, opts = split_params(params, "adm")
    path = opts.get("path")
    if not path:
        raise BenchError("model 'adm' needs path=FILE (adm:path=model.pt,image_size=128,...).")
    if not Path(path).is_file():
        raise BenchError(f"checkpoint file '{path}' does not exist; check the path.")
    return load_adm_denoiser(path, device, flags=flags or None, time_mode=opts.get("time_mode", "interp"),
                             force_fp32=opts.get("fp32", False))


def _load_adm_pt(path: Path, device: torch.device) -> Denoiser:
    from sampler_bench.models.adm import load_adm_denoiser

    return load_adm_denoiser(path, device)


def _adm_param_types(role: str = "model") -> dict[str, Callable]:
    from sampler_bench.models.adm import FLAG_TYPES, OPTION_TYPES
    from sampler_bench.models.nets.adm import CLASSIFIER_DEFAULTS, MODEL_DEFAULTS

    names = MODEL_DEFAULTS if role == "model" else CLASSIFIER_DEFAULTS
    extra = {"num_heads_upsample"} if role == "model" else {"classifier_num_head_channels"}
    keys = [k for k in FLAG_TYPES if k in names or k in extra] + [k for k in OPTION_TYPES if role == "model" or k != "fp32"]
    return {k: str for k in keys}  # typed by adm.split_params (one message per flag)


def _register_adm_family() -> None:
    """guided-diffusion: the ``.pt`` suffix, ``adm:path=FILE,...`` and every ``format: adm-pt`` entry."""
    from sampler_bench.models.checkpoints import cache_state, load_registry

    LOADERS_BY_SUFFIX[".pt"] = _load_adm_pt
    register_model(ModelEntry("adm", "a guided-diffusion .pt given with its flags: adm:path=FILE,image_size=128,num_channels=256,... "
                              "(attention_resolutions=32x16x8), time_mode=interp|nearest, fp32=true",
                              "adm", _build_adm_spec, _adm_param_types))  # the flag table imports torch: built on use
    for ck in load_registry(formats=("adm-pt",)).values():
        if ck.role == "classifier":
            CLASSIFIERS[ck.name] = ck
            continue
        register_model(ModelEntry(name=ck.name, summary=_adm_summary(ck), kind="adm",
                                  build=lambda device, _ck=ck, **kw: _build_adm_checkpoint(_ck, device, **kw),
                                  params={"fp32": _bool, "time_mode": str}, status=lambda _ck=ck: cache_state(_ck)))


_register_adm_family()


def load_classifier(spec: str, device: str | torch.device = "cpu", model: Denoiser | None = None):
    """A guidance classifier: ``gmm`` (the analytic model's own exact posterior), ``gmm:key=value,...``,
    a registered classifier name (``bench models``), ``adm-classifier:path=FILE,flags...`` or a ``.pt`` path.
    ADM classifiers take the time mode of an ADM model unless ``time_mode=`` is given."""
    from sampler_bench.models.guidance import ExactMixtureClassifier

    device = torch.device(device)
    name, _, rest = spec.partition(":")
    model_mode = getattr(model, "time_mode", "interp")
    if name == "gmm":
        from sampler_bench.models.analytic import GaussianMixture

        if rest:
            _, params = parse_model_spec(spec)
            return ExactMixtureClassifier(_build_gmm(device, **params))
        if not isinstance(model, GaussianMixture):
            raise BenchError("--classifier gmm is the analytic mixture's own exact class posterior; use it with --model gmm "
                             "(or give the mixture, e.g. --classifier gmm:classes=10).")
        return ExactMixtureClassifier(model)
    from sampler_bench.models import adm

    if name in CLASSIFIERS or name == "adm-classifier":
        params = parse_params(rest, _adm_param_types("classifier"), f"classifier '{name}'", lambda k, v: f"{k}={v!r} is not valid.")
        flags, opts = adm.split_params(params, name)
        mode = opts.get("time_mode", model_mode)
        if name == "adm-classifier":
            path = opts.get("path")
            if not path or not Path(path).is_file():
                raise BenchError(f"classifier 'adm-classifier' needs path=FILE of an existing .pt; got {path!r}.")
            return adm.load_adm_classifier(path, device, flags=flags or None, time_mode=mode)
        from sampler_bench.models.checkpoints import ensure_checkpoint

        ck = CLASSIFIERS[name]
        path, digest = ensure_checkpoint(ck)
        return adm.load_adm_classifier(path, device, flags={**ck.flags, **flags}, name=ck.name, time_mode=mode,
                                       extra_info={"checkpoint": ck.name, "sha256": digest})
    path = Path(spec)
    if path.suffix.lower() == ".pt":
        if not path.is_file():
            raise BenchError(f"classifier file '{spec}' does not exist; check the path.")
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, str(device), model_mode)
        if key not in _CLASSIFIER_CACHE:  # sweeps wrap every cell's model: load the file once
            _CLASSIFIER_CACHE.clear()
            _CLASSIFIER_CACHE[key] = adm.load_adm_classifier(path, device, time_mode=model_mode)
        return _CLASSIFIER_CACHE[key]
    hint = did_you_mean(name, list(CLASSIFIERS) + ["gmm"])
    raise BenchError(f"unknown classifier '{spec}'; {hint}use gmm, a classifier name from `bench models`, or a .pt path.")


def apply_guidance(model: Denoiser, classifier: str | None, scale, device) -> Denoiser:
    """``model`` wrapped with classifier guidance (``--classifier``/``--guidance-scale``), or as is."""
    from sampler_bench.models.guidance import GuidedDenoiser, check_scale

    if classifier is None:
        if scale is not None:
            raise BenchError("--guidance-scale needs a classifier; give --classifier NAME|PATH (e.g. gmm for the analytic model).")
        return model
    s = check_scale(1.0 if scale is None else scale)
    return GuidedDenoiser(model, load_classifier(classifier, device, model), s)
