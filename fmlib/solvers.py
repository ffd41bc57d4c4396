"""Fixed-step ODE integrators for dx/dt = v(x, t).

Each step function advances x from t to t + dt (dt may be negative, to go
backward from data to noise). Number of function evaluations (NFE) per step:
Euler 1, midpoint 2, Heun 2, RK4 4. Global error orders: 1, 2, 2, 4.

Sources: Hairer, Norsett & Wanner, *Solving Ordinary Differential Equations I*,
Section II.1; Lipman et al. (2024), *Flow Matching Guide and Code*, Section 3
(sampling from a flow model by solving its ODE).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ._checks import as_time, check_batch, check_velocity_output

__all__ = ["euler_step", "midpoint_step", "heun_step", "rk4_step", "integrate", "time_grid", "METHODS", "NFE_PER_STEP"]

VelocityField = Callable[[Tensor, Tensor], Tensor]


def _eval(v: VelocityField, x: Tensor, t: float | Tensor) -> Tensor:
    return check_velocity_output(v(x, as_time(t, x, unit_interval=False)), x)


def euler_step(v: VelocityField, x: Tensor, t: float | Tensor, dt: float | Tensor) -> Tensor:
    """One explicit Euler step: x + dt * v(x, t). NFE 1, global order 1.

    Args:
        v: velocity field ``v(x, t)``, x of shape ``(B, *D)``, t of shape (B,).
        x: state at time t, shape ``(B, *D)``, floating dtype.
        t: current time (float, 0-d tensor or shape (B,)).
        dt: step size; negative to integrate backward.

    Returns:
        The state at t + dt, shape ``(B, *D)``, x's dtype and device.

    Raises:
        ValueError: if x has no batch dimension or v returns a tensor of another shape.
        TypeError: if x is not a floating tensor or v does not return a tensor.
    """
    check_batch(x)
    return x + dt * _eval(v, x, t)


def midpoint_step(v: VelocityField, x: Tensor, t: float | Tensor, dt: float | Tensor) -> Tensor:
    """One explicit midpoint step: x + dt * v(x + dt/2 v(x, t), t + dt/2). NFE 2, order 2.

    Arguments, return value and errors as in :func:`euler_step`.
    """
    check_batch(x)
    k1 = _eval(v, x, t)
    return x + dt * _eval(v, x + 0.5 * dt * k1, t + 0.5 * dt)


def heun_step(v: VelocityField, x: Tensor, t: float | Tensor, dt: float | Tensor) -> Tensor:
    """One Heun step (explicit trapezoid): x + dt/2 (k1 + k2), k2 = v(x + dt k1, t + dt). NFE 2, order 2.

    Arguments, return value and errors as in :func:`euler_step`.
    """
    check_batch(x)
    k1 = _eval(v, x, t)
    k2 = _eval(v, x + dt * k1, t + dt)
    return x + 0.5 * dt * (k1 + k2)


def rk4_step(v: VelocityField, x: Tensor, t: float | Tensor, dt: float | Tensor) -> Tensor:
    """One classical Runge-Kutta step. NFE 4, global order 4.

    Arguments, return value and errors as in :func:`euler_step`.
    """
    check_batch(x)
    k1 = _eval(v, x, t)
    k2 = _eval(v, x + 0.5 * dt * k1, t + 0.5 * dt)
    k3 = _eval(v, x + 0.5 * dt * k2, t + 0.5 * dt)
    k4 = _eval(v, x + dt * k3, t + dt)
    return x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


METHODS: dict[str, Callable[[VelocityField, Tensor, float | Tensor, float | Tensor], Tensor]] = {
    "euler": euler_step,
    "midpoint": midpoint_step,
    "heun": heun_step,
    "rk4": rk4_step,
}
"""The fixed-step methods known to :func:`integrate`, by name."""

NFE_PER_STEP: dict[str, int] = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}
"""Function evaluations per step of each method."""


def _check_steps(steps: object) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int >= 1; got {type(steps).__name__}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    return steps


def _check_time(value: object, name: str) -> float:
    if isinstance(value, Tensor) and value.dim() == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float; got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")
    return float(value)


def time_grid(t0: float, t1: float, steps: int | None = None, step_size: float | None = None) -> Tensor:
    """The time points of a fixed-step integration from t0 to t1, in float64.

    Give exactly one of ``steps`` (the number of equal steps) or ``step_size``
    (the largest step; the last step is shortened so the grid ends exactly at t1).

    Args:
        t0: start time.
        t1: end time; t1 < t0 gives a decreasing grid (backward integration).
        steps: number of steps, an int >= 1.
        step_size: a positive step length.

    Returns:
        A float64 tensor of shape (n + 1,) with first entry t0 and last entry exactly t1.

    Raises:
        ValueError: if both or neither of steps and step_size are given, steps < 1,
            step_size <= 0, or a time is not finite.

    Example:
        >>> time_grid(0.0, 1.0, step_size=0.3)
        tensor([0.0000, 0.3000, 0.6000, 0.9000, 1.0000], dtype=torch.float64)
    """
    t0, t1 = _check_time(t0, "t0"), _check_time(t1, "t1")
    if (steps is None) == (step_size is None):
        raise ValueError(f"give exactly one of steps or step_size; got steps={steps}, step_size={step_size}")
    if steps is not None:
        n = _check_steps(steps)
        grid = torch.linspace(t0, t1, n + 1, dtype=torch.float64)
    else:
        h = _check_time(step_size, "step_size")
        if h <= 0:
            raise ValueError(f"step_size must be > 0; got {step_size}")
        ratio = abs(t1 - t0) / h
        # 5.9 / 1e-4 is 58999.99999999999 in floating point: snap near-integers.
        n = max(1, round(ratio) if abs(ratio - round(ratio)) <= 1e-9 * max(1.0, ratio) else math.ceil(ratio))
        sign = 1.0 if t1 >= t0 else -1.0
        grid = t0 + sign * h * torch.arange(n + 1, dtype=torch.float64)
    grid[-1] = t1
    return grid


def integrate(
    v: VelocityField,
    x: Tensor,
    t0: float = 0.0,
    t1: float = 1.0,
    steps: int = 100,
    method: str = "euler",
    trajectory: bool = False,
) -> Tensor:
    """Integrate dx/dt = v(x, t) from t0 to t1 with ``steps`` equal fixed steps.

    With t0 = 0 and t1 = 1 this samples a flow model (noise to data); t1 < t0
    integrates backward (data to noise), the seed's x(0) = x(1) + int_1^0 v dt.
    The field is called ``steps * NFE_PER_STEP[method]`` times. Gradients flow
    through the integration; wrap the call in ``torch.no_grad()`` to sample
    without keeping a graph.

    Args:
        v: velocity field ``v(x, t)``: x of shape ``(B, *D)``, t of shape (B,), result of x's shape.
        x: initial state at t0, shape ``(B, *D)``, floating dtype; the result keeps its dtype and device.
        t0: start time.
        t1: end time.
        steps: number of steps, an int >= 1 (the step is (t1 - t0) / steps).
        method: one of ``"euler"``, ``"midpoint"``, ``"heun"``, ``"rk4"``.
        trajectory: if True, return every state.

    Returns:
        The state at t1, shape ``(B, *D)``; or, with ``trajectory=True``, all states
        x(t_0), ..., x(t_steps), shape ``(steps + 1, B, *D)``.

    Raises:
        ValueError: for an unknown method, steps < 1, non-finite times, a field that
            returns another shape, or a state that becomes NaN or inf.
        TypeError: if x is not a floating tensor or steps is not an int.

    Example:
        >>> import torch
        >>> x1 = integrate(lambda x, t: x, torch.ones(1, 1), steps=50)
        >>> round(float(x1), 6)   # Euler: (1 + 1/50)^50
        2.691588
    """
    if not callable(v):
        raise TypeError(f"v must be a callable velocity field v(x, t); got {type(v).__name__}")
    check_batch(x)
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}; got {method!r}")
    grid = time_grid(t0, t1, steps=_check_steps(steps)).tolist()
    step = METHODS[method]
    states = [x] if trajectory else None
    for k in range(steps):
        x = step(v, x, grid[k], grid[k + 1] - grid[k])
        if not bool(torch.isfinite(x).all()):
            raise ValueError(
                f"the state became NaN or inf at step {k + 1} of {steps} (t = {grid[k + 1]:g}); "
                "the field or the step size is unstable"
            )
        if states is not None:
            states.append(x)
    return torch.stack(states) if states is not None else x
