"""Cross-check our UniPC against the official ``uni_pc.py`` (wl-zhao/UniPC).

Not part of the test suite: it needs a checkout of the official repository. Point ``--repo`` at the
directory holding ``uni_pc.py``:

    PYTHONPATH=. python scripts/unipc_official_crosscheck.py --repo <checkout>

Both run in float64 (the official code's default dtype switched to float64) on the exact Gaussian
(linear VP, beta 0.1 -> 20 = the official ``NoiseScheduleVP('linear')``) from T = 1 to t0 = 1e-3
on the official grid, the official model given the Gaussian's exact noise prediction; each case to
t0 (our solver on the official grid) and with ``denoise_to_zero=True`` (our grid + sigma = 0). The
official code prints a line per step; it is silenced.
Measured (official HEAD cf9de85; orders 1-3, bh1/bh2, data/noise prediction, lower_order_final
on/off, NFE 5/8/12, logSNR and time_uniform grids, both end points): 5.9e-12 or less.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys

import torch

from sampler_bench.models.analytic import Gaussian
from sampler_bench.models.base import F64, BoundDenoiser, alpha_from_sigma
from sampler_bench.solvers import get_solver, parse_opts


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True, help="checkout of github.com/wl-zhao/UniPC")
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 8, 12])
    args = ap.parse_args(argv)
    sys.path.insert(0, args.repo)
    import uni_pc as off

    torch.set_num_threads(1)
    torch.set_default_dtype(F64)
    model = Gaussian(shape=(1, 8, 8), rank=4)
    tm = model.time_map
    ns = off.NoiseScheduleVP("linear", continuous_beta_0=0.1, continuous_beta_1=20.0)

    def noise_fn(x_vp, t):
        s = tm.sigma(t.to(F64).reshape(-1)[:1])[0]
        x = x_vp.to(F64) / alpha_from_sigma(s)
        return (x - model.denoise(x, s)) / s

    spec = get_solver("unipc")
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    worst = 0.0
    for order in (1, 2, 3):
        for variant in ("bh1", "bh2"):
            for pred in ("data", "noise"):
                for lof in (True, False):
                    o = parse_opts(spec, {"order": order, "variant": variant, "pred": pred, "lower_order_final": lof})
                    for nfe in args.nfe:
                        for skip in ("logSNR", "time_uniform"):
                            algo = "data_prediction" if pred == "data" else "noise_prediction"
                            uni = off.UniPC(noise_fn, ns, algorithm_type=algo, variant=variant)
                            sig = tm.sigma(uni.get_time_steps(skip, 1.0, 1e-3, nfe, "cpu").to(F64))
                            for to_zero in (False, True):
                                x_vp = z * sig[0] * alpha_from_sigma(sig[0])
                                with contextlib.redirect_stdout(io.StringIO()):
                                    ref = uni.sample(x_vp.clone(), steps=nfe, t_start=1.0, t_end=1e-3, order=order, skip_type=skip,
                                                     method="multistep", lower_order_final=lof, denoise_to_zero=to_zero)
                                if not to_zero:
                                    ref = ref / alpha_from_sigma(sig[-1])
                                grid = torch.cat([sig, torch.zeros(1, dtype=F64)]) if to_zero else sig
                                mine = spec.fn(BoundDenoiser(model), z * sig[0], grid, noise=None, **o)
                                rel = float((mine - ref).norm() / ref.norm())
                                worst = max(worst, rel)
                                print(f"unipc order={order} {variant} {pred:5s} lof={lof!s:5s} NFE {nfe:3d} {skip:12s} "
                                      f"{'denoise_to_zero' if to_zero else 'to t0':15s}: rel. diff {rel:.1e}")
    print(f"worst: {worst:.2e}")


if __name__ == "__main__":
    main()
