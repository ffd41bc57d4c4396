"""Class-conditional flow matching on the 8x8 digits, with classifier-free guidance.

The data are scikit-learn's bundled ``load_digits`` (1,797 greyscale 8x8 images of the digits 0-9, no
download), scaled to [-1, 1]. The model is a small convolutional U-Net ``model(x, t, y)`` whose label
``y`` may be a digit 0..9 or the *null label* ``num_classes`` (= 10), which means "no label": one network
learns both the conditional field v(x, t | y) and the unconditional field v(x, t) (Ho & Salimans 2022).

Guidance convention (Ho & Salimans 2022; Lipman et al. 2024): the guided field is

    v_w(x, t | y) = v(x, t | null) + w (v(x, t | y) - v(x, t | null)),

so w = 0 is the unconditional field, w = 1 the conditional field and w > 1 extrapolates past it.
Ho & Salimans write (1 + w') eps_cond - w' eps_uncond = v_cond + w' (v_cond - v_uncond): their w' is
our w - 1.

Quality metrics use a small classifier trained on the real training images (scikit-learn's
``MLPClassifier``): its label accuracy on generated images, a Frechet distance between generated and
held-out images in its hidden-layer feature space (the recipe of the FID, Heusel et al. 2017, with a
classifier of digits instead of Inception), and nearest-neighbour distances to the training set
(a memorisation check).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real

import numpy as np
import torch
from torch import Tensor, nn

from ._checks import as_time, check_batch, check_int
from .losses import cfm_loss
from .paths import ProbPath
from .training import adam_loop

__all__ = [
    "NUM_CLASSES",
    "DigitsSplit",
    "load_digits_split",
    "DigitUNet",
    "drop_labels",
    "train_conditional",
    "cfg_combine",
    "guided_velocity",
    "DigitClassifier",
    "frechet_distance",
    "frechet_distance_gaussians",
    "nearest_distances",
    "image_grid",
]

NUM_CLASSES = 10
"""The number of digit classes; the label ``NUM_CLASSES`` (= 10) is the null label (unconditional)."""


# -- data -------------------------------------------------------------------------------------------


@dataclass
class DigitsSplit:
    """A fixed train / held-out split of the 8x8 digits.

    Attributes:
        x_train: training images in [-1, 1], shape (N_train, 1, 8, 8).
        y_train: their labels 0..9, shape (N_train,), int64.
        x_test: held-out images in [-1, 1], shape (N_test, 1, 8, 8).
        y_test: their labels, shape (N_test,), int64.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def load_digits_split(
    test_fraction: float = 0.2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> DigitsSplit:
    """The 1,797 bundled 8x8 digits of scikit-learn, scaled to [-1, 1] and split, stratified by label.

    Pixels are integers 0..16 in ``sklearn.datasets.load_digits``; they are mapped to ``x / 8 - 1``, so
    0 (background) is -1 and 16 (full ink) is 1. The split is ``train_test_split(..., stratify=labels,
    random_state=seed)``: every class keeps its share in both parts, and the same seed gives the same split.

    Args:
        test_fraction: share of the images held out, in (0, 1).
        seed: seed of the split.
        dtype: floating dtype of the images.
        device: device of all four tensors.

    Returns:
        A :class:`DigitsSplit`; with the defaults 1,437 training and 360 held-out images.

    Raises:
        ValueError: if test_fraction is not in (0, 1) or dtype is not floating.

    Example:
        >>> split = load_digits_split()
        >>> tuple(split.x_train.shape), tuple(split.x_test.shape)
        ((1437, 1, 8, 8), (360, 1, 8, 8))
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if isinstance(test_fraction, bool) or not isinstance(test_fraction, Real) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a float in (0, 1); got {test_fraction!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype; got {dtype}")
    digits = load_digits()
    images = digits.images.astype(np.float64) / 8.0 - 1.0
    labels = digits.target.astype(np.int64)
    i_train, i_test = train_test_split(
        np.arange(labels.shape[0]), test_size=float(test_fraction), stratify=labels, random_state=seed
    )

    def img(i: np.ndarray) -> Tensor:
        return torch.as_tensor(images[i][:, None]).to(dtype=dtype, device=device)

    def lab(i: np.ndarray) -> Tensor:
        return torch.as_tensor(labels[i]).to(device=device)

    return DigitsSplit(img(i_train), lab(i_train), img(i_test), lab(i_test))


# -- model ------------------------------------------------------------------------------------------


def _check_labels(y: object, batch: int, num_classes: int, allow_null: bool = True, name: str = "y") -> Tensor:
    """Return y as an int64 tensor of shape (batch,) after checking its values."""
    top = num_classes if allow_null else num_classes - 1
    if isinstance(y, Tensor):
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer labels in 0..{top}; got dtype {y.dtype}")
        if y.dim() == 0:
            y = y.expand(batch)
        if y.shape != (batch,):
            raise ValueError(f"{name} must have shape ({batch},) to match the batch; got shape {tuple(y.shape)}")
    elif isinstance(y, int) and not isinstance(y, bool):
        y = torch.full((batch,), y, dtype=torch.long)
    else:
        raise ValueError(f"{name} must be an int or an integer tensor of shape ({batch},); got {type(y).__name__}")
    if batch > 0:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi > top:
            what = f"0..{num_classes - 1} or the null label {num_classes}" if allow_null else f"0..{top}"
            raise ValueError(f"{name} must hold labels in {what}; got values in [{lo}, {hi}]")
    return y.long()


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

    Label dropout (training with the null label) is not done here but in :func:`train_conditional`.

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
        return self.time_mlp(torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)) + self.label_emb(y)

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
        y = _check_labels(y, x.shape[0], self.num_classes).to(x.device)
        emb = self.embed(t, y)
        skip = self.enc(self.inp(x), emb)
        h = self.mid(self.down(skip), emb)
        h = self.dec(self.up(h) + skip, emb)
        return self.out(nn.functional.silu(self.out_norm(h)))


# -- training ---------------------------------------------------------------------------------------


def drop_labels(
    labels: Tensor, p_uncond: float, null_label: int = NUM_CLASSES, generator: torch.Generator | None = None
) -> Tensor:
    """Replace each label by ``null_label`` with probability ``p_uncond`` (label dropout).

    Training on these labels teaches one network both v(x, t | y) and the unconditional v(x, t | null)
    (Ho & Salimans 2022, Algorithm 1).

    Args:
        labels: integer labels, shape (B,).
        p_uncond: probability of dropping a label, in [0, 1].
        null_label: the label meaning "unconditional".
        generator: random generator on the labels' device.

    Returns:
        A new int64 tensor of shape (B,).

    Raises:
        ValueError: if p_uncond is outside [0, 1] or labels is not a 1-d integer tensor.
    """
    if isinstance(p_uncond, bool) or not isinstance(p_uncond, Real) or not 0 <= p_uncond <= 1:
        raise ValueError(f"p_uncond must be a probability in [0, 1]; got {p_uncond!r}")
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor of shape (B,); got {labels!r}")
    drop = torch.rand(labels.shape[0], generator=generator, device=labels.device) < p_uncond
    return torch.where(drop, torch.full_like(labels, null_label), labels).long()


def _with_labels(model: Callable[..., Tensor], y: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """The velocity field (x, t) -> model(x, t, y) for fixed labels y."""
    return lambda x, t: model(x, t, y)


def train_conditional(
    model: nn.Module,
    path: ProbPath,
    images: Tensor,
    labels: Tensor,
    steps: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    p_uncond: float = 0.2,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> list[float]:
    """Train a class-conditional model ``model(x, t, y)`` with the CFM loss and label dropout.

    Each step draws ``batch_size`` rows of (images, labels) with replacement, replaces each label by the
    null label ``model.num_classes`` with probability ``p_uncond`` (:func:`drop_labels`), and takes an
    Adam step on :func:`~fmlib.cfm_loss` of the field ``(x, t) -> model(x, t, y)``: the conditional
    path and its target do not depend on y, only the network sees it. All randomness comes from
    ``generator``, so equally seeded runs give equal losses.

    Args:
        model: a conditional velocity model with a ``num_classes`` attribute (e.g. :class:`DigitUNet`).
        path: the conditional probability path.
        images: training images x1, shape ``(N, *D)``, on the model's device.
        labels: their labels in 0..num_classes - 1, shape (N,).
        steps: optimiser steps, >= 1.
        batch_size: minibatch size, >= 1.
        lr: Adam learning rate, > 0.
        p_uncond: label dropout probability, in [0, 1].
        generator: random generator on the images' device.
        progress: show a tqdm progress bar.

    Returns:
        The loss of every step, a list of ``steps`` floats.

    Raises:
        ValueError: for arguments out of range, labels of the wrong shape or range, or a model without
            ``num_classes``.
    """
    check_batch(images, "images")
    num_classes = getattr(model, "num_classes", None)
    if not isinstance(num_classes, int):
        raise ValueError("model must have an int attribute num_classes (the null label); got none")
    labels = _check_labels(labels, images.shape[0], num_classes, allow_null=False, name="labels")
    labels = labels.to(images.device)

    def step_loss() -> Tensor:
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=generator, device=images.device)
        y = drop_labels(labels[idx], p_uncond, num_classes, generator)
        return cfm_loss(_with_labels(model, y), path, images[idx], generator=generator)

    return adam_loop(model, step_loss, steps, batch_size, lr, progress)


# -- guidance ---------------------------------------------------------------------------------------


def _check_w(w: object) -> float:
    if isinstance(w, bool) or not isinstance(w, Real) or not math.isfinite(float(w)) or w < 0:
        raise ValueError(f"w must be a finite guidance scale >= 0 (0 unconditional, 1 conditional); got {w!r}")
    return float(w)


def cfg_combine(v_cond: Tensor, v_uncond: Tensor, w: float) -> Tensor:
    """Classifier-free guidance: ``v_uncond + w (v_cond - v_uncond)``.

    w = 0 gives the unconditional field, w = 1 the conditional one, w > 1 moves further along the
    direction from unconditional to conditional (Ho & Salimans 2022, whose scale is our w - 1).

    Args:
        v_cond: conditional velocity v(x, t | y).
        v_uncond: unconditional velocity v(x, t | null), same shape.
        w: guidance scale, finite and >= 0.

    Raises:
        ValueError: if w < 0 or not finite, or the shapes differ.

    Example:
        >>> import torch
        >>> cfg_combine(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), 3.0)
        tensor([ 3., -2.])
    """
    w = _check_w(w)
    if v_cond.shape != v_uncond.shape:
        raise ValueError(
            f"v_cond and v_uncond must have the same shape; got {tuple(v_cond.shape)} and {tuple(v_uncond.shape)}"
        )
    return v_uncond + w * (v_cond - v_uncond)


def guided_velocity(model: Callable[..., Tensor], y: int | Tensor, w: float) -> Callable[[Tensor, Tensor], Tensor]:
    """The guided velocity field ``v(x, t) = v_uncond + w (v_cond - v_uncond)`` of a conditional model.

    ``v_cond = model(x, t, y)`` and ``v_uncond = model(x, t, null)`` with the null label
    ``model.num_classes``. Convention: w = 0 samples the unconditional model, w = 1 the conditional
    model, w > 1 is guidance (Ho & Salimans 2022; Lipman et al. 2024). The other common
    convention, ``v_cond + w' (v_cond - v_uncond)``, is the same field with ``w' = w - 1``.
    For w not in {0, 1} both fields are evaluated in one batch of 2B, so one call of the returned
    field costs one network evaluation of twice the batch.

    Args:
        model: conditional velocity model ``model(x, t, y)`` with an int attribute ``num_classes``.
        y: the class of each sample: an int (the same for all) or an integer tensor of shape (B,)
            with values in 0..num_classes - 1.
        w: guidance scale, finite and >= 0.

    Returns:
        A velocity field ``v(x, t)`` for :func:`~fmlib.integrate`.

    Raises:
        ValueError: if w < 0, y is out of range, or (when called) y does not match x's batch.

    Example:
        >>> import torch
        >>> from fmlib import integrate
        >>> model = DigitUNet()
        >>> x1 = integrate(guided_velocity(model, 3, w=2.0), torch.randn(4, 1, 8, 8), steps=2)
        >>> x1.shape
        torch.Size([4, 1, 8, 8])
    """
    w = _check_w(w)
    num_classes = getattr(model, "num_classes", None)
    if not isinstance(num_classes, int):
        raise ValueError("model must have an int attribute num_classes (the null label); got none")
    if isinstance(y, Tensor):
        y = _check_labels(y, y.shape[0] if y.dim() else 1, num_classes, allow_null=False)
    else:
        _check_labels(y, 1, num_classes, allow_null=False)

    def v(x: Tensor, t: Tensor) -> Tensor:
        batch = x.shape[0]
        yy = _check_labels(y, batch, num_classes, allow_null=False).to(x.device)
        null = torch.full_like(yy, num_classes)
        if w == 0.0:
            return model(x, t, null)
        if w == 1.0:
            return model(x, t, yy)
        t = as_time(t, x, unit_interval=False)
        out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([yy, null]))
        v_cond, v_uncond = out[:batch], out[batch:]
        return cfg_combine(v_cond, v_uncond, w)

    return v


# -- metrics ----------------------------------------------------------------------------------------


def _to_numpy(x: Tensor | np.ndarray, name: str) -> np.ndarray:
    """Flatten images (N, *D) to a float64 array (N, prod D)."""
    if isinstance(x, Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
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

    Example:
        >>> split = load_digits_split()
        >>> clf = DigitClassifier().fit(split.x_train, split.y_train)
        >>> clf.accuracy(split.x_test, split.y_test) > 0.95
        True
    """

    def __init__(self, hidden: int = 64, seed: int = 0, max_iter: int = 300, alpha: float = 1e-3) -> None:
        from sklearn.neural_network import MLPClassifier

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

        y = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
        with warnings.catch_warnings():
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


def image_grid(images: Tensor, nrow: int, pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Tile images (B, 1, H, W) into one 2D array, ``nrow`` images per row, for ``plt.imshow``.

    Missing tiles at the end and the ``pad`` pixels between tiles are filled with ``pad_value``.

    Returns:
        A float64 array of shape (rows * (H + pad) - pad, nrow * (W + pad) - pad).
    """
    check_batch(images, "images")
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape (B, 1, H, W); got {tuple(images.shape)}")
    check_int(nrow, "nrow")
    b, _, h, w = images.shape
    rows = -(-b // nrow)
    out = np.full((rows * (h + pad) - pad, nrow * (w + pad) - pad), pad_value, dtype=np.float64)
    arr = images.detach().to("cpu", torch.float64).numpy()[:, 0]
    for k in range(b):
        r, c = divmod(k, nrow)
        out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = arr[k]
    return out
