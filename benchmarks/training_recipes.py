"""Training recipes on the 2D benchmark: what EMA, a cosine schedule and logit-normal times buy, and at what cost.

Every recipe trains the benchmark's network (``fmlib.MLP(2, hidden=64, depth=3)``, one initial state per seed)
with ``fmlib.train`` on the straight-line path (``fmlib.LinearPath(0.0)``), batch 512, 1500 steps, from N(0, I)
to a 2D data set, and is scored by the exact W2 (``fmlib.wasserstein2``) between 1000 points generated with 100
Euler steps and 1000 held-out data points, divided by the finite-sample floor: the mean W2 between the held-out
points and 8 further independent draws of 1000 (``harness.w2_floor``), which a perfect sampler would score.
Data, held-out draws and seeds follow ``benchmarks/compare_2d.py`` (generator seed 1000 * seed + task index,
20,000 training points). W2 is also measured every ``eval_every``
steps during training (with the averaged weights when EMA is on), for the curves of the chapter "Training in
practice".

The other libraries' defaults: torchcfm and flow_matching have no training function; their 2D examples train
with ``torch.optim.Adam(model.parameters())`` (PyTorch's default rate 1e-3, constant), t ~ U[0, 1] and no
weight average. That loop, with each library's own loss (``benchmarks/adapters.py``) and the same network, data,
initial state and batch size, runs once for the default recipe's number of steps (equal steps) and once for as
many steps as take the default recipe's training time (equal wall time). That step count comes from the median
times per step of the default recipe and of each library's loop, measured in the interleaved blocks below before
the training runs, so a change of load during a run does not move it.

Step-time cost: each option is switched on alone on top of constant-rate Adam (and the full default recipe
measured too), the variants run in interleaved blocks of steps (order rotated every block) on the same model
and batches, and the median block time per step is compared with the baseline's.

The result has the common ``meta`` and ``config`` entries of :mod:`benchmarks.harness` (the configuration is
:class:`Config`, with the recipes' ``fmlib.Recipe`` arguments and labels stored beside it); a result merged from
partial runs (``--merge``) lists their command lines in ``merged_from``.

Usage (from the repository root):
    python benchmarks/training_recipes.py               # 5 seeds x 3 tasks x (2 recipes + 4 library runs), ~10 min
    python benchmarks/training_recipes.py --smoke --out /tmp/recipes_smoke.json   # < 60 s
"""

from __future__ import annotations

import copy
import dataclasses
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as `python benchmarks/training_recipes.py`: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fmlib  # noqa: E402
from benchmarks import adapters, harness  # noqa: E402

# task -> (fmlib.DATASETS name, task index in compare_2d.py's TASKS: its generator seeds)
TASKS = {"moons": ("moons", 1), "s_curve": ("s_curve", 2), "8gaussians": ("8gaussians", 0)}
# recipe -> keyword arguments of the fmlib.Recipe that fmlib.train runs (the data, batch size and generator are common)
RECIPES = {
    "constant_3e-3": dict(lr=3e-3, schedule="constant", ema=None),
    "constant": dict(lr=3e-2, schedule="constant", ema=None),
    "cosine": dict(lr=3e-2, schedule="cosine", ema=None),
    "ema": dict(lr=3e-2, schedule="constant", ema=0.999),
    "default": dict(),
    "default_logit_normal": dict(time_sampler="logit_normal"),
}
RECIPE_LABELS = {
    "constant_3e-3": "constant Adam, lr 3e-3 (compare_2d)",
    "constant": "constant Adam, lr 3e-2",
    "cosine": "warm-up + cosine, peak 3e-2",
    "ema": "constant 3e-2 + EMA 0.999",
    "default": "cosine + EMA (fmlib.train defaults)",
    "default_logit_normal": "cosine + EMA, logit-normal t",
}
# library -> label of its default recipe (constant Adam at 1e-3 with its own loss), at equal steps / wall time
LIBRARY_LABELS = {"torchcfm": "torchcfm example loop", "flow_matching": "flow_matching example loop"}
BUDGETS = {"steps": "equal steps", "time": "equal wall time"}
# option -> keyword arguments of the fmlib.Recipe of the step-time measurement (each at lr 3e-3): one option at a time
# on top of the constant-rate baseline
OPTIONS = {
    "baseline": dict(schedule="constant", ema=None),
    "ema": dict(schedule="constant", ema=0.999),
    "cosine": dict(schedule="cosine", ema=None),
    "logit_normal": dict(schedule="constant", ema=None, time_sampler="logit_normal"),
    "clip": dict(schedule="constant", ema=None, clip_grad_norm=1.0),
    "default": dict(),
}


@dataclass(frozen=True)
class Config:
    """Everything a run depends on (the defaults are the full benchmark)."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    tasks: tuple[str, ...] = tuple(TASKS)
    recipes: tuple[str, ...] = ("constant_3e-3", "default")
    libraries: tuple[str, ...] = ("torchcfm", "flow_matching")
    library_lr: float = 1e-3
    floor_draws: int = 8
    steps: int = 1500
    batch_size: int = 512
    hidden: int = 64
    depth: int = 3
    n_train: int = 20_000
    n_eval: int = 1000
    euler_steps: int = 100
    eval_every: int = 250
    timing_blocks: int = 12
    timing_block_steps: int = 50

    @classmethod
    def smoke(cls) -> Config:
        """A tiny run of every code path (well under a minute)."""
        return cls(
            seeds=(0,),
            tasks=("moons",),
            steps=60,
            n_train=2000,
            n_eval=200,
            eval_every=30,
            floor_draws=2,
            timing_blocks=2,
            timing_block_steps=10,
        )

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """The Config stored in a result's ``config`` (its descriptive entries are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})


def library_runs(cfg: Config) -> list[str]:
    """Names of the other libraries' runs (``"torchcfm@steps"``, ...); empty unless the default recipe runs."""
    return [f"{lib}@{b}" for lib in cfg.libraries for b in BUDGETS] if "default" in cfg.recipes else []


def description(cfg: Config) -> dict:
    """What the result's ``config`` stores beside the Config: the recipes' and timing options' Recipe arguments."""
    lib_labels = {f"{lib}@{b}": f"{LIBRARY_LABELS[lib]}, {BUDGETS[b]}" for lib in cfg.libraries for b in BUDGETS}
    return {
        "recipes_kwargs": {k: {a: str(b) for a, b in RECIPES[k].items()} for k in cfg.recipes},
        "recipe_labels": {k: RECIPE_LABELS[k] for k in cfg.recipes} | {k: lib_labels[k] for k in library_runs(cfg)},
        "library_runs": library_runs(cfg),
        "library_recipe": f"torch.optim.Adam(model.parameters(), lr={cfg.library_lr:g}), constant, t ~ U[0, 1], "
        "no EMA, the library's own loss (benchmarks/adapters.py); '@steps': the default recipe's number of steps, "
        "'@time': as many steps as take the default recipe's training time, by the median step times of the "
        "interleaved timing blocks (step_time)",
        "timing_options": {k: {a: str(b) for a, b in v.items()} for k, v in OPTIONS.items()},
        "w2": "fmlib.wasserstein2 (exact) between n_eval points generated with euler_steps Euler steps and "
        "n_eval held-out points; floor: harness.w2_floor, the mean W2 between the held-out points and floor_draws "
        "further independent draws of n_eval",
    }


def task_data(task: str, seed: int, cfg: Config) -> dict:
    name, index = TASKS[task]
    gen = torch.Generator().manual_seed(1000 * seed + index)
    pool = fmlib.sample_data(name, cfg.n_train, generator=gen)
    x1_eval = fmlib.sample_data(name, cfg.n_eval, generator=gen)
    x0_eval = torch.randn(cfg.n_eval, 2, generator=gen)
    floor_gen = torch.Generator().manual_seed(1000 * seed + index + 500)  # the floor's draws: their own stream
    floor = harness.w2_floor(x1_eval, lambda: fmlib.sample_data(name, cfg.n_eval, generator=floor_gen), cfg.floor_draws)
    return dict(gen=gen, pool=pool, x1_eval=x1_eval, x0_eval=x0_eval, floor=floor)


def run(task: str, seed: int, recipe: str, cfg: Config) -> dict:
    d = task_data(task, seed, cfg)
    torch.manual_seed(seed)
    model = fmlib.MLP(2, hidden=cfg.hidden, depth=cfg.depth)

    def w2_now(step, m):
        with torch.no_grad():
            return fmlib.wasserstein2(fmlib.integrate(m, d["x0_eval"], steps=cfg.euler_steps), d["x1_eval"])

    rec = fmlib.train(
        model,
        fmlib.LinearPath(0.0),
        d["pool"],
        cfg.steps,
        recipe=fmlib.Recipe(**RECIPES[recipe]),
        batch_size=cfg.batch_size,
        generator=d["gen"],
        progress=False,
        eval_every=cfg.eval_every,
        callback=w2_now,
    )
    # the returned model (averaged weights when EMA is on), sampled directly
    w2 = w2_now(cfg.steps, model)
    return {
        "task": task,
        "seed": seed,
        "recipe": recipe,
        "floor_w2": d["floor"],
        "w2": w2,
        "w2_over_floor": w2 / d["floor"],
        "curve_steps": rec.eval_steps,
        "curve_w2_over_floor": [v / d["floor"] for v in rec.callback_values],
        "steps": cfg.steps,
        "train_seconds": rec.seconds,
        "last_loss_mean": statistics.fmean(rec[-50:]),
    }


def library_loop(library: str, model: torch.nn.Module, pool: torch.Tensor, steps: int, gen, cfg: Config, libs: dict):
    """``steps`` steps of the library's example loop (constant-rate Adam, its own loss): (seconds, last loss)."""
    loss_fn = adapters.make_loss(adapters.VARIANTS[f"{library}_independent"], libs)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.library_lr)
    b, loss = cfg.batch_size, torch.tensor(float("nan"))
    begin = time.perf_counter()
    for _ in range(steps):
        x1 = pool[torch.randint(0, pool.shape[0], (b,), generator=gen)]
        x0 = torch.randn(b, 2, generator=gen)
        t = torch.rand(b, generator=gen)
        loss = loss_fn(model, x0, x1, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - begin, float(loss.detach())


def run_library(task: str, seed: int, library: str, budget: str, timing: dict, cfg: Config, libs: dict) -> dict:
    """The library's example loop on the benchmark's network, from the recipes' initial state and data: for
    ``budget`` "steps" the default recipe's number of steps; for "time" as many as take the default recipe's
    training time, by the step times of ``timing`` (:func:`step_times`, interleaved blocks)."""
    ratio = timing[f"{library}_loop"]["ms_per_step_median"] / timing["default"]["ms_per_step_median"]
    steps = cfg.steps if budget == "steps" else max(1, round(cfg.steps / ratio))
    d = task_data(task, seed, cfg)
    torch.manual_seed(seed)
    model = fmlib.MLP(2, hidden=cfg.hidden, depth=cfg.depth)  # the same initial state as the recipes'
    seconds, last_loss = library_loop(library, model, d["pool"], steps, d["gen"], cfg, libs)
    with torch.no_grad():
        w2 = fmlib.wasserstein2(adapters.sample(library, model, d["x0_eval"], cfg.euler_steps, libs), d["x1_eval"])
    return {
        "task": task,
        "seed": seed,
        "recipe": f"{library}@{budget}",
        "library": library,
        "budget": budget,
        "steps": steps,
        "floor_w2": d["floor"],
        "w2": w2,
        "w2_over_floor": w2 / d["floor"],
        "curve_steps": [],
        "curve_w2_over_floor": [],
        "train_seconds": seconds,
        "time_over_default": steps * ratio / cfg.steps,
        "last_loss": last_loss,
    }


def step_times(cfg: Config) -> dict:
    """Median ms per step of each option and of the other libraries' example loops (``"torchcfm_loop"``, ...),
    interleaved blocks on the moons, seed 0; ``relative_to_baseline`` compares with constant-rate fmlib.train."""
    d = task_data("moons", 0, cfg)
    torch.manual_seed(0)
    init = copy.deepcopy(fmlib.MLP(2, hidden=cfg.hidden, depth=cfg.depth).state_dict())
    path, n = fmlib.LinearPath(0.0), cfg.timing_block_steps
    loops = [f"{lib}_loop" for lib in cfg.libraries]
    libs = adapters.import_libraries() if loops else {}
    per_block = {o: [] for o in [*OPTIONS, *loops]}
    order = list(per_block)
    for block in range(cfg.timing_blocks + 1):  # block 0 is a warm-up
        for o in order:
            model = fmlib.MLP(2, hidden=cfg.hidden, depth=cfg.depth)
            model.load_state_dict(init)
            if o in loops:
                seconds, _ = library_loop(
                    o[: -len("_loop")], model, d["pool"], n, torch.Generator().manual_seed(block), cfg, libs
                )
                if block:
                    per_block[o].append(1e3 * seconds / n)
                continue
            rec = fmlib.train(
                model,
                path,
                d["pool"],
                n,
                recipe=fmlib.Recipe(**{"lr": 3e-3, **OPTIONS[o]}),
                batch_size=cfg.batch_size,
                generator=torch.Generator().manual_seed(block),
                progress=False,
            )
            if block:
                per_block[o].append(1e3 * rec.seconds / n)
        order = order[1:] + order[:1]
    base = statistics.median(per_block["baseline"])
    return {
        o: {
            "ms_per_step_median": statistics.median(v),
            "relative_to_baseline": statistics.median(v) / base,
            "paired_ratio": harness.mean_sd([a / b for a, b in zip(v, per_block["baseline"])]),
        }
        for o, v in per_block.items()
    }


def component_times(cfg: Config, repeats: int = 7, calls: int = 200) -> dict:
    """Seconds per call of one baseline training step and of what each option adds to it, in isolation.

    Each figure is the minimum over ``repeats`` rounds of ``calls`` calls (the minimum is the least disturbed by
    other load on the machine); the overhead of an option is its added time divided by the baseline step's.
    """
    d = task_data("moons", 0, cfg)
    torch.manual_seed(0)
    model = fmlib.MLP(2, hidden=cfg.hidden, depth=cfg.depth)
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    path, b, gen = fmlib.LinearPath(0.0), cfg.batch_size, torch.Generator().manual_seed(0)
    ema = fmlib.EMA(model, 0.999)
    sched = fmlib.lr_schedule(torch.optim.Adam(fmlib.MLP(2, hidden=8, depth=1).parameters(), lr=1.0), 10**9)
    sched.optimizer.step()  # (the scheduler expects an optimiser step before its own)
    logit = fmlib.logit_normal()

    def step():
        idx = torch.randint(0, d["pool"].shape[0], (b,), generator=gen)
        loss = fmlib.cfm_loss(model, path, d["pool"][idx], generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def clip():
        torch.nn.utils.clip_grad_norm_(params, 1e9)

    def uniform_t():
        torch.rand(b, generator=gen)

    def logit_t():
        logit(b, gen, torch.float32, torch.device("cpu"))

    fns = {
        "step": step,
        "ema": ema.update,
        "cosine": sched.step,
        "clip": clip,
        "uniform_t": uniform_t,
        "logit_normal_t": logit_t,
    }
    best = {k: float("inf") for k in fns}
    step()  # gradients exist for clip
    for _ in range(repeats):
        for k, fn in fns.items():
            begin = time.perf_counter()
            for _ in range(calls):
                fn()
            best[k] = min(best[k], (time.perf_counter() - begin) / calls)
    base = best["step"]
    return {
        "ms_per_call": {k: 1e3 * v for k, v in best.items()},
        "overhead_fraction": {
            "ema": best["ema"] / base,
            "cosine": best["cosine"] / base,
            "clip": best["clip"] / base,
            "logit_normal": max(0.0, best["logit_normal_t"] - best["uniform_t"]) / base,
        },
        "method": f"minimum over {repeats} rounds of {calls} calls each; overhead = added time / baseline step time",
    }


def summarize(runs: list[dict]) -> dict:
    out: dict = {}
    for task in dict.fromkeys(r["task"] for r in runs):
        out[task] = {}
        for recipe in dict.fromkeys(r["recipe"] for r in runs if r["task"] == task):
            rs = [r for r in runs if r["task"] == task and r["recipe"] == recipe]
            curves = list(zip(*[r["curve_w2_over_floor"] for r in rs]))
            out[task][recipe] = {
                "seeds": [r["seed"] for r in rs],
                "w2_over_floor": harness.mean_sd([r["w2_over_floor"] for r in rs]),
                "floor_w2": harness.mean_sd([r["floor_w2"] for r in rs]),
                "curve_steps": rs[0]["curve_steps"],
                "curve_w2_over_floor_mean": [statistics.fmean(c) for c in curves],
                "curve_w2_over_floor_sd": [statistics.stdev(c) if len(c) > 1 else 0.0 for c in curves],
                "train_seconds": harness.mean_sd([r["train_seconds"] for r in rs]),
                "steps": harness.mean_sd([r["steps"] for r in rs]),
            }
            if "time_over_default" in rs[0]:
                out[task][recipe]["time_over_default"] = harness.mean_sd([r["time_over_default"] for r in rs])
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = harness.parser(__doc__, default_out="training_recipes.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=None)
    parser.add_argument("--recipes", nargs="+", default=None)
    parser.add_argument("--extra", default=None, help='more recipes as JSON: {"name": {fmlib.Recipe kwargs}}')
    parser.add_argument("--eval-every", type=int, default=None, help="period of the W2 curve (steps)")
    parser.add_argument("--timing-only", action="store_true", help="only the step-time measurements")
    parser.add_argument("--no-timing", action="store_true", help="skip the step-time measurement")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON", help="merge result files into --out")
    args = parser.parse_args(argv)
    if args.smoke and args.out == parser.get_default("out"):
        args.out = str(harness.RESULTS / "training_recipes_smoke.json")  # a smoke run never overwrites the results
    if args.merge:
        return merge([Path(f) for f in args.merge], Path(args.out))
    cfg = Config.smoke() if args.smoke else Config()
    if args.extra:
        for name, kw in json.loads(args.extra).items():
            if isinstance(kw.get("time_sampler"), list):  # ["logit_normal", loc, scale]
                kw["time_sampler"] = fmlib.logit_normal(*kw["time_sampler"][1:])
            RECIPES[name], RECIPE_LABELS[name] = kw, name
    overrides = {"seeds": args.seeds, "tasks": args.tasks, "recipes": args.recipes, "eval_every": args.eval_every}
    cfg = dataclasses.replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items() if v})
    log = harness.logger(args.quiet)
    result = harness.new_result("training_recipes", cfg, args, argv=argv)
    result["config"].update(description(cfg))
    runs = []
    libs = adapters.import_libraries() if library_runs(cfg) else {}
    if library_runs(cfg) and not args.timing_only and args.no_timing:
        parser.error("the library runs at equal wall time need the step-time measurement: drop --no-timing")
    timing = None if args.no_timing else step_times(cfg)  # first: the equal-time library runs use it
    for seed in [] if args.timing_only else cfg.seeds:
        for task in cfg.tasks:
            for recipe in cfg.recipes:
                r = run(task, seed, recipe, cfg)
                runs.append(r)
                log(
                    f"{task:10s} seed {seed} {recipe:30s} W2/floor {r['w2_over_floor']:.3f} "
                    f"({r['train_seconds']:.1f} s)"
                )
            for name in library_runs(cfg):
                library, budget = name.split("@")
                r = run_library(task, seed, library, budget, timing, cfg, libs)
                runs.append(r)
                log(
                    f"{task:10s} seed {seed} {name:30s} W2/floor {r['w2_over_floor']:.3f} "
                    f"({r['steps']} steps, {r['train_seconds']:.1f} s, x{r['time_over_default']:.2f})"
                )
    components = None if args.no_timing else component_times(cfg)
    if timing:
        for o, v in timing.items():
            log(f"step time {o:14s} {v['ms_per_step_median']:.2f} ms  x{v['relative_to_baseline']:.3f}")
        for o, v in components["overhead_fraction"].items():
            log(f"overhead {o:14s} {100 * v:.2f}% of a step ({components['ms_per_call']['step']:.2f} ms)")
    result.update(runs=runs, summary=summarize(runs), step_time=timing, step_time_components=components)
    out = harness.save(result, args.out)
    log(f"wrote {out} ({result['meta']['wall_seconds']:.0f} s)")
    for task, d in result["summary"].items():
        for recipe, s in d.items():
            log(f"  {task:10s} {recipe:30s} W2/floor {harness.format_mean_sd(s['w2_over_floor'])}")
    return result


def merge(files: list[Path], out: Path) -> dict:
    """One result from several partial runs (e.g. tasks run in parallel processes): runs concatenated; the meta of
    the first part, with the wall time summed over the parts and their command lines in ``merged_from``."""
    parts = [harness.load(f) for f in files]
    runs = [r for p in parts for r in p["runs"]]
    cfg = Config.from_dict(parts[0]["config"])
    cfg = dataclasses.replace(
        cfg,
        seeds=tuple(sorted({r["seed"] for r in runs})),
        tasks=tuple(dict.fromkeys(r["task"] for r in runs)),
        recipes=tuple(dict.fromkeys(r["recipe"] for r in runs if "library" not in r)),
        libraries=tuple(dict.fromkeys(r["library"] for r in runs if "library" in r)),
    )
    result = {
        "meta": {**parts[0]["meta"], "wall_seconds": sum(p["meta"]["wall_seconds"] for p in parts)},
        "config": {**harness.config_dict(cfg), **description(cfg)},
        "merged_from": [p["meta"]["command"] for p in parts],
        "runs": runs,
        "summary": summarize(runs),
        "step_time": next((p["step_time"] for p in parts if p.get("step_time")), None),
        "step_time_components": next((p["step_time_components"] for p in parts if p.get("step_time_components")), None),
    }
    harness.save(result, out)
    return result


if __name__ == "__main__":
    main()
