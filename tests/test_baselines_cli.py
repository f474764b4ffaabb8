"""The baseline solvers from the CLI, and per-sample noise (batch independence) for the stochastic ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sampler_bench.cli import app
from sampler_bench.models.analytic import Gaussian
from sampler_bench.models.base import F64, BoundDenoiser
from sampler_bench.sampling import SeededNoise
from sampler_bench.schedules import make_schedule
from sampler_bench.solvers import get_solver, parse_opts, run_solver

runner = CliRunner()

STOCHASTIC = [("dpmpp-2m-sde", None), ("dpmpp-3m-sde", None), ("sa-solver", None), ("euler-ancestral", None),
              ("dpm-2", {"s_churn": 10}), ("dpm-2-ancestral", None), ("dpmpp-2s-ancestral", None), ("dpmpp-sde", None)]


@pytest.mark.parametrize("name,opts", STOCHASTIC, ids=[n for n, _ in STOCHASTIC])
def test_noise_is_per_sample(name, opts):
    """Sample i is bit-identical whether it runs alone or in a batch (noise from each sample's generator)."""
    model = Gaussian(shape=(1, 4, 4), rank=2)
    spec = get_solver(name)
    o = parse_opts(spec, opts)
    assert spec.is_stochastic(o)
    sig = make_schedule("karras", 6, model)
    seeds = [11, 12, 13]

    def solve(batch_seeds):
        gens = [torch.Generator().manual_seed(s) for s in batch_seeds]
        z = torch.stack([torch.randn(model.image_shape, generator=g) for g in gens]).to(F64)
        return run_solver(spec, BoundDenoiser(model), z * sig[0], sig, noise=SeededNoise(gens, model.image_shape, "cpu"), opts=o)

    together = solve(seeds)
    for i, s in enumerate(seeds):
        assert torch.equal(solve([s])[0], together[i])
    assert not torch.equal(together[0], together[1])


def test_cli_dpmpp_3m_and_unipc_on_the_default_model(tmp_path):
    for solver, nfe in (("dpmpp-3m", 10), ("unipc", 8)):
        out = tmp_path / solver
        res = runner.invoke(app, ["sample", "--solver", solver, "--nfe", str(nfe), "--num", "2", "--out", str(out)])
        assert res.exit_code == 0, res.output
        rec = json.loads((out / "run.json").read_text())
        assert rec["nfe_counted"] == nfe and rec["resolved"]["schedule"] == "logsnr"
        assert np.load(out / "samples.npz")["images"].shape[0] == 2
    rec = json.loads((tmp_path / "unipc" / "run.json").read_text())
    assert rec["resolved"]["options"] == {"order": 3, "variant": "bh1", "pred": "data", "corrector": True, "lower_order_final": True}


@pytest.mark.parametrize("args,match", [
    (["--solver", "unipc", "--opt", "order=4"], "too large"),
    (["--solver", "unipc", "--opt", "variant=bh3"], "not valid"),
    (["--solver", "sa-solver", "--opt", "predictor_order=5"], "too large"),
    (["--solver", "sa-solver", "--opt", "tau_sigma_min=30"], "tau_sigma_min=30.0 is above tau_sigma_max"),
    (["--solver", "dpm-2-ancestral", "--opt", "eta=1.5"], "too large"),
    (["--solver", "ipndm-v", "--opt", "max_order=5"], "too large"),
    (["--solver", "dpm-solver-3", "--nfe", "8"], "nearest valid values are 7 or 10"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, match):
    out = tmp_path / "r"
    full = ["sample", *args, "--num", "2", "--out", str(out)]
    if "--nfe" not in args:
        full += ["--nfe", "7"]
    res = runner.invoke(app, full)
    assert res.exit_code == 2, res.output
    assert match in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_bench_solvers_lists_the_baselines():
    res = runner.invoke(app, ["solvers"])
    assert res.exit_code == 0
    for name in ("dpm-solver-1", "dpm-solver-2", "dpm-solver-3", "dpm-solver", "dpm-solver-2m", "dpm-solver-3m", "dpmpp-2s",
                 "dpmpp-2m", "dpmpp-3m", "dpmpp-2m-sde", "dpmpp-3m-sde", "unipc", "sa-solver", "euler-ancestral", "dpm-2",
                 "dpm-2-ancestral", "dpmpp-2s-ancestral", "dpmpp-sde", "ipndm-v"):
        assert f"\n{name} " in res.output, name
