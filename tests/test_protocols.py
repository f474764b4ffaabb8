"""Official protocols: EDM's noise draws, final-step policies for every solver, rhoRK above 0, presets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sampler_bench.cli import app
from sampler_bench.errors import BenchError
from sampler_bench.images import quantize
from sampler_bench.models.analytic import Gaussian
from sampler_bench.models.base import F64, BoundDenoiser
from sampler_bench.models.registry import load_model
from sampler_bench.presets import PRESETS, expand
from sampler_bench.sampling import RunConfig, generate, plan_run, run_sample
from sampler_bench.schedules import make_schedule
from sampler_bench.solvers import FINAL_STEPS, all_solvers, get_solver, parse_opts, run_solver, steps_for_nfe

runner = CliRunner()
GMM = "gmm:classes=3,per_class=1,shape=3x8x8"


# -------------------------------------------------------------------------------------------------
# EDM: edm_sampler's draw-every-step rule, same images for the same seeds
# -------------------------------------------------------------------------------------------------


def _edm_reference(net, seeds, num_steps, S_churn, S_min, S_max, S_noise, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """EDM Algorithm 2 as edm_sampler in generate.py, with StackedRandomGenerator's per-seed streams.

    Returns the float64 outputs, the int labels and, per sample, the sigma (t_cur) of every draw.
    """
    gens = [torch.Generator().manual_seed(s % (1 << 32)) for s in seeds]
    latents = torch.stack([torch.randn(net.image_shape, generator=g) for g in gens])  # rnd.randn (float32)
    labels = torch.stack([torch.randint(net.num_classes, size=[], generator=g) for g in gens])  # rnd.randint
    draws: list[float] = []

    def randn_like(x):  # rnd.randn_like: dtype of x (float64), one draw per generator
        draws.append(float(t_cur))
        return torch.stack([torch.randn(x.shape[1:], generator=g, dtype=x.dtype) for g in gens])

    step = torch.arange(num_steps, dtype=F64)
    t_steps = (sigma_max ** (1 / rho) + step / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t_steps = torch.cat([net.round_sigma(t_steps), torch.zeros_like(t_steps[:1])])
    x_next = latents.to(F64) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0
        t_hat = net.round_sigma(t_cur + gamma * t_cur)
        x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x_cur)  # every step, also gamma = 0
        denoised = net.denoise(x_hat, t_hat, labels).to(F64)
        d_cur = (x_hat - denoised) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if i < num_steps - 1:
            denoised = net.denoise(x_next, t_next, labels).to(F64)
            d_prime = (x_next - denoised) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next, labels, draws


@pytest.mark.parametrize("churn", [(30.0, 0.5, 10.0, 1.007), (0.0, 0.0, float("inf"), 1.0)])
def test_edm_stochastic_reproduces_edm_sampler_for_the_same_seeds(churn):
    S_churn, S_min, S_max, S_noise = churn
    net = load_model(GMM)
    seeds, num_steps = [3, 7, 11], 6
    ref, ref_labels, ref_draws = _edm_reference(net, seeds, num_steps, S_churn, S_min, S_max, S_noise)
    # our draws, in order, through the same solver
    run = expand("edm-generate", opts={"S_churn": S_churn, "S_min": S_min, "S_max": S_max, "S_noise": S_noise})
    cfg = RunConfig(model=GMM, solver=run["solver"], nfe=2 * num_steps - 1, seeds=seeds, batch=2, schedule=run["schedule"],
                    opts=run["opts"], class_label="random", device="cpu", final_step=run["final_step"], noise=run["noise"],
                    preset="edm-generate")
    plan = plan_run(cfg, net)
    ours_draws: list[float] = []
    spec = plan.spec
    orig = spec.fn

    def counting(denoise, x, sigmas, *, noise, **kw):
        def nz(s_from, s_to):
            ours_draws.append(float(s_from))
            return noise(s_from, s_to)
        return orig(denoise, x, sigmas, noise=nz, **kw)

    object.__setattr__(spec, "fn", counting)
    try:
        batches = list(generate(plan, seeds))
    finally:
        object.__setattr__(spec, "fn", orig)
    x = torch.cat([b.x for b, _ in batches])
    labels = torch.cat([b.labels for b, _ in batches])
    assert torch.equal(labels, ref_labels)
    # the same number and order of draws per step (ours per batch of 2 then 1; the reference per step)
    per_step = sorted(set(ref_draws), reverse=True)
    assert len(ref_draws) == num_steps and ref_draws == per_step
    assert ours_draws == per_step + per_step  # two batches, each draws once per step, at the same sigmas
    assert torch.allclose(x, ref, rtol=0, atol=1e-12)
    assert torch.equal(quantize(x), quantize(ref))


def test_edm_generate_preset_from_the_cli_gives_the_reference_images(tmp_path):
    out = tmp_path / "r"
    res = runner.invoke(app, ["sample", "--preset", "edm-generate", "--model", GMM, "--nfe", "11", "--seeds", "0-3",
                              "--class-label", "random", "--opt", "S_churn=30", "--opt", "S_min=0.5", "--opt", "S_max=10",
                              "--out", str(out), "--metrics", "none"])
    assert res.exit_code == 0, res.output
    ref, _, _ = _edm_reference(load_model(GMM), [0, 1, 2, 3], 6, 30.0, 0.5, 10.0, 1.0)
    assert np.array_equal(np.load(out / "samples.npz")["images"], quantize(ref).numpy())
    rec = json.loads((out / "run.json").read_text())
    assert rec["resolved"]["preset"]["name"] == "edm-generate"
    assert rec["resolved"]["preset"]["expands_to"]["opts"]["S_churn"] == 0.0
    assert sorted(rec["resolved"]["preset"]["overridden"]) == ["opts.S_churn", "opts.S_max", "opts.S_min"]
    assert rec["resolved"]["noise"] == "edm-generate" and rec["resolved"]["final_step"] == "zero"


# -------------------------------------------------------------------------------------------------
# final_step: none / denoise count NFE correctly for every registered solver
# -------------------------------------------------------------------------------------------------


def _noise(shape):
    g = torch.Generator().manual_seed(5)
    return lambda *_: torch.randn(shape, generator=g, dtype=F64)


@pytest.mark.parametrize("final_step", ["none", "denoise"])
@pytest.mark.parametrize("name", [s.name for s in all_solvers()])
def test_final_step_policies_count_nfe_for_every_solver(name, final_step):
    model = Gaussian(shape=(1, 4, 4), rank=2)
    spec = get_solver(name)
    opts = parse_opts(spec, None)
    for steps in (spec.min_steps + 1, spec.min_steps + 3):
        nfe = spec.calls(steps, opts, final_step)
        assert steps_for_nfe(spec, nfe, opts, final_step) == steps
        sig = make_schedule(spec.schedule_for(model), steps, model, final_step)
        assert len(sig) == steps + 1 and float(sig[-1]) > 0
        z = torch.randn(2, *model.image_shape, generator=torch.Generator().manual_seed(1), dtype=F64)
        bound = BoundDenoiser(model)
        out = run_solver(spec, bound, z * sig[0], sig, noise=_noise(z.shape), opts=opts, final_step=final_step)
        assert bound.calls == nfe  # (run_solver also checks it against the rule)
        if final_step == "denoise":  # the extra call is D at the last grid sigma of the "none" result
            b2 = BoundDenoiser(model)
            x_none = run_solver(spec, b2, z * sig[0], sig, noise=_noise(z.shape), opts=opts, final_step="none")
            assert torch.allclose(out, model.denoise(x_none, sig[-1]), rtol=0, atol=1e-12)
            assert nfe == b2.calls + 1


def test_final_step_and_grid_must_agree():
    model = Gaussian(shape=(1, 4, 4), rank=2)
    spec = get_solver("euler")
    z = torch.zeros(1, *model.image_shape, dtype=F64)
    with pytest.raises(BenchError, match="does not fit a schedule that ends at sigma = 0"):
        run_solver(spec, BoundDenoiser(model), z, make_schedule("karras", 3, model), noise=None, opts={}, final_step="none")
    with pytest.raises(BenchError, match="final step 'last' is not valid"):
        make_schedule("karras", 3, model, "last")
    assert FINAL_STEPS == ("zero", "none", "denoise")


# -------------------------------------------------------------------------------------------------
# rhoRK on grids ending above 0
# -------------------------------------------------------------------------------------------------


def test_rhork_on_a_grid_ending_above_zero_takes_full_rk_steps():
    """The old failure: 'made 8 denoiser calls, its NFE rule says 7'. The rule now follows the grid."""
    model = Gaussian(shape=(1, 4, 4), rank=2)
    spec = get_solver("deis-rhork-heun")
    sig = torch.tensor([80.0, 10.0, 1.0, 0.1], dtype=F64)  # 3 steps, ends above 0
    z = torch.randn(2, *model.image_shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    bound = BoundDenoiser(model)
    out = run_solver(spec, bound, z * sig[0], sig, noise=None, opts={})  # final_step inferred: none
    assert bound.calls == 6 == spec.calls(3, {}, "none")
    x = z * sig[0]
    for s, sn in zip(sig[:-1], sig[1:]):  # plain Heun on dx/dsigma = (x - D) / sigma on every step
        k1 = (x - model.denoise(x, s)) / s
        xe = x + (sn - s) * k1
        k2 = (xe - model.denoise(xe, sn)) / sn
        x = x + (sn - s) * 0.5 * (k1 + k2)
    assert torch.allclose(out, x, rtol=0, atol=1e-12)
    assert spec.rule("none") == "2*steps" and spec.rule("zero") == "2*(steps - 1) + 1"
    # and from the CLI: NFE 6 = 3 full steps with --final-step none
    assert steps_for_nfe(spec, 6, {}, "none") == 3
    with pytest.raises(BenchError, match=r"NFE = 2\*steps, final step none"):
        steps_for_nfe(spec, 5, {}, "none")


# -------------------------------------------------------------------------------------------------
# presets
# -------------------------------------------------------------------------------------------------

DOCUMENTED = {  # README "Reproducing the papers" / `bench presets`
    "edm-generate": ("edm", "karras", "zero", {"S_churn": 0.0, "S_min": 0.0, "S_max": float("inf"), "S_noise": 1.0}),
    "edm-imagenet": ("edm", "karras", "zero", {"S_churn": 40.0, "S_min": 0.05, "S_max": 50.0, "S_noise": 1.003}),
    "deis-official": ("deis", "deis-t:order=2,t_min=0.001,t_max=1", "none", {"quad": "riemann", "quad_points": 10000}),
    "ersde-official": ("ersde", "karras", "zero", {"phi": "ersde5", "n_int": 100}),
    "ersde-guided": ("ersde", "ersde-guided", "none", {"phi": "ersde5", "n_int": 100}),
    "ddim-official": ("ddim", "ddim-uniform", "zero", {"eta": 0.0}),
    "ddim-quad": ("ddim", "ddim-quad", "zero", {"eta": 0.0}),
}


def test_presets_expand_as_documented():
    assert set(PRESETS) == set(DOCUMENTED)
    for name, (solver, schedule, final_step, opts) in DOCUMENTED.items():
        run = expand(name)
        assert (run["solver"], run["schedule"], run["final_step"], run["noise"]) == (solver, schedule, final_step, "edm-generate")
        assert run["opts"] == opts and run["overrides"] == []
        spec = get_solver(solver)
        parse_opts(spec, run["opts"])  # every preset option is a valid option of its solver
    # explicit values override; another solver keeps the preset options it has
    run = expand("deis-official", solver="deis-rhoab3", final_step="zero")
    assert run["solver"] == "deis-rhoab3" and run["opts"] == {"quad": "riemann", "quad_points": 10000}
    assert run["final_step"] == "zero" and set(run["overrides"]) == {"solver", "final_step"}
    assert expand("edm-generate", solver="heun")["opts"] == {}
    with pytest.raises(BenchError, match="unknown preset 'deis-oficial'; did you mean deis-official"):
        expand("deis-oficial")
    with pytest.raises(BenchError, match="no solver given"):
        expand(None)


def test_bench_presets_lists_them_with_sources():
    res = runner.invoke(app, ["presets"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    for name in PRESETS:
        assert name in text
    assert "qsh-zh/deis" in text and "NVlabs/edm" in text and "global RNG" in text


def test_deis_official_preset_runs_the_official_grid_and_records_it(tmp_path):
    out = tmp_path / "d"
    res = runner.invoke(app, ["sample", "--preset", "deis-official", "--model", "gaussian:shape=1x4x4", "--nfe", "5",
                              "--num", "2", "--out", str(out), "--metrics", "none"])
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "run.json").read_text())
    r = rec["resolved"]
    assert r["final_step"] == "none" and r["steps"] == 5 and rec["nfe_counted"] == 5 and len(r["sigmas"]) == 6
    tm = load_model("gaussian:shape=1x4x4").time_map
    assert r["sigmas"][0] == pytest.approx(float(tm.sigma(torch.tensor(1.0, dtype=F64))), rel=1e-12)
    assert r["sigmas"][-1] == pytest.approx(float(tm.sigma(torch.tensor(1e-3, dtype=F64))), rel=1e-12)
    assert r["preset"]["name"] == "deis-official" and r["preset"]["overridden"] == []
    assert rec["config"]["preset"] == "deis-official" and rec["config"]["final_step"] == "none"
    # a run without a preset keeps the old identity (no new keys at their defaults)
    assert "final_step" not in RunConfig().identity() and "preset" not in RunConfig().identity()


def test_cli_errors_for_final_step_and_noise(tmp_path):
    for args, msg in ((["--final-step", "last"], "final step 'last' is not valid"),
                      (["--noise", "xorshift"], "unknown noise stream 'xorshift'")):
        res = runner.invoke(app, ["sample", "--solver", "euler", "--nfe", "3", "--num", "1", "--out", str(tmp_path / "x"), *args])
        assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output
        assert not (tmp_path / "x").exists()
    rec = run_sample(RunConfig(model="gaussian:shape=1x4x4", solver="heun", nfe=5, seeds=[0], final_step="denoise",
                               metrics=["none"], device="cpu"), tmp_path / "h")
    assert rec["nfe_counted"] == 5 and rec["resolved"]["steps"] == 2 and rec["resolved"]["nfe_rule"] == "2*steps + 1"


# -------------------------------------------------------------------------------------------------
# sweeps: preset, final_step, models
# -------------------------------------------------------------------------------------------------


def test_sweep_entries_take_presets_final_step_and_a_model_filter(tmp_path):
    from sampler_bench.sweep import load_sweep

    cfg = tmp_path / "p.yaml"
    cfg.write_text("models:\n  - {model: 'gaussian:shape=1x4x4', label: a}\n  - {model: 'gmm:classes=2,shape=1x4x4', label: b}\n"
                   "solvers:\n  - preset: deis-official\n  - {preset: deis-official, name: deis-rhoab3, models: [b]}\n"
                   "  - {name: heun, final_step: denoise, nfe: [5]}\nnfe: [4]\nnum: 2\ndevice: cpu\n")
    sw = load_sweep(cfg, tmp_path / "o")
    ids = [c.id for c in sw.cells]
    assert ids == ["a__deis-official__nfe004", "a__heun-finaldenoise__nfe005", "b__deis-official__nfe004",
                   "b__deis-official-deis-rhoab3__nfe004", "b__heun-finaldenoise__nfe005"]
    c = sw.cells[0]
    assert (c.solver, c.cfg.schedule, c.cfg.final_step, c.cfg.preset) == ("deis", "deis-t:order=2,t_min=0.001,t_max=1", "none", "deis-official")
    r = sw.cells[3]
    assert r.solver == "deis-rhoab3" and r.model == "b" and r.cfg.opts == {"quad": "riemann", "quad_points": 10000}
    assert sw.cells[1].cfg.final_step == "denoise" and sw.cells[1].cfg.preset is None
    for body, msg in (("solvers: [{preset: deis-oficial}]", "unknown preset"),
                      ("solvers: [{name: heun, final_step: last}]", "final_step"),
                      ("solvers: [{name: heun, models: [zz]}]", "no model has the label 'zz'")):
        cfg.write_text(f"models: [{{model: gaussian, label: a}}]\n{body}\nnfe: [5]\n")
        with pytest.raises(BenchError, match=msg):
            load_sweep(cfg)


def test_edm_generate_compare_script_finds_identical_and_differing_images(tmp_path):
    """scripts/edm_generate_compare.py (for a GPU runner with EDM's generate.py): EDM's file layout."""
    import importlib.util
    from pathlib import Path

    from sampler_bench.fileio import write_png

    spec = importlib.util.spec_from_file_location("cmp", Path(__file__).resolve().parents[1] / "scripts" / "edm_generate_compare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    run = tmp_path / "ours"
    assert runner.invoke(app, ["sample", "--preset", "edm-generate", "--model", GMM, "--nfe", "5", "--seeds", "998-1001",
                               "--out", str(run), "--metrics", "none"]).exit_code == 0
    images = np.load(run / "samples.npz")["images"]
    edm = tmp_path / "edm"
    for img, seed in zip(images, range(998, 1002)):  # EDM --subdirs layout
        write_png(edm / f"{seed - seed % 1000:06d}" / f"{seed:06d}.png", img)
    assert mod.compare(run, edm) == {"compared": 4, "identical": 4, "max_level_diff": 0, "missing": []}
    bad = images[1].copy()
    bad[0, 0, 0] ^= 8
    write_png(edm / "000000" / "000999.png", bad)
    (edm / "001000" / "001001.png").unlink()
    r = mod.compare(run, edm)
    assert r == {"compared": 3, "identical": 2, "max_level_diff": 8, "missing": [1001]}
    assert mod.main([str(run), str(edm)]) == 1
