"""bench report: solver x NFE tables (terminal, Markdown, CSV) and plots (PNG, SVG) from a sweep."""

from __future__ import annotations

import csv
import sys
import textwrap
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

import sampler_bench.sampling as sampling
from sampler_bench.cli import app
from sampler_bench.errors import BenchError
from sampler_bench.report import make_report, render_terminal
from sampler_bench.solvers import REGISTRY, SolverSpec
from sampler_bench.sweep import load_sweep, run_sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class MeanAbs:
    """A test metric: mean |x| of the float samples (a real function of the samples, not a constant)."""

    name = "mean_abs"

    def __init__(self):
        self.total, self.n = 0.0, 0

    def update(self, batch):
        self.total += float(batch.x.abs().sum())
        self.n += batch.x.numel()

    def result(self):
        return {"mean_abs": self.total / self.n}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rep")
    mp = pytest.MonkeyPatch()
    mp.setattr(sampling, "build_consumers", lambda *a, **k: [MeanAbs()])

    def boom(denoise, x, sigmas, *, noise):
        raise RuntimeError("exploded")

    mp.setitem(REGISTRY, "boom-test", SolverSpec(name="boom-test", fn=boom, family="test", summary="t",
                                                 nfe=lambda s, o: s, nfe_rule="steps"))
    cfg = tmp / "r.yaml"
    cfg.write_text(textwrap.dedent("""
        name: rep
        models:
          - model: gmm:classes=2,shape=3x8x8
            label: tiny
          - model: gaussian:shape=1x4x4
            label: g4
        solvers: [euler, heun, boom-test]
        nfe: [3, 4, 9]
        num: 4
        device: cpu
    """))
    sw = load_sweep(cfg, tmp / "out")
    run_sweep(sw)
    mp.undo()
    return sw.out


def _is_png(p: Path) -> bool:
    with Image.open(p) as im:
        im.verify()
    return p.read_bytes()[:8] == PNG_MAGIC


def _is_svg(p: Path) -> bool:
    return ET.parse(p).getroot().tag.endswith("svg")


def test_report_tables_and_plots(results, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sampler_bench.metrics.fie", None)  # FIE module absent: no plot, a note
    rep = make_report(results, out=tmp_path / "rep")
    assert rep.metric == "mean_abs" and not rep.higher_better
    assert [t.model for t in rep.tables] == ["tiny", "g4"]
    t = rep.tables[0]
    assert t.series == ["euler", "heun", "boom-test"] and t.nfes == [3, 4, 9]
    assert t.values["heun"][4] == "n/a" and t.values["boom-test"][3] == "failed"
    for n in (3, 9):
        assert t.best[n] == min(t.values["euler"][n], t.values["heun"][n])
    # terminal table
    con = Console(record=True, width=200, color_system=None)
    for tbl in render_terminal(rep):
        con.print(tbl)
    text = con.export_text()
    assert "tiny: mean_abs (lower is better" in text and "g4: mean_abs" in text
    for word in ("euler", "heun", "boom-test", "failed", "n/a", f"{t.values['euler'][4]:.4g}"):
        assert word in text
    # markdown: the best per column is bold
    md = (tmp_path / "rep" / "mean_abs_table.md").read_text()
    assert "| solver | NFE 3 | NFE 4 | NFE 9 |" in md
    assert f"**{t.best[9]:.4g}**" in md
    # csv
    with open(tmp_path / "rep" / "mean_abs_table.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["model", "solver", "metric", "3", "4", "9"]
    assert [(r[0], r[1]) for r in rows[1:]] == [(m, s) for m in ("tiny", "g4") for s in ("euler", "heun", "boom-test")]
    assert float(rows[1][3]) == pytest.approx(t.values["euler"][3], rel=1e-3)
    # plots
    names = {p.name for p in rep.files}
    for stem in ("mean_abs_vs_nfe__tiny", "samples__tiny", "mean_abs_vs_nfe__g4", "samples__g4"):
        assert _is_png(tmp_path / "rep" / f"{stem}.png")
        assert _is_svg(tmp_path / "rep" / f"{stem}.svg")
        assert {f"{stem}.png", f"{stem}.svg"} <= names
    assert "fie_vs_nfe.png" not in names
    assert any("no FIE plot" in n for n in rep.notes)
    # the aggregated results carry the metric
    with open(results / "results.csv") as f:
        res = list(csv.DictReader(f))
    assert "mean_abs" in res[0] and res[0]["mean_abs"]


def test_fie_plot_uses_the_fie_api(results, tmp_path, monkeypatch):
    calls = []

    def fie_curve(phis, nfes, schedule="karras", model=None):
        calls.append((list(phis), list(nfes), schedule, model))
        return {p: [1.0 / n * (i + 1) for n in nfes] for i, p in enumerate(phis)}

    monkeypatch.setitem(sys.modules, "sampler_bench.metrics.fie", types.SimpleNamespace(fie_curve=fie_curve))
    rep = make_report(results, out=tmp_path / "rep", metric="wall_time_s")
    assert calls == [(["ode", "sde", "ersde1", "ersde2", "ersde3", "ersde4", "ersde5"], [3, 4, 9], "karras", None)]
    assert _is_png(tmp_path / "rep" / "fie_vs_nfe.png") and _is_svg(tmp_path / "rep" / "fie_vs_nfe.svg")
    assert rep.metric == "wall_time_s"


def test_report_cli_and_errors(results, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(results), "--metric", "images_per_s", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "images_per_s (higher is better" in res.output
    assert (tmp_path / "r" / "images_per_s_table.md").is_file()
    res = runner.invoke(app, ["report", str(results), "--metric", "fdi"])
    assert res.exit_code == 2 and "metric 'fdi' is not in these results; available: mean_abs" in " ".join(res.output.split())
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BenchError, match="cannot write the report"):
        make_report(results, out=blocker / "sub")
    with pytest.raises(BenchError, match="not a sweep results directory"):
        make_report(tmp_path)
    with pytest.raises(BenchError, match="does not exist"):
        make_report(tmp_path / "nope")


def test_sample_tiles_come_from_grid_png_exactly(results):
    import json

    import numpy as np

    from sampler_bench.report import read_grid, tiles_from_grid

    runs = sorted((results / "runs").iterdir())
    assert {json.loads((r / "run.json").read_text())["num_images"] for r in runs} == {4}
    for run in runs[:1] + runs[-1:]:  # a 1-channel (g4) and a 3-channel (tiny) model
        n = json.loads((run / "run.json").read_text())["num_images"]
        imgs = np.load(run / "samples.npz")["images"]
        grid = read_grid(run / "grid.png")
        for k in (1, 3, n):
            assert np.array_equal(tiles_from_grid(grid, n, k), imgs[:k])
    from sampler_bench.images import make_grid

    rng = np.random.default_rng(0)
    for n, shape in ((7, (5, 6, 3)), (64, (4, 4, 1)), (10, (3, 8, 3))):
        imgs = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        assert np.array_equal(tiles_from_grid(make_grid(imgs), n, n), imgs)


def test_default_metric_and_direction():
    from sampler_bench.report import default_metric, higher_is_better

    assert default_metric(["isc", "kid", "fid"]) == "fid"
    assert default_metric(["ode-error", "pixel-fd"]) == "pixel-fd"
    assert default_metric(["mean_abs"]) == "mean_abs"
    assert default_metric([]) == "wall_time_s"
    assert higher_is_better("isc") and higher_is_better("images_per_s") and not higher_is_better("fid")
    assert higher_is_better("mode_precision") and higher_is_better("f_score") and not higher_is_better("mode_tv")
    assert not higher_is_better("fd_dinov2") and not higher_is_better("kid")


def test_fie_plot_with_the_real_fie_module(results, tmp_path):
    rep = make_report(results, out=tmp_path / "rep")
    assert _is_png(tmp_path / "rep" / "fie_vs_nfe.png") and _is_svg(tmp_path / "rep" / "fie_vs_nfe.svg")
    assert any("no ER-SDE cell" in n for n in rep.notes)


def test_spread_shown_as_plus_minus_error_bars_and_ties_marked(tmp_path):
    from sampler_bench.report import Report, build_tables, is_tie, plot_metric, table_csv, table_markdown

    def rec(series, nfe, fid, se):
        return {"model": "m", "series": series, "solver": series, "nfe": nfe, "status": "ok",
                "metrics": {"fid": fid, "fid_se": se}}

    # NFE 10: b (3.0 +- 0.1) vs best a (2.9 +- 0.1): |0.1| <= 1.96*0.141 -> tie; c (4.0) is separated
    # NFE 20: a 2.0 +- 0.01 vs b 2.5 +- 0.01: separated, no tie
    records = [rec("a", 10, 2.9, 0.1), rec("b", 10, 3.0, 0.1), rec("c", 10, 4.0, 0.1), rec("a", 20, 2.0, 0.01), rec("b", 20, 2.5, 0.01)]
    (t,) = build_tables(records, "fid", False)
    assert t.best == {10: 2.9, 20: 2.0} and t.ties == {10: {"b"}, 20: set()} and t.spread_kind == "se"
    assert is_tie(3.0, 0.1, 2.9, 0.1) and not is_tie(4.0, 0.1, 2.9, 0.1) and not is_tie(3.0, None, 2.9, 0.1)
    rep = Report(tmp_path, tmp_path, "fid", False, [t], records)
    md = table_markdown(rep)
    assert "| a | **2.9 ± 0.1** | **2 ± 0.01** |" in md and "| b | ~3 ± 0.1 | 2.5 ± 0.01 |" in md and "| c | 4 ± 0.1 |" in md
    assert "standard error" in md and "~ marks values the spread cannot separate" in md
    rows = list(csv.reader(table_csv(rep).splitlines()))
    assert ["m", "a", "fid_se", "0.1", "0.01"] in rows and ["m", "a", "fid", "2.9", "2"] in rows
    files: list[Path] = []
    assert plot_metric(t, "fid", tmp_path / "fid_vs_nfe", files)
    svg = (tmp_path / "fid_vs_nfe.svg").read_text()
    assert "(± se)" in svg or "± se" in svg  # the y label says what the error bars are
    # no spread stored: plain values, no ties, no legend
    (t2,) = build_tables([{**r, "metrics": {"fid": r["metrics"]["fid"]}} for r in records], "fid", False)
    assert t2.ties == {10: set(), 20: set()} and t2.spread_kind is None
    assert "±" not in table_markdown(Report(tmp_path, tmp_path, "fid", False, [t2], records))
