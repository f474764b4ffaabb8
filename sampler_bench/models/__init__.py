"""Everything that turns a checkpoint or a formula into a sigma-space denoiser.

``Denoiser`` and ``BoundDenoiser`` (``models/base.py``) are loaded on first use, so that importing the
registry for ``bench models`` does not import torch.
"""


def __getattr__(name):
    if name in ("BoundDenoiser", "Denoiser"):
        from sampler_bench.models import base

        return getattr(base, name)
    raise AttributeError(f"module 'sampler_bench.models' has no attribute {name!r}")
