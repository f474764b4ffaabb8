"""guided-diffusion (ADM) ``.pt`` checkpoints: safe reading, flags, and the sigma-space adapters.

- Reading: ``torch.load(path, map_location='cpu', weights_only=True)`` only; a file that needs full
  unpickling is refused (its payload never runs). The result must be a flat state dict of tensors.
- Flags: guided-diffusion's own flag names (``image_size``, ``num_channels``, ``num_heads`` ...). They
  come from the registry (``checkpoints/adm.yaml``), from ``adm:path=FILE,key=value,...``, or, when
  none are given, from the state dict's shapes: the file's key/shape set must match exactly one
  known configuration (every published file and the ``bench tiny-adm`` files). Flags that shapes
  cannot show (image size of a UNet, heads, attention order, schedule) are never guessed.
- Networks: our own (:mod:`sampler_bench.models.nets.adm`), loaded with ``strict=True``.
- :class:`ADMDenoiser`: the discrete-time VP model in sigma-space (research notes 3.4):
  ``D(x, sigma, y) = x - sigma * eps(x / sqrt(1 + sigma^2), t(sigma), y)``, learned-variance channels
  dropped. ``t(sigma)``: ``time_mode='interp'`` (log-sigma interpolation between grid points,
  k-diffusion's default) or ``'nearest'`` (nearest grid index in sigma, EDM's iDDPMPrecond; then
  ``round_sigma`` snaps to the grid so the state's noise level is what the network sees).
- :class:`ADMClassifier`: the noisy classifier as a guidance classifier (``models/guidance.py``); it
  gets ``x_t = alpha * x`` and the same kind of time input, from its own schedule flags.
"""

from __future__ import annotations

import functools
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from sampler_bench.errors import BenchError
from sampler_bench.models.base import F64, Denoiser, DiscreteVP, alpha_from_sigma, as_f64
from sampler_bench.models.guidance import Classifier
from sampler_bench.models.nets import adm as nets

TIME_MODES = ("interp", "nearest")


def _bool(v) -> bool:
    if isinstance(v, bool):
        return v
    if str(v).lower() in ("1", "true", "yes", "on"):
        return True
    if str(v).lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(v)


# flag name -> parser (user text or YAML value -> value)
FLAG_TYPES = {
    "image_size": int, "num_channels": int, "num_res_blocks": int, "num_heads": int, "num_heads_upsample": int,
    "num_head_channels": int, "attention_resolutions": str, "channel_mult": str, "dropout": float,
    "class_cond": _bool, "use_scale_shift_norm": _bool, "resblock_updown": _bool, "use_fp16": _bool,
    "use_new_attention_order": _bool, "learn_sigma": _bool, "noise_schedule": str, "diffusion_steps": int,
    "in_channels": int, "num_classes": int,
    "classifier_width": int, "classifier_depth": int, "classifier_attention_resolutions": str,
    "classifier_use_scale_shift_norm": _bool, "classifier_resblock_updown": _bool, "classifier_pool": str,
    "classifier_use_fp16": _bool, "classifier_num_head_channels": int,
}
# our own options next to the flags in adm:path=...,key=value
OPTION_TYPES = {"path": str, "time_mode": str, "fp32": _bool}

# the configuration `bench tiny-adm` writes (distinct shapes from every published file)
TINY_MODEL_FLAGS = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
                        num_head_channels=16, use_new_attention_order=False, class_cond=True, num_classes=10,
                        learn_sigma=True, use_scale_shift_norm=True, resblock_updown=True, noise_schedule="linear",
                        diffusion_steps=1000, use_fp16=False, dropout=0.0)
TINY_CLASSIFIER_FLAGS = dict(image_size=16, classifier_width=32, classifier_depth=1, channel_mult="1,2",
                             classifier_attention_resolutions="8", classifier_num_head_channels=16, num_classes=10,
                             classifier_use_scale_shift_norm=True, classifier_resblock_updown=True,
                             classifier_pool="attention", noise_schedule="linear", diffusion_steps=1000)


def _err(path, msg: str) -> BenchError:
    return BenchError(f"cannot load guided-diffusion checkpoint '{path}': {msg}")


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> "OrderedDict[str, torch.Tensor]":
    """A ``.pt`` state dict, read with ``weights_only=True``: nothing in the file is ever executed."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise _err(path, f"cannot read it ({exc.strerror or exc})") from None
    if size == 0:
        raise _err(path, "the file is empty (0 bytes); download it again")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head[:2] == b"PK" and not zipfile.is_zipfile(path):
            raise _err(path, "the file is truncated (incomplete zip archive); download it again")
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except BenchError:
        raise
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln.strip() for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0] if first else "")
        raise _err(path, f"torch's weights-only loader refused it ({detail[:160]}); it holds pickled objects, not "
                         "a plain state dict, and nothing from it was run") from None
    except (EOFError, RuntimeError, ValueError, OSError) as exc:
        msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        low = msg.lower()
        if isinstance(exc, EOFError) or "ran out of input" in low or "failed finding central directory" in low \
                or "truncated" in low or "failed reading" in low:
            raise _err(path, "the file is truncated; download it again") from None
        raise _err(path, f"not a torch.save state dict ({type(exc).__name__}: {msg})") from None
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        what = type(sd).__name__ if not isinstance(sd, dict) else "a dict that is not name -> tensor"
        raise _err(path, f"it holds {what}, expected a flat state dict (name -> tensor) as guided-diffusion saves")
    return OrderedDict(sd)


# ---------------------------------------------------------------------------------------------
# Flags and strict building
# ---------------------------------------------------------------------------------------------


def build_net(role: str, flags: dict, device: str | torch.device = "cpu") -> torch.nn.Module:
    with torch.device(device):
        return nets.unet_from_flags(flags) if role == "model" else nets.classifier_from_flags(flags)


def _shapes(sd) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def known_configs() -> list[tuple[str, str, dict]]:
    """(name, role, flags) of every configuration whose file can be recognised from its shapes."""
    from sampler_bench.models.checkpoints import load_registry

    out = [(ck.name, ck.role, dict(ck.flags)) for ck in load_registry(fmt="adm-pt").values()]
    return out + [("tiny-adm model", "model", dict(TINY_MODEL_FLAGS)), ("tiny-adm classifier", "classifier", dict(TINY_CLASSIFIER_FLAGS))]


SMALL_NET = 20_000_000  # parameters; smaller networks are built on the CPU (no meta-device machinery to import)


@functools.lru_cache(maxsize=None)
def _fingerprint(role: str, frozen_flags: tuple, small: bool = False) -> tuple:
    net = build_net(role, dict(frozen_flags), "cpu" if small else "meta")
    return tuple(sorted(_shapes(net.state_dict()).items()))


def infer_flags(sd, role: str, path) -> tuple[dict, str]:
    """The flags of the one known configuration whose key/shape set equals the file's."""
    want = tuple(sorted(_shapes(sd).items()))
    width = tuple(sd["time_embed.0.weight"].shape)[1:] if "time_embed.0.weight" in sd else None
    hits: dict[tuple, str] = {}
    for name, r, flags in known_configs():
        f = {**(nets.MODEL_DEFAULTS if role == "model" else nets.CLASSIFIER_DEFAULTS), **flags}
        if r != role or width != (int(f["num_channels" if role == "model" else "classifier_width"]),):
            continue  # cheap pre-filter before building the candidate on the meta device
        key = tuple(sorted((k, v) for k, v in flags.items() if k not in ("dropout",)))
        if key in hits:
            continue
        if _fingerprint(role, tuple(sorted(flags.items())), name.startswith("tiny-adm")) == want:
            hits[key] = name
    if len(hits) == 1:
        (key, name), = hits.items()
        return dict(key), name
    what = "model (UNetModel)" if role == "model" else "classifier (EncoderUNetModel)"
    if not hits:
        raise _err(path, f"its {len(sd)} tensors match no known guided-diffusion {what} configuration, so its flags "
                         "cannot be inferred; give them, e.g. "
                         f"{'adm' if role == 'model' else 'adm-classifier'}:path={path},image_size=128,num_channels=256,...")
    raise _err(path, f"its shapes fit several configurations ({', '.join(hits.values())}); give the flags explicitly")


def _flag_hint(missing: list[str], unexpected: list[str], bad_shapes: list[str], role: str) -> str:
    keys = missing + unexpected + bad_shapes
    rules = [
        (lambda k: k.startswith("label_emb"), "class_cond"),
        (lambda k: k.startswith("time_embed"), "num_channels" if role == "model" else "classifier_width"),
        (lambda k: k.startswith("out.2") and role == "model", "learn_sigma"),
        (lambda k: k.startswith("out.2.positional"), "image_size"),
        (lambda k: ".qkv." in k or ".proj_out." in k or ".norm." in k, "attention_resolutions" if role == "model" else "classifier_attention_resolutions"),
        (lambda k: ".op." in k or ".conv." in k, "resblock_updown"),
        (lambda k: "emb_layers" in k, "use_scale_shift_norm"),
        (lambda k: k.startswith(("input_blocks", "output_blocks", "middle_block")), "num_res_blocks, channel_mult or image_size"),
    ]
    for test, flag in rules:
        if any(test(k) for k in keys):
            return flag
    return "the architecture flags"


def load_strict(net: torch.nn.Module, sd, path, role: str) -> torch.nn.Module:
    own = _shapes(net.state_dict())
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    bad = [k for k in own if k in sd and tuple(sd[k].shape) != own[k]]
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} ({len(missing)})")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''} ({len(unexpected)})")
        if bad:
            k = bad[0]
            parts.append(f"shape of {k} is {tuple(sd[k].shape)}, the flags give {own[k]} ({len(bad)} differ)")
        raise _err(path, f"its keys do not fit the flags: {'; '.join(parts)}; the flag that probably differs: "
                         f"{_flag_hint(missing, unexpected, bad, role)}")
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=True, assign=True)
    return net.eval().requires_grad_(False)


def parse_flags(params: dict, path) -> dict:
    flags = {}
    for k, v in params.items():
        if k not in FLAG_TYPES:
            continue
        try:
            flags[k] = FLAG_TYPES[k](v)
        except (TypeError, ValueError):
            raise BenchError(f"flag {k}={v!r} for '{path}' is not valid; give {FLAG_TYPES[k].__name__.lstrip('_')}.") from None
    if "noise_schedule" in flags and flags["noise_schedule"] not in ("linear", "cosine"):
        raise BenchError(f"noise_schedule={flags['noise_schedule']!r} for '{path}' is not valid; use linear or cosine.")
    return flags


def load_adm_network(path, role: str = "model", flags: dict | None = None) -> tuple[torch.nn.Module, dict, dict]:
    """(our network on CPU, its flags, info) from a ``.pt`` file; flags inferred when not given."""
    sd = read_state_dict(path)
    info: dict = {"path": str(path)}
    if flags:
        flags = dict(flags)
        info["flags_from"] = "given"
    else:
        flags, name = infer_flags(sd, role, path)
        info["flags_from"] = f"inferred from the state-dict shapes (matches {name})"
    try:
        net = build_net(role, flags, "cpu" if sum(v.numel() for v in sd.values()) < SMALL_NET else "meta")
    except (ValueError, ZeroDivisionError, KeyError) as exc:
        raise BenchError(f"the flags for '{path}' do not describe a network ({exc}); check them.") from None
    return load_strict(net, sd, path, role), flags, info


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
        grid = self.time_map.sigmas.to(s.device)
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
        out = self.time_map.sigmas.to(s.device)[self._nearest_index(s)].reshape(s.shape)
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


def make_tiny(role: str, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised tiny network of the ``bench tiny-adm`` configuration (non-trivial weights:
    guided-diffusion zero-initialises output convs, which would make every output 0)."""
    import math

    flags = TINY_MODEL_FLAGS if role == "model" else TINY_CLASSIFIER_FLAGS
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_net(role, flags)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for pname, p in net.named_parameters():
                if p.ndim >= 2:
                    p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
                elif pname.endswith("weight"):
                    p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval().requires_grad_(False)


def save_state_dict(net: torch.nn.Module, path) -> Path:
    """Write ``net``'s state dict as guided-diffusion does (``torch.save`` of a flat state dict), atomically."""
    import io

    from sampler_bench.fileio import write_bytes

    buf = io.BytesIO()
    torch.save(OrderedDict((k, v.detach().cpu().float().contiguous()) for k, v in net.state_dict().items()), buf)
    write_bytes(path, buf.getvalue())
    return Path(path)
