"""ODE integrators for dx/dt = v(x, t): an open registry of fixed-step methods and adaptive steps.

A fixed-step method is a step function ``step(v, x, t, dt) -> x_next`` that advances x from t to
t + dt (dt may be negative, to go backward from data to noise), registered in :data:`SOLVERS` with
its global order and its number of function evaluations (NFE) per step: Euler (order 1, NFE 1),
midpoint (2, 2), Heun (2, 2), RK4 (4, 4). :func:`register_solver` adds a method, and
:func:`integrate` accepts a registered name or a step function. :func:`integrate_adaptive` chooses
its steps with torchdiffeq's embedded Runge-Kutta pairs; :class:`NFECounter` counts evaluations.

Precision: for a float16 or bfloat16 state, times and the accumulation of steps are kept in
float32 (``torch.promote_types(x.dtype, torch.float32)``); the field is called with the state in
x's dtype and t in float32, and results come back in x's dtype. Times are never rounded to the
state's precision.

Sources: Hairer, Norsett & Wanner, *Solving Ordinary Differential Equations I*, Sections II.1
(Runge-Kutta methods, orders) and II.4 (step size control); Dormand & Prince (1980) for dopri5;
Lipman et al. (2024), *Flow Matching Guide and Code*, Section 3 (sampling a flow model by solving
its ODE); torchdiffeq (Chen et al. 2018) for the adaptive solvers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from ._checks import as_time, check_batch, check_int, check_real, check_velocity_output, compute_dtype

__all__ = [
    "euler_step",
    "midpoint_step",
    "heun_step",
    "rk4_step",
    "FixedStepMethod",
    "SOLVERS",
    "register_solver",
    "integrate",
    "time_grid",
    "NFECounter",
    "integrate_adaptive",
    "ADAPTIVE_METHODS",
]

VelocityField = Callable[[Tensor, Tensor], Tensor]
"""A velocity field v(x, t): x of shape (B, *D), t of shape (B,); returns (B, *D). The one definition in fmlib."""
StepFunction = Callable[[VelocityField, Tensor, float | Tensor, float | Tensor], Tensor]


def _eval(v: VelocityField, x: Tensor, t: float | Tensor) -> Tensor:
    return check_velocity_output(v(x, as_time(t, x, unit_interval=False)), x)


def _promoted(step: StepFunction, v: VelocityField, x: Tensor, t: float | Tensor, dt: float | Tensor) -> Tensor:
    """Run ``step`` with the state in :func:`compute_dtype` and the field seeing x's dtype."""
    check_batch(x)
    dtype = compute_dtype(x)
    if dtype == x.dtype:
        return step(v, x, t, dt)
    low = x.dtype
    out = step(lambda y, s: v(y.to(low), s).to(dtype), x.to(dtype), t, dt)
    return out.to(low)


def _euler(v: VelocityField, x: Tensor, t: float | Tensor, dt: float | Tensor) -> Tensor:
    return x + dt * _eval(v, x, t)


def _midpoint(v: VelocityField, x: Tensor, t: float | Tensor, dt: float | Tensor) -> Tensor:
    k1 = _eval(v, x, t)
    return x + dt * _eval(v, x + 0.5 * dt * k1, t + 0.5 * dt)


def _heun(v: VelocityField, x: Tensor, t: float | Tensor, dt: float | Tensor) -> Tensor:
    k1 = _eval(v, x, t)
    k2 = _eval(v, x + dt * k1, t + dt)
    return x + 0.5 * dt * (k1 + k2)


def _rk4(v: VelocityField, x: Tensor, t: float | Tensor, dt: float | Tensor) -> Tensor:
    k1 = _eval(v, x, t)
    k2 = _eval(v, x + 0.5 * dt * k1, t + 0.5 * dt)
    k3 = _eval(v, x + 0.5 * dt * k2, t + 0.5 * dt)
    k4 = _eval(v, x + dt * k3, t + dt)
    return x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def euler_step(v: VelocityField, x: Tensor, t: float | Tensor, dt: float | Tensor) -> Tensor:
    """One explicit Euler step: x + dt * v(x, t). NFE 1, global order 1.

    Args:
        v: velocity field ``v(x, t)``, x of shape ``(B, *D)``, t of shape (B,).
        x: state at time t, shape ``(B, *D)``, floating dtype.
        t: current time (float, 0-d tensor or shape (B,)).
        dt: step size; negative to integrate backward.

    Returns:
        The state at t + dt, shape ``(B, *D)``, x's dtype and device (computed in float32 for a
        float16/bfloat16 x).

    Raises:
        ValueError: if x has no batch dimension or v returns a tensor of another shape.
        TypeError: if x is not a floating tensor or v does not return a tensor.
    """
    return _promoted(_euler, v, x, t, dt)


def midpoint_step(v: VelocityField, x: Tensor, t: float | Tensor, dt: float | Tensor) -> Tensor:
    """One explicit midpoint step: x + dt * v(x + dt/2 v(x, t), t + dt/2). NFE 2, order 2.

    Arguments, return value and errors as in :func:`euler_step`.
    """
    return _promoted(_midpoint, v, x, t, dt)


def heun_step(v: VelocityField, x: Tensor, t: float | Tensor, dt: float | Tensor) -> Tensor:
    """One Heun step (explicit trapezoid): x + dt/2 (k1 + k2), k2 = v(x + dt k1, t + dt). NFE 2, order 2.

    Arguments, return value and errors as in :func:`euler_step`.
    """
    return _promoted(_heun, v, x, t, dt)


def rk4_step(v: VelocityField, x: Tensor, t: float | Tensor, dt: float | Tensor) -> Tensor:
    """One classical Runge-Kutta step. NFE 4, global order 4.

    Arguments, return value and errors as in :func:`euler_step`.
    """
    return _promoted(_rk4, v, x, t, dt)


@dataclass(frozen=True)
class FixedStepMethod:
    """A fixed-step ODE method: its step function, global order and NFE per step.

    Attributes:
        step: ``step(v, x, t, dt) -> x_next``: advances the state x (shape ``(B, *D)``) from time t
            (a float) to t + dt with the velocity field ``v(x, t)`` (t of shape (B,)); dt may be negative.
        order: the global order p of the method (error O(h^p) for step h), an int >= 1.
        nfe_per_step: evaluations of v per step, an int >= 1.

    Raises:
        TypeError: if step is not callable or order / nfe_per_step is not an int.
        ValueError: if order or nfe_per_step is < 1.

    Example:
        >>> SOLVERS["heun"].order, SOLVERS["heun"].nfe_per_step
        (2, 2)
    """

    step: StepFunction
    order: int
    nfe_per_step: int

    def __post_init__(self) -> None:
        if not callable(self.step):
            raise TypeError(f"step must be a callable step(v, x, t, dt) -> x_next; got {type(self.step).__name__}")
        check_int(self.order, "order")
        check_int(self.nfe_per_step, "nfe_per_step")


_BUILT_IN = {
    "euler": FixedStepMethod(euler_step, 1, 1),
    "midpoint": FixedStepMethod(midpoint_step, 2, 2),
    "heun": FixedStepMethod(heun_step, 2, 2),
    "rk4": FixedStepMethod(rk4_step, 4, 4),
}
_REGISTRY: dict[str, FixedStepMethod] = dict(_BUILT_IN)

SOLVERS: MappingProxyType[str, FixedStepMethod] = MappingProxyType(_REGISTRY)
"""The registry of fixed-step methods by name (read-only view; add entries with :func:`register_solver`)."""


def register_solver(name: str, step: StepFunction, order: int, nfe_per_step: int, overwrite: bool = False) -> None:
    """Register a fixed-step method under ``name`` for :func:`integrate` and every caller of it.

    Args:
        name: the method's name, a non-empty string.
        step: ``step(v, x, t, dt) -> x_next`` (see :class:`FixedStepMethod`); :func:`integrate` hands
            it a copy of the state, so it may update x in place.
        order: its global order, an int >= 1.
        nfe_per_step: evaluations of v per step, an int >= 1.
        overwrite: replace a method registered earlier under ``name`` (never a built-in one).

    Raises:
        TypeError: if name is not a string, step is not callable, order or nfe_per_step not ints.
        ValueError: if name is empty, names a built-in method (euler, midpoint, heun, rk4), or is
            already registered and ``overwrite`` is False; if order or nfe_per_step < 1.

    Example:
        >>> def ralston(v, x, t, dt):  # Ralston's second-order method
        ...     k1 = v(x, torch.full((x.shape[0],), t))
        ...     k2 = v(x + 2 / 3 * dt * k1, torch.full((x.shape[0],), t + 2 / 3 * dt))
        ...     return x + dt * (k1 + 3 * k2) / 4
        >>> register_solver("ralston", ralston, order=2, nfe_per_step=2, overwrite=True)
        >>> float(integrate(lambda x, t: x, torch.ones(1, 1, dtype=torch.float64), steps=2, method="ralston"))
        2.640625
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str; got {type(name).__name__}")
    if not name:
        raise ValueError("name must be a non-empty string; got ''")
    method = FixedStepMethod(step, order, nfe_per_step)
    if name in _BUILT_IN:
        raise ValueError(f"name {name!r} is a built-in method and cannot be replaced; choose another name")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"a method named {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = method


def _resolve_method(method: object) -> StepFunction:
    if isinstance(method, FixedStepMethod):
        return method.step
    if isinstance(method, str):
        if method not in _REGISTRY:
            raise ValueError(f"method must be one of {sorted(_REGISTRY)} or a step function; got {method!r}")
        return _REGISTRY[method].step
    if callable(method):
        return method
    raise TypeError(
        "method must be a registered name, a FixedStepMethod or a step function step(v, x, t, dt); "
        f"got {type(method).__name__}"
    )


def time_grid(t0: float, t1: float, steps: int | None = None, step_size: float | None = None) -> Tensor:
    """The time points of a fixed-step integration from t0 to t1, in float64.

    Give exactly one of ``steps`` (the number of equal steps) or ``step_size``
    (the largest step; the last step is shortened so the grid ends exactly at t1).
    The grid is float64 whatever the state's dtype, so low-precision states never see rounded times.

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
        TypeError: if a time or step_size is not a real number, or steps is not an int.

    Example:
        >>> time_grid(0.0, 1.0, step_size=0.3)
        tensor([0.0000, 0.3000, 0.6000, 0.9000, 1.0000], dtype=torch.float64)
    """
    t0, t1 = _check_time(t0, "t0"), _check_time(t1, "t1")
    if (steps is None) == (step_size is None):
        raise ValueError(f"give exactly one of steps or step_size; got steps={steps}, step_size={step_size}")
    if steps is not None:
        n = check_int(steps, "steps")
        grid = torch.linspace(t0, t1, n + 1, dtype=torch.float64)
    else:
        h = check_real(step_size, "step_size", low=0.0, low_inclusive=False)
        ratio = abs(t1 - t0) / h
        # 5.9 / 1e-4 is 58999.99999999999 in floating point: snap near-integers.
        n = max(1, round(ratio) if abs(ratio - round(ratio)) <= 1e-9 * max(1.0, ratio) else math.ceil(ratio))
        sign = 1.0 if t1 >= t0 else -1.0
        grid = t0 + sign * h * torch.arange(n + 1, dtype=torch.float64)
    grid[-1] = t1
    return grid


def _check_time(value: object, name: str) -> float:
    if isinstance(value, Tensor) and value.dim() == 0:
        value = value.item()
    return check_real(value, name)


def _check_field(v: object) -> None:
    if not callable(v):
        raise TypeError(f"v must be a callable velocity field v(x, t); got {type(v).__name__}")


def integrate(
    v: VelocityField,
    x: Tensor,
    t0: float = 0.0,
    t1: float = 1.0,
    steps: int = 100,
    method: str | StepFunction | FixedStepMethod = "euler",
    trajectory: bool = False,
) -> Tensor:
    """Integrate dx/dt = v(x, t) from t0 to t1 with ``steps`` equal fixed steps.

    With t0 = 0 and t1 = 1 this samples a flow model (noise to data); t1 < t0
    integrates backward (data to noise), x(0) = x(1) + int_1^0 v dt.
    A registered method calls the field ``steps * SOLVERS[method].nfe_per_step`` times. Gradients
    flow through the integration; wrap the call in ``torch.no_grad()`` to sample without keeping a graph.

    For a float16 or bfloat16 x the steps are accumulated in float32 and the times are float32
    (the field sees x's dtype and float32 t); the result is cast back to x's dtype.

    Args:
        v: velocity field ``v(x, t)``: x of shape ``(B, *D)``, t of shape (B,), result of x's shape.
        x: initial state at t0, shape ``(B, *D)``, floating dtype; the result keeps its dtype and device.
        t0: start time.
        t1: end time.
        steps: number of steps, an int >= 1 (the step is (t1 - t0) / steps).
        method: a name registered in :data:`SOLVERS` (``"euler"``, ``"midpoint"``, ``"heun"``,
            ``"rk4"`` and any added with :func:`register_solver`), a :class:`FixedStepMethod`, or a
            step function ``step(v, x, t, dt) -> x_next`` (t a float, dt the signed step). A step
            function of the user's is handed a copy of the state, so one that updates x in place
            (``x.add_(...)``) overwrites neither the caller's x nor the stored trajectory.
        trajectory: if True, return every state.

    Returns:
        The state at t1, shape ``(B, *D)``; or, with ``trajectory=True``, all states
        x(t_0), ..., x(t_steps), shape ``(steps + 1, B, *D)``.

    Raises:
        ValueError: for an unknown method name, steps < 1, non-finite times, a field that
            returns another shape, or a state that becomes NaN or inf.
        TypeError: if v or method is not callable (nor a registered name), x is not a floating
            tensor, steps is not an int, or a time is not a real number.

    Example:
        >>> import torch
        >>> x1 = integrate(lambda x, t: x, torch.ones(1, 1), steps=50)
        >>> round(float(x1), 6)   # Euler: (1 + 1/50)^50
        2.691588
    """
    _check_field(v)
    check_batch(x)
    step = _resolve_method(method)
    steps = check_int(steps, "steps")
    grid = time_grid(t0, t1, steps=steps).tolist()
    dtype, low = compute_dtype(x), x.dtype
    field = v if dtype == low else (lambda y, s: v(y.to(low), s).to(dtype))
    state = x.to(dtype)
    states = [x] if trajectory else None
    # a step function of the user's may update its x in place (x.add_(...)): it gets a copy, so the caller's x
    # and the states already stored in the trajectory are never overwritten; the built-in steps do not need one
    pure = any(step is m.step for m in _BUILT_IN.values())
    for k in range(steps):
        state = step(field, state if pure else state.clone(), grid[k], grid[k + 1] - grid[k])
        if not isinstance(state, Tensor) or state.shape != x.shape:
            got = tuple(state.shape) if isinstance(state, Tensor) else type(state).__name__
            raise ValueError(f"method's step must return a tensor of x's shape {tuple(x.shape)}; got {got}")
        # checked in x's dtype: a float16 state overflows at 65504 where the float32 accumulator does not
        if not bool(torch.isfinite(state).all()) or not bool(torch.isfinite(state.to(low)).all()):
            raise ValueError(
                f"the state became NaN or inf at step {k + 1} of {steps} (t = {grid[k + 1]:g}, in {low}); "
                "the field or the step size is unstable"
            )
        if states is not None:
            states.append(state.to(low))
    return torch.stack(states) if states is not None else state.to(low)


class NFECounter:
    """Wrap a velocity field and count its evaluations (the NFE).

    Each call ``counter(x, t)`` evaluates the wrapped field once on the whole batch and adds 1 to
    ``counter.nfe``. Fixed-step methods cost ``SOLVERS[method].nfe_per_step`` evaluations per step
    (Euler 1, midpoint 2, Heun 2, RK4 4).

    Raises:
        TypeError: if v is not callable.

    Example:
        >>> import torch
        >>> v = NFECounter(lambda x, t: -x)
        >>> _ = integrate(v, torch.ones(3, 2), steps=10, method="rk4")
        >>> v.nfe
        40
    """

    def __init__(self, v: VelocityField) -> None:
        if not callable(v):
            raise TypeError(f"v must be a callable v(x, t); got {type(v).__name__}")
        self.v = v
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return self.v(x, t)

    def reset(self) -> None:
        """Set the count back to 0."""
        self.nfe = 0


ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
"""torchdiffeq's adaptive-step methods accepted by :func:`integrate_adaptive`."""

DEFAULT_MAX_STEPS = 10_000
"""Default bound on the steps (accepted and rejected) of :func:`integrate_adaptive`."""


class _AdaptiveField:
    """torchdiffeq's ``func(t, y)`` around a field ``v(x, t)``, watching every step it attempts.

    torchdiffeq guards its loop with ``assert`` statements only (removed by ``python -O``);
    ``callback_step`` enforces the step bound and detects a blow-up whatever the interpreter flags.
    """

    def __init__(
        self, v: VelocityField, low: torch.dtype, dtype: torch.dtype, max_steps: int, t0: float, t1: float
    ) -> None:
        self.v, self.low, self.dtype, self.max_steps, self.t1 = v, low, dtype, max_steps, t1
        self.lo, self.hi = min(t0, t1), max(t0, t1)
        # torchdiffeq's stage times t0 + c dt may miss an end by a rounding error (5e-324 for 0):
        # clamp into [t0, t1] and snap times within a few ulps of an end onto it.
        self.snap = 8 * torch.finfo(torch.float64).eps * max(1.0, abs(t0), abs(t1))
        self.nfe = 0
        self.steps = 0

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        self.nfe += 1
        time = min(max(float(t.detach()), self.lo), self.hi)
        for end in (self.lo, self.hi):
            if abs(time - end) <= self.snap:
                time = end
        y_low = y.to(self.low)
        out = check_velocity_output(self.v(y_low, as_time(time, y, unit_interval=False)), y_low)
        if bool(out.isnan().any()) and bool(y_low.isfinite().all()):
            raise ValueError(f"v(x, t) returned NaN at t = {time:.6g} for a finite x")
        return out.to(self.dtype)

    def callback_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.steps += 1
        t0, y0, dt = t0.detach(), y0.detach(), dt.detach()
        t, size = float(t0), float(y0.abs().max())
        if not math.isfinite(size):
            raise ValueError(
                f"the solution became NaN or inf at t = {t:.6g} before reaching t1 = {self.t1:g}; "
                "the solution of dx/dt = v(x, t) blows up there"
            )
        if float(abs(t0) + abs(dt)) == abs(t):
            raise ValueError(
                f"the solution blows up near t = {t:.6g} before reaching t1 = {self.t1:g}: the step size "
                f"fell below the time resolution there (|x| reached {size:.3g})"
            )
        if self.steps > self.max_steps:
            raise RuntimeError(
                f"integrate_adaptive took more than max_steps = {self.max_steps} steps and stopped at "
                f"t = {t:.10g} before t1 = {self.t1:g} (|x| reached {size:.3g}); the solution may blow up "
                "there, or the problem is stiff: raise max_steps or loosen rtol/atol"
            )


def integrate_adaptive(
    v: VelocityField,
    x: Tensor,
    t0: float = 0.0,
    t1: float = 1.0,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> tuple[Tensor, int]:
    """Integrate dx/dt = v(x, t) from t0 to t1 with an adaptive-step solver of torchdiffeq.

    The solver picks its steps to keep the local error below ``atol + rtol * |x|``, using the
    step-size control of Hairer, Norsett & Wanner, Section II.4 (the next step is
    h * 0.9 * err^(-1/(q+1)) for an embedded pair of order q). It lands on t1 exactly, so the
    field is never evaluated outside [t0, t1]. The field is called with t of shape (B,), as
    everywhere in fmlib; t1 < t0 integrates backward. For a float16 or bfloat16 x the solver's
    state is float32 (the field sees x's dtype and float32 t) and the result has x's dtype.

    Args:
        v: velocity field ``v(x, t)``.
        x: initial state at t0, shape ``(B, *D)``, floating dtype; dtype and device are kept.
        t0: start time.
        t1: end time.
        method: one of :data:`ADAPTIVE_METHODS` (default Dormand-Prince 5(4), ``"dopri5"``).
        rtol: relative tolerance, > 0.
        atol: absolute tolerance, > 0.
        max_steps: the most steps (accepted and rejected) allowed, an int >= 1 (default
            :data:`DEFAULT_MAX_STEPS` = 10000).

    Returns:
        ``(x_t1, nfe)``: the state at t1, shape ``(B, *D)``, and the number of evaluations of v.

    Raises:
        ValueError: unknown method, rtol or atol <= 0, max_steps < 1, x without a batch dimension,
            non-finite times; or the solution blows up before t1 (the message gives the time reached).
        RuntimeError: if more than ``max_steps`` steps are needed (the message gives the time reached).
        TypeError: v not callable, x not a floating tensor, a time or tolerance not a real number,
            max_steps not an int, method not a string.

    Example:
        >>> import math, torch
        >>> x1, nfe = integrate_adaptive(lambda x, t: x, torch.ones(1, 1, dtype=torch.float64), rtol=1e-6, atol=1e-6)
        >>> abs(float(x1) - math.e) < 1e-5
        True
    """
    from torchdiffeq import odeint

    _check_field(v)
    check_batch(x)
    if not isinstance(method, str):
        raise TypeError(f"method must be a str, one of {list(ADAPTIVE_METHODS)}; got {type(method).__name__}")
    if method not in ADAPTIVE_METHODS:
        raise ValueError(f"method must be one of {list(ADAPTIVE_METHODS)}; got {method!r}")
    rtol = check_real(rtol, "rtol", low=0.0, low_inclusive=False)
    atol = check_real(atol, "atol", low=0.0, low_inclusive=False)
    max_steps = check_int(max_steps, "max_steps")
    t0, t1 = _check_time(t0, "t0"), _check_time(t1, "t1")
    if t0 == t1:
        return x, 0
    dtype = compute_dtype(x)
    func = _AdaptiveField(v, x.dtype, dtype, max_steps, t0, t1)
    times = torch.tensor([t0, t1], dtype=dtype, device=x.device)
    # step_t: the solver must land on t1 exactly, so the field is never evaluated past the interval
    # (torchdiffeq otherwise may overshoot t1 and interpolate back, calling v at t > 1).
    try:
        out = odeint(func, x.to(dtype), times, method=method, rtol=rtol, atol=atol, options={"step_t": times})[-1]
    except AssertionError as err:  # torchdiffeq's own guards, when assertions are on
        raise RuntimeError(f"torchdiffeq stopped after {func.steps} steps: {err}") from err
    return out.to(x.dtype), func.nfe
