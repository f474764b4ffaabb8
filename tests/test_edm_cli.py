"""EDM networks end to end through the CLI (every registered solver), `bench tiny-edm`,
`bench models`, and the checkpoint cache: resumable download, checksum record/verify, offline use."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from http_support import serve

from sampler_bench.cli import app
from sampler_bench.errors import BenchError
from sampler_bench.models import checkpoints as ckpts
from sampler_bench.models.registry import MODELS, edm_checkpoint_entry, load_model
from sampler_bench.solvers import all_solvers

runner = CliRunner()


def invoke(*args):
    res = runner.invoke(app, [str(a) for a in args])
    return res


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    paths = {}
    for precond, arch, classes in (("vp", "ddpmpp", 3), ("iddpm", "adm", 0), ("edm", "ncsnpp", 0)):
        p = d / f"{precond}.pkl"
        res = invoke("tiny-edm", "--out", p, "--precond", precond, "--arch", arch, "--classes", classes, "--seed", 1)
        assert res.exit_code == 0, res.output
        paths[precond] = p
    return paths


def _small_nfe(spec):
    opts = {k: o.default for k, o in spec.options.items()}
    return spec.nfe(spec.min_steps + 1, opts)


def _sample(tmp_path, model, solver, nfe, *extra):
    out = tmp_path / f"{Path(str(model)).stem}-{solver}-{nfe}"
    res = invoke("sample", "--model", model, "--solver", solver, "--nfe", nfe, "--num", 2, "--batch", 2,
                 "--device", "cpu", "--out", out, *extra)
    assert res.exit_code == 0, f"{solver}: {res.output}"
    rec = json.loads((out / "run.json").read_text())
    assert rec["nfe_counted"] == nfe
    return rec, np.load(out / "samples.npz")


@pytest.mark.parametrize("spec", all_solvers(), ids=lambda s: s.name)
def test_every_solver_runs_on_a_tiny_edm_network(tmp_path, tiny, spec):
    nfe = _small_nfe(spec)
    rec, npz = _sample(tmp_path, tiny["vp"], spec.name, nfe)
    assert npz["images"].shape == (2, 8, 8, 3) and npz["images"].dtype == np.uint8
    assert set(npz["labels"]) <= {0, 1, 2}  # conditional net: labels drawn per sample
    m = rec["resolved"]["model"]
    assert m["precond"] == "VPPrecond" and m["time_map"]["name"] == "edm-vp" and m["num_classes"] == 3


def test_iddpm_and_edm_preconditioned_nets_sample(tmp_path, tiny):
    rec, _ = _sample(tmp_path, tiny["iddpm"], "euler", 4, "--schedule", "discrete-uniform")
    u = rec["resolved"]["sigmas"]
    assert rec["resolved"]["model"]["time_map"]["name"] == "iddpm-u" and u[-1] == 0.0 and len(u) == 5
    rec, _ = _sample(tmp_path, tiny["iddpm"], "heun", 3)  # karras grid snapped to the u grid
    grid = set(float(s) for s in load_model(str(tiny["iddpm"])).net.u)
    assert all(s in grid for s in rec["resolved"]["sigmas"])
    rec, _ = _sample(tmp_path, tiny["edm"], "heun", 3)
    assert rec["resolved"]["model"]["precond"] == "EDMPrecond" and rec["resolved"]["model"]["time_map"] is None
    res = invoke("sample", "--model", tiny["edm"], "--solver", "heun", "--nfe", 3, "--num", 1, "--class-label", 1,
                 "--out", tmp_path / "x")
    assert res.exit_code == 2 and "unconditional" in res.output


def test_tiny_edm_command_errors(tmp_path, tiny):
    assert invoke("tiny-edm", "--out", tmp_path / "a.pt").exit_code == 2
    res = invoke("tiny-edm", "--out", tiny["vp"])
    assert res.exit_code == 2 and "exists" in res.output
    res = invoke("tiny-edm", "--out", tmp_path / "b.pkl", "--arch", "resnet")
    assert res.exit_code == 2 and "unknown architecture" in res.output


def test_bad_pickle_through_the_cli_is_one_line(tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle at all")
    res = invoke("sample", "--model", bad, "--solver", "heun", "--nfe", 3, "--num", 1, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "not a pickle" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# Registry, cache, download
# ---------------------------------------------------------------------------------------------


def test_registry_lists_every_published_network():
    names = set(ckpts.KNOWN)
    for arch in ("vp", "ve"):
        for data in ("cifar10-32x32-cond", "cifar10-32x32-uncond", "ffhq-64x64-uncond", "afhqv2-64x64-uncond"):
            assert f"edm-{data}-{arch}" in names and f"baseline-{data}-{arch}" in names
    assert {"edm-imagenet-64x64-cond-adm", "baseline-imagenet-64x64-cond-adm"} <= names
    ck = ckpts.KNOWN["edm-cifar10-32x32-cond-vp"]
    assert ck.url.startswith("https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/") and ck.fid_ref == "cifar10-32x32"
    assert ck.precond == "EDMPrecond" and ck.classes == 10 and ck.paper == {"fid": 1.79, "nfe": 35, "sampler": ck.paper["sampler"]}
    assert all(c.fid_ref and c.paper.get("fid") for c in ckpts.KNOWN.values())
    assert MODELS["edm-cifar10-32x32-cond-vp"].kind == "edm"


@pytest.fixture
def server(tiny):
    payload = tiny["vp"].read_bytes()
    with serve(payload) as (srv, handler):
        yield srv, handler, payload


def test_download_resumes_records_and_verifies_checksum(tmp_path, monkeypatch, server):
    srv, handler, payload = server
    monkeypatch.setenv("SAMPLER_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SAMPLER_BENCH_OFFLINE", raising=False)
    ck = ckpts.Checkpoint(name="tiny-ck", url=f"http://127.0.0.1:{srv.server_address[1]}/edm/tiny-ck.pkl",
                          format="edm-pkl", file="tiny-ck.pkl", resolution=8, classes=3)
    monkeypatch.setitem(MODELS, ck.name, edm_checkpoint_entry(ck))
    assert ckpts.cache_state(ck) == "not downloaded (no sha256 pin)"
    ck.path.parent.mkdir(parents=True)
    ck.part_path.write_bytes(payload[:1000])  # an interrupted earlier download
    assert ckpts.cache_state(ck).startswith("partial download")

    den = load_model("tiny-ck", "cpu")  # downloads the rest, records the checksum, loads
    assert handler.ranges == ["bytes=1000-"]
    assert ck.path.read_bytes() == payload and not ck.part_path.exists()
    assert ckpts.recorded_sha256(ck) == den.info["sha256"] and den.num_classes == 3
    assert ckpts.cache_state(ck) == "cached, sha256 recorded (no pin)"
    res = invoke("models")
    assert res.exit_code == 0 and "tiny-ck" in res.output and "cached, sha256" in res.output

    srv.shutdown()  # later runs use the cache without the network
    monkeypatch.setenv("SAMPLER_BENCH_OFFLINE", "1")
    assert load_model("tiny-ck:fp32=1", "cpu").force_fp32
    assert len(handler.ranges) == 1

    data = bytearray(payload)
    data[len(data) // 2] ^= 0xFF
    ck.path.write_bytes(bytes(data))
    with pytest.raises(BenchError, match="checksum mismatch"):
        load_model("tiny-ck", "cpu")
    res = invoke("sample", "--model", "tiny-ck", "--solver", "heun", "--nfe", 3, "--num", 1, "--out", tmp_path / "r")
    assert res.exit_code == 2 and "checksum mismatch" in res.output


def test_pinned_checksum_and_missing_file_offline_or_unreachable(tmp_path, monkeypatch, server):
    srv, handler, payload = server
    monkeypatch.setenv("SAMPLER_BENCH_CACHE", str(tmp_path / "cache"))
    url = f"http://127.0.0.1:{srv.server_address[1]}/tiny.pkl"
    pinned = ckpts.Checkpoint(name="pin", url=url, format="edm-pkl", file="pin.pkl", sha256="0" * 64)
    monkeypatch.delenv("SAMPLER_BENCH_OFFLINE", raising=False)
    with pytest.raises(BenchError, match="pinned in the registry"):
        ckpts.ensure_checkpoint(pinned, show_progress=False)
    assert handler.ranges == [None]

    missing = ckpts.Checkpoint(name="gone", url=url, format="edm-pkl", file="gone.pkl")
    monkeypatch.setenv("SAMPLER_BENCH_OFFLINE", "1")
    with pytest.raises(BenchError, match="put gone.pkl .* at .*gone.pkl") as exc:
        ckpts.ensure_checkpoint(missing)
    assert "\n" not in str(exc.value)
    monkeypatch.delenv("SAMPLER_BENCH_OFFLINE")
    srv.shutdown()
    srv.server_close()
    with pytest.raises(BenchError, match="cannot download .*put the file at"):
        ckpts.ensure_checkpoint(missing)
    assert not missing.path.exists()


def test_download_command_lists_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMPLER_BENCH_CACHE", str(tmp_path / "c"))
    res = invoke("download")
    assert res.exit_code == 0 and "edm-cifar10-32x32-cond-vp: not downloaded" in res.output
    res = invoke("download", "edm-cifar10-32x32-cond-vx")
    assert res.exit_code == 2 and "unknown checkpoint" in res.output
    monkeypatch.setenv("SAMPLER_BENCH_OFFLINE", "1")
    res = invoke("download", "edm-cifar10-32x32-cond-vp")
    assert res.exit_code == 2 and "put edm-cifar10-32x32-cond-vp.pkl" in res.output
