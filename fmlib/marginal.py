"""The exact marginal path and velocity of an empirical data set.

For data {x1^(i)}, i = 1..N, and x0 ~ N(0, I), both of fmlib's paths give a
Gaussian conditional given x1 alone:

    p_t(x | x1) = N(x; t x1, b_t^2 I),
    GaussianPath(sigma_min):  b_t = 1 - (1 - sigma_min) t
    LinearPath(sigma):        b_t^2 = (1 - t)^2 + sigma^2

(for the linear path, x_t - t x1 = (1 - t) x0 + sigma eps is a sum of
independent centred Gaussians). The conditional velocity given x1 is, in both
cases, u_t(x | x1) = x1 + (b_t' / b_t) (x - t x1): for the Gaussian path this
is Lipman et al. (2023), eq. 15 (Theorem 3); for the linear path it is
E[x1 - x0 | x_t = x, x1] = x1 - E[x0 | x_t = x, x1], with
E[x0 | x_t = x, x1] = (1 - t) (x - t x1) / b_t^2 by Gaussian conditioning,
and b_t' / b_t = -(1 - t) / b_t^2.

The marginal p_t(x) = (1/N) sum_i p_t(x | x1^(i)) is a Gaussian mixture and
the marginal velocity (Lipman et al. 2023, eq. 8) is the posterior average

    u_t(x) = sum_i w_i(x, t) u_t(x | x1^(i)),   w_i = softmax_i(log p_t(x | x1^(i)))
           = xbar + (b_t' / b_t) (x - t xbar),  xbar = sum_i w_i x1^(i).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import as_time, check_batch, check_int
from .paths import GaussianPath, LinearPath, ProbPath

__all__ = ["EmpiricalMarginal"]


class EmpiricalMarginal:
    """Exact marginal density, posterior and velocity of a path toward an empirical data set.

    Args:
        data: the data points x1^(i), shape ``(N, *D)``, floating dtype, N >= 1, finite.
        path: a :class:`~fmlib.GaussianPath` or a :class:`~fmlib.LinearPath`
            (with x0 ~ N(0, I) as the source).
        chunk_size: the largest number of (query, data) pairs handled at once.

    Memory: queries and data are processed in blocks of at most ``chunk_size``
    pairs with a streaming log-sum-exp, so without autograd the extra memory is
    bounded by about ``4 * chunk_size * itemsize`` bytes (64 MB at the default 2^22
    pairs in float32; up to 8 features it is two reused buffers, 32 MB) plus
    O(B * D) for the running sums, whatever B and N are.
    :meth:`posterior` returns the full (B, N) matrix. With autograd enabled
    (e.g. to differentiate in x), every block's intermediates are kept for the
    backward pass, so memory then grows with B * N.

    The result follows the query's dtype and device (the data are cast once
    per dtype/device and cached). Source: Lipman et al. (2023), eqs. 6 and 8;
    Lipman et al. (2024), Section 4.4 (the marginalization trick).

    Raises:
        ValueError: empty or non-finite data, an unsupported path, or a
            non-positive chunk_size.
        TypeError: if data is not a floating tensor.

    Example:
        >>> import torch
        >>> from fmlib import GaussianPath
        >>> m = EmpiricalMarginal(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), GaussianPath())
        >>> m.posterior(torch.tensor([[0.5, 0.0]]), 0.5)   # closer to the first point
        tensor([[0.8808, 0.1192]])
    """

    def __init__(self, data: Tensor, path: ProbPath, chunk_size: int = 2**22) -> None:
        if not isinstance(data, Tensor):
            raise TypeError(f"data must be a torch.Tensor of shape (N, *D); got {type(data).__name__}")
        if data.dim() < 1 or data.shape[0] == 0:
            raise ValueError(
                f"data must hold at least one point, shape (N, *D) with N >= 1; got shape {tuple(data.shape)}"
            )
        check_batch(data, "data")
        if not bool(torch.isfinite(data).all()):
            raise ValueError("data must be finite; it holds NaN or inf")
        if not isinstance(path, (GaussianPath, LinearPath)):
            raise ValueError(f"path must be a GaussianPath or a LinearPath; got {type(path).__name__}")
        check_int(chunk_size, "chunk_size")
        self.data = data
        self.path = path
        self.chunk_size = chunk_size
        self._cache: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}

    def __repr__(self) -> str:
        return f"EmpiricalMarginal(N={self.data.shape[0]}, shape={tuple(self.data.shape[1:])}, path={self.path!r})"

    # -- the Gaussian conditional given x1 ---------------------------------------------------------

    def std(self, t: Tensor) -> Tensor:
        """b_t, the standard deviation of p_t(x | x1) with x0 integrated out; t's shape."""
        if isinstance(self.path, GaussianPath):
            return 1 - (1 - self.path.sigma_min) * t
        return torch.sqrt((1 - t) ** 2 + self.path.sigma**2)

    def _log_std_rate(self, t: Tensor) -> Tensor:
        """b_t' / b_t."""
        b = self.std(t)
        if isinstance(self.path, GaussianPath):
            return -(1 - self.path.sigma_min) / b
        return -(1 - t) / b**2

    # -- input handling -----------------------------------------------------------------------------

    def _inputs(self, x: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        check_batch(x, "x")
        if x.shape[1:] != self.data.shape[1:]:
            raise ValueError(
                f"x must have the data's feature shape {tuple(self.data.shape[1:])}, i.e. shape (B, "
                f"{', '.join(map(str, self.data.shape[1:]))}); got {tuple(x.shape)}"
            )
        t = as_time(t, x)
        b = self.std(t)
        if bool((b <= 0).any()):
            raise ValueError(
                f"{self.path!r} has zero variance at t = 1, where the marginal is a sum of point masses; "
                "t must be < 1 (or use sigma_min > 0 / sigma > 0)"
            )
        key = (x.dtype, x.device)
        if key not in self._cache:
            d = self.data.to(dtype=x.dtype, device=x.device).flatten(1)
            self._cache[key] = (d, d.pow(2).sum(1))
        d, _ = self._cache[key]
        return x.flatten(1), t, b, d

    def _logits(
        self, xq: Tensor, tq: Tensor, bq: Tensor, d: Tensor, work: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """log p_t(x | x1^(i)) up to the constant -F log b_t - F/2 log 2 pi, shape (Q, C).

        ||x - t x1||^2 = t^2 ||x / t - x1||^2 for t > 0, computed by direct differences
        (no ||x||^2 - 2 x.y + ||y||^2 expansion, which cancels badly near the data as t -> 1).
        ``work``: two flat buffers of at least Q * C elements, reused across blocks when no graph is kept.
        """
        pos = tq > 0
        ts = torch.where(pos, tq, torch.ones_like(tq))
        xs = xq / ts[:, None]
        inplace = not (torch.is_grad_enabled() and (xs.requires_grad or d.requires_grad))
        if work is not None and inplace:
            # few features: one fused pass per feature is about 2x faster than cdist's exact mode, and
            # writing into the same two buffers for every block keeps the heap from fragmenting
            size = xs.shape[0] * d.shape[0]
            sq, diff = (w[:size].view(xs.shape[0], d.shape[0]) for w in work)
            torch.sub(xs[:, :1], d[:, 0], out=sq).square_()
            for f in range(1, xs.shape[1]):
                torch.sub(xs[:, f : f + 1], d[:, f], out=diff)
                sq.addcmul_(diff, diff)
        else:
            sq = torch.cdist(xs, d, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
        if not bool(pos.all()):
            sq = torch.where(pos[:, None], sq, xq.pow(2).sum(1, keepdim=True) / ts[:, None] ** 2)
        scale = (-0.5 * ts**2 / bq**2)[:, None]
        return sq.mul_(scale) if inplace else sq * scale

    def _blocks(self, batch: int) -> tuple[int, int]:
        n = self.data.shape[0]
        cols = min(n, max(1, self.chunk_size // max(1, min(batch, 1024))))
        rows = max(1, self.chunk_size // cols)
        return rows, cols

    def _stream(
        self, x: Tensor, t: float | Tensor, want_mean: bool
    ) -> tuple[Tensor, Tensor | None, Tensor, Tensor, Tensor]:
        """Streaming log-sum-exp over the data: returns (lse, xbar, x_flat, t, b)."""
        xf, t, b, d = self._inputs(x, t)
        rows, cols = self._blocks(xf.shape[0])
        work = None
        if xf.shape[1] <= 8 and not (torch.is_grad_enabled() and xf.requires_grad):
            size = min(rows, xf.shape[0]) * min(cols, d.shape[0])
            work = (xf.new_empty(size), xf.new_empty(size))
        lses, means = [], []
        for q in range(0, xf.shape[0], rows):
            xq, tq, bq = xf[q : q + rows], t[q : q + rows], b[q : q + rows]
            m = torch.full((xq.shape[0],), -math.inf, dtype=xf.dtype, device=xf.device)
            s = torch.zeros_like(m)
            acc = torch.zeros_like(xq) if want_mean else None
            for c in range(0, d.shape[0], cols):
                dc = d[c : c + cols]
                logits = self._logits(xq, tq, bq, dc, work)
                new_m = torch.maximum(m, logits.max(dim=1).values)
                scale = torch.exp(m - new_m)
                # in place when no graph is kept: halves the memory traffic of the inner loop
                p = (
                    logits.sub_(new_m[:, None]).exp_()
                    if not logits.requires_grad
                    else torch.exp(logits - new_m[:, None])
                )
                s = s * scale + p.sum(dim=1)
                if acc is not None:
                    acc = acc * scale[:, None] + p @ dc
                m = new_m
            lses.append(m + torch.log(s))
            if acc is not None:
                means.append(acc / s[:, None])
        xbar = torch.cat(means) if want_mean else None
        return torch.cat(lses), xbar, xf, t, b

    # -- public -------------------------------------------------------------------------------------

    def log_prob(self, x: Tensor, t: float | Tensor) -> Tensor:
        """log p_t(x) = log (1/N) sum_i N(x; t x1^(i), b_t^2 I), shape (B,).

        Args:
            x: points, shape ``(B, *D)`` with the data's ``*D``.
            t: times in [0, 1] (float, 0-d or shape (B,)); t = 1 needs a path with positive final variance.

        Raises:
            ValueError: wrong feature shape, t outside [0, 1], or t = 1 with zero variance.
        """
        lse, _, xf, _, b = self._stream(x, t, want_mean=False)
        f = xf.shape[1]
        return lse - math.log(self.data.shape[0]) - f * torch.log(b) - 0.5 * f * math.log(2 * math.pi)

    def posterior(self, x: Tensor, t: float | Tensor) -> Tensor:
        """The weights w_i(x, t) = p(z = i | x_t = x), shape (B, N); each row sums to 1.

        Raises:
            ValueError: as for :meth:`log_prob`.
        """
        xf, t, b, d = self._inputs(x, t)
        rows = max(1, self.chunk_size // d.shape[0])
        out = [
            torch.softmax(self._logits(xf[q : q + rows], t[q : q + rows], b[q : q + rows], d), dim=1)
            for q in range(0, xf.shape[0], rows)
        ]
        return torch.cat(out)

    def posterior_mean(self, x: Tensor, t: float | Tensor) -> Tensor:
        """E[x1 | x_t = x] = sum_i w_i x1^(i), shape ``(B, *D)`` (the optimal denoiser).

        Raises:
            ValueError: as for :meth:`log_prob`.
        """
        _, xbar, _, _, _ = self._stream(x, t, want_mean=True)
        assert xbar is not None
        return xbar.reshape(x.shape)

    def velocity(self, x: Tensor, t: float | Tensor) -> Tensor:
        """The marginal velocity u_t(x) = sum_i w_i u_t(x | x1^(i)), shape ``(B, *D)``.

        It is a velocity field in fmlib's convention, so ``integrate(m.velocity, x0, ...)`` works;
        it is differentiable in x. Lipman et al. (2023), eq. 8.

        Raises:
            ValueError: as for :meth:`log_prob`.
        """
        _, xbar, xf, t, _ = self._stream(x, t, want_mean=True)
        assert xbar is not None
        rate = self._log_std_rate(t)[:, None]
        return (xbar + rate * (xf - t[:, None] * xbar)).reshape(x.shape)

    def conditional_velocities(self, x: Tensor, t: float | Tensor) -> Tensor:
        """u_t(x | x1^(i)) for every data point, shape ``(B, N, *D)`` (dense; for small N and teaching).

        Raises:
            ValueError: as for :meth:`log_prob`.
        """
        xf, t, _, d = self._inputs(x, t)
        rate = self._log_std_rate(t)[:, None, None]
        u = d[None] + rate * (xf[:, None] - t[:, None, None] * d[None])
        return u.reshape(x.shape[0], d.shape[0], *x.shape[1:])
