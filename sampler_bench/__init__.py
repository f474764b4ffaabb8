"""sampler_bench: benchmark diffusion-model samplers across NFE grids.

Every model is a denoiser in sigma-space, ``D(x, sigma, labels) -> x0`` (see ``models/base.py``);
every solver is a short function over that denoiser and a sigma schedule (see ``solvers/``).
"""

__version__ = "0.1.0"
