"""torchrun support: one run directory written by several processes, as one process would write it.

Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` set in the environment)
every process runs the same command. :func:`current` joins the process group (NCCL for CUDA, gloo
on CPU) the first time it is asked for; without torchrun it is a world of one and costs nothing.

How a run is split (as EDM's ``generate.py``): the seeds are cut into batches of ``--batch`` and
batch k goes to rank ``k % world``. Per-sample generators make sample i the same on any rank, so the
images are bit-identical for any world size. The work proceeds in *rounds* (round r: batch
``r*world + rank`` on each rank); after each round the ranks exchange a small status (done count, or
the error a rank raised), so a rank that raises makes every rank stop at the same point and rank 0
reports ``rank K failed: ...``. Images go straight from each rank into the shared memory-mapped
image file of the run being built (the output directory must be on a filesystem every rank sees,
as with EDM's ``generate.py``); metric consumers reduce their float64 sums, nothing gathers images.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sampler_bench.errors import BenchError

_CURRENT: "Dist | None" = None


class RankFailed(BenchError):
    """Raised on the ranks other than 0 when some rank failed; rank 0 raises (and prints) the real error."""


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives (no-ops in a world of one) ------------------------------------------------

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as td

            with _lost_peer():
                td.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        import torch.distributed as td

        out: list[Any] = [None] * self.world
        with _lost_peer():
            td.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.enabled:
            return obj
        import torch.distributed as td

        box = [obj]
        with _lost_peer():
            td.broadcast_object_list(box, src=src)
        return box[0]

    def agree(self, error: BaseException | None) -> None:
        """A round's end: raise on every rank if any rank failed (rank 0 raises that rank's error)."""
        states = self.all_gather_object(None if error is None else _describe(error))
        bad = [(r, s) for r, s in enumerate(states) if s is not None]
        if not bad:
            return
        if not self.enabled or (self.is_main and bad[0][0] == 0):
            raise error  # type: ignore[misc]  -- this rank's own error, as one process would raise it
        if self.is_main:
            r, (kind, msg) = bad[0]
            text = msg if kind == "BenchError" else f"{kind}: {msg}"
            raise BenchError(f"rank {r} of {self.world} failed: {text}")
        raise RankFailed(f"rank {bad[0][0]} failed")  # quiet: rank 0 prints the error


@contextlib.contextmanager
def _lost_peer():
    """A collective that breaks because another rank died (gloo: connection closed; NCCL: timeout or
    abort) is one line, not a traceback: torchrun's summary names the rank that died."""
    try:
        yield
    except RuntimeError as exc:
        raise BenchError(f"lost contact with another rank of this torchrun job ({' '.join(str(exc).split())[:200]}); "
                         "it most likely died: see torchrun's summary. Nothing half-written was left behind.") from None


def _describe(exc: BaseException) -> tuple[str, str]:
    return type(exc).__name__, " ".join(str(exc).split())


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside torchrun."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        return 0, 1, 0
    return (rank, world, local) if world > 1 else (0, 1, 0)


def is_main_process() -> bool:
    """Rank 0, or not under torchrun (for printing; does not join the group)."""
    return env_world()[0] == 0


def current(device: str = "auto") -> Dist:
    """The process group of this run, joined on first use (gloo on CPU, NCCL when running on CUDA)."""
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    rank, world, local = env_world()
    if world == 1:
        _CURRENT = Dist()
        return _CURRENT
    import torch
    import torch.distributed as td

    use_cuda = device != "cpu" and torch.cuda.is_available()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError("--device cuda was asked for but no CUDA device is available; use --device cpu or auto.")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
    if not td.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get("SAMPLER_BENCH_DIST_TIMEOUT", "1800")))
        td.init_process_group(backend=backend, timeout=timeout)
    _CURRENT = Dist(rank=td.get_rank(), world=td.get_world_size(), local_rank=local, backend=backend)
    return _CURRENT


def local_device(device, dist: Dist):
    """Under torchrun each rank uses its own GPU: ``cuda`` becomes ``cuda:LOCAL_RANK``."""
    import torch

    device = torch.device(device)
    if dist.enabled and device.type == "cuda" and device.index is None:
        return torch.device("cuda", dist.local_rank % torch.cuda.device_count())
    return device


def shutdown() -> None:
    global _CURRENT
    if _CURRENT is not None and _CURRENT.enabled:
        import torch.distributed as td

        if td.is_initialized():
            td.destroy_process_group()
    _CURRENT = None
