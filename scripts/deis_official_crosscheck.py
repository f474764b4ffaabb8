"""Cross-check our DEIS solvers against the official implementation (qsh-zh/deis, ``th_deis``).

Not part of the test suite: it needs JAX and a checkout of the official repository, neither of which
the project ships. Point ``--deis-repo`` at your own checkout of the official repository and put an
environment with JAX on ``PYTHONPATH`` (keep the project's venv untouched), e.g.
``PYTHONPATH=.:<jax-env> python scripts/deis_official_crosscheck.py --deis-repo <checkout>``.

Both run on the exact Gaussian (eps from its exact denoiser), on the official grid (``get_rev_ts``,
"t" phase, order 2, t0 = 1e-3, T = 1; iPNDM order 1) and to the official end point t0 (our solvers
accept a schedule ending above 0). ``--x64`` (default on) runs the official code in float64; without
it JAX computes its coefficients in float32, as the official code does by default.
Measured (N = 8, x64): every variant agrees to 1e-14 relative or better; float32: 1e-7 .. 1e-5.
"""

from __future__ import annotations

import argparse
import sys

import torch

from sampler_bench.models.analytic import Gaussian
from sampler_bench.models.base import F64, BoundDenoiser, alpha_from_sigma
from sampler_bench.solvers import get_solver, parse_opts

RK = {"1euler": "euler", "2heun": "heun", "3kutta": "kutta3", "3ral": "ral3", "3heun": "heun3",
      "3vdh": "vdh3", "3ssprk": "ssprk3", "4rk": "rk4"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deis-repo", required=True, help="checkout of github.com/qsh-zh/deis")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--no-x64", dest="x64", action="store_false")
    args = ap.parse_args()

    import jax

    jax.config.update("jax_enable_x64", args.x64)
    import jax._src.numpy.lax_numpy as lnp

    if not hasattr(lnp, "_promote_dtypes_inexact"):  # private name used by th_deis, gone in new JAX
        lnp._promote_dtypes_inexact = None  # only DiscreteVPSDE needs it; not used here
    sys.path.insert(0, args.deis_repo)
    import th_deis

    torch.set_num_threads(1)
    model = Gaussian(shape=(1, 8, 8), rank=4)
    tm = model.time_map  # linear VP, beta 0.1 .. 20, as score_sde's VPSDE
    sde = th_deis.VPSDE(*th_deis.get_linear_alpha_fns(0.1, 20.0), 1e-3, 1.0)

    def eps_fn(x_vp, t):
        s = tm.sigma(torch.as_tensor(float(t), dtype=F64))
        x = x_vp.to(F64) / alpha_from_sigma(s)
        return (x - model.denoise(x, s)) / s

    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    cases = [("t_ab", {"ab_order": r}, f"deis-tab{r}") for r in range(4)]
    cases += [("rho_ab", {"ab_order": r}, f"deis-rhoab{r}") for r in range(1, 4)]
    cases += [("rho_rk", {"rk_method": k}, f"deis-rhork-{v}") for k, v in RK.items()]
    cases += [("ipndm", {}, "ipndm")]
    worst = 0.0
    for method, kw, ours in cases:
        order = 1.0 if method == "ipndm" else 2.0
        ts = torch.tensor([float(v) for v in th_deis.sde.get_rev_ts(sde, args.steps, order, "t")], dtype=F64)
        sig = tm.sigma(ts)
        x_vp = z * sig[0] * alpha_from_sigma(sig[0])
        off = th_deis.get_sampler(sde, eps_fn, "t", order, args.steps, method=method, **kw)(x_vp.clone())
        off = off.to(F64) / alpha_from_sigma(sig[-1])
        spec = get_solver(ours)
        mine = spec.fn(BoundDenoiser(model), z * sig[0], sig, noise=None, **spec.fixed, **parse_opts(spec, None))
        rel = float((mine - off).norm() / off.norm())
        worst = max(worst, rel)
        print(f"{ours:20s} vs official {method} {kw}: relative difference {rel:.2e}")
    print(f"worst: {worst:.2e}")


if __name__ == "__main__":
    main()
