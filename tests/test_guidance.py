"""Classifier guidance: the formula against finite differences and the exact analytic posterior, every
solver on a tiny ADM with and without a classifier, and the CLI / sweep surface with its bad inputs."""

from __future__ import annotations

import json
import os

import pytest
import torch
from typer.testing import CliRunner

from sampler_bench.cli import app
from sampler_bench.errors import BenchError
from sampler_bench.models import adm
from sampler_bench.models.analytic import GaussianMixture
from sampler_bench.models.guidance import ExactMixtureClassifier, GuidedDenoiser
from sampler_bench.sampling import RunConfig, generate, parse_opts, plan_run
from sampler_bench.solvers import REGISTRY, steps_for_nfe

runner = CliRunner()
F64 = torch.float64


def bench(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(res, *fragments):
    assert res.exit_code == 2, (res.exit_code, res.output)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and "━" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: ") and ";" in lines[0], res.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-adm")
    res = bench("tiny-adm", "--out", d)
    assert res.exit_code == 0, res.output
    return d


# ---------------------------------------------------------------------------------------------
# The formula
# ---------------------------------------------------------------------------------------------


def test_classifier_gradient_matches_finite_differences(tiny_dir):
    cls = adm.load_adm_classifier(tiny_dir / "classifier.pt")
    cls.net.double()  # exact arithmetic for the check; the network is the real tiny classifier
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 16, generator=g, dtype=F64) * 2
    y = torch.tensor([3, 7])
    v = torch.randn(x.shape, generator=g, dtype=F64)
    for sigma in (0.05, 1.3, 40.0):
        grad = cls.grad_log_prob(x, torch.tensor(sigma, dtype=F64), y)

        def logp(z):
            with torch.no_grad():
                return torch.log_softmax(cls.logits(z, torch.tensor(sigma, dtype=F64)), -1)[torch.arange(2), y].sum()

        h = 1e-5
        fd = (logp(x + h * v) - logp(x - h * v)) / (2 * h)
        assert float((grad * v).sum()) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)


def test_guided_denoiser_is_d_plus_s_sigma2_alpha_grad_xt(tiny_dir):
    base = adm.load_adm_denoiser(tiny_dir / "model.pt")
    cls = adm.load_adm_classifier(tiny_dir / "classifier.pt")
    guided = GuidedDenoiser(base, cls, 2.5)
    x, y, s = torch.randn(2, 3, 16, 16, dtype=F64), torch.tensor([1, 2]), torch.tensor(3.0, dtype=F64)
    alpha = 1 / torch.sqrt(1 + s**2)
    xt = (alpha * x).float().requires_grad_(True)  # the classifier's own input, as guided-diffusion's cond_fn
    t = torch.full((2,), float(base.time_map.t(s)))
    logp = torch.log_softmax(cls.net(xt, t), -1)[torch.arange(2), y].sum()
    (g_xt,) = torch.autograd.grad(logp, xt)
    want = base.denoise(x, s, y) + 2.5 * s**2 * alpha * g_xt.double()
    torch.testing.assert_close(guided.denoise(x, s, y), want, rtol=1e-5, atol=1e-6)
    assert guided.classifier_calls == 1
    assert torch.equal(GuidedDenoiser(base, cls, 0).denoise(x, s, y), base.denoise(x, s, y))


def test_scale_one_on_the_marginal_mixture_is_the_exact_conditional():
    gmm = GaussianMixture(num_classes=4, per_class=2, shape=(3, 8, 8), rank=4, seed=1)
    guided = GuidedDenoiser(gmm, ExactMixtureClassifier(gmm), 1.0)
    assert not guided.base_gets_labels  # guided as its marginal
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1, 2, 3, 1])
    for sigma in (0.002, 0.01, 0.1, 0.5, 1.0, 3.0, 10.0, 80.0):
        x = gmm.sample_data(5, g, y)[0].to(F64) + sigma * torch.randn(5, 3, 8, 8, generator=g, dtype=F64)
        s = torch.tensor(sigma, dtype=F64)
        exact = gmm.denoise(x, s, y)
        scale = float(exact.abs().max())
        torch.testing.assert_close(guided.denoise(x, s, y), exact, rtol=0, atol=64 * torch.finfo(F64).eps * max(scale, 1.0))
    # scale 2 moves further than the conditional, in the direction of the class
    x = torch.randn(5, 3, 8, 8, generator=g, dtype=F64)
    s = torch.tensor(1.0, dtype=F64)
    d2 = GuidedDenoiser(gmm, ExactMixtureClassifier(gmm), 2.0).denoise(x, s, y)
    torch.testing.assert_close(d2 - gmm.denoise(x, s, None), 2 * (gmm.denoise(x, s, y) - gmm.denoise(x, s, None)))


# ---------------------------------------------------------------------------------------------
# Every solver on a tiny ADM
# ---------------------------------------------------------------------------------------------


def _smallest_nfe(spec):
    opts = parse_opts(spec, {})
    for n in range(3, 12):
        try:
            steps_for_nfe(spec, n, opts)
            return n
        except BenchError:
            continue
    raise AssertionError(spec.name)


@pytest.fixture(scope="module")
def tiny_base(tiny_dir):
    return adm.load_adm_denoiser(tiny_dir / "model.pt")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_solver_on_tiny_adm_with_and_without_classifier(tiny_dir, tiny_base, name):
    nfe = _smallest_nfe(REGISTRY[name])
    for classifier in (None, str(tiny_dir / "classifier.pt")):
        cfg = RunConfig(model="tiny", solver=name, nfe=nfe, seeds=[0], batch=1, device="cpu",
                        classifier=classifier, guidance_scale=2.0 if classifier else None)
        plan = plan_run(cfg, tiny_base)
        (batch, calls), = list(generate(plan, cfg.seeds))
        assert calls == nfe
        assert plan.classifier_calls == ([nfe] if classifier else [])
        assert torch.isfinite(batch.x).all() and batch.labels is not None


# ---------------------------------------------------------------------------------------------
# CLI and sweeps
# ---------------------------------------------------------------------------------------------


def test_done_means_command_records_classifier_and_scale(tiny_dir, tmp_path):
    out = tmp_path / "run"
    res = bench("sample", "--model", tiny_dir / "model.pt", "--classifier", tiny_dir / "classifier.pt",
                "--guidance-scale", 2, "--solver", "ersde", "--nfe", 20, "--num", 2, "--out", out)
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "run.json").read_text())
    assert rec["config"]["classifier"] == str(tiny_dir / "classifier.pt") and rec["config"]["guidance_scale"] == 2.0
    assert rec["nfe_counted"] == 20 and rec["classifier_calls"] == 20
    g = rec["resolved"]["model"]["guidance"]
    assert g["scale"] == 2.0 and g["classifier"]["architecture"] == "EncoderUNetModel" and g["model_gets_labels"]
    assert "classifier calls 20 at scale 2" in res.stdout


def test_tiny_adm_refuses_to_overwrite(tiny_dir, tmp_path):
    before = (tiny_dir / "model.pt").read_bytes()
    assert_user_error(bench("tiny-adm", "--out", tiny_dir), "exist", "--overwrite")
    assert (tiny_dir / "model.pt").read_bytes() == before
    (tmp_path / "f").write_text("x")
    assert_user_error(bench("tiny-adm", "--out", tmp_path / "f"), "is a file")


def test_unguided_run_identity_is_unchanged(tmp_path):
    assert "classifier" not in RunConfig().identity() and "guidance_scale" not in RunConfig().identity()


def test_gmm_classifier_from_the_cli(tmp_path):
    out = tmp_path / "g"
    res = bench("sample", "--model", "gmm:classes=3,shape=3x8x8,rank=2", "--classifier", "gmm", "--guidance-scale", "1.5",
                "--solver", "heun", "--nfe", 5, "--num", 2, "--out", out)
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "run.json").read_text())
    assert rec["classifier_calls"] == 5 and rec["resolved"]["model"]["guidance"]["model_gets_labels"] is False


@pytest.mark.parametrize("args,fragment", [
    (["--guidance-scale", "-1", "--classifier", "gmm"], "--guidance-scale -1"),
    (["--guidance-scale", "strong", "--classifier", "gmm"], "not a number"),
    (["--guidance-scale", "2"], "needs a classifier"),
    (["--classifier", "gmm:classes=3,shape=3x16x16"], "takes 3x16x16 images but model"),
    (["--classifier", "gmm:classes=5,shape=3x8x8"], "has 5 classes but model"),
    (["--classifier", "nosuch"], "unknown classifier"),
])
def test_bad_guidance_input(tmp_path, args, fragment):
    out = tmp_path / "r"
    res = bench("sample", "--model", "gmm:classes=3,shape=3x8x8,rank=2", "--solver", "heun", "--nfe", 3, "--num", 1,
                "--out", out, *args)
    assert_user_error(res, fragment)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir()]


def test_bad_checkpoint_files_from_the_cli(tiny_dir, tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    torch.save({"w": Payload()}, tmp_path / "evil.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    data = (tiny_dir / "classifier.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[:1000])
    cases = [(["--model", tmp_path / "evil.pt"], "refused"),
             (["--model", tiny_dir / "model.pt", "--classifier", tmp_path / "evil.pt"], "refused"),
             (["--model", tmp_path / "empty.pt"], "empty"),
             (["--model", tiny_dir / "model.pt", "--classifier", tmp_path / "trunc.pt"], "truncated"),
             (["--model", tiny_dir / "classifier.pt"], "match no known"),
             (["--model", f"adm:path={tiny_dir / 'model.pt'},image_size=16,num_channels=32,channel_mult=1x2,num_res_blocks=1,"
                          "attention_resolutions=8,num_head_channels=16,learn_sigma=true,resblock_updown=true"], "class_cond")]
    for args, fragment in cases:
        out = tmp_path / "run"
        res = bench("sample", "--solver", "euler", "--nfe", 2, "--num", 1, "--out", out, *args)
        assert_user_error(res, fragment)
        assert not out.exists()
    assert not (tmp_path / "PWNED").exists()


def test_sweep_guidance_scale_list_is_an_axis(tmp_path):
    from sampler_bench.sweep import load_sweep

    cfg = tmp_path / "s.yaml"
    cfg.write_text("models:\n  - model: 'gmm:classes=3,shape=3x8x8,rank=2'\n    label: g\n    classifier: gmm\n"
                   "    guidance_scale: [0, 1.5]\n  - model: 'gmm:classes=3,shape=3x8x8,rank=2'\n    label: plain\n"
                   "solvers: [euler]\nnfe: [4]\nnum: 2\n")
    sw = load_sweep(cfg, out=tmp_path / "out")
    got = {(c.model, c.cfg.classifier, c.cfg.guidance_scale) for c in sw.cells}
    assert got == {("g g=0", "gmm", 0.0), ("g g=1.5", "gmm", 1.5), ("plain", None, None)}
    res = bench("sweep", cfg, "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    recs = {json.loads(p.read_text())["model"]: json.loads(p.read_text()) for p in (tmp_path / "out" / "cells").glob("*.json")}
    assert recs["g g=1.5"]["classifier_calls"] == 4 and recs["g g=0"]["classifier_calls"] == 0
    assert "classifier_calls" not in recs["plain"]
    cfg.write_text("models: [gmm]\nclassifier: gmm\nguidance_scale: -2\nsolvers: [euler]\nnfe: [4]\n")
    assert_user_error(bench("sweep", cfg, "--dry-run"), "guidance_scale")
    cfg.write_text("models: [gmm]\nguidance_scale: 2\nsolvers: [euler]\nnfe: [4]\n")
    assert_user_error(bench("sweep", cfg, "--dry-run"), "needs a classifier")


def test_ersde_guided_config_dry_run(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMPLER_BENCH_CACHE", str(tmp_path / "cache"))
    from sampler_bench.sweep import load_sweep

    res = bench("sweep", "configs/ersde-guided.yaml", "--dry-run")
    import torch

    if torch.cuda.is_available():
        assert res.exit_code == 0, res.output
    else:  # a GPU config on a CPU machine: the cells are listed, then refused as the real run would be
        assert res.exit_code == 2 and "no CUDA device is available" in res.stderr, res.output
    assert "80 cells: 80 pending; 50000 samples each." in " ".join(res.stdout.split())
    cells = {c.id: c for c in load_sweep("configs/ersde-guided.yaml").cells}
    c = cells["imagenet128-g2__ER-SDE-Solver-3__nfe020"]
    assert (c.cfg.preset, c.cfg.final_step, c.cfg.schedule) == ("ersde-guided", "none", "ersde-guided")
    assert (c.cfg.classifier, c.cfg.guidance_scale, c.cfg.fid_ref) == ("adm-classifier-imagenet-128x128", 2.0, "VIRTUAL_imagenet128_labeled")
    assert cells["imagenet128-g0.5__heun__nfe019"].cfg.guidance_scale == 0.5
    assert "model 'adm-imagenet-128x128-cond': registered, state: not downloaded" in " ".join(res.stdout.split())
    assert "classifier 'adm-classifier-imagenet-128x128': registered, state: not downloaded" in " ".join(res.stdout.split())
