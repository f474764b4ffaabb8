"""Tables and plots of a sweep's results (the records under ``OUT/cells``, see :mod:`sampler_bench.sweep`).

- a solver x NFE table of one metric per model (terminal via rich, Markdown, CSV), best per column
  marked (lowest, or highest for metrics where higher is better: IS, precision, recall, images/s);
  where the records carry a spread (``NAME_se``, a standard error, else ``NAME_std``) cells read
  ``value +- spread`` and every value the spread cannot separate from the best
  (``|v - best| <= 1.96 sqrt(s_v^2 + s_best^2)``) is marked as a tie (``~``);
- ``<metric>_vs_nfe`` plots (PNG and SVG) with +-1 spread error bars, log axes where the values span a decade or more;
- ``fie_vs_nfe``: the ER-SDE FIE coefficient of the noise-scale functions used in the sweep (or the
  paper's set when the sweep has no ER-SDE cell), from :func:`sampler_bench.metrics.fie.fie_curve`;
- ``samples``: a picture grid, one row per solver, one column per NFE, the same seeds in every tile.

Matplotlib is used through its object API with the Agg renderer (no display, no global state).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sampler_bench.errors import BenchError
from sampler_bench.fileio import atomic_path, write_text
from sampler_bench.textfmt import fmt_num
from sampler_bench.sweep.config import _slug
from sampler_bench.sweep.store import load_records, metric_names, write_results

RECORD_NUMBERS = ("wall_time_s", "images_per_s")
HIGHER_IS_BETTER = ("isc", "is_", "inception_score", "precision", "recall", "f_score", "mode_precision", "images_per_s")
PAPER_PHIS = ["ode", "sde", "ersde1", "ersde2", "ersde3", "ersde4", "ersde5"]


def default_metric(names: list[str]) -> str:
    """fid, else a Frechet distance (e.g. the exact pixel-space one), else the first metric, else wall time."""
    for pick in (lambda m: m == "fid", lambda m: m.startswith("fid"), lambda m: "fd" in m or "frechet" in m, lambda m: True):
        for m in names:
            if pick(m):
                return m
    return "wall_time_s"


def higher_is_better(metric: str) -> bool:
    m = metric.lower()
    return m == "is" or any(m.startswith(p) for p in HIGHER_IS_BETTER)


@dataclass
class ModelTable:
    model: str
    nfes: list[int]
    series: list[str]
    # values[series][nfe]: float, or a status text ("failed", "n/a"); absent = not run
    values: dict[str, dict[int, Any]]
    best: dict[int, float]
    records: dict[tuple[str, int], dict[str, Any]]
    spreads: dict[str, dict[int, float]] = field(default_factory=dict)  # series -> nfe -> spread
    ties: dict[int, set] = field(default_factory=dict)  # nfe -> series tied with the best (best excluded)
    spread_kind: str | None = None  # "se" or "std"


@dataclass
class Report:
    results: Path
    out: Path
    metric: str
    higher_better: bool
    tables: list[ModelTable]
    records: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _value(rec: dict[str, Any], metric: str) -> Any:
    if rec.get("status") == "failed":
        return "failed"
    if rec.get("status") == "skipped":
        return "n/a"
    v = (rec.get("metrics") or {}).get(metric, rec.get(metric) if metric in RECORD_NUMBERS else None)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return None


TIE_Z = 1.96


def _spread(rec: dict[str, Any], metric: str) -> tuple[float | None, str | None]:
    """The spread stored next to ``metric``: ``metric_se`` (standard error) else ``metric_std``."""
    m = rec.get("metrics") or {}
    for sfx in ("se", "std"):
        v = m.get(f"{metric}_{sfx}")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v), sfx
    return None, None


def is_tie(v: float, s_v: float | None, best: float, s_best: float | None) -> bool:
    """Whether the spreads cannot separate ``v`` from ``best`` (two-sided, about 95%)."""
    if s_v is None or s_best is None:
        return False
    return abs(v - best) <= TIE_Z * math.hypot(s_v, s_best)


def build_tables(records: list[dict[str, Any]], metric: str, higher: bool) -> list[ModelTable]:
    tables: dict[str, ModelTable] = {}
    for r in records:
        model = r.get("model", "?")
        t = tables.setdefault(model, ModelTable(model, [], [], {}, {}, {}))
        s, n = r.get("series", r.get("solver", "?")), int(r["nfe"])
        if s not in t.values:
            t.series.append(s)
            t.values[s] = {}
        if n not in t.nfes:
            t.nfes.append(n)
        t.values[s][n] = _value(r, metric)
        t.records[(s, n)] = r
        sp, kind = _spread(r, metric) if isinstance(t.values[s][n], float) else (None, None)
        if sp is not None:
            t.spreads.setdefault(s, {})[n] = sp
            t.spread_kind = t.spread_kind or kind
    for t in tables.values():
        t.nfes.sort()
        for n in t.nfes:
            vals = [t.values[s].get(n) for s in t.series]
            nums = [v for v in vals if isinstance(v, float) and math.isfinite(v)]
            if nums:
                t.best[n] = max(nums) if higher else min(nums)
                bs = next(s for s in t.series if t.values[s].get(n) == t.best[n])
                t.ties[n] = {s for s in t.series if s != bs and isinstance(t.values[s].get(n), float)
                             and is_tie(t.values[s][n], t.spreads.get(s, {}).get(n), t.best[n], t.spreads.get(bs, {}).get(n))}
    return list(tables.values())


def _cell(t: ModelTable, s: str, n: int) -> tuple[str, str]:
    """(text, mark) of one cell: value [+- spread]; mark is "best", "tie" or ""."""
    v = t.values[s].get(n)
    text = _fmt(v)
    sp = t.spreads.get(s, {}).get(n)
    if isinstance(v, float) and sp is not None:
        text += f" ± {sp:.2g}"
    if isinstance(v, float) and t.best.get(n) == v:
        return text, "best"
    if s in t.ties.get(n, ()):
        return "~" + text, "tie"
    return text, ""


def _legend(rep: "Report") -> str:
    kinds = {t.spread_kind for t in rep.tables if t.spread_kind}
    if not kinds:
        return ""
    what = "standard error" if kinds == {"se"} else "standard deviation" if kinds == {"std"} else "spread"
    return (f" ± is the {what} stored with each value; ~ marks values the spread cannot separate from the best "
            f"(|difference| <= {TIE_Z} x the combined spread).")


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return fmt_num(v, ".4g") if math.isfinite(v) else str(v)
    return str(v)


def render_terminal(rep: Report):
    from rich.table import Table
    from rich.text import Text

    out = []
    for t in rep.tables:
        tbl = Table(title=f"{t.model}: {rep.metric} ({'higher' if rep.higher_better else 'lower'} is better; best per NFE in bold green{', ties (~) in green' if any(t.ties.values()) else ''})",
                    title_justify="left", header_style="bold")
        tbl.add_column("solver \\ NFE", overflow="fold")
        for n in t.nfes:
            tbl.add_column(str(n), justify="right")
        for s in t.series:
            row = []
            for n in t.nfes:
                v = t.values[s].get(n)
                text, mark = _cell(t, s, n)
                if mark == "best":
                    text = Text(text, style="bold green")
                elif mark == "tie":
                    text = Text(text, style="green")
                elif v == "failed":
                    text = Text("failed", style="red")
                elif v == "n/a":
                    text = Text("n/a", style="dim")
                row.append(text)
            tbl.add_row(s, *row)
        out.append(tbl)
    return out


def table_markdown(rep: Report) -> str:
    lines = [f"# {rep.metric} by solver and NFE", "",
             f"From `{rep.results}`. {'Higher' if rep.higher_better else 'Lower'} is better; the best per NFE is in bold. "
             "`failed`: the cell failed (see results.md); `n/a`: the solver cannot use exactly that NFE." + _legend(rep), ""]
    for t in rep.tables:
        lines += [f"## {t.model}", "", "| solver | " + " | ".join(f"NFE {n}" for n in t.nfes) + " |",
                  "|---|" + "---:|" * len(t.nfes)]
        for s in t.series:
            cells = []
            for n in t.nfes:
                text, mark = _cell(t, s, n)
                cells.append(f"**{text}**" if mark == "best" else text)
            lines.append(f"| {s.replace('|', '/')} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def table_csv(rep: Report) -> str:
    nfes = sorted({n for t in rep.tables for n in t.nfes})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "solver", "metric"] + [str(n) for n in nfes])
    for t in rep.tables:
        for s in t.series:
            w.writerow([t.model, s, rep.metric] + [_fmt(t.values[s].get(n)) if n in t.nfes else "" for n in nfes])
            if t.spreads.get(s):
                w.writerow([t.model, s, f"{rep.metric}_{t.spread_kind}"] + [_fmt(t.spreads[s].get(n)) for n in nfes])
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _save(fig, base: Path, files: list[Path]) -> None:
    for ext in ("png", "svg"):
        path = base.with_suffix(f".{ext}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, metadata={"Date": None} if ext == "svg" else None)
        files.append(path)


def _nfe_axis(ax, nfes: list[int]) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    if len(nfes) >= 2 and max(nfes) / min(nfes) >= 4:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(nfes))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(ScalarFormatter())
    else:
        ax.set_xticks(nfes)
    ax.set_xlabel("NFE")


def plot_metric(t: ModelTable, metric: str, base: Path, files: list[Path]) -> bool:
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    ys_all = []
    for s in t.series:
        pts = [(n, t.values[s][n]) for n in t.nfes if isinstance(t.values[s].get(n), float) and math.isfinite(t.values[s][n])]
        if not pts:
            continue
        errs = [t.spreads.get(s, {}).get(p[0], 0.0) for p in pts]
        if any(errs):  # +-1 spread (standard error or std) error bars
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=errs, marker="o", markersize=4, capsize=3, label=s)
            ys_all += [max(p[1] - e, p[1] * 0.5) for p, e in zip(pts, errs)] + [p[1] + e for p, e in zip(pts, errs)]
        else:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=4, label=s)
        ys_all += [p[1] for p in pts]
    if not ys_all:
        return False
    floors = [r["metrics"][f"{metric}_floor"] for r in t.records.values()
              if isinstance((r.get("metrics") or {}).get(f"{metric}_floor"), (int, float))]
    if floors:  # e.g. pixel_fd_floor: what an exact sampler scores with this many samples
        ax.axhline(float(np.mean(floors)), color="0.5", linestyle="--", linewidth=1, label=f"{metric}_floor")
        ys_all.append(float(np.mean(floors)))
    _nfe_axis(ax, t.nfes)
    if min(ys_all) > 0 and max(ys_all) / min(ys_all) >= 10:
        ax.set_yscale("log")
    ax.set_ylabel(metric + (f" (± {t.spread_kind})" if t.spread_kind else ""))
    ax.set_title(f"{t.model}: {metric} vs NFE", fontsize="medium")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    _save(fig, base, files)
    return True


def _cheap_model(spec: str | None) -> str | None:
    """The model spec to give ``fie_curve`` for its sigma range: analytic models only (building a
    checkpoint network just for its sigma range is not worth it; None means the EDM range 0.002..80)."""
    from sampler_bench.models.registry import MODELS

    if not spec:
        return None
    entry = MODELS.get(spec.partition(":")[0])
    return spec if entry is not None and entry.kind == "analytic" else None


def plot_fie(records: list[dict[str, Any]], base: Path, files: list[Path], notes: list[str]) -> bool:
    try:
        from sampler_bench.metrics.fie import fie_curve
    except ImportError:
        notes.append("no FIE plot: sampler_bench.metrics.fie is not part of this install.")
        return False
    phis: list[str] = []
    schedule = model = None
    for r in records:
        phi = (r.get("options_resolved") or {}).get("phi")
        if phi is not None and r.get("status") == "ok":
            if str(phi) not in phis:
                phis.append(str(phi))
            if schedule is None:
                schedule, model = r.get("schedule_resolved"), _cheap_model(r.get("model_spec"))
    if not phis:
        phis = list(PAPER_PHIS)
        notes.append("FIE plot: no ER-SDE cell (no 'phi' option) in these results; showing the paper's noise-scale functions.")
    nfes = sorted({int(r["nfe"]) for r in records})
    try:
        curves = fie_curve(phis, nfes, schedule=schedule or "karras", model=model)
    except (BenchError, ValueError, KeyError) as exc:
        notes.append(f"no FIE plot: {exc}")
        return False
    import sampler_bench.metrics.fie as fie_api

    per_step = getattr(fie_api, "fie_per_step", None)
    steps = per_step(phis, nfes[-1], schedule=schedule or "karras", model=model) if per_step else None
    fig = _figure(11.0 if steps else 6.4, 4.2)
    ax_step, ax = fig.subplots(1, 2) if steps else (None, fig.add_subplot())
    for phi, vals in curves.items():  # left: the per-step curve (no aggregation choice); right: our sum vs NFE
        if steps:
            ax_step.plot(steps["sigma"], steps["fie"][phi], marker=".", markersize=3, label=str(phi))
        ax.plot(nfes, list(vals), marker="o", markersize=4, label=str(phi))
    if steps:
        ax_step.set_xscale("log")
        ax_step.set_yscale("log")
        ax_step.invert_xaxis()
        ax_step.set_xlabel(f"sigma at the start of the step (NFE = {nfes[-1]})")
        ax_step.set_ylabel("|FIE| of the step")
        ax_step.set_title("per-step FIE (our definition)", fontsize="medium")
        ax_step.grid(True, which="major", alpha=0.3)
        ax_step.legend(fontsize="small")
    _nfe_axis(ax, nfes)
    vals_all = [v for vals in curves.values() for v in vals if v is not None and math.isfinite(v)]
    if vals_all and min(vals_all) > 0 and max(vals_all) / min(vals_all) >= 10:
        ax.set_yscale("log")
    ax.set_ylabel("sum of |FIE| over steps (our aggregation)")
    ax.set_title(f"FIE vs NFE ({schedule or 'karras'} schedule)", fontsize="medium")
    ax.grid(True, which="major", alpha=0.3)
    _save(fig, base, files)
    return True


def tiles_from_grid(grid: np.ndarray, n: int, k: int) -> np.ndarray:
    """The first ``k`` pictures (NHWC) of a run's ``grid.png`` made by ``make_grid`` from ``n`` pictures."""
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    pad = 2
    h = (grid.shape[0] - pad) // rows - pad
    w = (grid.shape[1] - pad) // cols - pad
    out = []
    for i in range(min(k, n)):
        r, q = divmod(i, cols)
        out.append(grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w])
    return np.stack(out)


def read_grid(png: Path) -> np.ndarray:
    """A run's grid.png as HWC uint8 (C = 1 for single-channel models)."""
    from PIL import Image

    with Image.open(png) as im:
        grid = np.asarray(im)
    return grid[..., None] if grid.ndim == 2 else grid


def cell_pictures(results: Path, rec: dict[str, Any], k: int) -> np.ndarray | None:
    """The first ``k`` samples of a cell as one picture, read from its grid.png (cheap even for 50k-image
    runs) or, failing that, from samples.npz."""
    from sampler_bench.images import make_grid

    rdir = results / rec.get("run_dir", f"runs/{rec['cell']}")
    png, npz = rdir / "grid.png", rdir / "samples.npz"
    n = min(int(rec.get("num_images") or 0), 64)
    if png.is_file() and n:
        return make_grid(tiles_from_grid(read_grid(png), n, k), k)
    if npz.is_file():
        with np.load(npz) as data:
            imgs = data["images"][:k]
        return make_grid(imgs, k)
    return None


def plot_samples(results: Path, t: ModelTable, k: int, base: Path, files: list[Path]) -> bool:
    rows, cols = len(t.series), len(t.nfes)
    pics = {(s, n): cell_pictures(results, t.records[(s, n)], k)
            for s in t.series for n in t.nfes if (s, n) in t.records and t.records[(s, n)].get("status") == "ok"}
    if not any(p is not None for p in pics.values()):
        return False
    fig = _figure(1.2 * cols + 1.6, 1.2 * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, s in enumerate(t.series):
        for j, n in enumerate(t.nfes):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for sp in ax.spines.values():
                sp.set_visible(False)
            pic = pics.get((s, n))
            if pic is not None:
                ax.imshow(pic[..., 0] if pic.shape[-1] == 1 else pic, cmap="gray" if pic.shape[-1] == 1 else None,
                          vmin=0, vmax=255, interpolation="nearest")
            else:
                v = t.values[s].get(n)
                ax.text(0.5, 0.5, "failed" if v == "failed" else "n/a" if v == "n/a" else "", ha="center", va="center",
                        fontsize="small", color="0.4", transform=ax.transAxes)
            if i == 0:
                ax.set_title(f"NFE {n}", fontsize="small")
            if j == 0:
                ax.set_ylabel(s, fontsize="small", rotation=0, ha="right", va="center")
    fig.suptitle(f"{t.model}: first {k} samples (same seeds) per solver and NFE", fontsize="small")
    _save(fig, base, files)
    return True


# ---------------------------------------------------------------------------------------------


def make_report(results: str | Path, metric: str | None = None, out: str | Path | None = None,
                samples_per_cell: int = 4) -> Report:
    results = Path(results)
    if not results.is_dir():
        raise BenchError(f"results directory '{results}' does not exist; give a sweep's output directory (e.g. results/quickstart).")
    manifest, records = load_records(results)
    if manifest is None and not records:
        raise BenchError(f"'{results}' is not a sweep results directory (no sweep.json, no cells/); run `bench sweep CONFIG` first.")
    if samples_per_cell < 1:
        raise BenchError(f"--samples must be a positive integer; got {samples_per_cell}.")
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        raise BenchError(f"'{results}' has no finished cell yet; run or resume the sweep with `bench sweep CONFIG`.")
    names = metric_names(ok)
    notes: list[str] = []
    if metric is None:
        metric = default_metric(names)
        if not names:
            notes.append("these results hold no metrics (no FID reference and no exact metrics); the table shows wall time.")
    elif metric not in names and metric not in RECORD_NUMBERS:
        raise BenchError(f"metric '{metric}' is not in these results; available: {', '.join(names + list(RECORD_NUMBERS))}.")
    out = Path(out) if out is not None else results / "report"
    higher = higher_is_better(metric)
    rep = Report(results, out, metric, higher, build_tables(records, metric, higher), records, notes=notes)
    try:
        write_results(results)  # re-aggregate (e.g. after shards wrote their cells)
    except OSError:
        notes.append(f"could not refresh {results / 'results.csv'} (not writable); tables below are from the records.")
    try:
        _write_outputs(rep, results, samples_per_cell)
    except OSError as exc:
        raise BenchError(f"cannot write the report into '{out}': {exc.strerror or exc}; choose another --out.") from None
    return rep


def _write_outputs(rep: Report, results: Path, samples_per_cell: int) -> None:
    out, metric, notes = rep.out, rep.metric, rep.notes
    mslug = _slug(metric)
    write_text(out / f"{mslug}_table.md", table_markdown(rep))
    write_text(out / f"{mslug}_table.csv", table_csv(rep))
    rep.files += [out / f"{mslug}_table.md", out / f"{mslug}_table.csv"]
    multi = len(rep.tables) > 1
    for t in rep.tables:
        suffix = f"__{_slug(t.model)}" if multi else ""
        if not plot_metric(t, metric, out / f"{mslug}_vs_nfe{suffix}", rep.files):
            notes.append(f"{t.model}: no finite {metric} value to plot.")
        if not plot_samples(results, t, samples_per_cell, out / f"samples{suffix}", rep.files):
            notes.append(f"{t.model}: no sample pictures found (runs/<cell>/samples.npz).")
    plot_fie(rep.records, out / "fie_vs_nfe", rep.files, notes)
