"""``from sampler_bench.lazy import torch``: torch, imported on first use instead of at import time.

Listing commands (``bench solvers``, ``bench models``, ``bench refs``) import every solver family and
the model registry but never compute anything; importing torch would cost them 1-2 s. A module that
registers something on import (a solver family, a model family) therefore writes

    from sampler_bench.lazy import torch

instead of ``import torch`` and uses ``torch.xxx`` only inside functions (annotations are fine with
``from __future__ import annotations``). The first attribute read imports the real torch; after
that, reads are plain attribute lookups. ``tests/test_cli_fast.py`` fails when a listing imports
torch.
"""

from __future__ import annotations

import importlib
import types


class _LazyModule(types.ModuleType):
    def __init__(self, name: str):
        super().__init__(name)
        self.__dict__["_lazy_target"] = name

    def __getattr__(self, attr: str):
        real = importlib.import_module(self.__dict__["_lazy_target"])
        self.__dict__.update(real.__dict__)  # later reads no longer come here
        return getattr(real, attr)


torch = _LazyModule("torch")
