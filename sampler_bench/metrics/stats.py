"""Streaming mean/covariance statistics and the Frechet distance, in float64.

The Frechet distance between N(mu1, S1) and N(mu2, S2) (Dowson & Landau 1982; FID, Heusel et al.
2017, eq. 6) is ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``. We never form the matrix
square root: ``tr((S1 S2)^(1/2))`` is the sum of the square roots of the eigenvalues of ``S1 S2``,
which are those of the symmetric PSD matrix ``L^T S2 L`` with ``S1 = L L^T`` (Cholesky; if neither
side is positive definite, ``R S2 R`` with ``R = S1^(1/2)`` from ``eigh``), so the eigenvalues are
real and are clipped at 0 before the square root. When a covariance comes
from fewer rows than dimensions it is kept as a factor ``S = A^T A`` (A: m x d, m <= d) and the
trace is taken from the m x m matrix ``A S2 A^T`` (same non-zero eigenvalues), or, when both sides
are factors, from the singular values of ``A1 A2^T``. A covariance ``F F^T + c I`` with few columns
(:class:`FactorCov`, an analytic model's exact data covariance) against a factor ``A^T A`` uses the
m x m matrix ``(A F)(A F)^T + c A A^T``. All of these are exact, not approximations.

:class:`FeatureStats` accumulates features batch by batch: while it has seen at most ``dim`` rows
it keeps them (memory n x d), after that it folds them into ``count``, ``sum`` and the outer-product
sum (memory d x d), so memory never exceeds d x d float64 whatever the number of images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sampler_bench.errors import BenchError


@dataclass
class LowRankCov:
    """A covariance ``A^T A`` held by its factor ``A`` (m x d, float64)."""

    A: np.ndarray

    @property
    def dim(self) -> int:
        return self.A.shape[1]

    def trace(self) -> float:
        return float(np.einsum("ij,ij->", self.A, self.A))

    def dense(self) -> np.ndarray:
        return self.A.T @ self.A


@dataclass
class FactorCov:
    """A covariance ``F F^T + c I`` held by its factor ``F`` (d x p, float64) and ``c >= 0`` (e.g. an
    analytic mixture's exact data covariance: p = components x (rank + 1) << d)."""

    F: np.ndarray
    c: float

    @property
    def dim(self) -> int:
        return self.F.shape[0]

    def trace(self) -> float:
        return float(np.einsum("ij,ij->", self.F, self.F)) + self.c * self.dim

    def dense(self) -> np.ndarray:
        S = self.F @ self.F.T
        S.flat[:: self.dim + 1] += self.c
        return S


Cov = "np.ndarray | LowRankCov | FactorCov"


def _psd_sqrt(S: np.ndarray) -> np.ndarray:
    w, V = np.linalg.eigh(S)
    return (V * np.sqrt(np.clip(w, 0.0, None))) @ V.T


def trace_sqrt_product(S1, S2, sqrt_S1: np.ndarray | None = None) -> float:
    """``tr((S1 S2)^(1/2))`` for PSD S1, S2 (dense arrays or :class:`LowRankCov`), via eigenvalues.

    ``sqrt_S1`` may pass a precomputed ``S1^(1/2)`` (e.g. of a fixed reference) to skip one eigh.
    """
    if isinstance(S1, FactorCov) and isinstance(S2, LowRankCov):
        S1, S2, sqrt_S1 = S2, S1, None
    if isinstance(S1, LowRankCov) and isinstance(S2, FactorCov):
        # A (F F^T + c I) A^T = (A F)(A F)^T + c A A^T: m x m, never d x d
        G = S1.A @ S2.F
        M = G @ G.T + S2.c * (S1.A @ S1.A.T)
        ev = np.linalg.eigvalsh((M + M.T) / 2)
        return float(np.sqrt(np.clip(ev, 0.0, None)).sum())
    S1 = S1.dense() if isinstance(S1, FactorCov) else S1
    S2 = S2.dense() if isinstance(S2, FactorCov) else S2
    if isinstance(S1, LowRankCov) and isinstance(S2, LowRankCov):
        return float(np.linalg.svd(S1.A @ S2.A.T, compute_uv=False).sum())
    if isinstance(S2, LowRankCov) and not isinstance(S1, LowRankCov):
        S1, S2, sqrt_S1 = S2, S1, None
    if isinstance(S1, LowRankCov):
        M = S1.A @ S2 @ S1.A.T
        ev = np.linalg.eigvalsh((M + M.T) / 2)
        return float(np.sqrt(np.clip(ev, 0.0, None)).sum())
    if sqrt_S1 is None:
        # S1 = L L^T (Cholesky) makes S1 S2 similar to the symmetric L^T S2 L: one eigvalsh, no eigh.
        for A, B in ((S1, S2), (S2, S1)):
            try:
                L = np.linalg.cholesky((A + A.T) / 2)
            except np.linalg.LinAlgError:
                continue  # singular (e.g. fewer rows than dimensions): try the other side, then eigh
            M = L.T @ B @ L
            ev = np.linalg.eigvalsh((M + M.T) / 2)
            return float(np.sqrt(np.clip(ev, 0.0, None)).sum())
    R = _psd_sqrt(S1) if sqrt_S1 is None else sqrt_S1
    M = R @ S2 @ R
    ev = np.linalg.eigvalsh((M + M.T) / 2)
    return float(np.sqrt(np.clip(ev, 0.0, None)).sum())


def _trace(S) -> float:
    return S.trace() if isinstance(S, (LowRankCov, FactorCov)) else float(np.trace(S))


def frechet_distance(mu1, S1, mu2, S2, sqrt_S1: np.ndarray | None = None) -> float:
    """Frechet distance between N(mu1, S1) and N(mu2, S2) in float64 (FID, Heusel et al. 2017, eq. 6)."""
    mu1 = np.asarray(mu1, np.float64)
    mu2 = np.asarray(mu2, np.float64)
    S1 = S1 if isinstance(S1, (LowRankCov, FactorCov)) else np.asarray(S1, np.float64)
    S2 = S2 if isinstance(S2, (LowRankCov, FactorCov)) else np.asarray(S2, np.float64)
    d1 = S1.dim if isinstance(S1, (LowRankCov, FactorCov)) else S1.shape[0]
    d2 = S2.dim if isinstance(S2, (LowRankCov, FactorCov)) else S2.shape[0]
    if not (mu1.shape == mu2.shape == (d1,) and d1 == d2):
        raise BenchError(f"cannot compare statistics of dimension {mu1.shape[0]} (cov {d1}) with {mu2.shape[0]} (cov {d2}); both sides must come from the same feature extractor.")
    diff = mu1 - mu2
    return float(diff @ diff + _trace(S1) + _trace(S2) - 2.0 * trace_sqrt_product(S1, S2, sqrt_S1))


class FeatureStats:
    """Streaming float64 mean/covariance of feature rows (see the module docstring for memory)."""

    def __init__(self, dim: int, keep_features: bool = False):
        self.dim = int(dim)
        self.count = 0
        self._rows: list[np.ndarray] | None = []  # kept while count <= dim
        self._sum = np.zeros(self.dim, np.float64)
        self._outer: np.ndarray | None = None
        self.keep_features = keep_features
        self.features: list[np.ndarray] = []  # float32 rows, only with keep_features (for KID)
        self.starts: list[int] = []  # run position of each update's first row

    def update(self, feats, start: int | None = None) -> None:
        """Add feature rows; ``start`` is the position of their first image in the run (for :meth:`combine`)."""
        self.starts.append(len(self.starts) if start is None else int(start))
        f = np.asarray(feats.detach().cpu().numpy() if hasattr(feats, "detach") else feats)
        f = f.reshape(len(f), -1)
        if f.shape[1] != self.dim:
            raise ValueError(f"feature rows of width {f.shape[1]}, expected {self.dim}")
        if self.keep_features:
            self.features.append(f.astype(np.float32, copy=True))
        f = f.astype(np.float64)
        self.count += len(f)
        self._sum += f.sum(0)
        if self._rows is not None:
            self._rows.append(f)
            if self.count > self.dim:  # fold into the outer-product sum: memory stays d x d
                X = np.concatenate(self._rows)
                self._outer = X.T @ X
                self._rows = None
        else:
            self._outer += f.T @ f

    # -- combining the statistics of several processes (torchrun) ------------------------------

    def state(self) -> dict:
        """Everything needed to combine this accumulator with others' (:meth:`combine`)."""
        return {"dim": self.dim, "count": self.count, "sum": self._sum, "rows": self._rows, "outer": self._outer,
                "keep_features": self.keep_features, "features": self.features, "starts": self.starts}

    @classmethod
    def combine(cls, states: list[dict]) -> "FeatureStats":
        """One accumulator over the rows of all ``states``, as if one process had seen every batch in
        the order of their ``start`` positions. While the rows are kept (at most ``dim`` rows) the
        result is bit-identical to that process's; past that, equal up to float64 summation order.
        Kept feature rows (KID) are put back in start order."""
        order = sorted((st["starts"][j], r, j) for r, st in enumerate(states) for j in range(len(st["starts"])))
        out = cls(states[0]["dim"], keep_features=states[0]["keep_features"])
        if out.keep_features:
            out.features = [states[r]["features"][j] for _, r, j in order]
        out.starts = [start for start, _, _ in order]
        if all(st["rows"] is not None for st in states) and sum(st["count"] for st in states) <= out.dim:
            for _, r, j in order:  # replay the batches in run order: the same sums as one process
                f = states[r]["rows"][j]
                out.count += len(f)
                out._sum += f.sum(0)
                out._rows.append(f)
            return out
        out._rows, out._outer = None, np.zeros((out.dim, out.dim))
        for st in states:
            out.count += st["count"]
            out._sum += st["sum"]
            if st["rows"] is not None:
                X = np.concatenate(st["rows"]) if st["rows"] else np.zeros((0, out.dim))
                out._outer += X.T @ X
            else:
                out._outer += st["outer"]
        return out

    def mean(self) -> np.ndarray:
        if self.count == 0:
            raise BenchError("no images were seen; a source with at least 2 images is needed.")
        return self._sum / self.count

    def cov(self):
        """Unbiased covariance (as ``np.cov``): a :class:`LowRankCov` while count <= dim, else dense."""
        if self.count < 2:
            raise BenchError(f"{self.count} image(s) are too few for a covariance; use at least 2 (thousands for a meaningful FID).")
        mu = self.mean()
        if self._rows is not None:
            X = np.concatenate(self._rows) - mu
            return LowRankCov(X / np.sqrt(self.count - 1))
        S = (self._outer - self.count * np.outer(mu, mu)) / (self.count - 1)
        return (S + S.T) / 2

    def dense_cov(self) -> np.ndarray:
        S = self.cov()
        return S.dense() if isinstance(S, LowRankCov) else S

    def all_features(self) -> np.ndarray:
        if not self.keep_features:
            raise RuntimeError("features were not kept")
        return np.concatenate(self.features) if self.features else np.zeros((0, self.dim), np.float32)


def few_images_warning(n: int, dim: int, what: str = "FID") -> str | None:
    """A one-line warning when ``n`` rows are too few for a stable ``dim``-dimensional covariance."""
    if n < dim:
        return (f"only {n} images for a {dim}-dimensional covariance (rank-deficient): {what} is biased upward and "
                f"noisy; use at least {dim} images, and 10,000-50,000 for numbers comparable with papers.")
    if n < 10000 and dim >= 2048:
        return f"{n} images: {what} is biased upward at this count; papers use 10,000-50,000 images."
    return None
