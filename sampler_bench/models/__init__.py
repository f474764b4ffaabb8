"""Everything that turns a checkpoint or a formula into a sigma-space denoiser."""

from sampler_bench.models.base import BoundDenoiser, Denoiser  # noqa: F401
