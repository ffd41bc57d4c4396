"""Schedulers: the coefficients (alpha_t, sigma_t) of an affine path x_t = alpha_t x1 + sigma_t x0, and their time
derivatives.

Convention: t = 0 is the source N(0, I) (alpha_0 = 0, sigma_0 = 1), t = 1 the data (alpha_1 = 1, sigma_1 =
sigma_min). :class:`~fmlib.AffinePath` turns a scheduler into a path.

Sources: Lipman et al. (2024), *Flow Matching Guide and Code*, Section 4.8 (schedulers, the signal-to-noise
ratio and scheduler change); Lipman et al. (2023), eq. 20 (CondOT); Song et al. (2021), *Score-Based Generative
Modeling through SDEs* (the variance-preserving schedule); Nichol & Dhariwal (2021) (the cosine schedule).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real

import torch
from torch import Tensor

from ._checks import ReadOnlyParameters, check_real

__all__ = [
    "SchedulerOutput",
    "Scheduler",
    "CondOTScheduler",
    "CosineScheduler",
    "PolynomialScheduler",
    "VPScheduler",
]


# -- schedulers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SchedulerOutput:
    """The values of a scheduler at times t; every field has t's shape and dtype.

    Attributes:
        alpha_t: the signal coefficient alpha_t (the weight of x1).
        sigma_t: the noise coefficient sigma_t (the weight of x0), >= 0.
        d_alpha_t: d alpha_t / dt.
        d_sigma_t: d sigma_t / dt.
    """

    alpha_t: Tensor
    sigma_t: Tensor
    d_alpha_t: Tensor
    d_sigma_t: Tensor


def _scheduler_time(t: object) -> Tensor:
    if isinstance(t, bool) or not isinstance(t, (Real, Tensor)):
        raise TypeError(f"t must be a float or a floating tensor with values in [0, 1]; got {type(t).__name__}")
    if not isinstance(t, Tensor):
        t = torch.tensor(float(t), dtype=torch.float64)
    if not t.is_floating_point():
        raise TypeError(f"t must have a floating dtype; got {t.dtype}")
    if t.numel() > 0:
        if not bool(torch.isfinite(t).all()):
            raise ValueError("t must be finite; it holds NaN or inf")
        lo, hi = float(t.min()), float(t.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"t must lie in [0, 1]; got values in [{lo:g}, {hi:g}]")
    return t


def _snr_pair(alpha: object, sigma: object) -> tuple[Tensor, Tensor]:
    for name, value in (("alpha", alpha), ("sigma", sigma)):
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor; got {type(value).__name__}")
    assert isinstance(alpha, Tensor) and isinstance(sigma, Tensor)
    if alpha.shape != sigma.shape:
        raise ValueError(f"alpha and sigma must have the same shape; got {tuple(alpha.shape)} and {tuple(sigma.shape)}")
    if not bool(torch.isfinite(alpha).all() & torch.isfinite(sigma).all()):
        raise ValueError("alpha and sigma must be finite; they hold NaN or inf")
    if bool(((alpha < 0) | (sigma < 0) | ((alpha == 0) & (sigma == 0))).any()):
        raise ValueError("alpha and sigma must be >= 0 and not both 0 (a signal-to-noise ratio alpha / sigma)")
    return alpha, sigma


def _out_of_range(name: str, what: str) -> ValueError:
    return ValueError(f"{name} cannot reach this signal-to-noise ratio alpha / sigma: it is {what} its range on [0, 1]")


def _bisect_time(values: Callable[[Tensor], tuple[Tensor, Tensor]], alpha: Tensor, sigma: Tensor, name: str) -> Tensor:
    """Solve alpha_t / sigma_t = alpha / sigma for t by bisection; ``values(t)`` gives (alpha_t, sigma_t)."""
    lo, hi = torch.zeros_like(alpha), torch.ones_like(alpha)

    def gap(t: Tensor) -> tuple[Tensor, Tensor]:
        a_t, s_t = values(t)
        return a_t * sigma - s_t * alpha, (a_t * sigma).abs() + (s_t * alpha).abs()

    eps = 8 * torch.finfo(alpha.dtype).eps
    g0, s0 = gap(lo)
    g1, s1 = gap(hi)
    if bool((g0 > eps * s0).any()):
        raise _out_of_range(name, "below")
    if bool((g1 < -eps * s1).any()):
        raise _out_of_range(name, "above")
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        below = gap(mid)[0] < 0
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


class Scheduler(ReadOnlyParameters, ABC):
    """A schedule t -> (alpha_t, sigma_t) for the affine path x_t = alpha_t x1 + sigma_t x0.

    Calling a scheduler on times t (a float, or a floating tensor of any shape with values in
    [0, 1]) returns a :class:`SchedulerOutput` with alpha_t, sigma_t and their time derivatives,
    each of t's shape and dtype (a float gives 0-d float64 tensors). The signal-to-noise ratio
    alpha_t / sigma_t must increase with t. Lipman et al. (2024), Section 4.8.

    A subclass implements ``_values(t)`` (no input checks) and, where it has one, a closed-form
    :meth:`time_for_snr`. The built-in schedulers' parameters (``sigma_min``, ``n``, ``beta_min``,
    ``beta_max``) are read-only: assigning one raises AttributeError; build a new scheduler instead.

    Raises:
        TypeError: if t is not a float or a floating tensor.
        ValueError: if t holds values outside [0, 1] or NaN.
    """

    _kind = "scheduler"

    def __call__(self, t: float | Tensor) -> SchedulerOutput:
        return self._values(_scheduler_time(t))

    @abstractmethod
    def _values(self, t: Tensor) -> SchedulerOutput:
        """The scheduler at checked times t."""

    def _alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t) alone, defined at every t in [0, 1] (their derivatives may not be)."""
        c = self._values(t)
        return c.alpha_t, c.sigma_t

    def time_for_snr(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        """The time t at which alpha_t / sigma_t equals alpha / sigma (element-wise).

        The ratio is given as a pair so that 0 (alpha = 0) and infinity (sigma = 0) are exact.
        This is the inverse signal-to-noise map of the scheduler change of Lipman et al. (2024),
        Section 4.8.2. The default solves by bisection; the built-in schedulers use closed forms.

        Args:
            alpha: tensor of values >= 0.
            sigma: tensor of alpha's shape, values >= 0, never 0 where alpha is 0.

        Returns:
            The times, alpha's shape and dtype.

        Raises:
            ValueError: for negative or non-finite values, both zero, or a ratio this scheduler
                never reaches on [0, 1].
            TypeError: if alpha or sigma is not a floating tensor.
        """
        alpha, sigma = _snr_pair(alpha, sigma)
        return _bisect_time(self._alpha_sigma, alpha, sigma, repr(self))


class CondOTScheduler(Scheduler):
    """The CondOT schedule: alpha_t = t, sigma_t = 1 - (1 - sigma_min) t.

    Lipman et al. (2023), eq. 20; Lipman et al. (2024), Section 4.8. With sigma_min = 0
    it is the straight line between x0 and x1 (rectified flow).

    Args:
        sigma_min: sigma_t at t = 1, in [0, 1).

    Raises:
        ValueError: if sigma_min is outside [0, 1).
        TypeError: if sigma_min is not a number.

    Example:
        >>> s = CondOTScheduler()(0.25)
        >>> float(s.alpha_t), float(s.sigma_t), float(s.d_alpha_t), float(s.d_sigma_t)
        (0.25, 0.75, 1.0, -1.0)
    """

    _parameters: tuple[str, ...] = ("sigma_min",)

    def __init__(self, sigma_min: float = 0.0) -> None:
        sigma_min = check_real(sigma_min, "sigma_min", low=0.0, high=1.0, high_inclusive=False)
        self.sigma_min = sigma_min

    def __repr__(self) -> str:
        return f"CondOTScheduler(sigma_min={self.sigma_min})"

    def _values(self, t: Tensor) -> SchedulerOutput:
        k = 1 - self.sigma_min
        return SchedulerOutput(t, 1 - k * t, torch.ones_like(t), torch.full_like(t, -k))

    def time_for_snr(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        """Closed form t = alpha / (sigma + (1 - sigma_min) alpha); see :meth:`Scheduler.time_for_snr`."""
        alpha, sigma = _snr_pair(alpha, sigma)
        if bool((self.sigma_min * alpha > sigma * (1 + 8 * torch.finfo(alpha.dtype).eps)).any()):
            raise _out_of_range(repr(self), "above")
        return (alpha / (sigma + (1 - self.sigma_min) * alpha)).clamp(0, 1)


class CosineScheduler(Scheduler):
    """The cosine schedule: alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2).

    Lipman et al. (2024), Section 4.8 (the schedule of Nichol & Dhariwal's improved DDPM,
    written in flow time). sigma_t is computed as sin(pi (1 - t) / 2), so it is exactly 0 at t = 1.

    Example:
        >>> s = CosineScheduler()(1.0)
        >>> float(s.alpha_t), float(s.sigma_t)
        (1.0, 0.0)
    """

    def __repr__(self) -> str:
        return "CosineScheduler()"

    def _values(self, t: Tensor) -> SchedulerOutput:
        h = math.pi / 2
        alpha, sigma = torch.sin(h * t), torch.sin(h * (1 - t))
        return SchedulerOutput(alpha, sigma, h * sigma, -h * alpha)

    def time_for_snr(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        """Closed form t = (2 / pi) atan2(alpha, sigma); see :meth:`Scheduler.time_for_snr`."""
        alpha, sigma = _snr_pair(alpha, sigma)
        return (torch.atan2(alpha, sigma) * (2 / math.pi)).clamp(0, 1)


class PolynomialScheduler(Scheduler):
    """The polynomial schedule: alpha_t = t^n, sigma_t = 1 - t^n, n >= 1.

    Lipman et al. (2024), Section 4.8. n = 1 is CondOT with sigma_min = 0. For n < 1,
    d alpha_t / dt would be unbounded at t = 0, so n >= 1 is required. For t > 1/2,
    sigma_t is computed as -expm1(n log1p(-(1 - t))), which keeps it accurate one float
    step below t = 1.

    Args:
        n: the exponent, a float >= 1.

    Raises:
        ValueError: if n < 1 or not finite.
        TypeError: if n is not a number.

    Example:
        >>> s = PolynomialScheduler(2)(0.5)
        >>> float(s.alpha_t), float(s.sigma_t), float(s.d_alpha_t), float(s.d_sigma_t)
        (0.25, 0.75, 1.0, -1.0)
    """

    _parameters: tuple[str, ...] = ("n",)

    def __init__(self, n: float) -> None:
        n = check_real(n, "n", low=1.0)
        self.n = n

    def __repr__(self) -> str:
        return f"PolynomialScheduler(n={self.n})"

    def _values(self, t: Tensor) -> SchedulerOutput:
        n = self.n
        alpha = t**n
        near_one = -torch.expm1(n * torch.log1p(-(1 - t)))
        sigma = torch.where(t > 0.5, near_one, 1 - alpha)
        d_alpha = n * t ** (n - 1)
        return SchedulerOutput(alpha, sigma, d_alpha, -d_alpha)

    def time_for_snr(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        """Closed form t = (alpha / (alpha + sigma))^(1/n); see :meth:`Scheduler.time_for_snr`."""
        alpha, sigma = _snr_pair(alpha, sigma)
        return (alpha / (alpha + sigma)) ** (1 / self.n)


class VPScheduler(Scheduler):
    """The variance-preserving (VP) schedule of Song et al. (2021), in flow time (t = 0 noise).

    With s = 1 - t (the diffusion time), T(t) = beta_min s + (beta_max - beta_min) s^2 / 2,
    alpha_t = exp(-T / 2) and sigma_t = sqrt(1 - alpha_t^2), so alpha_t^2 + sigma_t^2 = 1.
    This is the VP SDE dx = -beta(s) x / 2 ds + sqrt(beta(s)) dW with the linear
    beta(s) = beta_min + (beta_max - beta_min) s (Song et al. 2021, Section 3.4, eq. 11;
    Ho et al. 2020 in continuous time); Lipman et al. (2024), Section 4.8.

    The path does not start at pure noise: alpha_0 = exp(-(beta_min + beta_max) / 4), which is
    about 0.0066 with the defaults, so p_0 is N(0, I) only approximately. Near t = 1,
    sigma_t ~ sqrt(beta_min (1 - t)) and d sigma_t / dt is unbounded: the scheduler raises at t = 1.

    Args:
        beta_min: beta at the data end, > 0.
        beta_max: beta at the noise end, >= beta_min.

    Raises:
        ValueError: if beta_min <= 0, beta_max < beta_min, either is not finite, or (when called)
            t = 1, where d sigma_t / dt is infinite.
        TypeError: if beta_min or beta_max is not a number.

    Example:
        >>> s = VPScheduler()(0.0)
        >>> round(float(s.alpha_t), 5), round(float(s.alpha_t**2 + s.sigma_t**2), 12)
        (0.00657, 1.0)
    """

    _parameters: tuple[str, ...] = ("beta_min", "beta_max")

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        beta_min = check_real(beta_min, "beta_min", low=0.0, low_inclusive=False)
        beta_max = check_real(beta_max, "beta_max", low=beta_min)
        self.beta_min, self.beta_max = beta_min, beta_max

    def __repr__(self) -> str:
        return f"VPScheduler(beta_min={self.beta_min}, beta_max={self.beta_max})"

    def _alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        s = 1 - t
        big_t = s * self.beta_min + 0.5 * (self.beta_max - self.beta_min) * s**2
        return torch.exp(-0.5 * big_t), torch.sqrt(-torch.expm1(-big_t))

    def _values(self, t: Tensor) -> SchedulerOutput:
        alpha, sigma = self._alpha_sigma(t)
        beta = self.beta_min + (self.beta_max - self.beta_min) * (1 - t)
        if bool((sigma <= 0).any()):
            raise ValueError(
                f"{self!r}: d sigma_t / dt is infinite at t = 1 (sigma_t ~ sqrt(beta_min (1 - t))); t must be < 1"
            )
        d_alpha = 0.5 * beta * alpha
        return SchedulerOutput(alpha, sigma, d_alpha, -alpha * d_alpha / sigma)

    def time_for_snr(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        """Closed form: T = log(1 + sigma^2 / alpha^2), then 1 - t solves the quadratic T(t) = T.

        T is computed as log1p((sigma / alpha)^2) where sigma <= alpha (high SNR: no cancellation as
        T -> 0, so t keeps its digits next to 1), and as log1p((alpha / sigma)^2) - 2 log(alpha / sigma)
        elsewhere (no overflow of the squared ratio). See :meth:`Scheduler.time_for_snr`.
        """
        alpha, sigma = _snr_pair(alpha, sigma)
        high = sigma <= alpha
        ratio = torch.where(high, sigma, alpha) / torch.where(high, alpha, sigma)  # in [0, 1]
        big_t = torch.log1p(ratio**2) - 2 * torch.log(torch.where(high, torch.ones_like(ratio), ratio))
        spread = self.beta_max - self.beta_min
        s = 2 * big_t / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * spread * big_t))
        if bool((~torch.isfinite(s) | (s > 1 + 8 * torch.finfo(s.dtype).eps)).any()):
            raise _out_of_range(repr(self), "below")
        return (1 - s).clamp(0, 1)
