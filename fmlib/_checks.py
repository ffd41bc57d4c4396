"""Input validation shared by fmlib: clear errors instead of silent NaNs.

Every check raises ``TypeError`` (wrong kind of object) or ``ValueError``
(right kind, wrong shape or value) with a message that names the argument,
what was expected and what was received.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch
from torch import Tensor


def check_batch(x: object, name: str = "x") -> Tensor:
    """Return ``x`` if it is a floating tensor of shape ``(B, *D)`` with B >= 1."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, *D); got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype; got {x.dtype}")
    if x.dim() < 1:
        raise ValueError(f"{name} must have a batch dimension, shape (B, *D); got shape {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one sample; got shape {tuple(x.shape)}")
    return x


def check_int(value: object, name: str, low: int = 1) -> int:
    """Return ``value`` if it is an int (not a bool) >= ``low``.

    Raises:
        TypeError: if ``value`` is not an int (a bool, a float such as 10.0, a string, None).
        ValueError: if ``value`` < ``low``.
    """
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int >= {low}; got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
    return int(value)


def check_real(
    value: object,
    name: str,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Return ``value`` as a float if it is a finite real number in the given range.

    ``low`` and ``high`` bound the range (None: unbounded on that side); the ``*_inclusive``
    flags say whether the bound itself is allowed. Python and NumPy numbers are accepted,
    bools are not.

    Raises:
        TypeError: if ``value`` is not a real number (a bool, a string, None, a tensor).
        ValueError: if ``value`` is NaN, infinite or outside the range.

    Example:
        >>> check_real(0.5, "p", low=0.0, high=1.0)
        0.5
        >>> check_real(0.0, "lr", low=0.0, low_inclusive=False)
        Traceback (most recent call last):
        ...
        ValueError: lr must be > 0, a finite real number; got 0.0
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    number = float(value)
    if low is not None and high is not None:
        want = f"in {'[' if low_inclusive else '('}{low:g}, {high:g}{']' if high_inclusive else ')'}"
    elif low is not None:
        want = f"{'>=' if low_inclusive else '>'} {low:g}"
    elif high is not None:
        want = f"{'<=' if high_inclusive else '<'} {high:g}"
    else:
        want = ""
    ok = math.isfinite(number)
    if low is not None:
        ok = ok and (number >= low if low_inclusive else number > low)
    if high is not None:
        ok = ok and (number <= high if high_inclusive else number < high)
    if not ok:
        raise ValueError(f"{name} must be {want + ', ' if want else ''}a finite real number; got {value!r}")
    return number


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype fmlib computes times and accumulates in for a state ``x``.

    ``torch.promote_types(x.dtype, torch.float32)``: float32 for float16/bfloat16 states (so
    small steps and times near 1 are not rounded away), x's dtype for float32 and float64.
    """
    return torch.promote_types(x.dtype, torch.float32)


def check_same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    """Raise ValueError unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        what = "batch sizes differ" if a.shape[1:] == b.shape[1:] else "shapes differ"
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape (B, *D); {what}: "
            f"{name_a} has {tuple(a.shape)}, {name_b} has {tuple(b.shape)}"
        )


def check_finite(x: Tensor, name: str) -> None:
    """Raise ValueError if ``x`` holds NaN or inf."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite; it holds NaN or inf")


def as_time(t: object, x: Tensor, name: str = "t", unit_interval: bool = True) -> Tensor:
    """Return ``t`` as a tensor of shape (B,) on ``x``'s device, in :func:`compute_dtype` of ``x``.

    ``t`` may be a Python number, a 0-d tensor or a tensor of shape (B,),
    where B = x.shape[0]. With ``unit_interval`` it must lie in [0, 1].
    The dtype is x's for float32 and float64 states and float32 for float16 and
    bfloat16 states (t = 0.999 would round to 1.0 in bfloat16).

    Raises:
        TypeError: if ``t`` is neither a real number nor a tensor, or is a boolean or complex tensor.
        ValueError: if ``t`` has another shape, is not finite, or leaves [0, 1] with ``unit_interval``.
    """
    batch = x.shape[0]
    dtype = compute_dtype(x)
    if isinstance(t, bool) or not isinstance(t, (Real, Tensor)):
        raise TypeError(f"{name} must be a float, a 0-d tensor or a tensor of shape ({batch},); got {type(t).__name__}")
    if isinstance(t, Tensor):
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"{name} must hold real times; got a tensor of dtype {t.dtype}")
        if t.dim() == 0:
            t = t.to(dtype=dtype, device=x.device).expand(batch)
        elif t.dim() == 1 and t.shape[0] == batch:
            t = t.to(dtype=dtype, device=x.device)
        else:
            raise ValueError(
                f"{name} must be a scalar or have shape ({batch},) to match the batch; got shape {tuple(t.shape)}"
            )
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} must be finite; it holds NaN or inf")
    else:
        if not math.isfinite(float(t)):
            raise ValueError(f"{name} must be finite; got {t}")
        if unit_interval and not 0.0 <= float(t) <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1]; got {t:g}")
        return torch.full((batch,), float(t), dtype=dtype, device=x.device)
    if unit_interval and batch > 0:
        lo, hi = float(t.min()), float(t.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{name} must lie in [0, 1]; got values in [{lo:g}, {hi:g}]")
    return t


def unsqueeze_like(t: Tensor, x: Tensor) -> Tensor:
    """View a (B,) tensor as (B, 1, ..., 1) so it broadcasts against ``x`` of shape ``(B, *D)``."""
    return t.reshape(t.shape[0], *([1] * (x.dim() - 1)))


def check_velocity_output(out: object, x: Tensor, name: str = "v(x, t)") -> Tensor:
    """Raise unless a velocity field returned a tensor of ``x``'s shape."""
    if not isinstance(out, Tensor):
        raise TypeError(f"{name} must return a torch.Tensor; got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"{name} must return a tensor of x's shape {tuple(x.shape)}; got {tuple(out.shape)}")
    return out


def check_labels(y: object, batch: int, num_classes: int, allow_null: bool = True, name: str = "y") -> Tensor:
    """Return y as an int64 tensor of shape (batch,) after checking its values.

    Raises TypeError for anything but an int or an integer tensor, ValueError for a wrong shape or a label
    outside 0..num_classes - 1 (0..num_classes with the null label when ``allow_null``).
    """
    top = num_classes if allow_null else num_classes - 1
    if isinstance(y, Tensor):
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer labels in 0..{top}; got dtype {y.dtype}")
        if y.dim() == 0:
            y = y.expand(batch)
        if y.shape != (batch,):
            raise ValueError(f"{name} must have shape ({batch},) to match the batch; got shape {tuple(y.shape)}")
    elif isinstance(y, int) and not isinstance(y, bool):
        y = torch.full((batch,), y, dtype=torch.long)
    else:
        raise TypeError(f"{name} must be an int or an integer tensor of shape ({batch},); got {type(y).__name__}")
    if batch > 0:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi > top:
            what = f"0..{num_classes - 1} or the null label {num_classes}" if allow_null else f"0..{top}"
            raise ValueError(f"{name} must hold labels in {what}; got values in [{lo}, {hi}]")
    return y.long()


class ReadOnlyParameters:
    """The attributes named in ``_parameters`` are set once, in ``__init__``, and never reassigned or deleted.

    A path or scheduler computes with the values it was built with (some are copied into a scheduler or
    checked at construction), so a later ``path.sigma_min = 0.5`` would change what it reports but not
    what it computes; it raises AttributeError instead. Copies and pickles are unaffected.
    """

    _parameters: tuple[str, ...] = ()
    _kind = "object"

    def __setattr__(self, name: str, value: object) -> None:
        if name in self._parameters and name in self.__dict__:
            raise self._read_only(name, value)
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if name in self._parameters:
            raise self._read_only(name, None)
        super().__delattr__(name)

    def _read_only(self, name: str, value: object) -> AttributeError:
        cls = type(self).__name__
        example = f", e.g. {cls}({name}={value!r})" if value is not None else ""
        return AttributeError(
            f"{self!r}: {cls}.{name} is read-only (it is fixed when the {self._kind} is built); "
            f"build a new {cls} instead{example}"
        )
