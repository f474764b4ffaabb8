"""Reference statistics: reading ``.npz`` files with ``mu``/``sigma`` and a registry of known files.

Formats read:
- EDM's ``fid-refs/*.npz`` and ``bench stats`` output: ``mu`` (D,), ``sigma`` (D, D) (ours also carry
  ``num_images``, ``extractor`` and optionally ``features`` for KID);
- guided-diffusion's ``VIRTUAL_*.npz``: ``arr_0`` (reference images), ``mu``, ``sigma`` (pool3,
  used) and ``mu_s``, ``sigma_s`` (spatial, for sFID; ignored).

Every reference holds one feature space (``extractor``: ``inception-v3-compat``, ``dinov2-vit-l-14``,
``clip-vit-b-32``, ...; files without the entry are Inception when 2048-wide, registry entries say
theirs); :func:`load_ref` refuses a file of another space than the caller's metric needs.

``--ref NAME`` resolves a registered name to a file in the cache directory, downloading it there
only when no local file exists; any existing path works too.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sampler_bench.errors import BenchError, did_you_mean

EDM_BASE = "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/"
ADM_BASE = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/"


@dataclass(frozen=True)
class RefEntry:
    name: str
    url: str
    summary: str
    dim: int = 2048
    sha256: str | None = None
    features: str = "inception-v3-compat"  # the feature space the file holds (see metrics.extractors.SPACES)  # None: not known to us (not verified; the size/shape check still runs)

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


KNOWN_REFS: dict[str, RefEntry] = {e.name: e for e in [
    RefEntry("cifar10-32x32", EDM_BASE + "cifar10-32x32.npz", "CIFAR-10 train, 50k images (EDM)"),
    RefEntry("ffhq-64x64", EDM_BASE + "ffhq-64x64.npz", "FFHQ 64x64, 70k images (EDM)"),
    RefEntry("afhqv2-64x64", EDM_BASE + "afhqv2-64x64.npz", "AFHQv2 64x64 (EDM)"),
    RefEntry("imagenet-64x64", EDM_BASE + "imagenet-64x64.npz", "ImageNet 64x64 train, center-crop (EDM)"),
    RefEntry("imagenet-64x64-baseline", EDM_BASE + "imagenet-64x64-baseline.npz", "ImageNet 64x64 stats derived from ADM's reference (EDM, for the ADM baseline)"),
    RefEntry("VIRTUAL_imagenet64_labeled", ADM_BASE + "imagenet/64/VIRTUAL_imagenet64_labeled.npz", "ImageNet 64x64 (guided-diffusion reference batch; mu/sigma of the whole set)"),
    RefEntry("VIRTUAL_imagenet128_labeled", ADM_BASE + "imagenet/128/VIRTUAL_imagenet128_labeled.npz", "ImageNet 128x128 (guided-diffusion reference batch)"),
    RefEntry("VIRTUAL_imagenet256_labeled", ADM_BASE + "imagenet/256/VIRTUAL_imagenet256_labeled.npz", "ImageNet 256x256 (guided-diffusion reference batch)"),
    RefEntry("VIRTUAL_lsun_bedroom256", ADM_BASE + "lsun/bedroom/VIRTUAL_lsun_bedroom256.npz", "LSUN bedroom 256x256 (guided-diffusion reference batch)"),
]}

CACHE_ENV = "SAMPLER_BENCH_CACHE"


def cache_dir() -> Path:
    """``refs/`` under the one cache root (``$SAMPLER_BENCH_CACHE``, see sampler_bench/cache.py)."""
    from sampler_bench.cache import subdir

    return subdir("refs")


def _download(url: str, dst: Path) -> None:
    """Fetch ``url`` into ``dst`` atomically (a temporary file beside it, renamed when complete)."""
    import torch

    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(dst), progress=False)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_ref(ref: str, *, allow_download: bool = True, cache: Path | None = None) -> tuple[Path, str]:
    """``--ref`` (a path or a registered name) -> (local file, label). Downloads a known name if absent."""
    p = Path(ref).expanduser()
    if p.is_file():
        return p, str(ref)
    entry = KNOWN_REFS.get(ref) or KNOWN_REFS.get(ref.removesuffix(".npz"))
    if entry is None:
        if p.suffix or os.sep in ref:
            raise BenchError(f"reference statistics file '{ref}' does not exist; pass an existing .npz or a known name ({', '.join(KNOWN_REFS)}).")
        hint = did_you_mean(ref, KNOWN_REFS)
        raise BenchError(f"unknown reference '{ref}'; {hint}known: {', '.join(KNOWN_REFS)}; or pass a .npz path (see `bench stats`).")
    dst = (cache or cache_dir()) / entry.filename
    if dst.is_file():
        return dst, entry.name
    from sampler_bench.cache import offline

    if not allow_download or offline():
        raise BenchError(f"reference '{entry.name}' is not cached{' and downloads are off (SAMPLER_BENCH_OFFLINE)' if offline() else ''}; "
                         f"download {entry.url} to {dst}, or pass the file's path.")
    try:
        _download(entry.url, dst)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:120]
        raise BenchError(f"could not download reference '{entry.name}' ({type(exc).__name__}: {reason}); download {entry.url} to {dst} yourself, or pass a local .npz.") from None
    if entry.sha256 and _sha256(dst) != entry.sha256:
        dst.unlink()
        raise BenchError(f"downloaded reference '{entry.name}' has the wrong sha256 and was removed; retry, or fetch {entry.url} yourself.")
    return dst, entry.name


@dataclass
class RefStats:
    mu: np.ndarray  # (D,) float64
    sigma: np.ndarray  # (D, D) float64
    path: Path
    label: str
    num_images: int | None = None
    extractor: str | None = None
    features: np.ndarray | None = None  # (N, D) float32 when the file carries them (KID, precision/recall)
    space: str = "inception-v3-compat"  # the feature space of mu/sigma (metrics.extractors.SPACES)


def _file_space(path: Path, label: str, extractor: str | None, dim: int) -> str:
    """The feature space a reference file holds: its ``extractor`` entry, else the registry's, else Inception by width."""
    from sampler_bench.metrics.extractors import SPACES

    if extractor is not None:
        if extractor not in SPACES:
            raise BenchError(f"reference '{path}' was made with an unknown extractor '{extractor}'; regenerate it with `bench stats --features ...`.")
        return extractor
    entry = KNOWN_REFS.get(label)
    if entry is not None:
        return entry.features
    if dim == 2048:
        return "inception-v3-compat"  # EDM / guided-diffusion / pytorch-fid files carry no extractor name
    raise BenchError(f"reference '{path}' has {dim}-dimensional statistics and does not say its feature space; "
                     f"regenerate it with `bench stats SOURCE --features SPACE --out ref.npz`.")


def ref_space(ref: str, *, allow_download: bool = True) -> str:
    """The feature space of a reference (reads only its ``extractor`` and ``mu`` entries)."""
    path, label = resolve_ref(ref, allow_download=allow_download)
    try:
        with np.load(path, allow_pickle=False) as z:
            extractor = str(z["extractor"]) if "extractor" in z.files and z["extractor"].size == 1 else None
            dim = int(z["mu"].shape[0]) if "mu" in z.files and z["mu"].ndim == 1 else 0
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        reason = " ".join(str(exc).split())[:100]
        raise BenchError(f"cannot read reference statistics '{path}' ({type(exc).__name__}: {reason}); the file is corrupt or not an .npz: re-download or regenerate it with `bench stats`.") from None
    if dim == 0:
        raise BenchError(f"reference '{path}' has no 'mu' vector; use an EDM fid-refs file, a guided-diffusion VIRTUAL_*.npz or `bench stats` output.")
    return _file_space(path, label, extractor, dim)


def load_ref(ref: str, *, dim: int | None = None, space: str | None = None, allow_download: bool = True,
             want_features: bool = False, needed_by: str = "FID") -> RefStats:
    """Resolve and read reference statistics, checking keys, shapes, dtypes, finiteness and feature space.

    ``space``: the feature space the caller needs (default Inception); a file holding another space is refused.
    """
    from sampler_bench.metrics.extractors import SPACES, space_of

    want = space_of(space or "inception")
    dim = dim or want.dim
    path, label = resolve_ref(ref, allow_download=allow_download)
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            if "mu" not in keys or "sigma" not in keys:
                has_imgs = keys & {"arr_0", "images"}
                fix = ("it holds images but no statistics; run `bench stats " + str(path) + " --out ref.npz` and use that"
                       if has_imgs else "use an EDM fid-refs file, a guided-diffusion VIRTUAL_*.npz or `bench stats` output")
                raise BenchError(f"reference '{path}' has no 'mu'/'sigma' arrays (keys: {', '.join(sorted(keys)) or 'none'}); {fix}.")
            mu, sigma = z["mu"], z["sigma"]
            n = int(z["num_images"]) if "num_images" in keys and z["num_images"].size == 1 else None
            extractor = str(z["extractor"]) if "extractor" in keys and z["extractor"].size == 1 else None
            feats = z["features"] if want_features and "features" in keys else None
    except BenchError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        reason = " ".join(str(exc).split())[:100]
        raise BenchError(f"cannot read reference statistics '{path}' ({type(exc).__name__}: {reason}); the file is corrupt or not an .npz: re-download or regenerate it with `bench stats`.") from None
    for name, arr in (("mu", mu), ("sigma", sigma)):
        if not np.issubdtype(arr.dtype, np.floating):
            raise BenchError(f"reference '{path}': '{name}' has dtype {arr.dtype}, expected float32/float64; regenerate it with `bench stats`.")
    if extractor is not None and extractor not in SPACES:
        raise BenchError(f"reference '{path}' was made with extractor '{extractor}', not one of {', '.join(SPACES)}; regenerate it with `bench stats`.")
    entry = KNOWN_REFS.get(label)
    held = extractor or (entry.features if entry is not None else want.name)  # files without a name: checked by shape
    if held != want.name:
        short = "inception" if want.name == "inception-v3-compat" else want.name
        raise BenchError(f"reference '{path}' holds {held} features, but {needed_by} needs {want.name} statistics; "
                         f"make a matching reference with `bench stats SOURCE --features {short} --out ref.npz`.")
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise BenchError(f"reference '{path}' has mu {mu.shape} and sigma {sigma.shape}; expected ({dim},) and ({dim}, {dim}) "
                         f"({want.name} statistics); use statistics from the same extractor.")
    mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise BenchError(f"reference '{path}' contains NaN or inf; regenerate it with `bench stats`.")
    if feats is not None and (feats.ndim != 2 or feats.shape[1] != dim):
        raise BenchError(f"reference '{path}': 'features' has shape {feats.shape}, expected (N, {dim}); regenerate it with `bench stats --keep-features`.")
    return RefStats(mu, sigma, path, label, n, extractor, feats, want.name)
