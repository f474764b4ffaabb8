"""Feature metrics beyond FID: torch-fidelity agreement, streaming, spreads, feature spaces, weights.

Metric checks use a cheap deterministic stand-in extractor (a fixed random projection of the pixels)
so that the torch-fidelity comparisons run on hundreds of images in milliseconds; the real
extractors (DINOv2 stand-in network, torch-fidelity's CLIP architecture, Inception) run end to end
through the CLI on a few images.
"""

import json
import os
import urllib.error

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fid_support import fake_dinov2_repo, random_clip_weights, random_dinov2_weights, random_inception_weights
from sampler_bench.cli import app
from sampler_bench.errors import BenchError
from sampler_bench.metrics import extractors, refs
from sampler_bench.metrics.fid import FeatureAccumulator, plan_feature_metrics
from sampler_bench.metrics.stats import FeatureStats, frechet_distance
from sampler_bench.metrics.uncertainty import SpreadOptions, SubsetStats, bootstrap_fd, fd_with_spread

D = 24


class ProjectionExtractor:
    """uint8 NHWC -> (N, D) features and (N, 1008) logits by fixed random projections (deterministic)."""

    dim = D
    weights_source = "test"

    def __init__(self, hw=4):
        g = torch.Generator().manual_seed(3)
        self.P = torch.randn(hw * hw * 3, D, generator=g, dtype=torch.float64) / 40
        self.L = torch.randn(hw * hw * 3, 1008, generator=g, dtype=torch.float64) / 300

    def features(self, images):
        x = torch.as_tensor(np.asarray(images)).reshape(len(images), -1).double()
        return (torch.tanh(x @ self.P)).float(), (x @ self.L).float()


def _images(n, seed, shift=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(128 + shift, 50, size=(n, 4, 4, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pair():
    ext = ProjectionExtractor()
    real = _images(300, 1)
    fake = _images(240, 2, shift=20)
    f_real = ext.features(real)[0].numpy()
    ref = refs.RefStats(np.mean(f_real.astype(np.float64), 0), np.cov(f_real.astype(np.float64), rowvar=False), None, "test",
                        len(real), None, f_real)
    return ext, fake, ref


def _accumulate(ext, imgs, metrics, batch, spread):
    acc = FeatureAccumulator(ext, metrics, total=len(imgs), spread=spread)
    for i in range(0, len(imgs), batch):
        acc.update(imgs[i: i + batch])
    return acc


def test_each_metric_equals_torch_fidelity_on_the_same_features(pair):
    from torch_fidelity.metric_fid import fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    ext, fake, ref = pair
    acc = _accumulate(ext, fake, ["kid", "isc", "prc"], 37, SpreadOptions(subsets=1))
    m = acc.result(ref)
    f1 = torch.from_numpy(acc.all_features())  # the kept (float16-stored) rows the metrics used
    f2 = torch.from_numpy(ref.features)
    stats1 = {"mu": f1.double().mean(0).numpy(), "sigma": np.cov(f1.double().numpy(), rowvar=False)}
    tf_fid = fid_statistics_to_metric(stats1, {"mu": ref.mu, "sigma": ref.sigma}, verbose=False)["frechet_inception_distance"]
    streamed_exact = frechet_distance(acc.stats.mean(), acc.stats.cov(), ref.mu, ref.sigma)
    assert m["fid"] == m["fid_pooled"] == pytest.approx(streamed_exact, rel=1e-12)
    assert m["fid"] == pytest.approx(tf_fid, rel=1e-3)  # streamed float32 rows vs float16-kept rows
    full = ext.features(fake)[0].double().numpy()
    tf_fid_f32 = fid_statistics_to_metric({"mu": full.mean(0), "sigma": np.cov(full, rowvar=False)},
                                          {"mu": ref.mu, "sigma": ref.sigma}, verbose=False)["frechet_inception_distance"]
    assert m["fid"] == pytest.approx(tf_fid_f32, rel=1e-6, abs=1e-9)
    kid = kid_features_to_metric(f1, f2, kid_subsets=100, kid_subset_size=240, verbose=False)
    assert m["kid"] == pytest.approx(kid["kernel_inception_distance_mean"], rel=1e-6, abs=1e-9)
    assert m["kid_std"] == pytest.approx(kid["kernel_inception_distance_std"], rel=1e-6, abs=1e-9)
    isc = isc_features_to_metric(torch.cat(acc.logits), splits=10)
    assert m["isc"] == pytest.approx(isc["inception_score_mean"], rel=1e-6) and m["isc_std"] == pytest.approx(isc["inception_score_std"], rel=1e-6)
    p, r = calculate_precision_recall_full(f1, f2, neighborhood=3)
    assert (m["precision"], m["recall"]) == pytest.approx((p, r), abs=1e-6) and 0 < p < 1 and 0 < r < 1
    q1, q2 = (p * 240 + 2) / 244, (r * 300 + 2) / 304  # Agresti-Coull binomial standard errors
    assert m["precision_se"] == pytest.approx(np.sqrt(q1 * (1 - q1) / 244)) and m["recall_se"] == pytest.approx(np.sqrt(q2 * (1 - q2) / 304))
    # float16 storage of the kept rows changes KID by far less than its own spread
    kid32 = kid_features_to_metric(torch.from_numpy(full).float(), f2, kid_subsets=100, kid_subset_size=240, verbose=False)
    assert abs(m["kid"] - kid32["kernel_inception_distance_mean"]) < 0.01 * m["kid_std"] + 1e-6


def test_streaming_equals_one_shot_and_subsets_are_the_seed_blocks(pair):
    ext, fake, ref = pair
    spread = SpreadOptions(subsets=4, bootstrap=5)
    a = _accumulate(ext, fake, ["kid"], 7, spread).result(ref)
    b = _accumulate(ext, fake, ["kid"], len(fake), spread).result(ref)
    for k in ("fid", "fid_se", "fid_pooled", "fid_min", "kid", "kid_std", "fid_boot_se", "fid_boot_lo", "fid_boot_hi"):
        assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-12), k
    f = ext.features(fake)[0].double().numpy()
    blocks = [f[j * 60:(j + 1) * 60] for j in range(4)]  # 240 images, K=4: seeds 0-59, 60-119, ...
    direct = [frechet_distance(x.mean(0), np.cov(x, rowvar=False), ref.mu, ref.sigma) for x in blocks]
    assert a["fid_subset_values"] == pytest.approx(direct, rel=1e-6) and a["fid_subset_sizes"] == [60] * 4
    assert a["fid"] == pytest.approx(np.mean(direct)) and a["fid_se"] == pytest.approx(np.std(direct, ddof=1) / 2)
    assert a["fid_boot_lo"] <= a["fid_boot_hi"] and a["fid_bootstrap"] == 5
    m = _accumulate(ext, fake, [], 50, SpreadOptions(subsets=4, protocol="min")).result(ref)
    assert m["fid"] == pytest.approx(min(direct)) and m["fid_protocol"] == "min" and m["fid_mean"] == pytest.approx(np.mean(direct))


def test_processes_merged_equal_one_process(pair):
    """torchrun: each process feeds the batches it sampled (with their run positions); merging every
    process's state gives the one-process result (subset blocks, kept rows and logits in run order)."""
    import pickle

    ext, fake, ref = pair
    spread = SpreadOptions(subsets=3, bootstrap=4)
    metrics = ["kid", "isc", "prc"]
    one = _accumulate(ext, fake, metrics, 16, spread).result(ref)
    ranks = [FeatureAccumulator(ext, metrics, total=len(fake), spread=spread) for _ in range(2)]
    for i, start in enumerate(range(0, len(fake), 16)):  # batches dealt round-robin, as EDM splits seeds
        ranks[i % 2].update(fake[start: start + 16], start)
    states = [pickle.loads(pickle.dumps(r.state())) for r in ranks]  # what all_gather_object carries
    for r in ranks:
        r.merge(states)
    for r in ranks:
        m = r.result(ref)
        for k, v in one.items():
            if isinstance(v, float) or (isinstance(v, list) and isinstance(v[0], float)):
                assert m[k] == pytest.approx(v, rel=1e-6, abs=1e-12), k  # float64 summation order (rows kept: exact)
            else:
                assert m[k] == v, k


def test_merged_subsets_are_bit_identical_while_rows_are_kept(pair):
    ext, fake, ref = pair
    imgs, spread = fake[:60], SpreadOptions(subsets=3)  # 20 rows per block <= D = 24: rows kept
    one = _accumulate(ext, imgs, [], 8, spread).result(ref)
    ranks = [FeatureAccumulator(ext, [], total=60, spread=spread) for _ in range(3)]
    for i, start in enumerate(range(0, 60, 8)):
        ranks[i % 3].update(imgs[start: start + 8], start)
    states = [r.state() for r in ranks]
    ranks[1].merge(states)
    assert ranks[1].result(ref)["fid_subset_values"] == one["fid_subset_values"]


def _pixel_spreads(model, n, k, boots, seed):
    """Subset SE and bootstrap SE of the pixel-space Frechet distance of n exact samples (shifted)."""
    x, _ = model.sample_data(n, generator=torch.Generator().manual_seed(seed))
    f = x.reshape(n, -1).double().numpy() + 0.05  # a small mean shift: the true distance is not 0
    mu, sig = (t.double().numpy() for t in model.data_moments())
    st = SubsetStats(f.shape[1], n, k)
    st.update(f)
    se = fd_with_spread("fd", st, mu, sig, SpreadOptions(subsets=k))["fd_se"]
    return se, bootstrap_fd(f, mu, sig, boots, seed=seed).std(ddof=1)


def test_subset_and_bootstrap_spread_shrink_with_n_on_the_analytic_model():
    from sampler_bench.models.registry import load_model

    model = load_model("gaussian:shape=1x4x4", device="cpu")
    small = np.array([_pixel_spreads(model, 400, 8, 40, s) for s in range(3)]).mean(0)
    large = np.array([_pixel_spreads(model, 1600, 8, 40, s) for s in range(3)]).mean(0)
    ratio = small / large  # 4x the images: ~2x smaller (1/sqrt(N): the distance is not 0, its linear term dominates)
    assert np.all(ratio > 1.5) and np.all(ratio < 3.2), ratio  # measured 2.1 (subsets), 2.4 (bootstrap)


def test_binomial_se_is_positive_at_the_extremes():
    from sampler_bench.metrics.uncertainty import binomial_se

    assert binomial_se(0.0, 100) > 0 and binomial_se(1.0, 100) == pytest.approx(binomial_se(0.0, 100))
    assert binomial_se(0.5, 10000) == pytest.approx(0.005, rel=1e-3) and binomial_se(0.5, 400) > binomial_se(0.5, 1600)


def test_spread_options_are_checked():
    with pytest.raises(BenchError, match="fid-protocol"):
        SpreadOptions.from_dict({"protocol": "median"})
    with pytest.raises(BenchError, match="fid-subsets"):
        SpreadOptions.from_dict({"subsets": 0})
    assert SpreadOptions.from_dict({"subsets": 3, "protocol": "mean"}).as_dict() == {}
    assert SpreadOptions.from_dict({"protocol": "EDM"}).as_dict() == {"protocol": "min"}
    assert SubsetStats(4, 5, 3).k == 2 and SubsetStats(4, 3, 3).k == 1  # every subset keeps >= 2 images


# ---------------------------------------------------------------------------------------------
# Feature spaces, references and weights (real extractor code paths, random weights)
# ---------------------------------------------------------------------------------------------

MODEL = "gmm:shape=3x16x16"
N = 6


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Inception, DINOv2 (stand-in network) and CLIP references of exact data samples; one run measured on the fly."""
    tmp = tmp_path_factory.mktemp("spaces")
    mp = pytest.MonkeyPatch()
    mp.setenv(extractors.DINOV2_REPO_ENV, str(fake_dinov2_repo()))
    mp.setenv("TORCH_HOME", str(tmp / "torch_home"))  # empty hub cache: nothing is found or downloaded by accident
    w = {"inc": str(random_inception_weights()), "dino": str(random_dinov2_weights()), "clip": str(random_clip_weights())}
    runner = CliRunner()
    made = {}
    for name, feats, extra in (("inc", "inception", ["--inception-weights", w["inc"]]),
                               ("dino", "dinov2-vit-s-14", ["--weights", w["dino"]]),
                               ("clip", "clip-vit-b-32", ["--weights", w["clip"]])):
        out = tmp / f"ref_{name}.npz"
        r = runner.invoke(app, ["stats", f"model:{MODEL}", "--num", str(N), "--seed", "7", "--out", str(out), "--features", feats,
                                "--keep-features", "--device", "cpu", "--batch", "3", *extra])
        assert r.exit_code == 0, r.output
        made[name] = out
    run = tmp / "run"
    r = runner.invoke(app, ["sample", "--model", MODEL, "--solver", "euler", "--nfe", "4", "--num", str(N), "--batch", "3",
                            "--device", "cpu", "--out", str(run), "--fid", f"{made['inc']},{made['dino']}",
                            "--metrics", "fid,kid,isc,prc,fd-dinov2", "--inception-weights", w["inc"],
                            "--feature-weights", f"dinov2-vit-s-14={w['dino']}", "--fid-subsets", "2"])
    assert r.exit_code == 0, r.output
    yield {"tmp": tmp, "refs": made, "w": w, "run": run, "out": r.output, "runner": runner}
    mp.undo()


def test_stats_record_the_feature_space(world):
    for name, space, dim in (("inc", "inception-v3-compat", 2048), ("dino", "dinov2-vit-s-14", 384), ("clip", "clip-vit-b-32", 512)):
        with np.load(world["refs"][name]) as z:
            assert str(z["extractor"]) == space and z["mu"].shape == (dim,) and z["features"].shape == (N, dim)
            assert np.isfinite(z["sigma"]).all() and float(np.trace(z["sigma"])) > 0
        assert refs.ref_space(str(world["refs"][name])) == space


def test_sample_records_every_metric_with_its_spread_and_bench_fid_agrees(world):
    m = json.loads((world["run"] / "metrics.json").read_text())
    for k in ("fid", "fid_se", "kid", "kid_std", "isc", "isc_std", "precision", "precision_se", "recall", "recall_se",
              "f_score", "f_score_se", "fd_dinov2", "fd_dinov2_se", "fd_dinov2_pooled"):
        assert isinstance(m[k], float) and np.isfinite(m[k]), k
    assert m["fd_dinov2_extractor"] == "dinov2-vit-s-14" and m["fid_extractor"] == "inception-v3-compat"
    assert m["fid_k"] == m["fd_dinov2_k"] == 2 and m["fd_dinov2_weights"] == "explicit"
    assert "fid:" in world["out"] and "+-" in world["out"]
    r = world["runner"].invoke(app, ["fid", str(world["run"] / "samples.npz"), "--ref", f"{world['refs']['dino']},{world['refs']['inc']}",
                                     "--metrics", "kid,fd-dinov2", "--inception-weights", world["w"]["inc"], "--fid-subsets", "2",
                                     "--feature-weights", f"dinov2-vit-s-14={world['w']['dino']}", "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    f = json.loads(r.output[r.output.index("{"):])
    for k in ("fid", "fid_se", "kid", "fd_dinov2", "fd_dinov2_se"):
        assert f[k] == pytest.approx(m[k], rel=1e-5, abs=1e-9), k


def test_fd_clip_from_a_torchscript_or_state_dict_file(world, monkeypatch):
    runner = world["runner"]
    vals = []
    for ts in (True, False):
        r = runner.invoke(app, ["fid", str(world["run"]), "--ref", str(world["refs"]["clip"]), "--metrics", "fd-clip", "--json",
                                "--feature-weights", f"clip-vit-b-32={random_clip_weights(ts)}", "--device", "cpu"])
        assert r.exit_code == 0, r.output
        vals.append(json.loads(r.output[r.output.index("{"):])["fd_clip"])
    assert vals[0] == pytest.approx(vals[1], rel=1e-6) and vals[0] > 0
    monkeypatch.setenv(extractors.CLIP_ENV, str(random_clip_weights(False)))  # the env var route
    assert extractors.resolve_space_weights(extractors.space_of("clip"))[1] == "env"


def test_reference_in_the_wrong_feature_space_is_refused(world):
    dino, inc = str(world["refs"]["dino"]), str(world["refs"]["inc"])
    with pytest.raises(BenchError, match="holds dinov2-vit-s-14 features, but FID needs inception-v3-compat"):
        refs.load_ref(dino)
    with pytest.raises(BenchError, match="fd-dinov2 needs reference statistics in the dinov2-vit-l-14 feature space"):
        plan_feature_metrics([inc], ["fd-dinov2"])
    with pytest.raises(BenchError, match="two references in the inception"):
        plan_feature_metrics([inc, inc], [])
    r = world["runner"].invoke(app, ["fid", str(world["run"]), "--ref", dino, "--metrics", "fid,kid"])
    assert r.exit_code == 2 and "--metrics fid needs reference statistics in the inception" in r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output


@pytest.mark.parametrize("space", ["dinov2-vit-l-14", "clip-vit-b-32"])
def test_missing_weights_offline_is_a_one_line_error(tmp_path, monkeypatch, space):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))
    monkeypatch.delenv(extractors.DINOV2_ENV, raising=False)
    monkeypatch.delenv(extractors.CLIP_ENV, raising=False)

    def offline(url, dst, *a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    r = CliRunner().invoke(app, ["stats", "model:gmm:shape=3x8x8", "--num", "4", "--out", str(tmp_path / "r.npz"), "--features", space])
    assert r.exit_code == 2, r.output
    line = r.output.strip()
    assert len(line.splitlines()) == 1 and "download failed (URLError" in line and "--feature-weights" in line, line
    assert not (tmp_path / "r.npz").exists() and not list((tmp_path / "empty_hub").rglob("*.pth"))
    r = CliRunner().invoke(app, ["stats", "model:gmm:shape=3x8x8", "--num", "4", "--out", str(tmp_path / "r.npz"), "--features", space,
                                 "--weights", str(tmp_path / "nope.pth")])
    assert r.exit_code == 2 and "do not exist" in r.output and len(r.output.strip().splitlines()) == 1


def test_bad_feature_names_and_weight_pairs_are_refused():
    runner = CliRunner()
    r = runner.invoke(app, ["stats", "model:gmm", "--num", "4", "--out", "x.npz", "--features", "vgg"])
    assert r.exit_code == 2 and "unknown feature space 'vgg'" in r.output
    r = runner.invoke(app, ["sample", "--model", "gmm", "--solver", "euler", "--nfe", "2", "--num", "2", "--out", "unused",
                            "--feature-weights", "dinov2"])
    assert r.exit_code == 2 and "SPACE=PATH" in r.output and not os.path.exists("unused")
    r = runner.invoke(app, ["sample", "--model", "gmm", "--solver", "euler", "--nfe", "2", "--num", "2", "--out", "unused",
                            "--fid-protocol", "median"])
    assert r.exit_code == 2 and "--fid-protocol 'median'" in r.output and not os.path.exists("unused")


def test_missing_dinov2_code_offline_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))
    monkeypatch.delenv(extractors.DINOV2_REPO_ENV, raising=False)
    monkeypatch.setattr(extractors, "_CACHE", {})  # no network built by an earlier test
    real_load = torch.hub.load

    def offline(repo, *a, **k):
        if k.get("source") == "local":
            return real_load(repo, *a, **k)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load", offline)
    r = CliRunner().invoke(app, ["stats", "model:gmm:shape=3x8x8", "--num", "4", "--out", str(tmp_path / "r.npz"),
                                 "--features", "dinov2-vit-s-14", "--weights", str(random_dinov2_weights())])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "facebookresearch_dinov2_main" in r.output and extractors.DINOV2_REPO_ENV in r.output
    monkeypatch.setenv(extractors.DINOV2_REPO_ENV, str(tmp_path))  # no hubconf.py there
    with pytest.raises(BenchError, match="has no hubconf.py"):
        extractors.dinov2_repo_dir()
