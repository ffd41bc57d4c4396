"""Conditional probability paths p_t(x | z) and their conditional velocities.

Convention: t = 0 is the source p_0 = N(0, I) (noise), t = 1 is the data.
Batch first: a sample has shape ``(B, *D)``; a time is a float, a 0-d tensor or a
tensor of shape (B,). dtype and device follow the inputs.

Sources: Lipman et al. (2023), *Flow Matching for Generative Modeling*,
Section 4 (eqs. 10-15 for Gaussian paths, eqs. 20-23 for the CondOT path);
Lipman et al. (2024), *Flow Matching Guide and Code*, Section 4; Tong et al.
(2023) for the linear path with z = (x0, x1) and a constant sigma.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import as_time, check_batch, check_same_shape, unsqueeze_like

__all__ = ["PathSample", "ProbPath", "LinearPath", "GaussianPath"]


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


class ProbPath(ABC):
    """Abstract conditional probability path p_t(x | z) with velocity u_t(x | z).

    A subclass defines how to draw x_t given a source draw ``x0`` and a data
    point ``x1`` (:meth:`sample`), the conditional velocity field
    (:meth:`conditional_velocity`) and, where it exists, the conditional
    log-density (:meth:`log_prob`). See Lipman et al. (2023), Section 3.
    """

    @abstractmethod
    def sample(self, x0: Tensor, x1: Tensor, t: float | Tensor, generator: torch.Generator | None = None) -> PathSample:
        """Draw x_t ~ p_t(x | z) and return it with its conditional velocity."""

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


class LinearPath(ProbPath):
    """Linear (straight-line) conditional path with z = (x0, x1).

    x_t = (1 - t) x0 + t x1 + sigma * eps,   eps ~ N(0, I),
    u_t(x | x0, x1) = x1 - x0.

    The target is x1 - x0, the time derivative of x_t for fixed (x0, x1, eps);
    it does not depend on x. With sigma = 0 this is the rectified-flow /
    CondOT interpolant (Lipman et al. 2024, Section 4.7; Liu et al. 2023);
    with sigma > 0 it is the independent-coupling CFM path of Tong et al. (2023),
    whose conditional density is N((1 - t) x0 + t x1, sigma^2 I).

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

    def __init__(self, sigma: float = 0.0) -> None:
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
            raise TypeError(f"sigma must be a float >= 0; got {type(sigma).__name__}")
        if not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"sigma must be a finite float >= 0; got {sigma}")
        self.sigma = float(sigma)

    def __repr__(self) -> str:
        return f"LinearPath(sigma={self.sigma})"

    def sample(self, x0: Tensor, x1: Tensor, t: float | Tensor, generator: torch.Generator | None = None) -> PathSample:
        """Draw x_t = (1 - t) x0 + t x1 + sigma eps and return it with u_t = x1 - x0.

        Args:
            x0: source draws, shape ``(B, *D)``, floating dtype.
            x1: data points, shape ``(B, *D)``, same shape as x0.
            t: times in [0, 1]; a float, a 0-d tensor or shape (B,).
            generator: random generator for eps (only used when sigma > 0).

        Returns:
            A :class:`PathSample` with x_t and u_t of shape ``(B, *D)``, t of shape (B,).

        Raises:
            ValueError: if x0 and x1 differ in shape or t is outside [0, 1].
            TypeError: if x0 or x1 is not a floating tensor.
        """
        x0, x1 = self._pair(x0, x1)
        t = as_time(t, x1)
        tt = unsqueeze_like(t, x1)
        x_t = (1 - tt) * x0 + tt * x1
        if self.sigma > 0:
            eps = torch.randn(x1.shape, generator=generator, dtype=x1.dtype, device=x1.device)
            x_t = x_t + self.sigma * eps
        return PathSample(x_t=x_t, u_t=x1 - x0, t=t, x0=x0, x1=x1)

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
        mean = (1 - tt) * x0 + tt * x1
        std = torch.full_like(t, self.sigma)
        return _gaussian_log_prob(x, mean, std)


class GaussianPath(ProbPath):
    """Conical Gaussian conditional path with z = x1 (the CondOT path of Lipman et al. 2023).

    p_t(x | x1) = N(x; t x1, s_t^2 I),   s_t = 1 - (1 - sigma_min) t,
    u_t(x | x1) = (x1 - (1 - sigma_min) x) / s_t.

    Lipman et al. (2023), eqs. 20-21. With sigma_min = 0 (the seed's path),
    p_t(x | x1) = N(t x1, (1 - t)^2 I) and u_t(x | x1) = (x1 - x) / (1 - t).
    The seed slide writes (x - x1) / (1 - t): that sign is wrong, since the field
    must point from x towards x1.

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

    def __init__(self, sigma_min: float = 0.0) -> None:
        if isinstance(sigma_min, bool) or not isinstance(sigma_min, (int, float)):
            raise TypeError(f"sigma_min must be a float in [0, 1); got {type(sigma_min).__name__}")
        if not (0.0 <= sigma_min < 1.0):
            raise ValueError(f"sigma_min must lie in [0, 1); got {sigma_min}")
        self.sigma_min = float(sigma_min)

    def __repr__(self) -> str:
        return f"GaussianPath(sigma_min={self.sigma_min})"

    def std(self, t: Tensor) -> Tensor:
        """s_t = 1 - (1 - sigma_min) t, the standard deviation of p_t(x | x1); same shape as t."""
        return 1 - (1 - self.sigma_min) * t

    def sample(self, x0: Tensor, x1: Tensor, t: float | Tensor, generator: torch.Generator | None = None) -> PathSample:
        """Draw x_t = t x1 + s_t x0 with x0 ~ N(0, I), and u_t = x1 - (1 - sigma_min) x0.

        x0 is the standard normal draw that supplies the noise (the conditional
        flow psi_t(x0) of Lipman et al. 2023, eq. 22). Writing the target through
        x0 rather than as (x1 - (1 - sigma_min) x_t) / s_t gives the same value
        and stays finite at t = 1.

        Args:
            x0: standard normal draws, shape ``(B, *D)``, floating dtype.
            x1: data points, shape ``(B, *D)``.
            t: times in [0, 1]; a float, a 0-d tensor or shape (B,).
            generator: unused (all randomness is in x0); accepted for a uniform API.

        Returns:
            A :class:`PathSample`.

        Raises:
            ValueError: if x0 and x1 differ in shape or t is outside [0, 1].
            TypeError: if x0 or x1 is not a floating tensor.
        """
        x0, x1 = self._pair(x0, x1)
        t = as_time(t, x1)
        tt = unsqueeze_like(t, x1)
        x_t = tt * x1 + self.std(tt) * x0
        u_t = x1 - (1 - self.sigma_min) * x0
        return PathSample(x_t=x_t, u_t=u_t, t=t, x0=x0, x1=x1)

    def _std_checked(self, t: Tensor) -> Tensor:
        s = self.std(t)
        if bool((s <= 0).any()):
            raise ValueError(
                "GaussianPath(sigma_min=0) is a point mass at t = 1, where u_t(x | x1) and "
                "log p_t(x | x1) are undefined; t must be < 1 (or use sigma_min > 0)"
            )
        return s

    def conditional_velocity(
        self, x: Tensor, t: float | Tensor, x0: Tensor | None = None, x1: Tensor | None = None
    ) -> Tensor:
        """u_t(x | x1) = (x1 - (1 - sigma_min) x) / s_t, shape ``(B, *D)`` (Lipman et al. 2023, eq. 21).

        Args:
            x: points, shape ``(B, *D)``.
            t: times in [0, 1]; t = 1 needs sigma_min > 0.
            x0: ignored (z = x1 for this path).
            x1: data points, shape ``(B, *D)``.

        Raises:
            ValueError: if x1 is missing or of another shape, t is outside [0, 1],
                or t = 1 with sigma_min = 0.
        """
        check_batch(x, "x")
        x1 = _required(x1, "x1", "GaussianPath")
        check_same_shape(x1, x, "x1", "x")
        t = as_time(t, x)
        s = unsqueeze_like(self._std_checked(t), x)
        return (x1 - (1 - self.sigma_min) * x) / s

    def log_prob(self, x: Tensor, t: float | Tensor, x0: Tensor | None = None, x1: Tensor | None = None) -> Tensor:
        """log N(x; t x1, s_t^2 I), shape (B,) (Lipman et al. 2023, eqs. 10 and 20).

        Raises:
            ValueError: if x1 is missing or of another shape, t is outside [0, 1],
                or t = 1 with sigma_min = 0 (no density there).
        """
        check_batch(x, "x")
        x1 = _required(x1, "x1", "GaussianPath")
        check_same_shape(x1, x, "x1", "x")
        t = as_time(t, x)
        s = self._std_checked(t)
        return _gaussian_log_prob(x, unsqueeze_like(t, x) * x1, s)


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
            ValueError: if x0 and x1 differ in shape or t is outside [0, 1].
            TypeError: if x0 or x1 is not a floating tensor.
        """
        x0, x1 = self._pair(x0, x1)
        t = self._times(t, x1)
        eps = torch.randn(x1.shape, generator=generator, dtype=x1.dtype, device=x1.device).to(t.dtype)
        x_t = self.mean(x0, x1, t) + unsqueeze_like(self.std(t), x1) * eps
        u_t = (x1 - x0).to(t.dtype) + self.sigma * unsqueeze_like(self._eps_coefficient(t), x1) * eps
        return PathSample(x_t=x_t.to(x1.dtype), u_t=u_t.to(x1.dtype), t=t, x0=x0, x1=x1)

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


__all__ += ["SchrodingerBridgePath"]
