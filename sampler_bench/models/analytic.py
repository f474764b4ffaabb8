"""Analytic models with exact scores: a Gaussian and a class-conditional Gaussian mixture.

They are the embedded default model (no checkpoint, no network) and the ground truth of the test
suite: the denoiser is exact, so solver error is measured with zero model error.

Each component is ``N(mu, Sigma)`` with ``Sigma = U diag(s) U^T + c I`` (U: d x r orthonormal,
low-rank + isotropic), in float64, image-shaped (default 3x32x32). With ``lam`` the eigenvalues of
Sigma and ``y = x - mu``:

- denoiser (Tweedie / Wiener filter): ``D(x, sigma) = mu + Sigma (Sigma + sigma^2 I)^-1 y``
- probability-flow ODE ``dx/dsigma = (x - D) / sigma`` gives per eigen-direction
  ``dy/dsigma = y sigma / (lam + sigma^2)``, so the **exact ODE map** is
  ``y(sigma_b) = y(sigma_a) * sqrt((lam + sigma_b^2) / (lam + sigma_a^2))``.
- mixture: ``D = sum_k w_k(x, sigma) D_k(x, sigma)`` with ``w_k`` the posterior of component k
  under ``N(mu_k, Sigma_k + sigma^2 I)``; the class posterior ``p(y | x_sigma)`` sums the w_k of
  class y, and ``grad_x log p(y | x_sigma) = (D(x | y) - D(x)) / sigma^2`` (Tweedie, exact).

Component means are deterministic pictures generated from a seed (a coloured background gradient
with one shape: disc, square, ring, stripes, diamond, cross, ...), so sample grids look like
images. The low-rank directions are smooth picture-shaped variations (brightness of the shape,
colour shifts, gradient tilts), so samples vary visibly around their mean.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from sampler_bench.errors import BenchError
from sampler_bench.models.base import F64, Denoiser, LinearVP, as_f64

SHAPES = ("disc", "square", "ring", "stripes", "diamond", "cross", "triangle", "checker", "blob2", "bar")


def _shape_mask(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    yy, xx = (yy + 0.5) / h * 2 - 1, (xx + 0.5) / w * 2 - 1
    cy, cx = rng.uniform(-0.25, 0.25, 2)
    r = rng.uniform(0.35, 0.6)
    dy, dx = yy - cy, xx - cx
    soft = lambda v: 1 / (1 + np.exp(-v * 12))  # noqa: E731  soft edges keep the pictures smooth
    if kind == "disc":
        m = soft(r - np.hypot(dx, dy))
    elif kind == "square":
        m = soft(r - np.maximum(abs(dx), abs(dy)))
    elif kind == "ring":
        m = soft(0.15 - abs(np.hypot(dx, dy) - r))
    elif kind == "stripes":
        m = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * math.cos(r * 3) + yy * math.sin(r * 3)) * 2.5)
    elif kind == "diamond":
        m = soft(r - (abs(dx) + abs(dy)))
    elif kind == "cross":
        m = np.maximum(soft(0.18 - abs(dx)), soft(0.18 - abs(dy))) * soft(0.8 - np.maximum(abs(dx), abs(dy)))
    elif kind == "triangle":
        m = soft(np.minimum(np.minimum(dy + r / 2, r - dy - 2 * dx), r - dy + 2 * dx) * 0.8)
    elif kind == "checker":
        m = 0.5 + 0.5 * np.sign(np.sin(np.pi * 2 * (xx + 1)) * np.sin(np.pi * 2 * (yy + 1)))
    elif kind == "blob2":
        m = np.maximum(soft(r * 0.6 - np.hypot(dx - 0.3, dy)), soft(r * 0.6 - np.hypot(dx + 0.3, dy + 0.1)))
    else:  # bar
        m = soft(0.2 - abs(dy)) * soft(0.85 - abs(dx))
    return m


def _components(n: int, shape, rank: int, seed: int, scale: float):
    """Deterministic means (n, d) and orthonormal low-rank bases (n, d, rank) + variances (n, rank)."""
    c, h, w = shape
    rng = np.random.default_rng(seed)
    mus, bases, variances = [], [], []
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    yy, xx = (yy + 0.5) / h * 2 - 1, (xx + 0.5) / w * 2 - 1
    for k in range(n):
        kind = SHAPES[k % len(SHAPES)]
        mask = _shape_mask(kind, h, w, rng)
        bg0, bg1, fg = rng.uniform(-0.8, 0.8, (3, c))
        ang = rng.uniform(0, 2 * np.pi)
        grad = 0.5 + 0.5 * (xx * math.cos(ang) + yy * math.sin(ang)) / math.sqrt(2)
        bg = bg0[:, None, None] * (1 - grad) + bg1[:, None, None] * grad
        mu = bg * (1 - mask) + fg[:, None, None] * mask
        mus.append(np.clip(mu, -0.95, 0.95).reshape(-1))
        # picture-shaped variation directions, then orthonormalised
        dirs = [np.broadcast_to(mask, (c, h, w)) * e[:, None, None] for e in np.eye(c)]  # shape colour
        dirs += [np.broadcast_to(1 - mask, (c, h, w)) * e[:, None, None] for e in np.eye(c)]  # background colour
        dirs += [np.broadcast_to(xx * (1 - mask), (c, h, w)), np.broadcast_to(yy * (1 - mask), (c, h, w))]
        while len(dirs) < rank:
            fy, fx = rng.integers(1, 4, 2)
            ph = rng.uniform(0, 2 * np.pi, 2)
            pat = np.cos(np.pi * fy * yy + ph[0]) * np.cos(np.pi * fx * xx + ph[1])
            dirs.append(pat[None] * rng.normal(size=(c, 1, 1)))
        basis, _ = np.linalg.qr(np.stack([np.asarray(v).reshape(-1) for v in dirs[:rank]], 1))
        bases.append(basis)
        # eigenvalues: per-pixel std of ~scale along the strongest direction, decaying
        variances.append((scale**2) * (h * w) * np.geomspace(1.0, 0.05, rank))
    return np.stack(mus), np.stack(bases), np.stack(variances)


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _check_fits(shape, n_comp: int, rank: int) -> None:
    """Refuse a model whose float64 parameters (means, bases, working arrays) cannot fit in memory."""
    d = math.prod(shape)
    need = 8 * (n_comp * d * (rank + 2) + d * (2 * rank + 16))
    have = _memory_bytes()
    if have is not None and need > have:
        raise BenchError(f"analytic model shape={'x'.join(map(str, shape))} with {n_comp} components and rank {rank} "
                         f"needs about {_human(need)} of memory, more than this machine has ({_human(have)}); use a smaller shape, e.g. 3x32x32.")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"


ROW_MULTIPLE = 16  # CPU: the denoiser's products have a multiple of this many rows (see _rows_mm)
ROW_BLOCK = 32  # other devices: products of exactly this many rows


def _rows_mm(a: torch.Tensor, b: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
    """``add + a @ b`` for a batch ``a`` (B x n) such that row i does not depend on the other rows.

    BLAS picks its kernel, and with it the summation order, by the matrix shapes: on this CPU a
    row of ``a @ b`` rounds differently when B is not a multiple of 4 (the micro-kernel's rows).
    On the CPU the rows are zero-padded to a multiple of ``ROW_MULTIPLE`` (one product; the
    x86 BLAS kernels' row blocks are 4, 8 or 16); on other devices (cuBLAS chooses kernels per
    shape) the product runs in blocks of exactly ``ROW_BLOCK`` rows. So every sample's denoiser
    output is bit-identical whatever the batch size: sampling.py's run identity leaves the batch
    size out for analytic models, and tests/test_analytic_factors.py checks it on the machine
    that runs the tests."""
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad or (add is not None and add.requires_grad)):
        return a @ b if add is None else add + a @ b  # autograd (tests): out= is not differentiable
    n = a.shape[0]
    block = None if a.device.type == "cpu" else ROW_BLOCK
    pad = (-n) % (block or ROW_MULTIPLE)
    if pad:
        a = torch.cat([a, a.new_zeros(pad, a.shape[1])])
        add = None if add is None else torch.cat([add, add.new_zeros(pad, add.shape[1])])
    if block is None:
        out = a @ b if add is None else torch.addmm(add, a, b)
        return out[:n] if pad else out
    out = a.new_empty(n + pad, b.shape[1])
    for i in range(0, n + pad, block):
        j = i + block
        if add is None:
            torch.mm(a[i:j], b, out=out[i:j])
        else:
            torch.addmm(add[i:j], a[i:j], b, out=out[i:j])
    return out[:n]


_BROADCAST_ELEMENTS = 1 << 21  # up to this many B x K x d elements, |x - mu_k|^2 is one broadcast pass


class GaussianMixture(Denoiser):
    """Class-conditional mixture of low-rank + isotropic Gaussians with exact denoiser (float64).

    ``num_classes`` classes with ``per_class`` equal-weight components each. ``num_classes = 0``
    makes an unconditional mixture of ``per_class`` components.
    """

    def __init__(self, name="gmm", num_classes=10, per_class=2, shape=(3, 32, 32), rank=8,
                 iso_var=4e-4, scale=0.12, seed=0, sigma_min=0.002, sigma_max=80.0):
        if len(shape) != 3 or min(shape) < 1:
            raise BenchError(f"analytic model shape {tuple(shape)} is invalid; use C x H x W such as shape=3x32x32.")
        for key, val, ok, want in (("classes", num_classes, num_classes >= 0, "an integer >= 0 (0: unconditional)"),
                                   ("per_class", per_class, per_class >= 1, "an integer >= 1"),
                                   ("rank", rank, rank >= 1, "an integer >= 1"),
                                   ("iso_var", iso_var, iso_var > 0, "a number > 0"),
                                   ("scale", scale, scale >= 0, "a number >= 0"),
                                   ("sigma_min", sigma_min, 0 < sigma_min < sigma_max, "0 < sigma_min < sigma_max")):
            if not ok:
                raise BenchError(f"analytic model parameter {key}={val} is invalid; use {want}.")
        self.name = name
        self.image_shape = tuple(int(v) for v in shape)
        self.num_classes = int(num_classes)
        self.per_class = int(per_class)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.time_map = LinearVP()
        self.d = int(np.prod(self.image_shape))
        self.rank = min(int(rank), self.d)
        self.iso_var = float(iso_var)
        self.seed = int(seed)
        n_comp = max(self.num_classes, 1) * self.per_class
        _check_fits(self.image_shape, n_comp, self.rank)
        mu, U, s = _components(n_comp, self.image_shape, self.rank, self.seed, scale)
        self.mu, self.U, self.s = as_f64(mu), as_f64(U), as_f64(s)  # (K,d), (K,d,r), (K,r)
        self.comp_class = torch.arange(n_comp) // self.per_class  # (K,)
        self.log_pi = torch.full((n_comp,), -math.log(n_comp), dtype=F64)
        self.device = torch.device("cpu")
        self._factors()

    def _factors(self):
        """Derived low-rank factors: ``U`` side by side (d, K*r), ``mu_k . U_k`` (K, r), ``lam`` (K, r)."""
        k, d, r = self.U.shape
        self.U_cat = self.U.permute(1, 0, 2).reshape(d, k * r)
        self.mu_U = torch.einsum("kd,kdr->kr", self.mu, self.U)
        self.lam = self.s + self.iso_var

    # -- bookkeeping ------------------------------------------------------------------------------
    @property
    def n_components(self) -> int:
        return self.mu.shape[0]

    def to(self, device):
        device = torch.device(device)
        for k in ("mu", "U", "s", "comp_class", "log_pi"):
            setattr(self, k, getattr(self, k).to(device))
        self.device = device
        self._factors()
        self._subspace = None
        return self

    def describe(self):
        return {**super().describe(), "per_class": self.per_class, "rank": self.rank,
                "iso_var": self.iso_var, "seed": self.seed, "components": self.n_components}

    def _sig2(self, sigma, batch):
        s2 = as_f64(sigma, self.mu.device) ** 2
        return s2.reshape(-1, 1, 1).expand(batch, 1, 1) if s2.ndim else s2.reshape(1, 1, 1).expand(batch, 1, 1)

    def _check_labels(self, labels, batch):
        if labels is None:
            return None
        if self.num_classes == 0:
            raise BenchError(f"model '{self.name}' is unconditional; drop the class labels.")
        seen = getattr(self, "_labels_seen", None)  # the labels a solver passes on every call: checked once
        if seen is not None and seen[0] is labels and seen[1] == (batch, self.mu.device):
            return seen[2]
        checked = torch.as_tensor(labels, device=self.mu.device).long().reshape(-1)
        if checked.numel() == 1 and batch > 1:
            checked = checked.expand(batch)
        if bool(((checked < 0) | (checked >= self.num_classes)).any()):  # a device-to-host read: once per labels
            raise BenchError(f"class label out of range for model '{self.name}'; use 0..{self.num_classes - 1}.")
        if isinstance(labels, torch.Tensor):
            self._labels_seen = (labels, (batch, self.mu.device), checked)
        return checked

    # -- exact quantities -------------------------------------------------------------------------
    def _component_terms(self, x, sigma):
        """Per-component log N(x; mu_k, Sigma_k + sigma^2 I) (unnormalised by pi): (B, K), and the
        low-rank coordinates ``proj = U_k^T (x - mu_k)``: (B, K, r), the flattened ``x`` and ``sigma^2``.

        Never builds a large batch x components x pixels tensor: ``|x - mu_k|^2`` is reduced one
        component at a time (a B x d buffer, no cancellation), or in one broadcast pass when B x K x d
        is small (the reduced mixture); the projections are one matmul on ``U_cat``.
        """
        b = x.shape[0]
        kn, r = self.mu_U.shape
        xf = x.reshape(b, self.d).to(F64)
        s2 = self._sig2(sigma, b).reshape(b, 1)  # (B,1)
        if xf.requires_grad and torch.is_grad_enabled():  # autograd (tests): out= is not differentiable
            sq = torch.stack([(xf - self.mu[k]).square().sum(1) for k in range(kn)], 1)
        elif b * kn * self.d <= _BROADCAST_ELEMENTS:  # small (the reduced mixture of subspace()): one pass
            sq = torch.linalg.vector_norm(xf.unsqueeze(1) - self.mu, dim=2).square_()
        else:
            sq = torch.empty(b, kn, dtype=F64, device=xf.device)
            buf = torch.empty_like(xf)
            for k in range(kn):
                torch.sub(xf, self.mu[k], out=buf)
                torch.linalg.vector_norm(buf, dim=1, out=sq[:, k])
            sq.square_()
        proj = _rows_mm(xf, self.U_cat).reshape(b, kn, r) - self.mu_U  # (B,K,r)
        iso = self.iso_var + s2  # (B,1)
        lam_s2 = self.lam + s2.unsqueeze(-1)  # (B,K,r)
        maha = sq / iso + (proj.square() * (1 / lam_s2 - 1 / iso.unsqueeze(-1))).sum(-1)
        logdet = (self.d - r) * torch.log(iso) + torch.log(lam_s2).sum(-1)
        logp = -0.5 * (maha + logdet + self.d * math.log(2 * math.pi))  # (B,K)
        return logp, proj, xf, s2

    def subspace(self):
        """``(Q, reduced)``: an orthonormal basis Q (d, m) of a space holding every mean and low-rank
        direction, and this mixture written in its coordinates (means ``Q^T mu_k``, directions
        ``Q^T U_k``); ``(None, self)`` when that space is not smaller than d.

        Exact reduction of the PF-ODE: the part of ``x`` orthogonal to Q is common to every
        component's ``|x - mu_k|^2`` (it cancels in the posterior) and the denoiser only shrinks it,
        ``D_perp = c / (c + sigma^2) x_perp``, so it follows the isotropic map
        ``x_perp(sigma_b) = x_perp(sigma_a) sqrt((c + sigma_b^2) / (c + sigma_a^2))`` whatever the
        rest does, while ``Q^T x`` follows the reduced mixture's ODE. The reduced mixture's weights and
        denoiser are exact; its ``log_marginal`` differs from the full one by a constant.
        """
        if getattr(self, "_subspace", None) is None:
            k, d, r = self.U.shape
            if k * (r + 1) >= d:
                self._subspace = (None, self)
            else:
                q, _ = torch.linalg.qr(torch.cat([self.mu.T, self.U_cat], 1))  # (d, m), m = K (r + 1)
                red = GaussianMixture.__new__(GaussianMixture)
                red.__dict__.update(self.__dict__)
                red.mu, red.U = self.mu @ q, torch.einsum("dm,kdr->kmr", q, self.U)
                red.d, red.image_shape = q.shape[1], (q.shape[1],)
                red._factors()
                red._subspace = (None, red)
                self._subspace = (q, red)
        return self._subspace

    def _mask(self, labels, b):
        if labels is None:
            return None
        return self.comp_class.unsqueeze(0) == labels.unsqueeze(1)  # (B,K)

    def posterior_denoise(self, x, sigma, labels=None):
        """``D(x, sigma)`` (shape of x) and the component posterior ``w`` (B, K), exact.

        ``D = sum_k w_k (mu_k + c/(c+s2) (x - mu_k) + U_k diag(lam/(lam+s2) - c/(c+s2)) proj_k)``,
        summed on the factors: ``(1 - a) W mu + a x + [w_k coef_k proj_k]_k U_cat^T`` with
        ``a = c / (c + sigma^2)`` and ``W mu = sum_k w_k mu_k``.
        """
        return self._posterior_denoise(x, sigma, self._check_labels(labels, x.shape[0]))

    def _posterior_denoise(self, x, sigma, labels):
        """:meth:`posterior_denoise` with ``labels`` already checked (None or a (B,) long tensor)."""
        b = x.shape[0]
        q, red = self.subspace()
        if q is not None and not (x.requires_grad and torch.is_grad_enabled()):
            # exact reduction (subspace()): weights and denoiser of Q^T x in the reduced mixture, the
            # rest of x only shrinks: D = Q D_red + a (x - Q Q^T x) = a x + Q (D_red - a Q^T x).
            # Two (B, d) x (d, m) products instead of K passes over B x d.
            xf = x.reshape(b, self.d).to(F64)
            xq = _rows_mm(xf, q)
            d_red, w = red._posterior_denoise(xq, sigma, labels)
            shrink = self.iso_var / (self.iso_var + self._sig2(sigma, b).reshape(b, 1))
            d = _rows_mm(d_red.sub_(xq * shrink), q.T, xf * shrink)
            return d.reshape(x.shape), w
        logp, proj, xf, s2 = self._component_terms(x, sigma)
        logw = logp + self.log_pi
        mask = self._mask(labels, b)
        if mask is not None:
            logw = logw.masked_fill(~mask, -math.inf)
        w = torch.softmax(logw, dim=1)
        shrink = self.iso_var / (self.iso_var + s2)  # (B,1)
        coef = self.lam / (self.lam + s2.unsqueeze(-1)) - shrink.unsqueeze(-1)  # (B,K,r)
        wmu = _rows_mm(w, self.mu)  # (B,d)
        d = _rows_mm((w.unsqueeze(-1) * coef * proj).reshape(b, -1), self.U_cat.T, torch.lerp(wmu, xf, shrink))
        return d.reshape(x.shape), w

    def denoise(self, x, sigma, labels=None):
        return self.posterior_denoise(x, sigma, labels)[0]

    def log_marginal(self, x, sigma, labels=None):
        """log p(x_sigma) (or log p(x_sigma | y) with labels), exact."""
        b = x.shape[0]
        labels = self._check_labels(labels, b)
        logp = self._component_terms(x, sigma)[0]
        logw = logp + self.log_pi
        mask = self._mask(labels, b)
        if mask is not None:
            logw = logw.masked_fill(~mask, -math.inf) + math.log(self.n_components / self.per_class)
        return torch.logsumexp(logw, 1)

    def class_log_posterior(self, x, sigma):
        """log p(y | x_sigma) for every class: (B, num_classes); rows sum to 1 in probability."""
        if self.num_classes == 0:
            raise BenchError(f"model '{self.name}' is unconditional and has no class posterior.")
        logp = self._component_terms(x, sigma)[0]
        logw = logp + self.log_pi
        per_class = logw.reshape(x.shape[0], self.num_classes, self.per_class)
        lc = torch.logsumexp(per_class, -1)
        return lc - torch.logsumexp(lc, -1, keepdim=True)

    def class_log_posterior_grad(self, x, sigma, labels):
        """grad_x log p(y | x_sigma) = (D(x | y) - D(x)) / sigma^2, exact (for classifier guidance)."""
        s2 = as_f64(sigma, x.device) ** 2
        s2 = s2.reshape(-1, *([1] * (x.ndim - 1))) if s2.ndim else s2
        return (self.denoise(x, sigma, labels) - self.denoise(x, sigma, None)) / s2

    def sample_data(self, n: int, generator: torch.Generator | None = None, labels=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Exact samples of the data distribution (x0), with their class labels (None if unconditional)."""
        dev = self.mu.device
        labels = self._check_labels(labels, n)
        if labels is None:
            comp = torch.randint(self.n_components, (n,), generator=generator, device=dev)
        else:
            comp = labels * self.per_class + torch.randint(self.per_class, (n,), generator=generator, device=dev)
        g = torch.randn(n, self.rank, generator=generator, device=dev, dtype=F64)
        e = torch.randn(n, self.d, generator=generator, device=dev, dtype=F64)
        x = self.mu[comp] + math.sqrt(self.iso_var) * e
        coeff = g * self.s[comp].sqrt()  # (n, r)
        for k in torch.unique(comp).tolist():  # per component: never materialise U[comp] (n x d x r)
            sel = comp == k
            x[sel] += coeff[sel] @ self.U[k].T
        out_labels = self.comp_class[comp] if self.num_classes else None
        return x.reshape(n, *self.image_shape), out_labels

    def data_moments(self, labels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact mean (d,) and covariance (d, d) of the data (of one class when ``labels`` is given)."""
        mean, fac, n = self._data_factor(labels)
        cov = (fac @ fac.T) / n
        cov.diagonal().add_(self.iso_var)
        return mean, cov

    def data_cov_factor(self, labels: int | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Exact mean (d,) and covariance as ``F F^T + c I``: ``(mean, F, c)``, F of d x K (r + 1)."""
        mean, fac, n = self._data_factor(labels)
        return mean, fac / math.sqrt(n), self.iso_var

    def _data_factor(self, labels):
        idx = torch.arange(self.n_components, device=self.mu.device)
        if labels is not None:
            idx = idx[self.comp_class == int(labels)]
        mu, U, s = self.mu[idx], self.U[idx], self.s[idx]
        mean = mu.mean(0)
        # sum_k U_k diag(s_k) U_k^T + (mu_k - mean)(mu_k - mean)^T as one product B B^T, B = [U_k s_k^1/2, mu_k - mean]
        fac = torch.cat([(U * s.sqrt().unsqueeze(1)).permute(1, 0, 2).reshape(self.d, -1), (mu - mean).T], 1)
        return mean, fac, len(idx)


class Gaussian(GaussianMixture):
    """A single Gaussian N(mu, U diag(s) U^T + c I): exact denoiser, exact PF-ODE map, exact sampler."""

    def __init__(self, name="gaussian", **kw):
        kw.setdefault("seed", 0)
        super().__init__(name=name, num_classes=0, per_class=1, **kw)

    def ode_map(self, x, sigma_from, sigma_to):
        """Exact probability-flow ODE solution: x(sigma_to) given x(sigma_from) (scalars or (B,))."""
        b = x.shape[0]
        y = x.reshape(b, self.d).to(F64) - self.mu[0]
        proj = y @ self.U[0]  # (B,r)
        sa = as_f64(sigma_from, x.device).reshape(-1, 1) ** 2
        sb = as_f64(sigma_to, x.device).reshape(-1, 1) ** 2
        lam = self.s[0] + self.iso_var
        f_iso = torch.sqrt((self.iso_var + sb) / (self.iso_var + sa))
        f_lr = torch.sqrt((lam + sb) / (lam + sa))
        out = self.mu[0] + f_iso * y + ((f_lr - f_iso) * proj) @ self.U[0].T
        return out.reshape(x.shape)
