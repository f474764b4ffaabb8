"""Classifier guidance as a denoiser wrapper that every solver uses unchanged (research notes 3.4).

With ``x`` the sigma-space state (``x = x0 + sigma n``) and the VP state ``x_t = alpha x``,
``alpha = 1/sqrt(1 + sigma^2)``, guided-diffusion's score shift
``eps' = eps - sqrt(1 - abar) * s * grad_{x_t} log p(y | x_t, t)`` is, in sigma-space,

    D_g(x, sigma, y) = D(x, sigma, y) + s * sigma^2 * alpha * grad_{x_t} log p(y | x_t, t)
                     = D(x, sigma, y) + s * sigma^2 * grad_x log p(y | alpha x, t(sigma)).

A :class:`Classifier` returns ``grad_x log p(y | x, sigma)`` with respect to the sigma-space state
(for a network that takes ``x_t`` this is ``alpha * grad_{x_t}``, which autograd through
``x_t = alpha x`` gives). Classifier gradient calls are counted apart from denoiser calls (NFE):
``GuidedDenoiser.classifier_calls``. Scale 0 skips the classifier.

Which model gets the labels: a class-conditional network (ADM-G: conditional model + classifier)
gets them; a model that can also run unconditionally (the analytic ``gmm``) is guided as its
marginal, so scale 1 gives exactly the conditional denoiser ``D(x | y)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from sampler_bench.errors import BenchError
from sampler_bench.models.base import F64, Denoiser, as_f64


class Classifier(ABC):
    """A noisy-image classifier for guidance."""

    name: str = "classifier"
    image_shape: tuple[int, int, int] = (3, 32, 32)
    num_classes: int = 0
    device: torch.device = torch.device("cpu")

    @abstractmethod
    def grad_log_prob(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``grad_x log p(y | x, sigma)`` w.r.t. the sigma-space state, float64 of x's shape."""

    def to(self, device) -> "Classifier":
        self.device = torch.device(device)
        return self

    def describe(self) -> dict:
        return {"name": self.name, "class": type(self).__name__, "image_shape": list(self.image_shape),
                "num_classes": self.num_classes}


class ExactMixtureClassifier(Classifier):
    """The analytic Gaussian mixture's exact class posterior (``GaussianMixture.class_log_posterior_grad``)."""

    def __init__(self, mixture, name: str | None = None):
        self.mixture = mixture
        self.name = name or f"{mixture.name} (exact posterior)"
        self.image_shape = tuple(mixture.image_shape)
        self.num_classes = int(mixture.num_classes)
        self.device = mixture.device

    def to(self, device):
        self.mixture.to(device)
        self.device = torch.device(device)
        return self

    def grad_log_prob(self, x, sigma, labels):
        s = as_f64(sigma, x.device).reshape(-1)
        s = s.expand(x.shape[0]) if s.numel() == 1 else s
        return self.mixture.class_log_posterior_grad(x.to(F64), s, labels).to(F64)

    def describe(self):
        d = super().describe()
        d["mixture"] = self.mixture.describe()
        return d


def check_scale(scale) -> float:
    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise BenchError(f"--guidance-scale {scale!r} is not a number; give a scale >= 0 such as 2.0.") from None
    if not s >= 0 or s == float("inf"):
        raise BenchError(f"--guidance-scale {scale} is not valid; give a finite scale >= 0 such as 2.0.")
    return s


class GuidedDenoiser(Denoiser):
    """``D + s sigma^2 grad_x log p(y | x, sigma)``; labels are required (they pick the guided class)."""

    needs_grad = True  # the sampling loop leaves inference mode so the classifier can differentiate

    def __init__(self, base: Denoiser, classifier: Classifier, scale: float, base_gets_labels: bool | None = None):
        self.base, self.classifier, self.scale = base, classifier, check_scale(scale)
        if tuple(classifier.image_shape) != tuple(base.image_shape):
            fmt = lambda s: "x".join(map(str, s))  # noqa: E731
            raise BenchError(f"classifier '{classifier.name}' takes {fmt(classifier.image_shape)} images but model "
                             f"'{base.name}' makes {fmt(base.image_shape)}; use the classifier of the model's resolution.")
        if base.num_classes and classifier.num_classes != base.num_classes:
            raise BenchError(f"classifier '{classifier.name}' has {classifier.num_classes} classes but model '{base.name}' "
                             f"has {base.num_classes}; use a classifier trained on the model's classes.")
        if classifier.num_classes < 1:
            raise BenchError(f"classifier '{classifier.name}' has no classes; it cannot guide.")
        self.base_gets_labels = bool(base.label_required) if base_gets_labels is None else bool(base_gets_labels)
        self.name = base.name
        self.image_shape = base.image_shape
        self.num_classes = classifier.num_classes
        self.label_required = True
        self.sigma_min, self.sigma_max, self.sigma_data = base.sigma_min, base.sigma_max, base.sigma_data
        self.time_map = base.time_map
        self.device = base.device
        self.classifier_calls = 0

    def to(self, device):
        self.base.to(device)
        self.classifier.to(device)
        self.device = torch.device(device)
        return self

    def round_sigma(self, sigma):
        return self.base.round_sigma(sigma)

    def denoise(self, x, sigma, labels=None):
        if labels is None:
            raise BenchError("classifier guidance needs class labels; use --class-label N or random.")
        with torch.no_grad():
            d = self.base.denoise(x, sigma, labels if self.base_gets_labels else None).to(F64)
        if self.scale == 0:
            return d
        g = self.classifier.grad_log_prob(x, sigma, labels)
        self.classifier_calls += 1
        s = as_f64(sigma, x.device).reshape(-1)
        s2 = (s**2).reshape(-1, *([1] * (x.ndim - 1)))
        return d + self.scale * s2 * g

    def describe(self):
        d = self.base.describe()
        d["guidance"] = {"classifier": self.classifier.describe(), "scale": self.scale,
                         "model_gets_labels": self.base_gets_labels,
                         "formula": "D + scale * sigma^2 * grad_x log p(y | alpha x, t(sigma))"}
        return d
