"""The spread of every feature metric: disjoint seed subsets, a bootstrap over images, binomial errors.

- **Seed subsets** (default): the N images of a run, in seed order, are cut into K contiguous blocks
  of (nearly) equal size, i.e. K disjoint seed sets, as EDM's "three 50k FIDs over three seed sets".
  A Frechet distance is computed on each block; ``NAME`` is their mean (``--fid-protocol mean``, our
  default) or their minimum (``min``, the protocol the EDM paper reports), ``NAME_se`` is the
  standard error of the mean, ``std(ddof=1) / sqrt(K)``. ``NAME_pooled`` is the distance of all N
  images at once (what torch-fidelity and most papers compute from one set). Each block has N/K
  images, so the block distances carry the ~1/n upward bias of FID at N/K, not N: to compare with a
  paper's 50k FID, sample K x 50k images. Under the usual 1/N variance scaling ``NAME_se`` also
  estimates the standard error of ``NAME_pooled``.
- **Bootstrap** (``--fid-bootstrap B``): B resamples of the N feature rows with replacement;
  ``NAME_boot_se`` is the std of the B distances and ``NAME_boot_lo``/``_hi`` their 2.5/97.5
  percentiles. Resampling duplicates rows (less diversity), so the bootstrap distances sit above
  ``NAME_pooled``: use the interval's width, not its location. It needs every feature row.
- **Precision / recall** are fractions of n binary decisions (Kynkaenniemi et al. 2019);
  ``precision_se`` is the binomial standard error of the fraction (Agresti-Coull, so not 0 at p = 0
  or 1) given the estimated k-NN manifolds (it does not include the manifolds' own variance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sampler_bench.errors import BenchError
from sampler_bench.metrics.stats import FeatureStats, frechet_distance

PROTOCOLS = {"mean": "mean of the K subset distances (default)", "min": "minimum of the K subset distances (EDM's reported protocol)"}
PROTOCOL_ALIASES = {"edm": "min"}  # EDM (Karras et al. 2022): "the minimum of three FIDs over three seed sets"
DEFAULT_SUBSETS = 3
BOOTSTRAP_SEED = 20260101


@dataclass(frozen=True)
class SpreadOptions:
    subsets: int = DEFAULT_SUBSETS
    protocol: str = "mean"
    bootstrap: int = 0

    @classmethod
    def from_dict(cls, d: dict | None) -> "SpreadOptions":
        d = dict(d or {})
        unknown = set(d) - {"subsets", "protocol", "bootstrap"}
        if unknown:
            raise BenchError(f"unknown metric option(s) {', '.join(sorted(unknown))}; use subsets, protocol, bootstrap.")
        protocol = str(d.get("protocol", "mean")).lower()
        protocol = PROTOCOL_ALIASES.get(protocol, protocol)
        opts = cls(int(d.get("subsets", DEFAULT_SUBSETS)), protocol, int(d.get("bootstrap", 0)))
        opts.check()
        return opts

    def check(self) -> None:
        if self.subsets < 1:
            raise BenchError(f"--fid-subsets must be a positive integer; got {self.subsets}.")
        if self.protocol not in PROTOCOLS:
            raise BenchError(f"--fid-protocol '{self.protocol}' is unknown; use {' or '.join(PROTOCOLS)} (edm = min).")
        if self.bootstrap < 0:
            raise BenchError(f"--fid-bootstrap must be 0 (off) or a number of resamples; got {self.bootstrap}.")

    def as_dict(self) -> dict:
        """Only the non-default settings (what a run's identity records)."""
        out = {}
        if self.subsets != DEFAULT_SUBSETS:
            out["subsets"] = self.subsets
        if self.protocol != "mean":
            out["protocol"] = self.protocol
        if self.bootstrap:
            out["bootstrap"] = self.bootstrap
        return out


def effective_subsets(k: int, total: int) -> int:
    """K, reduced so that every block has at least 2 images (1: no subsets)."""
    return max(1, min(int(k), int(total) // 2))


class SubsetStats:
    """Streaming statistics of all rows and of K contiguous blocks of a known total (seed order)."""

    def __init__(self, dim: int, total: int, k: int):
        self.total = int(total)
        self.k = effective_subsets(k, total)
        self.dim = int(dim)
        self.parts = [FeatureStats(dim) for _ in range(self.k)] if self.k > 1 else []
        self._pooled: FeatureStats | None = None if self.parts else FeatureStats(dim)
        self.seen = 0

    @property
    def pooled(self) -> FeatureStats:
        """All rows: with subsets, combined from the blocks on demand (each row is summed once, not twice)."""
        if self._pooled is None:
            self._pooled = FeatureStats.combine([p.state() for p in self.parts])
        return self._pooled

    def update(self, f: np.ndarray, start: int | None = None) -> None:
        """Add rows; ``start`` is the run position (seed order) of the first one (default: after the last)."""
        f = np.asarray(f)
        start = self.seen if start is None else int(start)
        if self.parts:
            self._pooled = None
            idx = np.arange(start, start + len(f))
            block = np.minimum(idx * self.k // max(self.total, 1), self.k - 1)
            for j in np.unique(block):
                sel = block == j
                self.parts[j].update(f[sel], int(idx[sel][0]))  # each FeatureStats records its run positions
        else:
            self._pooled.update(f, start)
        self.seen = start + len(f)

    def state(self) -> dict:
        if self.parts:
            return {"pooled": None, "parts": [p.state() for p in self.parts]}
        return {"pooled": self._pooled.state(), "parts": []}

    def merge(self, states: list[dict]) -> None:
        """Combine the statistics of several processes that each saw some of the run's images (torchrun)."""
        if self.parts:
            self.parts = [FeatureStats.combine([s["parts"][j] for s in states]) for j in range(len(self.parts))]
            self._pooled = None
        else:
            self._pooled = FeatureStats.combine([s["pooled"] for s in states])


def _fd(stats: FeatureStats, mu, sigma) -> float:
    return frechet_distance(stats.mean(), stats.cov(), mu, sigma)


def bootstrap_fd(features: np.ndarray, mu, sigma, b: int, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """B Frechet distances of resamples (with replacement) of the rows of ``features``."""
    X = np.asarray(features, np.float64)
    n = len(X)
    rng = np.random.default_rng(seed)
    out = np.empty(b)
    for i in range(b):
        c = rng.multinomial(n, np.full(n, 1.0 / n)).astype(np.float64)
        m = c @ X / n
        S = ((X * c[:, None]).T @ X - n * np.outer(m, m)) / (n - 1)
        out[i] = frechet_distance(m, (S + S.T) / 2, mu, sigma)
    return out


def fd_with_spread(prefix: str, st: SubsetStats, mu, sigma, opts: SpreadOptions, features: np.ndarray | None = None) -> dict[str, Any]:
    """``prefix`` (per the protocol), ``prefix_se``, ``prefix_pooled``, per-subset values, bootstrap."""
    out: dict[str, Any] = {}
    pooled = _fd(st.pooled, mu, sigma)
    if st.parts:
        vals = np.array([_fd(p, mu, sigma) for p in st.parts])
        mean, se = float(vals.mean()), float(vals.std(ddof=1) / np.sqrt(len(vals)))
        out[prefix] = mean if opts.protocol == "mean" else float(vals.min())
        out.update({f"{prefix}_se": se, f"{prefix}_pooled": pooled, f"{prefix}_mean": mean, f"{prefix}_min": float(vals.min()),
                    f"{prefix}_subset_values": [float(v) for v in vals], f"{prefix}_subset_sizes": [p.count for p in st.parts]})
    else:
        out[prefix] = pooled
        out[f"{prefix}_pooled"] = pooled
    out[f"{prefix}_k"] = max(1, len(st.parts))
    out[f"{prefix}_protocol"] = opts.protocol if st.parts else "pooled"
    if opts.bootstrap and features is not None:
        boot = bootstrap_fd(features, mu, sigma, opts.bootstrap)
        out.update({f"{prefix}_boot_se": float(boot.std(ddof=1)) if len(boot) > 1 else 0.0,
                    f"{prefix}_boot_lo": float(np.percentile(boot, 2.5)), f"{prefix}_boot_hi": float(np.percentile(boot, 97.5)),
                    f"{prefix}_bootstrap": int(opts.bootstrap)})
    return out


def binomial_se(p: float, n: int) -> float:
    """Standard error of a fraction ``p`` of ``n`` (Agresti-Coull: ``q = (p n + 2) / (n + 4)``,
    ``sqrt(q (1 - q) / (n + 4))``), which, unlike ``sqrt(p (1 - p) / n)``, is not 0 at p = 0 or 1."""
    if n <= 0:
        return float("nan")
    q = (p * n + 2.0) / (n + 4.0)
    return float(np.sqrt(q * (1.0 - q) / (n + 4.0)))


def f_score_se(p: float, r: float, se_p: float, se_r: float) -> float:
    """Delta-method standard error of ``2 p r / (p + r)`` (p, r treated as independent)."""
    s = p + r
    if s <= 0:
        return 0.0
    dp, dr = 2 * r * r / (s * s), 2 * p * p / (s * s)
    return float(np.hypot(dp * se_p, dr * se_r))
