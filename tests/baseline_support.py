"""Helpers shared by the baseline-solver tests (DPM-Solver, UniPC, SA-Solver, k-diffusion, iPNDM-v).

- ``log_grid``: a grid uniform in log sigma that ends ABOVE 0 (so convergence is measured on the
  integration alone, against the Gaussian's exact ODE map), optionally with a first step of size h^2
  (its low-order warm-up error is then below the method's order).
- ``run``: a solver by name on any grid, with counted calls.
- ``gauss``, ``z`` (fixtures): the Gaussian the baseline tests measure on and four fixed latents.
- ``exact_moments``: mean and covariance of a stochastic solver's output, computed exactly: on the
  Gaussian the denoiser is affine, so the output is affine in the latent and in every noise draw;
  running it on a basis (one row per coordinate of the latent and of each draw) gives them all.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sampler_bench.models.analytic import Gaussian
from sampler_bench.models.base import F64, BoundDenoiser
from sampler_bench.schedules import make_schedule
from sampler_bench.solvers import get_solver, parse_opts, run_solver, steps_for_nfe


@pytest.fixture(scope="module")
def gauss():
    return Gaussian(shape=(1, 8, 8), rank=4)


@pytest.fixture(scope="module")
def z():
    return torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)


def log_grid(n: int, a: float = 5.0, b: float = 0.2, refined_start: bool = False) -> torch.Tensor:
    u = np.linspace(math.log(a), math.log(b), n + 1)
    if refined_start:
        h = u[0] - u[1]
        u = np.concatenate([[u[0], u[0] - h * h], u[1:]])
    return torch.tensor(np.exp(u), dtype=F64)


def run(model, name, sig, z, opts=None, noise=None, check_nfe=True):
    """(output, calls) of solver ``name`` from x = sig[0] z."""
    spec = get_solver(name)
    o = parse_opts(spec, opts)
    bound = BoundDenoiser(model)
    if check_nfe and float(sig[-1]) == 0.0:
        out = run_solver(spec, bound, z * sig[0], sig, noise=noise, opts=o)
    else:
        out = spec.fn(bound, z * sig[0], sig, noise=noise, **spec.fixed, **o)
    return out, bound.calls


def ode_error(model, name, n, z, opts=None, refined_start=False) -> float:
    sig = log_grid(n, refined_start=refined_start)
    a, b = float(sig[0]), float(sig[-1])
    out, _ = run(model, name, sig, z, opts)
    return (out - model.ode_map(z * a, a, b)).abs().max().item()


def observed_order(model, name, z, opts=None, n=32, refined_start=False) -> tuple[float, float]:
    e1, e2 = ode_error(model, name, n, z, opts, refined_start), ode_error(model, name, 2 * n, z, opts, refined_start)
    return math.log2(e1 / e2), e2


class BasisNoise:
    """noise() returns the next block of the basis: draw k of every basis row is coordinate block 1 + k."""

    def __init__(self, basis, shape):
        self.basis, self.shape, self.calls = basis, shape, 0

    def __call__(self, *_):
        self.calls += 1
        return self.basis[:, self.calls].reshape(self.basis.shape[0], *self.shape)


def exact_moments(model, name, nfe, opts=None, schedule="karras", max_draws_per_step=2):
    """Exact output mean and covariance of a solver that is affine in (latent, noises)."""
    spec = get_solver(name)
    o = parse_opts(spec, opts)
    sig = make_schedule(schedule, steps_for_nfe(spec, nfe, o), model)
    d = model.d
    blocks = 1 + max_draws_per_step * (len(sig) - 1)
    rows = 1 + d * blocks
    basis = torch.zeros(rows, blocks, d, dtype=F64)
    basis[1:].view(-1, blocks * d)[:, :] = torch.eye(blocks * d, dtype=F64)
    noise = BasisNoise(basis, model.image_shape)
    x = run_solver(spec, BoundDenoiser(model), basis[:, 0].reshape(rows, *model.image_shape) * sig[0], sig, noise=noise, opts=o)
    x = x.reshape(rows, d)
    mean = x[0]
    cols = x[1:] - mean
    return mean, cols.T @ cols, noise.calls


def close(a, b, tol=1e-12) -> bool:
    """max |a - b| within ``tol`` relative to max |b| (at least 1): equality to float64 rounding."""
    return (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())
