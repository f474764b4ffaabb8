"""iPNDM-v (zju-pi/diff-sampler ``diff-solvers-main/solvers.py`` ``ipndm_v_sampler``; ComfyUI ``ipndm_v`` is a copy).

The variable-step Adams-Bashforth method on dx/dsigma = d = (x - D) / sigma: step i uses order
min(max_order, i + 1) and the official variable-step weights built from the step sizes
h_n = sigma_{i+1} - sigma_i, h_{n-1}, h_{n-2}, h_{n-3}; on a uniform sigma grid they reduce to the
fixed AB weights of ``ipndm`` (deis.py). One model call per step, NFE = steps.

Two properties of the official weights, kept as they are (tests/test_kdiffusion.py measures them):
on uniform steps the order-4 weights are [57, -65, 43, -11]/24, not AB4's [55, -59, 37, -9]/24 (the
step is third order, so iPNDM-v(4) is not iPNDM there); and they sum to
1 + temp2 q (h_{n-2}/h_{n-3} - h_{n-1}/h_{n-2}), i.e. to 1 only when successive step ratios are equal
(uniform or log-uniform grids), not on a karras grid. Orders <= 3 are the exact variable-step AB.
The Euler first step caps the global order at 2 in any case.

The official code stops at sigma_min (its ``denoise_to_zero`` adds one call). A step to sigma = 0
is taken here as a regular step of its order (extrapolating d down to sigma = 0, as ``ipndm`` in
deis.py does), so NFE = steps on grids ending at 0 and on grids ending above 0. The official
``max_order=1`` crashes (its history buffer is empty); here it is Euler. ``afs`` (analytical first
step) is not offered.
"""

from __future__ import annotations

from sampler_bench.solvers import Option, SolverSpec, host_floats, register


def ipndm_v_coefficients(sig: list[float], i: int, order: int) -> list[float]:
    """Official weights on d_i, d_{i-1}, ... for step i (h_n = sig[i+1] - sig[i] < 0 etc.)."""
    if order == 1:
        return [1.0]
    h_n = sig[i + 1] - sig[i]
    h_n_1 = sig[i] - sig[i - 1]
    if order == 2:
        return [(2 + h_n / h_n_1) / 2, -(h_n / h_n_1) / 2]
    h_n_2 = sig[i - 1] - sig[i - 2]
    temp1 = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
    if order == 3:
        return [(2 + h_n / h_n_1) / 2 + temp1,
                -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp1,
                temp1 * h_n_1 / h_n_2]
    h_n_3 = sig[i - 2] - sig[i - 3]
    q = h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))
    temp2 = ((1 - h_n / (3 * (h_n + h_n_1))) / 2 + (1 - h_n / (2 * (h_n + h_n_1))) * h_n / (6 * (h_n + h_n_1 + h_n_2))) \
        * (h_n * (h_n + h_n_1) * (h_n + h_n_1 + h_n_2)) / (h_n_1 * (h_n_1 + h_n_2) * (h_n_1 + h_n_2 + h_n_3))
    return [(2 + h_n / h_n_1) / 2 + temp1 + temp2,
            -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp1 - (1 + h_n_1 / h_n_2 + q) * temp2,
            temp1 * h_n_1 / h_n_2 + (h_n_1 / h_n_2 + q * (1 + h_n_2 / h_n_3)) * temp2,
            -temp2 * q * h_n_1 / h_n_2]


def ipndm_v(denoise, x, sigmas, *, noise=None, max_order=4):
    """iPNDM-v (diff-sampler): variable-step Adams-Bashforth on d = (x - D)/sigma, warm-up min(i+1, max_order)."""
    from sampler_bench.solvers.dpmsolver import lincomb

    sig = host_floats(sigmas)  # one device-to-host copy
    hist: list = []  # d_i, d_{i-1}, ...
    for i in range(len(sig) - 1):
        d = x - denoise(x, sigmas[i])
        hist.insert(0, d.div_(sig[i]))
        del hist[max_order:]
        w = ipndm_v_coefficients(sig, i, min(max_order, i + 1))
        h = sig[i + 1] - sig[i]
        x = lincomb([(1.0, x)] + [(h * wj, dj) for wj, dj in zip(w, hist)])  # x + h sum_j w_j d_j, fused
    return x


# NFE on a grid ending above 0 (final_step=none): steps, as on a grid ending at 0
register(SolverSpec(
    name="ipndm-v", fn=ipndm_v, family="diff-sampler", nfe=lambda steps, opts: steps, nfe_rule="steps",
    summary="iPNDM-v (diff-sampler): variable-step Adams-Bashforth in sigma, order min(i+1, max_order)",
    options={"max_order": Option(int, 4, "highest order (official default 4)", minimum=1, maximum=4)},
    default_schedule="karras",
))
