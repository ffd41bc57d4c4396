"""The conditional flow matching (CFM) loss.

Lipman et al. (2023), eq. 9 (L_CFM) and Theorem 2 (L_FM and L_CFM have the same
gradient in theta); Lipman et al. (2024), Section 4.5.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._checks import as_time, check_batch, check_same_shape, check_velocity_output
from .paths import PREDICTIONS, AffinePath, ProbPath

__all__ = ["cfm_loss"]


def cfm_loss(
    model: Callable[[Tensor, Tensor], Tensor],
    path: ProbPath,
    x1: Tensor,
    x0: Tensor | None = None,
    t: float | Tensor | None = None,
    generator: torch.Generator | None = None,
    coupling: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    *,
    prediction: str = "velocity",
) -> Tensor:
    """``L_CFM = mean_b || model(x_t, t) - u_t(x_t | z) ||^2``.

    The squared norm is summed over the feature dimensions ``*D`` and averaged over
    the batch, so a single row off by a vector e adds ``|e|^2 / B``.

    Args:
        model: a velocity field ``model(x, t)`` taking x of shape ``(B, *D)`` and t of
            shape (B,) and returning a tensor of x's shape.
        path: the conditional path (:class:`~fmlib.LinearPath`, :class:`~fmlib.GaussianPath`).
        x1: data batch, shape ``(B, *D)``, floating dtype.
        x0: source batch of x1's shape; defaults to N(0, I) noise drawn with ``generator``.
        t: times in [0, 1] (float, 0-d or shape (B,)); defaults to U[0, 1] drawn with ``generator``.
        generator: random generator for the defaults and for the path's own noise.
        coupling: optional ``coupling(x0, x1) -> (x0, x1)`` that re-pairs the batch before the path is
            sampled; ``coupling=fmlib.minibatch_ot`` gives OT-CFM (Tong et al. 2024). Default: independent.
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
        ValueError: if x0 and x1 differ in shape, t is outside [0, 1] or of the
            wrong length, the model returns a tensor of another shape, or prediction is unknown.
        TypeError: if x1 or x0 is not a floating tensor, the model does not return a tensor, or
            prediction is ``"x1"``/``"epsilon"`` on a path that is not an AffinePath.

    Example:
        >>> import torch
        >>> from fmlib import LinearPath
        >>> x0, x1 = torch.zeros(4, 2), torch.ones(4, 2)
        >>> float(cfm_loss(lambda x, t: torch.zeros_like(x), LinearPath(), x1, x0=x0, t=0.5))
        2.0
    """
    check_batch(x1, "x1")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}; got {prediction!r}")
    if prediction != "velocity" and not isinstance(path, AffinePath):
        raise TypeError(f"prediction={prediction!r} needs an AffinePath; got {type(path).__name__}")
    if x0 is None:
        x0 = torch.randn(x1.shape, generator=generator, dtype=x1.dtype, device=x1.device)
    else:
        check_batch(x0, "x0")
        check_same_shape(x0, x1, "x0", "x1")
    if coupling is not None:
        x0, x1 = coupling(x0, x1)
    if t is None:
        t = torch.rand(x1.shape[0], generator=generator, dtype=x1.dtype, device=x1.device)
    t = as_time(t, x1)
    s = path.sample(x0, x1, t, generator=generator)
    pred = check_velocity_output(model(s.x_t, s.t), s.x_t, "model(x_t, t)")
    target = s.u_t if prediction == "velocity" else path.target(s, prediction)  # type: ignore[attr-defined]
    return (pred - target).flatten(1).pow(2).sum(dim=1).mean()
