"""`bench env`: what this machine is and what it holds, as a dict and as text.

Versions (sampler_bench, Python, torch, CUDA, cuDNN, key packages), GPUs (name, memory), the cache
root and its contents, the CI / scheduler variables that identify the job, and optionally what a
sweep needs and whether each piece is present. ``bench sweep`` saves this into ``OUT/env/`` so a CI
log can be read later.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import time
from importlib import metadata
from typing import Any

PACKAGES = ("numpy", "scipy", "torchvision", "torch-fidelity", "typer", "rich", "pyyaml", "pillow", "matplotlib")
JOB_VARS = ("SAMPLER_BENCH_CACHE", "SAMPLER_BENCH_OFFLINE", "SAMPLER_BENCH_INCEPTION_WEIGHTS", "SAMPLER_BENCH_SHARD_INDEX",
            "SAMPLER_BENCH_SHARD_COUNT", "CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT",
            "GITHUB_RUN_ID", "GITHUB_SHA", "GITHUB_REF", "CI_JOB_ID", "CI_COMMIT_SHA", "CI_NODE_INDEX", "CI_NODE_TOTAL")


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def collect(needs=None) -> dict[str, Any]:
    import torch

    from sampler_bench import __version__
    from sampler_bench.cache import cache_root, contents, offline

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "memory_gb": round(p.total_memory / 1e9, 1),
                         "capability": f"{p.major}.{p.minor}"})
    info: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "sampler_bench": __version__,
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpus": gpus,
        "packages": {p: _version(p) for p in PACKAGES},
        "cache_root": str(cache_root()),
        "offline": offline(),
        "cache": [{"folder": d, "files": n, "bytes": b} for d, n, b in contents()],
        "job": {k: os.environ[k] for k in JOB_VARS if os.environ.get(k)},
    }
    if needs is not None:
        info["needs"] = [n.as_dict() for n in needs]
    return info


def render(info: dict[str, Any]) -> str:
    from sampler_bench.cache import human_size

    lines = [f"sampler_bench {info['sampler_bench']} on {info['host']} ({info['platform']}), {info['time']}",
             f"python {info['python']} ({info['python_executable']}), {info['cpu_count']} CPUs",
             f"torch {info['torch']}, CUDA {info['cuda'] or 'none'} (available: {'yes' if info['cuda_available'] else 'no'}), cuDNN {info['cudnn'] or 'none'}"]
    for g in info["gpus"]:
        lines.append(f"gpu {g['index']}: {g['name']}, {g['memory_gb']} GB, compute capability {g['capability']}")
    if not info["gpus"]:
        lines.append("gpus: none visible")
    lines.append("packages: " + ", ".join(f"{k} {v or 'missing'}" for k, v in info["packages"].items()))
    lines.append(f"cache root: {info['cache_root']}" + ("  (offline: downloads are off)" if info["offline"] else ""))
    for c in info["cache"]:
        lines.append(f"  {c['folder']}/: {c['files']} file(s), {human_size(c['bytes'])}")
    if not info["cache"]:
        lines.append("  (empty)")
    for k, v in info["job"].items():
        lines.append(f"{k}={v}")
    if "needs" in info:
        lines.append(f"this sweep needs {len(info['needs'])} file(s) from outside" + (":" if info["needs"] else " (built-in models only)."))
        for n in info["needs"]:
            state = f"present, {human_size(n['size'])}" if n["present"] else "MISSING"
            lines.append(f"  {n['kind']} {n['name']}: {state}" + (f" at {n['path']}" if n["path"] else "") + (f" ({n['note']})" if n["note"] else ""))
    return "\n".join(lines) + "\n"


def save(out_dir, tag: str, info: dict[str, Any]) -> None:
    """Write ``OUT/env/<tag>.json`` and ``<tag>.txt`` (atomically; a re-run replaces its own files)."""
    from pathlib import Path

    from sampler_bench.fileio import write_json, write_text

    d = Path(out_dir) / "env"
    write_json(d / f"{tag}.json", info)
    write_text(d / f"{tag}.txt", render(info))
