"""Counting function evaluations, adaptive integration (torchdiffeq) and exact likelihoods of a flow.

Sources: Chen et al. (2018), *Neural Ordinary Differential Equations*, Theorem 1 (instantaneous change of
variables, d/dt log p_t(x_t) = -div u_t(x_t)); Grathwohl et al. (2019), FFJORD (Hutchinson's trace
estimator); Lipman et al. (2024), *Flow Matching Guide and Code*, Section 3 (likelihoods of flow models).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ._checks import as_time, check_batch, check_int, check_velocity_output
from .solvers import METHODS, integrate

__all__ = ["NFECounter", "integrate_adaptive", "log_likelihood", "ADAPTIVE_METHODS"]

VelocityField = Callable[[Tensor, Tensor], Tensor]

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
"""torchdiffeq's adaptive-step methods accepted by :func:`integrate_adaptive`."""


class NFECounter:
    """Wrap a velocity field and count its evaluations (the NFE).

    Each call ``counter(x, t)`` evaluates the wrapped field once on the whole batch and adds 1 to
    ``counter.nfe``. Fixed-step methods cost ``NFE_PER_STEP[method]`` evaluations per step
    (Euler 1, midpoint 2, Heun 2, RK4 4).

    Example:
        >>> import torch
        >>> from fmlib import integrate
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


def _positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite float > 0; got {value!r}")
    return float(value)


def integrate_adaptive(
    v: VelocityField,
    x: Tensor,
    t0: float = 0.0,
    t1: float = 1.0,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> tuple[Tensor, int]:
    """Integrate dx/dt = v(x, t) from t0 to t1 with an adaptive-step solver of torchdiffeq.

    The solver picks its steps to keep the local error below ``atol + rtol * |x|``. The field is
    called with t of shape (B,), as everywhere in fmlib; t1 < t0 integrates backward.

    Args:
        v: velocity field ``v(x, t)``.
        x: initial state at t0, shape ``(B, *D)``, floating dtype; dtype and device are kept.
        t0, t1: start and end times.
        method: one of :data:`ADAPTIVE_METHODS` (default Dormand-Prince 5(4), ``"dopri5"``).
        rtol, atol: relative and absolute tolerances, > 0.

    Returns:
        ``(x_t1, nfe)``: the state at t1, shape ``(B, *D)``, and the number of evaluations of v.

    Raises:
        ValueError: unknown method, rtol or atol <= 0, x without a batch dimension, non-finite times.

    Example:
        >>> import math, torch
        >>> x1, nfe = integrate_adaptive(lambda x, t: x, torch.ones(1, 1, dtype=torch.float64), rtol=1e-6, atol=1e-6)
        >>> abs(float(x1) - math.e) < 1e-5
        True
    """
    from torchdiffeq import odeint

    check_batch(x)
    if method not in ADAPTIVE_METHODS:
        raise ValueError(f"method must be one of {list(ADAPTIVE_METHODS)}; got {method!r}")
    rtol, atol = _positive(rtol, "rtol"), _positive(atol, "atol")
    for name, value in (("t0", t0), ("t1", t1)):
        if not math.isfinite(float(value)):
            raise ValueError(f"{name} must be finite; got {value}")
    counter = NFECounter(v)

    def func(t: Tensor, y: Tensor) -> Tensor:
        return check_velocity_output(counter(y, as_time(t, y, unit_interval=False)), y)

    times = torch.tensor([float(t0), float(t1)], dtype=x.dtype, device=x.device)
    # step_t: the solver must land on t1 exactly, so the field is never evaluated past the interval
    # (torchdiffeq otherwise may overshoot t1 and interpolate back, calling v at t > 1).
    out = odeint(func, x, times, method=method, rtol=rtol, atol=atol, options={"step_t": times})[-1]
    return out, counter.nfe


def _standard_normal_log_prob(x: Tensor) -> Tensor:
    d = x[0].numel()
    return -0.5 * x.flatten(1).pow(2).sum(1) - 0.5 * d * math.log(2 * math.pi)


def log_likelihood(
    v: VelocityField,
    x: Tensor,
    steps: int = 100,
    method: str = "rk4",
    divergence: str = "exact",
    probes: int = 1,
    generator: torch.Generator | None = None,
    log_p0: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """log p_1(x) of the flow of v, by the instantaneous change of variables.

    Along a trajectory, d/dt log p_t(x_t) = -div v(x_t, t) (Chen et al. 2018, Theorem 1). Integrating
    the augmented state (x_t, a_t) with da/dt = -div v from t = 1 (the data x) back to t = 0 (noise)
    with fmlib's fixed-step ``method`` gives x_0 and a_0 = int_0^1 div v dt, and

        log p_1(x) = log p_0(x_0) - int_0^1 div v(x_t, t) dt.

    The divergence is exact (one autograd pass per feature: fine for small D) or Hutchinson's estimate
    E[eps^T (dv/dx) eps] with Rademacher probes eps, averaged over ``probes`` draws that stay fixed
    during the integration (Grathwohl et al. 2019).

    Gradients flow to the model's parameters and to x when grad is enabled (so a model can be trained by
    maximum likelihood); under ``torch.no_grad()`` no graph is kept.

    Args:
        v: velocity field ``v(x, t)`` (a model).
        x: data points, shape ``(B, *D)``, floating dtype; the result has its dtype and device.
        steps: number of fixed steps from t = 1 to t = 0, >= 1.
        method: one of ``"euler"``, ``"midpoint"``, ``"heun"``, ``"rk4"``.
        divergence: ``"exact"`` or ``"hutchinson"``.
        probes: number of Rademacher probes averaged by Hutchinson's estimator, >= 1.
        generator: random generator for the probes.
        log_p0: log-density of the source, maps ``(B, *D)`` to (B,); defaults to the standard normal.

    Returns:
        log p_1(x), shape (B,).

    Raises:
        ValueError: unknown method or divergence, probes < 1, steps < 1, x without a batch dimension.

    Example:
        >>> import torch
        >>> x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
        >>> with torch.no_grad():  # evaluation only: keep no graph
        ...     lp = log_likelihood(lambda x, t: 3 * t[:, None] ** 2 * x, x)
        >>> round(float(lp), 4)   # exact: log N(e^-1 [1, 2]) - 2 = -4.176215
        -4.1762
    """
    check_batch(x)
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}; got {method!r}")
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"divergence must be 'exact' or 'hutchinson'; got {divergence!r}")
    check_int(probes, "probes")
    shape, feats = x.shape, x[0].numel()
    keep_graph = torch.is_grad_enabled()
    eps = None
    if divergence == "hutchinson":
        signs = torch.randint(0, 2, (probes, *shape), generator=generator, device=x.device)
        eps = (2 * signs - 1).to(x.dtype)

    def div_v(out: Tensor, y: Tensor) -> Tensor:
        if not out.requires_grad:  # the field does not depend on x (e.g. a constant): zero divergence
            return torch.zeros(shape[0], dtype=x.dtype, device=x.device)
        if eps is None:
            flat = out.flatten(1)
            cols = [
                torch.autograd.grad(
                    flat[:, i].sum(), y, create_graph=keep_graph, retain_graph=True, materialize_grads=True
                )[0].flatten(1)[:, i]
                for i in range(feats)
            ]
            return torch.stack(cols, 1).sum(1)
        total = torch.zeros(shape[0], dtype=x.dtype, device=x.device)
        for e in eps:
            (vjp,) = torch.autograd.grad(
                out, y, grad_outputs=e, create_graph=keep_graph, retain_graph=True, materialize_grads=True
            )
            total = total + (vjp * e).flatten(1).sum(1)
        return total / probes

    def augmented(state: Tensor, t: Tensor) -> Tensor:
        y = state[:, :feats].reshape(shape)
        with torch.enable_grad():
            if not keep_graph or not y.requires_grad:
                y = y.detach().requires_grad_(True)
            out = check_velocity_output(v(y, t), y)
            div = div_v(out, y)
        if not keep_graph:
            out, div = out.detach(), div.detach()
        return torch.cat([out.flatten(1), -div[:, None]], dim=1)

    state = torch.cat([x.flatten(1), torch.zeros(shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)
    end = integrate(augmented, state, t0=1.0, t1=0.0, steps=steps, method=method)
    x0, int_div = end[:, :feats].reshape(shape), end[:, feats]
    base = _standard_normal_log_prob(x0) if log_p0 is None else log_p0(x0)
    return base - int_div
