"""Cross-check our k-diffusion samplers (and the DPM-Solver++ SDE ones) against crowsonkb/k-diffusion.

Not part of the test suite: it needs a checkout of k-diffusion. Point ``--repo`` at it (the
directory holding ``k_diffusion/sampling.py``):

    PYTHONPATH=. python scripts/kdiffusion_official_crosscheck.py --repo <checkout>

``sampling.py`` is loaded on its own (its package imports training dependencies; ``torchsde`` and
``torchdiffeq``, used only by the Brownian tree and ``log_likelihood``, are stubbed when missing).
Both run in float64 on the exact Gaussian (karras grid ending at 0, and the same grid without
the 0), and see the same noise: ours draws from a fixed stream, k-diffusion's ``noise_sampler``
returns the same draw for the same interval. For ``dpmpp_sde`` (two nested intervals per step) the
k-diffusion noise sampler returns z1 for [sigma_s, sigma_i] and the Brownian combination of z1 and z2
for [sigma_{i+1}, sigma_i], which is what our solver does (the law of a Brownian tree).
Measured (k-diffusion HEAD 4601bf0, all 12 cases, 4/10/25 steps, grids ending at 0 and above 0):
relative difference 2.7e-14 or less.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import types
from pathlib import Path

import torch

from sampler_bench.models.analytic import Gaussian
from sampler_bench.models.base import F64, BoundDenoiser
from sampler_bench.schedules import make_schedule
from sampler_bench.solvers import get_solver, parse_opts

# (k-diffusion function, its kwargs) -> (our solver, our options)
CASES = [
    ("sample_euler_ancestral", {}, "euler-ancestral", {}),
    ("sample_euler_ancestral", {"eta": 0.5, "s_noise": 0.9}, "euler-ancestral", {"eta": 0.5, "s_noise": 0.9}),
    ("sample_dpm_2", {}, "dpm-2", {}),
    ("sample_dpm_2", {"s_churn": 10.0}, "dpm-2", {"s_churn": 10.0}),
    ("sample_dpm_2_ancestral", {}, "dpm-2-ancestral", {}),
    ("sample_dpmpp_2s_ancestral", {}, "dpmpp-2s-ancestral", {}),
    ("sample_dpmpp_sde", {}, "dpmpp-sde", {}),
    ("sample_dpmpp_sde", {"eta": 0.0}, "dpmpp-sde", {"eta": 0.0}),
    ("sample_dpmpp_2m", {}, "dpmpp-2m-sde", {"eta": 0.0}),
    ("sample_dpmpp_2m_sde", {}, "dpmpp-2m-sde", {}),
    ("sample_dpmpp_2m_sde", {"solver_type": "heun", "eta": 0.7}, "dpmpp-2m-sde", {"solver_type": "heun", "eta": 0.7}),
    ("sample_dpmpp_3m_sde", {}, "dpmpp-3m-sde", {}),
]


def load_sampling(repo: str):
    for name in ("torchsde", "torchdiffeq"):
        try:
            __import__(name)
        except ImportError:
            stub = types.ModuleType(name)
            stub.BrownianTree = stub.odeint = None
            sys.modules[name] = stub
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = [str(Path(repo) / "k_diffusion")]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]  # the one helper sampling.py's to_d uses
    pkg.utils = utils
    sys.modules["k_diffusion"], sys.modules["k_diffusion.utils"] = pkg, utils
    spec = importlib.util.spec_from_file_location("k_diffusion.sampling", Path(repo) / "k_diffusion" / "sampling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Stream:
    """Our side: the k-th call returns draw k."""

    def __init__(self, shape, n=400):
        self.eps = torch.randn(n, *shape, generator=torch.Generator().manual_seed(5), dtype=F64)
        self.calls = []

    def __call__(self, s_from, s_to):
        self.calls.append((float(s_from), float(s_to)))
        return self.eps[len(self.calls) - 1]


class KStream:
    """k-diffusion's side: the draw our solver made for the same interval (Brownian combination for nested ones)."""

    def __init__(self, ours: Stream):
        self.ours = ours

    def _find(self, s, t):
        for k, (a, b) in enumerate(self.ours.calls):  # k-diffusion recomputes sigmas as exp(-(-log sigma)): compare loosely
            if math.isclose(a, s, rel_tol=1e-12) and math.isclose(b, t, rel_tol=1e-12):
                return k
        return None

    def __call__(self, sigma, sigma_next):
        s, t = float(sigma), float(sigma_next)
        k = self._find(s, t)
        if k is not None:
            return self.ours.eps[k]
        # dpmpp_sde's second request [t, s] after [s_mid, s]: our draws were z1 = (s, s_mid) and z2 = (s_mid, t)
        for k, (a, b) in enumerate(self.ours.calls[:-1]):
            a2, b2 = self.ours.calls[k + 1]
            if math.isclose(a, s, rel_tol=1e-12) and math.isclose(a2, b, rel_tol=1e-12) and math.isclose(b2, t, rel_tol=1e-12):
                z1, z2 = self.ours.eps[k], self.ours.eps[k + 1]
                return (math.sqrt(s - b) * z1 + math.sqrt(b - t) * z2) / math.sqrt(s - t)
        return torch.zeros_like(self.ours.eps[0])  # a draw ours does not make (its coefficient is 0 there)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True, help="checkout of github.com/crowsonkb/k-diffusion")
    ap.add_argument("--steps", type=int, nargs="+", default=[4, 10, 25])
    args = ap.parse_args(argv)
    kd = load_sampling(args.repo)
    torch.set_num_threads(1)
    model = Gaussian(shape=(1, 8, 8), rank=4)

    def kmodel(x, sigma, **_):
        return model.denoise(x, sigma.reshape(-1)[0].to(F64))

    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    worst = 0.0
    for fn, kw, ours, opts in CASES:
        spec = get_solver(ours)
        o = parse_opts(spec, opts)
        for steps in args.steps:
            full = make_schedule("karras", steps, model)
            for sig in (full, full[:-1]):
                stream = Stream(z.shape[1:])
                mine = spec.fn(BoundDenoiser(model), z * sig[0], sig, noise=lambda a, b: stream(a, b).expand(z.shape), **o)
                ksig = KStream(stream)
                extra = {} if fn in ("sample_dpm_2", "sample_dpmpp_2m") else {"noise_sampler": lambda a, b: ksig(a, b).expand(z.shape)}
                if fn == "sample_dpm_2" and kw.get("s_churn"):
                    # k-diffusion's dpm_2 draws torch.randn_like every step; feed it our draws in order
                    draws = iter([stream.eps[k] for k in range(len(stream.calls))])
                    gammas = [min(kw["s_churn"] / (len(sig) - 1), 2**0.5 - 1) for _ in sig[:-1]]
                    seq = [next(draws).expand(z.shape) if g > 0 else torch.zeros_like(z) for g in gammas]
                    it = iter(seq)
                    orig = torch.randn_like
                    torch.randn_like = lambda x, **_: next(it)
                    try:
                        ref = getattr(kd, fn)(kmodel, z * sig[0], sig, disable=True, **kw)
                    finally:
                        torch.randn_like = orig
                else:
                    ref = getattr(kd, fn)(kmodel, z * sig[0], sig, disable=True, **kw, **extra)
                rel = float((mine - ref).norm() / ref.norm())
                worst = max(worst, rel)
                end = "to 0" if float(sig[-1]) == 0 else "above 0"
                print(f"{ours:18s} {str(opts):40s} steps {steps:3d} {end:8s} vs k-diffusion {fn} {kw}: rel. diff {rel:.1e}")
    print(f"worst: {worst:.2e}")


if __name__ == "__main__":
    main()
