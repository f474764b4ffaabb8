"""The real inception-v3-compat extractor (random weights built at test time) end to end.

Few tiny images per pass: on a shared CPU one image costs ~0.1-1 s whatever its size (resized to 299).
"""

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fid_support import random_inception_weights
from sampler_bench.cli import app
from sampler_bench.errors import BenchError
from sampler_bench.metrics.sources import open_source
from sampler_bench.sampling import RunConfig, run_sample

MODEL = "gmm:shape=3x16x16"
N = 6


@pytest.fixture(scope="module")
def weights():
    return str(random_inception_weights())


@pytest.fixture(scope="module")
def world(tmp_path_factory, weights):
    """A reference from exact data samples, and a run with FID computed on the fly against it."""
    tmp = tmp_path_factory.mktemp("fid")
    runner = CliRunner()
    ref = tmp / "ref.npz"
    r = runner.invoke(app, ["stats", f"model:{MODEL}", "--num", str(N), "--out", str(ref), "--inception-weights", weights,
                            "--batch", "4", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    run = tmp / "run"
    cfg = RunConfig(model=MODEL, solver="euler", nfe=4, seeds=list(range(N)), batch=4, device="cpu",
                    fid_ref=str(ref), inception_weights=weights, metrics=["none"])
    rec = run_sample(cfg, run, save_images=True)
    return {"tmp": tmp, "ref": ref, "run": run, "rec": rec, "runner": runner, "weights": weights}


def test_stats_file_records_extractor_and_count(world):
    with np.load(world["ref"]) as z:
        assert int(z["num_images"]) == N and str(z["extractor"]) == "inception-v3-compat"
        assert z["mu"].shape == (2048,) and z["sigma"].shape == (2048, 2048) and z["mu"].dtype == np.float64
        assert np.isfinite(z["sigma"]).all() and "features" not in z.files


def test_same_fid_from_run_dir_png_folder_npz_and_on_the_fly(world):
    on_the_fly = world["rec"]["metrics"]["fid"]
    assert on_the_fly > 0 and world["rec"]["metrics"]["fid_num_images"] == N and world["rec"]["metrics"]["fid_weights"] == "explicit"
    assert "pixel_fd" not in world["rec"]["metrics"]  # --metrics none
    assert any("only 6 images" in w for w in world["rec"]["metrics"]["warnings"])
    npz = world["tmp"] / "copy.npz"
    shutil.copy(world["run"] / "samples.npz", npz)
    runner, values = world["runner"], {}
    for name, src in [("run", world["run"]), ("folder", world["run"] / "images"), ("npz", npz)]:
        r = runner.invoke(app, ["fid", str(src), "--ref", str(world["ref"]), "--inception-weights", world["weights"],
                                "--json", "--batch", "5", "--device", "cpu"])
        assert r.exit_code == 0, r.output
        values[name] = json.loads(r.stdout)["fid"]  # --json: one object, nothing else on stdout
    for v in values.values():
        assert v == pytest.approx(on_the_fly, rel=1e-6, abs=1e-9)
    merged = json.loads((world["run"] / "metrics.json").read_text())
    assert merged["fid"] == pytest.approx(on_the_fly, rel=1e-6) and merged["fid_weights"] == "explicit"
    assert json.loads((world["run"] / "run.json").read_text())["metrics"]["fid"] == merged["fid"]


def test_self_fid_kid_isc(world):
    runner = world["runner"]
    self_ref = world["tmp"] / "self.npz"
    r = runner.invoke(app, ["stats", str(world["run"]), "--out", str(self_ref), "--keep-features",
                            "--inception-weights", world["weights"], "--device", "cpu"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["fid", str(world["run"] / "samples.npz"), "--ref", str(self_ref), "--metrics", "kid,isc",
                            "--inception-weights", world["weights"], "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    # all N images against their own statistics: 0; the K=3 subset distances (2 images each) are not
    assert abs(m["fid_pooled"]) < 1e-6 and abs(m["kid"]) < 1e-3 and m["isc"] >= 1.0 and m["kid_subset_size"] == N
    assert m["fid_k"] == 3 and m["fid"] == pytest.approx(np.mean(m["fid_subset_values"])) and m["fid"] > m["fid_pooled"]
    assert m["fid_se"] == pytest.approx(np.std(m["fid_subset_values"], ddof=1) / np.sqrt(3)) and m["fid_protocol"] == "mean"
    # stats without features: KID refused before any work
    r = runner.invoke(app, ["fid", str(world["run"]), "--ref", str(world["ref"]), "--metrics", "kid",
                            "--inception-weights", world["weights"]])
    assert r.exit_code == 2 and "--keep-features" in r.output
    # existing --out is not overwritten
    r = runner.invoke(app, ["stats", str(world["run"]), "--out", str(self_ref), "--inception-weights", world["weights"]])
    assert r.exit_code == 2 and "exists" in r.output


def test_sources_refuse_bad_folders_and_convert_grayscale(tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("RGB", (8, 8)).save(mixed / "a.png")
    Image.new("RGB", (9, 8)).save(mixed / "b.png")
    with pytest.raises(BenchError, match="mixed sizes.*b.png"):
        open_source(str(mixed))
    alpha = tmp_path / "alpha"
    alpha.mkdir()
    Image.new("RGB", (8, 8)).save(alpha / "a.png")
    Image.new("RGBA", (8, 8)).save(alpha / "b.png")
    with pytest.raises(BenchError, match="b.png' has image mode RGBA"):
        open_source(str(alpha))
    gray = tmp_path / "gray"
    gray.mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(gray / "a.png")
    Image.new("L", (8, 8), 77).save(gray / "b.png")
    src = open_source(str(gray))
    assert any("1 grayscale" in w for w in src.warnings)
    (batch,) = list(src.batches(8))
    assert batch.shape == (2, 8, 8, 3) and (batch[1] == 77).all() and (batch[0, 0, 0] == [10, 20, 30]).all()
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match="no images"):
        open_source(str(tmp_path / "empty"))
    np.savez(tmp_path / "f.npz", images=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(BenchError, match="dtype float32"):
        open_source(str(tmp_path / "f.npz"))


def test_edm_zip_and_model_sources(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "ds.zip", "w") as z:
        for i in range(3):
            im = tmp_path / f"{i}.png"
            Image.new("RGB", (8, 8), (i, i, i)).save(im)
            z.write(im, f"00000/img{i:08d}.png")
        z.writestr("dataset.json", "{}")
    src = open_source(str(tmp_path / "ds.zip"))
    imgs = np.concatenate(list(src.batches(2)))
    assert src.count == 3 and imgs.shape == (3, 8, 8, 3) and list(imgs[:, 0, 0, 0]) == [0, 1, 2]
    a = np.concatenate(list(open_source(f"model:{MODEL}", num=5, seed=3).batches(2)))
    b = np.concatenate(list(open_source(f"model:{MODEL}", num=5, seed=3).batches(5)))
    assert a.dtype == np.uint8 and a.shape == (5, 16, 16, 3) and (a == b).all()  # batch-size independent
    with pytest.raises(BenchError, match="--num"):
        open_source(f"model:{MODEL}")
