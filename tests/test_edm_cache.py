"""The checkpoint cache against wrong, corrupt and hostile entries (issue 10, items 9-11): a network
that is not its registry entry, corrupt or over-long partial downloads, sizes, paths outside the
cache, non-https URLs, mistyped pins and non-file cache entries."""

import pytest
from typer.testing import CliRunner

from http_support import serve

from sampler_bench.cli import app
from sampler_bench.errors import BenchError
from sampler_bench.models import checkpoints as ckpts
from sampler_bench.models import edm
from sampler_bench.models.registry import MODELS, edm_checkpoint_entry, load_model

runner = CliRunner()


@pytest.fixture
def served(tmp_path, monkeypatch):
    net = edm.make_tiny_network("edm", "ddpmpp", resolution=8, label_dim=3, seed=2)
    payload = edm.dumps_edm_pickle(net)
    monkeypatch.setenv("SAMPLER_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SAMPLER_BENCH_OFFLINE", raising=False)
    with serve(payload) as (srv, handler):
        yield f"http://127.0.0.1:{srv.server_address[1]}/tiny.pkl", handler, payload, net


def _one_line_exit_2(*args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 2 and res.output.startswith("error: ") and res.output.count("\n") == 1, res.output
    return res.output


def test_a_network_that_is_not_its_registry_entry_is_refused(served, monkeypatch, tmp_path):
    url, _, payload, net = served
    ck = ckpts.Checkpoint(name="fake-cifar", url=url, format="edm-pkl", file="fake.pkl", resolution=32, classes=10,
                          parameters=55735299, precond="EDMPrecond")
    monkeypatch.setitem(MODELS, ck.name, edm_checkpoint_entry(ck))
    out = _one_line_exit_2("sample", "--model", "fake-cifar", "--solver", "heun", "--nfe", 3, "--num", 1, "--out", tmp_path / "r")
    assert "is not the registered network: it has resolution 8 (expected 32), classes 3 (expected 10), parameters" in out
    assert "bench download --clear fake-cifar" in out and not (tmp_path / "r").exists()
    n = sum(p.numel() for p in net.parameters())
    good = ckpts.Checkpoint(name="good", url=url, format="edm-pkl", file="good.pkl", resolution=8, classes=3,
                            parameters=n, precond="EDMPrecond")
    monkeypatch.setitem(MODELS, good.name, edm_checkpoint_entry(good))
    assert load_model("good").num_classes == 3
    wrong_pre = ckpts.Checkpoint(name="wp", url=url, format="edm-pkl", file="good.pkl", resolution=8, classes=3,
                                 precond="VPPrecond", config="F")
    monkeypatch.setitem(MODELS, wrong_pre.name, edm_checkpoint_entry(wrong_pre))
    with pytest.raises(BenchError, match=r"precond EDMPrecond \(expected VPPrecond\)"):
        load_model("wp")


def test_corrupt_or_overlong_partials_are_discarded(served):
    url, handler, payload, _ = served
    digest = edm.hashlib.sha256(payload).hexdigest()
    ck = ckpts.Checkpoint(name="pinned", url=url, format="edm-pkl", file="pinned.pkl", sha256=digest, size=len(payload))
    ck.path.parent.mkdir(parents=True)
    bad = bytearray(payload[:5000])
    bad[100] ^= 0xFF
    ck.part_path.write_bytes(bytes(bad))  # a corrupt partial: resumed, then fails the pin and is deleted
    with pytest.raises(BenchError, match="does not match the sha256 pinned in the registry and was deleted"):
        ckpts.ensure_checkpoint(ck, show_progress=False)
    assert not ck.path.exists() and not ck.part_path.exists() and not ck.record_path.exists()
    path, got = ckpts.ensure_checkpoint(ck, show_progress=False)  # the next run downloads afresh
    assert path.read_bytes() == payload and got == digest and handler.ranges == ["bytes=5000-", None]

    # unpinned: a .part longer than the file gets 416; it is discarded and the download starts over
    loose = ckpts.Checkpoint(name="loose", url=url, format="edm-pkl", file="loose.pkl")
    loose.part_path.write_bytes(payload + b"junk")
    handler.ranges.clear()
    path, _ = ckpts.ensure_checkpoint(loose, show_progress=False)
    assert path.read_bytes() == payload and handler.ranges == [f"bytes={len(payload) + 4}-", None]
    # a .part longer than the registry's size is discarded before asking
    sized = ckpts.Checkpoint(name="sized", url=url, format="edm-pkl", file="sized.pkl", size=len(payload))
    sized.part_path.write_bytes(payload + b"junk")
    handler.ranges.clear()
    ckpts.ensure_checkpoint(sized, show_progress=False)
    assert handler.ranges == [None] and sized.path.read_bytes() == payload
    # the registry's size must match what the server sends
    wrong = ckpts.Checkpoint(name="wrong", url=url, format="edm-pkl", file="wrong.pkl", size=len(payload) + 1)
    with pytest.raises(BenchError, match="the server announces"):
        ckpts.ensure_checkpoint(wrong, show_progress=False)


def test_size_is_recorded_and_verified_and_clear_removes_the_entry(served, monkeypatch):
    url, _, payload, _ = served
    ck = ckpts.Checkpoint(name="rec", url=url, format="edm-pkl", file="rec.pkl")
    monkeypatch.setitem(ckpts.KNOWN, ck.name, ck)
    ckpts.ensure_checkpoint(ck, show_progress=False)
    assert ckpts.read_record(ck) == (edm.hashlib.sha256(payload).hexdigest(), len(payload))
    ck.path.write_bytes(payload[:-10])  # truncated in place
    with pytest.raises(BenchError, match=rf"size mismatch .* has {len(payload) - 10} bytes, expected {len(payload)}"):
        ckpts.ensure_checkpoint(ck)
    res = runner.invoke(app, ["download", "--clear", "rec"])
    assert res.exit_code == 0 and "deleted rec.pkl, rec.pkl.sha256" in res.output
    assert not ck.path.exists() and not ck.record_path.exists()
    assert "nothing cached" in runner.invoke(app, ["download", "--clear", "rec"]).output
    _one_line_exit_2("download", "--clear")


@pytest.mark.parametrize("field,value,match", [
    ("file", "../outside/evil.pkl", "must be a plain file name"),
    ("file", "/tmp/evil.pkl", "must be a plain file name"),
    ("file", "..", "must be a plain file name"),
    ("url", "file:///etc/passwd", "only https://"),
    ("url", "http://example.com/x.pkl", "only https://"),
    ("url", "ftp://example.com/x.pkl", "only https://"),
    ("sha256", 1234567890123456789012345678901234567890123456789012345678901234, "64 hex digits in quotes"),
    ("sha256", "abc", "64 hex digits in quotes"),
    ("size", "12", "'size' must be"),
    ("classes", "ten", "'classes' must be"),
    ("resolution", 1.5, "'resolution' must be"),
], ids=lambda v: str(v)[:20])
def test_registry_entries_are_validated(tmp_path, field, value, match):
    import yaml

    entry = {"name": "x", "url": "https://example.com/x.pkl", "format": "edm-pkl", field: value}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"checkpoints": [entry]}))
    with pytest.raises(BenchError, match=match) as exc:
        ckpts.load_registry(tmp_path)
    assert "\n" not in str(exc.value) and "r.yaml" in str(exc.value)


def test_unquoted_numeric_pin_in_yaml_is_an_error(tmp_path):
    (tmp_path / "r.yaml").write_text("checkpoints:\n  - name: x\n    url: https://example.com/x.pkl\n"
                                     "    format: edm-pkl\n    sha256: " + "1" * 64 + "\n")
    with pytest.raises(BenchError, match="a int; YAML reads an unquoted all-digit hash as a number"):
        ckpts.load_registry(tmp_path)
    (tmp_path / "r.yaml").write_text("checkpoints:\n  - name: x\n    url: https://example.com/x.pkl\n"
                                     "    format: edm-pkl\n    sha256: '" + "1" * 64 + "'\n")
    assert ckpts.load_registry(tmp_path)["x"].sha256 == "1" * 64
    assert ckpts.Checkpoint(name="l", url="http://localhost:1/x", format="edm-pkl", file="x").url  # loopback http


def test_non_file_cache_entries_are_one_line_errors(served, tmp_path):
    url, _, payload, _ = served
    ck = ckpts.Checkpoint(name="d", url=url, format="edm-pkl", file="d.pkl")
    ckpts.ensure_checkpoint(ck, show_progress=False)
    ck.record_path.unlink()
    ck.record_path.mkdir()  # a .sha256 that is a directory
    with pytest.raises(BenchError, match=r"d.pkl.sha256 for 'd' is not a regular file; remove it") as exc:
        ckpts.ensure_checkpoint(ck)
    assert "\n" not in str(exc.value)
    assert ckpts.cache_state(ck).startswith("bad cache entry")
    ck2 = ckpts.Checkpoint(name="e", url=url, format="edm-pkl", file="e.pkl")
    ck2.path.mkdir(parents=True)  # the file itself is a directory
    with pytest.raises(BenchError, match="is not a regular file"):
        ckpts.ensure_checkpoint(ck2)
    ck.record_path.rmdir()
    ck.record_path.write_text("not a hash\n")
    with pytest.raises(BenchError, match="is malformed; run `bench download --clear d`"):
        ckpts.ensure_checkpoint(ck)
