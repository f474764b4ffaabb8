"""The EDM pickle format: our writer matches the real format, our loader reads it back bit for bit,
and every bad or malicious input is refused with a one-line error before anything runs."""

import io
import os
import pickle
import pickletools

import numpy as np
import pytest
import torch

from sampler_bench.errors import BenchError
from sampler_bench.models import edm
from sampler_bench.models.nets import edm as nets

# research/checkpoints.md 1.2: the globals a real EDM pickle references, and the opcodes seen in one
REAL_GLOBALS = {
    ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch.storage", "_load_from_bytes"), ("numpy", "dtype"), ("torch.nn.modules.container", "ModuleDict"),
    ("torch_utils.persistence", "_reconstruct_persistent_obj"),
}
NUMPY_SCALAR = {("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar")}
REAL_OPCODES = {
    "PROTO", "FRAME", "SHORT_BINUNICODE", "BINUNICODE", "STACK_GLOBAL", "MEMOIZE", "BINGET", "LONG_BINGET",
    "REDUCE", "NEWOBJ", "BUILD", "EMPTY_DICT", "EMPTY_LIST", "EMPTY_SET", "EMPTY_TUPLE", "SETITEM", "SETITEMS",
    "APPEND", "APPENDS", "MARK", "TUPLE1", "TUPLE2", "TUPLE3", "TUPLE", "BININT", "BININT1", "BININT2", "BINFLOAT",
    "NEWTRUE", "NEWFALSE", "NONE", "SHORT_BINBYTES", "BINBYTES", "STOP",
}
CASES = [("vp", "ddpmpp", 10), ("ve", "ncsnpp", 0), ("iddpm", "adm", 5), ("edm", "adm", 0), ("edm", "songunet-skip", 3)]


def pickle_globals(data: bytes) -> tuple[set, set, int]:
    """(globals, opcode names, protocol) of a pickle, by static reading (nothing is unpickled)."""
    memo, pushed, found, ops, proto = [], [], set(), set(), None
    last_str = None
    for op, arg, _ in pickletools.genops(data):
        ops.add(op.name)
        if op.name == "PROTO":
            proto = arg
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            pushed.append(arg)
            last_str = arg
            continue
        elif op.name in ("BINGET", "LONG_BINGET"):
            pushed.append(memo[arg])
            last_str = memo[arg]
            continue
        elif op.name == "MEMOIZE":
            memo.append(last_str)
            continue
        elif op.name == "STACK_GLOBAL":
            found.add((pushed[-2], pushed[-1]))
        elif op.name in ("GLOBAL", "INST"):
            found.add(tuple(arg.split(" ", 1)))
        last_str = None
    return found, ops, proto


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("edm")
    out = {}
    for precond, arch, classes in CASES:
        net = edm.make_tiny_network(precond, arch, label_dim=classes, seed=len(out))
        path = edm.save_edm_pickle(net, d / f"{precond}-{arch}.pkl")
        out[(precond, arch)] = (net, path)
    return out


def test_writer_produces_the_real_format(tiny_files):
    for net, path in tiny_files.values():
        data = path.read_bytes()
        found, ops, proto = pickle_globals(data)
        assert proto == 4
        assert found - NUMPY_SCALAR == REAL_GLOBALS  # SongUNet stores numpy float64 skip_scale
        assert found & NUMPY_SCALAR or isinstance(net.model, nets.DhariwalUNet)
        assert ops <= REAL_OPCODES, ops - REAL_OPCODES
        assert {"REDUCE", "NEWOBJ", "BUILD", "STACK_GLOBAL", "BINFLOAT", "EMPTY_SET"} <= ops
    # the snapshot dict and its persistent records look like EDM's
    data = edm.read_edm_pickle(tiny_files[("vp", "ddpmpp")][1])
    assert [k for k in data if k != "__sha256__"] == ["ema", "loss_fn", "augment_pipe", "dataset_kwargs"]
    ema = data["ema"]
    assert isinstance(ema, edm.PersistentRecord) and ema.class_name == "VPPrecond" and ema.init_args == ()
    assert ema.init_kwargs["model_type"] == "SongUNet" and ema.init_kwargs["label_dim"] == 10
    assert data["loss_fn"].class_name == "EDMLoss" and data["augment_pipe"] is None
    block = ema.state["_modules"]["model"].state["_modules"]["enc"].state["_modules"]["8x8_block0"]
    assert block.class_name == "UNetBlock" and isinstance(block.init_kwargs["skip_scale"], np.float64)


@pytest.mark.parametrize("case", [c[:2] for c in CASES], ids=lambda c: "-".join(c))
def test_round_trip_is_bit_exact(tiny_files, case):
    net, path = tiny_files[case]
    loaded, info = edm.load_edm_network(path)
    assert type(loaded) is type(net) and type(loaded.model) is type(net.model)
    assert info["precond"] == type(net).__name__ and len(info["sha256"]) == 64
    sd_a, sd_b = net.state_dict(), loaded.state_dict()
    assert list(sd_a) == list(sd_b) and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 8, 8, generator=g)
    sigma = torch.tensor([0.01, 1.3, 60.0])
    labels = torch.eye(net.label_dim)[torch.tensor([0, 1, 2]) % max(net.label_dim, 1)] if net.label_dim else None
    a, b = net(x, sigma, labels), loaded(x, sigma, labels)
    assert torch.equal(a, b) and a.abs().sum() > 0
    assert loaded.sigma_min == net.sigma_min and loaded.sigma_max == net.sigma_max


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


class _Pickler(edm._EDMPickler):
    """Our writer with hooks to corrupt the metadata of persistent objects."""

    patch = staticmethod(lambda meta: None)

    def reducer_override(self, obj):
        rv = super().reducer_override(obj)
        if rv is not NotImplemented:
            self.patch(rv[1][0])
        return rv


def _dump(obj, patch=None) -> bytes:
    buf = io.BytesIO()
    p = _Pickler(buf, protocol=4)
    if patch:
        p.patch = patch
    p.dump(obj)
    return buf.getvalue()


def _refused(tmp_path, data: bytes, match: str):
    path = tmp_path / "bad.pkl"
    path.write_bytes(data)
    with pytest.raises(BenchError, match=match) as exc:
        edm.load_edm_network(path)
    assert "\n" not in str(exc.value)
    return str(exc.value)


def _snapshot(net=None, **extra):
    net = net or edm.make_tiny_network("edm", "ddpmpp")
    return {"ema": net, "loss_fn": nets.EDMLoss(), "augment_pipe": None, "dataset_kwargs": {}, **extra}


def test_not_a_pickle_zip_and_wrong_protocol(tmp_path):
    _refused(tmp_path, b"hello, this is text\n", "not a pickle")
    _refused(tmp_path, b"", "not a pickle")
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    _refused(tmp_path, buf.getvalue(), "zip archive")
    _refused(tmp_path, pickle.dumps({"ema": 1}, protocol=2), "protocol 2")
    _refused(tmp_path, pickle.dumps({"ema": 1}, protocol=0), "not a pickle")


def test_truncated_file_and_trailing_data(tmp_path, tiny_files):
    data = tiny_files[("vp", "ddpmpp")][1].read_bytes()
    for cut in (len(data) // 2, len(data) - 1, 40):
        _refused(tmp_path, data[:cut], "truncated|malformed")
    _refused(tmp_path, data + b"junk", "trailing data")


def test_missing_ema_and_wrong_top_level(tmp_path):
    _refused(tmp_path, _dump({"loss_fn": nets.EDMLoss(), "augment_pipe": None}), "no 'ema'")
    _refused(tmp_path, pickle.dumps([1, 2, 3], protocol=4), "holds a list")
    _refused(tmp_path, _dump({"ema": nets.EDMLoss()}), "'ema' is a EDMLoss")


def test_wrong_persistence_version_and_unknown_class(tmp_path):
    snap = _snapshot()
    _refused(tmp_path, _dump(snap, lambda m: m.update(version=5)), "persistence version 5")
    _refused(tmp_path, _dump(snap, lambda m: m.update(type="module")), "type 'module'")
    _refused(tmp_path, _dump(snap, lambda m: m["class_name"] == "GroupNorm" and m.update(class_name="EvilNorm")),
             "unknown persistent class 'EvilNorm'")


def test_unknown_or_inconsistent_constructor_arguments(tmp_path):
    net = edm.make_tiny_network("vp", "ddpmpp")
    net._init_kwargs = {**net._init_kwargs, "magic_option": 3}
    msg = _refused(tmp_path, _dump(_snapshot(net)), "unknown constructor argument")
    assert "magic_option" in msg
    net = edm.make_tiny_network("vp", "ddpmpp")
    net._init_kwargs = {**net._init_kwargs, "model_channels": 32}  # weights are for 16
    _refused(tmp_path, _dump(_snapshot(net)), "shape")
    net = edm.make_tiny_network("vp", "ddpmpp")
    net._init_kwargs = {**net._init_kwargs, "model_type": "EvilUNet"}
    _refused(tmp_path, _dump(_snapshot(net)), "unknown model_type")
    net = edm.make_tiny_network("vp", "ddpmpp")
    net._init_kwargs = {**net._init_kwargs, "attn_resolutions": []}  # attention weights become unexpected
    _refused(tmp_path, _dump(_snapshot(net)), "unexpected")


class _Payload:
    """Unpickling this would run ``fn(*args)``."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_malicious_globals_are_never_called(tmp_path):
    import builtins
    import subprocess

    marker = tmp_path / "pwned"
    payloads = [
        _Payload(os.system, f"touch {marker}"),
        _Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
        _Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        _Payload(subprocess.call, ["touch", str(marker)]),
    ]
    for p in payloads:
        # alone, as the 'ema' network, and hidden deep inside an otherwise genuine snapshot
        for obj in (p, {"ema": p}, _snapshot(dataset_kwargs={"path": p})):
            msg = _refused(tmp_path, _dump(obj), "is not allowed")
            assert "nothing from the file was run" in msg
            assert not marker.exists()
    net = edm.make_tiny_network("edm", "ddpmpp")
    net.model.map_layer0._init_kwargs = {"payload": _Payload(os.system, f"touch {marker}")}
    _refused(tmp_path, _dump(_snapshot(net)), "os.system|posix.system")
    assert not marker.exists()


def test_malicious_storage_bytes_never_reach_a_loader(tmp_path):
    # the storage bytes are parsed by our own legacy-format reader (never torch.load)
    marker = tmp_path / "pwned"
    inner = pickle.dumps(_Payload(os.system, f"touch {marker}"), protocol=2)
    evil_storage = _Payload(torch.storage._load_from_bytes, inner)
    _refused(tmp_path, _dump({"ema": evil_storage}), "system is not allowed")
    assert not marker.exists()


def test_allowlisted_callables_cannot_be_modified(tmp_path):
    # PROTO 4; push the allow-listed collections.OrderedDict global; BUILD a state onto the global
    # itself (which could otherwise rewrite e.g. a function's defaults); STOP
    def s(text):
        return b"\x8c" + bytes([len(text)]) + text.encode()

    raw = b"\x80\x04" + s("collections") + s("OrderedDict") + b"\x93" + b"}" + s("__defaults__") + b"Nsb."
    pickletools.dis(raw, out=io.StringIO())  # well-formed
    _refused(tmp_path, raw, r"setting the state \(BUILD\) of 'collections.OrderedDict'")
    assert edm._rebuild_parameter.__defaults__ == (False, None)
