"""Hostile and corrupt EDM pickles (issue 10, items 4-8), generated here at test time and never
committed. Each is refused with a one-line error and exit 2, no payload runs (a marker file is never
created), and the amplification cases stay within bounded memory: they are loaded together in one
child process whose peak RSS is measured."""

import collections
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch
from typer.testing import CliRunner

from sampler_bench.cli import app
from sampler_bench.models import edm
from sampler_bench.models.nets import edm as nets

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RSS_LIMIT_MB = 700  # importing torch and the CLI takes ~300 MB; every amplification case asks for GBs


class _Call:
    """Pickles as ``fn(*args)`` (REDUCE), optionally followed by BUILD with ``state``."""

    def __init__(self, fn, args, state=None):
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


def _dump(obj) -> bytes:
    buf = io.BytesIO()
    edm._EDMPickler(buf, protocol=4).dump(obj)
    return buf.getvalue()


def _payload(marker):
    return _Call(os.system, (f"touch {marker}",))


def _snapshot(net, **extra):
    return {"ema": net, "loss_fn": nets.EDMLoss(), "augment_pipe": None, "dataset_kwargs": {}, **extra}


def _deep_key(depth: int, marker) -> bytes:
    # [{((((...)))): 1}, os.system("touch marker")]: a dict key nested `depth` tuples deep, then a payload
    tail = pickle.dumps(_payload(marker), protocol=2)[2:-1]  # the payload's opcodes without PROTO/STOP
    return b"\x80\x04(}" + b")" + b"\x85" * depth + b"K\x01s" + tail + b"l."


def _stride0_network() -> bytes:
    """An ADM network of ~400M parameters whose every tensor is one float repeated (stride 0):
    a few hundred KB on disk, 1.6 GB once materialised."""
    with torch.device("meta"), nets.skip_init():
        net = nets.EDMPrecond(img_resolution=8, img_channels=3, model_type="DhariwalUNet", model_channels=1024,
                              channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)
    for mod in net.modules():
        for k, v in mod._parameters.items():
            if v is not None:
                mod._parameters[k] = torch.nn.Parameter(torch.zeros(1).expand(v.shape), requires_grad=False)
        for k, v in mod._buffers.items():
            if v is not None:
                mod._buffers[k] = torch.zeros(1).expand(v.shape)
    return _dump(_snapshot(net))


class _StorageRef:
    pass


def _legacy_storage(declared: int, data: bytes) -> bytes:
    """torch's legacy storage format (what _load_from_bytes reads) declaring `declared` floats."""
    ref = _StorageRef()

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", declared, None) if obj is ref else None

    buf = io.BytesIO()
    for v in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                             "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(v, buf, protocol=2)
    P(buf, protocol=2).dump(ref)
    pickle.dump(["0"], buf, protocol=2)
    return buf.getvalue() + struct.pack("<q", declared) + data


def _tensor_from(storage_bytes: bytes, size, stride) -> _Call:
    storage = _Call(torch.storage._load_from_bytes, (storage_bytes,))
    return _Call(torch._utils._rebuild_tensor_v2, (storage, 0, size, stride, False, collections.OrderedDict()))


def _grown_storage() -> bytes:
    # a header declaring 500M floats (2 GB) over 16 bytes of data
    return _dump({"ema": _tensor_from(_legacy_storage(500_000_000, b"\0" * 16), (4,), (1,))})


def _zip_storage(deflated_mb: int) -> bytes:
    """A torch.save zip archive (the new format) as storage bytes, its data record deflated."""
    buf = io.BytesIO()
    torch.save(torch.zeros(4), buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for info in src.infolist():
            with z.open(info.filename, "w", force_zip64=True) as w:
                if info.filename.endswith("/data/0"):
                    chunk = bytes(1 << 20)
                    for _ in range(deflated_mb):
                        w.write(chunk)
                else:
                    w.write(src.read(info))
    return _dump({"ema": _Call(torch.storage._load_from_bytes, (out.getvalue(),))})


def _check_cli(path, match, marker):
    res = runner.invoke(app, ["sample", "--model", str(path), "--solver", "heun", "--nfe", "3", "--num", "1",
                              "--out", str(path.parent / "out")])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and res.output.count("\n") == 1 and "\x1b" not in res.output, res.output
    assert match in res.output, res.output
    assert not marker.exists() and not (path.parent / "out").exists()
    return res.output


# ---------------------------------------------------------------------------------------------
# Amplification cases: one child process, peak RSS measured
# ---------------------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import json, resource, sys
    from typer.testing import CliRunner
    from sampler_bench.cli import app
    out = {}
    for path in sys.argv[1:]:
        res = CliRunner().invoke(app, ["sample", "--model", path, "--solver", "heun", "--nfe", "3", "--num", "1",
                                       "--out", path + ".out"])
        out[path] = [res.exit_code, res.output]
    # peak RSS of this process image (VmHWM starts afresh at exec; ru_maxrss would carry the
    # forking parent's peak over)
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
    out["rss_mb"] = int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))
""")


def test_amplification_cases_stay_in_bounded_memory(tmp_path):
    marker = tmp_path / "pwned"
    cases = {
        # item 4: a key nested 10^6 deep crashed the C unpickler (exit 139); 10^5 a RecursionError traceback
        "deep6.pkl": (_deep_key(1_000_000, marker), "nested more than 64 levels"),
        "deep5.pkl": (_deep_key(100_000, marker), "nested more than 64 levels"),
        # item 5: stride-0 tensors materialised to 1.6 GB; a header growing a storage to 2 GB;
        # a deflated zip record inflating to 800 MB
        "stride0.pkl": (_stride0_network(), "non-contiguous strides"),
        "grow.pkl": (_grown_storage(), "declaring 500000000 elements but holding 16 bytes"),
        "zip.pkl": (_zip_storage(800), "zip format"),
    }
    paths = []
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    assert max(len(d) for d, _ in cases.values()) < 4 << 20  # small files
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, *paths], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (_, match) in cases.items():
        code, output = res[str(tmp_path / name)]
        assert code == 2 and output.startswith("error: ") and output.count("\n") == 1, (name, output)
        assert match in output and "nothing from the file was run" in output, (name, output)
        assert not (tmp_path / (name + ".out")).exists()
    assert res["rss_mb"] < RSS_LIMIT_MB, res["rss_mb"]
    assert not marker.exists()


def test_a_real_cli_process_exits_2_with_one_line(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "deep.pkl"
    path.write_bytes(_deep_key(1_000_000, marker))
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "sampler_bench", "sample", "--model", str(path), "--solver", "heun", "--nfe", "3",
                           "--num", "1", "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "nested more than 64" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout and not marker.exists() and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Cheap cases, in process
# ---------------------------------------------------------------------------------------------


def test_missing_ema_message_is_bounded_and_escaped(tmp_path):
    path = tmp_path / "keys.pkl"
    path.write_bytes(_dump({"\x1b[31m" + "k" * 5000: 1, **{f"x{i}": i for i in range(50)}}))
    marker = tmp_path / "none"
    out = _check_cli(path, "has no 'ema' network", marker)
    assert len(out) < 600 and "\\x1b" in out and "..." in out


def test_nonscalar_dict_keys_and_shared_trees_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    # a key that is a tuple tree sharing its children: hashing it costs 2^depth (written by hand:
    # building it in Python would hash it)
    key = b")\x94" + b"".join(b"h" + bytes([i]) + b"h" + bytes([i]) + b"\x86\x94" for i in range(60))
    tail = pickle.dumps(_payload(marker), protocol=2)[2:-1]
    path = tmp_path / "hashbomb.pkl"
    path.write_bytes(b"\x80\x04(}" + key + b"K\x01s" + tail + b"l.")
    _check_cli(path, "dict key or set item that is not a plain value", marker)
    # constructor arguments that share a list tree: walking them costs 2^depth
    net = edm.make_tiny_network("edm", "ddpmpp")
    tree = [1]
    for _ in range(25):
        tree = [tree, tree]
    net._init_kwargs = dict(net._init_kwargs, resample_filter=tree)
    path = tmp_path / "shared.pkl"
    path.write_bytes(_dump(_snapshot(net)))
    _check_cli(path, "hold too many values", marker)


@pytest.mark.parametrize("change,match", [
    ({"num_blocks": 100_000}, "num_blocks=100000 is not an integer in 0..64"),
    ({"num_blocks": 50}, "describe 206 U-Net blocks"),
    ({"channel_mult": [1] * 5_000}, "short list"),
    ({"channel_mult": [1] * 12}, "more than resolution 8 can be halved"),
    ({"model_channels": 10**9}, "model_channels"),
], ids=["num_blocks", "num_blocks_vs_tensors", "channel_mult_long", "channel_mult_levels", "model_channels"])
def test_arguments_are_checked_against_the_tensors_before_building(tmp_path, change, match):
    # item 6: before this check, these built huge networks or looped for minutes
    marker = tmp_path / "pwned"
    net = edm.make_tiny_network("edm", "ddpmpp")
    net._init_kwargs = dict(net._init_kwargs, **change)
    path = tmp_path / "big.pkl"
    path.write_bytes(_dump(_snapshot(net, dataset_kwargs={"note": "x"})))
    _check_cli(path, match, marker)


def test_iddpm_grid_length_is_checked_before_building(tmp_path):
    net = edm.make_tiny_network("iddpm", "adm")
    net._init_kwargs = dict(net._init_kwargs, M=10**8)  # the grid loop would run 10^8 times
    path = tmp_path / "m.pkl"
    path.write_bytes(_dump(_snapshot(net)))
    _check_cli(path, "M=100000000 is not an integer in 1..1000000", tmp_path / "none")
    net._init_kwargs = dict(net._init_kwargs, M=999)
    path.write_bytes(_dump(_snapshot(net)))
    _check_cli(path, "iDDPM grid 'u' has shape (1001,), M=999 needs (1000,)", tmp_path / "none")


def test_a_network_too_large_to_sample_is_refused_with_its_size(tmp_path):
    # item 7: a consistent small file declaring a large img_resolution (4096 in the report) failed in an allocation
    net = edm.make_tiny_network("edm", "ddpmpp", resolution=1024)
    path = edm.save_edm_pickle(net, tmp_path / "huge.pkl")
    assert path.stat().st_size < 2 << 20
    _check_cli(path, "GiB of cpu memory for a batch of 1", tmp_path / "none")


def test_build_is_refused_on_tensors_records_and_globals(tmp_path):
    # item 8: BUILD reached Tensor.__setstate__ (hooks, requires_grad, set_ of a view) and could
    # rewrite a persistent record after it was checked
    marker = tmp_path / "pwned"
    storage = torch.zeros(4).storage()
    tensor = _Call(torch._utils._rebuild_tensor_v2, (storage, 0, (4,), (1,), False, collections.OrderedDict()),
                   state={"requires_grad": True})
    path = tmp_path / "tensor.pkl"
    path.write_bytes(_dump({"ema": tensor, "z": _payload(marker)}))
    _check_cli(path, "setting the state (BUILD) of 'torch._utils._rebuild_tensor_v2'", marker)

    class Rewriting(edm._EDMPickler):
        def reducer_override(self, obj):
            rv = super().reducer_override(obj)
            if rv is not NotImplemented and rv[1][0]["class_name"] == "EDMPrecond":
                return (rv[0], rv[1], {"class_name": "EDMPrecond", "state": {}})
            return rv

    buf = io.BytesIO()
    Rewriting(buf, protocol=4).dump(_snapshot(edm.make_tiny_network("edm", "ddpmpp")))
    path.write_bytes(buf.getvalue())
    _check_cli(path, "setting the state (BUILD) of 'torch_utils.persistence._reconstruct_persistent_obj'", marker)


def test_storage_reader_refuses_forged_headers(tmp_path):
    good = torch.arange(4, dtype=torch.float32).storage().__reduce__()[1][0]
    rec = edm.load_legacy_storage(good)
    assert torch.equal(rec.flat, torch.arange(4, dtype=torch.float32))
    for data, match in [
        (_legacy_storage(4, b"\0" * 8), "declaring 4 elements but holding 8 bytes"),
        (_legacy_storage(4, b"\0" * 20), "declaring 4 elements but holding 20 bytes"),
        (good[:-1], "declaring 4 elements"),
        (b"PK\x03\x04" + good, "zip format"),
    ]:
        with pytest.raises(edm.PickleRefused, match=match):
            edm.load_legacy_storage(data)
    # a view reaching past its storage, or a negative offset, is refused
    for size, stride, match in [((5,), (1,), "in a storage of 4"), ((2, 2), (1, 2), "non-contiguous")]:
        path = tmp_path / "view.pkl"
        path.write_bytes(_dump({"ema": _tensor_from(good, size, stride)}))
        _check_cli(path, match, tmp_path / "none")
