"""Known checkpoints (``checkpoints/*.yaml``), the local cache and downloads.

Each registry entry becomes a ``--model`` name. On first use the file is downloaded into the cache
(``checkpoints/cache/``, or ``$SAMPLER_BENCH_CACHE``) with a progress bar; an interrupted download
resumes from its ``.part`` file with an HTTP Range request. The file's SHA-256 is recorded beside it
(``FILE.sha256``) on first download (or checked against the registry's pin) and verified on every
later use. With ``SAMPLER_BENCH_OFFLINE=1``, or when the network is unreachable, a cached file is used
as is and a missing one is a one-line error saying where to put it.

This module also registers the ``.pkl`` loader (EDM network pickles) for ``--model PATH``.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import Request, urlopen


from sampler_bench.errors import BenchError

REGISTRY_DIR = Path(__file__).resolve().parents[2] / "checkpoints"
CHUNK = 1 << 20


def cache_dir() -> Path:
    env = os.environ.get("SAMPLER_BENCH_CACHE")
    return Path(env) if env else REGISTRY_DIR / "cache"


def offline() -> bool:
    return os.environ.get("SAMPLER_BENCH_OFFLINE", "").lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Checkpoint:
    name: str
    url: str
    format: str
    file: str
    resolution: int | None = None
    classes: int = 0
    precond: str | None = None
    architecture: str = ""
    config: str | None = None
    parameters: int | None = None
    fid_ref: str | None = None
    paper: dict = field(default_factory=dict)
    sha256: str | None = None
    verified: bool = True
    role: str = "model"  # adm-pt: model or classifier
    flags: dict = field(default_factory=dict)  # adm-pt: guided-diffusion flags
    size: str | None = None  # approximate download size, informational

    @property
    def path(self) -> Path:
        return cache_dir() / self.file

    @property
    def part_path(self) -> Path:
        return self.path.with_name(self.path.name + ".part")

    @property
    def record_path(self) -> Path:
        return self.path.with_name(self.path.name + ".sha256")

    def summary(self) -> str:
        cls = f"{self.classes} classes" if self.classes else "unconditional"
        paper = ""
        if self.paper.get("fid") is not None:
            paper = f"; paper FID {self.paper['fid']} @ NFE {self.paper.get('nfe')}"
        fid = f"; FID ref {self.fid_ref}" if self.fid_ref else ""
        return f"EDM config {self.config}: {self.precond}, {self.architecture}, {self.resolution}x{self.resolution}, {cls}{fid}{paper}"


_FIELDS = {f for f in Checkpoint.__dataclass_fields__}


def load_registry(directory: Path | None = None, fmt: str = "edm-pkl") -> dict[str, Checkpoint]:
    """All ``format: FMT`` entries of ``checkpoints/*.yaml`` (other formats belong to other loaders)."""
    import yaml

    directory = directory or REGISTRY_DIR
    out: dict[str, Checkpoint] = {}
    for yml in sorted(directory.glob("*.yaml")):
        try:
            doc = yaml.safe_load(yml.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise BenchError(f"checkpoint registry {yml} is not valid YAML ({str(exc).splitlines()[0]}); fix or remove it.") from None
        for item in doc.get("checkpoints", []) or []:
            if not isinstance(item, dict) or item.get("format") != fmt:
                continue
            extra = set(item) - _FIELDS
            if extra or not item.get("name") or not item.get("url"):
                raise BenchError(f"checkpoint registry {yml}: entry {item.get('name', '?')!r} needs name and url"
                                 f"{' and has unknown fields ' + ', '.join(sorted(extra)) if extra else ''}; fix the entry.")
            item = dict(item)
            item.setdefault("file", Path(urlparse(item["url"]).path).name)
            item["paper"] = item.get("paper") or {}
            item["flags"] = item.get("flags") or {}
            out[item["name"]] = Checkpoint(**item)
    return out


# ---------------------------------------------------------------------------------------------
# Checksums
# ---------------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK * 4):
            h.update(block)
    return h.hexdigest()


def recorded_sha256(ck: Checkpoint) -> str | None:
    try:
        text = ck.record_path.read_text().split()
    except OSError:
        return None
    return text[0].lower() if text else None


def verify_checksum(ck: Checkpoint) -> str:
    """Check the cached file against the registry pin and the checksum recorded on first download;
    record it if there is none yet. Returns the file's SHA-256."""
    from sampler_bench.fileio import write_text

    digest = sha256_file(ck.path)
    for expected, source in ((ck.sha256, "pinned in the registry"), (recorded_sha256(ck), f"recorded in {ck.record_path}")):
        if expected and digest != expected.lower():
            raise BenchError(f"checksum mismatch for '{ck.name}': {ck.path} has sha256 {digest[:16]}..., expected "
                             f"{expected[:16]}... ({source}); delete the file (and {ck.record_path.name}) and run again to download it afresh.")
    if recorded_sha256(ck) is None:
        write_text(ck.record_path, f"{digest}  {ck.file}\n")
    return digest


# ---------------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------------


def _progress(desc: str, total: int | None, done: int, show: bool):
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn(), console=Console(stderr=True), disable=not show, transient=False)
    task = bar.add_task(desc, total=total, completed=done)
    return bar, task


def download(url: str, dest: Path, *, show_progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a previous partial download."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "sampler_bench"}
    if have:
        headers["Range"] = f"bytes={have}-"
    where = f"put the file at {dest} (from {url})"
    try:
        resp = urlopen(Request(url, headers=headers), timeout=timeout)  # noqa: S310 -- registry URLs
    except HTTPError as exc:
        if exc.code == 416 and have:  # the partial file already holds everything
            os.replace(part, dest)
            return dest
        raise BenchError(f"cannot download {url}: HTTP {exc.code} {exc.reason}; {where}.") from None
    except (URLError, OSError, socket.timeout) as exc:
        reason = getattr(exc, "reason", exc)
        raise BenchError(f"cannot download {url} ({reason}); if offline, {where}.") from None
    with resp:
        if have and resp.status != 206:  # server ignored the Range header: start over
            have = 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        bar, task = _progress(f"download {dest.name}", total, have, show_progress)
        try:
            with bar, open(part, "ab" if have else "wb") as f:
                while block := resp.read(CHUNK):
                    f.write(block)
                    bar.advance(task, len(block))
        except (OSError, socket.timeout) as exc:
            got = part.stat().st_size if part.exists() else 0
            raise BenchError(f"download of {url} was interrupted after {got} bytes ({exc}); run again to resume, or {where}.") from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise BenchError(f"download of {url} is incomplete ({size} of {total} bytes); run again to resume, or {where}.")
    os.replace(part, dest)
    return dest


def ensure_checkpoint(ck: Checkpoint, *, show_progress: bool = True) -> tuple[Path, str]:
    """The cached file for ``ck`` (downloaded if needed and allowed) and its verified SHA-256."""
    if not ck.path.is_file():
        if offline():
            raise BenchError(f"checkpoint '{ck.name}' is not cached and downloads are off (SAMPLER_BENCH_OFFLINE); "
                             f"put {ck.file} (from {ck.url}) at {ck.path}.")
        download(ck.url, ck.path, show_progress=show_progress and sys.stderr.isatty())
    return ck.path, verify_checksum(ck)


def cache_state(ck: Checkpoint) -> str:
    if ck.path.is_file():
        return "cached, sha256 recorded" if recorded_sha256(ck) else "cached"
    if ck.part_path.is_file():
        return f"partial download ({ck.part_path.stat().st_size / 1e6:.1f} MB)"
    return "not downloaded"


KNOWN: dict[str, Checkpoint] = load_registry()
