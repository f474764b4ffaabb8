"""How much memory a network's forward pass needs, and how much the device has, so that a request
that cannot fit is refused with the size it needs instead of failing inside an allocation."""

from __future__ import annotations

import os
import re
import resource

import torch


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device`` (None if unknown). On the CPU: the smaller of
    the system's available memory and what the address-space limit (``ulimit -v``) leaves."""
    device = torch.device(device)
    if device.type == "cuda":
        try:  # free memory plus what torch's caching allocator holds but does not use
            free = int(torch.cuda.mem_get_info(device)[0])
            return free + int(torch.cuda.memory_reserved(device)) - int(torch.cuda.memory_allocated(device))
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    have = None
    try:
        m = re.search(r"^MemAvailable:\s+(\d+) kB", open("/proc/meminfo").read(), re.M)
        have = int(m.group(1)) * 1024 if m else None
    except OSError:
        pass
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            used = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            left = max(soft - used, 0)
            have = left if have is None else min(have, left)
    except (OSError, ValueError, AttributeError):
        pass
    return have


def activation_bytes(net, batch: int) -> int:
    """An estimate of the peak activation memory of an EDM U-Net forward pass (float32): the skip
    tensors the encoder keeps, plus the largest block's working set (its inputs, outputs and
    intermediates, and for attention the (H W)^2 weights of every head, twice)."""
    model = net.model
    res = int(net.img_resolution)
    elems = 4 * int(net.img_channels) * res * res  # input, scaled input, output, D
    skips, work = 0, 0
    for part in ("enc", "dec"):
        for name, block in getattr(model, part).items():
            m = re.match(r"(\d+)x\d+_", name)
            r = int(m.group(1)) if m else res
            cin = int(getattr(block, "in_channels", 0) or 0)
            cout = int(getattr(block, "out_channels", 0) or 0)
            w = (2 * cin + 5 * cout) * r * r
            heads = int(getattr(block, "num_heads", 0) or 0)
            if heads:
                w += 4 * cout * r * r + 2 * heads * (r * r) ** 2
            work = max(work, w)
            if part == "enc" and "aux" not in name:
                skips += cout * r * r
    return 4 * batch * (elems + skips + work)
