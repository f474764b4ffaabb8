"""guided-diffusion ``.pt`` files: safe reading, flags, shape fingerprints, strict loading, and the
writer of ``bench tiny-adm`` (the file side of :mod:`sampler_bench.models.adm`).

- Reading: ``torch.load(path, map_location='cpu', weights_only=True)`` only; a file that needs full
  unpickling is refused (its payload never runs). The result must be a flat state dict of tensors.
- Flags: guided-diffusion's own flag names (``image_size``, ``num_channels``, ``num_heads`` ...). They
  come from the registry (``checkpoints/adm.yaml``), from ``adm:path=FILE,key=value,...``, or, when
  none are given, from the state dict's shapes: the file's key/shape set must match exactly one
  known configuration (every published file and the ``bench tiny-adm`` files). Flags that shapes
  cannot show (image size of a UNet, heads, attention order, schedule) are never guessed.
- Networks: our own (:mod:`sampler_bench.models.nets.adm`), loaded with ``strict=True``.
"""

from __future__ import annotations

import functools
import math
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from sampler_bench.errors import BenchError
from sampler_bench.models.nets import adm as nets

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

    out = [(ck.name, ck.role, dict(ck.flags)) for ck in load_registry(formats=("adm-pt",)).values()]
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


def make_tiny(role: str, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised tiny network of the ``bench tiny-adm`` configuration (non-trivial weights:
    guided-diffusion zero-initialises output convs, which would make every output 0)."""
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
