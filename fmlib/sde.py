"""Stochastic differential equations: a plain Euler-Maruyama integrator, and stochastic sampling of a flow.

:func:`euler_maruyama` integrates any SDE dX = f(X, t) dt + g(t) dW (the SDE primer of the book uses it for
Brownian motion, the Ornstein-Uhlenbeck process and the VP noising process). :func:`integrate_sde` samples a
trained flow with an SDE that has the flow's marginals, as follows.

On an affine Gaussian path (Lipman et al. 2024, Section 4.8) a velocity field v generates
the marginals p_t through dx/dt = v. For every diffusion coefficient g_t >= 0 the SDE

    dX = [v(X, t) + (g_t^2 / 2) grad log p_t(X)] dt + g_t dW

has the same marginals: its Fokker-Planck equation adds (g_t^2 / 2) div(p_t grad log p_t)
to the drift term and (g_t^2 / 2) Laplacian p_t as diffusion, and the two cancel
(Song et al. 2021, Section 4.3 and Appendix D.1, where v is the probability-flow ODE;
Albergo & Vanden-Eijnden 2023 for stochastic interpolants). The score comes from the
same evaluation of v through :meth:`~fmlib.AffinePath.velocity_to_score`, so a step
costs one field evaluation, as an Euler step does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real

import torch
from torch import Tensor

from ._checks import check_batch, check_int, check_velocity_output, compute_dtype
from .paths import AffinePath
from .solvers import VelocityField, time_grid

__all__ = ["euler_maruyama", "integrate_sde"]


def _diffusion_value(value: object, t: float) -> float:
    if isinstance(value, Tensor) and value.dim() == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"diffusion must be a float >= 0 or a callable g(t) returning one; got {value!r} at t = {t:g}")
    if not math.isfinite(float(value)) or value < 0:
        raise ValueError(f"diffusion must give a finite float >= 0; got {value!r} at t = {t:g}")
    return float(value)


def euler_maruyama(
    drift: VelocityField,
    diffusion: float | Callable[[float], float],
    x: Tensor,
    t0: float = 0.0,
    t1: float = 1.0,
    steps: int = 100,
    generator: torch.Generator | None = None,
    trajectory: bool = False,
) -> Tensor:
    """Integrate the SDE dX = f(X, t) dt + g(t) dW from t0 to t1 with the Euler-Maruyama method.

    With the equal steps of :func:`~fmlib.time_grid` (h = (t1 - t0) / steps), each step is

        X_{k+1} = X_k + h f(X_k, t_k) + g(t_k) sqrt(abs(h)) Z_k,   Z_k ~ N(0, I) drawn from ``generator``,

    (Kloeden & Platen 1992, Chapters 10 and 14; Sarkka & Solin 2019, Chapter 8). The noise is additive:
    g depends on t only, the same for every coordinate. The method has weak order 1 (errors of
    expectations E[phi(X_T)] shrink like h) and strong order 1/2 in general; with additive noise it
    coincides with the Milstein method and its strong order is 1. With g = 0 it is Euler's method and
    the result equals ``integrate(drift, x, t0, t1, steps, method="euler")`` exactly. t1 < t0 runs the
    grid backwards (h < 0); the noise then still has variance g^2 abs(h) per step.

    Args:
        drift: f, a callable ``f(x, t)``: x of shape ``(B, *D)``, t of shape (B,), result of x's shape.
        diffusion: g, a float >= 0 (constant) or a callable ``g(t)`` taking a float t and returning a
            float >= 0.
        x: the initial state X_{t0}, shape ``(B, *D)``, floating dtype.
        t0: start time (float).
        t1: end time (float).
        steps: number of steps, an int >= 1; ``drift`` is called ``steps`` times.
        generator: random generator for the Brownian increments (on x's device).
        trajectory: if True, return every state, shape ``(steps + 1, B, *D)``.

    Returns:
        X at t1 with x's shape, dtype and device (or the trajectory). For a float16/bfloat16 x the
        state is carried and the times are given in float32, and ``drift`` sees the state in x's dtype.

    Raises:
        TypeError: if drift is not callable, x is not a floating tensor, a time is not a real number,
            steps is not an int, or diffusion (or g(t)) is not a number.
        ValueError: if diffusion (or g(t)) is negative or not finite, a time is not finite, steps < 1,
            the drift returns another shape, or the state becomes NaN or inf.

    Example:
        >>> import torch
        >>> x = torch.zeros(100_000, 1)
        >>> g = torch.Generator().manual_seed(0)
        >>> w = euler_maruyama(lambda x, t: torch.zeros_like(x), 1.0, x, 0.0, 2.0, 20, generator=g)
        >>> round(w.var().item(), 1)  # Brownian motion: Var W_2 = 2
        2.0
    """
    if not callable(drift):
        raise TypeError(f"drift must be a callable f(x, t); got {type(drift).__name__}")
    check_batch(x)
    grid = time_grid(t0, t1, steps=steps).tolist()
    if callable(diffusion):
        g_of_t = diffusion
    else:
        constant = _diffusion_value(diffusion, grid[0])

        def g_of_t(t: float) -> float:
            return constant

    dtype = compute_dtype(x)
    state = x.to(dtype)
    states = [x] if trajectory else None
    for k in range(len(grid) - 1):
        t, h = grid[k], grid[k + 1] - grid[k]
        tt = torch.full((x.shape[0],), t, dtype=dtype, device=x.device)
        f = check_velocity_output(drift(state.to(x.dtype), tt), x, "drift(x, t)").to(dtype)
        g = _diffusion_value(g_of_t(t), t)
        state = state + h * f
        if g > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=dtype, device=x.device)
            state = state + g * math.sqrt(abs(h)) * noise
        if not bool(torch.isfinite(state).all()):
            raise ValueError(
                f"the state became NaN or inf at step {k + 1} of {steps} (t = {grid[k + 1]:g}); "
                "the drift, the diffusion or the step size is unstable"
            )
        if states is not None:
            states.append(state.to(x.dtype))
    return torch.stack(states) if states is not None else state.to(x.dtype)


def integrate_sde(
    v: VelocityField,
    x: Tensor,
    path: AffinePath,
    diffusion: float | Callable[[float], float],
    steps: int,
    generator: torch.Generator | None = None,
    trajectory: bool = False,
) -> Tensor:
    """Sample from t = 0 to 1 with Euler-Maruyama on dX = [v + (g_t^2 / 2) score] dt + g_t dW.

    Each of the ``steps`` equal steps (h = 1 / steps) evaluates v once at the start time t_k,
    takes the score from that value (``path.velocity_to_score``), and sets
    x <- x + h (v + g^2 / 2 score) + g sqrt(h) z with z ~ N(0, I) drawn from ``generator``.
    Every g gives the marginals of the ODE; g = 0 is the ODE, and then the result equals
    ``integrate(v, x, 0, 1, steps, method="euler")`` exactly.

    Near t = 1: the score grows like 1 / sigma_t^2 (for data with point masses), and an explicit
    step whose g^2 h is not small against sigma_t^2 overshoots and diverges. On each step the
    coefficient used is therefore g_t capped at sigma_t / sqrt(h), with sigma_t the path's
    (``path.coefficients(t).sigma_t``): the cap only acts on the last stretch where
    sigma_t < g_t sqrt(h), a window that shrinks as h -> 0, it makes the noise vanish at t = 1
    when sigma_1 = 0, and, since every g has the same marginals, it changes the trajectories,
    not the distribution sampled. Where the capped g is 0 the step is a plain Euler step, and
    v is never evaluated at t = 1.

    Args:
        v: velocity field ``v(x, t)``: x of shape ``(B, *D)``, t of shape (B,), result of x's shape.
        x: initial state at t = 0, shape ``(B, *D)``, floating dtype (usually N(0, I) draws).
        path: the :class:`~fmlib.AffinePath` v was trained on (it supplies the score map and sigma_t).
        diffusion: g, a float >= 0 (constant) or a callable ``g(t)`` taking a float t and
            returning a float >= 0.
        steps: number of steps, an int >= 1; the field is called ``steps`` times (NFE).
        generator: random generator for the Brownian increments.
        trajectory: if True, return every state, shape ``(steps + 1, B, *D)``.

    Returns:
        The state at t = 1 with x's shape, dtype and device (or the trajectory). For a
        float16/bfloat16 x, the state is carried and the times are given in float32, and v sees
        the state in x's dtype.

    Raises:
        TypeError: if v is not callable, x is not a floating tensor, path is not an AffinePath,
            or diffusion (or g(t)) is not a number.
        ValueError: if diffusion (or g(t)) is negative or not finite, steps is not an int >= 1,
            the field returns another shape, or the state becomes NaN or inf.

    Example:
        >>> import torch
        >>> from fmlib import GaussianPath, integrate
        >>> path, x0 = GaussianPath(), torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
        >>> v = lambda x, t: -x
        >>> torch.equal(integrate_sde(v, x0, path, 0.0, 10), integrate(v, x0, steps=10))
        True
    """
    if not callable(v):
        raise TypeError(f"v must be a callable velocity field v(x, t); got {type(v).__name__}")
    check_batch(x)
    if not isinstance(path, AffinePath):
        raise TypeError(f"path must be an AffinePath (e.g. GaussianPath()); got {type(path).__name__}")
    if callable(diffusion):
        g_of_t = diffusion
    else:
        constant = _diffusion_value(diffusion, 0.0)

        def g_of_t(t: float) -> float:
            return constant

    grid = time_grid(0.0, 1.0, steps=check_int(steps, "steps")).tolist()
    dtype = compute_dtype(x)
    state = x.to(dtype)
    states = [x] if trajectory else None
    for k in range(steps):
        t, h = grid[k], grid[k + 1] - grid[k]
        tt = torch.full((x.shape[0],), t, dtype=dtype, device=x.device)
        vel = check_velocity_output(v(state.to(x.dtype), tt), x).to(dtype)
        g = _diffusion_value(g_of_t(t), t)
        if g > 0:
            coef = path.coefficients(t)
            g = min(g, float(coef.sigma_t) / math.sqrt(h))
        if g > 0:
            if float(coef.alpha_t) == 0.0:
                # x_t = sigma_t x0 carries no signal: p_t = N(0, sigma_t^2 I) whatever the data, so the
                # score is exact there even where velocity_to_score cannot recover it (the SNR stands still)
                score = -state / float(coef.sigma_t) ** 2
            else:
                score = path.velocity_to_score(vel, state, tt)
            noise = torch.randn(x.shape, generator=generator, dtype=dtype, device=x.device)
            state = state + h * (vel + 0.5 * g**2 * score) + g * math.sqrt(h) * noise
        else:
            state = state + h * vel
        if not bool(torch.isfinite(state).all()):
            raise ValueError(
                f"the state became NaN or inf at step {k + 1} of {steps} (t = {grid[k + 1]:g}); "
                "the field, the diffusion or the step size is unstable"
            )
        if states is not None:
            states.append(state.to(x.dtype))
    return torch.stack(states) if states is not None else state.to(x.dtype)
