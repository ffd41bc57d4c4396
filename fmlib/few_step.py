"""Few-step generation: flow maps and their average velocity (MeanFlow), shortcut models, progressive distillation.

The flow map X_{r,t} of a velocity field v sends a point x at time r to the solution of dx/dt = v(x, t) at
time t (r <= t; in this book t = 0 is the noise and t = 1 the data). Its **average velocity** is

    u(x, r, t) = (X_{r,t}(x) - x) / (t - r),    u(x, t, t) = v(x, t),

so one evaluation of u jumps from r to t: X_{r,t}(x) = x + (t - r) u(x, r, t). A network of the average
velocity is called ``model(x, r, t)`` with x at time r, and r, t of shape (B,).

**The MeanFlow identity in this book's convention.** Write z_s for the trajectory through x = z_r. Then
(t - r) u(z_r, r, t) = int_r^t v(z_s, s) ds for every r. Differentiating in the start time r (t fixed),
with z_r moving along the flow (dz_r / dr = v(z_r, r)):

    u(x, r, t) = v(x, r) + (t - r) d/dr u(x, r, t),
    d/dr u(x, r, t) = v(x, r) . grad_x u(x, r, t) + partial_r u(x, r, t),

the total derivative along the flow, i.e. the Jacobian-vector product of u with the tangent (v, 1, 0) on
(x, r, t). Geng et al. (2025, eq. 6) write u(z_t, r, t) = v(z_t, t) - (t - r) d/dt u(z_t, r, t) with their time
running from data (0) to noise (1) and the state at the later time t; under s -> 1 - s both the velocity and
the average velocity change sign and their "d/dt" becomes "-d/dr" here, which gives the identity above with a
plus sign.

Sources: Geng, Deng, Bai, Kolter & He (2025), *Mean Flows for One-step Generative Modeling*, eqs. 4-10 and
Section 4.3 (the (r, t) sampling, adaptive loss weighting); Frans, Hafner, Levine & Abbeel (2025), *One Step
Diffusion via Shortcut Models* (ICLR), Section 3 and Algorithm 1; Salimans & Ho (2022), *Progressive
Distillation for Fast Sampling of Diffusion Models* (ICLR), Algorithm 2; Boffi, Albergo & Vanden-Eijnden (2024),
*Flow Map Matching*, Section 2 (flow maps, the Lagrangian and Eulerian identities).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._checks import (
    as_time,
    check_batch,
    check_finite,
    check_int,
    check_real,
    check_same_shape,
    check_velocity_output,
    compute_dtype,
    unsqueeze_like,
)
from .losses import TimeSampler, sample_times
from .paths import AffinePath, ProbPath

__all__ = [
    "meanflow_target",
    "meanflow_loss",
    "sample_flow_map",
    "shortcut_loss",
    "sample_shortcut",
    "progressive_distillation_loss",
]


def _check_callable(model: object, name: str = "model") -> None:
    if not callable(model):
        raise TypeError(f"{name} must be callable; got {type(model).__name__}")


def _source(x1: Tensor, x0: Tensor | None, generator: torch.Generator | None) -> Tensor:
    if x0 is None:
        return torch.randn(x1.shape, generator=generator, dtype=x1.dtype, device=x1.device)
    check_batch(x0, "x0")
    check_same_shape(x0, x1, "x0", "x1")
    check_finite(x0, "x0")
    return x0


def _check_r_le_t(r: Tensor, t: Tensor) -> None:
    bad = r > t
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"r must be <= t (the map runs forward in time); got r = {float(r[i]):g} > t = {float(t[i]):g}"
        )


def _is_ddp(model: object) -> bool:
    return isinstance(model, torch.nn.parallel.DistributedDataParallel)


def _jvp(model: Callable[..., Tensor], x: Tensor, r: Tensor, t: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """(u, du/dr) with du/dr = JVP of (x, r) -> model(x, r, t) along (v, 1); one forward-mode pass."""
    if _is_ddp(model):
        # DistributedDataParallel's forward broadcasts buffers in place, which torch.func refuses: take the
        # JVP of the bare module without a graph (the target is detached anyway) and the prediction through
        # the wrapper, so that its gradient is all-reduced across the ranks.
        module = model.module  # type: ignore[attr-defined]
        with torch.no_grad():
            dual = torch.func.jvp(lambda x_, r_: module(x_, r_, t), (x, r), (v, torch.ones_like(r)))
        return model(x, r, t), dual[1]
    dual = torch.func.jvp(lambda x_, r_: model(x_, r_, t), (x, r), (v, torch.ones_like(r)))
    return dual[0], dual[1]


def meanflow_target(
    model: Callable[[Tensor, Tensor, Tensor], Tensor],
    x: Tensor,
    r: float | Tensor,
    t: float | Tensor,
    v: Tensor,
) -> Tensor:
    """The MeanFlow target ``v + (t - r) d/dr u(x, r, t)``, the total derivative along v, detached.

    In this book's convention (t = 0 noise, t = 1 data, x at the earlier time r) the average velocity of the
    flow of v satisfies ``u(x, r, t) = v(x, r) + (t - r) d/dr u(x, r, t)`` with
    ``d/dr u = v . grad_x u + partial_r u`` (the module docstring derives it; Geng et al. 2025, eq. 6, in
    reversed time). The derivative is one Jacobian-vector product (``torch.func.jvp``) of
    ``(x, r) -> model(x, r, t)`` along the tangent ``(v, 1)``. For the exact average velocity and the exact
    velocity the target equals ``model(x, r, t)``.

    Args:
        model: an average velocity ``model(x, r, t)``; x of shape ``(B, *D)``, r and t of shape (B,).
            A ``DistributedDataParallel`` wrapper is differentiated through its ``module``.
        x: points at time r, shape ``(B, *D)``, floating dtype.
        r: start times in [0, 1] (float, 0-d or shape (B,)).
        t: end times in [0, 1], t >= r.
        v: the velocity at (x, r), x's shape: the marginal velocity, or in training the conditional one.

    Returns:
        The target, x's shape and dtype, without a graph.

    Raises:
        ValueError: r or t outside [0, 1] or of the wrong length, r > t, v of another shape than x, or a model
            output of another shape than x.
        TypeError: model not callable, x or v not a floating tensor, r or t of the wrong kind.

    Example:
        >>> import torch
        >>> u = lambda x, r, t: -x * 0 + 1.0  # the flow of v = 1: u = 1 everywhere
        >>> meanflow_target(u, torch.zeros(2, 1), 0.2, 0.7, torch.ones(2, 1)).flatten().tolist()
        [1.0, 1.0]
    """
    _check_callable(model)
    check_batch(x, "x")
    check_batch(v, "v")
    check_same_shape(v, x, "v", "x")
    r_, t_ = as_time(r, x, "r"), as_time(t, x, "t")
    _check_r_le_t(r_, t_)
    with torch.no_grad():
        out, dudr = _jvp(model, x, r_, t_, v)
    check_velocity_output(out, x, "model(x, r, t)")
    dt = unsqueeze_like(t_ - r_, x)
    return (v.to(dt.dtype) + dt * dudr.to(dt.dtype)).to(x.dtype).detach()


def _default_times(
    batch: int,
    time_sampler: str | TimeSampler | None,
    equal_share: float,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    a = sample_times(time_sampler, batch, generator, dtype, device)
    b = sample_times(time_sampler, batch, generator, dtype, device)
    r, t = torch.minimum(a, b), torch.maximum(a, b)
    equal = torch.rand(batch, generator=generator, dtype=dtype, device=device) < equal_share
    return torch.where(equal, t, r), t


def meanflow_loss(
    model: Callable[[Tensor, Tensor, Tensor], Tensor],
    path: ProbPath,
    x1: Tensor,
    x0: Tensor | None = None,
    r: float | Tensor | None = None,
    t: float | Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    equal_share: float = 0.75,
    time_sampler: str | TimeSampler | None = None,
    adaptive_p: float = 0.0,
    adaptive_c: float = 1e-3,
) -> Tensor:
    """The MeanFlow loss ``mean_b w_b | u_theta(x_r, r, t) - sg(u_tgt) |^2`` for an affine path.

    x_r is drawn from the conditional path at the start time r, with its conditional velocity v_r = u_r(x_r | z)
    (for a :class:`~fmlib.LinearPath`, x1 - x0), and the target is
    ``u_tgt = v_r + (t - r) d/dr u_theta(x_r, r, t)`` with the total derivative along (v_r, 1, 0) on (x, r, t)
    (see :func:`meanflow_target`), computed in the same forward-mode pass as the prediction
    (``torch.func.jvp`` returns both) and detached (sg, stop-gradient). Replacing the marginal velocity by the
    conditional one leaves the minimiser unchanged, as in CFM, because the target is linear in v_r; its
    minimiser is the average velocity of the marginal flow (Geng et al. 2025, eqs. 9-10, in this book's time).
    The squared norm is summed over ``*D`` and averaged over the batch, as in :func:`~fmlib.cfm_loss`; with r = t
    the JVP term vanishes and the loss is exactly ``cfm_loss`` of the field ``v(x, t) = model(x, t, t)`` on the
    same x0, x1 and t.

    Default times (Geng et al. 2025, Section 4.3 and Table 1a, where 25 % of rows with r != t did best): two
    independent draws from ``time_sampler`` (default U[0, 1]), sorted so that r <= t, then r is set to t on a
    share ``equal_share`` (default 0.75) of the rows, chosen at random. The paper's best time distribution,
    logit-normal(-0.4, 1) in its reversed time, is ``fmlib.logit_normal(0.4, 1.0)`` here. Draw order:
    x0 (if not given), the two time draws, the r = t mask, then the path's own noise.

    Adaptive weighting (Geng et al. 2025, Section 4.3): with ``adaptive_p = p > 0`` each row's squared error
    e_b is weighted by ``sg(1 / (e_b + c)^p)``; p = 1 (the paper's choice) behaves like a robust, Pseudo-Huber
    loss. p = 0 (default) is the plain squared error.

    Under ``DistributedDataParallel`` (as :func:`~fmlib.train` wraps a model under torchrun) the JVP is taken
    on ``model.module`` without a graph and the prediction through the wrapper (a second forward pass), so the
    gradients are all-reduced; torch.func transforms refuse the wrapper's in-place buffer broadcast.

    Args:
        model: the average velocity ``model(x, r, t)`` with x of shape ``(B, *D)`` at time r and r, t of shape
            (B,); returns x's shape (e.g. ``fmlib.MLP(dim, two_times=True)``).
        path: an :class:`~fmlib.AffinePath` (LinearPath, GaussianPath, any scheduler).
        x1: data batch, shape ``(B, *D)``, floating dtype, finite.
        x0: source batch of x1's shape; default N(0, I) noise drawn from ``generator``.
        r: start times in [0, 1] (float, 0-d or shape (B,)); give r and t together or neither.
        t: end times in [0, 1], t >= r.
        generator: random generator for the default x0, r, t and the path's noise.
        equal_share: the share of rows with r = t in the default draw, in [0, 1].
        time_sampler: distribution of the default times, as for :func:`~fmlib.cfm_loss`.
        adaptive_p: power p of the adaptive weight, >= 0 (0: none).
        adaptive_c: the constant c > 0 of the adaptive weight.

    Returns:
        A scalar tensor, differentiable with respect to the model's parameters.

    Raises:
        ValueError: x0 and x1 differ in shape; r or t outside [0, 1] or of the wrong length; r > t; only one of
            r and t given; a model output of another shape than x; equal_share, adaptive_p or adaptive_c out of
            range.
        TypeError: model not callable; path not an AffinePath; x1 or x0 not a floating tensor; r, t or the
            options of the wrong kind.

    Example:
        >>> import torch
        >>> from fmlib import LinearPath
        >>> x0, x1 = torch.zeros(4, 2), torch.ones(4, 2)
        >>> zero = lambda x, r, t: torch.zeros_like(x)
        >>> float(meanflow_loss(zero, LinearPath(), x1, x0=x0, r=0.2, t=0.6))
        2.0
    """
    _check_callable(model)
    if not isinstance(path, AffinePath):
        raise TypeError(f"path must be an AffinePath (LinearPath, GaussianPath, ...); got {type(path).__name__}")
    check_batch(x1, "x1")
    check_finite(x1, "x1")
    equal_share = check_real(equal_share, "equal_share", 0.0, 1.0)
    adaptive_p = check_real(adaptive_p, "adaptive_p", low=0.0)
    adaptive_c = check_real(adaptive_c, "adaptive_c", low=0.0, low_inclusive=False)
    if (r is None) != (t is None):
        raise ValueError(
            f"give r and t together or neither; got r={'None' if r is None else 'given'}, "
            f"t={'None' if t is None else 'given'}"
        )
    x0 = _source(x1, x0, generator)
    if r is None or t is None:
        r_, t_ = _default_times(x1.shape[0], time_sampler, equal_share, generator, compute_dtype(x1), x1.device)
    else:
        r_, t_ = as_time(r, x1, "r"), as_time(t, x1, "t")
        _check_r_le_t(r_, t_)
    s = path.sample(x0, x1, r_, generator=generator)
    out, dudr = _jvp(model, s.x_t, s.t, t_.to(s.t.dtype), s.u_t)
    check_velocity_output(out, s.x_t, "model(x, r, t)")
    dt = unsqueeze_like(t_ - r_, s.x_t).to(s.t.dtype)
    target = (s.u_t.to(dt.dtype) + dt * dudr.detach().to(dt.dtype)).detach()
    err = (out.to(target.dtype) - target).reshape(target.shape[0], -1).pow(2).sum(dim=1)
    if adaptive_p > 0:
        err = err / (err.detach() + adaptive_c) ** adaptive_p
    return err.mean()


def _grid(steps: int | Sequence[float] | Tensor, x: Tensor) -> Tensor:
    dtype = compute_dtype(x)
    if isinstance(steps, (Tensor, Sequence)) and not isinstance(steps, str):
        grid = torch.as_tensor(steps, dtype=torch.float64)
        if grid.dim() != 1 or grid.numel() < 2:
            raise ValueError(f"steps as a grid must be a 1-d sequence of >= 2 times; got shape {tuple(grid.shape)}")
        if not bool(torch.isfinite(grid).all()) or float(grid.min()) < 0 or float(grid.max()) > 1:
            raise ValueError(f"steps as a grid must hold times in [0, 1]; got {grid.tolist()}")
        if not bool((grid[1:] > grid[:-1]).all()):
            raise ValueError(f"steps as a grid must be strictly increasing; got {grid.tolist()}")
    else:
        n = check_int(steps, "steps", 1)
        grid = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)
    return grid.to(dtype=dtype, device=x.device)


def sample_flow_map(
    model: Callable[[Tensor, Tensor, Tensor], Tensor],
    x0: Tensor,
    steps: int | Sequence[float] | Tensor = 1,
    trajectory: bool = False,
) -> Tensor:
    """Jump along a flow map: ``x <- x + (t_{k+1} - t_k) u(x, t_k, t_{k+1})`` over a time grid; NFE = steps.

    With the exact average velocity every jump is exact, whatever the number of steps (Geng et al. 2025,
    Algorithm 2, in this book's time: from the noise at t = 0 to the data at t = 1). No graph is dropped:
    wrap the call in ``torch.no_grad()`` to sample without one, as for :func:`~fmlib.integrate`.

    Args:
        model: the average velocity ``model(x, r, t)``, r and t of shape (B,).
        x0: the starting points, shape ``(B, *D)``, floating dtype (noise at t = 0 for the default grid).
        steps: the number of jumps on the uniform grid 0, 1/steps, ..., 1 (an int >= 1), or the grid itself:
            a 1-d sequence or tensor of >= 2 strictly increasing times in [0, 1].
        trajectory: if True, return all states, shape ``(K + 1, B, *D)``.

    Returns:
        x at the last time of the grid, x0's shape and dtype (or the trajectory). Times and the jumps are
        computed in at least float32.

    Raises:
        ValueError: steps < 1, a grid that is not increasing, outside [0, 1] or too short, or a model output of
            another shape than x.
        TypeError: model not callable, x0 not a floating tensor, steps neither an int nor a sequence.

    Example:
        >>> import torch
        >>> u = lambda x, r, t: torch.ones_like(x)  # the flow of v = 1
        >>> sample_flow_map(u, torch.zeros(2, 1), steps=2).flatten().tolist()
        [1.0, 1.0]
    """
    _check_callable(model)
    check_batch(x0, "x0")
    if isinstance(steps, bool):
        raise TypeError("steps must be an int >= 1 or a grid of times; got bool")
    grid = _grid(steps, x0)
    x = x0
    states = [x0]
    for k in range(grid.numel() - 1):
        r = grid[k].expand(x.shape[0])
        t = grid[k + 1].expand(x.shape[0])
        u = check_velocity_output(model(x, r, t), x, "model(x, r, t)")
        x = (x.to(grid.dtype) + (grid[k + 1] - grid[k]) * u.to(grid.dtype)).to(x0.dtype)
        if trajectory:
            states.append(x)
    return torch.stack(states) if trajectory else x


def shortcut_loss(
    model: Callable[[Tensor, Tensor, Tensor], Tensor],
    path: ProbPath,
    x1: Tensor,
    x0: Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    max_steps: int = 128,
    consistency_share: float = 0.25,
    time_sampler: str | TimeSampler | None = None,
) -> Tensor:
    """The shortcut-model loss: flow matching at d = 0 plus self-consistency at d > 0 (Frans et al. 2025).

    A shortcut model ``s(x, t, d)`` is the average velocity over a step of size d from x at time t:
    ``x_{t+d} = x_t + d s(x_t, t, d)``, i.e. ``u(x, t, t + d)`` of a flow map. It is trained with two terms
    (Frans et al. 2025, Section 3, eqs. 5-6 and Algorithm 1):

    * flow matching, on a share 1 - consistency_share of the rows: ``| s(x_t, t, 0) - u_t(x_t | z) |^2`` with
      t from ``time_sampler`` and x_t from the path (any path; the conditional velocity is the target);
    * self-consistency, on the other rows: one jump of size 2d equals two jumps of size d,
      ``| s(x_t, t, 2d) - sg((s(x_t, t, d) + s(x'_{t+d}, t + d, d)) / 2) |^2``, x'_{t+d} = x_t + d s(x_t, t, d),
      with 2d drawn uniformly from {2 / max_steps, 4 / max_steps, ..., 1} and t uniformly from the multiples
      of 2d in [0, 1 - 2d]. At the smallest step d = 1 / max_steps the targets query ``s(., ., 0)``, the
      instantaneous velocity, so every level is tied to the flow-matching term (max_steps Euler steps of it).

    Both terms are squared norms summed over ``*D`` and averaged over the whole batch (the mean over B).

    Args:
        model: the shortcut model ``model(x, t, d)``, x of shape ``(B, *D)``, t and d of shape (B,)
            (e.g. ``fmlib.MLP(dim, two_times=True)``).
        path: the conditional path of the flow-matching term (the consistency term needs none).
        x1: data batch, shape ``(B, *D)``, floating dtype, finite.
        x0: source batch of x1's shape; default N(0, I) drawn from ``generator``.
        generator: random generator for x0, the rows' roles, t, d and the path's noise.
        max_steps: M, the finest number of steps, a power of 2 >= 2.
        consistency_share: the share of rows with the self-consistency term, in [0, 1].
        time_sampler: distribution of t for the flow-matching rows, as for :func:`~fmlib.cfm_loss`.

    Returns:
        A scalar tensor, differentiable with respect to the model's parameters.

    Raises:
        ValueError: x0 and x1 differ in shape, max_steps not a power of 2 >= 2, consistency_share outside
            [0, 1], or a model output of another shape than x.
        TypeError: model not callable, x1 or x0 not a floating tensor, max_steps not an int.

    Example:
        >>> import torch
        >>> from fmlib import LinearPath
        >>> zero = lambda x, t, d: torch.zeros_like(x)
        >>> x1 = torch.ones(8, 2)
        >>> float(shortcut_loss(zero, LinearPath(), x1, x0=torch.zeros(8, 2), consistency_share=0.0))
        2.0
    """
    _check_callable(model)
    check_batch(x1, "x1")
    check_finite(x1, "x1")
    m = check_int(max_steps, "max_steps", 2)
    if m & (m - 1):
        raise ValueError(f"max_steps must be a power of 2 >= 2; got {m}")
    share = check_real(consistency_share, "consistency_share", 0.0, 1.0)
    x0 = _source(x1, x0, generator)
    batch, dtype, device = x1.shape[0], compute_dtype(x1), x1.device
    n_sc = int(round(share * batch))
    n_fm = batch - n_sc
    # flow-matching rows: d = 0, t from the sampler
    t_fm = sample_times(time_sampler, n_fm, generator, dtype, device)
    # consistency rows: 2d = 2^j / M, j = 1..log2 M; t a multiple of 2d below 1
    levels = int(math.log2(m))
    j = torch.randint(1, levels + 1, (n_sc,), generator=generator, device=device)
    two_d = (2.0**j).to(dtype) / m
    n_slots = torch.round(1.0 / two_d)
    t_sc = torch.floor(torch.rand(n_sc, generator=generator, dtype=dtype, device=device) * n_slots) * two_d
    t_all = torch.cat([t_fm, t_sc])
    s = path.sample(x0, x1, t_all, generator=generator)
    d = two_d / 2
    targets = [s.u_t[:n_fm]]
    if n_sc > 0:
        x_sc = s.x_t[n_fm:]
        d_query = torch.where(j == 1, torch.zeros_like(d), d)
        with torch.no_grad():
            s1 = check_velocity_output(model(x_sc, t_sc, d_query), x_sc, "model(x, t, d)")
            x_mid = (x_sc.to(dtype) + unsqueeze_like(d, x_sc) * s1.to(dtype)).to(x_sc.dtype)
            s2 = check_velocity_output(model(x_mid, t_sc + d, d_query), x_sc, "model(x, t, d)")
            targets.append(((s1.to(dtype) + s2.to(dtype)) / 2).to(x_sc.dtype))
    target = torch.cat(targets).detach()
    d_all = torch.cat([torch.zeros_like(t_fm), two_d])
    out = check_velocity_output(model(s.x_t, s.t, d_all), s.x_t, "model(x, t, d)")
    return (out.to(target.dtype) - target).reshape(batch, -1).pow(2).sum(dim=1).mean()


def sample_shortcut(
    model: Callable[[Tensor, Tensor, Tensor], Tensor],
    x0: Tensor,
    steps: int = 1,
    trajectory: bool = False,
) -> Tensor:
    """Sample a shortcut model with ``steps`` jumps of size d = 1 / steps: ``x <- x + d s(x, t, d)``; NFE = steps.

    A shortcut model is a flow map in another parameterisation, ``u(x, r, t) = s(x, r, t - r)``, so this is
    :func:`sample_flow_map` on the uniform grid (Frans et al. 2025, Section 3). Trained with
    :func:`shortcut_loss`, it knows the step sizes 1 / 2^k down to 1 / max_steps; use a power of 2 for steps.

    Args:
        model: the shortcut model ``model(x, t, d)``.
        x0: noise at t = 0, shape ``(B, *D)``, floating dtype.
        steps: number of jumps, an int >= 1.
        trajectory: if True, return all states, shape ``(steps + 1, B, *D)``.

    Returns:
        x at t = 1 (or the trajectory), x0's shape and dtype.

    Raises:
        ValueError: steps < 1 or a model output of another shape than x.
        TypeError: model not callable, x0 not a floating tensor, steps not an int.

    Example:
        >>> import torch
        >>> s = lambda x, t, d: torch.ones_like(x)
        >>> sample_shortcut(s, torch.zeros(2, 1), steps=4).flatten().tolist()
        [1.0, 1.0]
    """
    _check_callable(model)
    check_int(steps, "steps", 1)
    return sample_flow_map(lambda x, r, t: model(x, r, t - r), x0, steps, trajectory=trajectory)


def progressive_distillation_loss(
    student: Callable[[Tensor, Tensor], Tensor],
    teacher: Callable[[Tensor, Tensor], Tensor],
    path: ProbPath,
    x1: Tensor,
    steps: int,
    x0: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Progressive distillation for flows: one Euler step of the student = two Euler steps of the teacher.

    Salimans & Ho (2022), Algorithm 2, written for a velocity field and Euler's method: the student v_S samples
    with ``steps`` = K Euler steps of h = 1 / K, the teacher v_T with 2K. For each row a grid time t = k h
    (k uniform in 0..K-1) and x_t from the path, the teacher takes two half steps,
    ``x_m = x_t + (h/2) v_T(x_t, t)``, ``x_e = x_m + (h/2) v_T(x_m, t + h/2)``, and the student regresses the
    velocity that lands there in one step: ``| v_S(x_t, t) - sg((x_e - x_t) / h) |^2`` (summed over ``*D``,
    averaged over the batch). Training rounds K = N/2, N/4, ..., 1, each student the next round's teacher (and
    its initialisation), halve the number of evaluations per round; :func:`~fmlib.integrate` with
    ``method="euler"`` and ``steps=K`` samples each student.

    Why this method: each target is two evaluations of the teacher on the student's own grid, with no ODE
    solve for pairs (reflow), no Jacobian-vector product (MeanFlow), no distance function or target network
    (consistency distillation); a student that matches the teacher exactly reproduces its 2K-step samples, so
    the error of a round is measured directly against the teacher. The price is one training round per
    halving, and a student that is good only at its own K.

    Args:
        student: velocity field ``student(x, t)`` (the network trained), x of shape ``(B, *D)``, t of shape (B,).
        teacher: velocity field ``teacher(x, t)`` sampled with 2 * steps Euler steps (evaluated without a graph).
        path: the conditional path that supplies x_t (as in training the teacher).
        x1: data batch, shape ``(B, *D)``, floating dtype, finite.
        steps: K, the student's number of Euler steps, an int >= 1.
        x0: source batch of x1's shape; default N(0, I) drawn from ``generator``.
        generator: random generator for x0, the grid times and the path's noise.

    Returns:
        A scalar tensor, differentiable with respect to the student's parameters.

    Raises:
        ValueError: x0 and x1 differ in shape, steps < 1, or an output of another shape than x.
        TypeError: student or teacher not callable, x1 or x0 not a floating tensor, steps not an int.

    Example:
        >>> import torch
        >>> from fmlib import LinearPath
        >>> v = lambda x, t: torch.ones_like(x)  # a straight flow: one step = two steps
        >>> float(progressive_distillation_loss(v, v, LinearPath(), torch.ones(4, 2), steps=1))
        0.0
    """
    _check_callable(student, "student")
    _check_callable(teacher, "teacher")
    check_batch(x1, "x1")
    check_finite(x1, "x1")
    k_steps = check_int(steps, "steps", 1)
    x0 = _source(x1, x0, generator)
    batch, dtype, device = x1.shape[0], compute_dtype(x1), x1.device
    h = 1.0 / k_steps
    t = torch.randint(0, k_steps, (batch,), generator=generator, device=device).to(dtype) * h
    s = path.sample(x0, x1, t, generator=generator)
    x = s.x_t
    with torch.no_grad():
        v1 = check_velocity_output(teacher(x, s.t), x, "teacher(x, t)").to(dtype)
        x_m = x.to(dtype) + (h / 2) * v1
        v2 = check_velocity_output(teacher(x_m.to(x.dtype), s.t + h / 2), x, "teacher(x, t)").to(dtype)
        target = ((v1 + v2) / 2).to(x.dtype)  # (x_e - x_t) / h
    out = check_velocity_output(student(x, s.t), x, "student(x, t)")
    return (out.to(target.dtype) - target).reshape(batch, -1).pow(2).sum(dim=1).mean()
