"""Speed options of the sampling loop that leave the sampler's arithmetic alone.

- ``precision`` (``--precision``): ``fp32`` (default: nothing changes), ``fp16`` or ``bf16`` runs the
  network's UNet under ``torch.autocast`` with that dtype (convolutions and matmuls in reduced
  precision; the preconditioning stays float32). It changes the numbers, so it is off by default and
  recorded in the run's config and run.json. The solver state (float64, as EDM) and the float64
  analytic models are never affected. With a reduced precision on CUDA, TF32 is also allowed for the
  float32 matmuls/convolutions that remain; under ``fp32`` torch's TF32 settings are left as they are.
- ``channels_last`` (automatic for network models on CUDA): the network's weights in channels-last
  memory format, so cuDNN runs NHWC convolutions (the first convolution converts the input).
  Only the memory layout changes: fp32 results agree to float rounding.
- ``compile`` (``--compile``): ``torch.compile`` on the network module (in place, undone after the
  run); results agree with eager to float rounding.

Where float64 matters: the solver state and its update (as EDM's samplers: ``x`` and ``D`` are
float64, the network is called in float32 or its own dtype), the schedule and the exact metrics.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

from sampler_bench.errors import BenchError

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
COMPILE_KWARGS: dict[str, Any] = {}  # passed to torch.compile (the tests pick the cheap "eager" backend)


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise BenchError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}.")


@contextmanager
def network_options(model, device: torch.device, compile: bool = False, precision: str = "fp32",
                    channels_last: bool | None = None) -> Iterator[dict[str, Any]]:
    """Apply the precision, channels-last weights (default: on CUDA) and ``torch.compile`` to
    ``model.net`` for the duration of the block, and undo all of them afterwards (a sweep reuses the
    model across cells).

    ``precision`` fp16/bf16 autocasts the preconditioner's inner network (``net.model``) and casts
    its output back to float32, so the preconditioning (``c_skip x + c_out F``) stays in float32 as
    in EDM's own fp16 path; TF32 is allowed on CUDA meanwhile. Models without a ``net`` module (the
    analytic ones, float64) are left alone; the returned dict says what was applied (run.json).
    """
    check_precision(precision)
    net = getattr(model, "net", None)
    if not isinstance(net, torch.nn.Module):
        yield {"channels_last": False, "compile": False}
        return
    device = torch.device(device)
    cl = device.type == "cuda" if channels_last is None else bool(channels_last)
    dtype = PRECISIONS[precision]
    inner = getattr(net, "model", None) if dtype is not None else None
    tf32 = None
    if inner is not None:
        plain = inner.forward

        def autocast_forward(*args, **kwargs):
            with torch.autocast(device_type=device.type, dtype=dtype):
                out = plain(*args, **kwargs)
            return out.to(torch.float32)

        inner.forward = autocast_forward  # an instance attribute: deleting it restores the class's
        if device.type == "cuda":
            tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if cl:
        net.to(memory_format=torch.channels_last)
    if compile:
        net.compile(**COMPILE_KWARGS)  # nn.Module.compile: compiles __call__ in place, attributes stay where they are
    try:
        yield {"channels_last": cl, "compile": bool(compile)}
    finally:
        if compile:
            net._compiled_call_impl = None  # back to eager (what nn.Module.compile set)
        if cl:
            net.to(memory_format=torch.contiguous_format)
        if inner is not None:
            del inner.forward
        if tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
