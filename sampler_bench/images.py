"""Image helpers shared by sampling, metrics and reports (a low module: it imports nothing of ours)."""

from __future__ import annotations

import numpy as np
import torch


def quantize(x: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) float in [-1,1] -> (B,H,W,C) uint8, EDM's convention."""
    return (x * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def make_grid(images: np.ndarray, max_images: int = 64) -> np.ndarray:
    """NHWC uint8 -> one HWC picture, up to ``max_images`` tiles, as square as possible."""
    imgs = images[:max_images]
    n, h, w, c = imgs.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    pad = 2
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i, im in enumerate(imgs):
        r, q = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = im
    return grid
