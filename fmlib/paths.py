"""Conditional probability paths p_t(x | z), their schedulers and conditional velocities.

Convention: t = 0 is the source p_0 = N(0, I) (noise), t = 1 is the data.
Batch first: a sample has shape ``(B, *D)``; a time is a float, a 0-d tensor or a
tensor of shape (B,). dtype and device follow the inputs. When a state is float16 or
bfloat16, times and arithmetic use ``torch.promote_types(x.dtype, torch.float32)``
(a time is never rounded to the state's precision) and results come back in x's dtype.

Every path here is affine in a Gaussian source: given the data point x1 and
x0 ~ N(0, I), x_t = alpha_t x1 + sigma_t x0. A :class:`Scheduler` supplies
(alpha_t, sigma_t) and their time derivatives; :class:`AffinePath` turns it into a
path, with the maps between the velocity, the denoiser E[x1 | x_t], the noise
predictor E[x0 | x_t] and the score grad log p_t. :class:`GaussianPath` and
:class:`LinearPath` are affine paths with the CondOT scheduler.

Sources: Lipman et al. (2023), *Flow Matching for Generative Modeling*,
Section 4 (eqs. 10-15 for Gaussian paths, eqs. 20-23 for the CondOT path);
Lipman et al. (2024), *Flow Matching Guide and Code*, Section 4.8 (affine
conditional flows: schedulers, velocity parameterisations, scheduler change,
Gaussian paths); Song et al. (2021), *Score-Based Generative Modeling through SDEs*
(the variance-preserving schedule); Tong et al. (2024) for the linear path with
z = (x0, x1) and a constant sigma.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import ReadOnlyParameters, as_time, check_batch, check_same_shape, check_velocity_output, unsqueeze_like
from .schedulers import CondOTScheduler, Scheduler, SchedulerOutput, _bisect_time, _scheduler_time, _snr_pair

__all__ = [
    "PathSample",
    "ProbPath",
    "AffinePath",
    "change_scheduler",
    "LinearPath",
    "GaussianPath",
    "SchrodingerBridgePath",
    "PREDICTIONS",
]

PREDICTIONS = ("velocity", "x1", "epsilon")
"""What a network may predict on an affine path: the velocity, the data point x1 or the noise x0."""


@dataclass
class PathSample:
    """A draw from a conditional path, with its regression target.

    Attributes:
        x_t: the point x_t ~ p_t(x | z), shape ``(B, *D)``.
        u_t: the conditional velocity u_t(x_t | z) at that point, shape ``(B, *D)``.
            This is the target that the CFM loss regresses.
        t: the times, shape (B,).
        x0: the source draw, shape ``(B, *D)``.
        x1: the data point, shape ``(B, *D)``.
    """

    x_t: Tensor
    u_t: Tensor
    t: Tensor
    x0: Tensor
    x1: Tensor


class ProbPath(ReadOnlyParameters, ABC):
    """Abstract conditional probability path p_t(x | z) with velocity u_t(x | z).

    A subclass defines how to draw x_t given a source draw ``x0`` and a data
    point ``x1`` (:meth:`sample`), the conditional velocity field
    (:meth:`conditional_velocity`) and, where it exists, the conditional
    log-density (:meth:`log_prob`). See Lipman et al. (2023), Section 3.

    The parameters of fmlib's paths (``sigma``, ``sigma_min``, ``scheduler``) are read-only:
    assigning one raises AttributeError; build a new path instead.
    """

    _kind = "path"

    @abstractmethod
    def sample(self, x0: Tensor, x1: Tensor, t: float | Tensor, generator: torch.Generator | None = None) -> PathSample:
        """Draw x_t ~ p_t(x | z) and return it with its conditional velocity."""

    def _sample_trusted(self, x0: Tensor, x1: Tensor, t: Tensor, generator: torch.Generator | None) -> PathSample:
        """:meth:`sample` on inputs checked already (x0, x1 of one floating shape; t of shape (B,) in [0, 1], in
        x1's compute dtype): the training loop checks its draws once, not at every step. Default: :meth:`sample`."""
        return self.sample(x0, x1, t, generator)

    @abstractmethod
    def conditional_velocity(
        self, x: Tensor, t: float | Tensor, x0: Tensor | None = None, x1: Tensor | None = None
    ) -> Tensor:
        """The conditional velocity u_t(x | z), shape ``(B, *D)``."""

    @abstractmethod
    def log_prob(self, x: Tensor, t: float | Tensor, x0: Tensor | None = None, x1: Tensor | None = None) -> Tensor:
        """The conditional log-density log p_t(x | z), shape (B,)."""

    @staticmethod
    def _pair(x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
        check_batch(x0, "x0")
        check_batch(x1, "x1")
        check_same_shape(x0, x1, "x0", "x1")
        return x0, x1


def _required(value: Tensor | None, name: str, path: str) -> Tensor:
    if value is None:
        raise ValueError(f"{path} needs {name}: its condition z includes {name}; got None")
    return check_batch(value, name)


def _gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log N(x; mean, std^2 I) summed over features; std has shape (B,)."""
    d = x[0].numel()
    sq = (x - mean).flatten(1).pow(2).sum(dim=1)
    return -0.5 * sq / std**2 - d * torch.log(std) - 0.5 * d * math.log(2 * math.pi)


# -- the affine path -----------------------------------------------------------------------------


def _first_bad(t: Tensor, bad: Tensor) -> float:
    return float(t.reshape(-1)[bad.reshape(-1)][0])


class AffinePath(ProbPath):
    """The affine Gaussian path x_t = alpha_t x1 + sigma_t x0, x0 ~ N(0, I), with z = x1.

    p_t(x | x1) = N(x; alpha_t x1, sigma_t^2 I) and
    u_t(x | x1) = d_alpha_t x1 + d_sigma_t (x - alpha_t x1) / sigma_t,
    where (alpha_t, sigma_t, d_alpha_t, d_sigma_t) come from the scheduler.
    Lipman et al. (2024), Section 4.8; Lipman et al. (2023), Theorem 3.

    Because x_t is affine in a Gaussian x0, a trained velocity v(x, t) = E[u_t | x_t = x]
    determines the denoiser x1_hat = E[x1 | x_t = x], the noise predictor
    eps_hat = E[x0 | x_t = x] and the score grad log p_t(x) = -eps_hat / sigma_t, through
    x = alpha_t x1_hat + sigma_t eps_hat and v = d_alpha_t x1_hat + d_sigma_t eps_hat
    (Lipman et al. 2024, Section 4.8.1, and for the score Section 4.8.3). The methods
    ``velocity_to_x1``, ``x1_to_velocity``, ``velocity_to_epsilon``, ``epsilon_to_velocity``,
    ``velocity_to_score`` and ``score_to_velocity`` are these closed forms. Each takes
    ``(value, x, t)`` with value and x of shape ``(B, *D)`` and t a float, 0-d or (B,) tensor,
    and returns x's shape and dtype. A map that divides by sigma_t or alpha_t raises
    ValueError where that coefficient is 0, and every map raises rather than return a value
    that overflows.

    Args:
        scheduler: a :class:`Scheduler`.

    Raises:
        TypeError: if scheduler is not a Scheduler.

    Example:
        >>> import torch
        >>> from fmlib import CosineScheduler
        >>> path = AffinePath(CosineScheduler())
        >>> x, t = torch.tensor([[1.0, 0.0]]), 0.5
        >>> v = torch.tensor([[0.3, -0.2]])
        >>> torch.allclose(path.x1_to_velocity(path.velocity_to_x1(v, x, t), x, t), v)
        True
    """

    _parameters: tuple[str, ...] = ("scheduler",)

    def __init__(self, scheduler: Scheduler) -> None:
        if not isinstance(scheduler, Scheduler):
            raise TypeError(
                f"scheduler must be a fmlib Scheduler (e.g. CosineScheduler()); got {type(scheduler).__name__}"
            )
        self.scheduler = scheduler

    def __repr__(self) -> str:
        return f"AffinePath({self.scheduler!r})"

    # -- coefficients of p_t(x | x1) -------------------------------------------------------------

    def _coef(self, t: Tensor) -> SchedulerOutput:
        return self.scheduler._values(t)

    def coefficients(self, t: float | Tensor) -> SchedulerOutput:
        """alpha_t, sigma_t and their derivatives for p_t(x | x1) = N(x; alpha_t x1, sigma_t^2 I).

        x0 is integrated out, so this is the Gaussian that :class:`~fmlib.EmpiricalMarginal` mixes.
        For an AffinePath it is the scheduler's output.

        Args:
            t: a float or a floating tensor of any shape with values in [0, 1].

        Returns:
            A :class:`SchedulerOutput` whose fields have t's shape and dtype.

        Raises:
            ValueError, TypeError: as for calling a :class:`Scheduler`.
        """
        return self._coef(_scheduler_time(t))

    def time_for_snr(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        """The time at which this path's alpha_t / sigma_t equals alpha / sigma; see :meth:`Scheduler.time_for_snr`."""
        return self.scheduler.time_for_snr(alpha, sigma)

    def _coef_like(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        c = self._coef(t)
        return tuple(unsqueeze_like(v, x) for v in (c.alpha_t, c.sigma_t, c.d_alpha_t, c.d_sigma_t))  # type: ignore[return-value]

    def _sigma_positive(self, sigma: Tensor, t: Tensor) -> None:
        bad = sigma.reshape(-1) <= 0
        if bool(bad.any()):
            raise ValueError(
                f"{self!r} has sigma_t = 0 at t = {_first_bad(t, bad):g}: p_t(x | x1) is a point mass there, "
                "where u_t(x | x1), log p_t(x | x1) and the score are undefined; t must be < 1 "
                "(or use a path with sigma_t > 0 at t = 1)"
            )

    # -- the conditional path ---------------------------------------------------------------------

    def sample(self, x0: Tensor, x1: Tensor, t: float | Tensor, generator: torch.Generator | None = None) -> PathSample:
        """Draw x_t = alpha_t x1 + sigma_t x0 and return it with u_t = d_alpha_t x1 + d_sigma_t x0.

        x0 is the N(0, I) draw that supplies the noise. Writing the target through x0 rather
        than as a function of x_t keeps it finite at t = 1.

        Args:
            x0: standard normal draws, shape ``(B, *D)``, floating dtype.
            x1: data points, shape ``(B, *D)``.
            t: times in [0, 1]; a float, a 0-d tensor or shape (B,).
            generator: unused (all randomness is in x0); accepted for a uniform API.

        Returns:
            A :class:`PathSample`; x_t and u_t in x1's dtype, t in the compute dtype (at least float32).

        Raises:
            ValueError: if x0 and x1 differ in shape or t is outside [0, 1].
            TypeError: if x0 or x1 is not a floating tensor.
        """
        x0, x1 = self._pair(x0, x1)
        return self._sample_trusted(x0, x1, as_time(t, x1), generator)

    def _sample_trusted(self, x0: Tensor, x1: Tensor, t: Tensor, generator: torch.Generator | None) -> PathSample:
        a, s, da, ds = self._coef_like(t, x1)
        x0c, x1c = x0.to(t.dtype), x1.to(t.dtype)
        x_t = (a * x1c + s * x0c).to(x1.dtype)
        u_t = (da * x1c + ds * x0c).to(x1.dtype)
        return PathSample(x_t=x_t, u_t=u_t, t=t, x0=x0, x1=x1)

    def conditional_velocity(
        self, x: Tensor, t: float | Tensor, x0: Tensor | None = None, x1: Tensor | None = None
    ) -> Tensor:
        """u_t(x | x1) = d_alpha_t x1 + d_sigma_t (x - alpha_t x1) / sigma_t, shape ``(B, *D)``.

        Lipman et al. (2023), Theorem 3 (eq. 15); Lipman et al. (2024), Section 4.8.

        Args:
            x: points, shape ``(B, *D)``.
            t: times in [0, 1]; where sigma_t = 0 (t = 1 for most schedulers) it raises.
            x0: ignored (z = x1 for this path).
            x1: data points, shape ``(B, *D)``.

        Raises:
            ValueError: if x1 is missing or of another shape, t is outside [0, 1], or sigma_t = 0.
        """
        check_batch(x, "x")
        x1 = _required(x1, "x1", type(self).__name__)
        check_same_shape(x1, x, "x1", "x")
        t = as_time(t, x)
        a, s, da, ds = self._coef_like(t, x)
        self._sigma_positive(s, t)
        x1c = x1.to(t.dtype)
        return (da * x1c + ds * (x.to(t.dtype) - a * x1c) / s).to(x.dtype)

    def log_prob(self, x: Tensor, t: float | Tensor, x0: Tensor | None = None, x1: Tensor | None = None) -> Tensor:
        """log N(x; alpha_t x1, sigma_t^2 I), shape (B,) (Lipman et al. 2023, eq. 10).

        Raises:
            ValueError: if x1 is missing or of another shape, t is outside [0, 1],
                or sigma_t = 0 (no density there).
        """
        check_batch(x, "x")
        x1 = _required(x1, "x1", type(self).__name__)
        check_same_shape(x1, x, "x1", "x")
        t = as_time(t, x)
        c = self._coef(t)
        self._sigma_positive(c.sigma_t, t)
        mean = unsqueeze_like(c.alpha_t, x) * x1.to(t.dtype)
        return _gaussian_log_prob(x.to(t.dtype), mean, c.sigma_t).to(x.dtype)

    def target(self, sample: PathSample, prediction: str = "velocity") -> Tensor:
        """The regression target for a network that predicts ``prediction`` at ``sample.x_t``.

        ``"velocity"``: u_t (the CFM target); ``"x1"``: the data point x1 (its regression gives
        E[x1 | x_t]); ``"epsilon"``: the noise x0 (its regression gives E[x0 | x_t]).

        Raises:
            ValueError: for a prediction not in :data:`PREDICTIONS`.
        """
        if prediction == "velocity":
            return sample.u_t
        if prediction == "x1":
            return sample.x1
        if prediction == "epsilon":
            return self._epsilon(sample)
        raise ValueError(f"prediction must be one of {PREDICTIONS}; got {prediction!r}")

    def _epsilon(self, sample: PathSample) -> Tensor:
        return sample.x0

    # -- parameterisations ------------------------------------------------------------------------

    def _prep(self, value: Tensor, x: Tensor, t: float | Tensor, name: str) -> tuple[Tensor, ...]:
        check_batch(value, name)
        check_batch(x, "x")
        check_same_shape(value, x, name, "x")
        tc = as_time(t, x)
        a, s, da, ds = self._coef_like(tc, x)
        return value.to(tc.dtype), x.to(tc.dtype), tc, a, s, da, ds

    def _snr_rate(self, a: Tensor, s: Tensor, da: Tensor, ds: Tensor, t: Tensor) -> Tensor:
        """d_alpha sigma - d_sigma alpha = sigma^2 d/dt (alpha / sigma): > 0 for an increasing SNR."""
        rate = da * s - ds * a
        bad = rate.reshape(-1) <= 0
        if bool(bad.any()):
            raise ValueError(
                f"{self!r}: d_alpha_t sigma_t - d_sigma_t alpha_t = sigma_t^2 d/dt (alpha_t / sigma_t) is <= 0 "
                f"at t = {_first_bad(t, bad):g}, so the map is undefined there (the velocity carries no "
                "information about x1 where the signal-to-noise ratio stands still, e.g. t = 0 for "
                "PolynomialScheduler(n > 1))"
            )
        return rate

    def _nonzero(self, coef: Tensor, t: Tensor, what: str, method: str) -> None:
        bad = coef.reshape(-1) == 0
        if bool(bad.any()):
            raise ValueError(
                f"{self!r}.{method} divides by {what}, which is 0 at t = {_first_bad(t, bad):g}; "
                f"the map is undefined there (choose t with {what} > 0)"
            )

    def _finish(self, out: Tensor, x: Tensor, t: Tensor, method: str) -> Tensor:
        out = out.to(x.dtype)  # checked after the cast: float16 overflows where float32 does not
        if not bool(torch.isfinite(out).all()):
            raise ValueError(
                f"{self!r}.{method} overflowed (NaN or inf) for t in [{float(t.min()):g}, {float(t.max()):g}]: "
                "a coefficient it divides by is too close to 0 there, or the inputs are not finite"
            )
        return out.to(x.dtype)

    def velocity_to_x1(self, v: Tensor, x: Tensor, t: float | Tensor) -> Tensor:
        """The denoiser x1_hat = (sigma_t v - d_sigma_t x) / (d_alpha_t sigma_t - d_sigma_t alpha_t).

        Defined at every t, including sigma_t = 0 (where it gives x / alpha_t).

        Raises:
            ValueError: for shapes that differ, t outside [0, 1], or an overflow.
        """
        vc, xc, tc, a, s, da, ds = self._prep(v, x, t, "v")
        return self._finish((s * vc - ds * xc) / self._snr_rate(a, s, da, ds, tc), x, tc, "velocity_to_x1")

    def x1_to_velocity(self, x1_hat: Tensor, x: Tensor, t: float | Tensor) -> Tensor:
        """v = d_alpha_t x1_hat + d_sigma_t (x - alpha_t x1_hat) / sigma_t.

        Raises:
            ValueError: where sigma_t = 0 (x is then alpha_t x1 and the velocity is not determined
                by x1_hat), for shapes that differ, t outside [0, 1], or an overflow.
        """
        pc, xc, tc, a, s, da, ds = self._prep(x1_hat, x, t, "x1_hat")
        self._nonzero(s, tc, "sigma_t", "x1_to_velocity")
        return self._finish(da * pc + ds * (xc - a * pc) / s, x, tc, "x1_to_velocity")

    def velocity_to_epsilon(self, v: Tensor, x: Tensor, t: float | Tensor) -> Tensor:
        """The noise predictor eps_hat = (d_alpha_t x - alpha_t v) / (d_alpha_t sigma_t - d_sigma_t alpha_t).

        Defined at every t, including alpha_t = 0 (where it gives x / sigma_t).

        Raises:
            ValueError: for shapes that differ, t outside [0, 1], or an overflow.
        """
        vc, xc, tc, a, s, da, ds = self._prep(v, x, t, "v")
        return self._finish((da * xc - a * vc) / self._snr_rate(a, s, da, ds, tc), x, tc, "velocity_to_epsilon")

    def epsilon_to_velocity(self, eps: Tensor, x: Tensor, t: float | Tensor) -> Tensor:
        """v = d_sigma_t eps + d_alpha_t (x - sigma_t eps) / alpha_t.

        Raises:
            ValueError: where alpha_t = 0 (x is then sigma_t x0 and eps does not determine the
                velocity), for shapes that differ, t outside [0, 1], or an overflow.
        """
        ec, xc, tc, a, s, da, ds = self._prep(eps, x, t, "eps")
        self._nonzero(a, tc, "alpha_t", "epsilon_to_velocity")
        return self._finish(ds * ec + da * (xc - s * ec) / a, x, tc, "epsilon_to_velocity")

    def velocity_to_score(self, v: Tensor, x: Tensor, t: float | Tensor) -> Tensor:
        """The score grad log p_t(x) = -eps_hat / sigma_t = (alpha_t v - d_alpha_t x) / (sigma_t rate_t),

        with rate_t = d_alpha_t sigma_t - d_sigma_t alpha_t (Tweedie's formula for a Gaussian source).

        Raises:
            ValueError: where sigma_t = 0 (p_t has no density there), for shapes that differ,
                t outside [0, 1], or an overflow.
        """
        vc, xc, tc, a, s, da, ds = self._prep(v, x, t, "v")
        self._nonzero(s, tc, "sigma_t", "velocity_to_score")
        rate = self._snr_rate(a, s, da, ds, tc)
        return self._finish((a * vc - da * xc) / (s * rate), x, tc, "velocity_to_score")

    def score_to_velocity(self, score: Tensor, x: Tensor, t: float | Tensor) -> Tensor:
        """v = (d_alpha_t / alpha_t) (x + sigma_t^2 score) - d_sigma_t sigma_t score.

        Raises:
            ValueError: where alpha_t = 0 (at t = 0 the score of N(0, I) is -x whatever the data),
                for shapes that differ, t outside [0, 1], or an overflow.
        """
        sc, xc, tc, a, s, da, ds = self._prep(score, x, t, "score")
        self._nonzero(a, tc, "alpha_t", "score_to_velocity")
        return self._finish(da * (xc + s**2 * sc) / a - ds * s * sc, x, tc, "score_to_velocity")


# -- scheduler change ------------------------------------------------------------------------------


def change_scheduler(
    v: Callable[[Tensor, Tensor], Tensor], from_path: AffinePath, to_path: AffinePath
) -> Callable[[Tensor, Tensor], Tensor]:
    """The velocity field of ``to_path``'s marginals, built from a field ``v`` trained on ``from_path``.

    Both paths share the data and the N(0, I) source, so the marginal of ``to_path`` at time r
    is that of ``from_path`` at the time t_r of equal signal-to-noise ratio
    alpha_{t_r} / sigma_{t_r} = alpha'_r / sigma'_r, scaled by
    ``k_r = norm(alpha'_r, sigma'_r) / norm(alpha_{t_r}, sigma_{t_r})`` (Euclidean norms of the pairs),
    so that ``x'_r = k_r x_{t_r}``. The new field is

        v'(x, r) = (d log k_r / dr) x + k_r (d t_r / dr) v(x / k_r, t_r),

    Lipman et al. (2024), Section 4.8.2 (post-training scheduler change). With the exact
    marginal field of ``from_path`` it returns the exact field of ``to_path``; a trained model
    can so be sampled under another schedule with no retraining. d t_r / dr follows from
    differentiating the equal-SNR condition and is computed without dividing by sigma.

    Args:
        v: velocity field ``v(x, t)`` for ``from_path`` (x of shape ``(B, *D)``, t of shape (B,)).
        from_path: the :class:`AffinePath` v was trained on.
        to_path: the :class:`AffinePath` whose marginals the result generates.

    Returns:
        A velocity field ``v'(x, r)`` (same conventions; dtype and device follow x; for a
        float16/bfloat16 state, times and arithmetic are float32). It calls v once per call,
        with per-row times t_r.

    Raises:
        TypeError: if v is not callable or a path is not an AffinePath.
        ValueError: (when called) if ``from_path`` never reaches the signal-to-noise ratio of
            ``to_path`` at r (e.g. the VP path, whose alpha_0 > 0, cannot stand in for CondOT
            near r = 0), for r outside [0, 1], or where a coefficient is singular.

    Example:
        >>> import torch
        >>> data = torch.tensor([[1.0], [-2.0]], dtype=torch.float64)
        >>> from fmlib import EmpiricalMarginal
        >>> from fmlib import CosineScheduler
        >>> ot, cos = GaussianPath(), AffinePath(CosineScheduler())
        >>> v_cos = change_scheduler(EmpiricalMarginal(data, ot).velocity, ot, cos)
        >>> x = torch.tensor([[0.3]], dtype=torch.float64)
        >>> torch.allclose(v_cos(x, 0.6), EmpiricalMarginal(data, cos).velocity(x, 0.6))
        True
    """
    if not callable(v):
        raise TypeError(f"v must be a callable velocity field v(x, t); got {type(v).__name__}")
    for name, p in (("from_path", from_path), ("to_path", to_path)):
        if not isinstance(p, AffinePath):
            raise TypeError(f"{name} must be an AffinePath (e.g. GaussianPath()); got {type(p).__name__}")

    def field(x: Tensor, t: Tensor) -> Tensor:
        check_batch(x, "x")
        r = as_time(t, x)
        new = to_path._coef(r)
        t_r = from_path.time_for_snr(new.alpha_t, new.sigma_t)
        old = from_path._coef(t_r)
        norm_new = new.alpha_t**2 + new.sigma_t**2
        norm_old = old.alpha_t**2 + old.sigma_t**2
        k = torch.sqrt(norm_new / norm_old)
        rate_old = from_path._snr_rate(old.alpha_t, old.sigma_t, old.d_alpha_t, old.d_sigma_t, t_r)
        dt_dr = (new.d_alpha_t * new.sigma_t - new.alpha_t * new.d_sigma_t) / (k**2 * rate_old)
        dlogk = (new.alpha_t * new.d_alpha_t + new.sigma_t * new.d_sigma_t) / norm_new - dt_dr * (
            old.alpha_t * old.d_alpha_t + old.sigma_t * old.d_sigma_t
        ) / norm_old
        xc = x.to(r.dtype)
        kk = unsqueeze_like(k, x)
        inner = check_velocity_output(v((xc / kk).to(x.dtype), t_r), x, "v(x, t)").to(r.dtype)
        out = (unsqueeze_like(dlogk, x) * xc + kk * unsqueeze_like(dt_dr, x) * inner).to(x.dtype)
        if not bool(torch.isfinite(out).all()):
            raise ValueError(
                f"change_scheduler: the new field overflowed (NaN or inf) in {x.dtype} at r = {r.tolist()}"
            )
        return out

    return field


class LinearPath(AffinePath):
    """Linear (straight-line) conditional path with z = (x0, x1).

    x_t = (1 - t) x0 + t x1 + sigma * eps,   eps ~ N(0, I),
    u_t(x | x0, x1) = x1 - x0.

    The target is x1 - x0, the time derivative of x_t for fixed (x0, x1, eps);
    it does not depend on x. With sigma = 0 this is the rectified-flow /
    CondOT interpolant (Lipman et al. 2024, Section 4.7; Liu et al. 2023);
    with sigma > 0 it is the independent-coupling CFM path of Tong et al. (2024),
    whose conditional density is N((1 - t) x0 + t x1, sigma^2 I).

    It is an :class:`AffinePath` with the CondOT scheduler (alpha_t = t, sigma_t = 1 - t)
    plus the constant tube sigma. Given x1 alone (x0 ~ N(0, I) integrated out),
    p_t(x | x1) = N(t x1, ((1 - t)^2 + sigma^2) I), so :meth:`coefficients` reports
    sigma_t = sqrt((1 - t)^2 + sigma^2); the marginal velocity E[x1 - x0 | x_t] equals that
    affine path's, so the parameterisation maps and the exact marginal apply unchanged
    (for sigma > 0, "epsilon" is the standardised noise (x_t - t x1) / sigma_t).

    Args:
        sigma: standard deviation of the Gaussian tube around the segment, >= 0.

    Raises:
        ValueError: if sigma is negative or not finite.
        TypeError: if sigma is not a number.

    Example:
        >>> import torch
        >>> path = LinearPath()
        >>> s = path.sample(torch.tensor([[1.0, -1.0]]), torch.tensor([[3.0, 1.0]]), 0.25)
        >>> s.x_t, s.u_t
        (tensor([[ 1.5000, -0.5000]]), tensor([[2., 2.]]))
    """

    _parameters: tuple[str, ...] = ("scheduler", "sigma")

    def __init__(self, sigma: float = 0.0) -> None:
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
            raise TypeError(f"sigma must be a float >= 0; got {type(sigma).__name__}")
        if not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"sigma must be a finite float >= 0; got {sigma}")
        super().__init__(CondOTScheduler(0.0))
        self.sigma = float(sigma)

    def __repr__(self) -> str:
        return f"LinearPath(sigma={self.sigma})"

    def _coef(self, t: Tensor) -> SchedulerOutput:
        c = self.scheduler._values(t)
        if self.sigma == 0:
            return c
        std = torch.hypot(c.sigma_t, torch.full_like(t, self.sigma))
        return SchedulerOutput(c.alpha_t, std, c.d_alpha_t, c.d_sigma_t * c.sigma_t / std)

    def time_for_snr(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        """The time at which t / sqrt((1 - t)^2 + sigma^2) equals alpha / sigma (bisection when sigma > 0)."""
        if self.sigma == 0:
            return self.scheduler.time_for_snr(alpha, sigma)
        alpha, sigma = _snr_pair(alpha, sigma)

        def values(t: Tensor) -> tuple[Tensor, Tensor]:
            c = self._coef(t)
            return c.alpha_t, c.sigma_t

        return _bisect_time(values, alpha, sigma, repr(self))

    def sample(self, x0: Tensor, x1: Tensor, t: float | Tensor, generator: torch.Generator | None = None) -> PathSample:
        """Draw x_t = (1 - t) x0 + t x1 + sigma eps and return it with u_t = x1 - x0.

        Args:
            x0: source draws, shape ``(B, *D)``, floating dtype.
            x1: data points, shape ``(B, *D)``, same shape as x0.
            t: times in [0, 1]; a float, a 0-d tensor or shape (B,).
            generator: random generator for eps (only used when sigma > 0).

        Returns:
            A :class:`PathSample` with x_t and u_t of shape ``(B, *D)`` in x1's dtype, t of shape (B,)
            in the compute dtype (at least float32).

        Raises:
            ValueError: if x0 and x1 differ in shape or t is outside [0, 1].
            TypeError: if x0 or x1 is not a floating tensor.
        """
        x0, x1 = self._pair(x0, x1)
        return self._sample_trusted(x0, x1, as_time(t, x1), generator)

    def _sample_trusted(self, x0: Tensor, x1: Tensor, t: Tensor, generator: torch.Generator | None) -> PathSample:
        tt = unsqueeze_like(t, x1)
        x_t = (1 - tt) * x0.to(t.dtype) + tt * x1.to(t.dtype)
        if self.sigma > 0:
            eps = torch.randn(x1.shape, generator=generator, dtype=t.dtype, device=x1.device)
            x_t = x_t + self.sigma * eps
        return PathSample(x_t=x_t.to(x1.dtype), u_t=x1 - x0, t=t, x0=x0, x1=x1)

    def _epsilon(self, sample: PathSample) -> Tensor:
        if self.sigma == 0:
            return sample.x0
        tc = sample.t
        a, s, _, _ = self._coef_like(tc, sample.x_t)
        return ((sample.x_t.to(tc.dtype) - a * sample.x1.to(tc.dtype)) / s).to(sample.x_t.dtype)

    def conditional_velocity(
        self, x: Tensor, t: float | Tensor, x0: Tensor | None = None, x1: Tensor | None = None
    ) -> Tensor:
        """u_t(x | x0, x1) = x1 - x0, shape ``(B, *D)``; the same at every x and t.

        Raises:
            ValueError: if x0 or x1 is missing, shapes differ, or t is outside [0, 1].
        """
        check_batch(x, "x")
        x0 = _required(x0, "x0", "LinearPath")
        x1 = _required(x1, "x1", "LinearPath")
        check_same_shape(x0, x, "x0", "x")
        check_same_shape(x1, x, "x1", "x")
        as_time(t, x)
        return x1 - x0

    def log_prob(self, x: Tensor, t: float | Tensor, x0: Tensor | None = None, x1: Tensor | None = None) -> Tensor:
        """log N(x; (1 - t) x0 + t x1, sigma^2 I), shape (B,).

        Raises:
            ValueError: if sigma = 0 (the path is a point mass with no density),
                if x0 or x1 is missing, shapes differ, or t is outside [0, 1].
        """
        check_batch(x, "x")
        x0 = _required(x0, "x0", "LinearPath")
        x1 = _required(x1, "x1", "LinearPath")
        check_same_shape(x0, x, "x0", "x")
        check_same_shape(x1, x, "x1", "x")
        t = as_time(t, x)
        if self.sigma == 0:
            raise ValueError("LinearPath(sigma=0) is a point mass given (x0, x1) and has no density; use sigma > 0")
        tt = unsqueeze_like(t, x)
        mean = (1 - tt) * x0.to(t.dtype) + tt * x1.to(t.dtype)
        std = torch.full_like(t, self.sigma)
        return _gaussian_log_prob(x.to(t.dtype), mean, std).to(x.dtype)


class GaussianPath(AffinePath):
    """Conical Gaussian conditional path with z = x1 (the CondOT path of Lipman et al. 2023).

    p_t(x | x1) = N(x; t x1, s_t^2 I),   s_t = 1 - (1 - sigma_min) t,
    u_t(x | x1) = (x1 - (1 - sigma_min) x) / s_t.

    Lipman et al. (2023), eqs. 20-21: the :class:`AffinePath` of
    ``CondOTScheduler(sigma_min)``. With sigma_min = 0, p_t(x | x1) = N(t x1, (1 - t)^2 I)
    and u_t(x | x1) = (x1 - x) / (1 - t), a field that points from x towards x1
    (written (x - x1) / (1 - t), the sign would be wrong).

    Args:
        sigma_min: standard deviation of the path at t = 1, in [0, 1).

    Raises:
        ValueError: if sigma_min is outside [0, 1).
        TypeError: if sigma_min is not a number.

    Example:
        >>> import torch
        >>> path = GaussianPath()
        >>> path.conditional_velocity(torch.tensor([[0.0, 0.0]]), 0.5, x1=torch.tensor([[1.0, 2.0]]))
        tensor([[2., 4.]])
    """

    _parameters: tuple[str, ...] = ("scheduler", "sigma_min")

    def __init__(self, sigma_min: float = 0.0) -> None:
        if isinstance(sigma_min, bool) or not isinstance(sigma_min, (int, float)):
            raise TypeError(f"sigma_min must be a float in [0, 1); got {type(sigma_min).__name__}")
        if not (0.0 <= sigma_min < 1.0):
            raise ValueError(f"sigma_min must lie in [0, 1); got {sigma_min}")
        super().__init__(CondOTScheduler(sigma_min))
        self.sigma_min = float(sigma_min)

    def __repr__(self) -> str:
        return f"GaussianPath(sigma_min={self.sigma_min})"

    def std(self, t: Tensor) -> Tensor:
        """s_t = 1 - (1 - sigma_min) t, the standard deviation of p_t(x | x1); same shape as t."""
        return 1 - (1 - self.sigma_min) * t


class SchrodingerBridgePath(ProbPath):
    """Brownian-bridge conditional path with z = (x0, x1), the path of SB-CFM (Tong et al. 2024).

    x_t = (1 - t) x0 + t x1 + sigma sqrt(t (1 - t)) eps,   eps ~ N(0, I),

    so p_t(x | x0, x1) = N(mu_t, s_t^2 I) with mu_t = (1 - t) x0 + t x1 and s_t = sigma sqrt(t (1 - t)):
    the marginal at time t of a Brownian motion with diffusion coefficient sigma pinned at x0 and x1.
    Its conditional velocity (Tong et al. 2024, SB-CFM) is the time derivative of the mean
    plus that of the standard deviation times eps, written in x as

    u_t(x | x0, x1) = (x1 - x0) + (1 - 2t) / (2 t (1 - t)) (x - mu_t),

    which at a sample is (x1 - x0) + sigma (1 - 2t) / (2 sqrt(t (1 - t))) eps. Trained with the entropic
    OT coupling of regularisation 2 sigma^2 (:func:`~fmlib.sinkhorn_coupling`) its marginal flow is that of
    the Schrodinger bridge between the source and the data. At t = 0 and t = 1 the path is the point x0
    (or x1); there the velocity is taken as its value on the mean path, x1 - x0 (the x - mu_t term is 0),
    so samples and targets stay finite. Near the ends the target's eps term grows like 1 / sqrt(t).

    Times are handled in ``torch.promote_types(x.dtype, torch.float32)``; results are in x's dtype.

    Args:
        sigma: diffusion coefficient of the bridge, a finite float > 0 (sigma = 0 is ``LinearPath()``).

    Raises:
        ValueError: sigma <= 0 or not finite.
        TypeError: sigma not a number.

    Example:
        >>> import torch
        >>> path = SchrodingerBridgePath(0.5)
        >>> x0, x1 = torch.zeros(1, 2), torch.ones(1, 2)
        >>> path.conditional_velocity(torch.tensor([[0.5, 0.75]]), 0.25, x0=x0, x1=x1)
        tensor([[1.3333, 1.6667]])
    """

    _parameters: tuple[str, ...] = ("sigma",)

    def __init__(self, sigma: float) -> None:
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
            raise TypeError(f"sigma must be a float > 0; got {type(sigma).__name__}")
        if not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"sigma must be a finite float > 0 (sigma = 0 is LinearPath()); got {sigma}")
        self.sigma = float(sigma)

    def __repr__(self) -> str:
        return f"SchrodingerBridgePath(sigma={self.sigma})"

    @staticmethod
    def _times(t: float | Tensor, x: Tensor) -> Tensor:
        """t as shape (B,) in the compute dtype promote_types(x.dtype, float32), checked to lie in [0, 1]."""
        ct = torch.promote_types(x.dtype, torch.float32)
        return as_time(t, torch.empty((x.shape[0],), dtype=ct, device=x.device))

    @staticmethod
    def _given(value: Tensor | None, name: str, x: Tensor) -> Tensor:
        if value is None:
            raise ValueError(f"SchrodingerBridgePath needs {name}: its condition z is (x0, x1); got None")
        check_batch(value, name)
        check_same_shape(value, x, name, "x")
        return value

    def mean(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """mu_t = (1 - t) x0 + t x1 for t of shape (B,) in the compute dtype; in the compute dtype."""
        tt = unsqueeze_like(t, x1)
        return (1 - tt) * x0.to(t.dtype) + tt * x1.to(t.dtype)

    def std(self, t: Tensor) -> Tensor:
        """s_t = sigma sqrt(t (1 - t)), the standard deviation of p_t(x | x0, x1); same shape and dtype as t."""
        return self.sigma * torch.sqrt(t * (1 - t))

    def _eps_coefficient(self, t: Tensor) -> Tensor:
        """ds_t/dt / sigma = (1 - 2t) / (2 sqrt(t (1 - t))), set to 0 at t = 0 and t = 1 (the point masses)."""
        root = torch.sqrt(t * (1 - t))
        inside = root > 0
        return torch.where(inside, (1 - 2 * t) / (2 * torch.where(inside, root, torch.ones_like(root))), 0.0)

    def sample(self, x0: Tensor, x1: Tensor, t: float | Tensor, generator: torch.Generator | None = None) -> PathSample:
        """Draw x_t = mu_t + sigma sqrt(t (1 - t)) eps and return it with u_t = x1 - x0 + sigma (ds/dt) eps.

        Args:
            x0: source draws, shape ``(B, *D)``, floating dtype.
            x1: data points, the same shape.
            t: times in [0, 1]; a float, a 0-d tensor or shape (B,).
            generator: random generator for eps.

        Returns:
            A :class:`PathSample` (x_t, u_t in x1's dtype; t in the compute dtype).

        Raises:
            ValueError: if x0 and x1 differ in shape or t is outside [0, 1], or x_t or u_t overflows x1's
                dtype (a sigma too large for it, e.g. 1e5 in float16).
            TypeError: if x0 or x1 is not a floating tensor.
        """
        x0, x1 = self._pair(x0, x1)
        t = self._times(t, x1)
        eps = torch.randn(x1.shape, generator=generator, dtype=x1.dtype, device=x1.device).to(t.dtype)
        x_t = self.mean(x0, x1, t) + unsqueeze_like(self.std(t), x1) * eps
        u_t = (x1 - x0).to(t.dtype) + self.sigma * unsqueeze_like(self._eps_coefficient(t), x1) * eps
        x_t, u_t = x_t.to(x1.dtype), u_t.to(x1.dtype)  # checked after the cast: float16 overflows first
        if not (bool(torch.isfinite(x_t).all()) and bool(torch.isfinite(u_t).all())):
            raise ValueError(
                f"SchrodingerBridgePath(sigma={self.sigma:g}): x_t or u_t overflows {x1.dtype} (the noise "
                f"sigma sqrt(t (1 - t)) eps and its velocity exceed the dtype's range); use a smaller sigma "
                "or a wider dtype"
            )
        return PathSample(x_t=x_t, u_t=u_t, t=t, x0=x0, x1=x1)

    def conditional_velocity(
        self, x: Tensor, t: float | Tensor, x0: Tensor | None = None, x1: Tensor | None = None
    ) -> Tensor:
        """u_t(x | x0, x1) = (x1 - x0) + (1 - 2t) / (2 t (1 - t)) (x - mu_t), shape ``(B, *D)``.

        Evaluated as (x1 - x0) + [(1 - 2t) / (2 sqrt(t (1 - t)))] [(x - mu_t) / sqrt(t (1 - t))], which is
        finite for points on the bridge at any t > 0; at t = 0 and t = 1 the path is a point and the value
        is x1 - x0.

        Raises:
            ValueError: x0 or x1 missing, shapes differ, t outside [0, 1], or a point so far off the bridge
                for t this close to 0 or 1 that the value overflows (it would be inf); at t = 0 or 1, a point
                that is not the path's point x0 (or x1).
        """
        check_batch(x, "x")
        x0 = self._given(x0, "x0", x)
        x1 = self._given(x1, "x1", x)
        t = self._times(t, x)
        root = torch.sqrt(t * (1 - t))
        offset = x.to(t.dtype) - self.mean(x0, x1, t)
        ends = unsqueeze_like(root == 0, x)
        if bool((ends & (offset != 0)).any()):
            raise ValueError(
                "at t = 0 (t = 1) the bridge is the point x0 (x1) and u_t(x | x0, x1) is only defined there; "
                "x differs from it"
            )
        safe_root = unsqueeze_like(torch.where(root > 0, root, torch.ones_like(root)), x)
        u = (x1 - x0).to(t.dtype) + unsqueeze_like(self._eps_coefficient(t), x) * (offset / safe_root)
        if not bool(torch.isfinite(u).all()):
            raise ValueError(
                "u_t(x | x0, x1) overflows: x is many standard deviations off the bridge at a t this close to 0 "
                "or 1 (the field grows like (x - mu_t) / (t (1 - t)))"
            )
        return u.to(x.dtype)

    def log_prob(self, x: Tensor, t: float | Tensor, x0: Tensor | None = None, x1: Tensor | None = None) -> Tensor:
        """log N(x; mu_t, sigma^2 t (1 - t) I), shape (B,), in the compute dtype.

        Raises:
            ValueError: x0 or x1 missing, shapes differ, t outside [0, 1], or t = 0 or t = 1 (the path is a
                point mass there and has no density).
        """
        check_batch(x, "x")
        x0 = self._given(x0, "x0", x)
        x1 = self._given(x1, "x1", x)
        t = self._times(t, x)
        s = self.std(t)
        if bool((s <= 0).any()):
            raise ValueError("SchrodingerBridgePath is a point mass at t = 0 and t = 1 and has no density there")
        d = x[0].numel()
        z = ((x.to(t.dtype) - self.mean(x0, x1, t)) / unsqueeze_like(s, x)).flatten(1)
        return -0.5 * z.pow(2).sum(dim=1) - d * torch.log(s) - 0.5 * d * math.log(2 * math.pi)
