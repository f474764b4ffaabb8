"""DEIS (Zhang & Chen, ICLR 2023, arXiv 2204.13902): tAB-DEIS, rhoAB-DEIS, rhoRK-DEIS and iPNDM.

Everything runs in sigma-space. With ``x = x_vp / sqrt(abar)`` (the paper's ``v``) and
``rho = sigma = sqrt((1 - abar) / abar)`` the probability-flow ODE is

    dx/dsigma = eps(x, sigma),   eps = (x - D(x, sigma)) / sigma        (paper: dv/drho = eps)

which is the exponential integrator's "absorbed" form: the official x_vp-space update
``x_vp' = Psi x_vp + sum_j C_j eps_j`` divided by ``sqrt(abar')`` is ``x' = x + sum_j C_j eps_j`` with
the same eps, so every method below equals the official one step for step (derivation in the README).

- **tAB-DEIS** (order r = 0..3): Lagrange extrapolation of eps in the model's native VP time t over
  the nodes t_i, t_{i-1}, ..., t_{i-r}:

      x_{i+1} = x_i + sum_j C_ij eps_{i-j},   C_ij = int_{t_i}^{t_{i+1}} l_j(t) sigma'(t) dt
                                                   = int_{sigma_i}^{sigma_{i+1}} l_j(t(sigma)) dsigma

  (official ``get_ab_eps_coef``: sqrt(abar_{i+1}/abar_tau) * (-1/2 dlog abar/dtau) / sqrt(1 - abar_tau)
  = sqrt(abar_{i+1}) * dsigma/dtau). r = 0 is DDIM.
- **rhoAB-DEIS** (r = 1..3): the same with the Lagrange basis in rho = sigma.
- **rhoRK-DEIS**: explicit Runge-Kutta on dx/dsigma = eps with the official tableaus (``rk.py``).
- **iPNDM**: DDIM step driven by the fixed-weight Adams-Bashforth combination of eps.

Warm-up (official): step i of an order-r multistep method uses order min(i, r); iPNDM uses its
AB1, AB2, AB3 weights on steps 0, 1, 2.

Coefficient quadrature (``quad``): ``riemann`` is the official rule, a left Riemann sum with
``quad_points`` (10000) points from t_i towards t_{i+1} (rho_i towards rho_{i+1} for rhoAB);
``gauss`` is 64-point Gauss-Legendre in sigma, exact to float64 rounding for these integrands.

Final step to sigma = 0 (the official code stops at t_0 > 0 and never reaches it):
- multistep methods (tAB, rhoAB, iPNDM) take it as a regular step of their own order, extrapolating
  eps down to sigma = 0; no model call at sigma = 0 is needed, NFE = steps. Its tAB coefficient is
  always integrated in sigma (Gauss-Legendre), because in t the integrand sigma'(t) is singular at
  t = 0 (continuous VP: sigma ~ sqrt(t)) and a discrete model's sigma(t) does not reach 0.
- rhoRK takes it as one Euler step, which returns D(x, sigma_{N-1}) (as EDM's Heun does): a stage
  at sigma = 0 cannot be evaluated. NFE = stages * (steps - 1) + 1.
A schedule that ends above 0 (``final_step`` none/denoise, the official protocol) is integrated with
regular steps throughout: rhoRK's rule is then NFE = stages * steps (``nfe_above0``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
from sampler_bench.lazy import torch

from sampler_bench.errors import BenchError
from sampler_bench.solvers import Option, SolverSpec, host_floats, register


def as_f64(v):
    """``models.base.as_f64`` without importing torch when the family registers."""
    return torch.as_tensor(v, dtype=torch.float64)

GAUSS_POINTS = 64


# ---------------------------------------------------------------------------------------------
# Coefficients
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _gauss_legendre(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return torch.from_numpy(nodes).to(torch.float64), torch.from_numpy(weights).to(torch.float64)


def lagrange_basis(tau: torch.Tensor, nodes: Sequence[float]) -> torch.Tensor:
    """l_j(tau) for every node j: shape (len(nodes), len(tau)); l_j(nodes[k]) = [j == k]."""
    rows = []
    for j, tj in enumerate(nodes):
        lj = torch.ones_like(tau)
        for k, tk in enumerate(nodes):
            if k != j:
                lj = lj * (tau - tk) / (tj - tk)
        rows.append(lj)
    return torch.stack(rows)


def _gauss_in_sigma(s_from: float, s_to: float, basis_of_sigma) -> torch.Tensor:
    """int_{s_from}^{s_to} basis(sigma) dsigma for each basis row, Gauss-Legendre in sigma."""
    x, w = _gauss_legendre(GAUSS_POINTS)
    half = 0.5 * (s_to - s_from)
    sig = s_from + half * (x + 1.0)
    return (basis_of_sigma(sig) * w).sum(-1) * half


def _riemann(a_from: float, a_to: float, n: int, integrand) -> torch.Tensor:
    """Official rule (``get_integrator_basis_fn``): left Riemann sum on linspace(a_from, a_to, n, endpoint=False)."""
    d = (a_to - a_from) / n
    tau = a_from + d * torch.arange(n, dtype=torch.float64)
    return integrand(tau).sum(-1) * d


def _step_orders(n_steps: int, order: int) -> list[int]:
    """Official warm-up: step i uses order min(i, order)."""
    return [min(i, order) for i in range(n_steps)]


def tab_coefficients(sigmas, time_map, order: int, quad: str = "riemann", quad_points: int = 10000) -> list[torch.Tensor]:
    """tAB-DEIS C_ij (official ``get_ab_eps_coef`` divided by sqrt(abar_{i+1})), in sigma-space units.

    ``out[i][j]`` multiplies eps_{i-j}; nodes are t_k = t(sigma_k)."""
    sig = host_floats(sigmas)
    ts = [float(v) for v in time_map.t(as_f64(sig[:-1]))]
    out = []
    for i, r in enumerate(_step_orders(len(sig) - 1, order)):
        nodes = [ts[i - j] for j in range(r + 1)]
        if quad == "gauss" or sig[i + 1] == 0.0:
            c = _gauss_in_sigma(sig[i], sig[i + 1], lambda s, nodes=nodes: lagrange_basis(time_map.t(s), nodes))
        else:
            t_next = float(time_map.t(as_f64(sig[i + 1])))
            c = _riemann(ts[i], t_next, quad_points,
                         lambda tau, nodes=nodes: lagrange_basis(tau, nodes) * time_map.dsigma_dt(tau))
        out.append(c)
    return out


def rhoab_coefficients(sigmas, order: int, quad: str = "riemann", quad_points: int = 10000) -> list[torch.Tensor]:
    """rhoAB-DEIS C_ij = int_{rho_i}^{rho_{i+1}} l_j(rho) drho, Lagrange basis in rho = sigma
    (official ``get_sampler_rho_ab``: ``get_ab_eps_coef`` with psi = 1 and integrand 1)."""
    sig = host_floats(sigmas)
    out = []
    for i, r in enumerate(_step_orders(len(sig) - 1, order)):
        nodes = [sig[i - j] for j in range(r + 1)]
        basis = lambda s, nodes=nodes: lagrange_basis(s, nodes)  # noqa: E731
        if quad == "gauss":
            out.append(_gauss_in_sigma(sig[i], sig[i + 1], basis))
        else:
            out.append(_riemann(sig[i], sig[i + 1], quad_points, basis))
    return out


# iPNDM's fixed Adams-Bashforth weights on eps_i, eps_{i-1}, ... (official ``get_sampler_ipndm``)
IPNDM_WEIGHTS = (
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)


def ipndm_coefficients(sigmas) -> list[torch.Tensor]:
    """iPNDM: C_ij = (sigma_{i+1} - sigma_i) * w_j with AB1/AB2/AB3 warm-up, then AB4 weights."""
    sig = host_floats(sigmas)
    return [(sig[i + 1] - sig[i]) * torch.tensor(IPNDM_WEIGHTS[min(i, 3)], dtype=torch.float64) for i in range(len(sig) - 1)]


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------


def _eps(denoise, x, s):
    return (x - denoise(x, s)) / s


def _eps_into(out, denoise, x, s):
    """eps = (x - D(x, s)) / s written into ``out`` (the same float64 operations as :func:`_eps`)."""
    return torch.sub(x, denoise(x, s), out=out).div_(s)


def _combine_into(out, tmp, coefs: Sequence[float], terms: Sequence[torch.Tensor]) -> torch.Tensor:
    """out = sum_j c_j terms_j in two preallocated buffers, rounding exactly as ``sum(c * t)``
    (each product rounded, then added in order; no fused multiply-add, which would round once)."""
    torch.mul(terms[0], coefs[0], out=out)
    for cj, tj in zip(coefs[1:], terms[1:]):
        out.add_(torch.mul(tj, cj, out=tmp))
    return out


def _multistep(denoise, x, sigmas, coefs):
    """x_{i+1} = x_i + sum_j C_ij eps_{i-j} (official ``ab_step`` divided by sqrt(abar_{i+1})).

    In place: the eps history lives in at most ``order + 1`` preallocated buffers (the oldest is
    reused for the newest), and each term is added to x by one fused multiply-add,
    ``x.add_(e_j, alpha=C_ij)``: order + 1 passes over the state per step instead of 2 (order + 1)
    and a temporary. The sum is ``x + C_i0 e_i + C_i1 e_{i-1} + ...`` rounded once per term, where the
    textbook ``x + sum(c * e)`` rounds each product and the inner sum: both are float64-rounding
    accurate, and they differ by a few ulp of x (tests/test_fused_solvers.py bounds it)."""
    x = x.clone()
    hist: list[torch.Tensor] = []
    cap = max(len(c) for c in coefs)
    coefs = [c.tolist() for c in coefs]  # host floats up front: nothing converted per step
    for i, cs in enumerate(coefs):
        buf = hist.pop() if len(hist) == cap else torch.empty_like(x)
        hist.insert(0, _eps_into(buf, denoise, x, sigmas[i]))
        for c, e in zip(cs, hist):
            x.add_(e, alpha=c)
    return x


# The coefficients depend only on the grid (and, for tAB, the model's time map): every batch of a run
# and every cell of a sweep on the same grid shares them, so they are computed once (the official
# 10000-point Riemann rule costs about as much as the rest of a solve). The cache keeps the time-map
# object referenced, so a key can never match another model's map; the values are bit-identical.
@lru_cache(maxsize=64)
def _tab_cached(sig: tuple, time_map, order: int, quad: str, quad_points: int) -> tuple:
    return tuple(tab_coefficients(list(sig), time_map, order, quad, quad_points))


@lru_cache(maxsize=64)
def _rhoab_cached(sig: tuple, order: int, quad: str, quad_points: int) -> tuple:
    return tuple(rhoab_coefficients(list(sig), order, quad, quad_points))


def deis_tab(denoise, x, sigmas, *, noise=None, order=3, quad="riemann", quad_points=10000):
    """tAB-DEIS (Zhang & Chen 2023, arXiv 2204.13902; official ``get_sampler_t_ab``): eps extrapolated in native time t."""
    tm = denoise.time_map
    if tm is None:
        raise BenchError("tAB-DEIS works in the model's native VP time and this model has no time map; use deis-rhoab3 instead.")
    return _multistep(denoise, x, sigmas, _tab_cached(tuple(host_floats(sigmas)), tm, order, quad, quad_points))


def deis_rhoab(denoise, x, sigmas, *, noise=None, order=3, quad="riemann", quad_points=10000):
    """rhoAB-DEIS (Zhang & Chen 2023, arXiv 2204.13902; official ``get_sampler_rho_ab``): Adams-Bashforth in rho = sigma."""
    return _multistep(denoise, x, sigmas, _rhoab_cached(tuple(host_floats(sigmas)), order, quad, quad_points))


def ipndm(denoise, x, sigmas, *, noise=None):
    """iPNDM (Zhang & Chen 2023, arXiv 2204.13902; official ``get_sampler_ipndm``): DDIM step with AB-weighted eps."""
    return _multistep(denoise, x, sigmas, ipndm_coefficients(sigmas))


# Butcher tableaus of the official ``rk.py``: (c, A (strictly lower), b)
RK_TABLEAUS: dict[str, tuple[tuple[float, ...], tuple[tuple[float, ...], ...], tuple[float, ...]]] = {
    "euler": ((0.0,), (), (1.0,)),
    "heun": ((0.0, 1.0), ((1.0,),), (0.5, 0.5)),
    "kutta3": ((0.0, 0.5, 1.0), ((0.5,), (-1.0, 2.0)), (1 / 6, 4 / 6, 1 / 6)),
    "ral3": ((0.0, 0.5, 0.75), ((0.5,), (0.0, 0.75)), (2 / 9, 1 / 3, 4 / 9)),
    "heun3": ((0.0, 1 / 3, 2 / 3), ((1 / 3,), (0.0, 2 / 3)), (0.25, 0.0, 0.75)),
    "vdh3": ((0.0, 8 / 15, 2 / 3), ((8 / 15,), (0.25, 5 / 12)), (0.25, 0.0, 0.75)),
    "ssprk3": ((0.0, 1.0, 0.5), ((1.0,), (0.25, 0.25)), (1 / 6, 1 / 6, 2 / 3)),
    "rk4": ((0.0, 0.5, 0.5, 1.0), ((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 2 / 6, 2 / 6, 1 / 6)),
}
# official rk_method names -> ours
RK_OFFICIAL = {"1euler": "euler", "2heun": "heun", "3kutta": "kutta3", "3ral": "ral3", "3heun": "heun3",
               "3vdh": "vdh3", "3ssprk": "ssprk3", "4rk": "rk4"}
RK_ORDER = {"euler": 1, "heun": 2, "kutta3": 3, "ral3": 3, "heun3": 3, "vdh3": 3, "ssprk3": 3, "rk4": 4}


def deis_rhork(denoise, x, sigmas, *, noise=None, method="kutta3"):
    """rhoRK-DEIS (Zhang & Chen 2023, arXiv 2204.13902; official ``get_sampler_rho_rk``): RK on dx/dsigma = eps.

    In place in preallocated stage buffers; the same operations, in the same order, as the textbook
    ``x + h * sum(a * k)`` (bit-identical, tested)."""
    c, a, b = RK_TABLEAUS[method]
    n = len(sigmas) - 1
    sig = host_floats(sigmas)
    x = x.clone()
    k = [torch.empty_like(x) for _ in c]
    xs, acc, tmp = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
    for i in range(n):
        h = sig[i + 1] - sig[i]
        _eps_into(k[0], denoise, x, sigmas[i])
        if sig[i + 1] == 0:  # final step to sigma = 0: Euler, returns D(x, s)
            x.add_(torch.mul(k[0], h, out=acc))
            continue
        h_dev = sigmas[i + 1] - sigmas[i]
        for st in range(1, len(c)):
            torch.add(x, _combine_into(acc, tmp, a[st - 1], k[:st]).mul_(h), out=xs)
            _eps_into(k[st], denoise, xs, sigmas[i] + c[st] * h_dev)
        x.add_(_combine_into(acc, tmp, b, k).mul_(h))
    return x


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

_QUAD_OPTS = {
    "quad": Option(str, "riemann", "coefficient quadrature: riemann (official: left Riemann sum) or gauss (64-point Gauss-Legendre in sigma, exact to rounding)",
                   choices=("riemann", "gauss")),
    "quad_points": Option(int, 10000, "points of the riemann rule (official num_item = 10000); gauss ignores it", minimum=1),
}
_steps = lambda steps, opts: steps  # noqa: E731

for _r in range(4):
    register(SolverSpec(
        name=f"deis-tab{_r}", fn=deis_tab, family="deis", nfe=_steps, nfe_rule="steps",
        summary=f"tAB-DEIS order {_r}: eps Lagrange-extrapolated in native VP time t" + (" (= DDIM)" if _r == 0 else "")
                + f"; warm-up min(i,{_r})",
        options=_QUAD_OPTS, fixed={"order": _r}, needs_time_map=True, default_schedule="time-poly",
    ))
register(SolverSpec(
    name="deis", fn=deis_tab, family="deis", nfe=_steps, nfe_rule="steps",
    summary="DEIS default of the official README: tAB-DEIS order 3 (= deis-tab3)",
    options=_QUAD_OPTS, fixed={"order": 3}, needs_time_map=True, default_schedule="time-poly",
))
for _r in range(1, 4):
    register(SolverSpec(
        name=f"deis-rhoab{_r}", fn=deis_rhoab, family="deis", nfe=_steps, nfe_rule="steps",
        summary=f"rhoAB-DEIS order {_r}: Adams-Bashforth in rho = sigma, eps Lagrange-extrapolated in sigma; warm-up min(i,{_r})",
        options=_QUAD_OPTS, fixed={"order": _r}, default_schedule="time-poly|karras",
    ))
for _name, _off in ((v, k) for k, v in RK_OFFICIAL.items()):
    _st = len(RK_TABLEAUS[_name][0])
    register(SolverSpec(
        name=f"deis-rhork-{_name}", fn=deis_rhork, family="deis",
        nfe=(lambda steps, opts, _st=_st: _st * (steps - 1) + 1),
        nfe_rule=f"{_st}*(steps - 1) + 1" if _st > 1 else "steps",
        nfe_above0=(lambda steps, opts, _st=_st: _st * steps),  # full RK steps on a grid ending above 0
        nfe_rule_above0=f"{_st}*steps" if _st > 1 else "steps",
        summary=f"rhoRK-DEIS, official '{_off}' tableau ({_st} stage{'s' if _st > 1 else ''}, order {RK_ORDER[_name]}); Euler last step to sigma=0",
        fixed={"method": _name}, default_schedule="time-poly|karras",
    ))
register(SolverSpec(
    name="ipndm", fn=ipndm, family="deis", nfe=_steps, nfe_rule="steps",
    summary="iPNDM (DEIS paper): DDIM step with 4th-order Adams-Bashforth eps, AB1-AB3 warm-up",
    default_schedule="time-uniform|karras",
))
