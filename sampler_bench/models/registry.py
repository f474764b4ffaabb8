"""Model names -> how to build a sigma-space denoiser.

``--model`` takes a registered name (``bench models`` lists them), a name with parameters
(``gmm:classes=5,shape=3x16x16``) or a path to a checkpoint file, dispatched on its suffix through
:data:`LOADERS_BY_SUFFIX`.

A model family registers here at import time without importing torch (``bench models`` must stay
fast): ``from sampler_bench.lazy import torch``, and import its network / loader modules inside the
build and load functions (see ``_register_edm_family``). ``tests/test_cli_fast.py`` checks it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from sampler_bench.errors import BenchError
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
    params: dict[str, type] | None = None  # user-settable parameters, name -> type
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
    allowed = entry.params or {}

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
    close = difflib.get_close_matches(name, MODELS, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
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
