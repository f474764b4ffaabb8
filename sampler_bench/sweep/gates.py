"""Quality gates on a sweep's results, and the CI formats they are reported in.

A sweep YAML's ``gates:`` section is a list of thresholds on any metric of the cell records::

    gates:
      - metric: pixel_fd
        max_vs_floor: 3                  # <= the metric's finite-sample floor + 3 x its spread
        where: {solver: [heun, euler], nfe: ">=5"}
      - metric: fid
        max: 3.3                         # absolute
      - metric: fid
        max_vs_baseline: {ratio: 1.02, slack: 0.05}   # <= baseline * 1.02 + 0.05
        noise: 2                         # widen by 2 x the metric's known spread
      - metric: isc
        min: 9.0

Limits: ``max`` / ``min`` (absolute), ``max_vs_baseline`` / ``min_vs_baseline`` (``{ratio, slack}``,
against the same cell of a baseline results directory or ``results.csv``), ``max_vs_floor`` (K: the
cell's ``<metric>_floor + K * <metric>_floor_std``, the exact metrics' finite-sample floor).
``noise: K`` widens a max/min limit by K times the metric's spread where the cell carries one
(``<metric>_std``, else ``<metric>_floor_std``), by sqrt(2) K times it against a baseline (both
sides are noisy). ``where`` filters cells by ``cell``, ``model``, ``solver``, ``series`` (globs or
lists of globs), ``nfe`` (an int, a list, or ``">=10"``, ``"<20"``, ``"5-15"``), ``options``
(a mapping option: value or list of values) and ``stochastic`` (true/false).

Evaluation: every gate is checked on every cell it matches. A cell that failed, that has no result
(not run: a missing shard) or that lacks the metric fails the gate; a cell skipped by the sweep (an
NFE the solver cannot hit) or without a baseline value is reported as skipped, never as passed. A gate
that matches no cell fails. This module works on plain dicts (records as in ``cells/*.json``) and
imports nothing from the rest of the sweep package, so the config validator can use it.

Outputs: a JUnit XML file (one test case per cell and gate), github-action-benchmark's
``customSmallerIsBetter`` JSON (one entry per cell and smaller-is-better metric) and a Markdown
summary (for ``$GITHUB_STEP_SUMMARY``).
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from sampler_bench.errors import BenchError

GATE_KEYS = ("name", "metric", "max", "min", "max_vs_baseline", "min_vs_baseline", "max_vs_floor", "noise", "where")
LIMIT_KEYS = ("max", "min", "max_vs_baseline", "min_vs_baseline", "max_vs_floor")
WHERE_KEYS = ("cell", "model", "solver", "series", "nfe", "options", "stochastic")
BASELINE_KEYS = ("ratio", "slack")
_NFE_RANGE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")
_NFE_CMP = re.compile(r"\s*(<=|>=|<|>|==)\s*(\d+)\s*")


@dataclass
class Gate:
    index: int
    metric: str
    kind: str  # one of LIMIT_KEYS
    value: float  # the absolute limit (max/min) or K (max_vs_floor); unused for baseline gates
    ratio: float = 1.0
    slack: float = 0.0
    noise: float = 0.0
    where: dict[str, Any] = field(default_factory=dict)
    name: str | None = None

    @property
    def uses_baseline(self) -> bool:
        return self.kind.endswith("_vs_baseline")

    def describe(self) -> str:
        m = self.metric
        if self.kind == "max":
            s = f"{m} <= {self.value:g}"
        elif self.kind == "min":
            s = f"{m} >= {self.value:g}"
        elif self.kind == "max_vs_floor":
            s = f"{m} <= floor + {self.value:g} std"
        else:
            op, sign = ("<=", "+") if self.kind == "max_vs_baseline" else (">=", "-")
            s = f"{m} {op} baseline" + (f" * {self.ratio:g}" if self.ratio != 1 else "") + (f" {sign} {self.slack:g}" if self.slack else "")
        if self.noise:
            s += f" (noise {self.noise:g} std)"
        return self.name or s


@dataclass
class Outcome:
    gate: Gate
    cell: str
    status: str  # pass, fail, skipped
    message: str
    value: float | None = None
    limit: float | None = None
    baseline: float | None = None
    model: str = ""
    series: str = ""
    nfe: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"gate": self.gate.index, "gate_text": self.gate.describe(), "metric": self.gate.metric, "cell": self.cell,
                "model": self.model, "series": self.series, "nfe": self.nfe, "status": self.status, "value": self.value,
                "limit": self.limit, "baseline": self.baseline, "message": self.message}


# ---------------------------------------------------------------------------------------------
# Validation (called by the sweep config loader and by `bench check --gates`)
# ---------------------------------------------------------------------------------------------


def _num(err, key: str, v: Any, minimum: float | None = None) -> float:
    if isinstance(v, str):  # PyYAML reads 1.0e9 (no exponent sign) as a string
        try:
            v = float(v)
        except ValueError:
            pass
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise err(key, f"{v!r} is not a number; give a finite number.")
    if minimum is not None and v < minimum:
        raise err(key, f"{v!r} is below {minimum:g}; give a number >= {minimum:g}.")
    return float(v)


def _globs(err, key: str, v: Any) -> list[str]:
    vals = v if isinstance(v, list) else [v]
    if not vals or not all(isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in vals):
        raise err(key, f"{v!r} is not valid; use a name, a glob such as 'deis-*', or a list of them.")
    return [str(x) for x in vals]


def _nfe_filter(err, key: str, v: Any) -> Any:
    if isinstance(v, int) and not isinstance(v, bool):
        return [v]
    if isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return list(v)
    if isinstance(v, str) and (_NFE_RANGE.fullmatch(v) or _NFE_CMP.fullmatch(v)):
        return v
    raise err(key, f"{v!r} is not valid; use an NFE, a list of them, a comparison such as '>=10' or a range such as '5-15'.")


def _where(err, key: str, v: Any) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise err(key, f"{v!r} is not valid; use a mapping with keys {', '.join(WHERE_KEYS)}.")
    out: dict[str, Any] = {}
    for k, x in v.items():
        if k not in WHERE_KEYS:
            raise err(f"{key}.{k}", f"unknown key; allowed keys: {', '.join(WHERE_KEYS)}.")
        if k == "nfe":
            out[k] = _nfe_filter(err, f"{key}.nfe", x)
        elif k == "stochastic":
            if not isinstance(x, bool):
                raise err(f"{key}.stochastic", f"{x!r} is not valid; use true or false.")
            out[k] = x
        elif k == "options":
            if not isinstance(x, dict) or not x:
                raise err(f"{key}.options", f"{x!r} is not valid; use a mapping option: value (or a list of values).")
            out[k] = {str(o): (val if isinstance(val, list) else [val]) for o, val in x.items()}
        else:
            out[k] = _globs(err, f"{key}.{k}", x)
    return out


def validate_gates(raw: Any, err: Callable[[str, str], BenchError]) -> list[Gate]:
    """The ``gates:`` value of a config -> gates; ``err(key, problem)`` builds the one-line error."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise err("gates", f"{type(raw).__name__} is not valid; use a list of mappings such as - {{metric: fid, max: 3.3}}.")
    gates = []
    for i, g in enumerate(raw):
        key = f"gates[{i}]"
        if not isinstance(g, dict):
            raise err(key, f"{g!r} is not valid; use a mapping with metric and one of {', '.join(LIMIT_KEYS)}.")
        for k in g:
            if k not in GATE_KEYS:
                raise err(f"{key}.{k}", f"unknown key; allowed keys: {', '.join(GATE_KEYS)}.")
        metric = g.get("metric")
        if not isinstance(metric, str) or not metric.strip():
            raise err(f"{key}.metric", "missing or not a metric name; use a metric of the results (e.g. fid, pixel_fd, ode_rms_error).")
        limits = [k for k in LIMIT_KEYS if k in g]
        if len(limits) != 1:
            raise err(key, f"{'has ' + ' and '.join(limits) if limits else 'has no limit'}; give exactly one of {', '.join(LIMIT_KEYS)}.")
        kind = limits[0]
        value, ratio, slack = 0.0, 1.0, 0.0
        if kind in ("max", "min"):
            value = _num(err, f"{key}.{kind}", g[kind])
        elif kind == "max_vs_floor":
            value = _num(err, f"{key}.{kind}", g[kind], 0)
        else:
            b = g[kind]
            if isinstance(b, (int, float)) and not isinstance(b, bool):
                b = {"ratio": b}
            if not isinstance(b, dict):
                raise err(f"{key}.{kind}", f"{b!r} is not valid; use {{ratio: 1.02, slack: 0.05}} (limit = baseline * ratio +- slack).")
            for k in b:
                if k not in BASELINE_KEYS:
                    raise err(f"{key}.{kind}.{k}", f"unknown key; allowed keys: {', '.join(BASELINE_KEYS)}.")
            ratio = _num(err, f"{key}.{kind}.ratio", b.get("ratio", 1.0), 0)
            slack = _num(err, f"{key}.{kind}.slack", b.get("slack", 0.0), 0)
        noise = _num(err, f"{key}.noise", g.get("noise", 0.0), 0)
        name = g.get("name")
        if name is not None and not isinstance(name, str):
            raise err(f"{key}.name", f"{name!r} is not valid; use a short text.")
        gates.append(Gate(i, metric.strip(), kind, value, ratio, slack, noise, _where(err, f"{key}.where", g.get("where")), name))
    return gates


def gates_from_config(raw: dict[str, Any] | None, source: str) -> list[Gate]:
    """Gates of a stored or loaded config (``sweep.json``'s ``config``), errors naming ``source``."""
    return validate_gates((raw or {}).get("gates"), lambda k, p: BenchError(f"{source}: key '{k}': {p}"))


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def _nfe_matches(spec: Any, nfe: int | None) -> bool:
    if nfe is None:
        return False
    if isinstance(spec, list):
        return nfe in spec
    m = _NFE_RANGE.fullmatch(spec)
    if m:
        return int(m.group(1)) <= nfe <= int(m.group(2))
    op, n = _NFE_CMP.fullmatch(spec).groups()
    n = int(n)
    return {"<=": nfe <= n, ">=": nfe >= n, "<": nfe < n, ">": nfe > n, "==": nfe == n}[op]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return str(a) == str(b)


def matches(where: dict[str, Any], cell: dict[str, Any]) -> bool:
    """Does a cell (manifest entry merged with its record) pass a gate's ``where`` filter?"""
    for k, spec in where.items():
        if k == "nfe":
            if not _nfe_matches(spec, cell.get("nfe")):
                return False
        elif k == "stochastic":
            if cell.get("stochastic") is not None and bool(cell["stochastic"]) != spec:
                return False  # unknown (not run yet): kept, so a missing cell still fails
        elif k == "options":
            opts = cell.get("options") or {}
            for o, vals in spec.items():
                if o not in opts or not any(_same(opts[o], v) for v in vals):
                    return False
        else:
            if not any(fnmatch.fnmatchcase(str(cell.get(k, "")), g) for g in spec):
                return False
    return True


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _spread(metrics: dict[str, Any], metric: str) -> float | None:
    for k in (f"{metric}_std", f"{metric}_floor_std"):
        v = _number(metrics.get(k))
        if v is not None and math.isfinite(v):
            return v
    return None


def _check_cell(g: Gate, cell: dict[str, Any], rec: dict[str, Any] | None, baseline: dict[str, dict[str, Any]] | None) -> Outcome:
    base = dict(gate=g, cell=cell["cell"], model=str(cell.get("model", "")), series=str(cell.get("series", "")), nfe=cell.get("nfe"))
    if rec is None:
        return Outcome(status="fail", message="no result: the cell was not run (a shard missing from the merge, or the sweep stopped early)", **base)
    status = rec.get("status")
    if status == "skipped":
        return Outcome(status="skipped", message=f"cell skipped by the sweep: {rec.get('reason')}", **base)
    if status != "ok":
        return Outcome(status="fail", message=f"cell {status or 'has no status'}: {rec.get('reason')}", **base)
    metrics = rec.get("metrics") or {}
    value = _number(metrics.get(g.metric))
    if value is None:
        have = sorted(k for k, v in metrics.items() if _number(v) is not None)
        return Outcome(status="fail", message=f"metric '{g.metric}' is not in this cell's results (it has: {', '.join(have) or 'none'}); "
                                              f"compute it or narrow the gate's where", **base)
    spread = _spread(metrics, g.metric)
    widen = g.noise * spread if (g.noise and spread is not None) else 0.0
    note = f" (widened by {g.noise:g} x spread {spread:.4g})" if widen else (" (no spread known: not widened)" if g.noise else "")
    b = None
    if g.kind == "max":
        limit = g.value + widen
    elif g.kind == "min":
        limit = g.value - widen
    elif g.kind == "max_vs_floor":
        floor, fstd = _number(metrics.get(f"{g.metric}_floor")), _number(metrics.get(f"{g.metric}_floor_std"))
        if floor is None or fstd is None:
            return Outcome(status="fail", value=value, message=f"the cell has no {g.metric}_floor / {g.metric}_floor_std to compare with; "
                                                                 f"use max or max_vs_baseline for this metric", **base)
        limit = floor + g.value * fstd + widen
    else:
        brec = (baseline or {}).get(cell["cell"])
        b = _number((brec or {}).get(g.metric))
        if b is None:
            why = "the baseline has no result for this cell" if brec is None else f"the baseline cell has no '{g.metric}'"
            return Outcome(status="skipped", value=value, message=f"{why}: not compared", **base)
        widen *= math.sqrt(2.0)
        limit = b * g.ratio + g.slack + widen if g.kind == "max_vs_baseline" else b * g.ratio - g.slack - widen
    upper = g.kind.startswith("max")
    if not math.isfinite(value):
        return Outcome(status="fail", value=value, limit=limit, baseline=b, message=f"{g.metric} is {value}", **base)
    ok = value <= limit if upper else value >= limit
    op = "<=" if upper else ">="
    msg = f"{g.metric} = {value:.6g} {op if ok else ('>' if upper else '<')} limit {limit:.6g}" + (f" (baseline {b:.6g})" if b is not None else "") + note
    return Outcome(status="pass" if ok else "fail", value=value, limit=limit, baseline=b, message=msg, **base)


def evaluate(gates: list[Gate], cells: list[dict[str, Any]], records: dict[str, dict[str, Any]],
             baseline: dict[str, dict[str, Any]] | None = None, part: str | None = None) -> list[Outcome]:
    """Check every gate on every cell it matches.

    ``cells``: every cell of the sweep (manifest entries: cell, model, series, solver, nfe, options);
    ``records``: cell id -> record (cells/*.json, skipped cells included); ``baseline``: cell id ->
    {metric: value} for the baseline gates. ``part`` (e.g. "shard 1/2") says that ``cells`` are only
    part of the sweep: a gate that matches none of them is then skipped instead of failed.
    """
    out: list[Outcome] = []
    for g in gates:
        if g.uses_baseline and baseline is None:
            raise BenchError(f"gate {g.index} ({g.describe()}) compares with a baseline; pass --baseline DIR|results.csv (a previous run's results).")
        mine = []
        for c in cells:
            rec = records.get(c["cell"])
            view = {**c, **{k: rec[k] for k in ("options", "stochastic", "solver", "model", "series", "nfe") if rec and k in rec}}
            if matches(g.where, view):
                mine.append(_check_cell(g, view, rec, baseline))
        if not mine:
            if part:
                out.append(Outcome(g, "(no cell)", "skipped", f"gate {g.index} matches no cell of {part}; check the merged results"))
            else:
                out.append(Outcome(g, "(no cell)", "fail", f"gate {g.index} matches no cell of the sweep; fix its where"))
            continue
        if g.uses_baseline and not any(o.baseline is not None or o.status == "fail" for o in mine):
            out.append(Outcome(g, "(baseline)", "fail", "the baseline holds no value for any cell of this gate; is it the right baseline?"))
        out.extend(mine)
    return out


def counts(outcomes: list[Outcome]) -> dict[str, int]:
    return {s: sum(o.status == s for o in outcomes) for s in ("pass", "fail", "skipped")}


# ---------------------------------------------------------------------------------------------
# CI formats
# ---------------------------------------------------------------------------------------------


def junit_xml(outcomes: list[Outcome], suite: str) -> str:
    """JUnit XML: one test case per (cell, gate); failures and skips carry their message."""
    import xml.etree.ElementTree as ET

    n = counts(outcomes)
    root = ET.Element("testsuites", name=f"bench check {suite}", tests=str(len(outcomes)), failures=str(n["fail"]),
                      errors="0", skipped=str(n["skipped"]))
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(outcomes)), failures=str(n["fail"]), errors="0",
                       skipped=str(n["skipped"]), time="0")
    for o in outcomes:
        tc = ET.SubElement(ts, "testcase", classname=f"{suite}.{o.model or 'sweep'}", name=f"{o.cell} | {o.gate.describe()}", time="0")
        if o.status == "fail":
            f = ET.SubElement(tc, "failure", message=o.message, type="GateFailed")
            f.text = f"cell {o.cell}\ngate {o.gate.index}: {o.gate.describe()}\n{o.message}\n"
        elif o.status == "skipped":
            ET.SubElement(tc, "skipped", message=o.message)
        else:
            ET.SubElement(tc, "system-out").text = o.message
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


_NOT_SMALLER_BETTER = ("isc", "inception_score", "precision", "recall", "images_per_s")
_AUXILIARY = ("_floor", "_std", "metrics_time", "num_", "_target", "_max")
UNITS = {"fid": "FID", "kid": "KID", "pixel_fd": "pixel FD", "ode_rms_error": "RMS"}


def benchmark_entries(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """github-action-benchmark ``customSmallerIsBetter`` entries: one per ok cell and smaller-is-better
    metric (``name``, ``unit``, ``value``; ``range`` where the metric has a known spread; ``extra``)."""
    out = []
    for r in records:
        if r.get("status") != "ok":
            continue
        mets = r.get("metrics") or {}
        for k, v in mets.items():
            v = _number(v)
            if v is None or not math.isfinite(v) or any(s in k for s in _NOT_SMALLER_BETTER) or any(s in k for s in _AUXILIARY):
                continue
            e = {"name": f"{r['cell']} {k}", "unit": UNITS.get(k, k), "value": v,
                 "extra": f"model {r.get('model')}, solver {r.get('series', r.get('solver'))}, NFE {r.get('nfe')}, {r.get('num_images')} samples"}
            spread = _spread(mets, k)
            if spread is not None:
                e["range"] = f"± {spread:.4g}"
            out.append(e)
    return out


def _md(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4g}"


def summary_markdown(outcomes: list[Outcome], suite: str) -> str:
    """A Markdown report of the gates: failures first, then skips, then every result (collapsed)."""
    n = counts(outcomes)
    head = "passed" if not n["fail"] else "FAILED"
    md = [f"## bench check `{suite}`: {head}", "",
          f"{len(outcomes)} gate checks: {n['pass']} passed, {n['fail']} failed, {n['skipped']} skipped.", ""]
    cols = "| cell | gate | value | limit | baseline | result |\n|---|---|---|---|---|---|"

    def row(o: Outcome) -> str:
        return f"| `{_md(o.cell)}` | {_md(o.gate.describe())} | {_fmt(o.value)} | {_fmt(o.limit)} | {_fmt(o.baseline)} | {_md(o.status if o.status == 'pass' else o.status + ': ' + o.message)} |"

    for status, title in (("fail", "Failed"), ("skipped", "Skipped (not passed)")):
        sel = [o for o in outcomes if o.status == status]
        if sel:
            md += [f"### {title}", "", cols, *map(row, sel), ""]
    md += ["<details><summary>All gate checks</summary>", "", cols, *map(row, outcomes), "", "</details>", ""]
    return "\n".join(md)
