"""Minibatch optimal-transport couplings: which data point each noise sample is paired with.

Sources: Tong et al. (2024), *Improving and Generalizing Flow-Based Generative Models with Minibatch
Optimal Transport* (OT-CFM, Section 3.2; normalised path energy, Section 5); Pooladian et al. (2023),
*Multisample Flow Matching*; Liu et al. (2023), *Flow Straight and Fast* (straightness, Section 2.2).
The assignment problems are solved exactly by POT (``emd``, ``emd2``), with SciPy's
``linear_sum_assignment`` as a fallback.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ._checks import check_batch, check_finite

__all__ = ["minibatch_ot"]


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
