"""Inception-v3 features as TF-FID computes them: torch-fidelity's ``inception-v3-compat`` extractor.

The extractor takes uint8 B x 3 x H x W images (exactly as saved), resizes them to 299 x 299 with
TF1's bilinear rule, scales ``(x - 128) / 128`` and runs the 2015-12-05 TF Inception graph ported
to PyTorch. We use its pool3 features (``'2048'``, for FID/KID) and ``'logits_unbiased'`` (for IS).

Weights (``weights-inception-2015-12-05-6726825d.pth``, 95.7 MB, a plain state dict) are resolved in
this order: an explicit path (``--inception-weights``), ``$SAMPLER_BENCH_INCEPTION_WEIGHTS``,
``weights/<file>`` under the cache root (``$SAMPLER_BENCH_CACHE``, sampler_bench/cache.py), the torch
hub cache file torch-fidelity itself uses (``$TORCH_HOME/hub/checkpoints/<file>``, reused when
present), then a download of torch-fidelity's release URL into the cache root. Files are loaded with
``torch.load(weights_only=True)`` (no pickled code runs) and into the network with strict keys.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from sampler_bench import _compat  # noqa: F401  (must precede torch_fidelity)
from sampler_bench.errors import BenchError
from sampler_bench.memory import keep_freed_memory

WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + WEIGHTS_FILENAME
WEIGHTS_ENV = "SAMPLER_BENCH_INCEPTION_WEIGHTS"
EXTRACTOR_NAME = "inception-v3-compat"
FEATURE_DIM = 2048
LOGITS_DIM = 1008


def cache_path() -> Path:
    """Where we keep (and download) the weights: ``weights/<file>`` under the one cache root."""
    from sampler_bench.cache import subdir

    return subdir("weights") / WEIGHTS_FILENAME


def hub_cache_path() -> Path:
    """Where torch-fidelity caches the weights: ``torch.hub.get_dir()/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILENAME


def _download(url: str, dst: Path) -> None:
    """Download ``url`` to ``dst`` (torch.hub writes a temporary file and renames it)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(dst), progress=False)


def resolve_weights(explicit: str | os.PathLike | None = None, *, allow_download: bool = True) -> tuple[Path, str]:
    """The weights file to use and where it came from (``explicit``, ``env``, ``cache``, ``hub-cache``, ``download``)."""
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise BenchError(f"--inception-weights '{explicit}' does not exist; pass the path of {WEIGHTS_FILENAME} (from {WEIGHTS_URL}).")
        return p, "explicit"
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise BenchError(f"${WEIGHTS_ENV}='{env}' does not exist; point it at {WEIGHTS_FILENAME} (from {WEIGHTS_URL}) or unset it.")
        return p, "env"
    cached = cache_path()
    if cached.is_file():
        return cached, "cache"
    hub = hub_cache_path()
    if hub.is_file():
        return hub, "hub-cache"
    from sampler_bench.cache import offline

    if allow_download and not offline():
        try:
            _download(WEIGHTS_URL, cached)
        except Exception as exc:  # network errors come in many types (URLError, OSError, HTTPError, ...)
            reason = " ".join(str(exc).split())[:120]
            raise BenchError(
                f"Inception weights not found and the download failed ({type(exc).__name__}: {reason}); download {WEIGHTS_URL} "
                f"and put it at {cached}, or pass --inception-weights PATH or set ${WEIGHTS_ENV}.") from None
        return cached, "download"
    why = " and downloads are off (SAMPLER_BENCH_OFFLINE)" if offline() else ""
    raise BenchError(f"Inception weights not found{why}; download {WEIGHTS_URL} and put it at {cached}, or pass --inception-weights PATH or set ${WEIGHTS_ENV}.")


def _load_state_dict(path: Path) -> dict:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:100]
        raise BenchError(f"Inception weights file '{path}' is corrupt or not a PyTorch state dict ({type(exc).__name__}: {reason}); "
                         f"re-download it from {WEIGHTS_URL}.") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BenchError(f"Inception weights file '{path}' does not hold a state dict of tensors; re-download it from {WEIGHTS_URL}.")
    return sd


_EMPTY_LOCK = threading.Lock()


def _build_network(sd: dict, path: Path):
    """torch-fidelity's FeatureExtractorInceptionV3 with our (already safely loaded) state dict."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Inception(FeatureExtractorInceptionV3):
        # torch-fidelity's __init__ torch.load()s its path then calls load_state_dict; we hand it a
        # tiny empty file and load the state dict we read with weights_only=True instead.
        def load_state_dict(self, _ignored, strict=True, assign=False):
            return super().load_state_dict(sd, strict=True)

    import tempfile

    with _EMPTY_LOCK, tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        try:
            net = _Inception(EXTRACTOR_NAME, [str(FEATURE_DIM), "logits_unbiased"], feature_extractor_weights_path=str(empty))
        except RuntimeError as exc:
            first = " ".join(str(exc).split())[:160]
            raise BenchError(f"Inception weights file '{path}' does not match {EXTRACTOR_NAME} ({first}); use {WEIGHTS_FILENAME} from {WEIGHTS_URL}.") from None
    return net


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    from sampler_bench.models.registry import resolve_device as _rd

    return _rd(str(device)) if not isinstance(device, torch.device) else device


class InceptionExtractor:
    """uint8 images -> pool3 features (N, 2048) float32 and unbiased logits (N, 1008) float32."""

    def __init__(self, weights: str | os.PathLike | None = None, *, device: str | torch.device = "auto",
                 batch_size: int = 64, allow_download: bool = True):
        if batch_size < 1:
            raise BenchError(f"--fid-batch must be a positive integer; got {batch_size}.")
        self.weights_path, self.weights_source = resolve_weights(weights, allow_download=allow_download)
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.dim = FEATURE_DIM
        net = _build_network(_load_state_dict(self.weights_path), self.weights_path)
        net = net.to(self.device)
        if self.device.type == "cpu":
            net = net.to(memory_format=torch.channels_last)  # measured 1.8x faster on CPU, <= 1.2e-6 difference
            keep_freed_memory()  # per-batch activations reuse freed heap instead of page-faulting (memory.py)
        self.net = net

    def describe(self) -> dict:
        return {"extractor": EXTRACTOR_NAME, "weights": str(self.weights_path), "weights_source": self.weights_source,
                "device": str(self.device)}

    def features(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        """``images``: uint8 (B,H,W,3) NHWC (numpy or torch), as saved. Returns (pool3, logits) on CPU."""
        x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images, copy=True))
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise BenchError(f"images must be uint8 N x H x W x 3; got {tuple(x.shape)} {x.dtype}.")
        feats, logits = [], []
        with torch.inference_mode():
            for i in range(0, len(x), self.batch_size):
                b = x[i: i + self.batch_size].permute(0, 3, 1, 2).to(self.device)
                if self.device.type == "cpu":
                    b = b.contiguous(memory_format=torch.channels_last)
                f, lg = self.net(b)
                feats.append(f.float().cpu())
                logits.append(lg.float().cpu())
        if not feats:
            return torch.zeros(0, FEATURE_DIM), torch.zeros(0, LOGITS_DIM)
        return torch.cat(feats), torch.cat(logits)


_CACHE: dict[tuple, InceptionExtractor] = {}


def get_extractor(weights=None, *, device="auto", batch_size: int = 64, allow_download: bool = True) -> InceptionExtractor:
    """A process-wide cached extractor per (weights file, device); batch size is per call."""
    if batch_size < 1:
        raise BenchError(f"--fid-batch must be a positive integer; got {batch_size}.")
    path, source = resolve_weights(weights, allow_download=allow_download)
    dev = resolve_device(device)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, str(dev))
    ext = _CACHE.get(key)
    if ext is None:
        ext = InceptionExtractor(path, device=dev, batch_size=batch_size, allow_download=False)
        _CACHE.clear()  # keep at most one network (~100 MB) alive
        _CACHE[key] = ext
    ext.batch_size = int(batch_size)
    ext.weights_source = source
    return ext


def iter_features(extractor: InceptionExtractor, batches: Iterable) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    for b in batches:
        yield extractor.features(b)
