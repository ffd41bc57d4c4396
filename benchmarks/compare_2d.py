"""Side-by-side 2D benchmark: fmlib against torchcfm (Tong et al.) and Meta's flow_matching.

All three libraries train the *same* network (``fmlib.MLP(2, hidden=64, depth=3)``, one initial state dict per
seed loaded into a fresh copy for every library) on the *same* minibatches (data rows, source draws x0 and times t
are drawn once per seed and fed to every library), with the same optimiser (Adam), learning rate, batch size (512)
and number of steps, on the same path (straight line, sigma = 0). How each library is called is in
``benchmarks/adapters.py``: its loss and its sampler, written the way its documentation does.

The losses differ by a constant factor (fmlib sums over the 2 features, the others average): Adam is invariant to
it up to its epsilon. Within each coupling the libraries are trained in interleaved blocks of steps (round-robin,
order rotated every block), so a change in the load of the shared machine hits all of them alike; each block is
timed with ``time.perf_counter`` after a warm-up, and the step-time ratios come from the same run.

Sampling: each library's own fixed-step Euler sampler, timed on one common trained model at equal NFE (checked
with fmlib.NFECounter). Quality: exact W2 (fmlib.wasserstein2) between n_eval generated points and n_eval held-out
data points at 1, 2, 4, 8 and 100 Euler steps; NPE (Tong et al. 2024) with 100 Euler steps; the finite-sample
floor: the mean W2 between the held-out points and ``floor_draws`` further independent draws of the same size
(``harness.w2_floor``), what a perfect sampler scores.

Usage (from the repository root):
    python benchmarks/compare_2d.py    # the full benchmark: ~15 min on 2 idle cores (35 min beside other jobs)
    python benchmarks/compare_2d.py --smoke --out /tmp/smoke.json --figures-dir ""   # < 60 s
    python benchmarks/compare_2d.py --figures-from benchmarks/results/compare_2d.json   # redraw the figures
"""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as `python benchmarks/compare_2d.py`: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fmlib  # noqa: E402
from benchmarks import adapters, harness  # noqa: E402
from benchmarks.adapters import VARIANTS  # noqa: E402

# name -> (source data set or None for N(0, I), target data set); names as in fmlib.DATASETS
TASKS = {
    "gauss_to_8gaussians": (None, "8gaussians"),
    "gauss_to_moons": (None, "moons"),
    "gauss_to_s_curve": (None, "s_curve"),
    "8gaussians_to_moons": ("8gaussians", "moons"),
}
SAMPLERS = adapters.LIBRARIES


@dataclass(frozen=True)
class LongReference:
    """fmlib alone, trained ``steps`` steps with fmlib.train on ``tasks`` (seed ``seed``)."""

    tasks: tuple[str, ...] = ("gauss_to_moons", "gauss_to_s_curve")
    seed: int = 0
    steps: int = 10_000


@dataclass(frozen=True)
class Config:
    """Everything a run of the comparison depends on (the defaults are the full benchmark)."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    tasks: tuple[str, ...] = tuple(TASKS)
    steps_independent: int = 1500
    steps_ot: int = 150
    batch_size: int = 512
    lr: float = 3e-3
    hidden: int = 64
    depth: int = 3
    n_train: int = 20_000
    n_eval: int = 1000
    nfe: tuple[int, ...] = (1, 2, 4, 8, 100)
    npe_steps: int = 100
    block_independent: int = 50
    block_ot: int = 10
    warmup_independent: int = 20
    warmup_ot: int = 2
    sampling_nfe: tuple[int, ...] = (8, 100)
    sampling_repeats: int = 5
    stored_samples: int = 300
    floor_draws: int = 8
    long_reference: LongReference = field(default_factory=LongReference)

    def __post_init__(self):
        unknown = set(self.tasks) - set(TASKS) | set(self.long_reference.tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"tasks must be among {list(TASKS)}, got {sorted(unknown)}")

    @classmethod
    def smoke(cls) -> Config:
        """A tiny run that exercises every library, coupling, metric and figure (well under a minute)."""
        return cls(
            seeds=(0,),
            tasks=("8gaussians_to_moons",),
            steps_independent=20,
            steps_ot=10,
            n_train=2000,
            n_eval=200,
            block_independent=10,
            block_ot=5,
            warmup_independent=2,
            warmup_ot=1,
            sampling_repeats=1,
            stored_samples=50,
            floor_draws=2,
            long_reference=LongReference(tasks=("gauss_to_moons",), seed=0, steps=20),
        )

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """The Config stored in a result's ``config`` (its descriptive entries are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        ref = d.get("long_reference")
        if ref is not None:
            kw["long_reference"] = LongReference(tasks=tuple(ref["tasks"]), seed=ref["seed"], steps=ref["steps"])
        return cls(**kw)


DESCRIPTION = {
    **adapters.DESCRIPTION,
    "model": "fmlib.MLP(2, hidden, depth), one initial state dict per seed shared by all libraries",
    "optimizer": "Adam, constant learning rate",
    "timing": "time.perf_counter around blocks of training steps, libraries interleaved block by block (order "
    "rotated), after warm-up; ratios are fmlib time / other time; 'all_tasks' = per seed, total over the tasks, "
    "then mean and sd over seeds",
    "w2": "fmlib.wasserstein2 (exact) between n_eval generated points and n_eval held-out points",
    "npe": "|PE - W2(x0, x1)^2| / W2(x0, x1)^2, PE = fmlib.path_energy with npe_steps Euler steps "
    "(= fmlib.normalized_path_energy)",
    "floor": "harness.w2_floor: the mean fmlib.wasserstein2 between the n_eval held-out points and floor_draws "
    "further independent draws of n_eval points",
}


# ----------------------------------------------------------------------------------------------- helpers
def draw(name: str | None, n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(n, 2, generator=gen) if name is None else fmlib.sample_data(name, n, generator=gen)


def floor_w2(target: str, x1_eval: torch.Tensor, seed: int, cfg: Config) -> float:
    """The finite-sample W2 floor of ``x1_eval`` (``harness.w2_floor``), its draws from their own generator."""
    gen = torch.Generator().manual_seed(seed + 500)
    return harness.w2_floor(x1_eval, lambda: draw(target, cfg.n_eval, gen), cfg.floor_draws)


def stored(x: torch.Tensor, cfg: Config) -> list:
    """The first ``cfg.stored_samples`` points, rounded to 3 decimals, for the figures."""
    return np.round(x[: cfg.stored_samples].double().numpy(), 3).tolist()


# ----------------------------------------------------------------------------------------------- training
def train_interleaved(cfg, variants, models, losses_fn, batches, pool, steps, block, checkpoints, on_checkpoint):
    """Train each variant's model for ``steps`` steps on identical batches, in round-robin blocks.

    Only the step loop is timed (perf_counter around each block). Returns per-variant total seconds, block
    times and the last losses. ``on_checkpoint(step)`` runs (untimed) after the blocks that end at a checkpoint.
    """
    opts = {v: torch.optim.Adam(models[v].parameters(), lr=cfg.lr) for v in variants}
    clocks = {v: harness.Stopwatch() for v in variants}
    last_losses = {v: [] for v in variants}
    idx, x0s, ts = batches
    order = list(variants)
    for start in range(0, steps, block):
        stop = min(start + block, steps)
        for v in order:
            model, opt, loss_fn, hist = models[v], opts[v], losses_fn[v], last_losses[v]
            with clocks[v]:
                for k in range(start, stop):
                    loss = loss_fn(model, x0s[k], pool[idx[k]], ts[k])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    hist.append(loss.detach())
        order = order[1:] + order[:1]
        if stop in checkpoints:
            on_checkpoint(stop)
    return {
        v: {
            "seconds": clocks[v].seconds,
            "block_seconds": clocks[v].laps,
            "last_loss_mean": float(torch.stack(last_losses[v][-min(50, steps) :]).mean()),
        }
        for v in variants
    }


def evaluate(cfg, library: str, model, x0_eval, x1_eval, w2sq_src, libs) -> tuple[dict, dict]:
    w2, samples = {}, {}
    for nfe in cfg.nfe:
        xs = adapters.sample(library, model, x0_eval, nfe, libs)
        w2[str(nfe)] = fmlib.wasserstein2(xs, x1_eval)
        samples[str(nfe)] = xs
    pe = fmlib.path_energy(model, x0_eval, steps=cfg.npe_steps)
    # = fmlib.normalized_path_energy(model, x0_eval, x1_eval, steps), with W2(x0, x1)^2 computed once per task/seed
    npe = abs(pe - w2sq_src) / w2sq_src
    return {"w2": w2, "npe": npe, "path_energy": pe}, samples


def time_sampling(cfg, model, x0, libs) -> dict:
    """Seconds per sampling call of n_eval points at each NFE, each sampler on the same model, interleaved."""
    out = {}
    for nfe in cfg.sampling_nfe:
        for lib in SAMPLERS:  # warm-up and NFE check
            counter = fmlib.NFECounter(model)
            adapters.sample(lib, counter, x0, nfe, libs)
            if counter.nfe != nfe:
                raise RuntimeError(f"{lib} sampler used {counter.nfe} evaluations for {nfe} Euler steps")
        clocks = {lib: harness.Stopwatch() for lib in SAMPLERS}
        for _ in range(cfg.sampling_repeats):
            for lib in SAMPLERS:
                with clocks[lib]:
                    adapters.sample(lib, model, x0, nfe, libs)
        out[str(nfe)] = {lib: statistics.fmean(c.laps) for lib, c in clocks.items()}
    return out


def run_task_seed(cfg: Config, task: str, seed: int, libs: dict, log) -> dict:
    source, target = TASKS[task]
    gen = torch.Generator().manual_seed(1000 * seed + list(TASKS).index(task))
    pool = draw(target, cfg.n_train, gen)
    src_pool = None if source is None else draw(source, cfg.n_train, gen)
    x1_eval = draw(target, cfg.n_eval, gen)
    x0_eval = draw(source, cfg.n_eval, gen)
    steps_max = max(cfg.steps_independent, cfg.steps_ot)
    b = cfg.batch_size
    idx = torch.randint(0, cfg.n_train, (steps_max, b), generator=gen)
    if src_pool is None:
        x0s = torch.randn(steps_max, b, 2, generator=gen)
    else:
        x0s = src_pool[torch.randint(0, cfg.n_train, (steps_max, b), generator=gen)]
    ts = torch.rand(steps_max, b, generator=gen)
    batches = (idx, x0s, ts)

    eval_clock = harness.Stopwatch()
    with eval_clock:
        floor = floor_w2(target, x1_eval, 1000 * seed + list(TASKS).index(task), cfg)
        w2sq_src = fmlib.wasserstein2(x0_eval, x1_eval) ** 2

    torch.manual_seed(seed)
    init = copy.deepcopy(fmlib.MLP(2, hidden=cfg.hidden, depth=cfg.depth).state_dict())

    def fresh():
        m = fmlib.MLP(2, hidden=cfg.hidden, depth=cfg.depth)
        m.load_state_dict(init)
        return m

    losses_fn = {v: adapters.make_loss(VARIANTS[v], libs) for v in VARIANTS}
    # warm-up of every code path on throwaway copies (not timed, not kept)
    for v, variant in VARIANTS.items():
        m = fresh()
        opt = torch.optim.Adam(m.parameters(), lr=cfg.lr)
        for k in range(cfg.warmup_ot if variant.coupling == "ot" else cfg.warmup_independent):
            loss = losses_fn[v](m, x0s[k], pool[idx[k]], ts[k])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    models = {v: fresh() for v in VARIANTS}
    evals = {v: {} for v in VARIANTS}
    kept = {}
    group: list[str] = []

    def on_checkpoint(step):
        with eval_clock:
            for v in group:
                models[v].eval()
                evals[v][str(step)], samples = evaluate(
                    cfg, VARIANTS[v].library, models[v], x0_eval, x1_eval, w2sq_src, libs
                )
                models[v].train()
                if seed == cfg.seeds[0]:
                    kept.setdefault(v, {})[str(step)] = {"100": stored(samples["100"], cfg)}

    timing = {}
    for coupling, steps, block in (
        ("independent", cfg.steps_independent, cfg.block_independent),
        ("ot", cfg.steps_ot, cfg.block_ot),
    ):
        group = [v for v, variant in VARIANTS.items() if variant.coupling == coupling]
        np.random.seed(seed)  # torchcfm samples its OT pairs with NumPy's global generator
        torch.manual_seed(seed)  # torchcfm draws its (sigma = 0, unused) noise from torch's global generator
        checkpoints = {steps, cfg.steps_ot} if coupling == "independent" else {steps}
        timing.update(
            train_interleaved(cfg, group, models, losses_fn, batches, pool, steps, block, checkpoints, on_checkpoint)
        )
        for v in group:
            timing[v]["steps"] = steps
            timing[v]["ms_per_step"] = 1e3 * timing[v]["seconds"] / steps

    models["fmlib_independent"].eval()
    sampling = time_sampling(cfg, models["fmlib_independent"], x0_eval, libs)
    rec = {
        "task": task,
        "seed": seed,
        "floor_w2": floor,
        "w2_source_data": math.sqrt(w2sq_src),
        "eval_seconds": eval_clock.seconds,
        "sampling_seconds": sampling,
        "variants": {
            v: {"library": VARIANTS[v].library, "coupling": VARIANTS[v].coupling, **timing[v], "evals": evals[v]}
            for v in VARIANTS
        },
    }
    if kept:
        rec["samples"] = {"x1_eval": stored(x1_eval, cfg), **kept}
    log(
        f"{task} seed {seed}: floor {floor:.4f}; "
        + "; ".join(
            f"{v} {timing[v]['ms_per_step']:.1f} ms/step W2@100 {evals[v][str(timing[v]['steps'])]['w2']['100']:.4f}"
            for v in VARIANTS
        )
    )
    return rec


def long_reference(cfg: Config, log) -> dict:
    """fmlib alone, trained longer with fmlib.train (independent coupling): how close to the floor can this
    model get, and is the gap training or integration error (Euler 100 vs Euler 1000 vs RK4 100)?"""
    ref = cfg.long_reference
    out = {}
    for task in ref.tasks:
        source, target = TASKS[task]
        if source is not None:
            raise ValueError(f"the long reference trains from fresh N(0, I) noise; {task!r} has another source")
        gen = torch.Generator().manual_seed(1000 * ref.seed + list(TASKS).index(task))
        pool = draw(target, cfg.n_train, gen)
        x1_eval = draw(target, cfg.n_eval, gen)
        x0_eval = draw(source, cfg.n_eval, gen)
        torch.manual_seed(ref.seed)
        model = fmlib.MLP(2, hidden=cfg.hidden, depth=cfg.depth)
        clock = harness.Stopwatch()
        with clock:
            losses = fmlib.train(
                model,
                fmlib.LinearPath(0.0),
                pool,
                ref.steps,
                recipe=fmlib.Recipe.constant(cfg.lr),  # the recipe of the stored results: plain Adam at a constant rate
                batch_size=cfg.batch_size,
                generator=gen,
                progress=False,
            )
        w2 = {}
        with torch.no_grad():
            for label, steps, method in (
                ("euler_100", 100, "euler"),
                ("euler_1000", 1000, "euler"),
                ("rk4_100", 100, "rk4"),
            ):
                w2[label] = fmlib.wasserstein2(fmlib.integrate(model, x0_eval, steps=steps, method=method), x1_eval)
        floor = floor_w2(target, x1_eval, 1000 * ref.seed + list(TASKS).index(task), cfg)
        out[task] = {
            "seed": ref.seed,
            "steps": ref.steps,
            "train_seconds": clock.seconds,
            "floor_w2": floor,
            "w2": w2,
            "w2_over_floor": {k: v / floor for k, v in w2.items()},
            "last_loss_mean": statistics.fmean(losses[-min(50, len(losses)) :]),
        }
        log(f"long reference {task}: {ref.steps} steps, W2 {w2} floor {floor:.4f}")
    return out


# ----------------------------------------------------------------------------------------------- summary
def summarize(runs: list[dict], cfg: Config) -> dict:
    """Means and standard deviations over the seeds of every measured quantity (see harness.mean_sd)."""
    mean_sd = harness.mean_sd
    seeds, tasks = cfg.seeds, cfg.tasks
    by = {(r["task"], r["seed"]): r for r in runs}

    def seconds(v, s):  # one seed's training time of variant v, total over the tasks
        return sum(by[t, s]["variants"][v]["seconds"] for t in tasks)

    pairs = {
        "independent": [
            ("fmlib_independent", "torchcfm_independent"),
            ("fmlib_independent", "flow_matching_independent"),
        ],
        "ot": [("fmlib_ot", "torchcfm_ot")],
    }
    step_ratio, step_ms = {}, {}
    for coupling, plist in pairs.items():
        step_ratio[coupling] = {}
        for a, b in plist:
            per_task = {
                t: mean_sd([by[t, s]["variants"][a]["seconds"] / by[t, s]["variants"][b]["seconds"] for s in seeds])
                for t in tasks
            }
            step_ratio[coupling][f"fmlib/{VARIANTS[b].library}"] = {
                "all_tasks": mean_sd([seconds(a, s) / seconds(b, s) for s in seeds]),
                "per_task": per_task,
            }
    for v in VARIANTS:
        step_ms[v] = {
            "all_tasks": mean_sd(
                [statistics.fmean(by[t, s]["variants"][v]["ms_per_step"] for t in tasks) for s in seeds]
            ),
            "per_task": {t: mean_sd([by[t, s]["variants"][v]["ms_per_step"] for s in seeds]) for t in tasks},
        }
    sampling_ratio, sampling_ms = {}, {}
    for nfe in map(str, cfg.sampling_nfe):

        def call_seconds(lib, s, nfe=nfe):
            return sum(by[t, s]["sampling_seconds"][nfe][lib] for t in tasks)

        sampling_ratio[nfe] = {
            f"fmlib/{other}": mean_sd([call_seconds("fmlib", s) / call_seconds(other, s) for s in seeds])
            for other in ("torchcfm", "flow_matching")
        }
        sampling_ms[nfe] = {
            lib: mean_sd([1e3 * statistics.fmean(by[t, s]["sampling_seconds"][nfe][lib] for t in tasks) for s in seeds])
            for lib in SAMPLERS
        }
    w2, npe, floor = {}, {}, {}
    for t in tasks:
        floor[t] = mean_sd([by[t, s]["floor_w2"] for s in seeds])
        w2[t], npe[t] = {}, {}
        for v in VARIANTS:
            w2[t][v], npe[t][v] = {}, {}
            for step in by[t, seeds[0]]["variants"][v]["evals"]:
                ev = [by[t, s]["variants"][v]["evals"][step] for s in seeds]
                w2[t][v][step] = {nfe: mean_sd([e["w2"][nfe] for e in ev]) for nfe in map(str, cfg.nfe)}
                npe[t][v][step] = mean_sd([e["npe"] for e in ev])
    s_ind, s_ot = str(cfg.steps_independent), str(cfg.steps_ot)

    def w2_at(t, s, v, step, nfe="100"):
        return by[t, s]["variants"][v]["evals"][step]["w2"][nfe]

    return {
        "train_step_ratio": step_ratio,
        "train_ms_per_step": step_ms,
        "sampling_ratio": sampling_ratio,
        "sampling_ms_per_call": sampling_ms,
        "w2": w2,
        "npe": npe,
        "floor_w2": floor,
        "ot_fmlib_vs_torchcfm": {
            "step_speedup": mean_sd([seconds("torchcfm_ot", s) / seconds("fmlib_ot", s) for s in seeds]),
            "w2_difference": {
                t: {
                    nfe: mean_sd(
                        [w2_at(t, s, "fmlib_ot", s_ot, nfe) - w2_at(t, s, "torchcfm_ot", s_ot, nfe) for s in seeds]
                    )
                    for nfe in map(str, cfg.nfe)
                }
                for t in tasks
            },
        },
        "w2_100_over_floor": {
            "fmlib_independent": {
                t: mean_sd([w2_at(t, s, "fmlib_independent", s_ind) / by[t, s]["floor_w2"] for s in seeds])
                for t in tasks
            },
            "fmlib_ot": {
                t: mean_sd([w2_at(t, s, "fmlib_ot", s_ot) / by[t, s]["floor_w2"] for s in seeds]) for t in tasks
            },
        },
    }


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    parser = harness.parser(__doc__, default_out="compare_2d.json")
    parser.add_argument("--figures-dir", default=None, help="where the PNGs go (default: beside --out; '' for none)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the seeds")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=None, help="override the tasks")
    parser.add_argument("--steps-independent", type=int, default=None)
    parser.add_argument("--steps-ot", type=int, default=None)
    parser.add_argument(
        "--figures-from", default=None, metavar="JSON", help="only redraw the figures of an existing result file"
    )
    args = parser.parse_args(argv)
    if args.smoke and args.out == parser.get_default("out"):
        args.out = str(harness.RESULTS / "compare_2d_smoke.json")  # a smoke run never overwrites the full results
    if args.figures_from:
        src = Path(args.figures_from)
        result = harness.load(src)
        figdir = Path(args.figures_dir) if args.figures_dir else src.parent
        print(save_figures(result, figdir, stem=src.stem))
        return result

    cfg = Config.smoke() if args.smoke else Config()
    overrides = {k: getattr(args, k) for k in ("seeds", "tasks", "steps_independent", "steps_ot")}
    cfg = dataclasses.replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items() if v})
    log = harness.logger(args.quiet)
    out = Path(args.out)
    figdir = out.parent if args.figures_dir is None else (Path(args.figures_dir) if args.figures_dir else None)

    libs = adapters.import_libraries()
    result = harness.new_result(
        "compare_2d", cfg, args, libraries=("scipy", "ot", "torchdiffeq", "torchcfm", "flow_matching"), argv=argv
    )
    result["config"].update(DESCRIPTION)
    runs = [run_task_seed(cfg, task, seed, libs, log) for seed in cfg.seeds for task in cfg.tasks]
    reference = long_reference(cfg, log)
    result.update(runs=runs, long_reference=reference, summary=summarize(runs, cfg))
    harness.save(result, out)  # first without figures: a plotting error loses no measurement
    if figdir is not None:
        result["figures"] = save_figures(result, figdir, stem=out.stem)
        harness.save(result, out)
    log(f"wrote {out} ({result['meta']['wall_seconds']:.0f} s)")
    print_tables(result, log)
    return result


def save_figures(result: dict, outdir: Path, stem: str = "compare_2d") -> list[str]:
    """Draw the figures of benchmarks/figures.py into outdir as {stem}_{name}.png; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks import figures

    figures.use_style()
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw_figure in figures.COMPARE_2D.items():
        fig = draw_figure(result)
        if fig is None:
            continue
        fig.savefig(outdir / f"{stem}_{name}.png")
        plt.close(fig)
        written.append(f"{stem}_{name}.png")
    return written


def print_tables(result: dict, log) -> None:
    s, pm = result["summary"], harness.format_mean_sd
    log("\ntraining step time ratio (fmlib / other), mean ± sd over seeds")
    for coupling, d in s["train_step_ratio"].items():
        for key, val in d.items():
            log(f"  {coupling:12s} {key:22s} {pm(val['all_tasks'])}")
    for v, d in s["train_ms_per_step"].items():
        log(f"  {v:26s} {pm(d['all_tasks'], 2)} ms/step")
    log("sampling time ratio (fmlib / other)")
    for nfe, d in s["sampling_ratio"].items():
        for key, val in d.items():
            log(f"  NFE {nfe:4s} {key:22s} {pm(val)}")
    log("W2 (mean ± sd), floor, NPE")
    for t, d in s["w2"].items():
        log(f" {t}: floor {pm(s['floor_w2'][t], 4)}")
        for v, per_step in d.items():
            for step, w in per_step.items():
                cells = " ".join(pm(w[n]) for n in w)
                log(f"   {v:26s} {step:>5s} steps  W2@{','.join(w)}: {cells}  NPE {pm(s['npe'][t][v][step])}")


if __name__ == "__main__":
    main()
