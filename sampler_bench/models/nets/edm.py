"""EDM networks (Karras et al. 2022): SongUNet (DDPM++ / NCSN++), DhariwalUNet (ADM) and the four
preconditioners (VP, VE, iDDPM, EDM), written from the description in
``research/checkpoints.md`` section 1.5.1 / 2.1.

Class names, constructor signatures, attribute names and state-dict keys follow NVlabs' EDM
``training/networks.py`` so that the published pickles load into these classes with
``load_state_dict(strict=True)``. Every class records its constructor arguments in
``_init_args`` / ``_init_kwargs`` (as EDM's ``persistence.persistent_class`` does), which is what
the EDM pickle stores and what :mod:`sampler_bench.models.edm` rebuilds from.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import math

import numpy as np
import torch
from torch.nn.functional import silu


def recorded(cls):
    """Class decorator: remember deep copies of the constructor arguments on the instance."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._init_args = copy.deepcopy(args)
        self._init_kwargs = copy.deepcopy(kwargs)

    cls.__init__ = __init__
    cls._edm_persistent = True
    return cls


_SKIP_INIT = contextvars.ContextVar("edm_skip_init", default=False)


@contextlib.contextmanager
def skip_init():
    """Build networks with uninitialised weights (they are about to be loaded from a file)."""
    token = _SKIP_INIT.set(True)
    try:
        yield
    finally:
        _SKIP_INIT.reset(token)


def _init_tensor(shape, mode, fan_in, fan_out):
    """Random initial weights (only matters for freshly built networks, e.g. tiny test nets)."""
    if _SKIP_INIT.get():
        return torch.empty(*shape)
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"unknown init mode {mode!r}")


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


@recorded
class Linear(torch.nn.Module):
    def __init__(self, in_features, out_features, bias=True, init_mode="kaiming_normal", init_weight=1, init_bias=0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = torch.nn.Parameter(_init_tensor([out_features, in_features], **fans) * init_weight)
        self.bias = torch.nn.Parameter(_init_tensor([out_features], **fans) * init_bias) if bias else None

    def forward(self, x):
        y = x @ self.weight.to(x.dtype).t()
        return y if self.bias is None else y.add_(self.bias.to(x.dtype))


def _resample_kernel(taps) -> torch.Tensor:
    f = torch.as_tensor(taps, dtype=torch.float32)
    return (torch.outer(f, f) / f.sum().square()).reshape(1, 1, len(taps), len(taps))


@recorded
class Conv2d(torch.nn.Module):
    """Convolution with optional 2x up/down resampling by a separable FIR filter (fused or not)."""

    def __init__(self, in_channels, out_channels, kernel, bias=True, up=False, down=False,
                 resample_filter=[1, 1], fused_resample=False, init_mode="kaiming_normal", init_weight=1, init_bias=0):
        if up and down:
            raise ValueError("Conv2d cannot both upsample and downsample")
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.weight = (torch.nn.Parameter(_init_tensor([out_channels, in_channels, kernel, kernel], **fans) * init_weight)
                       if kernel else None)
        self.bias = torch.nn.Parameter(_init_tensor([out_channels], **fans) * init_bias) if kernel and bias else None
        self.register_buffer("resample_filter", _resample_kernel(resample_filter) if (up or down) else None)

    def forward(self, x):
        F = torch.nn.functional
        w = None if self.weight is None else self.weight.to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        f = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        wp = 0 if w is None else w.shape[-1] // 2
        fp = 0 if f is None else (f.shape[-1] - 1) // 2
        if self.fused_resample and self.up and w is not None:
            x = F.conv_transpose2d(x, (f * 4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                                   stride=2, padding=max(fp - wp, 0))
            x = F.conv2d(x, w, padding=max(wp - fp, 0))
        elif self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=wp + fp)
            x = F.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.up:
                x = F.conv_transpose2d(x, (f * 4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                                       stride=2, padding=fp)
            if self.down:
                x = F.conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=fp)
            if w is not None:
                x = F.conv2d(x, w, padding=wp)
        if b is not None:
            x = x.add_(b.reshape(1, -1, 1, 1))
        return x


@recorded
class GroupNorm(torch.nn.Module):
    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        return torch.nn.functional.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


def _attention_weights(q, k):
    """softmax_k(q . k / sqrt(C)) computed in float32, returned in q's dtype. q, k: (N, C, L)."""
    logits = torch.einsum("ncq,nck->nqk", q.to(torch.float32), (k / np.sqrt(k.shape[1])).to(torch.float32))
    return logits.softmax(dim=2).to(q.dtype)


@recorded
class UNetBlock(torch.nn.Module):
    """Residual block with optional up/down resampling and self-attention (DDPM++, NCSN++, ADM)."""

    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False, attention=False,
                 num_heads=None, channels_per_head=64, dropout=0, skip_scale=1, eps=1e-5,
                 resample_filter=[1, 1], resample_proj=False, adaptive_scale=True,
                 init=dict(), init_zero=dict(init_weight=0), init_attn=None):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(num_channels=in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels=in_channels, out_channels=out_channels, kernel=3, up=up, down=down,
                            resample_filter=resample_filter, **init)
        self.affine = Linear(in_features=emb_channels, out_features=out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(num_channels=out_channels, eps=eps)
        self.conv1 = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            k = 1 if (resample_proj or out_channels != in_channels) else 0
            self.skip = Conv2d(in_channels=in_channels, out_channels=out_channels, kernel=k, up=up, down=down,
                               resample_filter=resample_filter, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(num_channels=out_channels, eps=eps)
            self.qkv = Conv2d(in_channels=out_channels, out_channels=out_channels * 3, kernel=1,
                              **(init if init_attn is None else init_attn))
            self.proj = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=1, **init_zero)

    def forward(self, x, emb):
        h = self.conv0(silu(self.norm0(x)))
        p = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = p.chunk(2, dim=1)
            h = silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = silu(self.norm1(h.add_(p)))
        h = self.conv1(torch.nn.functional.dropout(h, p=self.dropout, training=self.training))
        h = h.add_(x if self.skip is None else self.skip(x)) * self.skip_scale
        if self.num_heads:
            n, c = h.shape[0], h.shape[1]
            # channel layout of qkv: head * 3 * ch + c * 3 + {q, k, v}
            q, k, v = self.qkv(self.norm2(h)).reshape(n * self.num_heads, c // self.num_heads, 3, -1).unbind(2)
            w = _attention_weights(q, k)
            a = torch.einsum("nqk,nck->ncq", w, v)
            h = self.proj(a.reshape(*h.shape)).add_(h) * self.skip_scale
        return h


@recorded
class PositionalEmbedding(torch.nn.Module):
    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x):
        half = self.num_channels // 2
        i = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** i
        a = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([a.cos(), a.sin()], dim=1)


@recorded
class FourierEmbedding(torch.nn.Module):
    def __init__(self, num_channels, scale=16):
        super().__init__()
        self.register_buffer("freqs", (torch.empty if _SKIP_INIT.get() else torch.randn)(num_channels // 2) * scale)

    def forward(self, x):
        a = torch.outer(x, (2 * np.pi * self.freqs).to(x.dtype))
        return torch.cat([a.cos(), a.sin()], dim=1)


# ---------------------------------------------------------------------------------------------
# U-Nets
# ---------------------------------------------------------------------------------------------


@recorded
class SongUNet(torch.nn.Module):
    """DDPM++ (positional embedding, standard encoder) and NCSN++ (Fourier embedding, residual
    encoder, [1,3,3,1] filter) U-Nets of Song et al. 2021, in EDM's formulation."""

    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0,
                 model_channels=128, channel_mult=[1, 2, 2, 2], channel_mult_emb=4, num_blocks=4,
                 attn_resolutions=[16], dropout=0.10, label_dropout=0, embedding_type="positional",
                 channel_mult_noise=1, encoder_type="standard", decoder_type="standard", resample_filter=[1, 1]):
        if embedding_type not in ("fourier", "positional"):
            raise ValueError(f"SongUNet: unknown embedding_type {embedding_type!r}")
        if encoder_type not in ("standard", "skip", "residual"):
            raise ValueError(f"SongUNet: unknown encoder_type {encoder_type!r}")
        if decoder_type not in ("standard", "skip"):
            raise ValueError(f"SongUNet: unknown decoder_type {decoder_type!r}")
        super().__init__()
        self.label_dropout = label_dropout
        emb_ch = model_channels * channel_mult_emb
        noise_ch = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=np.sqrt(0.2))
        bk = dict(emb_channels=emb_ch, num_heads=1, dropout=dropout, skip_scale=np.sqrt(0.5), eps=1e-6,
                  resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
                  init=init, init_zero=init_zero, init_attn=init_attn)

        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(num_channels=noise_ch, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(num_channels=noise_ch)
        self.map_label = Linear(in_features=label_dim, out_features=noise_ch, **init) if label_dim else None
        self.map_augment = (Linear(in_features=augment_dim, out_features=noise_ch, bias=False, **init)
                            if augment_dim else None)
        self.map_layer0 = Linear(in_features=noise_ch, out_features=emb_ch, **init)
        self.map_layer1 = Linear(in_features=emb_ch, out_features=emb_ch, **init)

        self.enc = torch.nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            r = img_resolution >> level
            tag = f"{r}x{r}"
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{tag}_conv"] = Conv2d(in_channels=cin, out_channels=cout, kernel=3, **init)
            else:
                self.enc[f"{tag}_down"] = UNetBlock(in_channels=cout, out_channels=cout, down=True, **bk)
                if encoder_type == "skip":
                    self.enc[f"{tag}_aux_down"] = Conv2d(in_channels=caux, out_channels=caux, kernel=0, down=True,
                                                         resample_filter=resample_filter)
                    self.enc[f"{tag}_aux_skip"] = Conv2d(in_channels=caux, out_channels=cout, kernel=1, **init)
                if encoder_type == "residual":
                    self.enc[f"{tag}_aux_residual"] = Conv2d(in_channels=caux, out_channels=cout, kernel=3, down=True,
                                                             resample_filter=resample_filter, fused_resample=True, **init)
                    caux = cout
            for i in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{tag}_block{i}"] = UNetBlock(in_channels=cin, out_channels=cout,
                                                        attention=(r in attn_resolutions), **bk)
        skip_ch = [m.out_channels for name, m in self.enc.items() if "aux" not in name]

        self.dec = torch.nn.ModuleDict()
        deepest = len(channel_mult) - 1
        for level in range(deepest, -1, -1):
            mult = channel_mult[level]
            r = img_resolution >> level
            tag = f"{r}x{r}"
            if level == deepest:
                self.dec[f"{tag}_in0"] = UNetBlock(in_channels=cout, out_channels=cout, attention=True, **bk)
                self.dec[f"{tag}_in1"] = UNetBlock(in_channels=cout, out_channels=cout, **bk)
            else:
                self.dec[f"{tag}_up"] = UNetBlock(in_channels=cout, out_channels=cout, up=True, **bk)
            for i in range(num_blocks + 1):
                cin, cout = cout + skip_ch.pop(), model_channels * mult
                self.dec[f"{tag}_block{i}"] = UNetBlock(in_channels=cin, out_channels=cout,
                                                        attention=(i == num_blocks and r in attn_resolutions), **bk)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < deepest:
                    self.dec[f"{tag}_aux_up"] = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=0,
                                                       up=True, resample_filter=resample_filter)
                self.dec[f"{tag}_aux_norm"] = GroupNorm(num_channels=cout, eps=1e-6)
                self.dec[f"{tag}_aux_conv"] = Conv2d(in_channels=cout, out_channels=out_channels, kernel=3, **init_zero)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # [cos, sin] -> [sin, cos]
        if self.map_label is not None:
            emb = emb + self.map_label(class_labels * np.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer1(silu(self.map_layer0(emb))))

        skips, aux = [], x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / np.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        aux = tmp = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux


@recorded
class DhariwalUNet(torch.nn.Module):
    """ADM U-Net of Dhariwal & Nichol 2021, in EDM's formulation."""

    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0,
                 model_channels=192, channel_mult=[1, 2, 3, 4], channel_mult_emb=4, num_blocks=3,
                 attn_resolutions=[32, 16, 8], dropout=0.10, label_dropout=0):
        super().__init__()
        self.label_dropout = label_dropout
        emb_ch = model_channels * channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight=np.sqrt(1 / 3), init_bias=np.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
        bk = dict(emb_channels=emb_ch, channels_per_head=64, dropout=dropout, init=init, init_zero=init_zero)

        self.map_noise = PositionalEmbedding(num_channels=model_channels)
        self.map_augment = (Linear(in_features=augment_dim, out_features=model_channels, bias=False, **init_zero)
                            if augment_dim else None)
        self.map_layer0 = Linear(in_features=model_channels, out_features=emb_ch, **init)
        self.map_layer1 = Linear(in_features=emb_ch, out_features=emb_ch, **init)
        self.map_label = (Linear(in_features=label_dim, out_features=emb_ch, bias=False, init_mode="kaiming_normal",
                                 init_weight=np.sqrt(label_dim)) if label_dim else None)

        self.enc = torch.nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            r = img_resolution >> level
            tag = f"{r}x{r}"
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{tag}_conv"] = Conv2d(in_channels=cin, out_channels=cout, kernel=3, **init)
            else:
                self.enc[f"{tag}_down"] = UNetBlock(in_channels=cout, out_channels=cout, down=True, **bk)
            for i in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{tag}_block{i}"] = UNetBlock(in_channels=cin, out_channels=cout,
                                                        attention=(r in attn_resolutions), **bk)
        skip_ch = [m.out_channels for m in self.enc.values()]

        self.dec = torch.nn.ModuleDict()
        deepest = len(channel_mult) - 1
        for level in range(deepest, -1, -1):
            mult = channel_mult[level]
            r = img_resolution >> level
            tag = f"{r}x{r}"
            if level == deepest:
                self.dec[f"{tag}_in0"] = UNetBlock(in_channels=cout, out_channels=cout, attention=True, **bk)
                self.dec[f"{tag}_in1"] = UNetBlock(in_channels=cout, out_channels=cout, **bk)
            else:
                self.dec[f"{tag}_up"] = UNetBlock(in_channels=cout, out_channels=cout, up=True, **bk)
            for i in range(num_blocks + 1):
                cin, cout = cout + skip_ch.pop(), model_channels * mult
                self.dec[f"{tag}_block{i}"] = UNetBlock(in_channels=cin, out_channels=cout,
                                                        attention=(r in attn_resolutions), **bk)
        self.out_norm = GroupNorm(num_channels=cout)
        self.out_conv = Conv2d(in_channels=cout, out_channels=out_channels, kernel=3, **init_zero)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self.map_noise(noise_labels)  # [cos, sin], no swap
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(silu(self.map_layer0(emb)))
        if self.map_label is not None:
            emb = emb + self.map_label(class_labels)
        emb = silu(emb)
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(silu(self.out_norm(x)))


ARCHITECTURES = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


# ---------------------------------------------------------------------------------------------
# Preconditioners: D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)   (EDM paper, Table 1)
# ---------------------------------------------------------------------------------------------


class _Precond(torch.nn.Module):
    out_mult = 1  # inner network output channels per image channel

    def _setup(self, img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs):
        if model_type not in ARCHITECTURES:
            raise ValueError(f"unknown model_type {model_type!r}; expected one of {', '.join(ARCHITECTURES)}")
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16

    def _build_model(self, model_type, model_kwargs):
        self.model = ARCHITECTURES[model_type](img_resolution=self.img_resolution, in_channels=self.img_channels,
                                               out_channels=self.img_channels * self.out_mult,
                                               label_dim=self.label_dim, **model_kwargs)

    def coefficients(self, sigma):
        """(c_skip, c_out, c_in, c_noise) for float32 sigma of shape (N, 1, 1, 1)."""
        raise NotImplementedError

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        dtype = torch.float16 if (self.use_fp16 and not force_fp32 and x.device.type == "cuda") else torch.float32
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        if F_x.dtype != dtype:
            raise RuntimeError(f"network returned {F_x.dtype}, expected {dtype}")
        return c_skip * x + c_out * F_x[:, : self.img_channels].to(torch.float32)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)


@recorded
class VPPrecond(_Precond):
    """VP preconditioning (Song et al. 2021), EDM Table 1 column 'VP'."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, beta_d=19.9, beta_min=0.1,
                 M=1000, epsilon_t=1e-5, model_type="SongUNet", **model_kwargs):
        super().__init__()
        self._setup(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.M = M
        self.epsilon_t = epsilon_t
        self.sigma_min = float(self.sigma(epsilon_t))
        self.sigma_max = float(self.sigma(1))
        self._build_model(model_type, model_kwargs)

    def sigma(self, t):
        t = torch.as_tensor(t, dtype=torch.float32, device="cpu") if not torch.is_tensor(t) else t
        return ((0.5 * self.beta_d * t**2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma):
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma):
        return 1, -sigma, 1 / (sigma**2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)


@recorded
class VEPrecond(_Precond):
    """VE preconditioning (Song et al. 2021), EDM Table 1 column 'VE'."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0.02, sigma_max=100,
                 model_type="SongUNet", **model_kwargs):
        super().__init__()
        self._setup(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self._build_model(model_type, model_kwargs)

    def coefficients(self, sigma):
        return 1, sigma, 1, (0.5 * sigma).log()


def iddpm_u_grid(M=1000, C_1=0.001, C_2=0.008, dtype=torch.float32) -> torch.Tensor:
    """u[M] = 0, u[j-1] = sqrt((u[j]^2 + 1) / max(abar(j-1)/abar(j), C_1) - 1), abar(j) = sin^2(pi j / (2 M (1 + C_2)))."""
    def abar(j):  # in float32 this equals EDM's int-tensor arithmetic
        jt = torch.as_tensor(j, dtype=dtype, device="cpu")
        return (0.5 * np.pi * jt / M / (C_2 + 1)).sin() ** 2

    u = torch.zeros(M + 1, dtype=dtype, device="cpu")
    for j in range(M, 0, -1):
        u[j - 1] = ((u[j] ** 2 + 1) / (abar(j - 1) / abar(j)).clip(min=C_1) - 1).sqrt()
    return u


@recorded
class iDDPMPrecond(_Precond):  # noqa: N801  (EDM's class name)
    """iDDPM preconditioning (Nichol & Dhariwal 2021), EDM Table 1 column 'iDDPM'."""

    out_mult = 2  # learned variance channels, dropped

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, C_1=0.001, C_2=0.008, M=1000,
                 model_type="DhariwalUNet", **model_kwargs):
        super().__init__()
        self._setup(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.C_1 = C_1
        self.C_2 = C_2
        self.M = M
        self._build_model(model_type, model_kwargs)
        u = torch.empty(M + 1) if _SKIP_INIT.get() else iddpm_u_grid(M, C_1, C_2)  # loaded from the file
        self.register_buffer("u", u)
        # set from the loaded grid when u is a placeholder (models.edm.build_network)
        self.sigma_min = float("nan") if u.is_meta else float(u[M - 1])
        self.sigma_max = float("nan") if u.is_meta else float(u[0])

    def round_sigma(self, sigma, return_index=False):
        """The grid point nearest to sigma, chosen exactly as EDM does: ``torch.cdist`` on the whole
        grid u[0..M] (u[M] = 0 included). cdist computes the distance through a matrix product
        (sqrt(x^2 - 2xu + u^2) in float32), so near a midpoint it may pick the farther neighbour;
        we keep that choice to stay bit-exact with upstream."""
        sigma = torch.as_tensor(sigma)
        index = torch.cdist(sigma.to(self.u.device).to(torch.float32).reshape(1, -1, 1), self.u.reshape(1, -1, 1)).argmin(2)
        result = index if return_index else self.u[index.flatten()].to(sigma.dtype)
        return result.reshape(sigma.shape).to(sigma.device)

    def coefficients(self, sigma):
        c_noise = self.M - 1 - self.round_sigma(sigma, return_index=True).to(torch.float32)
        return 1, -sigma, 1 / (sigma**2 + 1).sqrt(), c_noise


@recorded
class EDMPrecond(_Precond):
    """EDM preconditioning, Karras et al. 2022 Table 1 column 'EDM' (sigma_data = 0.5)."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0, sigma_max=float("inf"),
                 sigma_data=0.5, model_type="DhariwalUNet", **model_kwargs):
        super().__init__()
        self._setup(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        self._build_model(model_type, model_kwargs)

    def coefficients(self, sigma):
        sd = self.sigma_data
        return (sd**2 / (sigma**2 + sd**2), sigma * sd / (sigma**2 + sd**2).sqrt(),
                1 / (sd**2 + sigma**2).sqrt(), sigma.log() / 4)


PRECONDITIONERS = {"VPPrecond": VPPrecond, "VEPrecond": VEPrecond, "iDDPMPrecond": iDDPMPrecond, "EDMPrecond": EDMPrecond}


@recorded
class EDMLoss:
    """Stand-in for the training loss object stored beside the network (never used for sampling)."""

    def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=0.5):
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data
