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
