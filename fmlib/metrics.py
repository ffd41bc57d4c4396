"""Sample-based metrics: transport distances, path energy and straightness, and image-quality metrics.

Sources: Tong et al. (2024), *Improving and Generalizing Flow-Based Generative Models with Minibatch
Optimal Transport* (normalised path energy, Section 5); Liu et al. (2023), *Flow Straight and Fast*
(straightness, Section 2.2); Heusel et al. (2017) (the Frechet distance of the FID, here in the feature
space of a small digit classifier, :class:`DigitClassifier`). W2 is solved exactly by POT (``ot.emd2``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ._checks import check_batch, check_finite, check_int, check_real
from .couplings import _points, _rescaled, _sq_cost
from .solvers import integrate

__all__ = [
    "wasserstein2",
    "path_energy",
    "normalized_path_energy",
    "straightness",
    "DigitClassifier",
    "frechet_distance",
    "frechet_distance_gaussians",
    "nearest_distances",
]


def wasserstein2(x: Tensor, y: Tensor) -> float:
    """Exact 2-Wasserstein distance between the empirical measures of two sample sets (uniform weights).

    ``W2 = (min over couplings of E |X - Y|^2)^(1/2)``, squared Euclidean cost over flattened features,
    solved exactly by POT's network simplex (``ot.emd2``) on the cost divided by its largest entry and
    scaled back, so the value is exact at any coordinate scale: ``wasserstein2(c * x, c * y) = c *
    wasserstein2(x, y)`` for c = 1e-8 as for c = 1e8 (the simplex's tolerances are absolute, near float64
    rounding at unit scale). Cost about ``O(n^3)`` time and ``O(n m)`` memory: fine for a few thousand points.

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

    unit_cost, unit = _sq_cost(x, y)
    cost, scale = _rescaled(unit_cost)
    weights_x, weights_y = np.full(x.shape[0], 1 / x.shape[0]), np.full(y.shape[0], 1 / y.shape[0])
    w2sq = float(ot.emd2(weights_x, weights_y, cost, numItermax=10_000_000))
    return max(w2sq, 0.0) ** 0.5 * scale**0.5 * unit


def path_energy(v: Callable[[Tensor, Tensor], Tensor], x0: Tensor, steps: int = 100, method: str = "euler") -> float:
    """``PE = E_x0 int_0^1 |v(x_t, t)|^2 dt`` along the paths of v started at x0.

    The integral is a left Riemann sum over the fixed-step grid of :func:`~fmlib.integrate`
    (exact for the Euler method's piecewise-constant velocities).

    Args:
        v: velocity field.
        x0: starting points, shape ``(B, *D)``.
        steps, method: as for :func:`~fmlib.integrate`.

    Returns:
        PE as a Python float (squared length units), accumulated in float64.
    """
    _points(x0, "x0")
    with torch.no_grad():
        traj = integrate(v, x0, 0.0, 1.0, steps=steps, method=method, trajectory=True)
        ts = torch.linspace(0, 1, steps + 1, dtype=torch.promote_types(x0.dtype, torch.float32), device=x0.device)
        speed2 = torch.stack(
            [v(traj[k], ts[k].expand(x0.shape[0])).flatten(1).double().pow(2).sum(1) for k in range(steps)]
        )
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
        TypeError: if traj is not a floating tensor.
    """
    if check_batch(traj, "traj").dim() < 3 or traj.shape[0] < 2:
        raise ValueError(f"traj must have shape (T, B, *D) with T >= 2; got {getattr(traj, 'shape', type(traj))}")
    check_finite(traj, "traj")
    steps = traj.shape[0] - 1
    velocity = (traj[1:] - traj[:-1]) * steps
    chord = traj[-1] - traj[0]
    return float((velocity - chord).flatten(2).pow(2).sum(2).mean())


def _to_numpy(x: Tensor | np.ndarray, name: str) -> np.ndarray:
    """Flatten images (N, *D) to a float64 array (N, prod D)."""
    if isinstance(x, Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.number):
        raise TypeError(f"{name} must be a tensor or a numeric array of shape (N, *D); got {type(x).__name__}")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one sample, shape (N, *D); got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite; it holds NaN or inf")
    return x.reshape(x.shape[0], -1)


class DigitClassifier:
    """A small digit classifier on the 64 pixels, the feature extractor of the quality metrics.

    scikit-learn's ``MLPClassifier`` with one hidden layer of ``hidden`` ReLU units, trained with Adam on
    the real training images. Its hidden activations are the features of :meth:`features`: a space in
    which the classes separate (a linear read-out of it is the classifier) and which, unlike raw pixels,
    weighs the strokes that tell digits apart. This is the recipe of the FID (Heusel et al. 2017), with a
    classifier of digits in place of Inception.

    Args:
        hidden: number of hidden units.
        seed: seed of scikit-learn's initialisation and shuffling.
        max_iter: training epochs.
        alpha: L2 penalty.

    Raises:
        TypeError: if hidden, seed or max_iter is not an int, or alpha not a real number.
        ValueError: if hidden or max_iter < 1, seed < 0, or alpha negative or not finite.

    Example:
        >>> from fmlib import load_digits_split
        >>> split = load_digits_split()
        >>> clf = DigitClassifier().fit(split.x_train, split.y_train)
        >>> clf.accuracy(split.x_test, split.y_test) > 0.95
        True
    """

    def __init__(self, hidden: int = 64, seed: int = 0, max_iter: int = 300, alpha: float = 1e-3) -> None:
        from sklearn.neural_network import MLPClassifier

        check_int(hidden, "hidden"), check_int(seed, "seed", low=0), check_int(max_iter, "max_iter")
        check_real(alpha, "alpha", low=0.0)
        self.hidden = hidden
        self.net = MLPClassifier(
            hidden_layer_sizes=(hidden,),
            alpha=alpha,
            max_iter=max_iter,
            random_state=seed,
            tol=1e-6,
            n_iter_no_change=50,
        )

    def fit(self, images: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> DigitClassifier:
        """Train on images ``(N, *D)`` and labels (N,); returns self."""
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from threadpoolctl import threadpool_limits

        y = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
        # Matrices of 64 x 64: one BLAS thread is about as fast as several on a quiet machine and ten
        # times faster on a busy one (threads waiting for each other); the result does not change.
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.net.fit(_to_numpy(images, "images"), y)
        return self

    def features(self, images: Tensor | np.ndarray) -> np.ndarray:
        """Hidden-layer activations relu(W x + b), shape (N, hidden), float64."""
        x = _to_numpy(images, "images")
        return np.maximum(x @ self.net.coefs_[0] + self.net.intercepts_[0], 0.0)

    def predict(self, images: Tensor | np.ndarray) -> np.ndarray:
        """Predicted labels, shape (N,)."""
        return self.net.predict(_to_numpy(images, "images"))

    def accuracy(self, images: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float:
        """Share of images whose predicted label is ``labels`` (an int or shape (N,))."""
        y = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
        return float(np.mean(self.predict(images) == y))


def frechet_distance_gaussians(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2).

    ``d^2 = |mu1 - mu2|^2 + tr(cov1) + tr(cov2) - 2 tr((cov1^(1/2) cov2 cov1^(1/2))^(1/2))``
    (Dowson & Landau 1982). The matrix square roots are taken by symmetric eigendecompositions, with
    the tiny negative eigenvalues of rounding clipped to 0, so the result is real; it is clipped at 0.
    In 1D it is (mu1 - mu2)^2 + (sigma1 - sigma2)^2.

    Args:
        mu1, mu2: means, shape (d,).
        cov1, cov2: symmetric positive semi-definite covariances, shape (d, d).

    Returns:
        d^2 as a Python float (the FID convention: the square, not the distance).

    Raises:
        ValueError: for inconsistent shapes or non-finite values.

    Example:
        >>> import numpy as np
        >>> frechet_distance_gaussians(np.zeros(1), np.eye(1), np.ones(1), 4 * np.eye(1))
        2.0
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(
            f"mu1, mu2 must have shape (d,) and cov1, cov2 shape (d, d) with one d; got {mu1.shape}, "
            f"{mu2.shape}, {cov1.shape}, {cov2.shape}"
        )
    for name, a in (("mu1", mu1), ("mu2", mu2), ("cov1", cov1), ("cov2", cov2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} must be finite; it holds NaN or inf")
    cov1, cov2 = (cov1 + cov1.T) / 2, (cov2 + cov2.T) / 2
    lam, vec = np.linalg.eigh(cov1)
    root1 = (vec * np.sqrt(np.clip(lam, 0.0, None))) @ vec.T
    middle = root1 @ cov2 @ root1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    value = float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * cross)
    return max(value, 0.0)


def frechet_distance(features1: Tensor | np.ndarray, features2: Tensor | np.ndarray) -> float:
    """Squared Frechet distance between Gaussians fitted to two feature sets (the FID formula).

    Each set (shape (n, d), n >= 2) is summarised by its mean and its unbiased covariance; the result is
    :func:`frechet_distance_gaussians` of the two. Identical sets give 0. With few samples the estimate
    is biased upwards (the covariance estimates are noisy), so compare values computed with equal n.

    Raises:
        ValueError: fewer than 2 samples, different feature sizes, or non-finite values.
    """
    a, b = _to_numpy(features1, "features1"), _to_numpy(features2, "features2")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"each feature set needs >= 2 samples for a covariance; got {a.shape[0]} and {b.shape[0]}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"features1 and features2 must have the same size d; got {a.shape[1]} and {b.shape[1]}")
    return frechet_distance_gaussians(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def nearest_distances(samples: Tensor, reference: Tensor, exclude_self: bool = False) -> Tensor:
    """Euclidean distance from each sample to its nearest reference image (over all pixels).

    A generator that copies its training set has samples at distance ~0 from a training image; fresh
    images sit about as far from the training set as held-out images do.

    Args:
        samples: shape ``(B, *D)``.
        reference: shape ``(N, *D)``, the same ``*D``.
        exclude_self: ignore zero distances of a point to itself (when samples is reference).

    Returns:
        Distances, shape (B,), samples' dtype and device.

    Raises:
        ValueError: if the feature shapes differ.
    """
    check_batch(samples, "samples")
    check_batch(reference, "reference")
    if samples.shape[1:] != reference.shape[1:]:
        raise ValueError(
            f"samples and reference must have the same image shape; got {tuple(samples.shape[1:])} and "
            f"{tuple(reference.shape[1:])}"
        )
    ref = reference.to(dtype=samples.dtype, device=samples.device).flatten(1)
    dist = torch.cdist(samples.flatten(1), ref, compute_mode="donot_use_mm_for_euclid_dist")
    if exclude_self:
        dist = torch.where(dist == 0, torch.full_like(dist, math.inf), dist)
    return dist.min(dim=1).values
