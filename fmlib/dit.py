"""A diffusion transformer (DiT) with adaLN-Zero conditioning, for images and latents (Peebles & Xie 2023)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import as_time, check_batch, check_int, check_labels, check_real
from .data import NUM_CLASSES
from .models import _Attention, _sinusoidal, _time_freqs

__all__ = ["DiT", "sincos_pos_embed_2d"]


def sincos_pos_embed_2d(grid: int, dim: int) -> Tensor:
    """The fixed 2D sine-cosine positional embedding of a ``grid x grid`` patch grid, shape (grid^2, dim), float32.

    Token ``n = i * grid + j`` (row i, column j; the order of :meth:`DiT.patchify`) gets
    ``[sin(i w_k), cos(i w_k), sin(j w_k), cos(j w_k)]``, each block over k = 0..dim/4 - 1 with
    ``w_k = 10000^(-k / (dim / 4))``: the first half of the channels encodes the row, the second half the
    column, as the 1D embedding of Vaswani et al. (2017, sec. 3.5) does a position. This is the embedding of
    MAE and DiT (Peebles & Xie 2023, sec. 3.2), up to the order of the two halves.

    Args:
        grid: patches per side, >= 1.
        dim: embedding size, a multiple of 4.

    Raises:
        TypeError: if grid or dim is not an int.
        ValueError: if grid < 1 or dim is not a positive multiple of 4.

    Example:
        >>> e = sincos_pos_embed_2d(2, 4)  # dim 4: w_0 = 1, [sin i, cos i, sin j, cos j]
        >>> [round(v, 4) for v in e[1].tolist()]  # row 0, column 1
        [0.0, 1.0, 0.8415, 0.5403]
    """
    check_int(grid, "grid", 1)
    check_int(dim, "dim", 4)
    if dim % 4:
        raise ValueError(f"dim must be a multiple of 4 (sin and cos of the row and the column); got {dim}")
    quarter = dim // 4
    omega = 10000.0 ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(grid, dtype=torch.float64)
    angles = pos[:, None] * omega[None, :]  # (grid, quarter)
    one_d = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (grid, dim / 2)
    rows = one_d[:, None, :].expand(grid, grid, dim // 2)
    cols = one_d[None, :, :].expand(grid, grid, dim // 2)
    return torch.cat([rows, cols], dim=2).reshape(grid * grid, dim).float()


def _modulate(h: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: ``h * (1 + scale) + shift`` with per-sample shift and scale (B, dim) over tokens (B, N, dim)."""
    return h * (1 + scale[:, None, :]) + shift[:, None, :]


class _DiTBlock(nn.Module):
    """A transformer block with adaLN-Zero (Peebles & Xie 2023, sec. 3.2, Fig. 3).

    ``h + gate_1 * Attention(LN(h) (1 + scale_1) + shift_1)``, then ``h + gate_2 * MLP(LN(h) (1 + scale_2) +
    shift_2)``; the six vectors come from a linear layer on SiLU(c), initialised at zero, so the block starts
    as the identity map.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        ada = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(ada.weight)
        nn.init.zeros_(ada.bias)
        self.ada = nn.Sequential(nn.SiLU(), ada)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        h = h + gate1[:, None, :] * self.attn(_modulate(self.norm1(h), shift1, scale1))
        return h + gate2[:, None, :] * self.mlp(_modulate(self.norm2(h), shift2, scale2))


class DiT(nn.Module):
    """A class-conditional diffusion transformer ``model(x, t, y)`` (Peebles & Xie 2023, adaLN-Zero, sec. 3.2).

    The image (B, C, S, S) is cut into ``(S / p)^2`` patches of p x p pixels, each embedded by a linear map
    (a convolution with kernel and stride p), plus a fixed 2D sine-cosine positional embedding
    (:func:`sincos_pos_embed_2d`). ``depth`` transformer blocks follow; each is conditioned on the vector
    c = (time embedding) + (label embedding) through adaLN-Zero: c gives, per block, a shift, a scale and a
    gate for the attention and the MLP branches (``h + gate * f(LN(h) (1 + scale) + shift)``). A final
    adaptive LayerNorm and a linear layer give p x p x C numbers per token, put back in place (unpatchify).
    The linear layers that produce the modulations and the final linear layer start at zero, so every
    block starts as the identity map and the untrained network outputs 0 (the "Zero" of adaLN-Zero: the
    paper's best conditioning, Table 1). Attention is ``torch.nn.functional.scaled_dot_product_attention``.

    The time t goes through the sinusoidal features of :class:`~fmlib.UNet` (frequencies 1..100) and a
    two-layer MLP; the label y through a table of ``num_classes + 1`` rows, the last being the null label
    (no class) for classifier-free guidance. With ``two_times=True`` the network is ``model(x, t, s, y)``:
    the second time s has features and an MLP of its own, added to c (a flow map ``model(x, r, t, y)``,
    see :class:`~fmlib.UNet`).

    Cost: the number of tokens is (S / p)^2, and each block costs about ``12 dim^2`` multiply-adds per token
    plus ``2 N dim`` for the attention of N tokens; halving p quadruples the tokens. On latents (e.g. the
    4 x 7 x 7 latents of :class:`~fmlib.Autoencoder`) use ``DiT(image_size=7, patch_size=1, in_channels=4)``.

    Precision: the network runs in its weights' dtype (bfloat16 or float16 after ``.to(...)``, with x in
    that dtype); the time features come from float32 times, cast to that dtype.

    Args:
        image_size: side S of the square inputs, >= 1.
        patch_size: side p of a patch, >= 1, dividing image_size.
        in_channels: channels C of the inputs, >= 1.
        dim: width of the tokens, a multiple of 4 and of heads.
        depth: number of transformer blocks, >= 1.
        heads: attention heads, >= 1.
        num_classes: number of classes, >= 1; the null label is ``num_classes``.
        mlp_ratio: hidden width of the MLPs as a multiple of dim, > 0.
        two_times: ``model(x, t, s, y)`` with a second time s.

    Raises:
        TypeError: for non-int sizes, a mlp_ratio that is not a real number, or two_times not a bool.
        ValueError: for sizes below their minimum, a patch_size that does not divide image_size (naming
            patch_size), a dim that is not a multiple of 4 and of heads; in ``forward``, an x of another
            shape than (B, in_channels, image_size, image_size) (naming x and the expected shape), labels
            outside 0..num_classes (naming y), or a second time missing or given against two_times.

    Example:
        >>> import torch
        >>> model = DiT(image_size=28, patch_size=4, dim=64, depth=2)
        >>> model(torch.zeros(2, 1, 28, 28), 0.5, torch.tensor([3, 10])).abs().max().item()  # starts at 0
        0.0
        >>> DiT(image_size=7, patch_size=1, in_channels=4, dim=32)(torch.zeros(2, 4, 7, 7), 0.5, 1).shape
        torch.Size([2, 4, 7, 7])
    """

    freqs: Tensor  # registered buffers: the time frequencies and the positional embedding
    pos_embed: Tensor

    def __init__(
        self,
        image_size: int = 28,
        patch_size: int = 2,
        in_channels: int = 1,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        num_classes: int = NUM_CLASSES,
        mlp_ratio: float = 4.0,
        two_times: bool = False,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("image_size", image_size, 1),
            ("patch_size", patch_size, 1),
            ("in_channels", in_channels, 1),
            ("dim", dim, 4),
            ("depth", depth, 1),
            ("heads", heads, 1),
            ("num_classes", num_classes, 1),
        ):
            check_int(value, name, low)
        check_real(mlp_ratio, "mlp_ratio", low=0.0, low_inclusive=False)
        if not isinstance(two_times, bool):
            raise TypeError(f"two_times must be a bool; got {type(two_times).__name__}")
        if image_size % patch_size:
            raise ValueError(
                f"patch_size must divide image_size (the patches tile the image); got patch_size={patch_size} "
                f"for image_size={image_size}"
            )
        if dim % 4 or dim % heads:
            raise ValueError(f"dim must be a multiple of 4 and of heads={heads}; got dim={dim}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.null_label = num_classes
        self.two_times = two_times
        self.grid = image_size // patch_size
        half = dim // 2
        self.register_buffer("freqs", _time_freqs(half))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(self.grid, dim)[None])
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.time_mlp = nn.Sequential(nn.Linear(2 * half, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label_emb = nn.Embedding(num_classes + 1, dim)
        self.blocks = nn.ModuleList(_DiTBlock(dim, heads, float(mlp_ratio)) for _ in range(depth))
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        final_ada = nn.Linear(dim, 2 * dim)
        self.final = nn.Linear(dim, patch_size * patch_size * in_channels)
        for layer in (final_ada, self.final):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.final_ada = nn.Sequential(nn.SiLU(), final_ada)
        self.time2_mlp = nn.Sequential(nn.Linear(2 * half, dim), nn.SiLU(), nn.Linear(dim, dim)) if two_times else None

    def patchify(self, x: Tensor) -> Tensor:
        """Images (B, C, S, S) -> patches (B, N, C p p), N = (S / p)^2, row-major over the patch grid.

        Patch n = i * grid + j holds the pixels ``x[:, :, i p:(i+1) p, j p:(j+1) p]`` flattened in the order
        (channel, row, column), the order of the patch embedding's kernel (a linear map of this vector).
        """
        b, c, p, g = x.shape[0], self.in_channels, self.patch_size, self.grid
        return x.reshape(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * p * p)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """Patches (B, N, C p p) -> images (B, C, S, S), the inverse of :meth:`patchify`."""
        b, c, p, g = patches.shape[0], self.in_channels, self.patch_size, self.grid
        return patches.reshape(b, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, g * p, g * p)

    def embed(self, t: Tensor, y: Tensor, s: Tensor | None = None) -> Tensor:
        """The conditioning vector c = MLP(features of t) + embedding of y (+ MLP'(features of s)), (B, dim)."""
        dtype = self.label_emb.weight.dtype
        c = self.time_mlp(_sinusoidal(t, self.freqs, dtype)) + self.label_emb(y)
        if s is not None and self.time2_mlp is not None:
            c = c + self.time2_mlp(_sinusoidal(s, self.freqs, dtype))
        return c

    def forward(self, x: Tensor, t: float | Tensor, *args: int | float | Tensor) -> Tensor:
        """The velocity v(x, t | y) (``model(x, t, y)``), or ``model(x, t, s, y)`` with ``two_times=True``.

        Args:
            x: shape (B, in_channels, image_size, image_size), floating dtype.
            t: times (float, 0-d tensor or shape (B,)).
            s: (two_times=True only) the second time, like t.
            y: labels, an int or an integer tensor of shape (B,), in 0..num_classes (num_classes = null).

        Returns:
            A tensor of x's shape and dtype.
        """
        check_batch(x, "x")
        want = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, want))}) for this DiT; got {tuple(x.shape)}")
        n_args = 2 if self.two_times else 1
        if len(args) != n_args:
            call = "model(x, t, s, y)" if self.two_times else "model(x, t, y)"
            other = "" if self.two_times else "; build it with two_times=True for model(x, t, s, y)"
            raise ValueError(f"this DiT is called as {call}; got {2 + len(args)} arguments{other}")
        t = as_time(t, x, unit_interval=False)
        s = as_time(args[0], x, name="s", unit_interval=False) if self.two_times else None
        y = check_labels(args[-1], x.shape[0], self.num_classes).to(x.device)
        c = self.embed(t, y, s)
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_ada(c).chunk(2, dim=1)
        return self.unpatchify(self.final(_modulate(self.final_norm(h), shift, scale)))
