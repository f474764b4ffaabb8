"""Bit-exactness with upstream EDM (issue 10, items 1-3), on tiny networks written by our own writer
in the real pickle format: the network is called as EDM's sampler calls it (0-d sigma), iDDPM's
round_sigma is upstream's cdist choice, repeated sigmas run as upstream, and the batch size is part
of a network run's identity."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sampler_bench.cli import app
from sampler_bench.models import edm

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("exact")
    out = {}
    for precond, arch, classes in (("edm", "adm", 0), ("vp", "ddpmpp", 0), ("iddpm", "adm", 4)):
        net = edm.make_tiny_network(precond, arch, label_dim=classes, seed=3)
        out[precond] = edm.save_edm_pickle(net, d / f"{precond}-{arch}.pkl")
    return out


@pytest.mark.parametrize("precond", ["edm", "vp", "iddpm"])
def test_one_sigma_reaches_the_network_as_a_0d_tensor(files, precond):
    den = edm.load_edm_denoiser(files[precond])
    seen = []
    den.net.register_forward_pre_hook(lambda m, args: seen.append(args[1].shape))
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.arange(5) % 4 if den.num_classes else None
    sigma = torch.tensor(2.5, dtype=torch.float64)
    got = den.denoise(x, sigma, labels)
    assert seen == [torch.Size([])]
    # bit-identical to EDM's own call: net(x_float64, sigma_0d_float64, one-hot float32 labels)
    onehot = torch.eye(4)[labels] if labels is not None else None
    with torch.no_grad():
        want = den.net(x, sigma, onehot).to(torch.float64)
    assert torch.equal(got, want)
    # a per-sample sigma vector is passed as a vector
    den.denoise(x, sigma.expand(5).clone(), labels)
    assert seen[-1] == torch.Size([5])


def test_iddpm_round_sigma_is_upstreams_cdist_choice(files):
    den = edm.load_edm_denoiser(files["iddpm"])
    u = den.net.u
    s = torch.linspace(u[den.net.M - 1].item(), 80.0, 20_001, dtype=torch.float64)
    # upstream: torch.cdist over u[0..M] in float32, argmin (EDM training/networks.py)
    idx = torch.cdist(s.to(torch.float32).reshape(1, -1, 1), u.reshape(1, -1, 1)).argmin(2).flatten()
    assert torch.equal(den.round_sigma(s), u[idx].to(torch.float64))
    # ... which is not the exact |sigma - u| argmin near midpoints (what we did before)
    exact = (s.to(torch.float32).reshape(-1, 1) - u.reshape(1, -1)).abs().argmin(1)
    assert int((exact != idx).sum()) > 0
    # our one difference: a positive sigma below u[M-1]/2 (outside every schedule's range) is not rounded to 0
    tiny = torch.tensor([0.0, 1e-4, 0.002], dtype=torch.float64)
    assert den.round_sigma(tiny).tolist() == [0.0, float(u[den.net.M - 1]), float(u[den.net.M - 1])]


def _sample(tmp_path, model, solver, nfe, batch, name, *extra):
    out = tmp_path / name
    res = runner.invoke(app, ["sample", "--model", str(model), "--solver", solver, "--nfe", str(nfe), "--seeds", "0-3",
                              "--batch", str(batch), "--device", "cpu", "--out", str(out), *extra])
    return res, out


def test_repeated_sigmas_after_rounding_run_as_upstream(tmp_path, files):
    # Karras with 61+ steps on iDDPM snaps two low sigmas to the same grid point: EDM runs it (a
    # zero-length Heun step, still 2 network calls); we did refuse it
    res, out = _sample(tmp_path, files["iddpm"], "heun", 2 * 70 - 1, 4, "heun70")
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "run.json").read_text())
    sig = rec["resolved"]["sigmas"]
    assert len(sig) == 71 and any(a == b for a, b in zip(sig[:-1], sig[1:])) and rec["nfe_counted"] == 139
    # a solver that cannot take a zero-length step refuses it with the fix
    res, _ = _sample(tmp_path, files["iddpm"], "ersde", 70, 4, "ersde70")
    assert res.exit_code == 2 and "heun / edm solvers" in res.output and res.output.count("\n") == 1


def test_batch_size_is_part_of_a_network_runs_identity(tmp_path, files):
    res, out = _sample(tmp_path, files["edm"], "heun", 5, 4, "b")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "run.json").read_text())["config"]["batch"] == 4
    res, _ = _sample(tmp_path, files["edm"], "heun", 5, 4, "b")
    assert res.exit_code == 0 and "already" in res.output.lower()
    # another batch size may round the float32 network differently: not "already done"
    res, _ = _sample(tmp_path, files["edm"], "heun", 5, 1, "b")
    assert res.exit_code == 2 and "different config" in res.output
    res, out1 = _sample(tmp_path, files["edm"], "heun", 5, 1, "b1")
    a, b = np.load(out / "samples.npz")["images"], np.load(out1 / "samples.npz")["images"]
    assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 1  # at most last-bit differences
    # analytic models: the batch size does not change the images, so it is not part of the identity
    res, out = _sample(tmp_path, "gmm:shape=3x8x8", "heun", 5, 4, "g")
    assert res.exit_code == 0 and "batch" not in json.loads((out / "run.json").read_text())["config"]
    res, _ = _sample(tmp_path, "gmm:shape=3x8x8", "heun", 5, 2, "g")
    assert res.exit_code == 0 and "already" in res.output.lower()
