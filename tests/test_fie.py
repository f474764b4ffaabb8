"""FIE coefficient (sampler_bench/metrics/fie.py) and `bench fie`."""

from __future__ import annotations

import csv
import io
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from sampler_bench.errors import BenchError
from sampler_bench.metrics.fie import fie_curve, fie_step, fie_steps, fie_total

torch.set_num_threads(1)  # tiny tensors: extra intra-op threads only contend on a shared machine
PHIS = ["ode", "sde", "ersde1", "ersde2", "ersde3", "ersde4", "ersde5"]


def test_two_step_by_hand():
    """sigmas 2 -> 1 -> 0. Step 1: FIE = (t - s) + phi(t) int_t^s du/phi(u); step 2 (to 0): -s = -1.
    ODE (phi = u): -1 + 1 * ln 2 = -0.30685; total |.| = 1 + 1 - ln 2 = 2 - ln 2.
    SDE (phi = u^2): -1 + 1 * (1/1 - 1/2) = -1/2; total 1.5.
    phi = u^1.5 (ersde2): -1 + 1 * 2 (1 - 2^-0.5) = 1 - sqrt(2); total sqrt(2).
    Official 2-point Riemann for the SDE (nodes 1, 1.5, weight 1/2): -1 + (1 + 1/2.25)/2 = -5/18."""
    assert fie_steps([2.0, 1.0, 0.0], "ode") == pytest.approx([math.log(2) - 1, -1.0], rel=1e-14)
    assert fie_total([2.0, 1.0, 0.0], "ode") == pytest.approx(2 - math.log(2), rel=1e-14)
    assert fie_total([2.0, 1.0, 0.0], "sde") == pytest.approx(1.5, rel=1e-14)
    assert fie_total([2.0, 1.0, 0.0], "ersde2") == pytest.approx(math.sqrt(2), rel=1e-14)
    assert fie_step(2.0, 1.0, "sde", n_int=2) == pytest.approx(-5 / 18, rel=1e-14)
    assert fie_total([2.0, 1.0, 0.0], "ode", agg="max") == pytest.approx(1.0)


@pytest.mark.parametrize("p", [1.5, 2.0, 2.5])
def test_power_phi_closed_form(p):
    # phi = u^p: FIE = t - s + t^p (s^(1-p) - t^(1-p)) / (1 - p)
    s, t = 13.0, 0.37
    f = lambda u: u**p  # noqa: E731
    assert fie_step(s, t, f) == pytest.approx(t - s + t**p * (s ** (1 - p) - t ** (1 - p)) / (1 - p), rel=1e-13)


def test_ode_smallest_at_low_nfe_and_decreasing():
    curve = fie_curve(PHIS, [5, 10, 20], "karras")
    assert fie_curve(["ode"], [20, 5])["ode"] == [curve["ode"][2], curve["ode"][0]]  # order as given
    for j in range(3):
        assert all(curve["ode"][j] < curve[p][j] for p in PHIS if p != "ode")
    for p in PHIS:
        assert curve[p][0] > curve[p][1] > curve[p][2] > 0
    # values on the EDM grid (0.002..80, rho 7) agree with the independent scratch computation (papers.md C.2)
    ref10 = {"ode": 25.03, "sde": 40.48, "ersde1": 25.13, "ersde2": 33.65, "ersde3": 45.96, "ersde4": 26.33, "ersde5": 33.64}
    for p, v in ref10.items():
        assert curve[p][1] == pytest.approx(v, abs=0.006)


def test_riemann_approaches_exact():
    sig = [80.0, 20.0, 3.0, 0.5, 0.002, 0.0]
    exact = fie_total(sig, "ersde5")
    errs = [abs(fie_total(sig, "ersde5", n_int=n) - exact) for n in (10, 100, 1000)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-2 * exact


def test_bad_inputs():
    with pytest.raises(BenchError, match="unknown noise-scale"):
        fie_curve(["ode", "nope"], [10])
    with pytest.raises(BenchError, match="repeats"):
        fie_curve(["ode"], [10, 10])
    with pytest.raises(BenchError, match="positive"):
        fie_curve(["ode"], [0])
    with pytest.raises(BenchError, match="aggregate"):
        fie_total([2.0, 1.0, 0.0], "ode", agg="mean")
    with pytest.raises(BenchError, match="decreasing"):
        fie_step(1.0, 2.0)


def test_cli_fie_end_to_end(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from sampler_bench.cli import app

    out = tmp_path / "fie"
    res = CliRunner().invoke(app, ["fie", "--out", str(out), "--nfe", "20,5,10", "--phi", "ode,sde,ersde5"])
    assert res.exit_code == 0, res.output
    rows = list(csv.reader(io.StringIO((out / "fie.csv").read_text())))
    assert rows[0] == ["nfe", "ode", "sde", "ersde5"] and [r[0] for r in rows[1:]] == ["5", "10", "20"]
    assert float(rows[2][1]) == pytest.approx(fie_curve(["ode"], [10])["ode"][0], rel=1e-12)
    md = (out / "fie.md").read_text()
    assert "| 10 |" in md and "**" in md
    png = (out / "fie.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out / "fie.png") as im:
        im.verify()
    root = ET.fromstring((out / "fie.svg").read_bytes())
    assert root.tag.endswith("svg")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    # clear errors, exit code 2, nothing written
    for args in (["--phi", "ode,bogus"], ["--nfe", "10,abc"], ["--nfe", "0"], ["--agg", "mean"]):
        res = CliRunner().invoke(app, ["fie", "--out", str(tmp_path / "bad"), *args])
        assert res.exit_code == 2 and "error" in res.output and not (tmp_path / "bad").exists()


def test_fie_per_step_is_the_abs_of_fie_steps_on_the_schedule():
    from sampler_bench.metrics.fie import fie_per_step, fie_steps, schedule_sigmas

    out = fie_per_step(["ode", "ersde5"], 10)
    sig = schedule_sigmas("karras", 10)
    assert out["sigma"] == sig[:-1].tolist() and len(out["fie"]["ode"]) == 10
    assert out["fie"]["ersde5"] == np.abs(fie_steps(sig, "ersde5")).tolist()
    assert out["fie"]["ode"][-1] == sig[-2]  # the step to sigma = 0 has FIE = -s
