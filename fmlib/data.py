"""Two-dimensional toy data sets, seeded by a ``torch.Generator``.

scikit-learn's generators are used where it has them (two moons, S-curve);
the others are short closed-form samplers. All return a tensor of shape
(n, 2), float32 unless ``dtype`` says otherwise, scaled to roughly [-3, 3]^2.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from sklearn.datasets import make_moons, make_s_curve
from torch import Tensor

__all__ = ["two_moons", "eight_gaussians", "checkerboard", "spirals", "s_curve", "sample_data", "DATASETS"]


def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int >= 1; got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    return n


def _seed(generator: torch.Generator | None) -> int:
    """Draw a NumPy seed from ``generator`` (or torch's global generator)."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=device))


def _out(x: np.ndarray | Tensor, dtype: torch.dtype, device: torch.device | str | None) -> Tensor:
    return torch.as_tensor(x).to(dtype=dtype, device=device)


def two_moons(
    n: int,
    noise: float = 0.05,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Two interleaving half circles (scikit-learn's ``make_moons``), centred and scaled by 2.

    Args:
        n: number of points, >= 1.
        noise: standard deviation of Gaussian noise added before scaling.
        generator: seeds the draw.
        dtype, device: of the result.

    Returns:
        Tensor of shape (n, 2).

    Raises:
        ValueError: if n < 1.
        TypeError: if n is not an int.
    """
    x, _ = make_moons(_check_n(n), noise=noise, random_state=_seed(generator))
    return _out(2.0 * (x - np.array([0.5, 0.25])), dtype, device)


def s_curve(
    n: int,
    noise: float = 0.05,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The 2D S-curve: columns (x, z) of scikit-learn's ``make_s_curve``, scaled by 1.5. Shape (n, 2)."""
    x, _ = make_s_curve(_check_n(n), noise=noise, random_state=_seed(generator))
    return _out(1.5 * x[:, [0, 2]], dtype, device)


def eight_gaussians(
    n: int,
    radius: float = 2.0,
    std: float = 0.15,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """A mixture of 8 isotropic Gaussians with means equally spaced on a circle. Shape (n, 2).

    Args:
        n: number of points, >= 1.
        radius: radius of the circle of means.
        std: standard deviation of each component.
        generator: seeds the draw (components and noise).
    """
    n = _check_n(n)
    k = torch.randint(0, 8, (n,), generator=generator, device=getattr(generator, "device", None))
    angle = k.double() * (2 * math.pi / 8)
    means = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    noise = torch.randn(n, 2, generator=generator, dtype=torch.float64, device=means.device)
    return _out(means + std * noise, dtype, device)


def checkerboard(
    n: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Uniform on the 8 dark cells of a 4x4 checkerboard covering [-2, 2]^2. Shape (n, 2)."""
    n = _check_n(n)
    gdev = getattr(generator, "device", None)
    cell = torch.randint(0, 8, (n,), generator=generator, device=gdev)
    row = cell // 2
    col = 2 * (cell % 2) + (row % 2)  # dark cells: row + col even
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64, device=gdev)
    x = torch.stack([col.double() + u[:, 0], row.double() + u[:, 1]], dim=1) - 2.0
    return _out(x, dtype, device)


def spirals(
    n: int,
    noise: float = 0.05,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Two interleaved Archimedean spiral arms, radius up to 3. Shape (n, 2)."""
    n = _check_n(n)
    gdev = getattr(generator, "device", None)
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=gdev)
    arm = torch.randint(0, 2, (n,), generator=generator, device=gdev).double()
    theta = torch.sqrt(u) * 3 * math.pi  # sqrt: uniform density along the arm's area
    r = theta / math.pi
    x = torch.stack([r * torch.cos(theta + math.pi * arm), r * torch.sin(theta + math.pi * arm)], dim=1)
    x = x + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64, device=gdev)
    return _out(x, dtype, device)


DATASETS: dict[str, Callable[..., Tensor]] = {
    "moons": two_moons,
    "8gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "spirals": spirals,
    "s_curve": s_curve,
}
"""The toy data sets by name."""


def sample_data(name: str, n: int, generator: torch.Generator | None = None, **kwargs) -> Tensor:
    """Draw n points from the toy data set ``name`` (a key of :data:`DATASETS`). Shape (n, 2).

    Raises:
        ValueError: for an unknown name.

    Example:
        >>> sample_data("moons", 5, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([5, 2])
    """
    if name not in DATASETS:
        raise ValueError(f"name must be one of {sorted(DATASETS)}; got {name!r}")
    return DATASETS[name](n, generator=generator, **kwargs)
