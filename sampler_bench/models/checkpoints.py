"""Known checkpoints (``checkpoints/*.yaml``), the local cache and downloads.

Each registry entry becomes a ``--model`` name. On first use the file is downloaded into the cache
(``checkpoints/`` under the cache root, ``$SAMPLER_BENCH_CACHE``) with a progress bar; an interrupted download
resumes from its ``.part`` file with an HTTP Range request, accepted only when the server answers
with the matching ``Content-Range`` (otherwise the partial file is discarded and the download starts
over). The finished file must have the size the server announced (and the registry's ``size``, when
given) and match the registry's ``sha256`` pin, when given, before it is moved into place; a bad
download is deleted. Its SHA-256 and size are then recorded beside it (``FILE.sha256``) and checked
on every later use. With ``SAMPLER_BENCH_OFFLINE=1``, or when the network is unreachable, a cached
file is used as is and a missing one is a one-line error saying where to put it.

Registry entries are validated when read: every field has its type, ``file`` is a plain file name
(so every cache path stays inside the cache), and ``url`` is ``https://`` (``http://`` only for a
loopback host, for tests). This module knows files and checksums only; the model registry
(:mod:`sampler_bench.models.registry`) registers the families that use it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
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
    """``checkpoints/`` under the one cache root (``$SAMPLER_BENCH_CACHE``, see sampler_bench/cache.py)."""
    from sampler_bench.cache import subdir

    return subdir("checkpoints")


def offline() -> bool:
    return os.environ.get("SAMPLER_BENCH_OFFLINE", "").lower() in ("1", "true", "yes", "on")


_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_LOOPBACK = {"localhost"}


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host in _LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str) -> None:
    """Only ``https://`` URLs (``http://`` for a loopback host, as tests serve files locally)."""
    parts = urlparse(url) if isinstance(url, str) else None
    if parts is None or not parts.netloc or not (parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(parts.hostname))):
        raise BenchError(f"checkpoint URL {str(url)[:120]!r} is not allowed; only https:// URLs (http:// for localhost) are downloaded.")


@dataclass(frozen=True)
class Checkpoint:
    name: str
    url: str
    format: str
    file: str
    resolution: int | None = None
    channels: int = 3
    classes: int = 0
    precond: str | None = None
    architecture: str = ""
    config: str | None = None
    parameters: int | None = None
    size: int | None = None
    fid_ref: str | None = None
    paper: dict = field(default_factory=dict)
    sha256: str | None = None
    verified: bool = True
    role: str = "model"  # adm-pt: model or classifier
    flags: dict = field(default_factory=dict)  # adm-pt: guided-diffusion flags
    approx_size: str | None = None  # approximate download size, informational (adm-pt; ``size`` is the exact byte count)

    def __post_init__(self):
        def need(ok: bool, what: str):
            if not ok:
                raise BenchError(f"checkpoint {str(self.name)[:80]!r}: {what}; fix the entry.")

        is_int = lambda v, lo=0: type(v) is int and v >= lo  # noqa: E731
        opt_int = lambda v, lo=1: v is None or is_int(v, lo)  # noqa: E731
        for k in ("name", "url", "format", "file"):
            need(isinstance(getattr(self, k), str) and getattr(self, k), f"'{k}' must be a non-empty string")
        need(bool(_FILE_NAME.fullmatch(self.file)) and self.file not in (".", ".."),
             f"file {self.file[:80]!r} must be a plain file name (letters, digits, . _ -), which keeps it inside the cache")
        check_url(self.url)
        need(opt_int(self.resolution), "'resolution' must be a positive integer or null")
        need(is_int(self.channels, 1), "'channels' must be a positive integer")
        need(is_int(self.classes), "'classes' must be an integer >= 0")
        need(opt_int(self.parameters), "'parameters' must be a positive integer or null")
        need(opt_int(self.size), "'size' must be the file size in bytes (a positive integer) or null")
        for k in ("precond", "config", "fid_ref"):
            need(getattr(self, k) is None or isinstance(getattr(self, k), str), f"'{k}' must be a string or null")
        need(isinstance(self.architecture, str), "'architecture' must be a string")
        need(self.role in ("model", "classifier"), "'role' must be model or classifier")
        need(isinstance(self.flags, dict), "'flags' must be a mapping")
        need(isinstance(self.paper, dict), "'paper' must be a mapping")
        need(isinstance(self.verified, bool), "'verified' must be true or false")
        need(self.sha256 is None or (isinstance(self.sha256, str) and bool(_SHA256.fullmatch(self.sha256))),
             f"'sha256' must be null or 64 hex digits in quotes (got {str(self.sha256)[:80]!r}, "
             f"a {type(self.sha256).__name__}; YAML reads an unquoted all-digit hash as a number)")

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


def load_registry(directory: Path | None = None, formats: tuple[str, ...] = ("edm-pkl",)) -> dict[str, Checkpoint]:
    """The entries of ``checkpoints/*.yaml`` whose ``format`` is one of ``formats`` (other formats
    belong to other loaders), each validated (see :class:`Checkpoint`)."""
    import yaml

    directory = directory or REGISTRY_DIR
    out: dict[str, Checkpoint] = {}
    for yml in sorted(directory.glob("*.yaml")):
        try:
            doc = yaml.safe_load(yml.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise BenchError(f"checkpoint registry {yml} is not valid YAML ({str(exc).splitlines()[0]}); fix or remove it.") from None
        items = doc.get("checkpoints", []) if isinstance(doc, dict) else None
        if not isinstance(items, (list, type(None))):
            raise BenchError(f"checkpoint registry {yml}: 'checkpoints' must be a list of entries; fix the file.")
        for item in items or []:
            if not isinstance(item, dict) or item.get("format") not in formats:
                continue
            extra = set(item) - _FIELDS
            if extra or not item.get("name") or not item.get("url"):
                raise BenchError(f"checkpoint registry {yml}: entry {str(item.get('name', '?'))[:80]!r} needs name and url"
                                 f"{' and has unknown fields ' + ', '.join(sorted(map(str, extra))) if extra else ''}; fix the entry.")
            item = dict(item)
            if not isinstance(item["url"], str):
                raise BenchError(f"checkpoint registry {yml}: entry {str(item['name'])[:80]!r}: 'url' must be a string; fix the entry.")
            item.setdefault("file", Path(urlparse(item["url"]).path).name)
            item["paper"] = item.get("paper") or {}
            item["flags"] = item.get("flags") or {}
            try:
                ck = Checkpoint(**item)
            except BenchError as exc:
                raise BenchError(f"checkpoint registry {yml}: {exc}") from None
            if ck.name in out:
                raise BenchError(f"checkpoint registry {yml}: entry {ck.name!r} is defined twice; remove one.")
            out[ck.name] = ck
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


def _clear_hint(ck: Checkpoint) -> str:
    return f"run `bench download --clear {ck.name}` (or delete {ck.path.name}, {ck.record_path.name} and {ck.part_path.name} in {ck.path.parent})"


def _regular_or_absent(ck: Checkpoint, path: Path, allow_link: bool = False) -> bool:
    """True if ``path`` is a regular file, False if absent; anything else (a directory, or a link
    where we write) is refused."""
    if (path.is_symlink() and not allow_link) or (path.exists() and not path.is_file()):
        raise BenchError(f"cache entry {path} for '{ck.name}' is not a regular file; remove it and run again.")
    return path.exists()


def read_record(ck: Checkpoint) -> tuple[str, int | None] | None:
    """(sha256, size) recorded beside the cached file on first download, or None if there is none."""
    if not _regular_or_absent(ck, ck.record_path):
        return None
    try:
        lines = ck.record_path.read_text(errors="replace").splitlines()
    except OSError as exc:
        raise BenchError(f"cannot read {ck.record_path} ({exc.strerror or exc}); {_clear_hint(ck)}.") from None
    words = lines[0].split() if lines else []
    size = None
    for line in lines[1:]:
        m = re.fullmatch(r"# size (\d+)", line.strip())
        size = int(m.group(1)) if m else size
    if not words or not _SHA256.fullmatch(words[0]):
        raise BenchError(f"checksum record {ck.record_path} is malformed; {_clear_hint(ck)}.")
    return words[0].lower(), size


def recorded_sha256(ck: Checkpoint) -> str | None:
    rec = read_record(ck)
    return rec[0] if rec else None


def verify_checksum(ck: Checkpoint) -> str:
    """Check the cached file's size and SHA-256 against the registry (``size``, ``sha256`` pins) and
    against the record written on first download; write that record if there is none yet. Returns
    the file's SHA-256."""
    from sampler_bench.fileio import write_text

    if not _regular_or_absent(ck, ck.path, allow_link=True):
        raise BenchError(f"checkpoint '{ck.name}' is not cached at {ck.path}; run `bench download {ck.name}`.")
    rec = read_record(ck)
    size = ck.path.stat().st_size
    for expected, source in ((ck.size, "in the registry"), (rec[1] if rec else None, f"recorded in {ck.record_path.name}")):
        if expected is not None and size != expected:
            raise BenchError(f"size mismatch for '{ck.name}': {ck.path} has {size} bytes, expected {expected} ({source}); {_clear_hint(ck)}, then run again to download it afresh.")
    digest = sha256_file(ck.path)
    for expected, source in ((ck.sha256, "pinned in the registry"), (rec[0] if rec else None, f"recorded in {ck.record_path}")):
        if expected and digest != expected.lower():
            raise BenchError(f"checksum mismatch for '{ck.name}': {ck.path} has sha256 {digest[:16]}..., expected "
                             f"{expected[:16]}... ({source}); {_clear_hint(ck)}, then run again to download it afresh.")
    if rec is None:
        write_text(ck.record_path, f"{digest}  {ck.file}\n# size {size}\n")
    return digest


def clear_entry(ck: Checkpoint) -> list[Path]:
    """Delete the cached file of ``ck``, its checksum record and any partial download. Returns what was deleted."""
    gone = []
    for p in (ck.path, ck.record_path, ck.part_path):
        if p.is_symlink() or _regular_or_absent(ck, p):
            p.unlink()
            gone.append(p)
    return gone


# ---------------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------------


def _progress(desc: str, total: int | None, done: int, show: bool):
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    bar = Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn(), console=Console(stderr=True), disable=not show, transient=False)
    task = bar.add_task(desc, total=total, completed=done)
    return bar, task


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes START-END/TOTAL`` or ``bytes */TOTAL`` -> (START, TOTAL); None where absent."""
    m = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", (value or "").strip())
    if not m:
        return None, None
    return (int(m.group(1)) if m.group(1) else None), (int(m.group(2)) if m.group(2) != "*" else None)


def download(url: str, dest: Path, *, show_progress: bool = True, timeout: float = 60.0,
             expected_size: int | None = None, sha256: str | None = None, _retry: bool = True) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a previous partial download.

    A resume is kept only if the server answers 206 with a ``Content-Range`` that starts where the
    partial file ends; otherwise, and whenever the partial file is longer than the file, it is
    discarded and the download starts over (once). The result must have the announced size (and
    ``expected_size`` / ``sha256`` when given) or it is deleted."""
    check_url(url)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if part.is_symlink() or (part.exists() and not part.is_file()):
        raise BenchError(f"partial download {part} is not a regular file; remove it and run again.")
    have = part.stat().st_size if part.exists() else 0
    if expected_size is not None and have > expected_size:
        part.unlink()
        have = 0
    headers = {"User-Agent": "sampler_bench"}
    if have:
        headers["Range"] = f"bytes={have}-"
    where = f"put the file at {dest} (from {url})"

    def restart(reason: str) -> Path:
        part.unlink(missing_ok=True)
        if not _retry:
            raise BenchError(f"download of {url} failed ({reason}); run again, or {where}.")
        return download(url, dest, show_progress=show_progress, timeout=timeout, expected_size=expected_size,
                        sha256=sha256, _retry=False)

    try:
        resp = urlopen(Request(url, headers=headers), timeout=timeout)  # noqa: S310 -- https registry URLs only
    except HTTPError as exc:
        if exc.code == 416 and have:  # the partial file may already hold everything, or be longer/other
            _, total = _content_range(exc.headers.get("Content-Range") if exc.headers else None)
            if total is not None and total == have and expected_size in (None, have):
                return _finish_download(part, dest, url, sha256, where)
            return restart("the server refused to resume the partial download")
        raise BenchError(f"cannot download {url}: HTTP {exc.code} {str(exc.reason)[:80]}; {where}.") from None
    except (URLError, OSError, socket.timeout) as exc:
        reason = getattr(exc, "reason", exc)
        raise BenchError(f"cannot download {url} ({str(reason)[:120]}); if offline, {where}.") from None
    with resp:
        if urlparse(resp.geturl()).scheme != urlparse(url).scheme and urlparse(resp.geturl()).scheme != "https":
            raise BenchError(f"download of {url} was redirected to a non-https URL; {where}.")
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        total = None
        if have and resp.status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != have:
                resp.close()
                return restart("the server resumed at another offset")
        elif have:  # server ignored the Range header: start over
            have = 0
        if total is None and length is not None:
            total = have + length
        if total is not None and expected_size is not None and total != expected_size:
            raise BenchError(f"download of {url}: the server announces {total} bytes, the registry says {expected_size}; {where}.")
        bar, task = _progress(f"download {dest.name}", total, have, show_progress)
        try:
            with bar, open(part, "ab" if have else "wb") as f:
                while block := resp.read(CHUNK):
                    f.write(block)
                    bar.advance(task, len(block))
                    if total is not None and f.tell() > total:
                        break
        except (OSError, socket.timeout) as exc:
            got = part.stat().st_size if part.exists() else 0
            raise BenchError(f"download of {url} was interrupted after {got} bytes ({exc}); run again to resume, or {where}.") from None
    size = part.stat().st_size
    want = total if total is not None else expected_size
    if want is not None and size > want:
        part.unlink()
        raise BenchError(f"download of {url} is longer than the file ({size} > {want} bytes) and was deleted; run again.")
    if want is not None and size < want:
        raise BenchError(f"download of {url} is incomplete ({size} of {want} bytes); run again to resume, or {where}.")
    return _finish_download(part, dest, url, sha256, where)


def _finish_download(part: Path, dest: Path, url: str, sha256: str | None, where: str) -> Path:
    if sha256 and sha256_file(part) != sha256.lower():
        part.unlink()
        raise BenchError(f"download of {url} does not match the sha256 pinned in the registry and was deleted "
                         "(a corrupt partial download or a changed file); run again to download it afresh, or " + where + ".")
    os.replace(part, dest)
    return dest


def ensure_checkpoint(ck: Checkpoint, *, show_progress: bool = True) -> tuple[Path, str]:
    """The cached file for ``ck`` (downloaded if needed and allowed) and its verified SHA-256."""
    if not _regular_or_absent(ck, ck.path, allow_link=True):
        if offline():
            raise BenchError(f"checkpoint '{ck.name}' is not cached and downloads are off (SAMPLER_BENCH_OFFLINE); "
                             f"put {ck.file} (from {ck.url}) at {ck.path}.")
        _regular_or_absent(ck, ck.record_path)
        if ck.record_path.exists():  # a record without its file belongs to an earlier download
            ck.record_path.unlink()
        download(ck.url, ck.path, show_progress=show_progress and sys.stderr.isatty(), expected_size=ck.size, sha256=ck.sha256)
    return ck.path, verify_checksum(ck)


def cache_state(ck: Checkpoint) -> str:
    pin = "sha256 pinned" if ck.sha256 else "no sha256 pin"
    try:
        if _regular_or_absent(ck, ck.path, allow_link=True):
            if ck.sha256:
                return "cached, sha256 pinned"
            return "cached, sha256 recorded (no pin)" if recorded_sha256(ck) else "cached (no pin)"
        if _regular_or_absent(ck, ck.part_path):
            return f"partial download ({ck.part_path.stat().st_size / 1e6:.1f} MB; {pin})"
    except BenchError as exc:
        return f"bad cache entry ({str(exc)[:60]}...)"
    return f"not downloaded ({pin})"


KNOWN: dict[str, Checkpoint] = load_registry()
