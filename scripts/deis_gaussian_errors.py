"""Relative error at sigma = 0 of DEIS-family solvers on the exact `gaussian` model (README, DEIS).

    python scripts/deis_gaussian_errors.py [--nfe 10,20,50] [--solvers euler,deis-tab3,...]

Each solver runs on its default schedule; NFE values a solver cannot hit exactly (rhoRK, Heun) are
rounded to the nearest reachable one, shown in parentheses.
"""

from __future__ import annotations

import argparse

import torch

from sampler_bench.models.analytic import Gaussian
from sampler_bench.models.base import F64, BoundDenoiser
from sampler_bench.schedules import make_schedule
from sampler_bench.solvers import get_solver, parse_opts, run_solver

DEFAULT = ("euler,deis-tab1,deis-tab2,deis-tab3,deis-rhoab1,deis-rhoab2,deis-rhoab3,ipndm,"
           "deis-rhork-heun,deis-rhork-kutta3,deis-rhork-rk4")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nfe", default="10,20,50")
    ap.add_argument("--solvers", default=DEFAULT)
    ap.add_argument("--num", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = Gaussian()
    z = torch.randn(args.num, *model.image_shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    nfes = [int(v) for v in args.nfe.split(",")]
    print("| solver | schedule | " + " | ".join(f"NFE {n}" for n in nfes) + " |")
    print("|---" * (len(nfes) + 2) + "|")
    for name in args.solvers.split(","):
        spec = get_solver(name)
        opts = parse_opts(spec, None)
        per_step = spec.nfe(2, opts) - spec.nfe(1, opts)
        sched = spec.schedule_for(model)
        row = []
        for nfe in nfes:
            steps = max(1, round((nfe - spec.nfe(1, opts)) / per_step) + 1)
            sig = make_schedule(sched, steps, model)
            x0 = z * sig[0]
            d = BoundDenoiser(model)
            x = run_solver(spec, d, x0, sig, noise=None, opts=opts)
            ref = model.ode_map(x0, sig[0], 0.0)
            err = float((x - ref).norm() / ref.norm())
            row.append(f"{err:.2e}" + ("" if d.calls == nfe else f" ({d.calls})"))
        print(f"| {name} | {sched} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
