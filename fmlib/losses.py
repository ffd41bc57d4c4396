"""The conditional flow matching (CFM) loss, with couplings, per-row conditions, weights and time samplers.

Lipman et al. (2023), eq. 9 (L_CFM) and Theorem 2 (L_FM and L_CFM have the same
gradient in theta); Lipman et al. (2024), Section 4.5; Tong et al. (2024), Section 3.2
(couplings); Esser et al. (2024), Section 3.1 (logit-normal time sampling).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real
from typing import Any

import torch
from torch import Tensor

from ._checks import as_time, check_batch, check_finite, check_same_shape, check_velocity_output
from .paths import PREDICTIONS, AffinePath, ProbPath

__all__ = ["cfm_loss", "logit_normal"]

#: A time sampler: ``sampler(n, generator, dtype, device) -> t`` of shape (n,) with values in [0, 1].
TimeSampler = Callable[[int, torch.Generator | None, torch.dtype, torch.device], Tensor]


class logit_normal:  # noqa: N801 (a sampler factory, used like a function: fmlib.logit_normal(0.0, 1.0))
    """The logit-normal time distribution: ``t = sigmoid(loc + scale * n)``, n ~ N(0, 1).

    Esser et al. (2024), Section 3.1, eq. 19: the density
    ``pi(t) = exp(-(logit(t) - loc)^2 / (2 scale^2)) / (scale sqrt(2 pi) t (1 - t))`` puts more
    training times in the middle of [0, 1] than U[0, 1] (scale = 1) and fewer near t = 0 and t = 1;
    ``loc > 0`` leans towards the data (t = 1 in this book), ``loc < 0`` towards the noise.
    Its CDF is ``Phi((logit(t) - loc) / scale)``.

    Args:
        loc: location of logit(t), a finite float.
        scale: standard deviation of logit(t), a finite float > 0.

    Calling ``logit_normal(loc, scale)(n, generator, dtype, device)`` returns n times of shape (n,)
    drawn from ``generator``; it is a valid ``time_sampler`` for :func:`cfm_loss` and :func:`~fmlib.train`.

    Raises:
        ValueError: if loc is not finite or scale is not a finite number > 0.
        TypeError: if loc or scale is not a real number.

    Example:
        >>> import torch
        >>> t = logit_normal(0.0, 1.0)(5, torch.Generator().manual_seed(0), torch.float32, torch.device("cpu"))
        >>> t.shape, bool(((t > 0) & (t < 1)).all())
        (torch.Size([5]), True)
    """

    def __init__(self, loc: float = 0.0, scale: float = 1.0) -> None:
        for name, value in (("loc", loc), ("scale", scale)):
            if isinstance(value, bool) or not isinstance(value, Real):
                raise TypeError(f"logit_normal: {name} must be a finite float; got {type(value).__name__}")
            if not math.isfinite(float(value)):
                raise ValueError(f"logit_normal: {name} must be a finite float; got {value!r}")
        if not scale > 0:
            raise ValueError(f"logit_normal: scale must be > 0; got {scale!r}")
        self.loc, self.scale = float(loc), float(scale)

    def __call__(self, n: int, generator: torch.Generator | None, dtype: torch.dtype, device: torch.device) -> Tensor:
        z = torch.randn(n, generator=generator, dtype=dtype, device=device)
        # sigmoid saturates to exactly 0 or 1 in float32 for |loc + scale z| > 17; keep t in the open interval
        tiny = torch.finfo(dtype).tiny
        below_one = torch.nextafter(torch.ones((), dtype=dtype), torch.zeros((), dtype=dtype)).item()
        return torch.sigmoid(self.loc + self.scale * z).clamp(tiny, below_one)

    def __repr__(self) -> str:
        return f"logit_normal(loc={self.loc:g}, scale={self.scale:g})"


def _uniform(n: int, generator: torch.Generator | None, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.rand(n, generator=generator, dtype=dtype, device=device)


def sample_times(
    time_sampler: str | TimeSampler | None,
    n: int,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """Draw n training times with ``time_sampler`` and check them.

    Args:
        time_sampler: ``None`` or ``"uniform"`` (U[0, 1]), ``"logit_normal"`` (``logit_normal(0, 1)``),
            or a callable ``(n, generator, dtype, device) -> t``.
        n: number of times.
        generator: random generator passed to the sampler.
        dtype, device: of the returned tensor (the sampler is asked for them; its result is cast).

    Returns:
        t of shape (n,), dtype ``dtype``, values in [0, 1].

    Raises:
        ValueError: an unknown name, or a sampler result of another shape, non-finite or outside [0, 1].
        TypeError: a time_sampler that is neither a name nor callable, or a result that is not a floating tensor.
    """
    if time_sampler is None or time_sampler == "uniform":
        return _uniform(n, generator, dtype, device)
    if time_sampler == "logit_normal":
        return logit_normal()(n, generator, dtype, device)
    if isinstance(time_sampler, str):
        raise ValueError(f"time_sampler must be 'uniform', 'logit_normal' or a callable; got {time_sampler!r}")
    if not callable(time_sampler):
        raise TypeError(
            "time_sampler must be 'uniform', 'logit_normal' or a callable (n, generator, dtype, device) -> t; "
            f"got {type(time_sampler).__name__}"
        )
    t = time_sampler(n, generator, dtype, device)
    if not isinstance(t, Tensor) or not t.is_floating_point():
        what = t.dtype if isinstance(t, Tensor) else type(t).__name__
        raise TypeError(f"time_sampler must return a floating tensor of shape ({n},); got {what}")
    if t.shape != (n,):
        raise ValueError(f"time_sampler must return a tensor of shape ({n},); got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("time_sampler must return finite times in [0, 1]; got NaN or inf")
    lo, hi = float(t.min()), float(t.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"time_sampler must return times in [0, 1]; got values in [{lo:g}, {hi:g}]")
    return t.to(dtype=dtype, device=device)


def _check_weights(weights: object, batch: int, device: torch.device) -> Tensor:
    if not isinstance(weights, Tensor):
        raise TypeError(f"weights must be a real tensor of shape ({batch},); got {type(weights).__name__}")
    if weights.dtype == torch.bool or weights.dtype.is_complex:
        raise TypeError(f"weights must be a real tensor of shape ({batch},); got dtype {weights.dtype}")
    if weights.shape != (batch,):
        raise ValueError(f"weights must have shape ({batch},), one per row of x1; got shape {tuple(weights.shape)}")
    if not bool(torch.isfinite(weights).all()):
        raise ValueError("weights must be finite; they hold NaN or inf")
    if batch > 0 and float(weights.min()) < 0:
        raise ValueError(f"weights must be >= 0; got a minimum of {float(weights.min()):g}")
    return weights.to(device)


def _check_permutation(pi: Tensor, batch: int) -> Tensor:
    if pi.dtype == torch.bool or pi.is_floating_point() or pi.is_complex():
        raise ValueError(f"coupling must return an int64 index tensor of shape ({batch},); got dtype {pi.dtype}")
    if pi.shape != (batch,):
        raise ValueError(f"coupling must return an index tensor of shape ({batch},); got shape {tuple(pi.shape)}")
    lo, hi = int(pi.min()), int(pi.max())
    if lo < 0 or hi >= batch:
        raise ValueError(f"coupling must return indices in 0..{batch - 1}; got values in [{lo}, {hi}]")
    return pi.long()


def cfm_loss(
    model: Callable[..., Tensor],
    path: ProbPath,
    x1: Tensor,
    x0: Tensor | None = None,
    t: float | Tensor | None = None,
    generator: torch.Generator | None = None,
    coupling: Callable[[Tensor, Tensor], Any] | None = None,
    *,
    cond: Tensor | None = None,
    weights: Tensor | None = None,
    time_sampler: str | TimeSampler | None = None,
    prediction: str = "velocity",
) -> Tensor:
    """``L_CFM = mean_b w_b || model(x_t, t) - u_t(x_t | z) ||^2`` (w_b = 1 without weights).

    The squared norm is summed over the feature dimensions ``*D`` and averaged over
    the batch (the mean over B, not a division by the sum of the weights), so a single
    row off by a vector e adds ``w_b |e|^2 / B``.

    Args:
        model: a velocity field ``model(x, t)`` taking x of shape ``(B, *D)`` and t of
            shape (B,) and returning a tensor of x's shape; called as ``model(x_t, t, cond)`` when
            ``cond`` is given.
        path: the conditional path (:class:`~fmlib.LinearPath`, :class:`~fmlib.GaussianPath`).
        x1: data batch, shape ``(B, *D)``, floating dtype.
        x0: source batch of x1's shape; defaults to N(0, I) noise drawn with ``generator``.
        t: times in [0, 1] (float, 0-d or shape (B,)); defaults to draws of ``time_sampler``.
        generator: random generator for the defaults and for the path's own noise.
        coupling: optional ``coupling(x0, x1) -> pi``, an int64 index tensor of shape (B,) with values
            in 0..B-1, such that ``x1[pi]`` is paired with ``x0``; pi is applied to x1 and to every
            per-row tensor that belongs to x1 (``cond``, ``weights``), so labels follow their rows
            (Tong et al. 2024, OT-CFM); :func:`~fmlib.ot_assignment` is one.
            Default: independent (x0 and x1 paired in the order given).
        cond: optional per-row condition of x1 (class labels or any tensor whose first dimension is B),
            passed to the model as its third argument.
        weights: optional per-sample loss weights, shape (B,), finite and >= 0, one per row of x1.
        time_sampler: distribution of the default t: ``None`` or ``"uniform"`` (U[0, 1]),
            ``"logit_normal"`` or :class:`logit_normal` ``(loc, scale)`` (Esser et al. 2024, eq. 19),
            or any callable ``(n, generator, dtype, device) -> t`` of shape (n,) with values in [0, 1].
            Ignored when ``t`` is given.
        prediction: what the model predicts and the loss regresses: ``"velocity"`` (u_t, the CFM
            loss), ``"x1"`` (the data point; the model learns E[x1 | x_t]) or ``"epsilon"`` (the
            noise x0; the model learns E[x0 | x_t]). The last two need an :class:`~fmlib.AffinePath`;
            turn the model into a velocity with ``path.x1_to_velocity`` / ``path.epsilon_to_velocity``
            (Lipman et al. 2024, Section 4.8.1). Their losses weight time differently from the
            velocity loss: a velocity error is (d_alpha_t sigma_t - d_sigma_t alpha_t) / sigma_t times
            an x1 error and the same rate over alpha_t times an epsilon error.

    Returns:
        A scalar tensor (0-d), differentiable with respect to the model's parameters.

    Raises:
        ValueError: if x0 and x1 differ in shape, t is outside [0, 1] or of the wrong length, the model
            returns a tensor of another shape, the coupling returns indices of the wrong shape, dtype or
            range, cond has another batch size, weights are
            of the wrong shape, negative or not finite, or the time sampler returns times of the wrong
            shape or outside [0, 1], or prediction is unknown.
        TypeError: if x1 or x0 is not a floating tensor, the model does not return a tensor, cond or
            weights are not tensors, the coupling returns something other than an index tensor (a
            pair (x0, x1) included), time_sampler is neither a name nor callable, or prediction is
            ``"x1"``/``"epsilon"`` on a path that is not an AffinePath.

    Example:
        >>> import torch
        >>> from fmlib import LinearPath
        >>> x0, x1 = torch.zeros(4, 2), torch.ones(4, 2)
        >>> float(cfm_loss(lambda x, t: torch.zeros_like(x), LinearPath(), x1, x0=x0, t=0.5))
        2.0
        >>> w = torch.tensor([1.0, 1.0, 0.0, 2.0])
        >>> float(cfm_loss(lambda x, t: torch.zeros_like(x), LinearPath(), x1, x0=x0, t=0.5, weights=w))
        2.0
    """
    check_batch(x1, "x1")
    check_finite(x1, "x1")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}; got {prediction!r}")
    if prediction != "velocity" and not isinstance(path, AffinePath):
        raise TypeError(f"prediction={prediction!r} needs an AffinePath; got {type(path).__name__}")
    batch = x1.shape[0]
    if x0 is None:
        x0 = torch.randn(x1.shape, generator=generator, dtype=x1.dtype, device=x1.device)
    else:
        check_batch(x0, "x0")
        check_same_shape(x0, x1, "x0", "x1")
        check_finite(x0, "x0")
    if cond is not None:
        if not isinstance(cond, Tensor):
            raise TypeError(
                f"cond must be a tensor with one row per sample, shape ({batch}, ...); got {type(cond).__name__}"
            )
        if cond.dim() == 0 or cond.shape[0] != batch:
            raise ValueError(f"cond must have one row per sample, shape ({batch}, ...); got shape {tuple(cond.shape)}")
    if weights is not None:
        weights = _check_weights(weights, batch, x1.device)
    if coupling is not None:
        x0, x1, cond, weights = apply_coupling(coupling, x0, x1, cond, weights)
    if t is None:
        t = sample_times(time_sampler, batch, generator, torch.promote_types(x1.dtype, torch.float32), x1.device)
    t = as_time(t, x1)
    return regression_loss(model, path, x0, x1, t, cond, generator=generator, weights=weights, prediction=prediction)


def apply_coupling(
    coupling: Callable[[Tensor, Tensor], Any],
    x0: Tensor,
    x1: Tensor,
    cond: Tensor | None,
    weights: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Re-pair a minibatch with ``coupling(x0, x1)``; the rows of cond and weights follow their x1.

    Returns (x0, x1, cond, weights) after pairing. Raises as documented in :func:`cfm_loss`.
    """
    batch = x1.shape[0]
    paired = coupling(x0, x1)
    if isinstance(paired, Tensor):
        pi = _check_permutation(paired, batch).to(x1.device)
        x1 = x1[pi]
        if cond is not None:
            cond = cond[pi.to(cond.device)]
        if weights is not None:
            weights = weights[pi]
        return x0, x1, cond, weights
    if isinstance(paired, tuple):
        raise TypeError(
            f"coupling must return an int64 index tensor pi of shape ({batch},) (x1[pi] paired with x0), so that "
            "per-row tensors follow their rows; it returned a tuple (for minibatch OT pass "
            "coupling=fmlib.ot_assignment, not fmlib.minibatch_ot)"
        )
    raise TypeError(f"coupling must return an int64 index tensor of shape ({batch},); got {type(paired).__name__}")


def regression_loss(
    model: Callable[..., Tensor],
    path: ProbPath,
    x0: Tensor,
    x1: Tensor,
    t: Tensor,
    cond: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    weights: Tensor | None = None,
    prediction: str = "velocity",
    check_output: bool = True,
    trusted: bool = False,
) -> Tensor:
    """The core of :func:`cfm_loss` on checked, paired inputs: ``mean_b w_b |model(x_t, t[, cond]) - target|^2``.

    t has shape (B,). The model's output is compared in the target's dtype, so a forward pass under
    ``torch.autocast`` still gives a float32 loss. ``check_output=False`` skips the output's shape check and
    ``trusted=True`` the path's input checks (:func:`~fmlib.train` checks its first step only).
    """
    s = path._sample_trusted(x0, x1, t, generator) if trusted else path.sample(x0, x1, t, generator=generator)
    out = model(s.x_t, s.t) if cond is None else model(s.x_t, s.t, cond)
    if check_output:
        check_velocity_output(out, s.x_t, "model(x_t, t)" if cond is None else "model(x_t, t, cond)")
    target = s.u_t if prediction == "velocity" else path.target(s, prediction)  # type: ignore[attr-defined]
    per_row = (out.to(target.dtype) - target).reshape(target.shape[0], -1).pow(2).sum(dim=1)
    if weights is not None:
        per_row = per_row * weights.to(per_row.dtype)
    return per_row.mean()
