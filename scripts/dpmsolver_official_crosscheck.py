"""Cross-check our DPM-Solver / DPM-Solver++ against the official ``dpm_solver_pytorch.py`` (LuChengTHU/dpm-solver).

Not part of the test suite: it needs a checkout of the official repository, which the project does
not ship. Point ``--repo`` at your own checkout (the directory holding ``dpm_solver_pytorch.py``):

    PYTHONPATH=. python scripts/dpmsolver_official_crosscheck.py --repo <checkout>

Both run in float64 (the official code's default dtype switched to float64) on the exact Gaussian (its linear VP time map is the official
``NoiseScheduleVP('linear')``, beta 0.1 -> 20), on the official time grid from T = 1 to t0 = 1e-3
(``get_time_steps``), with the official model given the Gaussian's exact noise prediction. Each case
is run twice: to t0 (our solver on the official grid, which ends above 0) and with
``denoise_to_zero=True`` (our solver on the same grid with sigma = 0 appended).
Measured (official HEAD 52bc3fb, NFE 6/8/12/15, all 14 cases, both end points): relative difference
1.3e-12 or less.
"""

from __future__ import annotations

import argparse
import sys

import torch

from sampler_bench.models.analytic import Gaussian
from sampler_bench.models.base import F64, BoundDenoiser, alpha_from_sigma
from sampler_bench.solvers import get_solver, parse_opts

# (official method, order, algorithm_type, skip_type, solver_type, lower_order_final) -> (our solver, options)
CASES = [
    (("singlestep_fixed", 1, "dpmsolver", "logSNR", "dpmsolver", True), ("dpm-solver-1", {})),
    (("singlestep_fixed", 2, "dpmsolver", "logSNR", "dpmsolver", True), ("dpm-solver-2", {})),
    (("singlestep_fixed", 3, "dpmsolver", "logSNR", "dpmsolver", True), ("dpm-solver-3", {})),
    (("singlestep_fixed", 3, "dpmsolver", "logSNR", "taylor", True), ("dpm-solver-3", {"solver_type": "taylor"})),
    (("singlestep_fixed", 2, "dpmsolver++", "logSNR", "dpmsolver", True), ("dpmpp-2s", {})),
    (("singlestep", 3, "dpmsolver", "logSNR", "dpmsolver", True), ("dpm-solver", {"outer": "logsnr"})),
    (("singlestep", 3, "dpmsolver", "time_uniform", "dpmsolver", True), ("dpm-solver", {})),
    (("singlestep", 2, "dpmsolver", "time_uniform", "taylor", True), ("dpm-solver", {"order": 2, "solver_type": "taylor"})),
    (("multistep", 2, "dpmsolver", "logSNR", "dpmsolver", True), ("dpm-solver-2m", {})),
    (("multistep", 3, "dpmsolver", "time_uniform", "dpmsolver", True), ("dpm-solver-3m", {})),
    (("multistep", 2, "dpmsolver++", "logSNR", "dpmsolver", True), ("dpmpp-2m", {})),
    (("multistep", 2, "dpmsolver++", "time_uniform", "taylor", False), ("dpmpp-2m", {"solver_type": "taylor", "lower_order_final": False})),
    (("multistep", 3, "dpmsolver++", "logSNR", "dpmsolver", True), ("dpmpp-3m", {})),
    (("multistep", 3, "dpmsolver++", "logSNR", "dpmsolver", False), ("dpmpp-3m", {"lower_order_final": False})),
]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True, help="checkout of github.com/LuChengTHU/dpm-solver")
    ap.add_argument("--nfe", type=int, nargs="+", default=[6, 8, 12, 15])
    args = ap.parse_args(argv)
    sys.path.insert(0, args.repo)
    import dpm_solver_pytorch as off

    torch.set_num_threads(1)
    torch.set_default_dtype(F64)  # the official grids use torch.linspace: float64 instead of float32
    model = Gaussian(shape=(1, 8, 8), rank=4)
    tm = model.time_map
    ns = off.NoiseScheduleVP("linear", continuous_beta_0=0.1, continuous_beta_1=20.0, dtype=F64)

    def noise_fn(x_vp, t):  # official model_fn: noise prediction from VP state and continuous t
        s = tm.sigma(t.to(F64).reshape(-1)[:1])[0]
        x = x_vp.to(F64) / alpha_from_sigma(s)
        return (x - model.denoise(x, s)) / s

    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    worst = 0.0
    for (method, order, algo, skip, stype, lof), (ours, opts) in CASES:
        spec = get_solver(ours)
        o = parse_opts(spec, opts)
        for nfe in args.nfe:
            solver = off.DPM_Solver(noise_fn, ns, algorithm_type=algo)
            # singlestep_fixed: the official K = NFE // order outer steps are our grid; otherwise our grid has
            # NFE steps (dpm-solver with outer=logsnr then re-places the outer points as the official code)
            n = nfe // order if method == "singlestep_fixed" else nfe
            sig = tm.sigma(solver.get_time_steps(skip, 1.0, 1e-3, n, "cpu").to(F64))
            steps = nfe
            for to_zero in (False, True):
                x_vp = z * sig[0] * alpha_from_sigma(sig[0])
                off_x = solver.sample(x_vp.clone(), steps=steps, t_start=1.0, t_end=1e-3, order=order, skip_type=skip,
                                      method=method, lower_order_final=lof, denoise_to_zero=to_zero, solver_type=stype)
                if not to_zero:
                    off_x = off_x / alpha_from_sigma(sig[-1])
                grid = torch.cat([sig, torch.zeros(1, dtype=F64)]) if to_zero else sig
                mine = spec.fn(BoundDenoiser(model), z * sig[0], grid, noise=None, **spec.fixed, **o)
                rel = float((mine - off_x).norm() / off_x.norm())
                worst = max(worst, rel)
                print(f"{ours:14s} {str(opts):52s} NFE {nfe:3d} {'denoise_to_zero' if to_zero else 'to t0':16s} "
                      f"vs official {method}/{order}/{algo}/{skip}/{stype}/lof={lof}: rel. diff {rel:.1e}")
    print(f"worst: {worst:.2e}")


if __name__ == "__main__":
    main()
