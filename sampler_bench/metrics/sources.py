"""Image sources for `bench fid` / `bench stats`: uint8 N x H x W x 3 batches, streamed.

- a run directory (``samples.npz`` from `bench sample`),
- a ``.npz`` of uint8 images (key ``images``, ours, or ``arr_0``, guided-diffusion's batches),
  read member-by-member so memory does not grow with N,
- a folder of images (png, jpg, bmp, webp; recursive, sorted by path),
- an EDM-style dataset ``.zip`` (image files inside, sorted by name),
- ``model:NAME[:key=value,...]``: exact samples of an analytic model's data distribution.

Folders and zips are checked (size, mode) from the image headers before any pixel is read: mixed
sizes and images with alpha or unusual modes are refused, naming the file; grayscale and palette
images are converted to RGB (and the count is reported).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from sampler_bench.errors import BenchError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
CONVERTIBLE_MODES = {"L": "grayscale", "P": "palette", "1": "1-bit"}


@dataclass
class ImageSource:
    kind: str
    description: str
    count: int
    batches: Callable[[int], Iterator[np.ndarray]]  # batch size -> uint8 NHWC batches
    run_dir: Path | None = None
    warnings: list[str] = field(default_factory=list)


def _to_rgb_u8(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise BenchError(f"{where}: images have dtype {arr.dtype}, expected uint8 (0..255); save them as uint8.")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise BenchError(f"{where}: images have shape {arr.shape}, expected N x H x W x 3 (NHWC uint8).")
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr


# ---------------------------------------------------------------------------------------------
# .npz (streamed)
# ---------------------------------------------------------------------------------------------


def _read_header(f, version):
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def _npz_source(path: Path, run_dir: Path | None = None) -> ImageSource:
    try:
        zf = zipfile.ZipFile(path)
        names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise BenchError(f"cannot read '{path}' as .npz ({type(exc).__name__}); the file is corrupt or not an .npz.") from None
    key = next((k for k in ("images", "arr_0") if f"{k}.npy" in names), None)
    if key is None:
        keys = ", ".join(n.removesuffix(".npy") for n in names)
        raise BenchError(f"'{path}' has no image array ('images' or 'arr_0'; keys: {keys}); pass an .npz of uint8 N x H x W x 3 images.")
    with zf.open(f"{key}.npy") as f:
        try:
            version = np.lib.format.read_magic(f)
            shape, fortran, dtype = _read_header(f, version)
        except ValueError as exc:
            raise BenchError(f"'{path}': cannot read array '{key}' ({exc}); regenerate the file.") from None
    zf.close()
    if dtype != np.uint8:
        raise BenchError(f"'{path}': '{key}' has dtype {dtype}, expected uint8 images (0..255).")
    if fortran or len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3)):
        raise BenchError(f"'{path}': '{key}' has shape {shape}, expected N x H x W x 3 (NHWC uint8).")
    n = int(shape[0])
    row = int(np.prod(shape[1:]))

    def batches(bs: int) -> Iterator[np.ndarray]:
        with zipfile.ZipFile(path) as z, z.open(f"{key}.npy") as f:
            _read_header(f, np.lib.format.read_magic(f))
            for i in range(0, n, bs):
                k = min(bs, n - i)
                buf = f.read(k * row)
                if len(buf) != k * row:
                    raise BenchError(f"'{path}' is truncated ({i + len(buf) // row} of {n} images readable); regenerate it.")
                yield _to_rgb_u8(np.frombuffer(buf, np.uint8).reshape(k, *shape[1:]), str(path))

    kind = "run" if run_dir else "npz"
    return ImageSource(kind, f"{run_dir or path} ({n} images, {'x'.join(map(str, shape[1:]))})", n, batches, run_dir)


# ---------------------------------------------------------------------------------------------
# folders and zips of image files
# ---------------------------------------------------------------------------------------------


def _check_headers(items: list[tuple[str, Callable[[], object]]], where: str) -> tuple[list[str], tuple[int, int]]:
    """Open each image header; refuse mixed sizes / alpha / odd modes; return warnings and size."""
    from PIL import Image, UnidentifiedImageError

    size = first = None
    converted: dict[str, int] = {}
    jpeg = 0
    for name, opener in items:
        try:
            with Image.open(opener()) as im:
                mode, sz, fmt = im.mode, im.size, im.format
                transparent = "transparency" in im.info
        except (UnidentifiedImageError, OSError) as exc:
            raise BenchError(f"'{name}' is not a readable image ({type(exc).__name__}); remove it from {where}.") from None
        if size is None:
            size, first = sz, name
        elif sz != size:
            raise BenchError(f"images in {where} have mixed sizes: '{first}' is {size[0]}x{size[1]} but '{name}' is {sz[0]}x{sz[1]}; "
                             f"resize them to one size first (FID needs one resolution).")
        if mode == "RGB":
            pass
        elif mode in CONVERTIBLE_MODES and not transparent:
            converted[CONVERTIBLE_MODES[mode]] = converted.get(CONVERTIBLE_MODES[mode], 0) + 1
        else:
            raise BenchError(f"'{name}' has image mode {mode}{' with transparency' if transparent else ''}, which is refused "
                             f"(only RGB is used as is; grayscale/palette are converted); convert it to RGB first.")
        jpeg += fmt == "JPEG"
    warnings = []
    if converted:
        warnings.append("converted to RGB: " + ", ".join(f"{v} {k}" for k, v in converted.items()) + " image(s).")
    if jpeg:
        warnings.append(f"{jpeg} JPEG image(s): lossy compression changes FID noticeably; prefer PNG.")
    return warnings, size


def _load_rgb(opener) -> np.ndarray:
    from PIL import Image

    with Image.open(opener()) as im:
        return np.asarray(im.convert("RGB") if im.mode != "RGB" else im, dtype=np.uint8)


def _files_source(kind: str, where: str, items: list[tuple[str, Callable[[], object]]]) -> ImageSource:
    if not items:
        raise BenchError(f"{where} holds no images ({', '.join(sorted(IMAGE_EXTS))}); point at a folder of images.")
    warnings, size = _check_headers(items, where)

    def batches(bs: int) -> Iterator[np.ndarray]:
        for i in range(0, len(items), bs):
            yield np.stack([_load_rgb(op) for _, op in items[i: i + bs]])

    return ImageSource(kind, f"{where} ({len(items)} images, {size[1]}x{size[0]})", len(items), batches, None, warnings)


def _folder_source(path: Path) -> ImageSource:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    return _files_source("folder", f"folder '{path}'", [(str(p), (lambda p=p: p)) for p in files])


def _zip_source(path: Path) -> ImageSource:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BenchError(f"cannot read '{path}' as a zip ({type(exc).__name__}); pass an EDM dataset zip, a folder or an .npz.") from None
    names = sorted(n for n in zf.namelist() if Path(n).suffix.lower() in IMAGE_EXTS)

    def opener(n):
        return lambda: io.BytesIO(zf.read(n))

    return _files_source("zip", f"zip '{path}'", [(f"{path}:{n}", opener(n)) for n in names])


# ---------------------------------------------------------------------------------------------
# analytic models: exact data samples
# ---------------------------------------------------------------------------------------------

CHUNK = 256  # data samples are drawn in fixed chunks (chunk i seeded with seed*1_000_003+i): batch-size independent


def model_data_source(spec: str, num: int | None, seed: int = 0, class_label: int | None = None) -> ImageSource:
    import torch

    from sampler_bench.models.registry import load_model
    from sampler_bench.images import quantize

    if num is None or num < 1:
        raise BenchError(f"source '{spec}' draws exact data samples: give their number with --num N (e.g. --num 10000).")
    model = load_model(spec.split(":", 1)[1] if ":" in spec else "", "cpu")
    if not hasattr(model, "sample_data"):
        raise BenchError(f"model '{spec}' has no exact data sampler; only analytic models (gmm, gaussian) can be a stats source.")
    c = model.image_shape[0]
    if c not in (1, 3):
        raise BenchError(f"model '{spec}' makes {c}-channel images; Inception needs 1 or 3 channels.")
    if class_label is not None and not 0 <= class_label < max(model.num_classes, 1):
        raise BenchError(f"--class-label {class_label} is out of range for '{spec}'.")

    def batches(bs: int) -> Iterator[np.ndarray]:
        pending: list[np.ndarray] = []
        have = 0
        for ci, start in enumerate(range(0, num, CHUNK)):
            k = min(CHUNK, num - start)
            g = torch.Generator().manual_seed(int(seed) * 1_000_003 + ci)
            labels = None if class_label is None else torch.full((k,), int(class_label), dtype=torch.long)
            x, _ = model.sample_data(k, generator=g, labels=labels)
            pending.append(_to_rgb_u8(quantize(x).numpy(), spec))
            have += k
            while have >= bs or (have and start + k >= num):
                allx = np.concatenate(pending)
                out, rest = allx[:bs], allx[bs:]
                pending, have = ([rest] if len(rest) else []), len(rest)
                yield out

    label = f" class {class_label}" if class_label is not None else ""
    return ImageSource("model", f"exact data samples of '{spec.split(':', 1)[1]}'{label} ({num} images, seed {seed})", num, batches)


# ---------------------------------------------------------------------------------------------


def open_source(source: str, *, num: int | None = None, seed: int = 0, class_label: int | None = None) -> ImageSource:
    """Dispatch SOURCE (see the module docstring) to an :class:`ImageSource`."""
    if source.startswith("model:"):
        return model_data_source(source, num, seed, class_label)
    p = Path(source).expanduser()
    if not p.exists():
        raise BenchError(f"source '{source}' does not exist; pass a run directory, an image folder, an .npz, a dataset .zip or model:NAME.")
    if p.is_dir():
        if (p / "samples.npz").is_file():
            src = _npz_source(p / "samples.npz", run_dir=p)
        elif (p / "run.json").is_file():
            raise BenchError(f"'{source}' is a run directory without its samples.npz (grid.png is only a preview); "
                             f"re-run the `bench sample` command that made it with --overwrite, or pass the samples' .npz.")
        else:
            src = _folder_source(p)
    elif p.suffix.lower() == ".npz":
        src = _npz_source(p)
    elif p.suffix.lower() == ".zip":
        src = _zip_source(p)
    else:
        raise BenchError(f"source '{source}' is not a directory, .npz or .zip; pass a run directory, an image folder, an .npz or a dataset .zip.")
    if num is not None:
        if num > src.count:
            raise BenchError(f"--num {num} is more than the {src.count} images in '{source}'; lower --num.")
        inner, n = src.batches, num

        def limited(bs: int) -> Iterator[np.ndarray]:
            left = n
            for b in inner(bs):
                if left <= 0:
                    break
                yield b[:left]
                left -= len(b)

        src.batches, src.count = limited, num
        src.description += f", first {num}"
    return src
