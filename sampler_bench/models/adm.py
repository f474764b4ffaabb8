"""guided-diffusion (ADM) checkpoints as sigma-space models: the adapters and the loading entry points.

Files (safe reading, flags, fingerprints, strict loading, the tiny writer) are
:mod:`sampler_bench.models.adm_files`; its public names are re-exported here.

- :class:`ADMDenoiser`: the discrete-time VP model in sigma-space (research notes 3.4):
  ``D(x, sigma, y) = x - sigma * eps(x / sqrt(1 + sigma^2), t(sigma), y)``, learned-variance channels
  dropped. ``t(sigma)``: ``time_mode='interp'`` (log-sigma interpolation between grid points,
  k-diffusion's default) or ``'nearest'`` (nearest grid index in sigma, EDM's iDDPMPrecond; then
  ``round_sigma`` snaps to the grid so the state's noise level is what the network sees).
- :class:`ADMClassifier`: the noisy classifier as a guidance classifier (``models/guidance.py``); it
  gets ``x_t = alpha * x`` and the same kind of time input, from its own schedule flags.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sampler_bench.errors import BenchError
from sampler_bench.models.adm_files import (FLAG_TYPES, OPTION_TYPES, SMALL_NET, TINY_CLASSIFIER_FLAGS,  # noqa: F401
                                            TINY_MODEL_FLAGS, _shapes, build_net, infer_flags, known_configs,
                                            load_adm_network, load_strict, make_tiny, parse_flags, read_state_dict,
                                            save_state_dict)
from sampler_bench.models.base import F64, Denoiser, DiscreteVP, alpha_from_sigma, as_f64
from sampler_bench.models.guidance import Classifier
from sampler_bench.models.nets import adm as nets

TIME_MODES = ("interp", "nearest")


def schedule_from_flags(flags: dict) -> DiscreteVP:
    n = int(flags.get("diffusion_steps", 1000))
    kind = flags.get("noise_schedule", "linear")
    if kind not in ("linear", "cosine"):
        raise BenchError(f"noise_schedule {kind!r} is not supported; use linear or cosine.")
    if kind == "linear":  # guided-diffusion scales the 1000-step betas by 1000/n
        scale = 1000 / n
        return DiscreteVP.linear(n, beta_start=scale * 1e-4, beta_end=scale * 2e-2)
    return DiscreteVP.cosine(n)


# ---------------------------------------------------------------------------------------------
# Time input shared by the model and the classifier
# ---------------------------------------------------------------------------------------------


class _TimeInput:
    time_map: DiscreteVP
    time_mode: str

    def _nearest_index(self, s: torch.Tensor) -> torch.Tensor:
        grid = self.time_map.tables(s.device)[1]
        return (s.reshape(-1, 1) - grid.reshape(1, -1)).abs().argmin(dim=1)

    def time_input(self, sigma: torch.Tensor) -> torch.Tensor:
        """The network's timestep input (float64, (B,)) for sigma: a grid index, fractional in 'interp'."""
        s = as_f64(sigma).reshape(-1)
        if self.time_mode == "nearest":
            return self._nearest_index(s).to(F64)
        return self.time_map.t(s)


def _io_dtype(net) -> torch.dtype:
    """The network's input dtype: float32 (its fp32 parts); float64 only for a net converted by .double()."""
    return net.time_embed[0].weight.dtype


def _check_time_mode(mode: str) -> str:
    if mode not in TIME_MODES:
        raise BenchError(f"time_mode={mode!r} is not valid; use {' or '.join(TIME_MODES)}.")
    return mode


class ADMDenoiser(_TimeInput, Denoiser):
    """A guided-diffusion UNet (eps prediction on a discrete VP grid) as a sigma-space denoiser."""

    def __init__(self, net: nets.UNetModel, flags: dict, name: str = "adm", device="cpu", time_mode: str = "interp",
                 force_fp32: bool = False, info: dict | None = None):
        self.net, self.flags, self.name, self.info = net, dict(flags), name, dict(info or {})
        self.time_mode = _check_time_mode(time_mode)
        self.force_fp32 = force_fp32
        self.time_map = schedule_from_flags(self.flags)
        self.sigma_grid = self.time_map.sigmas  # ascending: sigma of steps 0..N-1
        self.image_shape = (net.in_channels, net.image_size, net.image_size)
        self.num_classes = int(net.num_classes or 0)
        self.label_required = self.num_classes > 0
        self.net_sigma_min, self.net_sigma_max = float(self.time_map.sigmas[0]), float(self.time_map.sigmas[-1])
        self.sigma_min = self.net_sigma_min
        self.sigma_max = min(80.0, self.net_sigma_max)  # as EDM's generate.py clamps (cosine reaches 2e4)
        self.to(device)

    @property
    def network_dtype(self) -> torch.dtype:
        return torch.float16 if (self.net.use_fp16 and not self.force_fp32 and self.device.type == "cuda") else torch.float32

    def to(self, device):
        super().to(device)
        self.net.to(self.device)
        self.net.set_fp16(self.network_dtype == torch.float16)
        return self

    def round_sigma(self, sigma):
        s = as_f64(sigma)
        if self.time_mode != "nearest":
            return s
        out = self.time_map.tables(s.device)[1][self._nearest_index(s)].reshape(s.shape)
        return torch.where(s == 0, s, out)

    def eps(self, x: torch.Tensor, sigma, labels=None) -> torch.Tensor:
        n = x.shape[0]
        s = as_f64(sigma).to(x.device).reshape(-1)
        if s.numel() == 1:
            s = s.expand(n)
        if self.num_classes and labels is None:
            raise BenchError(f"model '{self.name}' is class-conditional and needs class labels.")
        c_in = alpha_from_sigma(s).reshape(-1, 1, 1, 1)
        y = labels.to(x.device).long() if self.num_classes else None
        dt = _io_dtype(self.net)
        out = self.net((x * c_in).to(dt), self.time_input(s).to(dt), y)
        return out[:, : self.image_shape[0]].to(F64)  # learned-variance channels dropped

    @torch.no_grad()
    def denoise(self, x, sigma, labels=None):
        s = as_f64(sigma).to(x.device).reshape(-1)
        s = s.expand(x.shape[0]) if s.numel() == 1 else s
        return x.to(F64) - s.reshape(-1, 1, 1, 1) * self.eps(x, s, labels)

    def describe(self):
        d = super().describe()
        d.update({"family": "guided-diffusion", "architecture": "UNetModel", "time_mode": self.time_mode,
                  "flags": self.flags, "use_fp16": bool(self.net.use_fp16),
                  "network_dtype": str(self.network_dtype).replace("torch.", ""),
                  "net_sigma_min": self.net_sigma_min, "net_sigma_max": self.net_sigma_max,
                  "parameters": sum(p.numel() for p in self.net.parameters())})
        d.update({k: v for k, v in self.info.items() if k in ("path", "sha256", "checkpoint", "flags_from")})
        return d


class ADMClassifier(_TimeInput, Classifier):
    """guided-diffusion's noisy classifier: ``grad_x log softmax(cls(alpha x, t(sigma)))[y]`` by autograd."""

    def __init__(self, net: nets.EncoderUNetModel, flags: dict, name: str = "adm-classifier", device="cpu",
                 time_mode: str = "interp", info: dict | None = None):
        self.net, self.flags, self.name, self.info = net, dict(flags), name, dict(info or {})
        self.time_mode = _check_time_mode(time_mode)
        self.time_map = schedule_from_flags(self.flags)
        self.image_shape = (net.in_channels, net.image_size, net.image_size)
        self.num_classes = int(net.out_channels)
        self.to(device)

    def to(self, device):
        self.device = torch.device(device)
        self.net.to(self.device)
        self.net.set_fp16(bool(self.net.use_fp16) and self.device.type == "cuda")
        return self

    def logits(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Classifier logits at sigma-space ``x`` (the network sees ``x_t = alpha x``)."""
        s = as_f64(sigma).to(x.device).reshape(-1)
        s = s.expand(x.shape[0]) if s.numel() == 1 else s
        xt = alpha_from_sigma(s).reshape(-1, 1, 1, 1) * x
        dt = _io_dtype(self.net)
        return self.net(xt.to(dt), self.time_input(s).to(dt))

    def grad_log_prob(self, x, sigma, labels):
        with torch.enable_grad():
            xx = x.detach().to(F64).requires_grad_(True)
            logp = torch.log_softmax(self.logits(xx, sigma), dim=-1)
            sel = logp[torch.arange(x.shape[0], device=x.device), labels.to(x.device).long()]
            (g,) = torch.autograd.grad(sel.sum(), xx)
        return g.detach()

    def describe(self):
        d = {"name": self.name, "class": type(self).__name__, "architecture": "EncoderUNetModel",
             "image_shape": list(self.image_shape), "num_classes": self.num_classes, "time_mode": self.time_mode,
             "flags": self.flags, "parameters": sum(p.numel() for p in self.net.parameters())}
        d.update({k: v for k, v in self.info.items() if k in ("path", "sha256", "checkpoint", "flags_from")})
        return d


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def split_params(params: dict, path) -> tuple[dict, dict]:
    unknown = [k for k in params if k not in FLAG_TYPES and k not in OPTION_TYPES]
    if unknown:
        raise BenchError(f"unknown key(s) {', '.join(unknown)} for '{path}'; use guided-diffusion flags "
                         f"({', '.join(list(FLAG_TYPES)[:6])}, ...) or {', '.join(OPTION_TYPES)}.")
    opts = {}
    for k in OPTION_TYPES:
        if k in params:
            try:
                opts[k] = OPTION_TYPES[k](params[k])
            except ValueError:
                raise BenchError(f"{k}={params[k]!r} for '{path}' is not valid; use true or false.") from None
    return parse_flags(params, path), opts


def load_adm_denoiser(path, device="cpu", flags: dict | None = None, name: str | None = None,
                      time_mode: str = "interp", force_fp32: bool = False, extra_info: dict | None = None) -> ADMDenoiser:
    _check_time_mode(time_mode)
    net, flags, info = load_adm_network(path, "model", flags)
    info.update(extra_info or {})
    return ADMDenoiser(net, flags, name=name or Path(path).stem, device=device, time_mode=time_mode,
                       force_fp32=force_fp32, info=info)


def load_adm_classifier(path, device="cpu", flags: dict | None = None, name: str | None = None,
                        time_mode: str = "interp", extra_info: dict | None = None) -> ADMClassifier:
    _check_time_mode(time_mode)
    net, flags, info = load_adm_network(path, "classifier", flags)
    info.update(extra_info or {})
    return ADMClassifier(net, flags, name=name or Path(path).stem, device=device, time_mode=time_mode, info=info)
