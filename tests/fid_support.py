"""Test support: a randomly initialised ``inception-v3-compat`` weight file, built once per process.

It has exactly the keys and shapes of torch-fidelity's extractor (566 keys, 23.9 M parameters,
~96 MB), so the real extractor code path runs offline. Features from random weights have tiny
variance: good for plumbing, equality and determinism checks, not for FID scales.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import torch

from sampler_bench import _compat  # noqa: F401


@functools.lru_cache(maxsize=1)
def random_inception_weights() -> Path:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, *a, **k):
            return None

    tmp = Path(tempfile.mkdtemp(prefix="sb_inception_"))
    atexit.register(shutil.rmtree, tmp, True)
    torch.save({}, tmp / "empty.pth")
    sd = _Skeleton("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(tmp / "empty.pth")).state_dict()
    g = torch.Generator().manual_seed(0)
    out = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.zeros_like(v)
        elif k.endswith("conv.weight"):
            fan_in = v[0].numel()
            out[k] = torch.randn(v.shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif k.endswith("bn.weight"):
            out[k] = torch.ones_like(v)
        elif k.endswith("bn.bias"):
            out[k] = torch.zeros_like(v)
        elif k.endswith("running_mean"):
            out[k] = torch.randn(v.shape, generator=g) * 0.01
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) * 0.5 + 0.75
        else:  # fc
            out[k] = torch.randn(v.shape, generator=g) * 0.01
    path = tmp / "weights-inception-random.pth"
    torch.save(out, path)
    return path
