"""The exact marginal path and velocity of an empirical data set.

For data {x1^(i)}, i = 1..N, and x0 ~ N(0, I), every affine path of fmlib gives a
Gaussian conditional given x1 alone,

    p_t(x | x1) = N(x; alpha_t x1, sigma_t^2 I),

with (alpha_t, sigma_t) and their derivatives from ``path.coefficients(t)``: the
scheduler's values for an :class:`~fmlib.AffinePath` (so :class:`~fmlib.GaussianPath`
and the cosine, polynomial and VP paths), and for :class:`~fmlib.LinearPath` (sigma)
alpha_t = t, sigma_t^2 = (1 - t)^2 + sigma^2 (x_t - t x1 = (1 - t) x0 + sigma eps is a
sum of independent centred Gaussians). The velocity given x1 is then
u_t(x | x1) = d_alpha_t x1 + (d_sigma_t / sigma_t) (x - alpha_t x1): for a Gaussian
path this is Lipman et al. (2023), Theorem 3 (eq. 15); for the linear path it is
E[x1 - x0 | x_t = x, x1] by Gaussian conditioning.

The marginal p_t(x) = (1/N) sum_i p_t(x | x1^(i)) is a Gaussian mixture and the
marginal velocity (Lipman et al. 2023, eq. 8) is the posterior average

    u_t(x) = sum_i w_i(x, t) u_t(x | x1^(i)),   w_i = softmax_i(log p_t(x | x1^(i)))
           = d_alpha_t xbar + (d_sigma_t / sigma_t) (x - alpha_t xbar),  xbar = sum_i w_i x1^(i).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import as_time, check_batch, check_int
from .paths import ProbPath, SchedulerOutput

__all__ = ["EmpiricalMarginal"]

_EXPANSION_ULPS = 256
"""The expanded form is used where its rounding error bound (in the logits, so the relative error of a weight) is
at most this many units of the dtype's eps: about the accuracy of the differences, whose logits of the points that
matter (up to a few tens) carry errors of a few tens of eps."""

_SMALL_ALPHA = 1e-3
"""Below this alpha_t the general (autograd or many-feature) route expands ||x - alpha_t x1||^2."""


_FUSED_MIN_PAIRS = 2**33
"""CPU queries x data pairs from which a call runs the fused kernel. There the eager loop takes about 15 s on one
core and the fused one about 1.5 times less; compiling costs 15-20 s the first time on a machine and about 5 s once
torch.compile's disk cache holds the kernel, so it is repaid within a call or two (an ODE solve makes dozens)."""

_FUSED_MAX_FEATURES = 4
"""Features up to which the fused kernel is used: one block of 1024 queries x 2^14 data points takes 0.6 (2 and 3
features) to 0.8 (4) of the eager loop's time on one core, and from about 8 features the two are level."""

_FUSED_COLS = 2**14
"""Data points per call of the fused kernel: its per-call cost (about 0.4 ms) stays near 2 % of the work, and should
torch.compile ever run the kernel uncompiled (past its recompile limit), its intermediates stay at rows x 2^14."""


def _exp2_sums(q: Tensor, shift: Tensor, d: Tensor, n_mean: int, floor: float) -> Tensor:
    """Row sums of p_ij d_j[f] for the first n_mean rows f of d, then of the weights p_ij = 2^(q_i . d_j - shift_i)
    themselves, shape (R, n_mean + 1); weights with exponent <= floor count as 0.

    ``q``: (K, R), ``shift``: (R,), ``d``: (K, C). Written element by element so that torch.compile fuses the
    logits, exp2 and the sums into one loop that never stores the (R, C) weights.
    """
    logits = q[0][:, None] * d[0] - shift[:, None]
    for k in range(1, q.shape[0]):
        logits = logits + q[k][:, None] * d[k]
    p = torch.where(logits > floor, torch.exp2(logits), 0.0)
    return torch.stack([(p * d[f]).sum(1) for f in range(n_mean)] + [p.sum(1)], 1)


@functools.cache
def _fused_exp2_sums() -> Callable[..., Tensor]:
    return torch.compile(_exp2_sums, dynamic=True)


_fused_failed: list[str] = []  # the compiler's error, once it has failed in this process


def _fused_sums(q: Tensor, shift: Tensor, d: Tensor, n_mean: int, floor: float) -> Tensor | None:
    """:func:`_exp2_sums` compiled, or None once it could not be compiled in this process.

    Each new dtype, feature count, method and grad mode is a new compiled variant; past torch.compile's recompile
    limit (8 per function) it would run the kernel uncompiled, many times slower than the eager loop, so that
    limit raises here and counts as a failure.
    """
    if _fused_failed:
        return None
    config = torch._dynamo.config
    strict = config.fail_on_recompile_limit_hit
    try:
        # set and restored by hand: config.patch costs about 2 ms a call, this a few microseconds; no graph is
        # kept on this route, so one grad mode, one variant fewer
        config.fail_on_recompile_limit_hit = True
        with torch.no_grad():
            return _fused_exp2_sums()(q, shift, d, n_mean, floor)
    except Exception as error:  # no working C++ compiler, or the variants used up: the eager loop's sums are the same
        _fused_failed.append(f"{type(error).__name__}: {error}")
        warnings.warn(
            f"EmpiricalMarginal: the fused kernel could not be compiled ({_fused_failed[0][:300]}); large queries "
            "use the eager loop (about 1.5 times slower) for the rest of this process",
            RuntimeWarning,
            stacklevel=5,
        )
        return None
    finally:
        config.fail_on_recompile_limit_hit = strict


def _eager_sums(q2: Tensor, d_aug: Tensor, values: Tensor, work: Tensor, cols: int, clamp: bool) -> Tensor:
    """The sums of :func:`_exp2_sums` (values = [d[:n_mean]; 1]) without compiling: per block of ``cols`` data
    points, a product of [q, -shift] with [d, 1] into ``work``, exp2 in place and one matrix-vector product per row
    of ``values`` (BLAS gemv beats a product with n_mean + 1 columns).

    exp is ten times slower where its result is subnormal, and so are products with subnormals: with ``clamp``,
    shifted logits below floor = log2(tiny) + 3 are raised to it and their weights (< 16 tiny) set to exactly 0.
    """
    tiny = torch.finfo(q2.dtype).tiny
    floor, tiny16 = math.log2(tiny) + 3.0, 16.0 * tiny
    acc = q2.new_zeros(q2.shape[0], values.shape[0])
    for col in range(0, d_aug.shape[0], cols):
        out = work[: q2.shape[0] * min(cols, d_aug.shape[0] - col)].view(q2.shape[0], -1)
        p = torch.mm(q2, d_aug[col : col + cols].T, out=out)
        p = F.threshold(p.clamp_min_(floor).exp2_(), tiny16, 0.0, inplace=True) if clamp else p.exp2_()
        block = values[:, col : col + cols]
        acc += torch.stack([torch.mv(p, block[k]) for k in range(block.shape[0])], 1)
    return acc


def _check_data(data: Tensor, changed: bool = False) -> None:
    if not isinstance(data, Tensor):
        raise TypeError(f"data must be a torch.Tensor of shape (N, *D); got {type(data).__name__}")
    if data.dim() < 1 or data.shape[0] == 0:
        raise ValueError(f"data must hold at least one point, shape (N, *D) with N >= 1; got shape {tuple(data.shape)}")
    check_batch(data, "data")
    if not bool(torch.isfinite(data).all()):
        how = "they were changed in place and now hold" if changed else "it holds"
        raise ValueError(f"data must be finite; {how} NaN or inf")


def _tracked(data: Tensor) -> Tensor:
    """data, or an ordinary copy of data made under inference_mode (which has no version counter)."""
    if not data.is_inference():
        return data
    with torch.inference_mode(False):
        return data.clone()


class EmpiricalMarginal:
    """Exact marginal density, posterior and velocity of a path toward an empirical data set.

    Args:
        data: the data points x1^(i), shape ``(N, *D)``, floating dtype, N >= 1, finite.
        path: any path with a ``coefficients(t)`` method giving the Gaussian p_t(x | x1)
            (every :class:`~fmlib.AffinePath`: :class:`~fmlib.GaussianPath`,
            :class:`~fmlib.LinearPath`, ``AffinePath(CosineScheduler())``, the VP path, ...),
            with x0 ~ N(0, I) as the source.
        chunk_size: the largest number of (query, data) pairs handled at once.

    Memory: queries and data are processed in blocks of at most ``chunk_size``
    pairs with a streaming log-sum-exp, so without autograd the extra memory is
    bounded by about ``4 * chunk_size * itemsize`` bytes (64 MB at the default 2^22
    pairs in float32; up to 8 features it is two reused buffers, 32 MB) plus
    O(B * D) for the running sums, whatever B and N are. From 2^33 (query, data) pairs on the CPU, the
    sums of a query with up to 4 features and no autograd graph come from one loop compiled by
    ``torch.compile`` (about 1.5 times faster in 2D; the first such call in a process also compiles it,
    5-20 s; where it cannot be compiled, one RuntimeWarning and the eager loop).
    :meth:`posterior` returns the full (B, N) matrix. With autograd enabled
    (e.g. to differentiate in x), every block's intermediates are kept for the
    backward pass, so memory then grows with B * N.

    Numerics: the squared distances ||x - alpha_t x1^(i)||^2 are formed by direct
    differences (no ||x||^2 - 2 x.y + ||y||^2 expansion, which cancels badly near the
    data as sigma_t -> 0), and never through x / alpha_t when alpha_t is tiny, so every
    method is finite one float step after t = 0 (e.g. t = 1e-45 in float32) and one
    before t = 1. The result has the query's dtype and device (the data are cast once
    per dtype/device and cached, also under ``torch.inference_mode()`` as ordinary tensors that
    autograd can use later; the cache is renewed when ``data`` is reassigned or changed in place,
    and the changed data are checked again); for a float16/bfloat16 query the arithmetic and the
    times are float32. Source: Lipman et al. (2023), eqs. 6 and 8; Lipman et al. (2024),
    Sections 4.4 (the marginalization trick) and 4.8 (affine paths).

    Raises:
        ValueError: empty or non-finite data (also when assigned to ``data`` or changed in place, raised
            by the next query), or a non-positive chunk_size.
        TypeError: if data is not a floating tensor, or path has no ``coefficients`` method.

    Example:
        >>> import torch
        >>> from fmlib import GaussianPath
        >>> m = EmpiricalMarginal(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), GaussianPath())
        >>> m.posterior(torch.tensor([[0.5, 0.0]]), 0.5)   # closer to the first point
        tensor([[0.8808, 0.1192]])
    """

    def __init__(self, data: Tensor, path: ProbPath, chunk_size: int = 2**22) -> None:
        _check_data(data)
        if not callable(getattr(path, "coefficients", None)):
            raise TypeError(
                "path must have a coefficients(t) method giving p_t(x | x1) = N(alpha_t x1, sigma_t^2 I) "
                f"(an AffinePath, GaussianPath or LinearPath); got {type(path).__name__}"
            )
        check_int(chunk_size, "chunk_size")
        self._data = _tracked(data)
        self.path = path
        self.chunk_size = chunk_size
        # (dtype, device) -> (the flat data cast there, their squared norms), for the data's version below
        self._cache: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}
        self._checked_version = self._data._version

    @property
    def data(self) -> Tensor:
        """The data points x1^(i), shape ``(N, *D)``.

        Assigning a new tensor (checked as at construction) or changing this one in place is followed
        by every later query, whatever its dtype and device. Data made under ``torch.inference_mode()``
        are copied (such tensors track no changes), so later changes to the original are not seen.
        """
        return self._data

    @data.setter
    def data(self, data: Tensor) -> None:
        _check_data(data)
        self._data = _tracked(data)
        self._cache.clear()
        self._checked_version = self._data._version

    def _cast_data(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """The data flattened to (N, F) in dtype on device, and their squared norms; cached until the data change."""
        version = self._data._version  # bumped by every in-place change
        if version != self._checked_version:
            _check_data(self._data, changed=True)
            self._cache.clear()
            self._checked_version = version
        key = (dtype, device)
        if key not in self._cache:
            # outside inference_mode, so that a copy cached there can be used by autograd later
            with torch.inference_mode(False):
                d = self._data.to(dtype=dtype, device=device).flatten(1)
                self._cache[key] = (d, d.pow(2).sum(1))
        return self._cache[key]

    def __repr__(self) -> str:
        return f"EmpiricalMarginal(N={self.data.shape[0]}, shape={tuple(self.data.shape[1:])}, path={self.path!r})"

    # -- the Gaussian conditional given x1 ---------------------------------------------------------

    def _coefficients(self, t: Tensor) -> SchedulerOutput:
        return self.path.coefficients(t)  # type: ignore[attr-defined]

    def std(self, t: Tensor) -> Tensor:
        """sigma_t, the standard deviation of p_t(x | x1) with x0 integrated out; t's shape and dtype."""
        return self._coefficients(t).sigma_t

    # -- input handling -----------------------------------------------------------------------------

    def _inputs(self, x: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor, SchedulerOutput, Tensor, Tensor]:
        check_batch(x, "x")
        if x.shape[1:] != self.data.shape[1:]:
            raise ValueError(
                f"x must have the data's feature shape {tuple(self.data.shape[1:])}, i.e. shape (B, "
                f"{', '.join(map(str, self.data.shape[1:]))}); got {tuple(x.shape)}"
            )
        t = as_time(t, x)
        c = self._coefficients(t)
        bad = c.sigma_t <= 0
        if bool(bad.any()):
            raise ValueError(
                f"{self.path!r} has zero variance at t = {float(t[bad][0]):g}, where the marginal is a sum of "
                "point masses; t must be < 1 (or use a path with sigma_t > 0 there, e.g. sigma_min > 0)"
            )
        d, dn = self._cast_data(t.dtype, x.device)
        return x.flatten(1).to(t.dtype), t, c, d, dn

    def _logits(
        self,
        xq: Tensor,
        aq: Tensor,
        sq_t: Tensor,
        d: Tensor,
        dn: Tensor,
        work: tuple[Tensor, Tensor] | None = None,
        unit: float = 1.0,
    ) -> Tensor:
        """log p_t(x | x1^(i)) up to the constant -F log sigma_t - F/2 log 2 pi, shape (Q, C).

        ``aq``, ``sq_t``: alpha_t and sigma_t of the Q queries; ``dn``: ||x1^(i)||^2 of the C data points.
        ``work``: two flat buffers of at least Q * C elements, reused across blocks when no graph is kept.
        ``unit``: a factor on the result (log2(e) gives the logits in bits).
        """
        scale = (-0.5 * unit / sq_t**2)[:, None]
        inplace = not (torch.is_grad_enabled() and (xq.requires_grad or d.requires_grad))
        if work is not None and inplace:
            # few features: one fused pass per feature, x_f - alpha_t y_f (about 2x faster than cdist's
            # exact mode); writing into the same two buffers for every block keeps the heap from fragmenting
            size = xq.shape[0] * d.shape[0]
            sq, diff = (w[:size].view(xq.shape[0], d.shape[0]) for w in work)
            a = aq[:, None]
            torch.addcmul(xq[:, :1], a, d[None, :, 0], value=-1, out=sq).square_()
            for f in range(1, xq.shape[1]):
                torch.addcmul(xq[:, f : f + 1], a, d[None, :, f], value=-1, out=diff)
                sq.addcmul_(diff, diff)
            return sq.mul_(scale)
        # ||x - a y||^2 = a^2 ||x / a - y||^2 by direct differences (cdist's exact mode); where a is tiny,
        # x / a would overflow, and there the expansion ||x||^2 - 2 a x.y + a^2 ||y||^2 is accurate instead
        big = aq >= _SMALL_ALPHA
        ab = torch.where(big, aq, torch.ones_like(aq))
        sq = torch.cdist(xq / ab[:, None], d, compute_mode="donot_use_mm_for_euclid_dist").pow(2) * (ab**2)[:, None]
        if not bool(big.all()):
            a = aq[:, None]
            expanded = xq.pow(2).sum(1, keepdim=True) - 2 * a * (xq @ d.T) + a**2 * dn[None]
            sq = torch.where(big[:, None], sq, expanded)
        return sq.mul_(scale) if inplace else sq * scale

    def _blocks(self, batch: int) -> tuple[int, int]:
        n = self.data.shape[0]
        cols = min(n, max(1, self.chunk_size // max(1, min(batch, 1024))))
        rows = max(1, self.chunk_size // cols)
        return rows, cols

    def _expansion_ok(self, xf: Tensor, a: Tensor, s: Tensor, dn: Tensor) -> Tensor:
        """Rows whose logits the expanded form (one matrix product) gives to within _EXPANSION_ULPS * eps.

        The expanded logit (2 a x.y - a^2 ||y||^2) / (2 sigma^2) drops -||x||^2 / (2 sigma^2), the same for every
        data point; its rounding error is at most about 2 (F + 1) eps (a ||x|| Y + a^2 Y^2 / 2) / sigma^2 with
        Y = max ||y|| (each product exact to eps, summed over F + 1 terms, Cauchy-Schwarz).
        """
        eps = torch.finfo(xf.dtype).eps
        big_y = dn.max().sqrt()
        bound = 2 * (xf.shape[1] + 1) * eps * (a * xf.norm(dim=1) * big_y + 0.5 * a**2 * big_y**2) / s**2
        return bound <= _EXPANSION_ULPS * eps

    def _stream(
        self, x: Tensor, t: float | Tensor, want_mean: bool
    ) -> tuple[Tensor, Tensor | None, Tensor, SchedulerOutput]:
        """Streaming log-sum-exp over the data: returns (lse, xbar, x_flat, coefficients)."""
        xf, t, c, d, dn = self._inputs(x, t)
        a, s = c.alpha_t, c.sigma_t
        graph = torch.is_grad_enabled() and (xf.requires_grad or a.requires_grad or d.requires_grad)
        few = xf.shape[1] <= 8 and not graph
        fast = self._expansion_ok(xf, a, s, dn) if few else torch.zeros_like(a, dtype=torch.bool)
        if bool(fast.all()) or not bool(fast.any()):
            rows_fn = self._shifted_rows if bool(fast.all()) else self._stream_rows
            lse, xbar = rows_fn(xf, a, s, d, dn, want_mean, few, bool(fast.all()))
        else:  # some rows each way: run the two sets apart and put the rows back in order
            lse = xf.new_empty(xf.shape[0])
            xbar = xf.new_empty(xf.shape) if want_mean else None
            for rows, expanded in ((fast, True), (~fast, False)):
                rows_fn = self._shifted_rows if expanded else self._stream_rows
                part_lse, part_mean = rows_fn(xf[rows], a[rows], s[rows], d, dn, want_mean, few, expanded)
                lse[rows] = part_lse
                if xbar is not None and part_mean is not None:
                    xbar[rows] = part_mean
        return lse, xbar, xf, c

    def _shifted_rows(
        self, xf: Tensor, a: Tensor, s: Tensor, d: Tensor, dn: Tensor, want_mean: bool, few: bool, expanded: bool
    ) -> tuple[Tensor, Tensor | None]:
        """The log-sum-exp (and posterior mean) of rows whose logits the expanded form gives (few features, no
        graph), with one fixed shift per row: fewer passes over each block than the online log-sum-exp.

        The shift S of a row is its largest logit over a strided subset of the data, so S <= the largest logit
        M: no row underflows entirely, and exp2(logit - S) <= 2^(M - S) overflows only when the subset misses
        the nearest points by over 127 bits; such rows (a non-finite sum) go to :meth:`_stream_rows`. The shift
        enters the matrix product as one more column ([q, -S] . [y_aug, 1]), so a block costs a product, exp2
        in place and one matrix-vector product per output (:func:`_eager_sums`); raising logits below the
        subnormal range is needed only for rows whose logits can fall that low, judged by the bound
        -(||x|| + a Y)^2 / (2 sigma^2) with Y = max ||y||. From ``_FUSED_MIN_PAIRS`` pairs on the CPU (up to
        ``_FUSED_MAX_FEATURES`` features) the sums come from :func:`_exp2_sums` compiled by torch.compile: one
        pass, no weights stored, about 1.5 times faster in 2D; the eager loop stays the route elsewhere and
        where compiling fails.
        """
        rows, cols = self._blocks(xf.shape[0])
        unit = 1.0 / math.log(2.0)  # logits in bits
        inv = 1.0 / s**2
        q_aug = torch.cat([xf * (a * inv)[:, None], (-0.5 * a**2 * inv)[:, None]], dim=1) * unit
        d_aug = torch.cat([d, dn[:, None], torch.ones_like(dn)[:, None]], dim=1)  # (N, F + 2): [y, ||y||^2, 1]
        stride = max(1, d.shape[0] // 1024)
        subset = d_aug[::stride, :-1]
        tiny = torch.finfo(xf.dtype).tiny
        floor = math.log2(tiny) + 3.0  # exp2(floor) = 8 tiny: see _eager_sums
        low = -0.5 * unit * (xf.norm(dim=1) + a * dn.max().sqrt()) ** 2 * inv  # lower bound of the shifted logits
        columns = (torch.cat([d, torch.ones_like(dn)[:, None]], dim=1) if want_mean else d_aug[:, -1:]).T.contiguous()
        n_mean = columns.shape[0] - 1
        fused = (  # where it repays compiling it, and not inside a caller's own torch.compile
            xf.device.type == "cpu"
            and d.shape[1] <= _FUSED_MAX_FEATURES
            and xf.shape[0] * d.shape[0] >= _FUSED_MIN_PAIRS
            and not torch.compiler.is_compiling()
        )
        d_t = d_aug[:, :-1].T.contiguous() if fused else None
        step = _FUSED_COLS if fused else d.shape[0]
        work = xf.new_empty(min(rows, xf.shape[0]) * min(cols, d.shape[0]))
        lses, means = [], []
        for q in range(0, xf.shape[0], rows):
            qa = q_aug[q : q + rows]
            shift = torch.amax(qa @ subset.T, dim=1)
            q2, q_t = torch.cat([qa, -shift[:, None]], dim=1), qa.T.contiguous()
            clamp = bool((low[q : q + rows] < floor).any())
            acc = xf.new_zeros(qa.shape[0], columns.shape[0])
            for col in range(0, d.shape[0], step):
                sums = None if d_t is None else _fused_sums(q_t, shift, d_t[:, col : col + step], n_mean, floor + 1)
                if sums is None:
                    sums = _eager_sums(q2, d_aug[col : col + step], columns[:, col : col + step], work, cols, clamp)
                acc += sums
            total = acc[:, -1]
            m = shift - 0.5 * unit * xf[q : q + rows].pow(2).sum(1) * inv[q : q + rows]
            lses.append(m / unit + torch.log(total))
            if want_mean:
                means.append(acc[:, :-1] / total[:, None])
        lse = torch.cat(lses)
        xbar = torch.cat(means) if want_mean else None
        bad = ~torch.isfinite(lse)
        if xbar is not None:
            bad |= ~torch.isfinite(xbar).all(1)
        if bool(bad.any()):  # the subset missed the nearest points by far: the online log-sum-exp for these rows
            redo_lse, redo_mean = self._stream_rows(xf[bad], a[bad], s[bad], d, dn, want_mean, few, expanded)
            lse[bad] = redo_lse
            if xbar is not None and redo_mean is not None:
                xbar[bad] = redo_mean
        return lse, xbar

    def _stream_rows(
        self, xf: Tensor, a: Tensor, s: Tensor, d: Tensor, dn: Tensor, want_mean: bool, few: bool, expanded: bool
    ) -> tuple[Tensor, Tensor | None]:
        """The online log-sum-exp (and posterior mean) over column blocks of the data for the rows xf.

        ``expanded``: each block's logits come from one matrix product of [x a / sigma^2, -a^2 / (2 sigma^2)]
        with [y, ||y||^2] (about three times less memory traffic than differences); the dropped row constant
        -||x||^2 / (2 sigma^2) is added back to the log-sum-exp. Otherwise by differences (_logits).
        """
        rows, cols = self._blocks(xf.shape[0])
        work = None
        unit = 1.0 / math.log(2.0)  # the logits in bits: exp2 is about twice as fast as exp
        if few:
            size = min(rows, xf.shape[0]) * min(cols, d.shape[0])
            work = (xf.new_empty(size), xf.new_empty(size))
        if expanded:
            d_aug = torch.cat([d, dn[:, None]], dim=1)  # (N, F + 1)
            inv = 1.0 / s**2
            q_aug = torch.cat([xf * (a * inv)[:, None], (-0.5 * a**2 * inv)[:, None]], dim=1) * unit  # (B, F + 1)
        # [y, 1]: one product gives the weighted sum of y and the total weight; with few features and no graph,
        # one matrix-vector product per column of it (BLAS gemv) beats a matrix product with F + 1 columns
        d_ones = torch.cat([d, torch.ones_like(dn)[:, None]], dim=1) if want_mean else None
        columns = d_ones.T.contiguous() if d_ones is not None and work is not None else None
        tiny = torch.finfo(xf.dtype).tiny
        floor, tiny16 = math.log2(tiny) + 3.0, 16.0 * tiny  # exp2(floor) = 8 tiny < tiny16
        lses, means = [], []
        for q in range(0, xf.shape[0], rows):
            xq, aq, sq = xf[q : q + rows], a[q : q + rows], s[q : q + rows]
            m = torch.full((xq.shape[0],), -math.inf, dtype=xf.dtype, device=xf.device)
            total = torch.zeros_like(m)
            acc = xq.new_zeros(xq.shape[0], xq.shape[1] + 1) if want_mean else None
            for col in range(0, d.shape[0], cols):
                if expanded and work is not None:
                    out = work[0][: xq.shape[0] * min(cols, d.shape[0] - col)].view(xq.shape[0], -1)
                    logits = torch.mm(q_aug[q : q + rows], d_aug[col : col + cols].T, out=out)
                else:
                    logits = self._logits(xq, aq, sq, d[col : col + cols], dn[col : col + cols], work, unit)
                new_m = torch.maximum(m, torch.amax(logits, dim=1))  # amax: no indices, ten times faster
                scale = torch.exp2(m - new_m)
                # in place when no graph is kept: halves the memory traffic of the inner loop. exp is ten times
                # slower where its result is subnormal or zero, and so are products with subnormals: shifted
                # logits below `floor` are raised to it and their weights (< 16 tiny, beside the largest, 1) set
                # to exactly 0, which changes the sums by less than N * 16 tiny
                p = (
                    F.threshold(logits.sub_(new_m[:, None]).clamp_min_(floor).exp2_(), tiny16, 0.0, inplace=True)
                    if not logits.requires_grad
                    else torch.exp2(logits - new_m[:, None])
                )
                if acc is not None and columns is not None:
                    block = columns[:, col : col + cols]
                    acc = acc * scale[:, None] + torch.stack([torch.mv(p, block[k]) for k in range(block.shape[0])], 1)
                    total = acc[:, -1]
                elif acc is not None and d_ones is not None:
                    acc = acc * scale[:, None] + p @ d_ones[col : col + cols]
                    total = acc[:, -1]
                else:
                    total = total * scale + p.sum(dim=1)
                m = new_m
            if expanded:
                m = m - 0.5 * unit * xq.pow(2).sum(1) / sq**2
            lses.append(m / unit + torch.log(total))
            if acc is not None:
                means.append(acc[:, :-1] / total[:, None])
        return torch.cat(lses), (torch.cat(means) if want_mean else None)

    # -- public -------------------------------------------------------------------------------------

    def log_prob(self, x: Tensor, t: float | Tensor) -> Tensor:
        """log p_t(x) = log (1/N) sum_i N(x; alpha_t x1^(i), sigma_t^2 I), shape (B,).

        Args:
            x: points, shape ``(B, *D)`` with the data's ``*D``.
            t: times in [0, 1] (float, 0-d or shape (B,)); t = 1 needs a path with positive final variance.

        Raises:
            ValueError: wrong feature shape, t outside [0, 1], or sigma_t = 0 (t = 1 with zero variance).
        """
        lse, _, xf, c = self._stream(x, t, want_mean=False)
        f = xf.shape[1]
        out = lse - math.log(self.data.shape[0]) - f * torch.log(c.sigma_t) - 0.5 * f * math.log(2 * math.pi)
        return out.to(x.dtype)

    def posterior(self, x: Tensor, t: float | Tensor) -> Tensor:
        """The weights w_i(x, t) = p(z = i | x_t = x), shape (B, N); each row sums to 1.

        Raises:
            ValueError: as for :meth:`log_prob`.
        """
        xf, _, c, d, dn = self._inputs(x, t)
        rows = max(1, self.chunk_size // d.shape[0])
        out = [
            torch.softmax(
                self._logits(xf[q : q + rows], c.alpha_t[q : q + rows], c.sigma_t[q : q + rows], d, dn), dim=1
            )
            for q in range(0, xf.shape[0], rows)
        ]
        return torch.cat(out).to(x.dtype)

    def posterior_mean(self, x: Tensor, t: float | Tensor) -> Tensor:
        """E[x1 | x_t = x] = sum_i w_i x1^(i), shape ``(B, *D)`` (the optimal denoiser).

        Raises:
            ValueError: as for :meth:`log_prob`.
        """
        _, xbar, _, _ = self._stream(x, t, want_mean=True)
        assert xbar is not None
        return xbar.reshape(x.shape).to(x.dtype)

    def velocity(self, x: Tensor, t: float | Tensor) -> Tensor:
        """The marginal velocity u_t(x) = sum_i w_i u_t(x | x1^(i)), shape ``(B, *D)``.

        It equals d_alpha_t xbar + (d_sigma_t / sigma_t) (x - alpha_t xbar) with xbar the
        posterior mean. It is a velocity field in fmlib's convention, so
        ``integrate(m.velocity, x0, ...)`` works; it is differentiable in x.
        Lipman et al. (2023), eq. 8.

        Raises:
            ValueError: as for :meth:`log_prob`.
        """
        _, xbar, xf, c = self._stream(x, t, want_mean=True)
        assert xbar is not None
        a, da = c.alpha_t[:, None], c.d_alpha_t[:, None]
        rate = (c.d_sigma_t / c.sigma_t)[:, None]
        return (da * xbar + rate * (xf - a * xbar)).reshape(x.shape).to(x.dtype)

    def conditional_velocities(self, x: Tensor, t: float | Tensor) -> Tensor:
        """u_t(x | x1^(i)) for every data point, shape ``(B, N, *D)`` (dense; for small N and teaching).

        Raises:
            ValueError: as for :meth:`log_prob`.
        """
        xf, _, c, d, _ = self._inputs(x, t)
        a, da = c.alpha_t[:, None, None], c.d_alpha_t[:, None, None]
        rate = (c.d_sigma_t / c.sigma_t)[:, None, None]
        u = da * d[None] + rate * (xf[:, None] - a * d[None])
        return u.reshape(x.shape[0], d.shape[0], *x.shape[1:]).to(x.dtype)
