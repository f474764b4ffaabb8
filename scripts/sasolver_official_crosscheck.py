"""Cross-check our SA-Solver against its authors' published implementation, diffusers' ``SASolverScheduler``.

Not part of the test suite: it needs ``diffusers`` (which the project does not depend on). Put an
installation on ``PYTHONPATH`` after the project (keep the project's venv untouched), e.g.
``pip install --target <dir> diffusers`` then

    PYTHONPATH=.:<dir> python scripts/sasolver_official_crosscheck.py

The scheduler runs its own grid (1000-step linear-beta DDPM, ``set_timesteps(N)``, ending at
sigma(t = 0) > 0) in float64 with ``prediction_type='epsilon'``; its model output is the exact
Gaussian's noise prediction at that sigma. Ours runs on the scheduler's sigmas (a grid ending above
0). The official tau rule ``1 if 200 <= t <= 800 else 0`` is given to ours as the sigma window
[sigma(200), sigma(800)] of the same schedule (widened by 1e-6 relative: the scheduler's sigmas are
float32, and t = 200, 800 are on the boundary). Both see the same noise: diffusers'
``randn_tensor`` is replaced by the draw of the step, which ours also receives. The scheduler's
sigmas are cast to float64 (diffusers keeps them in float32, which alone gives differences up to 4e-5).
Measured (diffusers 0.42.1; predictor/corrector orders (1,1), (2,2), (3,4), (2,3), (4,4), eta 0 and 1,
lower_order_final on/off, 6/10/20 steps): relative difference 8.7e-14 or less.
"""

from __future__ import annotations

import argparse

import torch

from sampler_bench.models.analytic import Gaussian
from sampler_bench.models.base import F64, BoundDenoiser
from sampler_bench.solvers import get_solver, parse_opts


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, nargs="+", default=[6, 10, 20])
    args = ap.parse_args(argv)
    from diffusers import SASolverScheduler
    from diffusers.schedulers import scheduling_sasolver as mod

    torch.set_num_threads(1)
    model = Gaussian(shape=(1, 8, 8), rank=4)
    spec = get_solver("sa-solver")
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    worst = 0.0
    for p, c in ((1, 1), (2, 2), (3, 4), (2, 3), (4, 4)):
        for eta in (0.0, 1.0):
            for lof in (True, False):
                for n in args.steps:
                    sch = SASolverScheduler(predictor_order=p, corrector_order=c, lower_order_final=lof,
                                            tau_func=(lambda t, eta=eta: eta if 200 <= t <= 800 else 0.0))
                    sch.set_timesteps(n)
                    sch.sigmas = sch.sigmas.to(F64)  # float32 in diffusers; float64 shows the agreement of the algorithms
                    abar = sch.alphas_cumprod.to(F64)
                    sd = lambda t: float(((1 - abar[t]) / abar[t]).sqrt())  # noqa: E731
                    sig = sch.sigmas.to(F64)
                    eps = torch.randn(n, *z.shape, generator=torch.Generator().manual_seed(7), dtype=F64)
                    index = {float(s): i for i, s in enumerate(sig[:-1])}
                    step = {"i": 0}
                    mod.randn_tensor = lambda *a, **k: eps[step["i"]]
                    x = z * sig[0] / (1 + sig[0] ** 2).sqrt()  # VP state
                    for i, t in enumerate(sch.timesteps):
                        s = sig[i]
                        a = 1 / (1 + s**2).sqrt()
                        xs = x / a
                        out = (xs - model.denoise(xs, s)) / s
                        step["i"] = i
                        x = sch.step(out, t, x).prev_sample
                    ref = x * (1 + sig[-1] ** 2).sqrt()
                    o = parse_opts(spec, {"predictor_order": p, "corrector_order": c, "eta": eta, "lower_order_final": lof,
                                          "tau_sigma_min": sd(200) * (1 - 1e-6), "tau_sigma_max": sd(800) * (1 + 1e-6)})
                    mine = spec.fn(BoundDenoiser(model), z * sig[0], sig, noise=lambda a, b: eps[index[float(a)]], **o)
                    rel = float((mine - ref).norm() / ref.norm())
                    worst = max(worst, rel)
                    print(f"sa-solver p={p} c={c} eta={eta} lof={lof!s:5s} steps {n:3d}: rel. diff {rel:.1e}")
    print(f"worst: {worst:.2e}")


if __name__ == "__main__":
    main()
