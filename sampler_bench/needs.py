"""What a sweep needs from outside before its first cell: checkpoints, reference statistics and
feature-extractor weights, where each lives in the cache and whether it is there.

Used by ``bench download CONFIG`` (fetch what is missing, print sizes), ``bench env CONFIG`` (show
it) and ``bench sweep --offline`` (refuse to start when something is missing). Nothing is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sampler_bench.errors import BenchError


@dataclass
class Need:
    kind: str  # checkpoint, reference statistics, Inception weights, model
    name: str
    path: Path | None  # where it is (or will be) on disk; None when we cannot tell
    url: str | None = None
    fetch: Callable[[], Any] | None = None  # downloads it into the cache (None: cannot be fetched by bench)
    note: str = ""

    @property
    def present(self) -> bool:
        return self.path is not None and self.path.is_file()

    @property
    def size(self) -> int | None:
        return self.path.stat().st_size if self.present else None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "path": str(self.path) if self.path else None, "present": self.present,
                "size": self.size, "url": self.url, "note": self.note}


def _model_need(spec: str) -> Need | None:
    from sampler_bench.models.checkpoints import KNOWN, ensure_checkpoint
    from sampler_bench.models.registry import MODELS

    name = spec.partition(":")[0]
    if name in KNOWN:
        ck = KNOWN[name]
        return Need("checkpoint", name, ck.path, ck.url, lambda: ensure_checkpoint(ck))
    if name in MODELS:
        try:
            state = MODELS[name].status()
        except Exception as exc:  # a status probe must never break env / download
            state = f"unknown ({exc})"
        return None if state == "built in" else Need("model", spec, None, note=f"registered, state: {state}")
    p = Path(spec).expanduser()
    return Need("checkpoint file", spec, p, note="" if p.is_file() else "not found; pass an existing checkpoint path")


def _ref_need(ref: str) -> Need:
    from sampler_bench.metrics.refs import KNOWN_REFS, cache_dir, resolve_ref

    p = Path(ref).expanduser()
    entry = KNOWN_REFS.get(ref) or KNOWN_REFS.get(ref.removesuffix(".npz"))
    if p.is_file() or entry is None:
        return Need("reference statistics", ref, p, note="" if p.is_file() else "not a known name and no such file")
    return Need("reference statistics", entry.name, cache_dir() / entry.filename, entry.url, lambda: resolve_ref(entry.name))


def _weights_need(explicit: str | None) -> Need:
    from sampler_bench.metrics import inception

    if explicit:
        return Need("Inception weights", inception.WEIGHTS_FILENAME, Path(explicit).expanduser(), inception.WEIGHTS_URL,
                    note="from the config's metrics.inception_weights")
    env = os.environ.get(inception.WEIGHTS_ENV)
    if env:
        return Need("Inception weights", inception.WEIGHTS_FILENAME, Path(env).expanduser(), inception.WEIGHTS_URL,
                    note=f"from ${inception.WEIGHTS_ENV}")
    hub = inception.hub_cache_path()
    path = hub if (hub.is_file() and not inception.cache_path().is_file()) else inception.cache_path()
    return Need("Inception weights", inception.WEIGHTS_FILENAME, path, inception.WEIGHTS_URL,
                lambda: inception.resolve_weights(None), note="torch hub cache" if path == hub else "")


def sweep_needs(cells) -> list[Need]:
    """Everything the given sweep cells need that is not built in (skipped cells need nothing)."""
    cells = [c for c in cells if not c.skip_reason]
    needs: list[Need] = []
    for spec in dict.fromkeys(c.cfg.model for c in cells):
        n = _model_need(spec)
        if n is not None:
            needs.append(n)
    for ref in dict.fromkeys(c.cfg.fid_ref for c in cells if c.cfg.fid_ref):
        needs.append(_ref_need(ref))
    inception_cells = [c for c in cells if c.cfg.fid_ref or any(m in ("kid", "isc") for m in c.cfg.metrics)]
    for w in dict.fromkeys(c.cfg.inception_weights for c in inception_cells):
        needs.append(_weights_need(w))
    return needs


def missing_error(missing: list[Need], config: str) -> BenchError:
    what = "; ".join(f"{n.kind} '{n.name}'" + (f" (put it at {n.path}" + (f", from {n.url})" if n.url else ")") if n.path else f" ({n.note})")
                     for n in missing)
    return BenchError(f"offline (SAMPLER_BENCH_OFFLINE): {len(missing)} file(s) this sweep needs are not present: {what}; "
                      f"run `bench download {config}` where the network is reachable, with the same SAMPLER_BENCH_CACHE.")
