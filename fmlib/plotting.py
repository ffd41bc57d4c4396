"""Matplotlib helpers for 2D flows: samples, densities, vector fields, trajectories, animations.

Every helper draws on a given ``ax`` (or a new figure), labels its axes and, where
colour means a number, adds a labelled colour bar. Inputs are tensors or arrays of
2D points; they are moved to the CPU for drawing. The recurring figure types of the
book have one helper each: samples beside the data (:func:`plot_samples_beside_data`),
velocity fields over a density on one speed scale (:func:`plot_vector_fields`), paths
coloured by their start (:func:`plot_flow_paths`) and animated particles
(:func:`animate_flow`, shown with :func:`show_animation`). Every helper here is used by a
chapter or a benchmark.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.animation import FuncAnimation
from matplotlib.collections import LineCollection
from matplotlib.colorbar import Colorbar
from matplotlib.colors import Colormap, ListedColormap, LogNorm, Normalize
from matplotlib.figure import Figure
from torch import Tensor

from ._checks import check_batch, check_int

__all__ = [
    "use_book_style",
    "MAX_FIGURE_WIDTH",
    "MARKERS",
    "grid_points",
    "data_extent",
    "panel_grid",
    "add_colorbar",
    "loglog_slope",
    "plot_samples",
    "plot_density",
    "plot_samples_beside_data",
    "plot_vector_field",
    "plot_vector_fields",
    "SPEED_CMAP",
    "plot_trajectories",
    "plot_flow_paths",
    "start_colors",
    "animate_flow",
    "animation_html",
    "show_animation",
    "image_grid",
]

Extent = tuple[float, float, float, float]
ArrayLike = Tensor | np.ndarray

MAX_FIGURE_WIDTH = 9.0
"""Widest figure, in inches, whose text stays legible in the book's column.

The text column of the built book is about 690 px wide at a 1280 px window. A figure
W inches wide is shown at most 690 px wide, so one typographic point of it spans
690 / (72 W) px or more: at W <= 9.5 a 10 pt label stays at least 10 px tall.
"""

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h")
"""Markers for curves on one axes: distinct shapes, so curves differ without colour."""


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
    return ax if ax is not None else plt.subplots(figsize=(4.5, 4), layout="constrained")[1]


def _label(ax: plt.Axes, title: str | None, extent: Extent | None = None) -> None:
    ax.set_xlabel("$x^{(1)}$")
    ax.set_ylabel("$x^{(2)}$")
    if title:
        ax.set_title(title)
    if extent is not None:
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal")


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _points(x: object, name: str) -> np.ndarray:
    """``x`` as a NumPy array of 2D points, shape (..., 2)."""
    if not isinstance(x, (Tensor, np.ndarray)):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray of 2D points; got {type(x).__name__}")
    p = _np(x)
    if p.ndim < 2 or p.shape[-1] != 2 or p.shape[-2] < 1:
        raise ValueError(f"{name} must have shape (..., B, 2) with B >= 1; got shape {p.shape}")
    return p


def _check_extent(extent: object, name: str = "extent") -> Extent:
    if not isinstance(extent, (tuple, list)) or len(extent) != 4:
        raise TypeError(f"{name} must be a tuple (xmin, xmax, ymin, ymax); got {extent!r}")
    xmin, xmax, ymin, ymax = (float(e) for e in extent)
    if not (xmin < xmax and ymin < ymax):
        raise ValueError(f"{name} must satisfy xmin < xmax and ymin < ymax; got {extent!r}")
    return (xmin, xmax, ymin, ymax)


def _check_label(label: object, name: str = "label") -> str:
    if not isinstance(label, str):
        raise TypeError(f"{name} must be a string naming the quantity; got {type(label).__name__}")
    if not label.strip():
        raise ValueError(f"{name} must name the quantity a colour bar shows; got an empty string")
    return label


def data_extent(*points: ArrayLike, margin: float = 0.05, quantile: float | None = None) -> Extent:
    """The smallest (xmin, xmax, ymin, ymax) that contains every point, widened by ``margin`` of each side.

    Args:
        points: arrays or tensors of 2D points, each of shape (..., 2) (e.g. samples (B, 2) or a
            trajectory (T, B, 2)); all of them are contained.
        margin: fraction of the larger of the two spans added on every side (0.05: 5 %).
        quantile: if given (e.g. 0.005), the box holds the points between the ``quantile`` and
            ``1 - quantile`` quantiles of each coordinate instead of all of them (for heavy tails).

    Raises:
        ValueError: no points, a negative margin, or non-finite coordinates.

    >>> data_extent(np.array([[0.0, 0.0], [2.0, 1.0]]), margin=0.0)
    (0.0, 2.0, 0.0, 1.0)
    """
    if not points:
        raise ValueError("data_extent needs at least one array of points; got none")
    if margin < 0:
        raise ValueError(f"margin must be >= 0; got {margin}")
    flat = np.concatenate([_points(p, "points").reshape(-1, 2) for p in points]).astype(np.float64)
    if not np.isfinite(flat).all():
        raise ValueError("data_extent got non-finite coordinates (NaN or inf)")
    if quantile is None:
        lo, hi = flat.min(axis=0), flat.max(axis=0)
    else:
        lo, hi = np.quantile(flat, quantile, axis=0), np.quantile(flat, 1 - quantile, axis=0)
    pad = margin * max(float((hi - lo).max()), 1e-3)
    lo, hi = lo - pad, hi + pad
    hi = np.where(hi - lo < 1e-6, lo + 1e-3, hi)
    return (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))


def panel_grid(
    n: int,
    ncols: int | None = None,
    panel_height: float | None = None,
    width: float | None = None,
    **subplot_kw,
) -> tuple[Figure, list[plt.Axes]]:
    """A figure of ``n`` panels, at most three per row, no wider than :data:`MAX_FIGURE_WIDTH`.

    Args:
        n: number of panels.
        ncols: panels per row (default ``min(n, 3)``; at most 3).
        panel_height: height of one row in inches (default: about the width of one panel).
        width: figure width in inches (default ``min(MAX_FIGURE_WIDTH, 3.2 * ncols)``).
        subplot_kw: passed to :func:`matplotlib.pyplot.subplots` (e.g. ``sharex=True``).

    Returns:
        ``(fig, axes)``: the constrained-layout figure and a flat list of its ``n`` axes (unused grid
        cells are removed).

    Raises:
        ValueError: ``n < 1``, ``ncols`` outside 1..3, or ``width`` above :data:`MAX_FIGURE_WIDTH`.
    """
    n = check_int(n, "n")
    ncols = min(n, 3) if ncols is None else check_int(ncols, "ncols")
    if ncols > 3:
        raise ValueError(f"ncols must be at most 3 (panels per row that stay legible); got {ncols}")
    width = min(MAX_FIGURE_WIDTH, 3.2 * ncols) if width is None else float(width)
    if width > MAX_FIGURE_WIDTH:
        raise ValueError(f"width must be at most MAX_FIGURE_WIDTH = {MAX_FIGURE_WIDTH} inches; got {width}")
    nrows = math.ceil(n / ncols)
    panel_height = min(3.4, width / ncols) if panel_height is None else float(panel_height)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width, panel_height * nrows), squeeze=False, layout="constrained", **subplot_kw
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.remove()
    return fig, flat[:n]


def add_colorbar(mappable, ax: plt.Axes | Sequence[plt.Axes], label: str, **kwargs) -> Colorbar:
    """A colour bar for ``mappable`` beside ``ax`` (one axes, or a list of axes sharing it), labelled ``label``.

    ``label`` names the quantity and its meaning (e.g. ``"density $p_t(x)$"``); it is required.

    Raises:
        TypeError, ValueError: ``label`` is not a non-empty string.
    """
    _check_label(label)
    fig = ax.figure if isinstance(ax, plt.Axes) else ax[0].figure
    return fig.colorbar(mappable, ax=ax, label=label, **kwargs)


def loglog_slope(x: ArrayLike | Sequence[float], y: ArrayLike | Sequence[float]) -> float:
    r"""Least-squares slope of log y against log x: the order :math:`p` in :math:`y \approx C x^p`.

    >>> round(loglog_slope([1, 2, 4, 8], [1.0, 0.25, 0.0625, 0.015625]), 6)
    -2.0

    Raises:
        ValueError: fewer than two points, different lengths, or a value that is not positive.
    """
    xa, ya = (
        np.asarray(_np(x) if isinstance(x, Tensor) else x, float),
        np.asarray(_np(y) if isinstance(y, Tensor) else y, float),
    )
    if xa.shape != ya.shape or xa.ndim != 1 or len(xa) < 2:
        raise ValueError(f"x and y must be 1D of equal length >= 2; got shapes {xa.shape} and {ya.shape}")
    if not ((xa > 0).all() and (ya > 0).all()):
        raise ValueError("x and y must be positive for a log-log slope")
    return float(np.polyfit(np.log(xa), np.log(ya), 1)[0])


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


def plot_samples_beside_data(
    samples: ArrayLike | Mapping[str, ArrayLike],
    data: ArrayLike,
    extent: Extent | None = None,
    data_title: str = "data",
    s: float = 2.0,
    colors: Mapping[str, str] | None = None,
) -> tuple[Figure, list[plt.Axes]]:
    """The data in the first panel, each set of samples in the next ones, on the same axes limits.

    Args:
        samples: points (B, 2), or {panel title: points (B, 2)} (at most five sets: three panels per row).
        data: the data points (N, 2), drawn black in the first panel and faint grey behind the samples.
        extent: common axes limits; default: the box holding the data and 99 % of every sample set.
        colors: {panel title: colour} for the samples (default: the colour cycle).

    Returns:
        ``(fig, axes)``.
    """
    sets = {"samples": samples} if not isinstance(samples, Mapping) else dict(samples)
    if not sets:
        raise ValueError("samples must hold at least one set of points")
    d = _points(data, "data").reshape(-1, 2)
    arrays = {title: _points(p, f"samples[{title!r}]").reshape(-1, 2) for title, p in sets.items()}
    if extent is None:
        inner = [data_extent(p, margin=0.0, quantile=0.005) for p in arrays.values()]
        corners = [np.array([[e[0], e[2]], [e[1], e[3]]]) for e in inner]
        extent = data_extent(d, *corners, margin=0.05)
    extent = _check_extent(extent)
    fig, axes = panel_grid(len(arrays) + 1)
    plot_samples(d, ax=axes[0], title=f"{data_title} ({len(d)} points)", extent=extent, s=s, color="black")
    for k, (ax, (title, p)) in enumerate(zip(axes[1:], arrays.items())):
        color = (colors or {}).get(title, f"C{k}")
        ax.scatter(d[:, 0], d[:, 1], s=s, color="0.8", zorder=0)
        plot_samples(p, ax=ax, title=f"{title} ({len(p)} points)", extent=extent, s=s, color=color)
    return fig, axes


SPEED_CMAP = ListedColormap(plt.get_cmap("plasma")(np.linspace(0.0, 0.75, 256)), name="plasma_dark")
"""Colour map for speeds: the lower 75 % of ``plasma`` (dark blue to orange), so that arrows of every speed stay
visible on white and on the light grey of a density drawn beneath them (``plasma``'s own light end is pale yellow)."""

_BACKGROUND_CMAP = ListedColormap(plt.get_cmap("Greys")(np.linspace(0.0, 0.45, 256)), name="greys_light")


def _field_on_grid(
    v: Callable[[Tensor, Tensor], Tensor], t: float, extent: Extent, n: int, dtype: torch.dtype, device
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pts, X, Y = grid_points(extent, n, dtype=dtype, device=device)
    with torch.no_grad():
        vel = _np(v(pts, torch.full((pts.shape[0],), float(t), dtype=dtype, device=pts.device)))
    if vel.shape != (pts.shape[0], 2):
        raise ValueError(f"v must map points (M, 2) and times (M,) to velocities (M, 2); got shape {vel.shape}")
    return X, Y, vel


def _draw_field(
    ax: plt.Axes,
    X: np.ndarray,
    Y: np.ndarray,
    vel: np.ndarray,
    t: float,
    extent: Extent,
    norm: Normalize,
    cmap,
    density: Callable[[Tensor, Tensor], Tensor] | None,
    points: ArrayLike | None,
    dtype: torch.dtype,
    device,
):
    """Grey density or points beneath, then unit arrows coloured by speed on ``norm``; returns the quiver."""
    if density is not None:
        pts, Xd, _ = grid_points(extent, 120, dtype=dtype, device=device)
        with torch.no_grad():
            d = _np(density(pts, torch.full((pts.shape[0],), float(t), dtype=dtype, device=pts.device)))
        ax.imshow(d.reshape(Xd.shape), origin="lower", extent=extent, cmap=_BACKGROUND_CMAP, zorder=0)
    if points is not None:
        p = _points(points, "points").reshape(-1, 2)
        ax.scatter(p[:, 0], p[:, 1], s=2, c="0.6", linewidths=0, zorder=1)
    speed = np.linalg.norm(vel, axis=1)
    unit = vel / np.maximum(speed, 1e-12)[:, None]
    n = X.shape[0]
    return ax.quiver(
        X.ravel(),
        Y.ravel(),
        unit[:, 0],
        unit[:, 1],
        speed,
        cmap=cmap,
        norm=norm,
        pivot="mid",
        angles="xy",
        scale_units="xy",
        scale=(n - 1) / (0.85 * (extent[1] - extent[0])),  # unit arrow = 85% of the grid spacing
        width=0.005,
        zorder=2,
    )


def plot_vector_field(
    v: Callable[[Tensor, Tensor], Tensor],
    t: float,
    ax: plt.Axes | None = None,
    title: str | None = None,
    extent: Extent = (-3, 3, -3, 3),
    n: int = 20,
    cmap: str | Colormap = SPEED_CMAP,
    label: str = "speed $|u_t(x)|$",
    density: Callable[[Tensor, Tensor], Tensor] | None = None,
    points: ArrayLike | None = None,
    norm: Normalize | None = None,
    colorbar: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> plt.Axes:
    """Arrows of the field v(x, t) on an n x n grid at time t, coloured by speed ``|v|`` (colour bar).

    Arrows are normalised to unit length so the direction is readable; the colour gives the speed, on
    :data:`SPEED_CMAP` (dark at every speed, so visible on white). Beneath the arrows, in light grey, the
    density ``density(x, t)`` (points (M, 2) and times (M,) to values (M,), e.g. ``p_t``) and/or the 2D
    ``points`` (B, 2) (e.g. the data) show where the mass is.

    Args:
        label: the colour bar's label (e.g. ``"speed $|v_\\theta(x, t)|$"`` for a network).
        norm: the speed scale (default: from 0 to the largest speed drawn); pass one norm to several
            panels to share a scale, as :func:`plot_vector_fields` does.
        colorbar: draw the colour bar (False when the caller adds a shared one).

    Returns:
        The axes; the arrows are ``ax.collections[-1]`` (a ``Quiver`` whose array is the speed).

    Raises:
        ValueError: an empty label, or ``v`` does not return velocities of shape (M, 2).
    """
    _check_label(label)
    ax = _axes(ax)
    X, Y, vel = _field_on_grid(v, t, extent, n, dtype, device)
    if norm is None:
        norm = Normalize(0.0, max(float(np.linalg.norm(vel, axis=1).max()), 1e-12))
    q = _draw_field(ax, X, Y, vel, t, extent, norm, cmap, density, points, dtype, device)
    if colorbar:
        add_colorbar(q, ax, label)
    _label(ax, title if title is not None else f"t = {t:.2f}", extent)
    return ax


def plot_vector_fields(
    fields: Mapping[str, tuple[Callable[[Tensor, Tensor], Tensor], float]],
    label: str = "speed $|u_t(x)|$",
    extent: Extent = (-3, 3, -3, 3),
    n: int = 20,
    density: Callable[[Tensor, Tensor], Tensor] | None = None,
    points: ArrayLike | None = None,
    log: bool = False,
    ncols: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[Figure, list[plt.Axes]]:
    """Several vector fields side by side, coloured by speed on ONE scale with one shared, labelled colour bar.

    Args:
        fields: {panel title: (v, t)}, each drawn as by :func:`plot_vector_field`; at most three per row.
        density, points: drawn in grey beneath every panel (``density`` at each panel's own t).
        log: a logarithmic speed scale (from the 1st percentile of all speeds to the largest), for
            speeds that span decades; otherwise linear from 0 to the largest speed.
        ncols: panels per row (default ``min(len(fields), 3)``).

    Returns:
        ``(fig, axes)``.

    Raises:
        ValueError: no fields, an empty label, or as :func:`plot_vector_field`.
    """
    if not isinstance(fields, Mapping) or not fields:
        raise ValueError("fields must be a non-empty mapping {title: (v, t)}")
    _check_label(label)
    extent = _check_extent(extent)
    grids = {title: (t, *_field_on_grid(v, t, extent, n, dtype, device)) for title, (v, t) in fields.items()}
    speeds = np.concatenate([np.linalg.norm(g[3], axis=1) for g in grids.values()])
    top = max(float(speeds.max()), 1e-12)
    norm: Normalize = LogNorm(max(float(np.percentile(speeds, 1)), 1e-6 * top), top) if log else Normalize(0.0, top)
    k = len(grids)
    fig, axes = panel_grid(k, ncols=ncols, width=min(MAX_FIGURE_WIDTH, 3.0 * min(k, ncols or 3) + 0.9))
    for ax, (title, (t, X, Y, vel)) in zip(axes, grids.items()):
        q = _draw_field(ax, X, Y, vel, t, extent, norm, SPEED_CMAP, density, points, dtype, device)
        _label(ax, title, extent)
    add_colorbar(q, axes, label, shrink=0.9)
    return fig, axes


def plot_trajectories(
    traj: Tensor | np.ndarray,
    ax: plt.Axes | None = None,
    title: str | None = None,
    extent: Extent | None = (-3, 3, -3, 3),
    n: int = 200,
    alpha: float = 0.3,
    legend: bool = True,
) -> plt.Axes:
    """Paths of the first n particles of a trajectory of shape (T, B, 2).

    The start (t = 0, noise) is drawn in black, the end (data) in orange, paths in grey; the
    legend sits above the axes, off the data (``legend=False`` leaves it out).
    """
    ax = _axes(ax)
    p = _np(traj)[:, :n]
    ax.plot(p[:, :, 0], p[:, :, 1], color="0.5", alpha=alpha, lw=0.8)
    ax.scatter(p[0, :, 0], p[0, :, 1], s=4, c="black", label="start", zorder=3)
    ax.scatter(p[-1, :, 0], p[-1, :, 1], s=4, c="tab:orange", label="end", zorder=3)
    _label(ax, title, extent)
    if legend:
        ax.legend(
            loc="lower center",
            bbox_to_anchor=(0.5, 1.0 if not title else 1.08),
            ncols=2,
            markerscale=3,
            frameon=False,
            borderaxespad=0.2,
        )
    return ax


def start_colors(x0: ArrayLike, cmap: str = "hsv") -> np.ndarray:
    """An RGBA colour per particle from where it starts: the angle of x0 around the particles' mean.

    Particles that start on the same side of the noise cloud share a hue, so one can follow where
    each region of the source ends up. Shape (B, 4) for x0 of shape (B, 2).
    """
    p = _points(x0, "x0").reshape(-1, 2)
    c = p - p.mean(axis=0)
    angle = (np.arctan2(c[:, 1], c[:, 0]) + np.pi) / (2 * np.pi)
    return plt.get_cmap(cmap)(angle)


def _trajectories(traj: object) -> dict[str, np.ndarray]:
    sets = dict(traj) if isinstance(traj, Mapping) else {"": traj}
    if not sets:
        raise ValueError("traj must hold at least one trajectory")
    out = {}
    for title, p in sets.items():
        arr = _points(p, "traj" if title == "" else f"traj[{title!r}]")
        if arr.ndim != 3:
            raise ValueError(f"a trajectory must have shape (T, B, 2); got shape {arr.shape}")
        out[str(title)] = arr
    if len({a.shape[0] for a in out.values()}) != 1:
        raise ValueError(
            f"the trajectories must have the same number of states T; got {[a.shape for a in out.values()]}"
        )
    return out


def plot_flow_paths(
    traj: ArrayLike | Mapping[str, ArrayLike],
    target: ArrayLike | None = None,
    extent: Extent | None = None,
    n: int = 300,
    title: str | None = None,
    axes: Sequence[plt.Axes] | None = None,
) -> list[plt.Axes]:
    """Paths of particles coloured by where they start (:func:`start_colors`), with the target data faint.

    Args:
        traj: a trajectory (T, B, 2), or {panel title: trajectory} for panels side by side (at most 3
            per row; with the same x0 the colours match across panels).
        target: data points (N, 2) drawn faintly in grey behind the paths.
        extent: axes limits (default: the box holding every path and the target).
        n: number of particles drawn (the first n).
        title: title of a single panel (with a dict the keys are the titles).
        axes: where to draw (one per trajectory); default a new :func:`panel_grid`.

    Returns:
        The list of axes.
    """
    trajs = {k: v[:, : check_int(n, "n")] for k, v in _trajectories(traj).items()}
    extras = [] if target is None else [_points(target, "target").reshape(-1, 2)]
    extent = data_extent(*trajs.values(), *extras) if extent is None else _check_extent(extent)
    if axes is None:
        axes = panel_grid(len(trajs), panel_height=min(3.6, MAX_FIGURE_WIDTH / min(len(trajs), 3)))[1]
    for ax, (name, p) in zip(axes, trajs.items()):
        if extras:
            ax.scatter(extras[0][:, 0], extras[0][:, 1], s=2, color="0.75", zorder=0, rasterized=True)
        colors = start_colors(p[0])
        segments = np.stack([p[:-1], p[1:]], axis=2).transpose(1, 0, 2, 3).reshape(-1, 2, 2)
        ax.add_collection(LineCollection(segments, colors=np.repeat(colors, p.shape[0] - 1, axis=0), lw=0.7, alpha=0.6))
        ax.scatter(p[0, :, 0], p[0, :, 1], s=5, c=colors, edgecolors="none", zorder=3)
        ax.scatter(p[-1, :, 0], p[-1, :, 1], s=7, c=colors, edgecolors="black", linewidths=0.3, zorder=4)
        _label(ax, name or title, extent)
    return list(axes)


def animate_flow(
    traj: ArrayLike | Mapping[str, ArrayLike],
    times: Tensor | np.ndarray | None = None,
    extent: Extent | None = None,
    frames: int = 40,
    interval: int = 80,
    title: str = "particles flowing",
    *,
    target: ArrayLike | None = None,
    trail: int = 6,
    colors: ArrayLike | None = None,
    s: float = 6.0,
) -> FuncAnimation:
    """Animate particles of a trajectory (T, B, 2), or of several side by side; returns a ``FuncAnimation``.

    Each particle keeps the colour of where it started (:func:`start_colors`) and draws a short
    trail of its last positions; the target data are drawn faintly behind, so one sees which part
    of the noise goes to which part of the data. In a notebook show it with :func:`show_animation`
    (no CDN needed).

    Args:
        traj: states, shape (T, B, 2); or {panel title: trajectory} for panels side by side (e.g.
            conditional against marginal paths, independent against OT pairs); all with the same T.
        times: the T times (defaults to linspace(0, 1, T)), shown in the title.
        extent: axes limits; default: the box holding every state of every panel and the target.
        frames: number of frames (evenly spaced states) to keep.
        interval: milliseconds between frames.
        title: the figure title, followed by ", t = ...".
        target: data points (N, 2) drawn faintly (grey) in every panel.
        trail: number of previous frames each particle's trail spans (0: no trail).
        colors: per-particle colours, shape (B, 3) or (B, 4) RGB(A) (default: by starting angle).
        s: marker size of the particles.

    Raises:
        ValueError: a trajectory not of shape (T, B, 2), panels with different T, ``times`` not of
            length T, or ``frames``/``trail`` out of range.
        TypeError: ``traj`` is not an array, tensor or mapping of them.
    """
    trajs = _trajectories(traj)
    n_states = next(iter(trajs.values())).shape[0]
    ts = np.linspace(0, 1, n_states) if times is None else _np(times).reshape(-1)
    if len(ts) != n_states:
        raise ValueError(f"times must hold T = {n_states} values; got {len(ts)}")
    frames = check_int(frames, "frames")
    trail = check_int(trail, "trail", low=0)
    tgt = None if target is None else _points(target, "target").reshape(-1, 2)
    extent = data_extent(*trajs.values(), *([] if tgt is None else [tgt])) if extent is None else _check_extent(extent)
    keep = np.unique(np.linspace(0, n_states - 1, min(frames, n_states)).round().astype(int))

    npanel = len(trajs)
    ncols = min(npanel, 3)
    nrows = math.ceil(npanel / ncols)
    aspect = (extent[3] - extent[2]) / (extent[1] - extent[0])
    width = min(MAX_FIGURE_WIDTH, 3.9 * ncols)
    height = nrows * (min((width / ncols - 1.0) * aspect, 4.5) + 1.0) + 0.4
    fig, grid = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, layout="constrained")
    axes = list(grid.ravel())
    for ax in axes[npanel:]:
        ax.remove()
    artists = []
    for ax, (name, p) in zip(axes, trajs.items()):
        cols = (
            start_colors(p[0]) if colors is None else np.asarray(_np(colors) if isinstance(colors, Tensor) else colors)
        )
        if tgt is not None:
            ax.scatter(tgt[:, 0], tgt[:, 1], s=2, color="0.8", zorder=0)
        lines = LineCollection([], colors=cols, lw=0.8, alpha=0.5, zorder=1)
        ax.add_collection(lines)
        scat = ax.scatter(p[0, :, 0], p[0, :, 1], s=s, c=cols, edgecolors="none", zorder=2)
        _label(ax, name or None, extent)
        artists.append((p, lines, scat))
    head = fig.suptitle(f"{title}, t = {ts[keep[0]]:.2f}")

    def update(i: int):
        for p, lines, scat in artists:
            scat.set_offsets(p[keep[i]])
            if trail:
                past = p[keep[max(0, i - trail) : i + 1]]  # (k, B, 2)
                lines.set_segments(list(past.transpose(1, 0, 2)) if len(past) > 1 else [])
        head.set_text(f"{title}, t = {ts[keep[i]]:.2f}")
        return [a for _, lines, scat in artists for a in (lines, scat)] + [head]

    fig.canvas.draw()  # lay out once (labels inside the figure), then freeze the layout for every frame
    fig.set_layout_engine("none")
    anim = FuncAnimation(fig, update, frames=len(keep), interval=interval, blit=False)
    plt.close(fig)
    return anim


# matplotlib's JavaScript player (to_jshtml) links Font Awesome 4 from a CDN for its button icons.
# Its buttons get text symbols instead (any font has them), so the page needs nothing from outside.
_FA_LINK = re.compile(r"<link[^>]*font-awesome[^>]*>\s*", re.IGNORECASE | re.DOTALL)
_FA_ICONS = {
    "fa fa-minus": "\u2212",
    "fa fa-fast-backward": "|\u25c0\ufe0e\u25c0\ufe0e",
    "fa fa-step-backward": "|\u25c0\ufe0e",
    "fa fa-play fa-flip-horizontal": "\u25c0\ufe0e",
    "fa fa-pause": "\u275a\u275a",
    "fa fa-play": "\u25b6\ufe0e",
    "fa fa-step-forward": "\u25b6\ufe0e|",
    "fa fa-fast-forward": "\u25b6\ufe0e\u25b6\ufe0e|",
    "fa fa-plus": "+",
}
_FA_ICON = re.compile(r'<i class="(fa [^"]*)"></i>')


def animation_html(anim: FuncAnimation, default_mode: str = "loop", dpi: float = 100.0) -> str:
    """The animation as self-contained HTML (frames embedded as PNGs), loading nothing from outside.

    matplotlib's ``to_jshtml`` player, with its Font Awesome link (a CDN) removed and its icon
    buttons given text symbols; the frame image is limited to the width of the page's column.
    Frames are drawn at ``dpi`` (recorded in the image's ``data-dpi`` attribute, since the
    embedded PNGs carry no resolution chunk); the pixels per point on screen do not depend on it
    once the frame is wider than the column.

    Raises:
        ValueError: ``default_mode`` not one of "loop", "once", "reflect", or an icon this function
            does not know (a changed matplotlib template).
    """
    if default_mode not in ("loop", "once", "reflect"):
        raise ValueError(f"default_mode must be 'loop', 'once' or 'reflect'; got {default_mode!r}")
    if not dpi > 0:
        raise ValueError(f"dpi must be > 0; got {dpi}")
    with plt.rc_context({"savefig.dpi": dpi}):
        html = _FA_LINK.sub("", anim.to_jshtml(default_mode=default_mode))

    def icon(match: re.Match) -> str:
        if match.group(1) not in _FA_ICONS:
            raise ValueError(f"unknown Font Awesome icon in matplotlib's player: {match.group(1)!r}")
        return f'<span class="anim-icon">{_FA_ICONS[match.group(1)]}</span>'

    html = _FA_ICON.sub(icon, html)
    return html.replace(
        '<img id="_anim_img', f'<img style="max-width: 100%; height: auto;" data-dpi="{dpi:g}" id="_anim_img'
    )


def show_animation(anim: FuncAnimation, default_mode: str = "loop", dpi: float = 100.0):
    """Display an animation in a notebook without a CDN: ``IPython.display.HTML`` of :func:`animation_html`."""
    from IPython.display import HTML

    return HTML(animation_html(anim, default_mode=default_mode, dpi=dpi))


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
    check_int(pad, "pad", low=0)
    b, _, h, w = images.shape
    rows = -(-b // nrow)
    out = np.full((rows * (h + pad) - pad, nrow * (w + pad) - pad), pad_value, dtype=np.float64)
    arr = images.detach().to("cpu", torch.float64).numpy()[:, 0]
    for k in range(b):
        r, c = divmod(k, nrow)
        out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = arr[k]
    return out
