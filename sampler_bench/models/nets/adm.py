"""guided-diffusion (ADM, Dhariwal & Nichol 2021) networks: ``UNetModel`` and the classifier
``EncoderUNetModel`` (attention-pool head), written from the description in
``research/checkpoints.md`` section 3.2.

Module names, index layout and parameter shapes follow openai/guided-diffusion's ``unet.py`` so the
published ``.pt`` state dicts load with ``load_state_dict(strict=True)`` under their original key
names. Parameter-free modules (SiLU, Dropout, Identity, AvgPool) keep their slots in the sequences,
since the indices are part of the key names.

Variants: legacy per-head ``[q k v]`` and new ``[q | k | v]`` attention channel layouts,
``num_heads`` versus ``num_head_channels``, ``resblock_updown``, scale-shift norm, learned sigma,
class embedding, and the original mixed precision (conv weights of the torso in fp16, everything
else fp32) switched on by :meth:`set_fp16` (the loader does it on CUDA only). Attention uses
``F.scaled_dot_product_attention``; its default scale ``1/sqrt(ch)`` equals the original
``(ch^-1/4)^2`` applied to q and k.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# channel_mult by image size (guided-diffusion script_util.create_model / create_classifier)
CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoid ``[cos(t f), sin(t f)]`` with ``f_i = exp(-ln(max_period) i / half)``; t may be fractional."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """32 groups, computed in fp32 (at least: in the parameters' dtype) and cast back."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x):
        return super().forward(x.to(self.weight.dtype)).type(x.dtype)


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x):
        return self.op(x)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_scale_shift_norm: bool = False, up: bool = False, down: bool = False):
        super().__init__()
        out = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out if use_scale_shift_norm else out))
        self.out_layers = nn.Sequential(GroupNorm32(out), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out, out, 3, padding=1))
        self.skip_connection = nn.Identity() if out == channels else nn.Conv2d(channels, out, 1)

    def forward(self, x, emb):
        if self.updown:
            h = self.in_layers[:-1](x)
            h, x = self.h_upd(h), self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = torch.chunk(e, 2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


def qkv_attention(qkv: torch.Tensor, heads: int, new_order: bool) -> torch.Tensor:
    """(B, 3*H*ch, T) -> (B, H*ch, T). Legacy layout: per head [q k v]; new layout: [q | k | v]."""
    b, width, length = qkv.shape
    ch = width // (3 * heads)
    if new_order:
        q, k, v = (t.reshape(b * heads, ch, length) for t in qkv.chunk(3, dim=1))
    else:
        q, k, v = qkv.reshape(b * heads, 3 * ch, length).split(ch, dim=1)
    a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return a.transpose(1, 2).reshape(b, heads * ch, length)


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1, use_new_attention_order: bool = False):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"channels {channels} are not divisible by num_head_channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.new_order = bool(use_new_attention_order)
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = qkv_attention(self.qkv(self.norm(x)), self.num_heads, self.new_order)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class AttentionPool2d(nn.Module):
    """Classifier head: mean token + positional embedding, new-order attention, token 0 -> logits."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_head_channels: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spacial_dim**2 + 1) / embed_dim**0.5)
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim, 1)
        self.num_heads = embed_dim // num_head_channels

    def forward(self, x):
        b, c = x.shape[:2]
        x = x.reshape(b, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = qkv_attention(self.qkv_proj(x), self.num_heads, True)
        return self.c_proj(x)[:, :, 0]


class _Torso(nn.Module):
    """Shared parts of UNetModel and EncoderUNetModel: time embedding, input blocks, middle block."""

    def _build_encoder(self, image_size, in_channels, model_channels, num_res_blocks, attention_resolutions,
                       dropout, channel_mult, conv_resample, num_heads, num_head_channels, use_scale_shift_norm,
                       resblock_updown, use_new_attention_order):
        self.image_size, self.in_channels, self.model_channels = int(image_size), int(in_channels), int(model_channels)
        self.channel_mult = tuple(channel_mult)
        self.attention_resolutions = tuple(attention_resolutions)
        self.use_fp16_active = False
        ted = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, ted), nn.SiLU(), nn.Linear(ted, ted))
        ch = int(channel_mult[0] * model_channels)
        self.ch0 = ch
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        chans, ds = [ch], 1
        attn = dict(num_heads=num_heads, num_head_channels=num_head_channels, use_new_attention_order=use_new_attention_order)
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, ted, dropout, int(mult * model_channels), use_scale_shift_norm)]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, **attn))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                down = ResBlock(ch, ted, dropout, ch, use_scale_shift_norm, down=True) if resblock_updown \
                    else Downsample(ch, conv_resample)
                self.input_blocks.append(TimestepEmbedSequential(down))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, ted, dropout, ch, use_scale_shift_norm), AttentionBlock(ch, **attn),
            ResBlock(ch, ted, dropout, ch, use_scale_shift_norm))
        return ch, ds, chans

    def _fp16_parts(self) -> list[nn.Module]:
        return [self.input_blocks, self.middle_block]

    def set_fp16(self, on: bool) -> "_Torso":
        """guided-diffusion's convert_to_fp16 (on) / convert_to_fp32 (off): conv weights of the torso."""
        dtype = torch.float16 if on else torch.float32
        for part in self._fp16_parts():
            for m in part.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                    m.weight.data = m.weight.data.to(dtype)
                    if m.bias is not None:
                        m.bias.data = m.bias.data.to(dtype)
        self.use_fp16_active = bool(on)
        return self

    @property
    def torso_dtype(self) -> torch.dtype:
        return torch.float16 if self.use_fp16_active else self.time_embed[0].weight.dtype

    def _embed(self, timesteps):
        w = self.time_embed[0].weight
        return self.time_embed(timestep_embedding(timesteps, self.model_channels).to(w.dtype))


class UNetModel(_Torso):
    """guided-diffusion's UNetModel. ``attention_resolutions`` are downsample factors (image_size // r)."""

    def __init__(self, image_size, in_channels, model_channels, out_channels, num_res_blocks, attention_resolutions,
                 dropout=0.0, channel_mult=(1, 2, 4, 8), conv_resample=True, num_classes=None, use_fp16=False,
                 num_heads=1, num_head_channels=-1, num_heads_upsample=-1, use_scale_shift_norm=False,
                 resblock_updown=False, use_new_attention_order=False):
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.out_channels, self.num_classes, self.use_fp16 = int(out_channels), num_classes, bool(use_fp16)
        ch, ds, chans = self._build_encoder(image_size, in_channels, model_channels, num_res_blocks, attention_resolutions,
                                            dropout, channel_mult, conv_resample, num_heads, num_head_channels,
                                            use_scale_shift_norm, resblock_updown, use_new_attention_order)
        ted = model_channels * 4
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, ted)
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                ich = chans.pop()
                layers: list[nn.Module] = [ResBlock(ch + ich, ted, dropout, int(model_channels * mult), use_scale_shift_norm)]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads_upsample, num_head_channels, use_new_attention_order))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, ted, dropout, ch, use_scale_shift_norm, up=True) if resblock_updown
                                  else Upsample(ch, conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(self.ch0, out_channels, 3, padding=1))

    def _fp16_parts(self):
        return [self.input_blocks, self.middle_block, self.output_blocks]

    def forward(self, x, timesteps, y=None):
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("class labels must be given exactly when the model is class-conditional")
        emb = self._embed(timesteps)
        if self.num_classes is not None:
            emb = emb + self.label_emb(y)
        h, hs = x.type(self.torso_dtype), []
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))


class EncoderUNetModel(_Torso):
    """guided-diffusion's classifier (``pool='attention'``, the published one): logits (B, out_channels)."""

    def __init__(self, image_size, in_channels, model_channels, out_channels, num_res_blocks, attention_resolutions,
                 dropout=0.0, channel_mult=(1, 2, 4, 8), conv_resample=True, use_fp16=False, num_heads=1,
                 num_head_channels=-1, use_scale_shift_norm=False, resblock_updown=False,
                 use_new_attention_order=False, pool="attention"):
        super().__init__()
        if pool != "attention":
            raise ValueError(f"pool {pool!r} is not supported (the published classifiers use 'attention')")
        self.out_channels, self.use_fp16 = int(out_channels), bool(use_fp16)
        ch, ds, _ = self._build_encoder(image_size, in_channels, model_channels, num_res_blocks, attention_resolutions,
                                        dropout, channel_mult, conv_resample, num_heads, num_head_channels,
                                        use_scale_shift_norm, resblock_updown, use_new_attention_order)
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), AttentionPool2d(image_size // ds, ch, num_head_channels, out_channels))

    def forward(self, x, timesteps):
        emb = self._embed(timesteps)
        h = x.type(self.torso_dtype)
        for block in self.input_blocks:
            h = block(h, emb)
        h = self.middle_block(h, emb)
        return self.out(h.type(x.dtype))


# ---------------------------------------------------------------------------------------------
# guided-diffusion command-line flags -> networks (script_util.create_model / create_classifier)
# ---------------------------------------------------------------------------------------------

MODEL_DEFAULTS = dict(image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1,
                      num_head_channels=-1, attention_resolutions="16,8", channel_mult="", dropout=0.0,
                      class_cond=False, use_scale_shift_norm=True, resblock_updown=False, use_fp16=False,
                      use_new_attention_order=False, learn_sigma=False, noise_schedule="linear",
                      diffusion_steps=1000, in_channels=3, num_classes=1000)
CLASSIFIER_DEFAULTS = dict(image_size=64, classifier_width=128, classifier_depth=2,
                           classifier_attention_resolutions="32,16,8", classifier_use_scale_shift_norm=True,
                           classifier_resblock_updown=True, classifier_pool="attention", classifier_use_fp16=False,
                           classifier_num_head_channels=64,
                           channel_mult="", in_channels=3, num_classes=1000, noise_schedule="linear",
                           diffusion_steps=1000)


def _split(text) -> list[str]:
    """'32,16,8', '32x16x8' or '32/16/8' (the last two fit inside NAME:key=value,... specs)."""
    return [v.strip() for v in str(text).replace("x", ",").replace("/", ",").split(",") if v.strip()]


def _channel_mult(image_size: int, text) -> tuple:
    if text in ("", None):
        if image_size not in CHANNEL_MULT:
            raise ValueError(f"no default channel_mult for image_size {image_size}; give channel_mult (e.g. 1,2,4)")
        return CHANNEL_MULT[image_size]
    if isinstance(text, (list, tuple)):
        return tuple(text)
    return tuple(float(v) if "." in v else int(v) for v in _split(text))


def _attention_ds(image_size: int, text) -> tuple[int, ...]:
    res = [int(v) for v in _split(text)] if not isinstance(text, (list, tuple)) else list(text)
    return tuple(image_size // r for r in res)


def unet_from_flags(flags: dict) -> UNetModel:
    f = {**MODEL_DEFAULTS, **flags}
    size = int(f["image_size"])
    return UNetModel(image_size=size, in_channels=int(f["in_channels"]), model_channels=int(f["num_channels"]),
                     out_channels=2 * int(f["in_channels"]) if f["learn_sigma"] else int(f["in_channels"]),
                     num_res_blocks=int(f["num_res_blocks"]), attention_resolutions=_attention_ds(size, f["attention_resolutions"]),
                     dropout=float(f["dropout"]), channel_mult=_channel_mult(size, f["channel_mult"]),
                     num_classes=int(f["num_classes"]) if f["class_cond"] else None, use_fp16=bool(f["use_fp16"]),
                     num_heads=int(f["num_heads"]), num_head_channels=int(f["num_head_channels"]),
                     num_heads_upsample=int(f["num_heads_upsample"]), use_scale_shift_norm=bool(f["use_scale_shift_norm"]),
                     resblock_updown=bool(f["resblock_updown"]), use_new_attention_order=bool(f["use_new_attention_order"]))


def classifier_from_flags(flags: dict) -> EncoderUNetModel:
    f = {**CLASSIFIER_DEFAULTS, **flags}
    size = int(f["image_size"])
    return EncoderUNetModel(image_size=size, in_channels=int(f["in_channels"]), model_channels=int(f["classifier_width"]),
                            out_channels=int(f["num_classes"]), num_res_blocks=int(f["classifier_depth"]),
                            attention_resolutions=_attention_ds(size, f["classifier_attention_resolutions"]),
                            channel_mult=_channel_mult(size, f["channel_mult"]), use_fp16=bool(f["classifier_use_fp16"]),
                            num_head_channels=int(f["classifier_num_head_channels"]),
                            use_scale_shift_norm=bool(f["classifier_use_scale_shift_norm"]),
                            resblock_updown=bool(f["classifier_resblock_updown"]), pool=f["classifier_pool"])
