"""ER-SDE-Solver: effect of the number of numerical-integration points N (the paper's Fig. 4 study).

The official solvers approximate int_t^s du/phi(u) and int_t^s (u - s)/phi(u) du by an N-point
left Riemann sum (N = 100). This script sweeps N on the analytic Gaussian, where everything is
exact, and reports for each NFE:

- ``c1_relerr``: mean |c1_N / c1_exact - 1| over the steps (the coefficient error itself);
- ``ode_err``: ER-SDE-Solver with phi = ode, max |x - exact ODE solution| (deterministic);
- ``cov_err``: ER-SDE-Solver with the stochastic phi, relative Frobenius error of the output
  covariance against the data covariance, computed exactly (the sampler is affine in the latent and
  the noises on a Gaussian, so running it on their basis gives the output covariance; no sampling).

N = 0 in the table means exact quadrature. Usage:

    python scripts/ersde_nint_study.py [--nfe 10,20,50] [--n-int 2,5,10,20,50,100,200,500,1000,0]
        [--order 3] [--phi ersde5] [--schedule karras] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sampler_bench.fileio import write_text  # noqa: E402
from sampler_bench.models.analytic import Gaussian  # noqa: E402
from sampler_bench.models.base import BoundDenoiser  # noqa: E402
from sampler_bench.schedules import make_schedule  # noqa: E402
from sampler_bench.solvers.ersde import ersde, phi_integrals, resolve_phi  # noqa: E402

F64 = torch.float64


def c1_relerr(sig, phi, n_int):
    f = resolve_phi(phi)
    errs = []
    for s, t in zip(sig[:-1], sig[1:]):
        if t == 0:
            continue
        ex = (t - s) + f(np.float64(t)) * phi_integrals(f, s, t, 0)[0]
        ap = (t - s) + f(np.float64(t)) * phi_integrals(f, s, t, n_int)[0]
        errs.append(abs(ap / ex - 1))
    return float(np.mean(errs))


def ode_err(m, sig, order, n_int, z):
    x = ersde(BoundDenoiser(m), z * sig[0], sig, order=order, phi="ode", n_int=n_int)
    return (x - m.ode_map(z * sig[0], float(sig[0]), 0.0)).abs().max().item()


def cov_err(m, sig, order, phi, n_int):
    d, nb = m.d, len(sig)  # blocks: latent + one noise per step
    B = 1 + d * nb
    basis = torch.zeros(B, nb, d, dtype=F64)
    basis[1:].view(-1, nb * d)[:] = torch.eye(nb * d, dtype=F64)
    index = {float(s): i for i, s in enumerate(sig[:-1])}
    noise = lambda s_from, s_to: basis[:, 1 + index[float(s_from)]].reshape(B, *m.image_shape)  # noqa: E731
    x = ersde(BoundDenoiser(m), basis[:, 0].reshape(B, *m.image_shape) * sig[0], sig, order=order, phi=phi,
              n_int=n_int, noise=noise).reshape(B, d)
    cols = x[1:] - x[0]
    _, cov = m.data_moments()
    return ((cols.T @ cols - cov).norm() / cov.norm()).item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nfe", default="10,20,50")
    ap.add_argument("--n-int", default="2,5,10,20,50,100,200,500,1000,0")
    ap.add_argument("--order", type=int, default=3)
    ap.add_argument("--phi", default="ersde5")
    ap.add_argument("--schedule", default="karras")
    ap.add_argument("--out", default=None, help="also write nint_study.csv and nint_study.md here")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    m = Gaussian(shape=(1, 8, 8), rank=4)
    z = torch.randn(64, *m.image_shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    nfes = [int(v) for v in a.nfe.split(",")]
    nints = [int(v) for v in a.n_int.split(",")]
    rows = []
    t0 = time.perf_counter()
    for nfe in nfes:
        sig = make_schedule(a.schedule, nfe, m)
        for n in nints:
            rows.append((nfe, n, c1_relerr(sig.tolist(), a.phi, n), ode_err(m, sig, a.order, n, z),
                         cov_err(m, sig, a.order, a.phi, n)))
    head = ["nfe", "n_int", f"c1_relerr({a.phi})", "ode_err", f"cov_err({a.phi})"]
    md = [f"ER-SDE-Solver-{a.order}, analytic Gaussian 1x8x8 rank 4, schedule {a.schedule}; n_int 0 = exact quadrature.", "",
          "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    csv = [",".join(head)]
    for r in rows:
        md.append(f"| {r[0]} | {r[1] if r[1] else 'exact'} | {r[2]:.3e} | {r[3]:.4e} | {r[4]:.4e} |")
        csv.append(",".join(map(repr, r)))
    text = "\n".join(md) + "\n"
    print(text)
    print(f"({time.perf_counter() - t0:.1f} s)")
    if a.out:
        out = Path(a.out)
        write_text(out / "nint_study.md", text)
        write_text(out / "nint_study.csv", "\n".join(csv) + "\n")


if __name__ == "__main__":
    main()
