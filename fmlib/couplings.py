"""Couplings: which data point each source sample is paired with in a minibatch.

A coupling is a callable ``coupling(x0, x1) -> pi`` that returns an int64 tensor of shape (B,) such that
``x1[pi]`` is paired with ``x0`` (row i of x0 goes with row ``pi[i]`` of x1). :func:`ot_assignment` is
one (the exact minibatch OT coupling); :func:`sinkhorn_coupling` builds one from an entropic OT plan.

Sources: Tong et al. (2024), *Improving and Generalizing Flow-Based Generative Models with Minibatch
Optimal Transport* (OT-CFM, Section 3.2; SB-CFM with an entropic plan of regularisation 2 sigma^2);
Pooladian et al. (2023), *Multisample Flow Matching* (minibatch couplings, Section 3);
Cuturi (2013), *Sinkhorn Distances* (entropic OT). The exact problems are solved by SciPy's
``linear_sum_assignment`` (up to 256 rows) or POT's network simplex (``ot.emd``), the entropic ones by POT's
Sinkhorn iterations (``ot.sinkhorn``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ._checks import check_batch, check_finite, check_int, check_real

if TYPE_CHECKING:
    from .solvers import FixedStepMethod, StepFunction

__all__ = ["ot_assignment", "minibatch_ot", "sinkhorn_coupling", "reflow_pairs"]

Coupling = Callable[[Tensor, Tensor], Tensor]

# Up to this size SciPy's linear_sum_assignment solves an assignment faster than POT's network simplex on one
# CPU core (benchmarks/couplings.py: about 0.2 ms against 1 ms at B = 64); above it the simplex wins
# (about 0.13 s against 0.22 s at B = 512).
_SCIPY_MAX = 256

# exp(-c) underflows float64's normal range (about 2.2e-308) above c = 708; beyond 700, the plain Sinkhorn
# iterations lose the kernel's entries.
_UNDERFLOW = 700.0


def _points(x: Tensor, name: str) -> Tensor:
    check_batch(x, name)
    check_finite(x, name)
    return x


def _pair_checked(x0: Tensor, x1: Tensor) -> None:
    _points(x0, "x0")
    _points(x1, "x1")
    if x0.shape != x1.shape:
        raise ValueError(
            f"x0 and x1 must have the same shape (B, *D) to be paired one to one; got {tuple(x0.shape)} "
            f"and {tuple(x1.shape)}"
        )


def _sq_costs(a: Tensor, b: Tensor) -> tuple[np.ndarray, float]:
    """``(costs, s)`` for stacks of problems ``a``, ``b`` of shape ``(P, m, *D)``: costs[p] holds the squared
    Euclidean distances between the flattened rows of a[p] and b[p] in units of ``s^2`` (float64 NumPy, shape
    (P, m, m)), without the |a|^2 + |b|^2 - 2ab cancellation of the matrix-product formula.

    The coordinates are first divided by the power of two s just above their largest magnitude (exactly, so
    ``cost * s^2`` is the squared distance): squares of coordinates near 1e200 or 1e-200 would overflow to
    inf or underflow to 0 in float64, while the scaled ones are at most 1. All P problems in one batched call.
    """
    a64 = a.detach().reshape(a.shape[0], a.shape[1], -1).double().cpu()  # (B,) batches too: one feature each
    b64 = b.detach().reshape(b.shape[0], b.shape[1], -1).double().cpu()
    top = float(torch.maximum(a64.abs().max(), b64.abs().max())) if a64.numel() and b64.numel() else 0.0
    s = 2.0 ** math.frexp(top)[1] if top > 0.0 else 1.0
    cost = torch.cdist(a64 / s, b64 / s, compute_mode="donot_use_mm_for_euclid_dist").pow(2).numpy()
    return cost, s


def _sq_cost(a: Tensor, b: Tensor) -> tuple[np.ndarray, float]:
    """``(cost, s)`` of :func:`_sq_costs` for one problem: a of shape (B, *D), b of shape (B', *D)."""
    costs, s = _sq_costs(a[None], b[None])
    return costs[0], s


def _rescaled(cost: np.ndarray) -> tuple[np.ndarray, float]:
    """``(cost / scale, scale)`` with scale = the largest entry (1 if all are 0).

    The network simplex compares reduced costs against absolute tolerances near 1e-16 (float64 rounding at
    unit scale), so a cost matrix whose entries are all ~1e-16 (coordinates ~1e-8) looks degenerate to it.
    Dividing by the largest entry makes the problem the same at every coordinate scale: the optimal pairing
    does not change under a positive scaling of the cost.
    """
    scale = float(cost.max()) if cost.size else 0.0
    if scale <= 0.0 or not np.isfinite(scale):
        return cost, 1.0
    return cost / scale, scale


def _exact_assignment(cost: np.ndarray) -> np.ndarray:
    """Columns of an optimal assignment of a square cost matrix (row i -> column cols[i])."""
    n = cost.shape[0]
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    scaled, _ = _rescaled(cost)
    if n <= _SCIPY_MAX:
        # Small problems: SciPy's shortest-augmenting-path solver is several times faster than the simplex.
        from scipy.optimize import linear_sum_assignment

        return np.asarray(linear_sum_assignment(scaled)[1], dtype=np.int64)
    import ot

    # Integer masses: an optimal basic plan of the network simplex is then a 0/1 permutation matrix.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan, log = ot.emd(np.ones(n), np.ones(n), scaled, numItermax=100 * n * n + 100_000, log=True)
    cols = plan.argmax(axis=1)
    if log.get("result_code", 1) != 1 or len(np.unique(cols)) != n or not np.allclose(plan[np.arange(n), cols], 1.0):
        # Not proven optimal or not a permutation (never seen, kept as a guard): the assignment solver decides.
        from scipy.optimize import linear_sum_assignment

        _, cols = linear_sum_assignment(scaled)
    return np.asarray(cols, dtype=np.int64)


def _check_labels(labels: object, batch: int) -> np.ndarray:
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be an integer torch.Tensor of shape ({batch},); got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integer class labels; got dtype {labels.dtype}")
    if labels.shape != (batch,):
        raise ValueError(f"labels must have shape ({batch},) to match the batch; got shape {tuple(labels.shape)}")
    return labels.detach().cpu().numpy()


def ot_assignment(x0: Tensor, x1: Tensor, labels: Tensor | None = None, block_size: int | None = None) -> Tensor:
    """The permutation pi of an exact minibatch optimal-transport assignment: ``x1[pi]`` goes with ``x0``.

    Solves ``min over permutations pi of sum_i |x0[i] - x1[pi[i]]|^2`` (squared Euclidean cost over the
    flattened features). For equal-size uniform minibatches an optimal OT plan is a permutation, so this is
    the exact minibatch OT coupling of OT-CFM (Tong et al. 2024, Section 3.2) and of multisample flow
    matching (Pooladian et al. 2023). The cost is divided by its largest entry, so the pairing is the same
    at any coordinate scale (1e-8 or 1e8 as at 1). Problems of up to 256 rows are solved by SciPy's
    ``linear_sum_assignment`` (faster there), larger ones by POT's network simplex (``ot.emd``), with
    SciPy taking over should the simplex ever not return a proven optimal permutation.

    ``labels`` restricts the pairing to equal labels (class-conditional OT): row i of x0 is given the label
    ``labels[i]``, the same label as row i of x1, so the batch's class counts are kept, and each class is
    solved on its own. Then ``labels[pi] == labels`` for every row, and a per-row tensor that belongs to x1
    (the class condition ``cond``) still matches after it is permuted by pi. ``block_size`` splits the
    batch (within each label) into consecutive blocks of at most that many rows and solves each exactly:
    the sub-batch OT coupling, much cheaper for large batches and exact OT within each block.

    Used as a coupling: ``cfm_loss(model, path, x1, coupling=ot_assignment)``; with labels or blocks,
    ``coupling=functools.partial(ot_assignment, labels=y)`` or ``partial(ot_assignment, block_size=128)``.
    Time: O(B^3) in the worst case (about 0.1 s at B = 512 on one CPU core), far less with blocks
    (B / b problems of size b).

    Args:
        x0: source batch, shape ``(B, *D)``, floating, finite.
        x1: data batch, the same shape as x0, floating, finite.
        labels: optional integer labels, shape (B,), any device.
        block_size: optional int >= 1, the largest sub-problem solved exactly.

    Returns:
        pi, an int64 permutation of 0..B-1, shape (B,), on x1's device.

    Raises:
        ValueError: batch sizes or feature shapes differ (checked before anything is solved), an empty
            batch, non-finite values, labels of the wrong shape or dtype, block_size < 1.
        TypeError: x0 or x1 not a floating tensor, labels not a tensor, block_size not an int.

    Example:
        >>> import torch
        >>> pi = ot_assignment(torch.tensor([[0.0], [10.0], [20.0]]), torch.tensor([[21.0], [1.0], [11.0]]))
        >>> pi.tolist()
        [1, 2, 0]
    """
    _pair_checked(x0, x1)
    n = x0.shape[0]
    if block_size is not None:
        block_size = check_int(block_size, "block_size")
    groups: list[np.ndarray]
    if labels is None:
        groups = [np.arange(n)]
    else:
        lab = _check_labels(labels, n)
        groups = [np.flatnonzero(lab == c) for c in np.unique(lab)]
    if block_size is not None:
        groups = [g[i : i + block_size] for g in groups for i in range(0, len(g), block_size)]
    pi = np.empty(n, dtype=np.int64)
    if len(groups) == 1:
        pi[:] = _exact_assignment(_sq_cost(x0, x1)[0])
    elif labels is None and block_size is not None:
        # consecutive blocks: the costs of all full blocks in one batched call, then one solve per block
        full = n - n % block_size
        costs, _ = _sq_costs(x0[:full].unflatten(0, (-1, block_size)), x1[:full].unflatten(0, (-1, block_size)))
        for k, cost in enumerate(costs):
            pi[k * block_size : (k + 1) * block_size] = k * block_size + _exact_assignment(cost)
        if full < n:
            pi[full:] = full + _exact_assignment(_sq_cost(x0[full:], x1[full:])[0])
    else:
        for g in groups:
            idx = torch.as_tensor(g, device=x0.device)
            pi[g] = g[_exact_assignment(_sq_cost(x0[idx], x1[idx])[0])]
    return torch.as_tensor(pi, device=x1.device)


def minibatch_ot(
    x0: Tensor, x1: Tensor, labels: Tensor | None = None, block_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Pair a minibatch of noise with a minibatch of data by an exact optimal assignment: ``(x0, x1[pi])``.

    ``pi = ot_assignment(x0, x1, labels, block_size)``; x0 is kept in order and x1 is permuted, so every
    row of each is used exactly once (no sampling from the plan, no duplicates, nothing dropped). See
    :func:`ot_assignment` for the problem, the solver, ``labels`` and ``block_size``; use that function
    when per-row tensors of x1 (labels, weights) must follow the pairing.

    Args:
        x0: source batch, shape ``(B, *D)``, finite.
        x1: data batch, same shape as x0, finite.
        labels, block_size: as for :func:`ot_assignment`.

    Returns:
        ``(x0, x1_paired)``, both of shape ``(B, *D)``; dtype and device kept.

    Raises:
        ValueError, TypeError: as for :func:`ot_assignment`.

    Example:
        >>> import torch
        >>> x0, x1 = minibatch_ot(torch.tensor([[0.0], [10.0], [20.0]]), torch.tensor([[21.0], [1.0], [11.0]]))
        >>> x1.flatten().tolist()
        [1.0, 11.0, 21.0]
    """
    pi = ot_assignment(x0, x1, labels=labels, block_size=block_size)
    return x0, x1[pi]


def _sinkhorn_pairs(
    x0: Tensor, x1: Tensor, reg: float, generator: torch.Generator | None, method: str, num_iter: int, tol: float
) -> Tensor:
    import ot

    _pair_checked(x0, x1)
    n = x0.shape[0]
    cost, unit = _sq_cost(x0, x1)
    reg_u = reg / unit / unit  # reg in the cost's units (s^2)
    if not 0.0 < reg_u < math.inf:
        raise ValueError(
            f"reg={reg:g} is out of float64's range for points of magnitude {unit:g}: reg / {unit:g}^2 = {reg_u:g}"
        )
    if method == "sinkhorn":
        # exp(-C / reg) underflows to 0 (float64) once C / reg exceeds about 745. A row of zeros (an x0 point
        # far from every x1) has no scaling that meets its marginal, and the plain iterations divide 0 by 0; a
        # column of zeros (an x1 outlier far from every x0) never receives mass, so it is never drawn, whatever
        # the number of iterations. The log-domain iterations handle both.
        row_least, col_least = cost.min(axis=1), cost.min(axis=0)
        need = max(float(row_least.max()), float(col_least.max())) / _UNDERFLOW * unit * unit
        for least, side, what in ((row_least, "x0", "place its mass"), (col_least, "x1", "ever draw it")):
            worst = float(least.max() / reg_u)
            if worst > _UNDERFLOW:
                raise ValueError(
                    f"reg={reg:g} underflows Sinkhorn: exp(-cost / reg) is 0 for every partner of "
                    f"{side}[{int(least.argmax())}] (its smallest cost / reg = {worst:.3g} > {_UNDERFLOW:g}), so "
                    f"the plain iterations cannot {what}. Use method='sinkhorn_log' (log-domain iterations, the "
                    f"same plan), a larger reg (for these points reg > {need:.3g}), or ot_assignment for exact OT."
                )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = ot.sinkhorn(
            np.full(n, 1.0 / n), np.full(n, 1.0 / n), cost, reg_u, method=method, numItermax=num_iter, stopThr=tol
        )
    plan = np.asarray(plan, dtype=np.float64)
    rows = plan.sum(axis=1, keepdims=True)
    if not np.isfinite(plan).all() or (rows <= 0).any():
        raise ValueError(
            f"reg={reg:g} underflows Sinkhorn ({method}): the plan has rows without mass or non-finite entries; "
            "use a larger reg or method='sinkhorn_log'"
        )
    miss = float(np.abs(plan.sum(axis=0) * n - 1.0).max())
    if miss > 1e-2:
        if method == "sinkhorn" and float(cost.max()) / reg_u > _UNDERFLOW:
            # some entries of exp(-cost / reg) are 0: more iterations may not help, the log domain does
            advice = "exp(-cost / reg) underflows to 0 for some pairs: use method='sinkhorn_log', or raise reg"
        else:
            advice = "raise num_iter or reg"
        warnings.warn(
            f"Sinkhorn ({method}, reg={reg:g}) did not converge in num_iter={num_iter} iterations: the plan's "
            f"column sums miss 1/B by up to {100 * miss:.3g}%, so x1 rows are not used once in expectation; " + advice,
            UserWarning,
            stacklevel=3,
        )
    device = generator.device if generator is not None else torch.device("cpu")
    probs = torch.as_tensor(plan / rows, device=device)
    pi = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return pi.to(device=x1.device, dtype=torch.int64)


def sinkhorn_coupling(
    reg: float,
    generator: torch.Generator | None = None,
    method: str = "sinkhorn",
    num_iter: int = 1000,
    tol: float = 1e-9,
) -> Coupling:
    """An entropic OT coupling: ``coupling(x0, x1) -> pi`` drawn from the Sinkhorn plan of the minibatch.

    The plan P minimises ``<P, C> - reg * H(P)`` over couplings of the two uniform minibatch measures,
    C the squared Euclidean cost (Cuturi 2013), computed by POT's ``ot.sinkhorn``. For each row i of x0
    the partner ``pi[i]`` is drawn from the row ``P[i, :] / P[i, :].sum()``. So x0 is used exactly once,
    each x1 row is used once *in expectation* (the columns of P sum to 1/B), but pi is in general not a
    permutation: some x1 rows may appear twice and others not at all. With ``reg = 2 sigma^2`` (cost in
    squared units of the data, not rescaled) P is the static Schrodinger bridge of a Brownian motion with
    diffusion sigma, the coupling of SB-CFM (Tong et al. 2024), to be paired with
    :class:`~fmlib.SchrodingerBridgePath`. As reg -> 0 the plan tends to the exact OT permutation
    (:func:`ot_assignment`); as reg -> infinity to the independent coupling.

    Args:
        reg: entropic regularisation, > 0, in the units of the cost (squared distance).
        generator: random generator for drawing the partners (its device is used for the draw).
        method: ``"sinkhorn"`` (plain iterations, fast) or ``"sinkhorn_log"`` (log-domain, slower, does not
            underflow at small reg). The plain iterations work on exp(-cost / reg), which is 0 in float64
            once cost / reg > about 745: they refuse a batch where that holds for every partner of an x0
            point or of an x1 point (an outlier, which they could never draw); use ``"sinkhorn_log"`` there.
        num_iter: the most Sinkhorn iterations, >= 1.
        tol: stopping threshold on the marginal error, > 0.

    Returns:
        A coupling callable ``(x0, x1) -> pi``, pi int64 of shape (B,) on x1's device.

    Raises:
        ValueError: reg or tol not finite and > 0, an unknown method, num_iter < 1 (at once); at call
            time, the errors of :func:`ot_assignment` and a ``reg`` so small for the plain method that
            ``exp(-cost / reg)`` underflows for every partner of some x0 or x1 point (the message names the
            point and gives the smallest reg that works, or ``method="sinkhorn_log"``).
        TypeError: reg, tol or num_iter not a number of the right kind, method not a string, generator
            not a torch.Generator.

    Warns:
        UserWarning: at call time, when the iterations stop before the plan's column sums are within 1% of
            1/B (small reg needs many iterations, especially with ``"sinkhorn_log"``); the message says to
            switch to ``"sinkhorn_log"`` when the plain kernel has underflowed entries, where more
            iterations need not help.

    Example:
        >>> import torch
        >>> x0, x1 = torch.tensor([[0.0], [10.0]]), torch.tensor([[10.5], [0.5]])
        >>> sinkhorn_coupling(reg=0.5, generator=torch.Generator().manual_seed(0))(x0, x1).tolist()
        [1, 0]
    """
    reg = check_real(reg, "reg", low=0.0, low_inclusive=False)
    if not isinstance(method, str):
        raise TypeError(f"method must be 'sinkhorn' or 'sinkhorn_log'; got {type(method).__name__}")
    if method not in ("sinkhorn", "sinkhorn_log"):
        raise ValueError(f"method must be 'sinkhorn' or 'sinkhorn_log'; got {method!r}")
    num_iter = check_int(num_iter, "num_iter")
    tol = check_real(tol, "tol", low=0.0, low_inclusive=False)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
    return partial(_sinkhorn_pairs, reg=reg, generator=generator, method=method, num_iter=num_iter, tol=tol)


def reflow_pairs(
    v: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    steps: int = 100,
    method: str | StepFunction | FixedStepMethod = "rk4",
) -> tuple[Tensor, Tensor]:
    """The coupling of a trained flow: ``(x0, x1_hat)`` with x1_hat the endpoint of x0 under dx/dt = v(x, t).

    Reflow (Liu et al. 2023, *Flow Straight and Fast*, Algorithm 1): integrate the k-rectified flow from
    fresh noise x0 over [0, 1] and train the (k+1)-rectified flow on the pairs (x0, x1_hat) with the
    straight path ``LinearPath()``. The pairs are a deterministic coupling whose transport cost is no larger
    than that of the coupling the flow was trained on, for every convex cost (Liu et al. 2023, Section 3),
    and its flow is straighter. The integration runs under ``torch.no_grad()``.

    Args:
        v: velocity field ``v(x, t)`` (a trained model), x of shape ``(B, *D)``, t of shape (B,).
        x0: source draws, shape ``(B, *D)``, finite.
        steps: number of fixed steps of :func:`~fmlib.integrate`, >= 1.
        method: a solver name, step function or :class:`~fmlib.FixedStepMethod`, as for
            :func:`~fmlib.integrate` (default ``"rk4"``).

    Returns:
        ``(x0, x1_hat)``, both of shape ``(B, *D)``, x0's dtype and device, detached.

    Raises:
        ValueError: x0 empty or non-finite, bad steps or method (from integrate), or a flow that leaves the
            finite numbers (x1_hat holds NaN or inf).
        TypeError: v not callable, x0 not a floating tensor, steps or method of the wrong kind.

    Example:
        >>> import torch
        >>> x0, x1 = reflow_pairs(lambda x, t: torch.ones_like(x), torch.zeros(2, 1), steps=4)
        >>> x1.flatten().tolist()
        [1.0, 1.0]
    """
    from .solvers import integrate

    if not callable(v):
        raise TypeError(f"v must be a callable velocity field v(x, t); got {type(v).__name__}")
    _points(x0, "x0")
    with torch.no_grad():
        x1_hat = integrate(v, x0, 0.0, 1.0, steps=steps, method=method)
    if not bool(torch.isfinite(x1_hat).all()):
        raise ValueError(
            f"reflow_pairs: the flow of v from x0 left the finite numbers (NaN or inf) with {steps} {method} steps"
        )
    return x0.detach(), x1_hat.detach()
