"""Minibatch optimal-transport couplings and sample-based transport metrics.

Sources: Tong et al. (2024), *Improving and Generalizing Flow-Based Generative Models with Minibatch
Optimal Transport* (OT-CFM, Section 3.2; normalised path energy, Section 5); Pooladian et al. (2023),
*Multisample Flow Matching*; Liu et al. (2023), *Flow Straight and Fast* (straightness, Section 2.2).
The assignment problems are solved exactly by POT (``emd``, ``emd2``), with SciPy's
``linear_sum_assignment`` as a fallback.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ._checks import check_batch, check_finite
from .solvers import integrate

__all__ = ["minibatch_ot", "wasserstein2", "path_energy", "normalized_path_energy", "straightness"]


def _points(x: Tensor, name: str) -> Tensor:
    check_batch(x, name)
    check_finite(x, name)
    return x


def _sq_cost(a: Tensor, b: Tensor) -> np.ndarray:
    a64, b64 = a.detach().flatten(1).double().cpu(), b.detach().flatten(1).double().cpu()
    return torch.cdist(a64, b64, compute_mode="donot_use_mm_for_euclid_dist").pow(2).numpy()


def minibatch_ot(x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
    """Pair a minibatch of noise with a minibatch of data by an exact optimal assignment.

    Solves min over permutations pi of ``sum_i |x0[i] - x1[pi(i)]|^2`` (squared Euclidean cost over the
    flattened features) with POT's exact network simplex (``ot.emd``; SciPy's ``linear_sum_assignment``
    as a fallback) and returns ``(x0, x1[pi])``: x0 is kept
    in order, x1 is permuted, so every row of each is used exactly once (no sampling from the plan, no
    duplicates, nothing dropped). For equal-size uniform minibatches an optimal plan is a permutation,
    so this is the exact minibatch OT coupling of Tong et al. (2024) and Pooladian et al. (2023).

    Args:
        x0: source batch, shape ``(B, *D)``, finite.
        x1: data batch, same shape as x0, finite.

    Returns:
        ``(x0, x1_paired)``, both of shape ``(B, *D)``; dtype and device kept.

    Raises:
        ValueError: batch sizes or feature shapes differ (checked before anything is solved), an
            empty batch, or non-finite values.

    Example:
        >>> import torch
        >>> x0, x1 = minibatch_ot(torch.tensor([[0.0], [10.0], [20.0]]), torch.tensor([[21.0], [1.0], [11.0]]))
        >>> x1.flatten().tolist()
        [1.0, 11.0, 21.0]
    """
    _points(x0, "x0")
    _points(x1, "x1")
    if x0.shape != x1.shape:
        raise ValueError(
            f"x0 and x1 must have the same shape (B, *D) to be paired one to one; got {tuple(x0.shape)} "
            f"and {tuple(x1.shape)}"
        )
    import ot

    cost = _sq_cost(x0, x1)
    n = cost.shape[0]
    # POT's network simplex is about 2x faster than linear_sum_assignment here. With uniform weights on
    # equal sizes its basic optimal plan is a permutation matrix / n, read off row by row; should a
    # degenerate plan ever not be one, the assignment solver decides.
    plan = ot.emd(np.full(n, 1 / n), np.full(n, 1 / n), cost, numItermax=10_000_000)
    cols = plan.argmax(axis=1)
    if len(np.unique(cols)) != n or not np.allclose(plan[np.arange(n), cols], 1 / n):
        _, cols = linear_sum_assignment(cost)
    return x0, x1[torch.as_tensor(cols, device=x1.device)]


def wasserstein2(x: Tensor, y: Tensor) -> float:
    """Exact 2-Wasserstein distance between the empirical measures of two sample sets (uniform weights).

    ``W2 = (min over couplings of E |X - Y|^2)^(1/2)``, squared Euclidean cost over flattened features,
    solved exactly by POT's network simplex (``ot.emd2``; about twice as fast as an assignment solver
    here). Cost about ``O(n^3)`` time and ``O(n m)`` memory: fine for a few thousand points.

    Args:
        x: samples, shape ``(n, *D)``, finite.
        y: samples, shape ``(m, *D)`` with the same ``*D``, finite.

    Returns:
        W2 as a Python float (same units as the samples).

    Raises:
        ValueError: empty or non-finite inputs, or feature shapes that differ.

    Example:
        >>> import torch
        >>> wasserstein2(torch.tensor([[0.0], [1.0]]), torch.tensor([[3.0], [4.0]]))
        3.0
    """
    _points(x, "x")
    _points(y, "y")
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"x and y must have the same feature shape; got {tuple(x.shape[1:])} and {tuple(y.shape[1:])}")
    import ot

    cost = _sq_cost(x, y)
    weights_x, weights_y = np.full(x.shape[0], 1 / x.shape[0]), np.full(y.shape[0], 1 / y.shape[0])
    w2sq = float(ot.emd2(weights_x, weights_y, cost, numItermax=10_000_000))
    return max(w2sq, 0.0) ** 0.5


def path_energy(v: Callable[[Tensor, Tensor], Tensor], x0: Tensor, steps: int = 100, method: str = "euler") -> float:
    """``PE = E_x0 int_0^1 |v(x_t, t)|^2 dt`` along the paths of v started at x0.

    The integral is a left Riemann sum over the fixed-step grid of :func:`~fmlib.integrate`
    (exact for the Euler method's piecewise-constant velocities).

    Args:
        v: velocity field.
        x0: starting points, shape ``(B, *D)``.
        steps, method: as for :func:`~fmlib.integrate`.

    Returns:
        PE as a Python float (squared length units).
    """
    _points(x0, "x0")
    with torch.no_grad():
        traj = integrate(v, x0, 0.0, 1.0, steps=steps, method=method, trajectory=True)
        ts = torch.linspace(0, 1, steps + 1, dtype=x0.dtype, device=x0.device)
        speed2 = torch.stack([v(traj[k], ts[k].expand(x0.shape[0])).flatten(1).pow(2).sum(1) for k in range(steps)])
    return float(speed2.mean(1).sum() / steps)


def normalized_path_energy(
    v: Callable[[Tensor, Tensor], Tensor], x0: Tensor, x1: Tensor, steps: int = 100, method: str = "euler"
) -> float:
    """``NPE = |PE(v) - W2^2(x0, x1)| / W2^2(x0, x1)`` (Tong et al. 2024, Section 5).

    The OT displacement between source and data has the least path energy of any flow that transports
    one to the other, namely W2^2; NPE measures how far the learned flow is from it (0 is optimal).
    W2 here is a finite-sample estimate between ``x0`` and ``x1``, biased upward for small samples, so
    a good flow can show PE slightly below it; use a few thousand points.

    Args:
        v: velocity field.
        x0: source samples (the starting points), shape ``(B, *D)``.
        x1: data samples, shape ``(M, *D)``, used for W2.
        steps, method: as for :func:`~fmlib.integrate`.

    Raises:
        ValueError: as for :func:`wasserstein2`, or if W2(x0, x1) = 0.
    """
    w2sq = wasserstein2(x0, x1) ** 2
    if w2sq == 0:
        raise ValueError("NPE is undefined when W2(x0, x1) = 0 (the source and target samples coincide)")
    return abs(path_energy(v, x0, steps, method) - w2sq) / w2sq


def straightness(traj: Tensor) -> float:
    """Straightness ``S = int_0^1 E |(x_1 - x_0) - dx_t/dt|^2 dt`` of trajectories (Liu et al. 2023, Section 2.2).

    Computed from a trajectory of shape ``(T, B, *D)`` on a uniform grid over [0, 1] (as returned by
    ``integrate(..., trajectory=True)``) with finite-difference velocities. S = 0 exactly when every
    path is a straight line travelled at constant speed.

    Raises:
        ValueError: fewer than 2 states or non-finite values.
    """
    if not isinstance(traj, Tensor) or traj.dim() < 3 or traj.shape[0] < 2:
        raise ValueError(f"traj must have shape (T, B, *D) with T >= 2; got {getattr(traj, 'shape', type(traj))}")
    check_finite(traj, "traj")
    steps = traj.shape[0] - 1
    velocity = (traj[1:] - traj[:-1]) * steps
    chord = traj[-1] - traj[0]
    return float((velocity - chord).flatten(2).pow(2).sum(2).mean())
