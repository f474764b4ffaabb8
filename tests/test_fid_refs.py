"""Reference statistics and weight resolution: registry, download only when absent, bad files."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sampler_bench.cli import app
from sampler_bench.errors import BenchError
from sampler_bench.metrics import inception, refs

D = 2048


def _write_stats(path, dim=D, **extra):
    rng = np.random.default_rng(0)
    A = rng.normal(size=(8, dim)) * 0.1
    np.savez(path, mu=rng.normal(size=dim), sigma=A.T @ A, **extra)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(refs.CACHE_ENV, str(tmp_path / "cache"))
    calls = []

    def fake_download(url, dst):  # the network is the only thing replaced; the file written is real
        calls.append(url)
        dst.parent.mkdir(parents=True, exist_ok=True)
        _write_stats(dst)

    monkeypatch.setattr(refs, "_download", fake_download)
    return tmp_path / "cache" / "refs", calls


def test_registry_resolves_and_downloads_only_when_absent(cache):
    cdir, calls = cache
    path, label = refs.resolve_ref("cifar10-32x32")
    assert label == "cifar10-32x32" and path == cdir / "cifar10-32x32.npz" and path.is_file()
    assert calls == [refs.EDM_BASE + "cifar10-32x32.npz"]
    path2, _ = refs.resolve_ref("cifar10-32x32")  # now cached: no second download
    assert path2 == path and len(calls) == 1
    st = refs.load_ref("cifar10-32x32")
    assert st.mu.dtype == np.float64 and st.sigma.shape == (D, D) and len(calls) == 1
    # an ADM name maps to its URL and file name
    refs.resolve_ref("VIRTUAL_imagenet64_labeled")
    assert calls[-1].endswith("ref_batches/imagenet/64/VIRTUAL_imagenet64_labeled.npz")


def test_any_path_works_and_unknown_names_are_errors(cache, tmp_path):
    _, calls = cache
    p = _write_stats(tmp_path / "mine.npz")
    assert refs.resolve_ref(str(p))[0] == p and not calls
    with pytest.raises(BenchError, match="did you mean cifar10-32x32"):
        refs.resolve_ref("cifar10-32")
    with pytest.raises(BenchError, match="does not exist"):
        refs.resolve_ref(str(tmp_path / "nope.npz"))
    assert not calls


def test_failed_download_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(refs.CACHE_ENV, str(tmp_path / "c"))

    def offline(url, dst):
        raise OSError("Name or service not known")

    monkeypatch.setattr(refs, "_download", offline)
    with pytest.raises(BenchError) as e:
        refs.resolve_ref("ffhq-64x64")
    msg = str(e.value)
    assert "\n" not in msg and refs.EDM_BASE + "ffhq-64x64.npz" in msg and "ffhq-64x64.npz" in msg
    assert not (tmp_path / "c" / "refs" / "ffhq-64x64.npz").exists()


def test_adm_virtual_format_reads_mu_sigma(tmp_path):
    p = _write_stats(tmp_path / "VIRTUAL_x.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8),
                     mu_s=np.zeros(7), sigma_s=np.eye(7))
    st = refs.load_ref(str(p))
    assert st.mu.shape == (D,) and st.features is None


@pytest.mark.parametrize("arrays,match", [
    ({"arr_0": np.zeros((2, 8, 8, 3), np.uint8)}, "holds images but no statistics"),
    ({"mu": np.zeros(64), "sigma": np.eye(64)}, r"expected \(2048,\)"),
    ({"mu": np.zeros(D), "sigma": np.eye(D)[:10]}, r"expected \(2048,\)"),
    ({"mu": np.zeros(D, np.int64), "sigma": np.eye(D)}, "dtype int64"),
    ({"mu": np.full(D, np.nan), "sigma": np.eye(D)}, "NaN"),
    ({"mu": np.zeros(D), "sigma": np.eye(D), "extractor": np.asarray("clip")}, "extractor 'clip'"),
])
def test_bad_reference_files(tmp_path, arrays, match):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(BenchError, match=match):
        refs.load_ref(str(p))


def test_corrupt_reference_file(tmp_path):
    p = tmp_path / "broken.npz"
    p.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(BenchError, match="corrupt"):
        refs.load_ref(str(p))


def test_weights_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("SAMPLER_BENCH_CACHE", str(tmp_path / "sb"))
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    monkeypatch.delenv("SAMPLER_BENCH_OFFLINE", raising=False)
    calls = []

    def fake_download(url, dst):
        calls.append(url)
        dst.parent.mkdir(parents=True, exist_ok=True)
        torch.save({}, dst)

    monkeypatch.setattr(inception, "_download", fake_download)
    explicit, env, hub = tmp_path / "explicit.pth", tmp_path / "env.pth", inception.hub_cache_path()
    cached = inception.cache_path()
    assert cached == tmp_path / "sb" / "weights" / inception.WEIGHTS_FILENAME
    # torch-fidelity's hub cache file is reused when present
    hub.parent.mkdir(parents=True)
    torch.save({}, hub)
    assert inception.resolve_weights(None) == (hub, "hub-cache") and not calls
    hub.unlink()
    # nothing local: download into the cache root, once
    assert inception.resolve_weights(None) == (cached, "download") and calls == [inception.WEIGHTS_URL]
    assert inception.resolve_weights(None) == (cached, "cache") and len(calls) == 1
    env.write_bytes(b"x")
    monkeypatch.setenv(inception.WEIGHTS_ENV, str(env))
    assert inception.resolve_weights(None) == (env, "env")
    explicit.write_bytes(b"x")
    assert inception.resolve_weights(str(explicit)) == (explicit, "explicit")
    with pytest.raises(BenchError, match="does not exist"):
        inception.resolve_weights(str(tmp_path / "missing.pth"))
    monkeypatch.setenv(inception.WEIGHTS_ENV, str(tmp_path / "gone.pth"))
    with pytest.raises(BenchError, match="SAMPLER_BENCH_INCEPTION_WEIGHTS"):
        inception.resolve_weights(None)
    assert len(calls) == 1


def test_offline_without_weights_names_file_place_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("SAMPLER_BENCH_CACHE", str(tmp_path / "sb"))
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    monkeypatch.delenv("SAMPLER_BENCH_OFFLINE", raising=False)

    def offline(url, dst):
        raise OSError("Name or service not known")

    monkeypatch.setattr(inception, "_download", offline)
    with pytest.raises(BenchError) as e:
        inception.resolve_weights(None)
    msg = str(e.value)
    assert inception.WEIGHTS_URL in msg and str(inception.cache_path()) in msg and "--inception-weights" in msg
    assert "\n" not in msg


def test_corrupt_and_mismatched_weights(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"definitely not a torch file")
    with pytest.raises(BenchError, match="corrupt"):
        inception.InceptionExtractor(bad, device="cpu")
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(BenchError, match="does not match inception-v3-compat"):
        inception.InceptionExtractor(wrong, device="cpu")


def test_cli_errors_exit_2_with_one_line(tmp_path):
    runner = CliRunner()
    run = tmp_path / "x.npz"
    np.savez(run, images=np.zeros((3, 8, 8, 3), np.uint8))
    r = runner.invoke(app, ["fid", str(run), "--ref", str(tmp_path / "nope.npz")])
    assert r.exit_code == 2 and "does not exist" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["fid", str(run), "--ref", "x", "--metrics", "fid2"])
    assert r.exit_code == 2 and "unknown metric" in r.output
    r = runner.invoke(app, ["refs"])
    assert r.exit_code == 0 and "cifar10-32x32" in r.output
