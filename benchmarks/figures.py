"""The figures of the benchmarks, drawn from their result JSON: ``benchmarks/compare_2d.py`` saves them as PNGs and
``book/benchmarks.ipynb`` shows them, both through these functions.

Each function takes a loaded result (``benchmarks.harness.load``) and returns a matplotlib Figure in the book's
style (:func:`fmlib.plotting.use_book_style`): at most ``fmlib.plotting.MAX_FIGURE_WIDTH`` inches wide, at most three
panels per row, legends outside the data, one colour and one marker per library.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MultipleLocator

from fmlib.plotting import MAX_FIGURE_WIDTH, use_book_style

TASK_LABELS = {
    "gauss_to_8gaussians": "N(0, I) → 8 Gaussians",
    "gauss_to_moons": "N(0, I) → moons",
    "gauss_to_s_curve": "N(0, I) → S-curve",
    "8gaussians_to_moons": "8 Gaussians → moons",
}
LIBRARY_STYLE = {  # colour, marker
    "fmlib": ("tab:blue", "o"),
    "torchcfm": ("tab:orange", "s"),
    "flow_matching": ("tab:green", "^"),
}
COUPLING_LABELS = {"independent": "independent", "ot": "OT"}


def use_style() -> None:
    """The book's figure style (the benchmark scripts call it before saving PNGs)."""
    use_book_style()


def _variant(result: dict, name: str) -> tuple[str, str]:
    run = result["runs"][0]["variants"][name]
    return run["library"], run["coupling"]


def time_ratios(result: dict) -> Figure:
    """Horizontal bars: fmlib's time over each other library's, training and sampling, mean ± sd over seeds."""
    s = result["summary"]
    labels, means, sds, colours = [], [], [], []
    for coupling, d in s["train_step_ratio"].items():
        for key, val in d.items():
            labels.append(f"training, {COUPLING_LABELS[coupling]} pairs: {key}")
            means.append(val["all_tasks"]["mean"])
            sds.append(val["all_tasks"]["sd"])
            colours.append("tab:blue" if coupling == "independent" else "tab:purple")
    for nfe, d in s["sampling_ratio"].items():
        for key, val in d.items():
            labels.append(f"sampling, {nfe} Euler steps: {key}")
            means.append(val["mean"])
            sds.append(val["sd"])
            colours.append("tab:gray")
    fig, ax = plt.subplots(figsize=(min(8.0, MAX_FIGURE_WIDTH), 0.45 * len(labels) + 1.4))
    y = np.arange(len(labels))[::-1]
    ax.barh(y, means, xerr=sds, capsize=3, color=colours)
    ax.axvline(1.0, color="k", lw=0.8, ls="--")
    ax.set_yticks(y, labels)
    ax.set_xlabel("time ratio, fmlib / other (below 1: fmlib is faster)")
    ax.set_xlim(0, max(1.2, max(m + e for m, e in zip(means, sds)) * 1.1))
    ax.set_title(f"Time ratios, mean ± sd over {len(result['config']['seeds'])} seeds")
    return fig


def w2_against_nfe(result: dict) -> Figure:
    """W2 to held-out data against the number of Euler steps: one panel per task (two per row), one colour and marker
    per library, one line style per coupling and training length, the finite-sample floor as a grey band."""
    cfg, s = result["config"], result["summary"]
    tasks = cfg["tasks"]
    ncols = min(2, len(tasks))
    nrows = -(-len(tasks) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(MAX_FIGURE_WIDTH, 3.3 * nrows + 0.9), squeeze=False, sharex=True)
    nfes = np.array(cfg["nfe"], dtype=float)
    shift = {"fmlib": 0.92, "torchcfm": 1.0, "flow_matching": 1.08}  # curves that coincide stay visible
    s_ot = str(cfg["steps_ot"])
    regimes = {}  # line style -> label
    for ax, t in zip(axes.flat, tasks):
        for v, per_step in s["w2"][t].items():
            lib, coupling = _variant(result, v)
            colour, marker = LIBRARY_STYLE[lib]
            for step, d in per_step.items():
                ls = "-" if coupling == "ot" else ("--" if step == s_ot else ":")
                regimes[ls] = f"{COUPLING_LABELS[coupling]} pairs, {int(step):,} training steps"
                ax.errorbar(
                    nfes * shift[lib],
                    [d[str(n)]["mean"] for n in cfg["nfe"]],
                    yerr=[d[str(n)]["sd"] for n in cfg["nfe"]],
                    color=colour,
                    marker=marker,
                    ls=ls,
                    ms=4,
                    lw=1.2,
                    capsize=2,
                )
        fl = s["floor_w2"][t]
        ax.axhspan(fl["mean"] - fl["sd"], fl["mean"] + fl["sd"], color="0.85", zorder=0)
        ax.axhline(fl["mean"], color="k", lw=0.8)
        ax.set(xscale="log", yscale="log", title=TASK_LABELS.get(t, t))
        ax.set_xticks(nfes, [str(n) for n in cfg["nfe"]])
        ax.minorticks_off()
    for ax in axes[-1]:
        ax.set_xlabel("Euler steps (NFE)")
    for ax in axes[:, 0]:
        ax.set_ylabel("W2 to held-out data")
    for ax in axes.flat[len(tasks) :]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=c, marker=m, ls="none", ms=6, label=lib) for lib, (c, m) in LIBRARY_STYLE.items()]
    handles += [Line2D([], [], color="k", ls=ls, lw=1.2, label=label) for ls, label in sorted(regimes.items())]
    handles.append(plt.Rectangle((0, 0), 1, 1, color="0.85", ec="k", lw=0.8, label="finite-sample floor (± sd)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=3, frameon=False)
    fig.suptitle(f"W2 against Euler steps, mean ± sd over {len(cfg['seeds'])} seeds")
    return fig


def samples(result: dict) -> Figure | None:
    """fmlib's samples (100 Euler steps) over the held-out data (grey), one row per task, for the first seed: after
    independent and OT training of equal length, and after the longer independent training (None when the result
    stores no samples)."""
    cfg = result["config"]
    runs = [r for r in result["runs"] if "samples" in r]
    if not runs:
        return None
    s_ot, s_ind = str(cfg["steps_ot"]), str(cfg["steps_independent"])
    columns = [
        (f"independent pairs,\n{int(s_ot):,} training steps", "fmlib_independent", s_ot),
        (f"OT pairs,\n{int(s_ot):,} training steps", "fmlib_ot", s_ot),
        (f"independent pairs,\n{int(s_ind):,} training steps", "fmlib_independent", s_ind),
    ]
    size = min(2.6, (MAX_FIGURE_WIDTH - 0.6) / len(columns))
    fig, axes = plt.subplots(
        len(runs), len(columns), figsize=(size * len(columns) + 0.6, size * len(runs) + 1.0), squeeze=False
    )
    for i, r in enumerate(runs):
        data = np.array(r["samples"]["x1_eval"])
        points = [np.array(r["samples"][v][step]["100"]) for _, v, step in columns]
        lim = float(np.abs(np.concatenate([data, *points])).max()) * 1.05
        for j, (ax, pts, (title, v, _)) in enumerate(zip(axes[i], points, columns)):
            ax.scatter(data[:, 0], data[:, 1], s=4, color="0.75", lw=0)
            ax.scatter(pts[:, 0], pts[:, 1], s=4, color=LIBRARY_STYLE[_variant(result, v)[0]][0], lw=0)
            ax.set(xticks=[], yticks=[], aspect="equal", xlim=(-lim, lim), ylim=(-lim, lim))
            if i == 0:
                ax.set_title(title, fontsize=11)
            if j == 0:
                ax.set_ylabel(TASK_LABELS.get(r["task"], r["task"]), fontsize=10)
    handles = [
        Line2D([], [], color="0.75", marker="o", ls="none", label="held-out data"),
        Line2D([], [], color=LIBRARY_STYLE["fmlib"][0], marker="o", ls="none", label="fmlib, 100 Euler steps"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False)
    n = len(runs[0]["samples"]["x1_eval"])
    fig.suptitle(f"Samples of the trained models (seed {runs[0]['seed']}, {n} points)")
    return fig


COMPARE_2D = {"time_ratios": time_ratios, "w2": w2_against_nfe, "samples": samples}
"""The figures of benchmarks/compare_2d.py, by the name of their PNG (``compare_2d_<name>.png``)."""


# ------------------------------------------------------------------------------------------------ couplings
_BLOCK_MARKERS = ("<", ">", "p", "h", "8")
_SINKHORN_MARKERS = ("*", "X", "P", "d")
_FIXED_COUPLINGS = {  # label, colour, marker
    "independent": ("independent", "0.45", "o"),
    "exact": ("exact OT (fmlib)", "k", "s"),
    "exact_prefetch": ("exact OT, prefetched", "tab:purple", "D"),
    "scipy_linear_sum_assignment": ("SciPy assignment", "tab:brown", "v"),
    "pot_emd": ("POT network simplex", "tab:pink", "^"),
}


def coupling_style(name: str, config: dict) -> tuple[str, str, str]:
    """(label, colour, marker) of a coupling of ``benchmarks/couplings.py``: one marker per coupling, blues for
    sub-batch OT (darker for larger blocks), oranges for Sinkhorn (darker for smaller regularisation)."""
    if name in _FIXED_COUPLINGS:
        return _FIXED_COUPLINGS[name]
    kind, _, value = name.partition("_")
    if kind == "block":
        sizes = sorted(set(config["blocks"]) | {64, 128})
        i = sizes.index(int(value))
        return f"OT in blocks of {value}", plt.cm.Blues(0.45 + 0.5 * i / max(1, len(sizes) - 1)), _BLOCK_MARKERS[i]
    if kind == "sinkhorn":
        regs = sorted(float(r) for r in config["regs"])
        i = regs.index(float(value))
        colour = plt.cm.Oranges(0.95 - 0.45 * i / max(1, len(regs) - 1))
        return f"Sinkhorn, reg {value}", colour, _SINKHORN_MARKERS[i]
    raise ValueError(f"unknown coupling {name!r}")


def _coupling_key(name: str) -> tuple[str, float]:
    kind, _, value = name.partition("_")
    return kind, float(value)


def coupling_cost(result: dict) -> Figure:
    """Left: seconds per coupling of a batch against the batch size B (log-log). Right: the cost-against-quality
    curve at the training batch size: the training step's time relative to the independent step (x) against the
    mean squared pair length relative to the exact assignment's (y), with the 2x step target as a dashed line."""
    cfg = result["config"]
    fig, (ax_t, ax_c) = plt.subplots(1, 2, figsize=(MAX_FIGURE_WIDTH, 4.2))
    at = result["assignment_time"]
    sizes = [int(n) for n in at]
    names = list(dict.fromkeys(k for row in at.values() for k in row))
    handles = {}
    for name in names:
        label, colour, marker = coupling_style(name, cfg)
        pts = [(n, at[str(n)][name]) for n in sizes if name in at[str(n)]]
        ax_t.plot(*zip(*pts), color=colour, marker=marker, ms=5, lw=1.2)
        handles[name] = Line2D([], [], color=colour, marker=marker, ms=6, lw=1.2, label=label)
    ax_t.set(xscale="log", yscale="log", xlabel="batch size B", ylabel="seconds per coupling")
    ax_t.set_xticks(sizes, [str(n) for n in sizes])
    ax_t.minorticks_off()
    ax_t.set_title("Time of one coupling")

    st, tc = result["step_time"], result["transport_cost"]
    ratio = st["ratio_to_independent"]
    for name, r in ratio.items():
        cost = tc["exact" if name == "exact_prefetch" else name]
        label, colour, marker = coupling_style(name, cfg)
        ax_c.errorbar(r, cost["mean"], yerr=cost["sd"], color=colour, marker=marker, ms=7, capsize=2, ls="none")
        handles.setdefault(name, Line2D([], [], color=colour, marker=marker, ms=6, ls="none", label=label))
    ax_c.axvline(2.0, color="k", lw=0.8, ls="--")
    ax_c.text(2.0, 0.98, " 2x target", transform=ax_c.get_xaxis_transform(), va="top", ha="left", fontsize=9)
    ax_c.set(xscale="log", yscale="log", title=f"Cost against quality, B = {st['batch']}")
    ax_c.set_xlabel("training step time / independent step")
    ax_c.set_ylabel("transport cost / exact OT's (mean ± sd)")
    ax_c.minorticks_off()
    xs = list(ratio.values())
    ax_c.set_xlim(min(xs) / 1.5, max(xs) * 1.5)
    ys = [tc["exact" if n == "exact_prefetch" else n]["mean"] for n in ratio]
    ax_c.set_ylim(0.8, max(ys) * 1.4)
    ticks = [1, 2, 5, 10, 20]
    ax_c.set_xticks([t for t in ticks if min(xs) / 1.5 <= t <= max(xs) * 1.5])
    ax_c.set_xticklabels([f"{t:g}" for t in ticks if min(xs) / 1.5 <= t <= max(xs) * 1.5])
    ax_c.set_yticks([1, 2, 5], ["1", "2", "5"])
    order = [*_FIXED_COUPLINGS, *sorted((k for k in handles if k not in _FIXED_COUPLINGS), key=_coupling_key)]
    fig.legend(handles=[handles[k] for k in order if k in handles], loc="outside lower center", ncol=4, frameon=False)
    return fig


def coupling_training(result: dict) -> Figure:
    """After training at the benchmark's batch size: W2 to held-out data after 1 and 100 Euler steps and the
    normalised path energy, mean ± sd over seeds, one row per coupling (the chosen default marked), three panels."""
    cfg, tr = result["config"], result["training"]
    names = list(tr)
    default = result["default"]["coupling"]
    fig, axes = plt.subplots(1, 3, figsize=(MAX_FIGURE_WIDTH, 0.45 * len(names) + 1.6), sharey=True)
    y = np.arange(len(names))[::-1]
    for ax, (key, title) in zip(
        axes, [("w2_1", "W2, 1 Euler step"), ("w2_100", "W2, 100 Euler steps"), ("npe", "NPE")]
    ):
        for yi, name in zip(y, names):
            _, colour, marker = coupling_style(name, cfg)
            d = tr[name][key]
            ax.errorbar(d["mean"], yi, xerr=d["sd"], color=colour, marker=marker, ms=7, capsize=3, ls="none")
        lo = min(tr[n][key]["mean"] - tr[n][key]["sd"] for n in names)
        hi = max(tr[n][key]["mean"] + tr[n][key]["sd"] for n in names)
        ax.set_xlim(max(0.0, lo - 0.1 * (hi - lo)), hi + 0.1 * (hi - lo))
        ax.set_title(title)
        ax.set_xlabel("mean ± sd over seeds")
    labels = [coupling_style(n, cfg)[0] + (" (default)" if n == default else "") for n in names]
    axes[0].set_yticks(y, labels)
    axes[0].set_ylim(-0.6, len(names) - 0.4)
    fig.suptitle(f"After {cfg['steps']} training steps at B = {cfg['batch']}, {len(cfg['seeds'])} seeds")
    return fig


COUPLINGS = {"cost": coupling_cost, "training": coupling_training}
"""The figures of benchmarks/couplings.py, by name."""


# ------------------------------------------------------------------------------------------------ training recipes
_RECIPE_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")


def _recipe_styles(result: dict) -> dict[str, tuple[str, str, str]]:
    """recipe -> (label, colour, marker), in the order of the configuration, then the other libraries' runs."""
    labels = result["config"].get("recipe_labels", {})
    names = [*result["config"]["recipes"], *result["config"].get("library_runs", [])]
    return {
        r: (labels.get(r, r), plt.cm.tab10(i % 10), _RECIPE_MARKERS[i % len(_RECIPE_MARKERS)])
        for i, r in enumerate(names)
    }


def recipe_quality(result: dict) -> Figure:
    """W2 / floor after training (100 Euler steps), mean ± sd over seeds: one panel per data set, one row per
    recipe, the floor (1) and the 1.5 target as vertical lines."""
    s, styles = result["summary"], _recipe_styles(result)
    tasks = list(s)
    recipes = [r for r in styles if any(r in s[t] for t in tasks)]
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(MAX_FIGURE_WIDTH, 0.42 * len(recipes) + 1.7), sharey=True, squeeze=False
    )
    y = np.arange(len(recipes))[::-1]
    for ax, t in zip(axes[0], tasks):
        hi = 1.6
        for yi, r in zip(y, recipes):
            if r not in s[t]:
                continue
            _, colour, marker = styles[r]
            d = s[t][r]["w2_over_floor"]
            ax.errorbar(d["mean"], yi, xerr=d["sd"], color=colour, marker=marker, ms=7, capsize=3, ls="none")
            hi = max(hi, d["mean"] + d["sd"])
        ax.axvline(1.0, color="k", lw=0.8)
        ax.axvline(1.5, color="k", lw=0.8, ls="--")
        ax.set_xlim(0, hi * 1.08)
        ax.xaxis.set_major_locator(MultipleLocator(0.5))
        ax.set_title(TASK_LABELS.get(f"gauss_to_{t}", t))
    fig.supxlabel("W2 / floor (solid: the floor, dashed: 1.5 x floor)")
    axes[0, 0].set_yticks(y, [styles[r][0] for r in recipes])
    axes[0, 0].set_ylim(-0.6, len(recipes) - 0.4)
    cfg = result["config"]
    fig.suptitle(
        f"{cfg['steps']:,} steps (equal wall time: more), batch {cfg['batch_size']}, {len(cfg['seeds'])} seeds, "
        f"{cfg['euler_steps']} Euler steps"
    )
    return fig


def recipe_curves(result: dict) -> Figure:
    """W2 / floor during training (mean over seeds; EMA weights where EMA is on), one panel per data set, one
    colour and marker per fmlib recipe, legend below the panels."""
    s, styles = result["summary"], _recipe_styles(result)
    tasks = list(s)
    fig, axes = plt.subplots(1, len(tasks), figsize=(MAX_FIGURE_WIDTH, 3.6), squeeze=False, sharey=True)
    shown = {}
    curves = [d["curve_w2_over_floor_mean"] for t in tasks for d in s[t].values() if d["curve_w2_over_floor_mean"]]
    top = 1.15 * max(max(c) for c in curves)
    ticks = [v for v in (1, 1.5, 2, 3, 5, 10, 20, 50) if v <= top]
    for ax, t in zip(axes[0], tasks):
        for r, (label, colour, marker) in styles.items():
            if r not in s[t] or not s[t][r]["curve_steps"]:  # (the other libraries' runs have no curve)
                continue
            d = s[t][r]
            ax.plot(d["curve_steps"], d["curve_w2_over_floor_mean"], color=colour, marker=marker, ms=5, lw=1.2)
            shown[r] = Line2D([], [], color=colour, marker=marker, ms=6, lw=1.2, label=label)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(1.5, color="k", lw=0.8, ls="--")
        ax.set(yscale="log", xlabel="training step", title=TASK_LABELS.get(f"gauss_to_{t}", t))
        ax.set_ylim(0.8, top)
        ax.set_yticks(ticks, [f"{v:g}" for v in ticks])
        ax.minorticks_off()
    axes[0, 0].set_ylabel("W2 / floor, mean over seeds")
    fig.legend(handles=list(shown.values()), loc="outside lower center", ncol=2, frameon=False)
    return fig


TRAINING_RECIPES = {"quality": recipe_quality, "curves": recipe_curves}
"""The figures of benchmarks/training_recipes.py, by name."""
