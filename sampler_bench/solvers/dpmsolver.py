"""DPM-Solver (Lu et al. 2022) and DPM-Solver++ (Lu et al. 2022b), singlestep and multistep, in sigma-space.

Written from the official ``dpm_solver_pytorch.py`` (LuChengTHU/dpm-solver): the same update
formulas (``dpm_solver_first_update``, ``singlestep_dpm_solver_{second,third}_update``,
``multistep_dpm_solver_{second,third}_update``, ``solver_type`` ``dpmsolver`` or ``taylor``), the
same warm-up and ``lower_order_final`` rule, the same "fast" order recipe. In sigma-space
(x = x_vp / alpha, alpha = 1, lambda = -log sigma) every official update is the same update divided
by alpha_t: the coefficients depend only on lambda, sigma_t / sigma_s and alpha_t / alpha_s, so one
function serves VP and VE models. ``pred=noise`` is DPM-Solver (model output eps = (x - D) / sigma),
``pred=data`` is DPM-Solver++ (model output D).

Intermediate points of a singlestep step s -> t are at lambda_s + r h (sigma = sigma_s^(1-r) sigma_t^r):
r1 = 1/2 for order 2, r1 = 1/3, r2 = 2/3 for order 3, the official values for ``skip_type='logSNR'``
(with ``time_uniform`` the official code spaces them uniformly in its VP time instead).

The step to sigma = 0 (the official code stops at t_0 = eps > 0 and cannot reach lambda = inf:
its h, r0 = h_0 / h and the intermediate points degenerate) returns D(x, sigma_last): this is the
official ``denoise_to_zero=True`` (``denoise_to_zero_fn``, a first-order step from lambda_s to
infinity), and what k-diffusion's samplers do when sigma_next = 0. So on a grid of N steps ending
at 0, each solver here equals the official one run on the N positive sigmas (N - 1 steps,
``steps = N - 1``) with ``denoise_to_zero=True``; on a grid ending above 0 it equals the official
one on the whole grid with ``denoise_to_zero=False``.

NFE (grid ending at 0 | grid ending above 0):
- singlestep order k (``dpm-solver-k``, ``dpmpp-2s``): k*(steps - 1) + 1 | k*steps;
- the fast recipe (``dpm-solver``) and multistep (``dpm-solver-2m/3m``, ``dpmpp-2m/3m``): steps | steps.

Multistep ``lower_order_final`` (official default on): the last steps use order
min(order, steps_official + 1 - step) but only when the official step count is below 10
(``steps < 10`` in the official code, the docstring says 15); steps_official = N - 1 on a grid
ending at 0, N otherwise.

The fast recipe (official ``method='singlestep'``, "DPM-Solver-fast") spends the whole NFE budget
with orders 3,...,3 then (2, 1), (1) or (2) (order 3), or 2,...,2 (then 1) (order 2). Its grid is
the schedule itself, N steps for NFE N: with ``outer=subsample`` (default) the outer points are the
grid points at the cumulative orders and the inner points are the grid points the recipe skips,
the official rule for ``skip_type='time_uniform'``; with ``outer=logsnr`` the K outer points are
uniform in lambda between the first and last positive sigma and the inner points uniform in lambda
in between, the official rule for ``skip_type='logSNR'`` (the DPM-Solver paper's setting); the
schedule's other points are then unused.
"""

from __future__ import annotations

import math


from sampler_bench.errors import BenchError
from sampler_bench.solvers import Option, SolverSpec, host_floats, register


def _lam(sigma: float) -> float:
    return -math.log(sigma)


def _sig(lam: float) -> float:
    return math.exp(-lam)


class _Model:
    """The official ``model_fn``: data prediction D (DPM-Solver++) or noise prediction (x - D) / sigma (DPM-Solver)."""

    def __init__(self, denoise, pred: str):
        self.denoise, self.data = denoise, pred == "data"

    def __call__(self, x, sigma: float):
        d = self.denoise(x, sigma)
        return d if self.data else (x - d) / sigma


# ---------------------------------------------------------------------------------------------
# Updates (official formulas with alpha = 1)
# ---------------------------------------------------------------------------------------------


def first_update(x, s: float, t: float, m_s, data: bool):
    """DPM-Solver-1 = DPM-Solver++-1 = DDIM: ``dpm_solver_first_update``."""
    h = _lam(t) - _lam(s)
    if data:
        return (t / s) * x - math.expm1(-h) * m_s
    return x - (t * math.expm1(h)) * m_s


def singlestep_second(model, x, s: float, t: float, m_s, r1: float = 0.5, solver_type: str = "dpmsolver"):
    """``singlestep_dpm_solver_second_update``: one extra model call at lambda_s + r1 h."""
    data = model.data
    h = _lam(t) - _lam(s)
    s1 = _sig(_lam(s) + r1 * h)
    if data:
        phi_11, phi_1 = math.expm1(-r1 * h), math.expm1(-h)
        m_s1 = model((s1 / s) * x - phi_11 * m_s, s1)
        base = (t / s) * x - phi_1 * m_s
        if solver_type == "dpmsolver":
            return base - (0.5 / r1) * phi_1 * (m_s1 - m_s)
        return base + (1.0 / r1) * (phi_1 / h + 1.0) * (m_s1 - m_s)
    phi_11, phi_1 = math.expm1(r1 * h), math.expm1(h)
    m_s1 = model(x - (s1 * phi_11) * m_s, s1)
    base = x - (t * phi_1) * m_s
    if solver_type == "dpmsolver":
        return base - (0.5 / r1) * (t * phi_1) * (m_s1 - m_s)
    return base - (1.0 / r1) * (t * (phi_1 / h - 1.0)) * (m_s1 - m_s)


def singlestep_third(model, x, s: float, t: float, m_s, r1: float = 1 / 3, r2: float = 2 / 3, solver_type: str = "dpmsolver"):
    """``singlestep_dpm_solver_third_update``: two extra model calls at lambda_s + r1 h and lambda_s + r2 h."""
    data = model.data
    h = _lam(t) - _lam(s)
    s1, s2 = _sig(_lam(s) + r1 * h), _sig(_lam(s) + r2 * h)
    if data:
        phi_11, phi_12, phi_1 = math.expm1(-r1 * h), math.expm1(-r2 * h), math.expm1(-h)
        phi_22 = math.expm1(-r2 * h) / (r2 * h) + 1.0
        phi_2 = phi_1 / h + 1.0
        phi_3 = phi_2 / h - 0.5
        m_s1 = model((s1 / s) * x - phi_11 * m_s, s1)
        m_s2 = model((s2 / s) * x - phi_12 * m_s + (r2 / r1) * phi_22 * (m_s1 - m_s), s2)
        base = (t / s) * x - phi_1 * m_s
        if solver_type == "dpmsolver":
            return base + (1.0 / r2) * phi_2 * (m_s2 - m_s)
        d1_0, d1_1 = (m_s1 - m_s) / r1, (m_s2 - m_s) / r2
        d1 = (r2 * d1_0 - r1 * d1_1) / (r2 - r1)
        d2 = 2.0 * (d1_1 - d1_0) / (r2 - r1)
        return base + phi_2 * d1 - phi_3 * d2
    phi_11, phi_12, phi_1 = math.expm1(r1 * h), math.expm1(r2 * h), math.expm1(h)
    phi_22 = math.expm1(r2 * h) / (r2 * h) - 1.0
    phi_2 = phi_1 / h - 1.0
    phi_3 = phi_2 / h - 0.5
    m_s1 = model(x - (s1 * phi_11) * m_s, s1)
    m_s2 = model(x - (s2 * phi_12) * m_s - (r2 / r1) * (s2 * phi_22) * (m_s1 - m_s), s2)
    base = x - (t * phi_1) * m_s
    if solver_type == "dpmsolver":
        return base - (1.0 / r2) * (t * phi_2) * (m_s2 - m_s)
    d1_0, d1_1 = (m_s1 - m_s) / r1, (m_s2 - m_s) / r2
    d1 = (r2 * d1_0 - r1 * d1_1) / (r2 - r1)
    d2 = 2.0 * (d1_1 - d1_0) / (r2 - r1)
    return base - (t * phi_2) * d1 - (t * phi_3) * d2


def lincomb(terms):
    """sum_k c_k v_k for [(c_k, v_k), ...] in one pass of fused ``add_`` calls (one new tensor)."""
    (c, v), rest = terms[0], terms[1:]
    out = v * c
    for c, v in rest:
        out.add_(v, alpha=c)
    return out


def multistep_update(x, ms: list, ss: list[float], t: float, order: int, data: bool, solver_type: str = "dpmsolver"):
    """``multistep_dpm_solver_update``: ``ms``/``ss`` are the previous model values and sigmas, newest last.

    The official update is linear in x and the model values; its scalar coefficients are folded so
    that the step is one linear combination (the same arithmetic, up to float64 rounding)."""
    s0 = ss[-1]
    if order == 1:
        return first_update(x, s0, t, ms[-1], data)
    lam_t, lam_0, lam_1 = _lam(t), _lam(s0), _lam(ss[-2])
    h, h_0 = lam_t - lam_0, lam_0 - lam_1
    r0 = h_0 / h
    if data:
        phi_1 = math.expm1(-h)
        cx, c0 = t / s0, -phi_1
    else:
        phi_1 = math.expm1(h)
        cx, c0 = 1.0, -t * phi_1
    if order == 2:  # x_t = cx x + c0 m0 + k D1_0, D1_0 = (m0 - m1) / r0
        if solver_type == "dpmsolver":
            k = -0.5 * phi_1 if data else -0.5 * t * phi_1
        else:
            k = phi_1 / h + 1.0 if data else -t * (phi_1 / h - 1.0)
        return lincomb([(cx, x), (c0 + k / r0, ms[-1]), (-k / r0, ms[-2])])
    r1 = (lam_1 - _lam(ss[-3])) / h
    if data:  # x_t = cx x + c0 m0 + k1 D1 + k2 D2
        phi_2 = phi_1 / h + 1.0
        k1, k2 = phi_2, -(phi_2 / h - 0.5)
    else:
        phi_2 = phi_1 / h - 1.0
        k1, k2 = -t * phi_2, -t * (phi_2 / h - 0.5)
    q = r0 / (r0 + r1)  # D1 = (1 + q) D1_0 - q D1_1, D2 = (D1_0 - D1_1) / (r0 + r1)
    a = k1 * (1.0 + q) + k2 / (r0 + r1)  # on D1_0 = (m0 - m1) / r0
    b = -k1 * q - k2 / (r0 + r1)  # on D1_1 = (m1 - m2) / r1
    return lincomb([(cx, x), (c0 + a / r0, ms[-1]), (-a / r0 + b / r1, ms[-2]), (-b / r1, ms[-3])])


def singlestep_update(model, x, s: float, t: float, order: int, solver_type: str, r1: float | None = None, r2: float | None = None):
    """``singlestep_dpm_solver_update``: one singlestep step of ``order`` model calls."""
    m_s = model(x, s)
    if order == 1:
        return first_update(x, s, t, m_s, model.data)
    if order == 2:
        return singlestep_second(model, x, s, t, m_s, 0.5 if r1 is None else r1, solver_type)
    return singlestep_third(model, x, s, t, m_s, 1 / 3 if r1 is None else r1, 2 / 3 if r2 is None else r2, solver_type)


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------


def _split(sigmas) -> tuple[list[float], bool]:
    """(positive sigmas, whether the grid ends with a step to sigma = 0)."""
    sig = host_floats(sigmas)
    for a, b in zip(sig, sig[1:]):
        if not (a > b >= 0):
            raise BenchError(f"DPM-Solver needs a strictly decreasing schedule ending at or above 0; got {a} -> {b}.")
    to_zero = sig[-1] == 0.0
    return (sig[:-1] if to_zero else sig), to_zero


def dpm_singlestep(denoise, x, sigmas, *, noise=None, order=2, pred="noise", solver_type="dpmsolver"):
    """Singlestep DPM-Solver-k / DPM-Solver++(kS), official ``method='singlestep_fixed'``: every step has ``order`` model calls."""
    pos, to_zero = _split(sigmas)
    model = _Model(denoise, pred)
    for s, t in zip(pos, pos[1:]):
        x = singlestep_update(model, x, s, t, order, solver_type)
    if to_zero:
        x = denoise(x, pos[-1])  # official denoise_to_zero_fn
    return x


def fast_orders(nfe: int, order: int) -> list[int]:
    """Official ``get_orders_and_timesteps_for_singlestep_solver``: the orders that spend exactly ``nfe`` calls."""
    if nfe <= 0:
        return []
    if order == 3:
        k = nfe // 3 + 1
        if nfe % 3 == 0:
            return [3] * (k - 2) + [2, 1]
        if nfe % 3 == 1:
            return [3] * (k - 1) + [1]
        return [3] * (k - 1) + [2]
    if order == 2:
        return [2] * (nfe // 2) + ([1] if nfe % 2 else [])
    return [1] * nfe


def dpm_fast(denoise, x, sigmas, *, noise=None, order=3, pred="noise", solver_type="dpmsolver", outer="subsample"):
    """DPM-Solver-fast (official ``method='singlestep'``): the order recipe that spends exactly the grid's NFE."""
    pos, to_zero = _split(sigmas)
    model = _Model(denoise, pred)
    orders = fast_orders(len(pos) - 1, order)
    if outer == "logsnr" and orders:
        la, lb = _lam(pos[0]), _lam(pos[-1])
        k = len(orders)
        lam_outer = [la + (lb - la) * i / k for i in range(k + 1)]
        for i, o in enumerate(orders):
            s, t = _sig(lam_outer[i]), _sig(lam_outer[i + 1])
            x = singlestep_update(model, x, s, t, o, solver_type, *[j / o for j in range(1, o)])
    else:
        idx = 0
        for o in orders:
            s, t = pos[idx], pos[idx + o]
            ls, h = _lam(s), _lam(t) - _lam(s)
            rs = [(_lam(pos[idx + j]) - ls) / h for j in range(1, o)]  # inner points = the skipped grid points
            x = singlestep_update(model, x, s, t, o, solver_type, *rs)
            idx += o
    if to_zero:
        x = denoise(x, pos[-1])
    return x


def dpm_multistep(denoise, x, sigmas, *, noise=None, order=2, pred="data", solver_type="dpmsolver", lower_order_final=True):
    """Multistep DPM-Solver / DPM-Solver++(2M, 3M), official ``method='multistep'`` (NFE = steps)."""
    pos, to_zero = _split(sigmas)
    model = _Model(denoise, pred)
    steps = len(pos) - 1  # the official step count
    if steps == 0:
        return denoise(x, pos[0]) if to_zero else x
    ms, ss = [model(x, pos[0])], [pos[0]]
    for step in range(1, steps + 1):
        t = pos[step]
        if step < order:
            step_order = step  # warm-up
        elif lower_order_final and steps < 10:
            step_order = min(order, steps + 1 - step)
        else:
            step_order = order
        x = multistep_update(x, ms, ss, t, step_order, model.data, solver_type)
        if step < steps:  # the official code does not evaluate the model at the last point
            ms, ss = (ms + [model(x, t)])[-order:], (ss + [t])[-order:]
    if to_zero:
        x = denoise(x, pos[-1])  # official denoise_to_zero_fn
    return x


def dpmpp_2m_sde(denoise, x, sigmas, *, noise=None, eta=1.0, s_noise=1.0, solver_type="midpoint"):
    """DPM-Solver++(2M) SDE, k-diffusion ``sample_dpmpp_2m_sde`` (eta = 0: the 2M ODE solver without lower_order_final)."""
    sig = host_floats(sigmas)
    old = None
    h_last = None
    for i in range(len(sig) - 1):
        s, t = sig[i], sig[i + 1]
        d = denoise(x, s)
        if t == 0:
            x = d  # denoising step
            break
        h = _lam(t) - _lam(s)
        eta_h = eta * h
        c = -math.expm1(-h - eta_h)
        terms = [(t / s * math.exp(-eta_h), x), (c, d)]
        if old is not None:  # + k (d - old), folded into one linear combination
            r = h_last / h
            k = (c / (-h - eta_h) + 1.0) * (1.0 / r) if solver_type == "heun" else 0.5 * c * (1.0 / r)
            terms = [terms[0], (c + k, d), (-k, old)]
        if eta:
            terms.append((t * math.sqrt(-math.expm1(-2.0 * eta_h)) * s_noise, noise(s, t)))
        x = lincomb(terms)
        old, h_last = d, h
    return x


def dpmpp_3m_sde(denoise, x, sigmas, *, noise=None, eta=1.0, s_noise=1.0):
    """DPM-Solver++(3M) SDE, k-diffusion ``sample_dpmpp_3m_sde`` (eta = 0: the 3M ODE solver, taylor warm-up, no lower_order_final)."""
    sig = host_floats(sigmas)
    d_1 = d_2 = None
    h_1 = h_2 = None
    for i in range(len(sig) - 1):
        s, t = sig[i], sig[i + 1]
        d = denoise(x, s)
        if t == 0:
            x = d  # denoising step
            break
        h = _lam(t) - _lam(s)
        h_eta = h * (eta + 1.0)
        cx, c0 = math.exp(-h_eta), -math.expm1(-h_eta)
        phi_2 = math.expm1(-h_eta) / h_eta + 1.0
        if h_2 is not None:  # + phi_2 D1 - phi_3 D2, folded as in multistep_update
            r0, r1 = h_1 / h, h_2 / h
            k1, k2 = phi_2, -(phi_2 / h_eta - 0.5)
            q = r0 / (r0 + r1)
            a = k1 * (1.0 + q) + k2 / (r0 + r1)
            b = -k1 * q - k2 / (r0 + r1)
            terms = [(cx, x), (c0 + a / r0, d), (-a / r0 + b / r1, d_1), (-b / r1, d_2)]
        elif h_1 is not None:  # + phi_2 (d - d_1) / r
            r = h_1 / h
            terms = [(cx, x), (c0 + phi_2 / r, d), (-phi_2 / r, d_1)]
        else:
            terms = [(cx, x), (c0, d)]
        if eta:
            terms.append((t * math.sqrt(-math.expm1(-2.0 * h * eta)) * s_noise, noise(s, t)))
        x = lincomb(terms)
        d_1, d_2 = d, d_1
        h_1, h_2 = h, h_1
    return x


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

_SOLVER_TYPE = Option(str, "dpmsolver", "high-order form of the official code: dpmsolver (default) or taylor",
                      choices=("dpmsolver", "taylor"))
_LOF = Option(bool, True, "official lower_order_final: lower the order of the last steps when the official step count is < 10")


def _single_nfe(k):
    # grid ending at 0: k*(steps-1) + 1 (the last step returns D); ending above 0 (final_step=none): k*steps
    return lambda steps, opts: k * (steps - 1) + 1


_steps = lambda steps, opts: steps  # noqa: E731  (also for grids ending above 0)

for _k in (1, 2, 3):
    register(SolverSpec(
        name=f"dpm-solver-{_k}", fn=dpm_singlestep, family="dpm-solver", nfe=_single_nfe(_k),
        nfe_rule=f"{_k}*(steps - 1) + 1" if _k > 1 else "steps",
        nfe_above0=lambda steps, opts, _k=_k: _k * steps, nfe_rule_above0=f"{_k}*steps" if _k > 1 else "steps",
        summary=f"DPM-Solver-{_k} (Lu et al. 2022), singlestep noise prediction, {_k} call{'s' if _k > 1 else ''}/step"
                + (" (= DDIM)" if _k == 1 else "") + "; last step returns D",
        options={"solver_type": _SOLVER_TYPE} if _k > 1 else {},
        fixed={"order": _k, "pred": "noise"}, default_schedule="logsnr",
    ))
register(SolverSpec(
    name="dpm-solver", fn=dpm_fast, family="dpm-solver", nfe=_steps, nfe_rule="steps",
    summary="DPM-Solver-fast (official singlestep recipe): orders 3,..,3 then 2/1 spend exactly NFE; outer=subsample|logsnr",
    options={
        "order": Option(int, 3, "highest order of the recipe (official 3 for DPM-Solver-fast)", minimum=1, maximum=3),
        "solver_type": _SOLVER_TYPE,
        "outer": Option(str, "subsample", "outer points: subsample (grid points at cumulative orders, official time_uniform rule) "
                        "or logsnr (uniform in lambda, official logSNR rule = the paper)", choices=("subsample", "logsnr")),
    },
    fixed={"pred": "noise"}, default_schedule="logsnr",
))
for _k in (2, 3):
    register(SolverSpec(
        name=f"dpm-solver-{_k}m", fn=dpm_multistep, family="dpm-solver", nfe=_steps, nfe_rule="steps",
        summary=f"multistep DPM-Solver-{_k} (noise prediction), official warm-up and lower_order_final",
        options={"solver_type": _SOLVER_TYPE, "lower_order_final": _LOF},
        fixed={"order": _k, "pred": "noise"}, default_schedule="logsnr",
    ))
register(SolverSpec(
    name="dpmpp-2s", fn=dpm_singlestep, family="dpm-solver", nfe=_single_nfe(2), nfe_rule="2*(steps - 1) + 1",
    nfe_above0=lambda steps, opts: 2 * steps, nfe_rule_above0="2*steps",
    summary="DPM-Solver++(2S) (Lu et al. 2022b), singlestep data prediction, r1 = 1/2; last step returns D",
    options={"solver_type": _SOLVER_TYPE}, fixed={"order": 2, "pred": "data"}, default_schedule="logsnr",
))
for _k in (2, 3):
    register(SolverSpec(
        name=f"dpmpp-{_k}m", fn=dpm_multistep, family="dpm-solver", nfe=_steps, nfe_rule="steps",
        summary=f"DPM-Solver++({_k}M) (Lu et al. 2022b), multistep data prediction, official warm-up and lower_order_final",
        options={"solver_type": _SOLVER_TYPE, "lower_order_final": _LOF},
        fixed={"order": _k, "pred": "data"}, default_schedule="logsnr",
    ))

_SDE_OPTS = {
    "eta": Option(float, 1.0, "SDE noise: 0 = the ODE solver, 1 = k-diffusion default", minimum=0.0),
    "s_noise": Option(float, 1.0, "noise scale (k-diffusion s_noise)", minimum=0.0),
}
_sde_stochastic = lambda opts: opts.get("eta", 1.0) > 0 and opts.get("s_noise", 1.0) > 0  # noqa: E731
register(SolverSpec(
    name="dpmpp-2m-sde", fn=dpmpp_2m_sde, family="dpm-solver", nfe=_steps, nfe_rule="steps",
    summary="DPM-Solver++(2M) SDE (k-diffusion): eta, s_noise, solver_type=midpoint|heun; last step returns D",
    options={**_SDE_OPTS, "solver_type": Option(str, "midpoint", "second-order term: midpoint (k-diffusion default) or heun",
                                                  choices=("midpoint", "heun"))},
    stochastic=_sde_stochastic, default_schedule="karras",
))
register(SolverSpec(
    name="dpmpp-3m-sde", fn=dpmpp_3m_sde, family="dpm-solver", nfe=_steps, nfe_rule="steps",
    summary="DPM-Solver++(3M) SDE (k-diffusion): eta, s_noise; last step returns D",
    options=dict(_SDE_OPTS), stochastic=_sde_stochastic, default_schedule="karras",
))
