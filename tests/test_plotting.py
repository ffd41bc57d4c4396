"""fmlib.plotting: figures fit the column, colour bars are labelled, diverging scales are centred on zero,
limits contain the data, and animations load nothing from outside the page."""

import base64
import re
import struct

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from fmlib import plotting  # noqa: E402
from fmlib.plotting import MAX_FIGURE_WIDTH  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def moons_traj(gen):
    """A straight-line trajectory (T = 12, B = 60) from noise to points of a wide ellipse (x up to ~5)."""
    x0 = torch.randn(60, 2, generator=gen)
    angle = torch.rand(60, generator=gen) * 2 * torch.pi
    x1 = torch.stack([5 * torch.cos(angle), 1.5 * torch.sin(angle)], dim=1)
    t = torch.linspace(0, 1, 12)[:, None, None]
    return (1 - t) * x0 + t * x1, x1


def _colorbar_labels(fig):
    return [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]


def _contains(ax, points):
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    p = np.asarray(points).reshape(-1, 2)
    return bool((p[:, 0] >= x0).all() and (p[:, 0] <= x1).all() and (p[:, 1] >= y0).all() and (p[:, 1] <= y1).all())


def test_use_book_style_sets_readable_defaults():
    plotting.use_book_style()
    assert plt.rcParams["font.size"] >= 10 and plt.rcParams["legend.fontsize"] >= 9
    assert plt.rcParams["figure.figsize"][0] <= MAX_FIGURE_WIDTH
    # pixel density at the column: a MAX_FIGURE_WIDTH figure shown at 690 px gives >= 1 px per point
    assert 690 / (72 * MAX_FIGURE_WIDTH) >= 1.0


def test_data_extent_contains_all_points_with_margin():
    pts = np.array([[-1.0, 2.0], [3.0, -4.0], [0.0, 0.0]])
    xmin, xmax, ymin, ymax = plotting.data_extent(pts, margin=0.1)
    pad = 0.1 * 6.0  # 10 % of the larger span (y: 6)
    assert (xmin, xmax, ymin, ymax) == pytest.approx((-1 - pad, 3 + pad, -4 - pad, 2 + pad))
    with pytest.raises(ValueError, match="non-finite"):
        plotting.data_extent(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="shape"):
        plotting.data_extent(np.zeros((4, 3)))
    with pytest.raises(TypeError, match="points"):
        plotting.data_extent([[0.0, 1.0]])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7])
def test_panel_grid_fits_the_column(n):
    fig, axes = plotting.panel_grid(n)
    assert len(axes) == n and len(fig.axes) == n
    assert fig.get_size_inches()[0] <= MAX_FIGURE_WIDTH
    cols = {round(ax.get_position().x0, 3) for ax in axes}
    assert len(cols) <= 3


def test_panel_grid_rejects_wide_layouts():
    with pytest.raises(ValueError, match="ncols"):
        plotting.panel_grid(4, ncols=4)
    with pytest.raises(ValueError, match="width"):
        plotting.panel_grid(2, width=12)


def test_plot_samples_beside_data_contains_data_and_samples(moons_traj):
    _, data = moons_traj
    samples = {"euler": data + 0.2, "rk4": data - 0.1}
    fig, axes = plotting.plot_samples_beside_data(samples, data)
    assert len(axes) == 3 and fig.get_size_inches()[0] <= MAX_FIGURE_WIDTH
    for ax in axes:
        assert _contains(ax, data.numpy())
    assert _contains(axes[1], (data + 0.2).numpy()) and _contains(axes[2], (data - 0.1).numpy())
    assert len({(ax.get_xlim(), ax.get_ylim()) for ax in axes}) == 1


def test_loglog_slope_recovers_the_order():
    n = np.array([4.0, 8.0, 16.0, 32.0])
    assert plotting.loglog_slope(n, 0.7 * n**-4) == pytest.approx(-4.0)
    with pytest.raises(ValueError, match="equal length"):
        plotting.loglog_slope([1, 2, 3], [1, 2])


def test_start_colors_follow_the_starting_angle():
    x0 = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [1.0, 0.01]])
    colors = plotting.start_colors(x0)
    assert colors.shape == (5, 4)
    assert np.allclose(colors[0], colors[4], atol=0.05)  # neighbours in angle share a colour
    assert not np.allclose(colors[0], colors[2], atol=0.2)  # opposite sides differ


def test_plot_flow_paths_panels_contain_the_paths_and_target(moons_traj):
    traj, target = moons_traj
    axes = plotting.plot_flow_paths({"a": traj, "b": 0.5 * traj}, target=target)
    assert [ax.get_title() for ax in axes] == ["a", "b"]
    for ax in axes:
        assert _contains(ax, traj.numpy()) and _contains(ax, target.numpy())
    assert axes[0].figure.get_size_inches()[0] <= MAX_FIGURE_WIDTH


def test_animate_flow_default_extent_contains_data_and_target(moons_traj):
    traj, target = moons_traj
    anim = plotting.animate_flow(traj, target=target, frames=5)
    fig = anim._fig
    (ax,) = fig.axes
    assert _contains(ax, traj.numpy()) and _contains(ax, target.numpy())
    assert ax.get_xlim()[1] > 5.0  # the old fixed +-3 box would cut the target off
    assert fig.get_size_inches()[0] <= MAX_FIGURE_WIDTH


def test_animate_flow_colours_by_start_and_draws_trails(moons_traj):
    traj, target = moons_traj
    anim = plotting.animate_flow(traj, target=target, frames=12, trail=3)
    ax = anim._fig.axes[0]
    particles = ax.collections[-1]
    assert np.allclose(particles.get_facecolors(), plotting.start_colors(traj[0]))
    anim._func(5)
    assert np.allclose(particles.get_offsets(), traj[5].numpy())
    trails = [c for c in ax.collections if c.__class__.__name__ == "LineCollection"][0]
    segments = trails.get_segments()
    assert len(segments) == traj.shape[1] and len(segments[0]) == 4  # states 2, 3, 4, 5
    assert np.allclose(segments[0], traj[2:6, 0].numpy())
    target_dots = ax.collections[0]
    assert len(target_dots.get_offsets()) == len(target)


def test_animate_flow_side_by_side_panels_and_labels_inside(moons_traj):
    traj, target = moons_traj
    anim = plotting.animate_flow({"conditional": traj, "marginal": 0.8 * traj}, target=target, frames=4)
    fig = anim._fig
    axes = [ax for ax in fig.axes]
    assert [ax.get_title() for ax in axes] == ["conditional", "marginal"]
    assert fig.get_size_inches()[0] <= MAX_FIGURE_WIDTH
    assert axes[0].get_xlim() == axes[1].get_xlim()  # one shared box
    anim._func(2)
    canvas = FigureCanvasAgg(fig)  # the closed figure has no drawing canvas of its own
    canvas.draw()
    drawn = fig.get_tightbbox(canvas.get_renderer())  # inches: everything drawn, labels included
    width, height = fig.get_size_inches()
    assert drawn.x0 >= 0 and drawn.y0 >= 0 and drawn.x1 <= width and drawn.y1 <= height  # nothing clipped
    with pytest.raises(ValueError, match="same number of states"):
        plotting.animate_flow({"a": traj, "b": traj[:5]})


def test_animate_flow_rejects_bad_input(moons_traj):
    traj, _ = moons_traj
    with pytest.raises(ValueError, match=r"\(T, B, 2\)"):
        plotting.animate_flow(traj[0])
    with pytest.raises(TypeError, match="traj"):
        plotting.animate_flow([[0.0, 1.0]])
    with pytest.raises(ValueError, match="times"):
        plotting.animate_flow(traj, times=np.linspace(0, 1, 5))


def test_animation_html_needs_no_cdn(moons_traj):
    traj, target = moons_traj
    anim = plotting.animate_flow({"a": traj, "b": traj}, target=target, frames=3)
    html = plotting.animation_html(anim)
    assert not re.search(r"https?://", html)  # nothing outside the page: no CDN link
    assert "font-awesome" not in html and 'class="fa ' not in html
    assert html.count("anim-icon") == 9  # every button has a visible symbol
    assert "max-width: 100%" in html
    # the frames are embedded PNGs; their dpi gives >= 1 px per point at the column width
    frame = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    png = base64.b64decode(frame.group(1))
    width = struct.unpack(">I", png[16:20])[0]
    dpi = float(re.search(r'data-dpi="([0-9.]+)"', html).group(1))  # recorded: the frames carry no pHYs
    assert width == round(anim._fig.get_size_inches()[0] * dpi)
    shown = min(width, 690)
    assert dpi / 72 * shown / width >= 1.0
    with pytest.raises(ValueError, match="default_mode"):
        plotting.animation_html(anim, default_mode="bounce")


def test_show_animation_returns_ipython_html(moons_traj):
    from IPython.display import HTML

    traj, _ = moons_traj
    out = plotting.show_animation(plotting.animate_flow(traj, frames=2))
    assert isinstance(out, HTML) and "<script" in out.data


def test_plot_trajectories_legend_off_the_data(gen):
    traj = torch.randn(5, 30, 2, generator=gen)
    ax = plotting.plot_trajectories(traj, title="paths")
    ax.figure.canvas.draw()
    assert ax.get_legend().get_window_extent().y0 >= ax.get_window_extent().y1 - 1


def _luminance(rgba):
    # relative luminance (WCAG) of sRGB colours, shape (..., 4) -> (...)
    c = np.asarray(rgba)[..., :3]
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return lin @ np.array([0.2126, 0.7152, 0.0722])


def test_speed_colour_map_is_visible_on_white_at_every_speed():
    # contrast ratio against white (1.05 / (L + 0.05)) at least 2 everywhere; plasma's own light end fails
    lum = _luminance(plotting.SPEED_CMAP(np.linspace(0, 1, 256)))
    assert (1.05 / (lum + 0.05)).min() > 2.0
    assert 1.05 / (_luminance(plt.get_cmap("plasma")(1.0)) + 0.05) < 1.5


def test_plot_vector_field_colours_by_speed_over_a_grey_density():
    def v(x, t):  # a rotation scaled by 1 + t: speed (1 + t) |x|
        return (1 + t[:, None]) * torch.stack([-x[:, 1], x[:, 0]], dim=1)

    def density(x, t):
        return torch.exp(-(x**2).sum(1) / 2)

    ax = plotting.plot_vector_field(v, 0.5, n=5, density=density, points=torch.zeros(3, 2))
    q = ax.collections[-1]
    pts, _, _ = plotting.grid_points((-3, 3, -3, 3), 5)
    np.testing.assert_allclose(q.get_array(), 1.5 * pts.norm(dim=1).numpy(), rtol=1e-6)
    assert q.norm.vmin == 0.0 and q.norm.vmax == pytest.approx(1.5 * 3 * np.sqrt(2), rel=1e-6)
    background = ax.images[-1]
    assert background.get_zorder() < q.get_zorder()
    assert _luminance(background.cmap(1.0)) > 0.3  # the densest region stays light grey
    assert _colorbar_labels(ax.figure) == ["speed $|u_t(x)|$"]
    with pytest.raises(ValueError, match="label"):
        plotting.plot_vector_field(v, 0.5, label="")
    with pytest.raises(ValueError, match="velocities"):
        plotting.plot_vector_field(lambda x, t: x[:, 0], 0.5)


def test_plot_vector_fields_share_one_scale_and_one_labelled_colour_bar():
    def v(x, t):
        return (1 + t[:, None]) * x

    fig, axes = plotting.plot_vector_fields({f"t = {t}": (v, t) for t in (0.0, 0.5, 1.0)}, label="speed", n=7)
    assert fig.get_size_inches()[0] <= MAX_FIGURE_WIDTH and len(axes) == 3
    top = 2 * 3 * np.sqrt(2)  # the fastest arrow: t = 1 at a corner
    for ax in axes:
        q = ax.collections[-1]
        assert (q.norm.vmin, q.norm.vmax) == (0.0, pytest.approx(top))
    assert _colorbar_labels(fig) == ["speed"]  # exactly one colour bar
    _, axes = plotting.plot_vector_fields({"a": (v, 0.0), "b": (v, 1.0)}, label="speed", n=7, log=True)
    assert isinstance(axes[0].collections[-1].norm, LogNorm)
    with pytest.raises(ValueError, match="non-empty"):
        plotting.plot_vector_fields({}, label="speed")
