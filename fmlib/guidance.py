"""Classifier-free guidance: label dropout and the guided velocity field (Ho & Salimans 2022).

One network ``model(x, t, y)`` whose label ``y`` may be a class 0..K-1 or the *null label* K (= "no
label") learns both the conditional field v(x, t | y) and the unconditional field v(x, t). Guidance
convention (Ho & Salimans 2022; Lipman et al. 2024): the guided field is

    v_w(x, t | y) = v(x, t | null) + w (v(x, t | y) - v(x, t | null)),

so w = 0 is the unconditional field, w = 1 the conditional field and w > 1 extrapolates past it.
Ho & Salimans write (1 + w') eps_cond - w' eps_uncond = v_cond + w' (v_cond - v_uncond): their w' is
our w - 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._checks import as_time, check_batch, check_int, check_labels, check_real
from .data import NUM_CLASSES

__all__ = ["drop_labels", "cfg_combine", "guided_velocity"]


def drop_labels(
    labels: Tensor, p_uncond: float, null_label: int = NUM_CLASSES, generator: torch.Generator | None = None
) -> Tensor:
    """Replace each label by ``null_label`` with probability ``p_uncond`` (label dropout).

    Training on these labels teaches one network both v(x, t | y) and the unconditional v(x, t | null)
    (Ho & Salimans 2022, Algorithm 1).

    Args:
        labels: integer labels, shape (B,).
        p_uncond: probability of dropping a label, in [0, 1].
        null_label: the label meaning "unconditional".
        generator: random generator on the labels' device.

    Returns:
        A new int64 tensor of shape (B,).

    Raises:
        ValueError: if p_uncond is outside [0, 1] or labels is not a 1-d integer tensor.
        TypeError: if p_uncond is not a real number or labels is not a tensor.
    """
    check_real(p_uncond, "p_uncond", low=0.0, high=1.0)
    check_int(null_label, "null_label", low=0)
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be an integer tensor of shape (B,); got {type(labels).__name__}")
    if labels.dim() != 1 or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor of shape (B,); got {labels!r}")
    drop = torch.rand(labels.shape[0], generator=generator, device=labels.device) < p_uncond
    return torch.where(drop, torch.full_like(labels, null_label), labels).long()


def _with_labels(model: Callable[..., Tensor], y: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """The velocity field (x, t) -> model(x, t, y) for fixed labels y."""
    return lambda x, t: model(x, t, y)


def _check_w(w: object) -> float:
    return check_real(w, "w", low=0.0)


def cfg_combine(v_cond: Tensor, v_uncond: Tensor, w: float) -> Tensor:
    """Classifier-free guidance: ``v_uncond + w (v_cond - v_uncond)``.

    w = 0 gives the unconditional field, w = 1 the conditional one, w > 1 moves further along the
    direction from unconditional to conditional (Ho & Salimans 2022, whose scale is our w - 1).

    Args:
        v_cond: conditional velocity v(x, t | y).
        v_uncond: unconditional velocity v(x, t | null), same shape.
        w: guidance scale, finite and >= 0.

    Raises:
        ValueError: if w < 0 or not finite, or the shapes differ.
        TypeError: if w is not a real number or v_cond, v_uncond are not floating tensors.

    Example:
        >>> import torch
        >>> cfg_combine(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), 3.0)
        tensor([ 3., -2.])
    """
    w = _check_w(w)
    check_batch(v_cond, "v_cond"), check_batch(v_uncond, "v_uncond")
    if v_cond.shape != v_uncond.shape:
        raise ValueError(
            f"v_cond and v_uncond must have the same shape; got {tuple(v_cond.shape)} and {tuple(v_uncond.shape)}"
        )
    return v_uncond + w * (v_cond - v_uncond)


def guided_velocity(model: Callable[..., Tensor], y: int | Tensor, w: float) -> Callable[[Tensor, Tensor], Tensor]:
    """The guided velocity field ``v(x, t) = v_uncond + w (v_cond - v_uncond)`` of a conditional model.

    ``v_cond = model(x, t, y)`` and ``v_uncond = model(x, t, null)`` with the null label
    ``model.num_classes``. Convention: w = 0 samples the unconditional model, w = 1 the conditional
    model, w > 1 is guidance (Ho & Salimans 2022; Lipman et al. 2024). The other common
    convention, ``v_cond + w' (v_cond - v_uncond)``, is the same field with ``w' = w - 1``.
    For w not in {0, 1} both fields are evaluated in one batch of 2B, so one call of the returned
    field costs one network evaluation of twice the batch.

    A flow-map network with two times, ``model(x, r, t, y)`` (``UNet(..., two_times=True)``), gives the field
    ``u(x, r, t)`` (pass it to :func:`~fmlib.sample_flow_map`): the same combination of the two average
    velocities. At r = t it is the guided velocity; for r < t it is not the average velocity of the guided
    flow, only the combination of the conditional and unconditional jumps.

    Args:
        model: conditional velocity model ``model(x, t, y)`` with an int attribute ``num_classes``.
        y: the class of each sample: an int or a 0-d integer tensor (the same for all, at any batch
            size) or an integer tensor of shape (B,), with values in 0..num_classes - 1.
        w: guidance scale, finite and >= 0.

    Returns:
        A velocity field ``v(x, t)`` for :func:`~fmlib.integrate` (``v(x, r, t)`` for a two-time model:
        every time argument after x is passed on, each of shape (B,) or a float).

    Raises:
        ValueError: if w < 0, y is out of range, or (when called) a y of shape (B,) does not match
            x's batch.
        TypeError: if model has no int ``num_classes`` or y is not an int or an integer tensor.

    Example:
        >>> import torch
        >>> from fmlib import DigitUNet, integrate
        >>> model = DigitUNet()
        >>> x1 = integrate(guided_velocity(model, 3, w=2.0), torch.randn(4, 1, 8, 8), steps=2)
        >>> x1.shape
        torch.Size([4, 1, 8, 8])
    """
    w = _check_w(w)
    num_classes = getattr(model, "num_classes", None)
    if not isinstance(num_classes, int):
        raise TypeError(
            f"model must have an int attribute num_classes (the null label); got {type(num_classes).__name__}"
        )
    if isinstance(y, Tensor):
        checked = check_labels(y, y.shape[0] if y.dim() else 1, num_classes, allow_null=False)
        # a 0-d label stays 0-d: the same class for every sample, expanded to each call's batch
        y = checked if y.dim() else checked[0]
    else:
        check_labels(y, 1, num_classes, allow_null=False)

    def v(x: Tensor, t: Tensor, *more_times: Tensor) -> Tensor:
        batch = x.shape[0]
        yy = check_labels(y, batch, num_classes, allow_null=False).to(x.device)
        null = torch.full_like(yy, num_classes)
        if w == 0.0:
            return model(x, t, *more_times, null)
        if w == 1.0:
            return model(x, t, *more_times, yy)
        times = [as_time(s, x, unit_interval=False) for s in (t, *more_times)]
        out = model(torch.cat([x, x]), *(torch.cat([s, s]) for s in times), torch.cat([yy, null]))
        v_cond, v_uncond = out[:batch], out[batch:]
        return cfg_combine(v_cond, v_uncond, w)

    return v
