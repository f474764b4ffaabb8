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


# ---------------------------------------------------------------------------------------------
# DINOv2 and CLIP: random weight files (and, for DINOv2, a stand-in torch hub repository)
# ---------------------------------------------------------------------------------------------

_DINOV2_HUBCONF = '''"""Test stand-in for github.com/facebookresearch/dinov2's hubconf (offline): a ViT-S/14-shaped network
with DINOv2's interface (224x224 input, 14x14 patches, class token output of width 384)."""
import torch
from torch import nn

dependencies = ["torch"]


DEPTH, MLP = {depth}, {mlp}


class TinyViT(nn.Module):
    def __init__(self, dim=384):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=14, stride=14)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + 16 * 16, dim))
        layer = nn.TransformerEncoderLayer(dim, 6, dim_feedforward=MLP, batch_first=True, norm_first=True, dropout=0.0)
        self.blocks = nn.TransformerEncoder(layer, DEPTH, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))[:, 0]


def dinov2_vits14(pretrained=True, **kwargs):
    assert not pretrained, "the stand-in has no pretrained weights"
    return TinyViT()
'''


@functools.lru_cache(maxsize=None)
def fake_dinov2_repo(depth: int = 1, mlp: int = 128) -> Path:
    """A local torch hub repository whose ``dinov2_vits14`` builds a ViT of ``depth`` blocks (for
    $SAMPLER_BENCH_DINOV2_REPO). depth=1 for tests; depth=12, mlp=1536 has ViT-S/14's size and cost."""
    tmp = Path(tempfile.mkdtemp(prefix="sb_dinov2_repo_"))
    atexit.register(shutil.rmtree, tmp, True)
    (tmp / "hubconf.py").write_text(_DINOV2_HUBCONF.replace("{depth}", str(depth)).replace("{mlp}", str(mlp)))
    return tmp


@functools.lru_cache(maxsize=None)
def random_dinov2_weights(depth: int = 1, mlp: int = 128) -> Path:
    """Random weights (plain state dict, seeded) for the stand-in ``dinov2-vit-s-14`` network."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = torch.hub.load(str(fake_dinov2_repo(depth, mlp)), "dinov2_vits14", source="local", pretrained=False)
        with torch.no_grad():
            net.cls_token.normal_(0, 0.5)
            net.pos_embed.normal_(0, 0.5)
    tmp = Path(tempfile.mkdtemp(prefix="sb_dinov2_w_"))
    atexit.register(shutil.rmtree, tmp, True)
    path = tmp / "dinov2_vits14_random.pth"
    torch.save(net.state_dict(), path)
    return path


@functools.lru_cache(maxsize=None)
def random_clip_weights(torchscript: bool = True, full_size: bool = False) -> Path:
    """Random weights for torch-fidelity's own CLIP ViT architecture at a small size (width 64, one layer,
    32x32 input, 512-wide embedding as clip-vit-b-32), saved as a TorchScript archive like OpenAI's files
    (or as a plain state dict). ``full_size``: ViT-B/32's real size (224 input, width 768, 12 layers)."""
    from torch import nn
    from torch_fidelity.feature_extractor_clip import CLIPVisual

    class _Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = (CLIPVisual(512, 224, 12, 768, 32) if full_size else CLIPVisual(512, 32, 1, 64, 16)).visual
            self.text_projection = nn.Parameter(torch.randn(768 if full_size else 64, 512) * 0.05)

        def forward(self, x):
            return x * self.text_projection.sum()

    with torch.random.fork_rng():
        torch.manual_seed(1)
        holder = _Holder().eval()
    tmp = Path(tempfile.mkdtemp(prefix="sb_clip_w_"))
    atexit.register(shutil.rmtree, tmp, True)
    path = tmp / ("clip_random.pt" if torchscript else "clip_random.pth")
    if torchscript:
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.jit is deprecated in torch 2.13
            torch.jit.save(torch.jit.trace(holder, torch.zeros(1)), str(path))
    else:
        torch.save(holder.state_dict(), path)
    return path


class ImageDataset(torch.utils.data.Dataset):
    """uint8 NHWC images as the NCHW uint8 dataset torch-fidelity's ``calculate_metrics`` reads
    (the benchmark scripts compare against it on the same images)."""

    def __init__(self, images_nhwc):
        self.x = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).contiguous()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]
