"""An FIE coefficient for the ER-SDE noise-scale functions: OUR definition, derived below.

The ER-SDE paper (Cui et al., arXiv 2309.06169) names an FIE ("FEI") coefficient and plots it
against NFE; nothing we could read states its formula or how steps are aggregated, so the per-step
coefficient below is our derivation and the sum over steps is our choice, not the paper's.

The exact ER-SDE step from sigma_s to sigma_t (VE form; VP is the same with sigma = lambda) is

    x_t = r x_s + phi(t) int_t^s phi'(u)/phi(u)^2 x0(x_u, u) du + sqrt(t^2 - s^2 r^2) z,   r = phi(t)/phi(s).

Its first-order solver freezes x0 at sigma_s; the error it leaves is the first-order Taylor term
times a coefficient that depends only on the step and phi (integration by parts):

    FIE(s -> t; phi) = phi(t) int_t^s phi'(u)/phi(u)^2 (u - s) du = (t - s) + phi(t) int_t^s du / phi(u)   (<= 0)

and a step to t = 0 gives FIE = -s (phi(0) = 0). This is the coefficient ``c1`` that ER-SDE-Solver-2
multiplies the x0 derivative by (sampler_bench/solvers/ersde.py). A schedule of M steps (NFE = M
for ER-SDE-Solver) gets

    FIE_total = sum_i |FIE(sigma_i -> sigma_{i+1})|      (``agg="sum"``, the default; our aggregation)

``agg="max"`` takes max_i |FIE_i|. The plot shows the per-step curve |FIE_i| (which needs no
aggregation choice) first, and the summed value against NFE beside it.

Source caveat: the paper's section and figures could not be read for this project (only its
abstract, figure captions and reviews); the formula above is derived from the exact solution the
official code discretises (see /work/shared/research/papers.md C.2-C.3 and README "FIE"). The paper's
equation number for it is therefore not given here. ODE (phi = sigma) minimises |FIE| among
admissible phi, as the paper reports.

The integral is exact by default (``n_int=0``: Gauss-Legendre in log sigma); ``n_int=N`` uses the
official solver's N-point left Riemann sum instead.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from sampler_bench.errors import BenchError
from sampler_bench.solvers.ersde import PHIS, phi_integrals, resolve_phi

AGGREGATES = ("sum", "max")
DEFAULT_PHIS = ("ode", "sde", "ersde1", "ersde2", "ersde3", "ersde4", "ersde5")


def _phi(phi: str | Callable, eta: float = 0.0):
    return resolve_phi(phi, eta)


def fie_step(sigma_s: float, sigma_t: float, phi: str | Callable = "ode", *, n_int: int = 0, eta: float = 0.0) -> float:
    """Signed FIE of one step sigma_s -> sigma_t: (t - s) + phi(t) int_t^s du/phi(u); -s when t = 0."""
    s, t = float(sigma_s), float(sigma_t)
    if not (s > 0 and 0 <= t < s):
        raise BenchError(f"FIE needs a decreasing step with sigma_s > sigma_t >= 0; got {s} -> {t}.")
    if t == 0.0:
        return -s
    f = _phi(phi, eta)
    i0, _ = phi_integrals(f, s, t, n_int)
    return (t - s) + float(f(np.float64(t))) * i0


def fie_steps(sigmas: Sequence[float], phi: str | Callable = "ode", *, n_int: int = 0, eta: float = 0.0) -> np.ndarray:
    """Per-step signed FIE for a whole schedule (len(sigmas) - 1 values)."""
    sig = [float(v) for v in sigmas]
    return np.array([fie_step(sig[i], sig[i + 1], phi, n_int=n_int, eta=eta) for i in range(len(sig) - 1)], dtype=np.float64)


def fie_total(sigmas: Sequence[float], phi: str | Callable = "ode", *, agg: str = "sum", n_int: int = 0, eta: float = 0.0) -> float:
    """Aggregate FIE of a schedule: ``sum`` (default) or ``max`` of |FIE_i|."""
    if agg not in AGGREGATES:
        raise BenchError(f"unknown FIE aggregate '{agg}'; use one of {', '.join(AGGREGATES)}.")
    c = np.abs(fie_steps(sigmas, phi, n_int=n_int, eta=eta))
    return float(c.sum() if agg == "sum" else c.max())


class _ScheduleModel:
    """What a schedule needs from a model: the default analytic model's sigma range and time map."""

    def __init__(self):
        import inspect

        from sampler_bench.models.analytic import GaussianMixture
        from sampler_bench.models.base import LinearVP

        params = inspect.signature(GaussianMixture.__init__).parameters
        self.name = "gmm"
        self.sigma_min = float(params["sigma_min"].default)
        self.sigma_max = float(params["sigma_max"].default)
        self.time_map = LinearVP()  # GaussianMixture's time map

    def round_sigma(self, sigma):
        from sampler_bench.models.base import as_f64

        return as_f64(sigma)


def schedule_model(model: Any = None):
    """``None`` -> the default analytic model's range; a string -> ``load_model``; else the object."""
    if model is None:
        return _ScheduleModel()
    if isinstance(model, str):
        from sampler_bench.models.registry import load_model

        return load_model(model, "cpu")
    return model


def schedule_sigmas(schedule: str, nfe: int, model: Any = None) -> np.ndarray:
    """The ER-SDE step schedule for ``nfe`` (= steps) as float64 numpy, ending in 0."""
    from sampler_bench.schedules import make_schedule

    return make_schedule(schedule, int(nfe), schedule_model(model)).cpu().numpy()


def check_phis(phis: Sequence[str]) -> list[str]:
    phis = [str(p).strip() for p in phis]
    if not phis or any(not p for p in phis):
        raise BenchError("no noise-scale function given; use e.g. --phi ode,sde,ersde5.")
    bad = [p for p in phis if p not in PHIS]
    if bad:
        raise BenchError(f"unknown noise-scale function(s) {', '.join(bad)}; use names from {', '.join(PHIS)}.")
    if len(set(phis)) != len(phis):
        raise BenchError(f"--phi lists a name twice ({','.join(phis)}); give each once.")
    return phis


def check_nfes(nfes: Sequence[int], sort: bool = True) -> list[int]:
    out = []
    for n in nfes:
        if isinstance(n, float) and not n.is_integer():
            raise BenchError(f"NFE {n} is not an integer; use e.g. --nfe 10,20,50.")
        n = int(n)
        if n < 1:
            raise BenchError(f"NFE must be positive; got {n}.")
        out.append(n)
    if not out:
        raise BenchError("no NFE given; use e.g. --nfe 10,20,50,100.")
    if len(set(out)) != len(out):
        raise BenchError(f"the NFE list repeats a value ({','.join(map(str, out))}); give each once.")
    return sorted(out) if sort else out


def fie_curve(phis: list[str], nfes: list[int], schedule: str = "karras", model=None, *, agg: str = "sum",
              n_int: int = 0) -> dict[str, list[float]]:
    """FIE_total per phi at each NFE: ``{phi: [FIE(nfe) for nfe in nfes]}`` (in the order given)."""
    phis = check_phis(phis)
    nfes = check_nfes(nfes, sort=False)
    m = schedule_model(model)
    grids = {n: schedule_sigmas(schedule, n, m) for n in nfes}
    return {p: [fie_total(grids[n], p, agg=agg, n_int=n_int) for n in nfes] for p in phis}


def fie_per_step(phis: list[str], nfe: int, schedule: str = "karras", model=None, *, n_int: int = 0) -> dict[str, Any]:
    """The per-step curve at one NFE: ``{"sigma": [sigma_i of each step], "fie": {phi: [|FIE_i|]}}``."""
    phis = check_phis(phis)
    sig = schedule_sigmas(schedule, check_nfes([nfe])[0], schedule_model(model))
    return {"sigma": sig[:-1].tolist(), "fie": {p: np.abs(fie_steps(sig, p, n_int=n_int)).tolist() for p in phis}}


def fie_table(phis: list[str], nfes: list[int], schedule: str = "karras", model=None, *, agg: str = "sum",
              n_int: int = 0) -> dict[str, Any]:
    """Everything ``bench fie`` writes: the curve, the per-step values at each NFE and the settings."""
    phis = check_phis(phis)
    nfes = check_nfes(nfes)
    m = schedule_model(model)
    grids = {n: schedule_sigmas(schedule, n, m) for n in nfes}
    curve = {p: [fie_total(grids[n], p, agg=agg, n_int=n_int) for n in nfes] for p in phis}
    per_step = {p: {str(n): fie_steps(grids[n], p, n_int=n_int).tolist() for n in nfes} for p in phis}
    return {"schedule": schedule, "model": getattr(m, "name", str(model)), "agg": agg, "n_int": n_int,
            "nfe": nfes, "fie": curve, "per_step": per_step,
            "sigmas": {str(n): grids[n].tolist() for n in nfes}}


def _fmt(v: float) -> str:
    return f"{v:.6g}" if math.isfinite(v) else str(v)


def to_csv(table: dict[str, Any]) -> str:
    phis = list(table["fie"])
    lines = ["nfe," + ",".join(phis)]
    for j, n in enumerate(table["nfe"]):
        lines.append(f"{n}," + ",".join(repr(float(table['fie'][p][j])) for p in phis))
    return "\n".join(lines) + "\n"


def to_markdown(table: dict[str, Any]) -> str:
    phis = list(table["fie"])
    best = [min(phis, key=lambda p: table["fie"][p][j]) for j in range(len(table["nfe"]))]
    head = (f"FIE coefficient ({table['agg']} over steps of |(t - s) + phi(t) int_t^s du/phi(u)|), "
            f"schedule `{table['schedule']}`, model `{table['model']}`, "
            f"integral {'exact' if table['n_int'] == 0 else str(table['n_int']) + '-point Riemann'}; lower is better.\n\n")
    lines = ["| NFE | " + " | ".join(phis) + " |", "|---:|" + "---:|" * len(phis)]
    for j, n in enumerate(table["nfe"]):
        cells = [(f"**{_fmt(table['fie'][p][j])}**" if p == best[j] else _fmt(table["fie"][p][j])) for p in phis]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def plot(table: dict[str, Any], fmt: str) -> bytes:
    """|FIE| per step against the step's sigma at the largest NFE (left, the default view: no aggregation
    choice) and the aggregated FIE (our sum or max over steps) against NFE (right)."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=110)
    ax2, ax = fig.subplots(1, 2)
    nmax = table["nfe"][-1]
    sig = np.asarray(table["sigmas"][str(nmax)][:-1], dtype=np.float64)
    for p in table["fie"]:
        ax2.plot(sig, np.abs(table["per_step"][p][str(nmax)]), marker=".", label=p)
        ax.plot(table["nfe"], table["fie"][p], marker="o", label=p)
    ax2.set_xlabel(f"sigma at the start of the step (NFE = {nmax})")
    ax2.set_ylabel("|FIE| of the step")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.invert_xaxis()
    ax2.set_title(f"per-step FIE, schedule {table['schedule']}")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    ax.set_xlabel("NFE")
    ax.set_ylabel(f"{table['agg']} of |FIE| over steps (our aggregation)")
    ax.set_yscale("log")
    ax.set_title("aggregated FIE vs NFE")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    return buf.getvalue()
