"""NVlabs EDM network pickles: a safe reader, our own writer, and the sigma-space denoiser adapter.

Reading (``read_edm_pickle`` / ``load_edm_network``) executes nothing from the file:

- An allow-list unpickler resolves only the globals a real EDM pickle uses (research notes 1.2,
  1.5); any other global (``os.system``, ``builtins.eval`` ...) is refused *before* it can be called.
  Every allowed callable is our own checking wrapper.
- Each ``torch_utils.persistence`` object becomes an inert :class:`PersistentRecord` (class name +
  stored ``__dict__``); the embedded ``module_src`` is never run, only hashed.
- Tensor storages are read with ``torch.load(..., weights_only=True)``.
- The network is rebuilt from the stored constructor arguments into *our* classes
  (:mod:`sampler_bench.models.nets.edm`); unknown arguments are an error, and the weights load with
  ``strict=True``.

Writing (``save_edm_pickle``) produces the same format (protocol 4, the same opcodes and globals) from
our own classes, for tiny test and demo networks; ``module_src`` is our own module's source text.
"""

from __future__ import annotations

import collections
import hashlib
import inspect
import io
import math
import os
import pickle
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sampler_bench.errors import BenchError
from sampler_bench.models.base import F64, Denoiser, DiscreteVP, LinearVP, as_f64
from sampler_bench.models.memory import activation_bytes, available_memory
from sampler_bench.models.nets import edm as nets
from sampler_bench.models.safe_pickle import PickleRefused, StorageRecord, load_legacy_storage, scan_pickle, short_repr

PERSISTENCE_VERSION = 6
PICKLE_PROTOCOLS = (4, 5)  # EDM writes protocol 4 (Python >= 3.8 default); 5 only adds out-of-band buffers
RECONSTRUCT = ("torch_utils.persistence", "_reconstruct_persistent_obj")
# classes that may appear as persistent objects in an EDM training snapshot
KNOWN_PERSISTENT = set(nets.PRECONDITIONERS) | {
    "SongUNet", "DhariwalUNet", "UNetBlock", "Linear", "Conv2d", "GroupNorm", "PositionalEmbedding",
    "FourierEmbedding", "VPLoss", "VELoss", "EDMLoss", "AugmentPipe",
}


def _err(path, msg: str) -> BenchError:
    return BenchError(f"cannot load EDM network '{path}': {msg}" + ("" if msg.endswith(".") else "."))


# ---------------------------------------------------------------------------------------------
# Inert records
# ---------------------------------------------------------------------------------------------


@dataclass
class PersistentRecord:
    """What ``_reconstruct_persistent_obj(meta)`` would have built, as plain data: nothing executed."""

    class_name: str
    state: dict
    module_src_sha256: str

    @property
    def init_args(self):
        return self.state.get("_init_args")

    @property
    def init_kwargs(self):
        return self.state.get("_init_kwargs")


class _Refused(Exception):
    """Raised inside the unpickler; turned into a one-line BenchError by the caller."""


def _module_dict_record_type():
    """A fresh stand-in type for ``torch.nn.ModuleDict`` per load (NEWOBJ needs a type; BUILD keeps
    the state). Fresh per load so that nothing a file does to it can outlive that load."""

    class ModuleDictRecord:
        __slots__ = ("state",)

        def __setstate__(self, state):
            if not isinstance(state, dict):
                raise _Refused("a ModuleDict with a non-dict state")
            self.state = state

    return ModuleDictRecord


class _Allowed:
    """An allow-listed callable. Has no ``__dict__`` and refuses BUILD, so a file cannot modify it."""

    __slots__ = ("name", "fn")

    def __init__(self, name, fn):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __setattr__(self, *_):
        raise _Refused("the file tries to modify an allow-listed global")

    def __setstate__(self, _state):
        raise _Refused("the file tries to modify an allow-listed global")


def _no_hooks(hooks):
    if hooks is None or (isinstance(hooks, dict) and not hooks):
        return
    raise _Refused("a tensor with backward hooks")


def _contiguous_strides(size) -> tuple[int, ...]:
    out, acc = [], 1
    for n in reversed(size):
        out.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(out))


class _TensorBudget:
    """Rebuilds tensors as views of their storage, refusing any that would read past it, that are
    not laid out contiguously (stride 0 would repeat one element into gigabytes), or whose total
    size exceeds what the file itself holds."""

    def __init__(self, limit_bytes: int):
        self.limit, self.used = int(limit_bytes), 0

    def rebuild(self, storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
        if not isinstance(storage, StorageRecord):
            raise _Refused("a tensor whose storage is not a tensor storage")
        ok_ints = lambda v: isinstance(v, tuple) and all(type(i) is int and i >= 0 for i in v)  # noqa: E731
        if not (type(storage_offset) is int and storage_offset >= 0 and ok_ints(size) and ok_ints(stride)
                and len(size) == len(stride) and len(size) <= 8):
            raise _Refused("a malformed tensor header")
        _no_hooks(backward_hooks)
        if metadata:
            raise _Refused("tensor metadata")
        numel = math.prod(size)
        want = _contiguous_strides(size)
        if numel and any(n != 1 and s != w for n, s, w in zip(size, stride, want)):
            raise _Refused(f"a tensor with non-contiguous strides {short_repr(stride)} for size {short_repr(size)}")
        if storage_offset + numel > storage.flat.numel():
            raise _Refused(f"a tensor of {numel} elements at offset {storage_offset} in a storage of {storage.flat.numel()}")
        self.used += numel * storage.flat.element_size()
        if self.used > self.limit:
            raise _Refused(f"tensors totalling more bytes than the file holds ({self.limit}); views repeat its data")
        return storage.flat[storage_offset: storage_offset + numel].view(size)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, torch.Tensor):
        raise _Refused("a parameter that is not a tensor")
    _no_hooks(backward_hooks)
    return data


def _load_from_bytes(b):
    try:
        return load_legacy_storage(b)
    except PickleRefused as exc:
        raise _Refused(str(exc)) from None


_NUMERIC_KINDS = "biuf"


def _numpy_dtype(spec, align=False, copy=False):
    if not isinstance(spec, str) or len(spec) > 8:
        raise _Refused("a numpy dtype that is not a plain name")
    try:
        dt = np.dtype(spec)
    except TypeError:
        raise _Refused(f"an unknown numpy dtype {short_repr(spec)}") from None
    if dt.kind not in _NUMERIC_KINDS:
        raise _Refused(f"a non-numeric numpy dtype {short_repr(spec)}")
    return np.dtype(spec, bool(align), True)  # always a fresh copy: BUILD sets its state, never numpy's own


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None \
            or dtype.subdtype is not None or not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise _Refused("a malformed numpy scalar")
    return np.frombuffer(data, dtype=dtype)[0].copy()


def _ordered_dict(*args):
    if args:
        raise _Refused("an OrderedDict built from arguments")
    return collections.OrderedDict()


def _make_persistent_record(meta):
    if not isinstance(meta, dict) or set(meta) != {"type", "version", "module_src", "class_name", "state"}:
        raise _Refused("a persistent object with malformed metadata")
    if meta["type"] != "class":
        raise _Refused(f"a persistent object of type {short_repr(meta['type'])} (expected 'class')")
    if meta["version"] != PERSISTENCE_VERSION:
        raise _Refused(f"torch_utils.persistence version {short_repr(meta['version'])} (EDM files use version {PERSISTENCE_VERSION})")
    name = meta["class_name"]
    if not isinstance(name, str) or name not in KNOWN_PERSISTENT:
        raise _Refused(f"unknown persistent class {short_repr(name)}")
    if not isinstance(meta["state"], dict) or not isinstance(meta["module_src"], str):
        raise _Refused(f"a persistent {name} with malformed state")
    src_hash = hashlib.sha256(meta["module_src"].encode("utf-8", "surrogatepass")).hexdigest()
    return PersistentRecord(name, meta["state"], src_hash)


def _numpy_scalar_names():
    return [("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar")]


MAX_DEPTH = 64  # a real EDM snapshot nests about 30 levels deep
MODULE_DICT = ("torch.nn.modules.container", "ModuleDict")
BUILD_TARGETS = {".".join(MODULE_DICT), "numpy.dtype"}  # the only objects whose state a file may set


def _allowed_globals() -> set[tuple[str, str]]:
    return {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
            ("torch.storage", "_load_from_bytes"), ("numpy", "dtype"), RECONSTRUCT, MODULE_DICT, *_numpy_scalar_names()}


class _AllowListUnpickler(pickle.Unpickler):
    def __init__(self, f, max_tensor_bytes: int):
        super().__init__(f)
        self.module_dict_type = _module_dict_record_type()
        budget = _TensorBudget(max_tensor_bytes)
        allowed: dict[tuple[str, str], Any] = {
            ("collections", "OrderedDict"): _ordered_dict,
            ("torch._utils", "_rebuild_tensor_v2"): budget.rebuild,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("torch.storage", "_load_from_bytes"): _load_from_bytes,
            ("numpy", "dtype"): _numpy_dtype,
            RECONSTRUCT: _make_persistent_record,
        }
        for key in _numpy_scalar_names():
            allowed[key] = _numpy_scalar
        self.allowed = {k: _Allowed(".".join(k), fn) for k, fn in allowed.items()}
        self.allowed[MODULE_DICT] = self.module_dict_type

    def find_class(self, module, name):
        obj = self.allowed.get((module, name))
        if obj is None:
            raise _Refused(f"the global {short_repr(module)[1:-1]}.{short_repr(name)[1:-1]} is not allowed in an EDM network pickle")
        return obj

    def persistent_load(self, pid):
        raise _Refused("a persistent id (EDM pickles have none)")


class _HashingReader:
    """File wrapper that hashes every byte the unpickler reads."""

    def __init__(self, f):
        self.f, self.h = f, hashlib.sha256()

    def read(self, n=-1):
        b = self.f.read(n)
        self.h.update(b)
        return b

    def readline(self):
        b = self.f.readline()
        self.h.update(b)
        return b

    def readinto(self, buf):
        n = self.f.readinto(buf)
        self.h.update(memoryview(buf)[:n])
        return n


def read_edm_pickle(path: str | Path) -> dict:
    """Unpickle an EDM snapshot into plain data and inert records. Executes nothing from the file.

    The opcode stream is checked first (:func:`~sampler_bench.models.safe_pickle.scan_pickle`:
    allowed globals and opcodes, nesting depth, BUILD targets, lengths), then unpickled with the
    allow-list. The file's SHA-256 is returned under the extra key ``'__sha256__'``."""
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            size = os.fstat(raw.fileno()).st_size
            head = raw.read(2)
            raw.seek(0)
            if head[:2] == b"PK":
                raise _err(path, "it is a zip archive (a torch.save checkpoint), not an EDM network pickle (.pkl from NVlabs/edm)")
            if len(head) < 2 or head[0] != pickle.PROTO[0]:
                raise _err(path, "not a pickle file; expected an EDM network pickle (.pkl from NVlabs/edm)")
            if head[1] not in PICKLE_PROTOCOLS:
                raise _err(path, f"pickle protocol {head[1]} is not what EDM writes (protocol 4); not an EDM network pickle")
            try:
                scan_pickle(raw, allowed_globals=_allowed_globals(), build_targets=BUILD_TARGETS, max_depth=MAX_DEPTH,
                            max_bytes=size, protocols=PICKLE_PROTOCOLS)
            except PickleRefused as exc:
                if "truncated" in str(exc):
                    raise _err(path, "the file is truncated (pickle data ran out); download it again") from None
                raise _Refused(str(exc)) from None
            if raw.read(1):
                raise _err(path, "trailing data after the pickle; the file is not a single EDM network pickle")
            raw.seek(0)
            f = _HashingReader(raw)
            data = _AllowListUnpickler(f, max_tensor_bytes=size).load()
            if f.read(1):
                raise _err(path, "trailing data after the pickle; the file is not a single EDM network pickle")
    except BenchError:
        raise
    except _Refused as exc:
        raise _err(path, f"refused {exc}; nothing from the file was run") from None
    except EOFError:
        raise _err(path, "the file is truncated (pickle data ran out); download it again") from None
    except RecursionError:
        raise _err(path, "the pickle is nested too deeply; not an EDM network pickle") from None
    except MemoryError:
        raise _err(path, "the pickle needs more memory than is available; not an EDM network pickle") from None
    except OSError as exc:
        raise _err(path, f"cannot read it ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 -- malformed pickle data of any kind
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        if "ran out of input" in msg.lower() or "truncated" in msg.lower():
            raise _err(path, "the file is truncated (pickle data ran out); download it again") from None
        raise _err(path, f"malformed pickle ({type(exc).__name__}: {short_repr(msg, 200)[1:-1]}); not an EDM network pickle") from None
    if not isinstance(data, dict):
        raise _err(path, f"the pickle holds a {type(data).__name__}, expected EDM's snapshot dict with an 'ema' network; give an EDM network pickle (.pkl from NVlabs/edm)")
    if "ema" not in data:
        keys = [short_repr(k) for k in list(data)[:8]] + (["..."] if len(data) > 8 else [])
        raise _err(path, f"the snapshot has no 'ema' network (keys: {', '.join(keys) or 'none'}); give an EDM network pickle (.pkl from NVlabs/edm)")
    data["__sha256__"] = f.h.hexdigest()
    return data


# ---------------------------------------------------------------------------------------------
# Rebuild into our networks
# ---------------------------------------------------------------------------------------------


def _state_of(node, where):
    if isinstance(node, PersistentRecord):
        return node.state
    st = getattr(node, "state", None)
    if type(node).__name__ == "ModuleDictRecord" and isinstance(st, dict):
        return st
    raise _Refused(f"{where or 'the network'} is not a module record")


_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")


def flatten_state_dict(record, prefix: str = "") -> "collections.OrderedDict[str, torch.Tensor]":
    """The ``state_dict()`` the recorded module would have: parameters, persistent buffers, children.

    A module record met twice (the file shares it, which EDM never does) is refused: shared subtrees
    would otherwise be walked exponentially often."""
    out: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
    seen: set[int] = set()

    def walk(node, pre):
        if id(node) in seen:
            raise _Refused(f"module {short_repr(pre.rstrip('.'), 60)} appears twice in the module tree")
        seen.add(id(node))
        st = _state_of(node, pre.rstrip("."))
        params, buffers = st.get("_parameters", {}), st.get("_buffers", {})
        nonpersistent = st.get("_non_persistent_buffers_set", set()) or set()
        modules = st.get("_modules", {})
        if not all(isinstance(d, dict) for d in (params, buffers, modules)) or not isinstance(nonpersistent, (set, frozenset)):
            raise _Refused(f"module {short_repr(pre.rstrip('.') or 'ema', 60)} has a malformed state")
        for kind, items in (("parameter", params.items()), ("buffer", buffers.items()), ("module", modules.items())):
            for k, v in items:
                if not isinstance(k, str) or not _NAME.fullmatch(k):
                    raise _Refused(f"a {kind} named {short_repr(k)} in module {short_repr(pre.rstrip('.') or 'ema', 60)}")
                if v is None or (kind == "buffer" and k in nonpersistent):
                    continue
                if kind == "module":
                    walk(v, f"{pre}{k}.")
                elif not isinstance(v, torch.Tensor):
                    raise _Refused(f"{kind} {short_repr(pre + k, 60)} is not a tensor")
                else:
                    out[pre + k] = v

    walk(record, prefix)
    return out


def _plain(v, where, budget=None):
    """Constructor-argument values as plain Python (numpy scalars -> float/int); anything else refused.
    At most 10,000 values in all (a shared list tree would otherwise be walked exponentially often)."""
    budget = budget if budget is not None else [10_000]
    budget[0] -= 1
    if budget[0] < 0:
        raise _Refused(f"constructor arguments of {where} hold too many values")
    if isinstance(v, (bool, int, float)) or v is None:
        return v
    if isinstance(v, str):
        if len(v) > 256:
            raise _Refused(f"constructor argument {where} holds a string of {len(v)} characters")
        return v
    if isinstance(v, np.generic) and v.dtype.kind in _NUMERIC_KINDS:
        return v.item()
    if isinstance(v, (list, tuple)):
        return type(v)(_plain(x, where, budget) for x in v)
    if isinstance(v, dict):
        return {str(k): _plain(x, where, budget) for k, x in v.items()}
    raise _Refused(f"constructor argument {where} has an unsupported value of type {type(v).__name__}")


def _accepted_kwargs(cls) -> set[str]:
    return {n for n, p in inspect.signature(cls.__init__).parameters.items()
            if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def check_init_kwargs(class_name: str, kwargs: dict) -> dict:
    """Validate a preconditioner's stored constructor arguments; unknown ones are an error."""
    cls = nets.PRECONDITIONERS[class_name]
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise _Refused(f"{class_name} has malformed constructor arguments")
    model_type = kwargs.get("model_type", inspect.signature(cls.__init__).parameters["model_type"].default)
    if model_type not in nets.ARCHITECTURES:
        raise _Refused(f"unknown model_type {short_repr(model_type)} (known: {', '.join(nets.ARCHITECTURES)})")
    inner = _accepted_kwargs(nets.ARCHITECTURES[model_type]) - {"img_resolution", "in_channels", "out_channels", "label_dim"}
    unknown = sorted(set(kwargs) - _accepted_kwargs(cls) - inner)
    if unknown:
        raise _Refused(f"unknown constructor argument(s) {', '.join(map(short_repr, unknown[:5]))} for {class_name}/{model_type}")
    budget = [10_000]
    return {k: _plain(v, f"{class_name}.{k}", budget) for k, v in kwargs.items()}


MAX_RESOLUTION = 4096
MAX_CHANNELS = 1 << 16


def _int_arg(kwargs, cls, name, lo, hi):
    v = kwargs.get(name, inspect.signature(cls.__init__).parameters[name].default)
    if type(v) is not int or not lo <= v <= hi:
        raise _Refused(f"constructor argument {name}={short_repr(v)} is not an integer in {lo}..{hi}")
    return v


def check_structure(class_name: str, kwargs: dict, flat: dict) -> None:
    """Before building anything: the architecture the arguments describe must be one the stored
    tensors can fill (a UNetBlock holds at least 10 tensors; iDDPM's grid ``u`` has M + 1 entries),
    so that no argument such as ``num_blocks=10**5`` makes us build a huge network or loop for
    minutes before the weights are checked."""
    cls = nets.PRECONDITIONERS[class_name]
    model_type = kwargs.get("model_type", inspect.signature(cls.__init__).parameters["model_type"].default)
    arch = nets.ARCHITECTURES[model_type]
    res = _int_arg(kwargs, cls, "img_resolution", 1, MAX_RESOLUTION)
    _int_arg(kwargs, cls, "img_channels", 1, 64)
    _int_arg(kwargs, cls, "label_dim", 0, 100_000)
    _int_arg(kwargs, arch, "model_channels", 1, MAX_CHANNELS)
    blocks = _int_arg(kwargs, arch, "num_blocks", 0, 64)
    mult = kwargs.get("channel_mult", inspect.signature(arch.__init__).parameters["channel_mult"].default)
    if not isinstance(mult, (list, tuple)) or not mult or len(mult) > 16 or any(type(m) is not int or not 1 <= m <= 64 for m in mult):
        raise _Refused(f"constructor argument channel_mult={short_repr(mult)} is not a short list of small positive integers")
    if res >> (len(mult) - 1) < 1:
        raise _Refused(f"channel_mult has {len(mult)} levels, more than resolution {res} can be halved")
    unet_blocks = len(mult) * (2 * blocks + 3)
    if 10 * unet_blocks > len(flat):
        raise _Refused(f"its arguments describe {unet_blocks} U-Net blocks (at least {10 * unet_blocks} tensors) but the file holds {len(flat)} tensors")
    if class_name == "iDDPMPrecond":
        M = _int_arg(kwargs, cls, "M", 1, 10**6)
        u = flat.get("u")
        if u is None or tuple(u.shape) != (M + 1,):
            raise _Refused(f"iDDPM grid 'u' has shape {tuple(u.shape) if u is not None else 'missing'}, M={M} needs ({M + 1},)")


def build_network(ema) -> torch.nn.Module:
    """Rebuild our preconditioned network from the ``ema`` record and load its weights strictly."""
    if not isinstance(ema, PersistentRecord):
        raise _Refused("'ema' is not an EDM persistent network")
    if ema.class_name not in nets.PRECONDITIONERS:
        raise _Refused(f"'ema' is a {ema.class_name}, expected one of {', '.join(nets.PRECONDITIONERS)}")
    if ema.init_args not in ((), [], None):
        raise _Refused(f"{ema.class_name} was built with positional arguments, which EDM never does")
    if ema.init_kwargs is None:
        raise _Refused(f"{ema.class_name} carries no constructor arguments (_init_kwargs)")
    kwargs = check_init_kwargs(ema.class_name, ema.init_kwargs)
    flat = flatten_state_dict(ema)
    check_structure(ema.class_name, kwargs, flat)
    try:
        # built on the CPU with uninitialised storage (skip_init), not on the meta device: torch's first
        # meta-device arithmetic imports torch._dynamo (about 2 s), longer than reading the file
        with nets.skip_init():
            net = nets.PRECONDITIONERS[ema.class_name](**kwargs)
    except (TypeError, ValueError, ZeroDivisionError, IndexError, KeyError) as exc:
        raise _Refused(f"its constructor arguments do not build a {ema.class_name} ({exc})") from None
    expected = net.state_dict()
    missing = [k for k in expected if k not in flat]
    unexpected = [k for k in flat if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s) e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected e.g. {', '.join(unexpected[:3])}")
        raise _Refused(f"the weights do not match the {ema.class_name} architecture its arguments describe ({'; '.join(parts)})")
    for k, t in expected.items():
        if tuple(flat[k].shape) != tuple(t.shape):
            raise _Refused(f"tensor '{k}' has shape {tuple(flat[k].shape)}, the architecture needs {tuple(t.shape)}")
        if not flat[k].is_floating_point():
            raise _Refused(f"tensor '{k}' is not floating point")
    flat = collections.OrderedDict((k, v.detach().to(torch.float32).contiguous()) for k, v in flat.items())
    net.load_state_dict(flat, strict=True, assign=True)
    for k, t in net.state_dict().items():
        if t.is_meta:
            raise _Refused(f"tensor '{k}' was not provided by the file")
    if isinstance(net, nets.iDDPMPrecond):  # attributes derived from the loaded grid
        net.sigma_min, net.sigma_max = float(net.u[net.M - 1]), float(net.u[0])
    return net.eval().requires_grad_(False)


def load_edm_network(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """Read an EDM ``.pkl`` safely and return (our network on CPU, info about the file)."""
    data = read_edm_pickle(path)
    try:
        net = build_network(data["ema"])
    except _Refused as exc:
        raise _err(path, f"refused {exc}; nothing from the file was run") from None
    except RecursionError:
        raise _err(path, "its module tree is nested too deeply; not an EDM network") from None
    except (TypeError, ValueError, AttributeError, KeyError, RuntimeError) as exc:
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise _err(path, f"malformed network record ({type(exc).__name__}: {msg})") from None
    info = {"precond": type(net).__name__, "model_type": type(net.model).__name__,
            "init_kwargs": check_init_kwargs(type(net).__name__, data["ema"].init_kwargs),
            "module_src_sha256": data["ema"].module_src_sha256, "sha256": data["__sha256__"]}
    return net, info


# ---------------------------------------------------------------------------------------------
# Writer (our own classes -> EDM pickle format)
# ---------------------------------------------------------------------------------------------


def _reconstruct_placeholder(meta):  # pragma: no cover -- never called; pickled by name only
    raise RuntimeError("placeholder for torch_utils.persistence._reconstruct_persistent_obj")


class _EDMPickler(pickle._Pickler):  # the pure-Python pickler lets us name the reconstruct global
    module_src = inspect.getsource(nets)

    def reducer_override(self, obj):
        if not isinstance(obj, type) and getattr(type(obj), "_edm_persistent", False):
            meta = dict(type="class", version=PERSISTENCE_VERSION, module_src=self.module_src,
                        class_name=type(obj).__name__, state=dict(obj.__dict__))
            return (_reconstruct_placeholder, (meta,), None)
        return NotImplemented

    def save_global(self, obj, name=None):
        if obj is _reconstruct_placeholder:
            self.save(RECONSTRUCT[0])
            self.save(RECONSTRUCT[1])
            self.write(pickle.STACK_GLOBAL)
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[types.FunctionType] = save_global  # functions are saved through the table, not the method


def dumps_edm_pickle(net: torch.nn.Module, loss=None, augment_pipe=None, dataset_kwargs: dict | None = None) -> bytes:
    """EDM's snapshot dict ``{'ema', 'loss_fn', 'augment_pipe', 'dataset_kwargs'}`` as protocol-4 bytes."""
    if not isinstance(net, tuple(nets.PRECONDITIONERS.values())):
        raise TypeError("save_edm_pickle takes one of our preconditioned networks")
    net = net.eval().requires_grad_(False).cpu()
    data = {"ema": net, "loss_fn": loss if loss is not None else nets.EDMLoss(),
            "augment_pipe": augment_pipe,
            "dataset_kwargs": dataset_kwargs if dataset_kwargs is not None else
            {"class_name": "training.dataset.ImageFolderDataset", "path": "tiny.zip", "use_labels": bool(net.label_dim),
             "xflip": False, "cache": True, "resolution": net.img_resolution, "max_size": 0}}
    buf = io.BytesIO()
    _EDMPickler(buf, protocol=4).dump(data)
    return buf.getvalue()


def save_edm_pickle(net: torch.nn.Module, path: str | Path, **kw) -> Path:
    from sampler_bench.fileio import write_bytes

    write_bytes(path, dumps_edm_pickle(net, **kw))
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Tiny networks of the real architectures
# ---------------------------------------------------------------------------------------------

# small channel counts, 2 resolution levels; attention at the lower level
TINY_ARCHS: dict[str, dict] = {
    "ddpmpp": dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard", decoder_type="standard",
                   channel_mult_noise=1, resample_filter=[1, 1], model_channels=16, channel_mult=[1, 2], num_blocks=1,
                   dropout=0.0),
    "ncsnpp": dict(model_type="SongUNet", embedding_type="fourier", encoder_type="residual", decoder_type="standard",
                   channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=16, channel_mult=[1, 2],
                   num_blocks=1, dropout=0.0),
    "songunet-skip": dict(model_type="SongUNet", embedding_type="positional", encoder_type="skip", decoder_type="skip",
                          channel_mult_noise=1, resample_filter=[1, 3, 3, 1], model_channels=16, channel_mult=[1, 2],
                          num_blocks=1, dropout=0.0),
    "adm": dict(model_type="DhariwalUNet", model_channels=32, channel_mult=[1, 2], num_blocks=1, dropout=0.0),
}
TINY_PRECONDS = {"vp": "VPPrecond", "ve": "VEPrecond", "iddpm": "iDDPMPrecond", "edm": "EDMPrecond"}


def make_tiny_network(precond: str = "edm", arch: str = "ddpmpp", resolution: int = 8, channels: int = 3,
                      label_dim: int = 0, augment_dim: int = 0, seed: int = 0, use_fp16: bool = False) -> torch.nn.Module:
    """A randomly initialised network of a real EDM architecture with small channel counts."""
    if precond not in TINY_PRECONDS:
        raise BenchError(f"unknown preconditioner '{precond}'; use one of {', '.join(TINY_PRECONDS)}.")
    if arch not in TINY_ARCHS:
        raise BenchError(f"unknown architecture '{arch}'; use one of {', '.join(TINY_ARCHS)}.")
    if resolution < 4 or resolution & (resolution - 1):
        raise BenchError(f"--resolution {resolution} must be a power of two >= 4.")
    kw = dict(TINY_ARCHS[arch])
    kw["attn_resolutions"] = [resolution // 2]
    if augment_dim:
        kw["augment_dim"] = augment_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nets.PRECONDITIONERS[TINY_PRECONDS[precond]](img_resolution=resolution, img_channels=channels,
                                                           label_dim=label_dim, use_fp16=use_fp16, **kw)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # EDM zero-initialises output layers; give every weight a non-trivial value
            for name, p in net.named_parameters():
                if p.ndim >= 2:
                    fan_in = p[0].numel()
                    p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
                elif name.endswith("weight"):  # GroupNorm gain
                    p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# Denoiser adapter
# ---------------------------------------------------------------------------------------------


class EDMVPTime(LinearVP):
    """EDM VPPrecond's native time: sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), t in [epsilon_t, 1];
    the network's noise input is (M - 1) t."""

    name = "edm-vp"

    def __init__(self, beta_d: float = 19.9, beta_min: float = 0.1, epsilon_t: float = 1e-5, M: int = 1000):
        super().__init__(beta_min=beta_min, beta_max=beta_min + beta_d)
        self.beta_d, self.epsilon_t, self.M = float(beta_d), float(epsilon_t), int(M)

    def describe(self):
        return {"name": self.name, "beta_d": self.beta_d, "beta_min": self.beta_min, "epsilon_t": self.epsilon_t, "M": self.M}


class IDDPMGridTime(DiscreteVP):
    """iDDPMPrecond's discrete grid as a discrete VP time: step n = 0..M-1 has sigma u[M-1-n] (the
    network's noise input is exactly n); log sigma is interpolated between steps."""

    def __init__(self, u: torch.Tensor, M: int):  # noqa: D107 -- grid given directly, not via betas
        self.name = "iddpm-u"
        self.sigmas = as_f64(u[:M].detach().cpu()).flip(0).contiguous()
        self.abar = 1.0 / (1.0 + self.sigmas**2)
        self.log_sigmas = torch.log(self.sigmas)
        self.num_steps = int(M)

    def sigma(self, t):
        """Log-linear between steps; exactly the grid value at integer steps."""
        t = as_f64(t)
        out = super().sigma(t)
        n = t.clamp(0, self.num_steps - 1).round()
        return torch.where(t == n, self.tables(t.device)[1][n.long()], out)


class EDMDenoiser(Denoiser):
    """An EDM network as a sigma-space denoiser: it already is one (``D(x; sigma)``), so this only
    handles dtypes, one-hot labels, sigma range, ``round_sigma`` and the native time map."""

    def __init__(self, net: torch.nn.Module, name: str = "edm", device: torch.device | str = "cpu",
                 force_fp32: bool = False, info: dict | None = None):
        self.net = net
        self.name = name
        self.info = info or {}
        self.force_fp32 = force_fp32
        self.image_shape = (int(net.img_channels), int(net.img_resolution), int(net.img_resolution))
        self.num_classes = int(net.label_dim)
        self.label_required = self.num_classes > 0
        # EDM's generate.py clamps the sampling range to [0.002, 80] inside the network's range
        self.net_sigma_min, self.net_sigma_max = float(net.sigma_min), float(net.sigma_max)
        self.sigma_min = max(0.002, self.net_sigma_min)
        self.sigma_max = min(80.0, self.net_sigma_max)
        self.sigma_data = float(getattr(net, "sigma_data", 0.5))
        if isinstance(net, nets.VPPrecond):
            self.time_map = EDMVPTime(net.beta_d, net.beta_min, net.epsilon_t, net.M)
        elif isinstance(net, nets.iDDPMPrecond):
            self.time_map = IDDPMGridTime(net.u, net.M)
        else:
            self.time_map = None
        self._memory_ok: set[int] = set()
        # u[M-1] as a host float, read once here instead of once per round_sigma call
        self._u_last = float(net.u[net.M - 1]) if isinstance(net, nets.iDDPMPrecond) else None
        self._onehot: tuple | None = None  # (labels, device, one-hot of them): built once per labels tensor
        self.to(device)
        self._check_memory(1)  # refuse at load a network whose forward pass cannot fit even one sample

    @property
    def network_dtype(self) -> torch.dtype:
        use16 = bool(self.net.use_fp16) and not self.force_fp32 and self.device.type == "cuda"
        return torch.float16 if use16 else torch.float32

    def to(self, device):
        super().to(device)
        self.net.to(self.device)
        self._memory_ok = set()  # the memory check is per device
        return self

    def round_sigma(self, sigma):
        s = as_f64(sigma)
        if isinstance(self.net, nets.iDDPMPrecond):
            # EDM's own choice (cdist over u[0..M], on the network's device), except that a positive
            # sigma is never rounded to u[M] = 0: below u[M-1] / 2, outside the sampling range
            # [sigma_min, sigma_max] every schedule is clamped to, it snaps to u[M-1] instead
            out = self.net.round_sigma(s).to(F64)
            return torch.where((s > 0) & (out == 0), torch.full_like(s, self._u_last), out)
        return s

    @torch.no_grad()
    def denoise(self, x, sigma, labels=None):
        s = as_f64(sigma).to(x.device)
        # one sigma for the batch is passed as a 0-d tensor, as EDM's sampler does: the network
        # then embeds the noise level once (batch 1) and broadcasts, which is what makes its output
        # bit-identical to upstream's (a per-sample sigma vector rounds differently)
        s = s.reshape(()) if s.numel() == 1 else s.reshape(-1)
        onehot = None
        if self.num_classes and labels is not None:
            onehot = self._labels_onehot(labels, x.device)
        self._check_memory(x.shape[0])
        try:
            out = self.net(x.to(torch.float32), s, onehot, force_fp32=self.force_fp32)
        except (torch.OutOfMemoryError, MemoryError) as exc:
            raise self._memory_error(x.shape[0], str(exc)) from None
        except RuntimeError as exc:
            if "allocate" not in str(exc) and "out of memory" not in str(exc):
                raise
            raise self._memory_error(x.shape[0], str(exc)) from None
        return out.to(F64)

    def _labels_onehot(self, labels, device):
        """float32 one-hot of ``labels`` on ``device``, made once per labels tensor (a solver passes
        the same one on every call; ``one_hot`` on CPU also reads the labels' min and max back)."""
        seen = self._onehot
        if seen is None or seen[0] is not labels or seen[1] != device:
            onehot = torch.nn.functional.one_hot(labels.to(device).long(), self.num_classes).to(torch.float32)
            seen = self._onehot = (labels, device, onehot)
        return seen[2]

    def _check_memory(self, batch: int) -> None:
        if batch in self._memory_ok:
            return
        need, have = activation_bytes(self.net, batch), available_memory(self.device)
        if have is not None and need > have:
            raise self._memory_error(batch, f"about {need / 2**30:.2f} GiB needed, {have / 2**30:.2f} GiB available")
        self._memory_ok.add(batch)

    def _memory_error(self, batch: int, detail: str) -> BenchError:
        need = activation_bytes(self.net, batch)
        c, r = self.image_shape[0], self.image_shape[1]
        return BenchError(f"model '{self.name}' ({c}x{r}x{r}) needs about {need / 2**30:.2f} GiB of {self.device.type} memory "
                          f"for a batch of {batch} ({short_repr(detail, 120)[1:-1]}); use a smaller --batch or a machine with more memory.")

    def describe(self):
        d = super().describe()
        d.update({"precond": type(self.net).__name__, "architecture": type(self.net.model).__name__,
                  "use_fp16": bool(self.net.use_fp16), "network_dtype": str(self.network_dtype).replace("torch.", ""),
                  "net_sigma_min": self.net_sigma_min, "net_sigma_max": self.net_sigma_max,
                  "parameters": sum(p.numel() for p in self.net.parameters())})
        d.update({k: v for k, v in self.info.items() if k in ("path", "sha256", "module_src_sha256", "checkpoint")})
        return d


def check_network_matches(net: torch.nn.Module, name: str, path, expected: dict) -> None:
    """Refuse a loaded network that is not the registry entry it was downloaded as: its resolution,
    image channels, class count, parameter count and (where documented) preconditioner must all be
    what the entry says. Keys of ``expected`` that are None are not checked."""
    found = {"resolution": int(net.img_resolution), "channels": int(net.img_channels), "classes": int(net.label_dim),
             "parameters": sum(p.numel() for p in net.parameters()), "precond": type(net).__name__}
    bad = [f"{k} {found[k]} (expected {v})" for k, v in expected.items() if v is not None and found[k] != v]
    if bad:
        raise BenchError(f"checkpoint '{name}' at {path} is not the registered network: it has {', '.join(bad)}; "
                         f"delete it (bench download --clear {name}) and download it again, or fix checkpoints/*.yaml.")


def load_edm_denoiser(path: str | Path, device: torch.device | str = "cpu", name: str | None = None,
                      force_fp32: bool = False, extra_info: dict | None = None, expected: dict | None = None) -> EDMDenoiser:
    net, info = load_edm_network(path)
    if expected:
        check_network_matches(net, name or Path(path).stem, path, expected)
    info["path"] = str(path)
    info.update(extra_info or {})
    return EDMDenoiser(net, name=name or Path(path).stem, device=device, force_fp32=force_fp32, info=info)
