"""Cross-check our ``ipndm-v`` against zju-pi/diff-sampler's ``ipndm_v_sampler`` (``diff-solvers-main/solvers.py``).

Not part of the test suite: it needs a checkout of diff-sampler. Point ``--repo`` at the directory
holding ``solvers.py`` and ``solver_utils.py`` (``diff-solvers-main``):

    PYTHONPATH=. python scripts/ipndm_v_official_crosscheck.py --repo <checkout>/diff-solvers-main

Both run in float64 on the exact Gaussian, on the same karras grid passed as the official
``t_steps`` (which ends at sigma_min > 0, like ours without the final 0), max_order 2..4.
Measured (diff-sampler HEAD 68d5ce4, 4/8/20 steps): identical (relative difference 0).
"""

from __future__ import annotations

import argparse
import sys

import torch

from sampler_bench.models.analytic import Gaussian
from sampler_bench.models.base import F64, BoundDenoiser
from sampler_bench.schedules import make_schedule
from sampler_bench.solvers import get_solver, parse_opts


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True, help="diff-sampler's diff-solvers-main directory")
    ap.add_argument("--steps", type=int, nargs="+", default=[4, 8, 20])
    args = ap.parse_args(argv)
    sys.path.insert(0, args.repo)
    import solvers as off

    torch.set_num_threads(1)
    model = Gaussian(shape=(1, 8, 8), rank=4)

    def net(x, t, class_labels=None):
        return model.denoise(x, torch.as_tensor(t, dtype=F64))

    spec = get_solver("ipndm-v")
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    worst = 0.0
    for max_order in (2, 3, 4):
        for steps in args.steps:
            sig = make_schedule("karras", steps + 1, model)[:-1]  # steps + 1 positive sigmas, no final 0
            ref = off.ipndm_v_sampler(net, z, t_steps=sig, max_order=max_order)
            mine = spec.fn(BoundDenoiser(model), z * sig[0], sig, noise=None, **parse_opts(spec, {"max_order": max_order}))
            rel = float((mine - ref).norm() / ref.norm())
            worst = max(worst, rel)
            print(f"ipndm-v max_order={max_order} steps {steps:3d}: rel. diff {rel:.1e}")
    print(f"worst: {worst:.2e}")


if __name__ == "__main__":
    main()
