"""Feature spaces other than Inception: torch-fidelity's ``dinov2-vit-*`` and ``clip-*`` extractors.

A *feature space* is named as torch-fidelity names its extractor (``dinov2-vit-l-14``,
``clip-vit-b-32``, ...); ``inception`` is short for ``inception-v3-compat`` (:mod:`.inception`).
Every extractor here takes uint8 N x H x W x 3 images and returns float32 feature rows; the image
preprocessing is torch-fidelity's own ``forward`` (TF1-style bilinear resize to the network's input
size, ImageNet / CLIP normalisation), which we do not rewrite: we only build the network and load
its weights ourselves, so that weights are resolved like Inception's:

1. an explicit path (``--feature-weights SPACE=PATH``, ``bench stats --weights PATH``);
2. an environment variable (``$SAMPLER_BENCH_DINOV2_WEIGHTS``, ``$SAMPLER_BENCH_CLIP_WEIGHTS``);
3. the torch hub cache file the official loader uses (``$TORCH_HOME/hub/checkpoints/<file>``);
4. a download of the official URL into that cache; offline, a one-line error that says where to put the file.

DINOv2's *architecture* is not part of torch-fidelity: it loads it with
``torch.hub.load("facebookresearch/dinov2", ...)``, i.e. from the official repository's code, which
torch hub caches under ``$TORCH_HOME/hub/facebookresearch_dinov2_main``. We do the same
(``$SAMPLER_BENCH_DINOV2_REPO`` may point at a local checkout instead) with ``pretrained=False``, then
load the resolved state dict with strict keys. CLIP's architecture is in torch-fidelity
(``build_model`` infers the size from the state dict); its official weights are TorchScript archives
(read with ``torch.jit.load``), plain state-dict files are accepted too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sampler_bench import _compat  # noqa: F401  (must precede torch_fidelity)
from sampler_bench.errors import BenchError

INCEPTION_SPACE = "inception-v3-compat"
DINOV2_ENV, DINOV2_REPO_ENV, CLIP_ENV = "SAMPLER_BENCH_DINOV2_WEIGHTS", "SAMPLER_BENCH_DINOV2_REPO", "SAMPLER_BENCH_CLIP_WEIGHTS"
DINOV2_HUB_REPO = "facebookresearch/dinov2"
_CLIP_BASE = "https://openaipublic.azureedge.net/clip/models"


@dataclass(frozen=True)
class Space:
    """A feature space: torch-fidelity extractor name, feature width, family and where its weights live."""

    name: str
    dim: int
    family: str  # inception | dinov2 | clip
    weights_file: str | None = None
    url: str | None = None
    hub_entry: str | None = None  # dinov2: the hubconf entry point

    @property
    def env(self) -> str | None:
        return {"dinov2": DINOV2_ENV, "clip": CLIP_ENV}.get(self.family)


def _dinov2(size: str, dim: int) -> Space:
    entry = f"dinov2_vit{size}14"
    return Space(f"dinov2-vit-{size}-14", dim, "dinov2", f"{entry}_pretrain.pth",
                 f"https://dl.fbaipublicfiles.com/dinov2/{entry}/{entry}_pretrain.pth", entry)


def _clip(name: str, dim: int, fname: str, sha: str) -> Space:
    return Space(name, dim, "clip", f"{name}-{sha}.pt", f"{_CLIP_BASE}/{sha}/{fname}.pt")


SPACES: dict[str, Space] = {s.name: s for s in [
    Space(INCEPTION_SPACE, 2048, "inception"),
    _dinov2("s", 384), _dinov2("b", 768), _dinov2("l", 1024), _dinov2("g", 1536),
    _clip("clip-rn50", 1024, "RN50", "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762"),
    _clip("clip-vit-b-32", 512, "ViT-B-32", "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"),
    _clip("clip-vit-b-16", 512, "ViT-B-16", "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"),
    _clip("clip-vit-l-14", 768, "ViT-L-14", "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"),
]}
ALIASES = {"inception": INCEPTION_SPACE, "dinov2": "dinov2-vit-l-14", "clip": "clip-vit-b-32"}


def space_of(name: str) -> Space:
    """``inception`` / ``dinov2`` / a torch-fidelity extractor name -> its :class:`Space`."""
    key = ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
    if key not in SPACES:
        raise BenchError(f"unknown feature space '{name}'; choose from inception, {', '.join(n for n in SPACES if n != INCEPTION_SPACE)}.")
    return SPACES[key]


def resolve_space_weights(space: Space, explicit: str | os.PathLike | None = None, *, allow_download: bool = True) -> tuple[Path, str]:
    """The weights file of ``space`` and where it came from (``explicit``, ``env``, ``hub-cache``, ``download``)."""
    where = f"{space.weights_file} (from {space.url})"
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise BenchError(f"{space.name} weights '{explicit}' do not exist; pass the path of {where}.")
        return p, "explicit"
    env = os.environ.get(space.env or "")
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise BenchError(f"${space.env}='{env}' does not exist; point it at {where} or unset it.")
        return p, "env"
    cached = Path(torch.hub.get_dir()) / "checkpoints" / space.weights_file
    if cached.is_file():
        return cached, "hub-cache"
    fix = f"download {space.url} and put it at {cached}, or pass --feature-weights {space.name}=PATH or set ${space.env}"
    if not allow_download:
        raise BenchError(f"{space.name} weights not found; {fix}.")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(space.url, str(cached), progress=False)  # temp file + rename
    except Exception as exc:  # URLError, OSError, HTTPError, ...
        reason = " ".join(str(exc).split())[:120]
        raise BenchError(f"{space.name} weights not found and the download failed ({type(exc).__name__}: {reason}); {fix}.") from None
    return cached, "download"


def _state_dict(path: Path, space: Space, *, jit_ok: bool) -> dict:
    """A state dict from a plain ``torch.save`` file (``weights_only``) or, for CLIP, a TorchScript archive."""
    import warnings

    err = None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TorchScript archive")
            sd = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and sd and all(isinstance(v, torch.Tensor) for v in sd.values()):
            return sd
    except Exception as exc:  # not a plain state dict (e.g. a TorchScript archive)
        err = exc
    if jit_ok:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch 2.13 deprecates torch.jit
                return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        except Exception as exc:
            err = exc
    reason = f" ({type(err).__name__}: {' '.join(str(err).split())[:100]})" if err else ""
    raise BenchError(f"{space.name} weights file '{path}' is corrupt or not a state dict{reason}; re-download it from {space.url}.")


def dinov2_repo_dir() -> Path | None:
    env = os.environ.get(DINOV2_REPO_ENV)
    if env:
        p = Path(env).expanduser()
        if not (p / "hubconf.py").is_file():
            raise BenchError(f"${DINOV2_REPO_ENV}='{env}' has no hubconf.py; point it at a checkout of github.com/{DINOV2_HUB_REPO} or unset it.")
        return p
    p = Path(torch.hub.get_dir()) / "facebookresearch_dinov2_main"
    return p if (p / "hubconf.py").is_file() else None


def _dinov2_network(space: Space, allow_download: bool):
    import warnings

    os.environ.setdefault("XFORMERS_DISABLED", "1")  # as torch-fidelity does
    repo = dinov2_repo_dir()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="xFormers")
            if repo is not None:
                return torch.hub.load(str(repo), space.hub_entry, source="local", pretrained=False)
            if not allow_download:
                raise RuntimeError("not cached")
            return torch.hub.load(f"{DINOV2_HUB_REPO}:main", space.hub_entry, pretrained=False, trust_repo=True,
                                  skip_validation=True, verbose=False)
    except BenchError:
        raise
    except Exception as exc:
        reason = " ".join(str(exc).split())[:120]
        raise BenchError(f"cannot build the {space.name} network ({type(exc).__name__}: {reason}); its code comes from "
                         f"github.com/{DINOV2_HUB_REPO} via torch hub: clone it to {Path(torch.hub.get_dir()) / 'facebookresearch_dinov2_main'} "
                         f"or set ${DINOV2_REPO_ENV}.") from None


def _build(space: Space, sd: dict, path: Path, allow_download: bool):
    """torch-fidelity's extractor class (its forward: resize + normalise + network) around our network."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    try:
        if space.family == "dinov2":
            from torch_fidelity.feature_extractor_dinov2 import FeatureExtractorDinoV2

            net = _dinov2_network(space, allow_download)
            net.load_state_dict(sd, strict=True)

            class _DinoV2(FeatureExtractorDinoV2):
                def __init__(self):  # torch-fidelity's __init__ always loads from torch hub
                    FeatureExtractorBase.__init__(self, space.name, ["dinov2"])
                    self.feature_extractor_internal_dtype = torch.float32
                    self.model = net.float()
                    self.requires_grad_(False)
                    self.eval()

            return _DinoV2()
        from torch_fidelity.feature_extractor_clip import FeatureExtractorCLIP, build_model

        class _CLIP(FeatureExtractorCLIP):
            def __init__(self):  # torch-fidelity's __init__ reads its own file; we pass the state dict
                FeatureExtractorBase.__init__(self, space.name, ["clip"])
                self.feature_extractor_internal_dtype = torch.float32
                self.model = build_model(dict(sd), torch.float32)
                self.resolution = self.model.visual.input_resolution
                self.requires_grad_(False)

        return _CLIP()
    except (RuntimeError, KeyError, ValueError) as exc:
        first = " ".join(str(exc).split())[:160]
        raise BenchError(f"{space.name} weights file '{path}' does not match the network ({type(exc).__name__}: {first}); "
                         f"use {space.weights_file} from {space.url}.") from None


class SpaceExtractor:
    """uint8 images -> (N, dim) float32 features in a DINOv2 or CLIP space (logits: None)."""

    def __init__(self, space: str | Space, weights=None, *, device="auto", batch_size: int = 64, allow_download: bool = True):
        from sampler_bench.metrics.inception import resolve_device

        self.space = space if isinstance(space, Space) else space_of(space)
        if self.space.family == "inception":
            raise ValueError("use sampler_bench.metrics.inception for Inception")
        if batch_size < 1:
            raise BenchError(f"the feature batch size must be a positive integer; got {batch_size}.")
        self.weights_path, self.weights_source = resolve_space_weights(self.space, weights, allow_download=allow_download)
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        sd = _state_dict(self.weights_path, self.space, jit_ok=self.space.family == "clip")
        self.net = _build(self.space, sd, self.weights_path, allow_download).to(self.device)
        self.dim = self.space.dim

    def describe(self) -> dict:
        return {"extractor": self.space.name, "weights": str(self.weights_path), "weights_source": self.weights_source,
                "device": str(self.device)}

    def features(self, images) -> tuple[torch.Tensor, None]:
        """``images``: uint8 (B,H,W,3) NHWC (numpy or torch). Returns ((B, dim) float32 on CPU, None)."""
        x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images, copy=True))
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise BenchError(f"images must be uint8 N x H x W x 3; got {tuple(x.shape)} {x.dtype}.")
        out = []
        with torch.inference_mode():
            for i in range(0, len(x), self.batch_size):
                (f,) = self.net(x[i: i + self.batch_size].permute(0, 3, 1, 2).contiguous().to(self.device))
                out.append(f.float().cpu())
        feats = torch.cat(out) if out else torch.zeros(0, self.dim)
        if feats.shape[1] != self.dim:
            raise BenchError(f"the {self.space.name} network gives {feats.shape[1]} features, expected {self.dim}; use the official weights/code.")
        return feats, None


_CACHE: dict[tuple, SpaceExtractor] = {}


def get_space_extractor(space: str, weights=None, *, device="auto", batch_size: int = 64, allow_download: bool = True):
    """A cached extractor for any space (Inception included), so a run builds each network once."""
    from sampler_bench.metrics.inception import get_extractor, resolve_device

    sp = space_of(space)
    if sp.family == "inception":
        return get_extractor(weights, device=device, batch_size=batch_size, allow_download=allow_download)
    path, source = resolve_space_weights(sp, weights, allow_download=allow_download)
    st = path.stat()
    key = (sp.name, str(path.resolve()), st.st_size, st.st_mtime_ns, str(resolve_device(device)))
    ext = _CACHE.get(key)
    if ext is None:
        ext = SpaceExtractor(sp, path, device=device, batch_size=batch_size, allow_download=allow_download)
        for k in [k for k in _CACHE if k[0] == sp.name]:
            del _CACHE[k]
        _CACHE[key] = ext
    ext.batch_size = int(batch_size)
    ext.weights_source = source
    return ext
