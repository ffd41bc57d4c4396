"""A small time-conditioned network for velocity fields on R^D."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._checks import as_time, check_batch, check_int

__all__ = ["MLP"]


class MLP(nn.Module):
    """A time-conditioned multilayer perceptron v_theta(x, t), the model of chapter 4.

    The input is x (flattened over its feature dimensions) concatenated with
    Fourier features of t: (t, sin(2 pi k t), cos(2 pi k t)) for k = 1..time_freqs.
    Hidden layers use SiLU. It follows the velocity-field convention
    ``model(x, t)``: x of shape ``(B, *D)``, t a float, 0-d tensor or shape (B,);
    the output has x's shape.

    Args:
        dim: number of features of x ``(the product of *D)``, >= 1.
        hidden: width of the hidden layers.
        depth: number of hidden layers, >= 1.
        time_freqs: number of Fourier frequencies for t, >= 0.

    Raises:
        ValueError: for a non-positive dim, hidden or depth, or (in forward) an x
            whose feature count is not ``dim``.

    Example:
        >>> import torch
        >>> model = MLP(2, hidden=64, depth=3)
        >>> model(torch.zeros(5, 2), 0.5).shape
        torch.Size([5, 2])
    """

    freqs: Tensor  # a registered buffer (moves with .to())

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, time_freqs: int = 4) -> None:
        super().__init__()
        for name, value, low in (
            ("dim", dim, 1),
            ("hidden", hidden, 1),
            ("depth", depth, 1),
            ("time_freqs", time_freqs, 0),
        ):
            check_int(value, name, low)
        self.dim = dim
        self.register_buffer("freqs", 2 * math.pi * torch.arange(1, time_freqs + 1, dtype=torch.float32))
        layers: list[nn.Module] = [nn.Linear(dim + 1 + 2 * time_freqs, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: float | Tensor) -> Tensor:
        check_batch(x)
        if x[0].numel() != self.dim:
            raise ValueError(f"x must have {self.dim} features per sample; got shape {tuple(x.shape)}")
        t = as_time(t, x, unit_interval=False)[:, None]
        angles = t * self.freqs.to(x.dtype)
        h = torch.cat([x.flatten(1), t, torch.sin(angles), torch.cos(angles)], dim=1)
        return self.net(h).reshape(x.shape)
