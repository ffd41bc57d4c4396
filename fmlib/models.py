"""Time-conditioned networks for velocity fields: an MLP on R^D and a class-conditional U-Net for images."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._checks import as_time, check_batch, check_int, check_labels
from .data import NUM_CLASSES

__all__ = ["MLP", "UNet", "DigitUNet"]


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


def _time_freqs(half: int) -> Tensor:
    """Frequencies 1 .. 100 (radians per unit time), geometrically spaced: t in [0, 1] is resolved finely."""
    return torch.exp(torch.linspace(0.0, math.log(100.0), half))


def _sinusoidal(t: Tensor, freqs: Tensor, dtype: torch.dtype) -> Tensor:
    """(sin(f_k t), cos(f_k t)) of times t (B,) (float32 at least), shape (B, 2 len(freqs)), cast to ``dtype``.

    The angles are computed in t's dtype (float32 for a half-precision network, see
    :func:`~fmlib._checks.as_time`) and only the features are cast to the weights' dtype.
    """
    angles = t[:, None] * freqs.to(t.dtype)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).to(dtype)


class _Attention(nn.Module):
    """Multi-head self-attention on tokens (B, N, dim): qkv projection, softmax(Q K^T / sqrt(d)) V, output projection.

    The attention itself is ``torch.nn.functional.scaled_dot_product_attention`` (one fused call, flash or
    memory-efficient kernels where the device has them); d = dim / heads is the size of a head. Under
    forward-mode AD (``torch.func.jvp``, used by :func:`~fmlib.meanflow_loss`), which the fused kernels lack,
    it falls back to the composite kernel.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, h: Tensor) -> Tensor:
        b, n, dim = h.shape
        qkv = self.qkv(h).reshape(b, n, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        try:
            out = nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, d)
        except NotImplementedError:
            # forward-mode AD (torch.func.jvp, as in meanflow_loss) through a fused kernel that lacks it: the
            # same attention by the composite "math" kernel, which differentiates in both modes
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.MATH):
                out = nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, dim))


class _AttentionBlock(nn.Module):
    """h + Attention(GroupNorm(h)) over the H x W positions of a feature map (single head); identity at init."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(min(groups, channels), channels)
        self.attn = _Attention(channels, heads=1)
        nn.init.zeros_(self.attn.proj.weight)  # the block starts as the identity map
        nn.init.zeros_(self.attn.proj.bias)

    def forward(self, h: Tensor) -> Tensor:
        b, c, height, width = h.shape
        tokens = self.norm(h).flatten(2).transpose(1, 2)  # (B, H W, C)
        return h + self.attn(tokens).transpose(1, 2).reshape(b, c, height, width)


def _default_levels(image_size: int) -> int:
    """The number of resolutions of :class:`UNet` for square images of side ``image_size``.

    The side is halved while it is even, the half is at least 4 and there are fewer than 4 resolutions:
    28 -> 14 -> 7 (3 resolutions), 8 -> 4 (2), 32 -> 16 -> 8 -> 4 (4), 7 (1: no downsampling).
    """
    levels, side = 1, image_size
    while side % 2 == 0 and side // 2 >= 4 and levels < 4:
        side //= 2
        levels += 1
    return levels


class UNet(nn.Module):
    """A class-conditional U-Net ``model(x, t, y)`` for square images (Ronneberger et al. 2015; Ho et al. 2020).

    One residual block per resolution on the way down, one at the lowest resolution (followed by an
    optional self-attention block), one per resolution on the way up; a strided 3x3 convolution halves
    the side, a 2x2 transposed convolution doubles it, and the features of the way down are added (skip
    connections) before the block of the way up::

        x -> conv -> ResBlock (c_0, S) ----------------------------------------- skip ---+
                       -> strided conv -> ResBlock (c_1, S/2) ------------ skip ---+      |
                            ...  -> strided conv -> ResBlock (c_L-1, lowest)       |      |
                                      [-> self-attention]                          |      |
                       ... <- ResBlock (c_1, S/2) <- add <- transposed conv <------+      |
                 ResBlock (c_0, S) <- add <- transposed conv <----------------------------+
                 -> GroupNorm, SiLU, conv -> v (in_channels, S, S)

    Resolutions: without ``channel_mults`` their number follows one rule (the side is halved
    while it is even and the half at least 4, at most 4 resolutions): two downsamplings at 28x28
    (28 -> 14 -> 7), one at 8x8 (8 -> 4), none at 7x7; the widths are ``channels * (1, 2, 2, 2)[:levels]``.
    ``channel_mults=(m_0, ..., m_L-1)`` sets both (L resolutions, widths ``channels * m_i``); the side
    must then be divisible by 2^(L-1).

    A residual block is GroupNorm, SiLU, 3x3 conv, twice, plus its input; the conditioning vector is added,
    per channel, after the first convolution. The attention block (single head, over the positions of the
    lowest resolution, ``torch.nn.functional.scaled_dot_product_attention``) starts as the identity (its
    output projection is zero). The time t goes through sinusoidal features (frequencies 1..100) and a
    two-layer MLP; the label y through an embedding table with ``num_classes + 1`` rows (the last one is the
    null label, "no class", for classifier-free guidance); their sum is the conditioning vector. The output
    layer starts at zero, so the untrained field is 0.

    Two times: with ``two_times=True`` the network is ``model(x, t, s, y)`` with a second time s that has
    sinusoidal features and an MLP of its own, added to the conditioning vector. This is the flow-map
    network ``model(x, r, t, y)`` of MeanFlow (:func:`~fmlib.meanflow_loss`, with r in the place of t and t
    in the place of s) or a shortcut model ``model(x, t, d, y)`` with step size d.

    Precision: the network runs in its weights' dtype (bfloat16 or float16 after ``.to(...)``, with x in
    that dtype); the time features come from float32 times, cast to that dtype.

    Label dropout (training with the null label) is not done here but in :func:`~fmlib.train` (``p_uncond=``).

    Args:
        image_size: side of the square images, >= 1.
        in_channels: image channels (1 for greyscale, the latent channels for latents), >= 1.
        num_classes: number of classes, >= 1; the null label is ``num_classes``.
        channels: width of the first resolution, a multiple of 8 (GroupNorm uses 8 groups).
        channel_mults: the width of each resolution as a multiple of ``channels`` (a tuple of ints >= 1,
            one per resolution); None for the default above.
        emb_dim: size of the time and label embeddings, >= 2.
        attention: whether a self-attention block follows the block of the lowest resolution.
        two_times: ``model(x, t, s, y)`` with a second time s (see above).

    Raises:
        TypeError: for non-int sizes or widths, a channel_mults that is not a tuple or list of ints, or
            attention / two_times not a bool.
        ValueError: for sizes below their minimum, channels not a multiple of 8, or an
            image_size not divisible by 2^(len(channel_mults) - 1); in ``forward``, an x of another shape
            than (B, in_channels, image_size, image_size) (naming x and the expected shape), labels outside
            0..num_classes (naming y), or a second time missing (two_times=True) or given (two_times=False).

    Example:
        >>> import torch
        >>> model = UNet()  # 28x28 greyscale, 10 classes
        >>> model(torch.zeros(2, 1, 28, 28), 0.5, torch.tensor([3, 10])).shape
        torch.Size([2, 1, 28, 28])
        >>> model.widths, model.sides  # channels and side of each resolution
        ((32, 64, 64), (28, 14, 7))
        >>> UNet(image_size=8, attention=False, two_times=True)(torch.zeros(2, 1, 8, 8), 0.2, 0.7, 3).shape
        torch.Size([2, 1, 8, 8])
    """

    freqs: Tensor  # a registered buffer: the frequencies of the sinusoidal time features

    def __init__(
        self,
        image_size: int = 28,
        in_channels: int = 1,
        num_classes: int = NUM_CLASSES,
        channels: int = 32,
        channel_mults: tuple[int, ...] | list[int] | None = None,
        emb_dim: int = 128,
        attention: bool = True,
        two_times: bool = False,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("image_size", image_size, 1),
            ("in_channels", in_channels, 1),
            ("num_classes", num_classes, 1),
            ("channels", channels, 8),
            ("emb_dim", emb_dim, 2),
        ):
            check_int(value, name, low)
        for name, flag in (("attention", attention), ("two_times", two_times)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool; got {type(flag).__name__}")
        if channels % 8:
            raise ValueError(f"channels must be a multiple of 8 (GroupNorm with 8 groups); got {channels}")
        if channel_mults is None:
            mults = (1, 2, 2, 2)[: _default_levels(image_size)]
        else:
            if not isinstance(channel_mults, (tuple, list)) or not channel_mults:
                raise TypeError(
                    f"channel_mults must be a non-empty tuple of ints >= 1, one per resolution; got {channel_mults!r}"
                )
            mults = tuple(check_int(m, "channel_mults[i]", 1) for m in channel_mults)
            if image_size % 2 ** (len(mults) - 1):
                raise ValueError(
                    f"channel_mults={tuple(mults)} asks for {len(mults) - 1} downsamplings, so image_size must be "
                    f"divisible by {2 ** (len(mults) - 1)}; got image_size={image_size}"
                )
        self.image_size = image_size
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.null_label = num_classes
        self.two_times = two_times
        self.channel_mults = mults
        widths = [channels * m for m in mults]
        self.widths = tuple(widths)
        self.sides = tuple(image_size // 2**i for i in range(len(mults)))
        g = 8
        half = emb_dim // 2
        self.register_buffer("freqs", _time_freqs(half))
        self.time_mlp = nn.Sequential(nn.Linear(2 * half, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim)
        self.inp = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.encs = nn.ModuleList()
        self.downs = nn.ModuleList()
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            self.encs.append(_ResBlock(c_in, c_in, emb_dim, g))
            self.downs.append(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1))
        self.mid = _ResBlock(widths[-1], widths[-1], emb_dim, g)
        self.attn = _AttentionBlock(widths[-1], g) if attention else None
        self.ups = nn.ModuleList()
        self.decs = nn.ModuleList()
        for c_in, c_out in reversed(list(zip(widths[:-1], widths[1:]))):
            self.ups.append(nn.ConvTranspose2d(c_out, c_in, 2, stride=2))
            self.decs.append(_ResBlock(c_in, c_in, emb_dim, g))
        self.out_norm = nn.GroupNorm(min(g, widths[0]), widths[0])
        self.out = nn.Conv2d(widths[0], in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        if self.out.bias is not None:
            nn.init.zeros_(self.out.bias)
        # the second time last, so that two_times=False builds the same layers from the same random stream
        self.time2_mlp = (
            nn.Sequential(nn.Linear(2 * half, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)) if two_times else None
        )

    def embed(self, t: Tensor, y: Tensor, s: Tensor | None = None) -> Tensor:
        """The conditioning vector MLP(features of t) + embedding of y (+ MLP'(features of s)), shape (B, emb_dim)."""
        dtype = self.label_emb.weight.dtype
        emb = self.time_mlp(_sinusoidal(t, self.freqs, dtype)) + self.label_emb(y)
        if s is not None and self.time2_mlp is not None:
            emb = emb + self.time2_mlp(_sinusoidal(s, self.freqs, dtype))
        return emb

    def _check_x(self, x: object) -> Tensor:
        """Return x if it is a floating tensor of shape (B, in_channels, image_size, image_size)."""
        check_batch(x, "x")
        assert isinstance(x, Tensor)
        want = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"x must have shape (B, {', '.join(map(str, want))}) for this {type(self).__name__}; "
                f"got {tuple(x.shape)}"
            )
        return x

    def forward(self, x: Tensor, t: float | Tensor, *args: int | float | Tensor) -> Tensor:
        """The velocity v(x, t | y) (``model(x, t, y)``), or ``model(x, t, s, y)`` with ``two_times=True``.

        Args:
            x: images, shape (B, in_channels, image_size, image_size), floating dtype.
            t: times (float, 0-d tensor or shape (B,)).
            s: (two_times=True only) the second time, like t.
            y: labels, an int or an integer tensor of shape (B,), in 0..num_classes (num_classes = null).

        Returns:
            A tensor of x's shape and dtype.
        """
        self._check_x(x)
        want = 2 if self.two_times else 1
        if len(args) != want:
            call = "model(x, t, s, y)" if self.two_times else "model(x, t, y)"
            other = "" if self.two_times else "; build it with two_times=True for model(x, t, s, y)"
            raise ValueError(f"this {type(self).__name__} is called as {call}; got {2 + len(args)} arguments{other}")
        t = as_time(t, x, unit_interval=False)
        s = as_time(args[0], x, name="s", unit_interval=False) if self.two_times else None
        y = check_labels(args[-1], x.shape[0], self.num_classes).to(x.device)
        emb = self.embed(t, y, s)
        h = self.inp(x)
        skips = []
        for enc, down in zip(self.encs, self.downs):
            h = enc(h, emb)
            skips.append(h)
            h = down(h)
        h = self.mid(h, emb)
        if self.attn is not None:
            h = self.attn(h)
        for up, dec in zip(self.ups, self.decs):
            h = dec(up(h) + skips.pop(), emb)
        return self.out(nn.functional.silu(self.out_norm(h)))


class DigitUNet(UNet):
    """The small class-conditional U-Net ``model(x, t, y)`` of chapter 7, for 8x8 greyscale images.

    A configuration of :class:`UNet`: two resolutions (``channel_mults=(1, 2)``: width c at 8x8, 2c at 4x4),
    no attention, emb_dim 64; small enough to train on a CPU in about a minute::

        x (1, 8, 8) -> conv -> ResBlock (c, 8x8) ------------------------ skip ----+
                                  -> strided conv -> ResBlock (2c, 4x4)             |
                                  -> transposed conv (c, 8x8) -> add <--------------+
                                  -> ResBlock (c, 8x8) -> GroupNorm, SiLU, conv -> v (1, 8, 8)

    At 4x4 two 3x3 convolutions see the whole image. The skip connection adds the 8x8 features instead of
    concatenating them (half the cost of the last block, the same information path). See :class:`UNet` for
    the blocks, the conditioning (the null label ``num_classes``), the zero output at initialisation and
    half precision.

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

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        channels: int = 32,
        emb_dim: int = 64,
        image_size: int = 8,
        in_channels: int = 1,
    ) -> None:
        check_int(image_size, "image_size", 2)
        if image_size % 2:
            raise ValueError(f"image_size must be even (one 2x downsampling); got {image_size}")
        super().__init__(
            image_size=image_size,
            in_channels=in_channels,
            num_classes=num_classes,
            channels=channels,
            channel_mults=(1, 2),
            emb_dim=emb_dim,
            attention=False,
        )
