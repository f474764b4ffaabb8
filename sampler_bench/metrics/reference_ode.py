"""The exact-ODE reference of an analytic mixture: a tight adaptive solve on the mixture's subspace.

``reference_ode_solve`` integrates the probability-flow ODE ``dx/dt = x - D(x, e^t)`` (``t = log
sigma``; EDM eq. 4 times sigma) with adaptive Dormand-Prince 5(4) on the span of the means and
low-rank directions only (``GaussianMixture.subspace``: m = K (r + 1) coordinates, 180 for the
default 3x32x32 model instead of 3072 pixels); the orthogonal part follows its closed-form isotropic
map. Once every sample's posterior is saturated it finishes with the dominant component's exact map.
"""

from __future__ import annotations

import math

import torch

F64 = torch.float64

# Dormand-Prince 5(4) tableau (Dormand & Prince 1980; Hairer, Norsett & Wanner, Table II.5.2)
_C = [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0]
_A = [[],
      [1 / 5],
      [3 / 40, 9 / 40],
      [44 / 45, -56 / 15, 32 / 9],
      [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
      [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
      [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]]
_E = [71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40]  # b5 - b4


def _mixture_eval(model, x, sigma: float, labels):
    """D(x, sigma) of an analytic mixture and, per sample, its dominant component and 1 - its weight."""
    d, w = model.posterior_denoise(x, torch.tensor(sigma, dtype=F64, device=x.device), labels)
    wmax, kmax = w.max(1)
    return d, kmax, (1.0 - wmax)


def _component_ode_map(model, k: torch.Tensor, x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    """Exact PF-ODE map of Gaussian component k (per sample): y(s_b) = y(s_a) sqrt((lam+s_b^2)/(lam+s_a^2))."""
    b = x.shape[0]
    mu, U = model.mu[k], model.U[k]  # (B,d), (B,d,r)
    lam = model.s[k] + model.iso_var  # (B,r)
    y = x.reshape(b, -1).to(F64) - mu
    proj = torch.einsum("bd,bdr->br", y, U)
    sa, sb = sigma_from**2, sigma_to**2
    f_iso = math.sqrt((model.iso_var + sb) / (model.iso_var + sa))
    f_lr = torch.sqrt((lam + sb) / (lam + sa))
    out = mu + f_iso * y + torch.einsum("br,bdr->bd", (f_lr - f_iso) * proj, U)
    return out.reshape(x.shape)


def _combine(h: float, coefs, ks, base: torch.Tensor | None = None) -> torch.Tensor:
    """``base + h * sum(c * k)`` accumulated in one buffer (``base`` None: from zero)."""
    out = torch.zeros_like(ks[0]) if base is None else base.clone()
    for c, k in zip(coefs, ks):
        if c != 0.0:
            out.add_(k, alpha=h * c)
    return out


def reference_ode_solve(model, x: torch.Tensor, sigma_start: float, labels=None, *, rtol: float = 1e-7,
                        atol: float = 1e-8, switch_tol: float = 1e-13, max_evals: int = 20000) -> tuple[torch.Tensor, int]:
    """Tightly solved PF-ODE of an analytic mixture from ``sigma_start`` to 0 from the same start ``x``.

    Adaptive Dormand-Prince 5(4) in ``t = log sigma`` on the reduced coordinates ``Q^T x`` (exact:
    see ``GaussianMixture.subspace``), with a per-step local error test: the largest over the batch
    of ``rms(err) / (atol + rtol max(rms(x), rms(x_new)))``, RMS over the image's pixels (the error
    lives in the subspace, the orthogonal part is exact), until every sample's posterior is saturated
    (one component holds weight > 1 - ``switch_tol``); from there the ODE is that component's linear
    ODE to within ``switch_tol`` and is finished with its exact closed-form map to sigma = 0.
    Measured on the Gaussian (exact to 1e-16, the map alone) and on the default mixture against a
    1000x tighter tolerance: RMS error about 1e-7 at the default rtol 1e-7 (the full-pixel solve at
    rtol 1e-6 that this replaces: 2e-7, at 15x the time), about 200 evaluations per batch of 64 in
    0.2 s. Returns (x0, denoiser evaluations).
    """
    shape, b = x.shape, x.shape[0]
    xf = x.reshape(b, -1).to(F64)
    d_pix = xf.shape[1]
    q, red = model.subspace()
    xs = xf if q is None else xf @ q  # (B, m)
    perp = None if q is None else xf - xs @ q.T  # exact part: x_perp(sigma) = x_perp(s0) g(sigma)
    perp_sq = torch.zeros(b, dtype=F64, device=xf.device) if perp is None else perp.square().sum(1)
    c, s0 = model.iso_var, sigma_start**2

    def gain(sig: float) -> float:
        return math.sqrt((c + sig**2) / (c + s0))

    def rms_x(v: torch.Tensor, tt: float) -> torch.Tensor:
        return ((v.square().sum(1) + perp_sq * gain(math.exp(tt)) ** 2) / d_pix).sqrt()

    def f(v, tt):
        den, k, other = _mixture_eval(red, v, math.exp(tt), labels)
        return v - den, k, other

    t = math.log(sigma_start)
    h = -0.1
    k1, kdom, other = f(xs, t)
    evals = 1
    t_floor = math.log(1e-6)
    while float(other.max()) > switch_tol:
        if t <= t_floor + 1e-12:
            break  # not saturated even at sigma=1e-6 (components overlap): finish with the map anyway
        h = max(h, t_floor - t)
        ks = [k1]
        for i in range(1, 7):
            kk, kd, ot = f(_combine(h, _A[i], ks, xs), t + _C[i] * h)
            ks.append(kk)
        evals += 6
        x_new = _combine(h, _A[6], ks, xs)  # = the stage-7 point (FSAL)
        err = _combine(h, _E, ks)
        scale = atol + rtol * torch.maximum(rms_x(xs, t), rms_x(x_new, t + h))
        ratio = float(((err.square().sum(1) / d_pix).sqrt() / scale).max())
        if ratio <= 1.0:
            t, xs, k1, kdom, other = t + h, x_new, ks[6], kd, ot
        h *= min(5.0, max(0.2, 0.9 * (ratio if ratio > 0 else 1e-10) ** -0.2))
        if evals > max_evals:
            raise RuntimeError(f"reference ODE solve did not converge in {max_evals} evaluations")
    x0 = _component_ode_map(red, kdom, xs, math.exp(t), 0.0)
    if q is not None:
        x0 = torch.addmm(perp, x0, q.T, beta=gain(0.0))
    return x0.reshape(shape), evals
