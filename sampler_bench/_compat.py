"""Import torchvision (and so torch_fidelity) on CPU torch with PyPI's CUDA-built torchvision.

PyPI's torchvision 0.28.0 wheel is built against CUDA. With CPU torch its C++ extension fails to
load, which torchvision tolerates, except that ``torchvision/_meta_registrations.py`` registers fake
kernels for ``torchvision::nms`` and ``torchvision::qnms`` without checking that the ops exist, and
torch 2.13 raises ``RuntimeError: operator torchvision::nms does not exist``. We first try the plain
import (it works wherever the C++ ops load, e.g. CUDA torch on a GPU machine) and only if it fails
declare the two op schemas and import again. torch-fidelity uses only torchvision's Python
transforms, never these ops. Import this module before anything imports torch_fidelity.
"""

from __future__ import annotations

import sys

import torch

_TV_LIB = None  # keeps the torch.library definitions alive for the life of the process


def ensure_torchvision() -> None:
    global _TV_LIB
    try:
        import torchvision  # noqa: F401
        return
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _TV_LIB = torch.library.Library("torchvision", "DEF")
    _TV_LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TV_LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision  # noqa: F401


ensure_torchvision()
