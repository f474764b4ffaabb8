"""UniPC (Zhao et al. 2023, arXiv 2302.04867), the unified predictor-corrector, in sigma-space.

Written from the official ``uni_pc.py`` (wl-zhao/UniPC, ``multistep_uni_pc_bh_update`` and the
``multistep`` loop of ``UniPC.sample``), with alpha = 1 and lambda = -log sigma (the official
update divided by alpha_t, exactly as for DPM-Solver):

- predictor UniP-p (p = ``order``): x_t = x_t_ - B(h) sum_k rho_k^p D1_k, corrector UniC:
  x_t = x_t_ - B(h) (sum_k rho_k^c D1_k + rho_p^c (m_t - m_0)), with D1_k = (m_k - m_0) / r_k,
  r_k = (lambda_k - lambda_0) / h, rho from the official linear systems R rho = b (rho^p = 1/2 for
  p = 2, rho^c = 1/2 for p = 1); B(h) = h (``variant=bh1``, hh = -h for data prediction) or
  e^h - 1 (``bh2``);
- the corrector uses the model value at the *predicted* x_t, which is then reused as the history
  value of the next step, so it costs no extra call; the corrected x_t is never evaluated;
- warm-up: step i < order uses order i, with the corrector; ``lower_order_final`` (official default
  on, no step-count condition): order min(order, steps + 1 - step); the last official step has no
  corrector (there is no model call after it);
- ``pred=data`` (official ``algorithm_type='data_prediction'``, default) or ``noise``.

With the corrector, UniPC-p has order p + 1. Not offered: the ``vary_coeff`` variant, thresholding.

The step to sigma = 0 (the official code stops at t_0 > 0, where lambda is finite) returns
D(x, sigma_last): official ``denoise_to_zero=True``, as in dpmsolver.py. So on a grid of N steps
ending at 0 this equals the official sampler run on the N positive sigmas (``steps = N - 1``) with
``denoise_to_zero=True``; on a grid ending above 0, the official one with ``steps = N``,
``denoise_to_zero=False``. NFE = steps on both kinds of grid.
"""

from __future__ import annotations

import math

import numpy as np

from sampler_bench.errors import BenchError
from sampler_bench.solvers import Option, SolverSpec, host_floats, register
from sampler_bench.solvers.dpmsolver import _Model, lincomb


def unipc_rhos(rks: list[float], h: float, order: int, data: bool, variant: str) -> tuple[list[float], list[float], float, float]:
    """(rhos_p, rhos_c, h_phi_1, B_h) of the official ``multistep_uni_pc_bh_update`` (``rks`` ends with 1)."""
    hh = -h if data else h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = hh if variant == "bh1" else math.expm1(hh)
    fact = 1
    R, b = [], []
    for i in range(1, order + 1):
        R.append([rk ** (i - 1) for rk in rks])
        b.append(h_phi_k * fact / b_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    R_, b_ = np.array(R, dtype=np.float64), np.array(b, dtype=np.float64)
    if order == 1:
        rhos_p: list[float] = []
    elif order == 2:
        rhos_p = [0.5]
    else:
        rhos_p = [float(v) for v in np.linalg.solve(R_[:-1, :-1], b_[:-1])]
    rhos_c = [0.5] if order == 1 else [float(v) for v in np.linalg.solve(R_, b_)]
    return rhos_p, rhos_c, h_phi_1, b_h


def unipc_update(model, x, ms: list, ss: list[float], t: float, order: int, variant: str, use_corrector: bool):
    """One UniPC step from ss[-1] to t: (x_t, model value at the predicted x_t or None).

    x_t_ = cx x + c0 m_0; the predictor subtracts scale sum_k rho_k (m_k - m_0) / r_k, the corrector
    scale (sum_k rho^c_k (m_k - m_0) / r_k + rho^c_p (m_t - m_0)); each is folded into one linear
    combination of x and the model values (the official arithmetic up to float64 rounding)."""
    s0 = ss[-1]
    lam0 = -math.log(s0)
    h = -math.log(t) - lam0
    rks = [(-math.log(ss[-(i + 1)]) - lam0) / h for i in range(1, order)]
    rhos_p, rhos_c, h_phi_1, b_h = unipc_rhos(rks + [1.0], h, order, model.data, variant)
    scale = b_h if model.data else t * b_h
    cx, c0 = (t / s0, -h_phi_1) if model.data else (1.0, -t * h_phi_1)
    hist = [ms[-(i + 1)] for i in range(1, order)]

    def combo(rhos, extra=()):
        terms = [(cx, x), (c0 + scale * sum(r / rk for r, rk in zip(rhos, rks)) + sum(-c for c, _ in extra), ms[-1])]
        terms += [(-scale * r / rk, m) for r, rk, m in zip(rhos, rks, hist)]
        return lincomb(terms + list(extra))

    x_t = combo(rhos_p)
    if not use_corrector:
        return x_t, None
    m_t = model(x_t, t)
    return combo(rhos_c[:-1], [(-scale * rhos_c[-1], m_t)]), m_t


def unipc(denoise, x, sigmas, *, noise=None, order=3, variant="bh1", pred="data", corrector=True, lower_order_final=True):
    """UniPC multistep (official ``UniPC.sample(method='multistep')``), NFE = steps."""
    sig = host_floats(sigmas)
    for a, b in zip(sig, sig[1:]):
        if not (a > b >= 0):
            raise BenchError(f"UniPC needs a strictly decreasing schedule ending at or above 0; got {a} -> {b}.")
    to_zero = sig[-1] == 0.0
    pos = sig[:-1] if to_zero else sig
    steps = len(pos) - 1
    if steps == 0:
        return denoise(x, pos[0]) if to_zero else x
    model = _Model(denoise, pred)
    ms, ss = [model(x, pos[0])], [pos[0]]
    for step in range(1, steps + 1):
        t = pos[step]
        if step < order:
            step_order = step  # warm-up
            if lower_order_final:  # only reached when steps < order (the official code asserts steps >= order)
                step_order = min(step_order, steps + 1 - step)
        elif lower_order_final:
            step_order = min(order, steps + 1 - step)
        else:
            step_order = order
        use_corr = corrector and step < steps  # no corrector on the last step (official)
        x, m_t = unipc_update(model, x, ms, ss, t, step_order, variant, use_corr)
        if step < steps:
            if m_t is None:
                m_t = model(x, t)
            ms, ss = (ms + [m_t])[-order:], (ss + [t])[-order:]
    if to_zero:
        x = denoise(x, pos[-1])  # official denoise_to_zero_fn
    return x


# NFE on a grid ending above 0 (final_step=none): steps, as on a grid ending at 0
register(SolverSpec(
    name="unipc", fn=unipc, family="unipc", nfe=lambda steps, opts: steps, nfe_rule="steps",
    summary="UniPC (Zhao et al. 2023): UniP-p predictor + UniC corrector (free: reuses the next call); order p+1",
    options={
        "order": Option(int, 3, "predictor order p (UniPC paper, pixel space: 3; official sample() default 2)", minimum=1, maximum=3),
        "variant": Option(str, "bh1", "B(h): bh1 = h (official default), bh2 = e^h - 1", choices=("bh1", "bh2")),
        "pred": Option(str, "data", "model output: data (official data_prediction, default) or noise", choices=("data", "noise")),
        "corrector": Option(bool, True, "use the UniC corrector (never on the last step, as official)"),
        "lower_order_final": Option(bool, True, "official lower_order_final (always applied when on)"),
    },
    default_schedule="logsnr",
))
