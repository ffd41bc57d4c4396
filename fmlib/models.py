"""A small time-conditioned network for velocity fields on R^D."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._checks import as_time, check_batch, check_int, check_labels
from .data import NUM_CLASSES

__all__ = ["MLP", "DigitUNet"]


class MLP(nn.Module):
    """A time-conditioned multilayer perceptron v_theta(x, t), the model of chapter 4.

    The input is x (flattened over its feature dimensions) concatenated with
    Fourier features of t: (t, sin(2 pi k t), cos(2 pi k t)) for k = 1..time_freqs.
    Hidden layers use SiLU. It follows the velocity-field convention
    ``model(x, t)``: x of shape ``(B, *D)``, t a float, 0-d tensor or shape (B,);
    the output has x's shape.

    Precision: the network runs in its weights' dtype; after ``model.to(torch.bfloat16)`` (or
    float16) pass x in that dtype (as :func:`~fmlib.integrate` does with such an x). The time
    features are computed from float32 times and then cast to the weights' dtype.

    Args:
        dim: number of features of x ``(the product of *D)``, >= 1.
        hidden: width of the hidden layers.
        depth: number of hidden layers, >= 1.
        time_freqs: number of Fourier frequencies for t, >= 0.
        two_times: if True, the network takes a second time input, ``model(x, r, t)``: the features
            of r and of t (each as above) are both concatenated to x. This is the average velocity
            u(x, r, t) of a flow map (:func:`~fmlib.meanflow_loss`) or a shortcut model
            ``model(x, t, d)`` with step size d (:func:`~fmlib.shortcut_loss`). Default False:
            ``model(x, t)``, with the same layers and the same initial weights (for a given
            ``torch.manual_seed``) as before the option existed.

    Raises:
        ValueError: for a non-positive dim, hidden or depth, or (in forward) an x
            whose feature count is not ``dim``, or a second time missing (two_times=True)
            or given (two_times=False).
        TypeError: if two_times is not a bool.

    Example:
        >>> import torch
        >>> model = MLP(2, hidden=64, depth=3)
        >>> model(torch.zeros(5, 2), 0.5).shape
        torch.Size([5, 2])
        >>> MLP(2, two_times=True)(torch.zeros(5, 2), 0.25, 0.5).shape
        torch.Size([5, 2])
    """

    freqs: Tensor  # a registered buffer (moves with .to())

    def __init__(
        self, dim: int, hidden: int = 128, depth: int = 3, time_freqs: int = 4, two_times: bool = False
    ) -> None:
        super().__init__()
        if not isinstance(two_times, bool):
            raise TypeError(f"two_times must be a bool; got {type(two_times).__name__}")
        for name, value, low in (
            ("dim", dim, 1),
            ("hidden", hidden, 1),
            ("depth", depth, 1),
            ("time_freqs", time_freqs, 0),
        ):
            check_int(value, name, low)
        self.dim = dim
        self.two_times = two_times
        self.register_buffer("freqs", 2 * math.pi * torch.arange(1, time_freqs + 1, dtype=torch.float32))
        n_times = 2 if two_times else 1
        layers: list[nn.Module] = [nn.Linear(dim + n_times * (1 + 2 * time_freqs), hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)

    def _time_features(self, t: float | Tensor, x: Tensor, name: str) -> Tensor:
        t = as_time(t, x, name=name, unit_interval=False)[:, None]  # float32 for a half-precision x
        angles = t * self.freqs.to(t.dtype)
        # the time features in the weights' dtype, so a bfloat16/float16 network takes them
        return torch.cat([t, torch.sin(angles), torch.cos(angles)], dim=1).to(next(self.net.parameters()).dtype)

    def forward(self, x: Tensor, t: float | Tensor, s: float | Tensor | None = None) -> Tensor:
        """``model(x, t)``, or ``model(x, r, t)`` (``model(x, t, d)``) with ``two_times=True``; x's shape."""
        check_batch(x)
        if x[0].numel() != self.dim:
            raise ValueError(f"x must have {self.dim} features per sample; got shape {tuple(x.shape)}")
        if self.two_times and s is None:
            raise ValueError("this MLP has two_times=True: call it as model(x, r, t) with a second time")
        if not self.two_times and s is not None:
            raise ValueError("this MLP takes one time, model(x, t); build it with two_times=True for model(x, r, t)")
        feats = [self._time_features(t, x, "t")]
        if s is not None:
            feats.append(self._time_features(s, x, "second time"))
        h = torch.cat([x.flatten(1), *feats], dim=1)
        return self.net(h).reshape(x.shape)


class _ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, plus the embedding as a per-channel shift, twice; with a residual path."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        out = self.conv1(nn.functional.silu(self.norm1(h)))
        out = out + self.emb(emb)[:, :, None, None]
        out = self.conv2(nn.functional.silu(self.norm2(out)))
        return self.skip(h) + out


class DigitUNet(nn.Module):
    """A small class-conditional U-Net ``model(x, t, y)`` for 8x8 greyscale images.

    Two resolutions are enough for 8x8 images, and the network is kept small enough to train on a CPU
    in about a minute::

        x (1, 8, 8) -> conv -> ResBlock (c, 8x8) ------------------------ skip ----+
                                  -> strided conv -> ResBlock (2c, 4x4)             |
                                  -> transposed conv (c, 8x8) -> add <--------------+
                                  -> ResBlock (c, 8x8) -> GroupNorm, SiLU, conv -> v (1, 8, 8)

    A residual block is GroupNorm, SiLU, 3x3 conv, twice, plus its input; the conditioning vector is
    added, per channel, after the first convolution. At 4x4 two 3x3 convolutions see the whole image.
    The skip connection adds the 8x8 features instead of concatenating them (half the cost of the last
    block, the same information path). The time t goes through sinusoidal features and a two-layer MLP;
    the label y through an embedding table with ``num_classes + 1`` rows (the last one is the null label,
    "no class"); their sum is the conditioning vector. The output layer starts at zero, so the untrained
    field is 0.

    Precision: as :class:`MLP`, the network runs in its weights' dtype (bfloat16 or float16 after
    ``.to(...)``, with x in that dtype); the time features come from float32 times, cast to that dtype.

    Label dropout (training with the null label) is not done here but in :func:`~fmlib.train` (``p_uncond=``).

    Args:
        num_classes: number of classes; the null label is ``num_classes``.
        channels: width at 8x8 (4x4 has twice as many), a multiple of 8 (GroupNorm uses 8 groups).
        emb_dim: size of the time and label embeddings, >= 2.
        image_size: side of the square images, even (one 2x downsampling).
        in_channels: image channels.

    Raises:
        ValueError: for bad sizes; in ``forward``, an x of another shape than (B, in_channels,
            image_size, image_size) (naming x), or labels outside 0..num_classes (naming y).

    Example:
        >>> import torch
        >>> model = DigitUNet()
        >>> model(torch.zeros(3, 1, 8, 8), 0.5, torch.tensor([0, 9, 10])).shape
        torch.Size([3, 1, 8, 8])
    """

    freqs: Tensor  # a registered buffer: the frequencies of the sinusoidal time features

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        channels: int = 32,
        emb_dim: int = 64,
        image_size: int = 8,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("num_classes", num_classes, 1),
            ("channels", channels, 8),
            ("emb_dim", emb_dim, 2),
            ("image_size", image_size, 2),
            ("in_channels", in_channels, 1),
        ):
            check_int(value, name, low)
        if channels % 8:
            raise ValueError(f"channels must be a multiple of 8 (GroupNorm with 8 groups); got {channels}")
        if image_size % 2:
            raise ValueError(f"image_size must be even (one 2x downsampling); got {image_size}")
        self.num_classes = num_classes
        self.null_label = num_classes
        self.image_size = image_size
        self.in_channels = in_channels
        c, c2, g = channels, 2 * channels, 8
        half = emb_dim // 2
        # frequencies 1 .. 100 (radians per unit time), geometrically spaced: t in [0, 1] is resolved finely
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(100.0), half)))
        self.time_mlp = nn.Sequential(nn.Linear(2 * half, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim)
        self.inp = nn.Conv2d(in_channels, c, 3, padding=1)
        self.enc = _ResBlock(c, c, emb_dim, g)
        self.down = nn.Conv2d(c, c2, 3, stride=2, padding=1)
        self.mid = _ResBlock(c2, c2, emb_dim, g)
        self.up = nn.ConvTranspose2d(c2, c, 2, stride=2)
        self.dec = _ResBlock(c, c, emb_dim, g)
        self.out_norm = nn.GroupNorm(g, c)
        self.out = nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        if self.out.bias is not None:
            nn.init.zeros_(self.out.bias)

    def embed(self, t: Tensor, y: Tensor) -> Tensor:
        """The conditioning vector: MLP(sinusoidal features of t) + embedding of y, shape (B, emb_dim)."""
        angles = t[:, None] * self.freqs.to(t.dtype)
        # the time features in the weights' dtype, so a bfloat16/float16 network takes them
        feats = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).to(next(self.time_mlp.parameters()).dtype)
        return self.time_mlp(feats) + self.label_emb(y)

    def forward(self, x: Tensor, t: float | Tensor, y: int | Tensor) -> Tensor:
        """The velocity v(x, t | y), shape of x.

        Args:
            x: images, shape (B, in_channels, image_size, image_size), floating dtype.
            t: times (float, 0-d tensor or shape (B,)).
            y: labels, an int or an integer tensor of shape (B,), in 0..num_classes (num_classes = null).
        """
        check_batch(x, "x")
        want = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, want))}); got {tuple(x.shape)}")
        t = as_time(t, x, unit_interval=False)
        y = check_labels(y, x.shape[0], self.num_classes).to(x.device)
        emb = self.embed(t, y)
        skip = self.enc(self.inp(x), emb)
        h = self.mid(self.down(skip), emb)
        h = self.dec(self.up(h) + skip, emb)
        return self.out(nn.functional.silu(self.out_norm(h)))
