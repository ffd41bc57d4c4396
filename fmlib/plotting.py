"""Matplotlib helpers for 2D flows: samples, densities, vector fields, trajectories, animations.

Every helper draws on a given ``ax`` (or a new one), labels its axes and, where
colour means a number, adds a colour bar. Inputs are tensors or arrays of
2D points; they are moved to the CPU for drawing.
"""

from __future__ import annotations

from collections.abc import Callable

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.animation import FuncAnimation
from torch import Tensor

from ._checks import check_batch, check_int

__all__ = [
    "use_book_style",
    "MAX_FIGURE_WIDTH",
    "grid_points",
    "plot_samples",
    "plot_histogram",
    "plot_density",
    "plot_vector_field",
    "plot_trajectories",
    "animate_flow",
    "image_grid",
]

Extent = tuple[float, float, float, float]

MAX_FIGURE_WIDTH = 9.0
"""Widest figure, in inches, whose text stays legible in the book's column.

The text column of the built book is about 690 px wide at a 1280 px window. A figure
W inches wide is shown at most 690 px wide, so one typographic point of it spans
690 / (72 W) px or more: at W <= 9.5 a 10 pt label stays at least 10 px tall.
"""


def use_book_style() -> None:
    """Set the book's figure style: legible fonts, retina PNGs, layouts that fit the column.

    Call once at the top of a chapter. Figures are drawn at 100 dpi and embedded as
    retina PNGs (twice the pixels, shown at half size), so at the column width one
    point of the figure spans at least one screen pixel as long as the figure is no
    wider than :data:`MAX_FIGURE_WIDTH` inches. Fonts are 11 pt (titles 12 pt, ticks and
    legends 10 pt); ``constrained_layout`` keeps labels and colour bars inside the figure.
    """
    plt.rcParams.update(
        {
            "figure.dpi": 100,
            "savefig.dpi": 200,
            "figure.figsize": (6.0, 4.0),
            "figure.constrained_layout.use": True,
            "font.size": 11,
            "axes.titlesize": 12,
            "axes.labelsize": 11,
            "xtick.labelsize": 10,
            "ytick.labelsize": 10,
            "legend.fontsize": 10,
            "legend.framealpha": 0.9,
            "image.cmap": "viridis",
            "animation.embed_limit": 40.0,
        }
    )
    try:  # inside IPython: embed figures as retina PNGs
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("retina")
    except ImportError:  # plain Python: nothing to configure
        pass


def _axes(ax: plt.Axes | None) -> plt.Axes:
    return ax if ax is not None else plt.subplots(figsize=(4.5, 4))[1]


def _label(ax: plt.Axes, title: str | None, extent: Extent | None = None) -> None:
    ax.set_xlabel("$x^{(1)}$")
    ax.set_ylabel("$x^{(2)}$")
    if title:
        ax.set_title(title)
    if extent is not None:
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal")


def _np(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def grid_points(
    extent: Extent = (-3, 3, -3, 3),
    n: int = 100,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[Tensor, np.ndarray, np.ndarray]:
    """An n x n grid over ``extent`` = (xmin, xmax, ymin, ymax).

    Returns:
        (points, X, Y): points of shape (n * n, 2) as a tensor, and the NumPy
        meshgrid arrays X, Y of shape (n, n) (row i has y = Y[i, 0]).
    """
    xs = np.linspace(extent[0], extent[1], n)
    ys = np.linspace(extent[2], extent[3], n)
    X, Y = np.meshgrid(xs, ys)
    pts = torch.as_tensor(np.stack([X.ravel(), Y.ravel()], axis=1), dtype=dtype, device=device)
    return pts, X, Y


def plot_samples(
    x: Tensor | np.ndarray,
    ax: plt.Axes | None = None,
    title: str | None = None,
    extent: Extent | None = (-3, 3, -3, 3),
    s: float = 2.0,
    **kwargs,
) -> plt.Axes:
    """Scatter plot of points of shape (B, 2)."""
    ax = _axes(ax)
    p = _np(x)
    ax.scatter(p[:, 0], p[:, 1], s=s, **kwargs)
    _label(ax, title, extent)
    return ax


def plot_histogram(
    x: Tensor | np.ndarray,
    ax: plt.Axes | None = None,
    title: str | None = None,
    extent: Extent = (-3, 3, -3, 3),
    bins: int = 100,
    cmap: str = "viridis",
) -> plt.Axes:
    """2D histogram (a density estimate) of points of shape (B, 2), with a colour bar."""
    ax = _axes(ax)
    p = _np(x)
    _, _, _, im = ax.hist2d(p[:, 0], p[:, 1], bins=bins, range=[extent[:2], extent[2:]], density=True, cmap=cmap)
    ax.figure.colorbar(im, ax=ax, label="density")
    _label(ax, title, extent)
    return ax


def plot_density(
    density: Callable[[Tensor], Tensor],
    ax: plt.Axes | None = None,
    title: str | None = None,
    extent: Extent = (-3, 3, -3, 3),
    n: int = 150,
    cmap: str = "viridis",
    label: str = "density",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> plt.Axes:
    """Image of a function of 2D points (e.g. ``lambda x: log_prob(x).exp()``) over ``extent``, with a colour bar.

    Args:
        density: maps points of shape (M, 2) to values of shape (M,).
        n: grid resolution per axis.
        label: colour bar label.
    """
    ax = _axes(ax)
    pts, X, Y = grid_points(extent, n, dtype=dtype, device=device)
    with torch.no_grad():
        values = _np(density(pts)).reshape(X.shape)
    im = ax.imshow(values, origin="lower", extent=extent, cmap=cmap, aspect="equal")
    ax.figure.colorbar(im, ax=ax, label=label)
    _label(ax, title, extent)
    return ax


def plot_vector_field(
    v: Callable[[Tensor, Tensor], Tensor],
    t: float,
    ax: plt.Axes | None = None,
    title: str | None = None,
    extent: Extent = (-3, 3, -3, 3),
    n: int = 20,
    cmap: str = "magma",
    label: str = "speed $|u_t(x)|$",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> plt.Axes:
    """Arrows of the field v(x, t) on an n x n grid at time t, coloured by speed ``|v|`` (colour bar).

    Arrows are normalised to unit length so the direction is readable; the colour gives the speed.
    ``label`` is the colour bar's label (e.g. ``"speed $|v_\\theta(x, t)|$"`` for a network).
    """
    ax = _axes(ax)
    pts, X, Y = grid_points(extent, n, dtype=dtype, device=device)
    with torch.no_grad():
        vel = _np(v(pts, torch.full((pts.shape[0],), float(t), dtype=dtype, device=pts.device)))
    speed = np.linalg.norm(vel, axis=1)
    unit = vel / np.maximum(speed, 1e-12)[:, None]
    q = ax.quiver(
        X.ravel(),
        Y.ravel(),
        unit[:, 0],
        unit[:, 1],
        speed,
        cmap=cmap,
        pivot="mid",
        angles="xy",
        scale_units="xy",
        scale=(n - 1) / (0.85 * (extent[1] - extent[0])),  # unit arrow = 85% of the grid spacing
        width=0.005,
    )
    ax.figure.colorbar(q, ax=ax, label=label)
    _label(ax, title if title is not None else f"t = {t:.2f}", extent)
    return ax


def plot_trajectories(
    traj: Tensor | np.ndarray,
    ax: plt.Axes | None = None,
    title: str | None = None,
    extent: Extent | None = (-3, 3, -3, 3),
    n: int = 200,
    alpha: float = 0.3,
) -> plt.Axes:
    """Paths of the first n particles of a trajectory of shape (T, B, 2).

    The start (t = 0, noise) is drawn in black, the end (data) in orange, paths in grey.
    """
    ax = _axes(ax)
    p = _np(traj)[:, :n]
    ax.plot(p[:, :, 0], p[:, :, 1], color="0.5", alpha=alpha, lw=0.8)
    ax.scatter(p[0, :, 0], p[0, :, 1], s=4, c="black", label="start", zorder=3)
    ax.scatter(p[-1, :, 0], p[-1, :, 1], s=4, c="tab:orange", label="end", zorder=3)
    ax.legend(loc="upper right", markerscale=3)
    _label(ax, title, extent)
    return ax


def animate_flow(
    traj: Tensor | np.ndarray,
    times: Tensor | np.ndarray | None = None,
    extent: Extent = (-3, 3, -3, 3),
    frames: int = 40,
    interval: int = 80,
    title: str = "particles flowing",
) -> FuncAnimation:
    """Animate particles of a trajectory of shape (T, B, 2); returns a matplotlib ``FuncAnimation``.

    In a notebook, show it with ``IPython.display.HTML(anim.to_jshtml())``.

    Args:
        traj: states, shape (T, B, 2).
        times: the T times (defaults to linspace(0, 1, T)), shown in the title.
        frames: number of frames (evenly spaced states) to keep.
        interval: milliseconds between frames.
    """
    p = _np(traj)
    ts = np.linspace(0, 1, p.shape[0]) if times is None else _np(times)
    keep = np.unique(np.linspace(0, p.shape[0] - 1, min(frames, p.shape[0])).round().astype(int))
    fig, ax = plt.subplots(figsize=(4, 4))
    scat = ax.scatter(p[0, :, 0], p[0, :, 1], s=3)
    _label(ax, f"{title}, t = {ts[0]:.2f}", extent)

    def update(i: int):
        scat.set_offsets(p[keep[i]])
        ax.set_title(f"{title}, t = {ts[keep[i]]:.2f}")
        return (scat,)

    anim = FuncAnimation(fig, update, frames=len(keep), interval=interval, blit=False)
    plt.close(fig)
    return anim


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
