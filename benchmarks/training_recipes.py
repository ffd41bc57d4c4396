"""Training recipes on the 2D benchmark: what EMA, a cosine schedule and logit-normal times buy, and at what cost.

Every recipe trains the benchmark's network (``fmlib.MLP(2, hidden=64, depth=3)``, one initial state per seed)
with ``fmlib.train`` on the straight-line path (``fmlib.LinearPath(0.0)``), batch 512, 1500 steps, from N(0, I)
to a 2D data set, and is scored by the exact W2 (``fmlib.wasserstein2``) between 1000 points generated with 100
Euler steps and 1000 held-out data points, divided by the finite-sample floor: the W2 between two independent
held-out draws of 1000 points each. Data, held-out draws and seeds follow ``benchmarks/compare_2d.py``
(generator seed 1000 * seed + task index, 20,000 training points). W2 is also measured every ``eval_every``
steps during training (with the averaged weights when EMA is on), for the curves of the chapter "Training in
practice".

Step-time cost: each option is switched on alone on top of constant-rate Adam (and the full default recipe
measured too), the variants run in interleaved blocks of steps (order rotated every block) on the same model
and batches, and the median block time per step is compared with the baseline's.

Usage:
    python benchmarks/training_recipes.py               # full: 5 seeds x 3 tasks x recipes (~25 min on 1 core)
    python benchmarks/training_recipes.py --smoke --out /tmp/recipes_smoke.json   # < 60 s
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import fmlib

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# task -> (fmlib.DATASETS name, task index in compare_2d.py's TASKS: its generator seeds)
TASKS = {"moons": ("moons", 1), "s_curve": ("s_curve", 2), "8gaussians": ("8gaussians", 0)}
# recipe -> keyword arguments of fmlib.train (besides model, path, data, steps, batch_size, generator)
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
# option -> keyword arguments added to the constant-rate baseline for the step-time measurement
OPTIONS = {
    "baseline": dict(schedule="constant", ema=None),
    "ema": dict(schedule="constant", ema=0.999),
    "cosine": dict(schedule="cosine", ema=None),
    "logit_normal": dict(schedule="constant", ema=None, time_sampler="logit_normal"),
    "clip": dict(schedule="constant", ema=None, clip_grad_norm=1.0),
    "default": dict(),
}

FULL = dict(
    seeds=[0, 1, 2, 3, 4],
    tasks=list(TASKS),
    recipes=["constant_3e-3", "default"],
    steps=1500,
    batch_size=512,
    hidden=64,
    depth=3,
    n_train=20_000,
    n_eval=1000,
    euler_steps=100,
    eval_every=250,
    timing_blocks=12,
    timing_block_steps=50,
)
SMOKE = dict(
    FULL,
    seeds=[0],
    tasks=["moons"],
    steps=60,
    n_train=2000,
    n_eval=200,
    eval_every=30,
    timing_blocks=2,
    timing_block_steps=10,
)


def mean_sd(values) -> dict:
    values = [float(v) for v in values]
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def task_data(task: str, seed: int, cfg: dict) -> dict:
    name, index = TASKS[task]
    gen = torch.Generator().manual_seed(1000 * seed + index)
    pool = fmlib.sample_data(name, cfg["n_train"], generator=gen)
    x1_eval = fmlib.sample_data(name, cfg["n_eval"], generator=gen)
    x1_eval2 = fmlib.sample_data(name, cfg["n_eval"], generator=gen)
    x0_eval = torch.randn(cfg["n_eval"], 2, generator=gen)
    return dict(gen=gen, pool=pool, x1_eval=x1_eval, x0_eval=x0_eval, floor=fmlib.wasserstein2(x1_eval, x1_eval2))


def run(task: str, seed: int, recipe: str, cfg: dict) -> dict:
    d = task_data(task, seed, cfg)
    torch.manual_seed(seed)
    model = fmlib.MLP(2, hidden=cfg["hidden"], depth=cfg["depth"])

    def w2_now(step, m):
        with torch.no_grad():
            return fmlib.wasserstein2(fmlib.integrate(m, d["x0_eval"], steps=cfg["euler_steps"]), d["x1_eval"])

    rec = fmlib.train(
        model,
        fmlib.LinearPath(0.0),
        d["pool"],
        cfg["steps"],
        batch_size=cfg["batch_size"],
        generator=d["gen"],
        progress=False,
        eval_every=cfg["eval_every"],
        callback=w2_now,
        **RECIPES[recipe],
    )
    # the returned model (averaged weights when EMA is on), sampled directly
    w2 = w2_now(cfg["steps"], model)
    return {
        "task": task,
        "seed": seed,
        "recipe": recipe,
        "floor_w2": d["floor"],
        "w2": w2,
        "w2_over_floor": w2 / d["floor"],
        "curve_steps": rec.eval_steps,
        "curve_w2_over_floor": [v / d["floor"] for v in rec.callback_values],
        "train_seconds": rec.seconds,
        "last_loss_mean": statistics.fmean(rec[-50:]),
    }


def step_times(cfg: dict) -> dict:
    """Median ms per step of each option, interleaved blocks on the moons, seed 0."""
    d = task_data("moons", 0, cfg)
    torch.manual_seed(0)
    init = copy.deepcopy(fmlib.MLP(2, hidden=cfg["hidden"], depth=cfg["depth"]).state_dict())
    path, n = fmlib.LinearPath(0.0), cfg["timing_block_steps"]
    per_block = {o: [] for o in OPTIONS}
    order = list(OPTIONS)
    for block in range(cfg["timing_blocks"] + 1):  # block 0 is a warm-up
        for o in order:
            model = fmlib.MLP(2, hidden=cfg["hidden"], depth=cfg["depth"])
            model.load_state_dict(init)
            rec = fmlib.train(
                model,
                path,
                d["pool"],
                n,
                batch_size=cfg["batch_size"],
                generator=torch.Generator().manual_seed(block),
                progress=False,
                **{"lr": 3e-3, **OPTIONS[o]},
            )
            if block:
                per_block[o].append(1e3 * rec.seconds / n)
        order = order[1:] + order[:1]
    base = statistics.median(per_block["baseline"])
    return {
        o: {
            "ms_per_step_median": statistics.median(v),
            "relative_to_baseline": statistics.median(v) / base,
            "paired_ratio": mean_sd([a / b for a, b in zip(v, per_block["baseline"])]),
        }
        for o, v in per_block.items()
    }


def component_times(cfg: dict, repeats: int = 7, calls: int = 200) -> dict:
    """Seconds per call of one baseline training step and of what each option adds to it, in isolation.

    Each figure is the minimum over ``repeats`` rounds of ``calls`` calls (the minimum is the least disturbed by
    other load on the machine); the overhead of an option is its added time divided by the baseline step's.
    """
    d = task_data("moons", 0, cfg)
    torch.manual_seed(0)
    model = fmlib.MLP(2, hidden=cfg["hidden"], depth=cfg["depth"])
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    path, b, gen = fmlib.LinearPath(0.0), cfg["batch_size"], torch.Generator().manual_seed(0)
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
                "w2_over_floor": mean_sd([r["w2_over_floor"] for r in rs]),
                "floor_w2": mean_sd([r["floor_w2"] for r in rs]),
                "curve_steps": rs[0]["curve_steps"],
                "curve_w2_over_floor_mean": [statistics.fmean(c) for c in curves],
                "curve_w2_over_floor_sd": [statistics.stdev(c) if len(c) > 1 else 0.0 for c in curves],
                "train_seconds": mean_sd([r["train_seconds"] for r in rs]),
            }
    return out


def write_json(path: Path, obj) -> None:
    """JSON with one level of indentation per dict, lists of numbers on one line."""

    def fmt(x, depth):
        pad, inner = " " * depth, " " * (depth + 1)
        if isinstance(x, dict) and x:
            items = [f"{inner}{json.dumps(k)}: {fmt(v, depth + 1)}" for k, v in x.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(x, list) and x and any(isinstance(e, dict) for e in x):
            return "[\n" + ",\n".join(inner + fmt(e, depth + 1) for e in x) + "\n" + pad + "]"
        return json.dumps(x, separators=(",", ":") if isinstance(x, list) else None)

    path.write_text(fmt(obj, 0) + "\n")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny run of every code path")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="default benchmarks/results/training_recipes[_smoke].json")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=None)
    parser.add_argument("--recipes", nargs="+", default=None)
    parser.add_argument("--extra", default=None, help='more recipes as JSON: {"name": {train kwargs}}')
    parser.add_argument("--eval-every", type=int, default=None, help="period of the W2 curve (steps)")
    parser.add_argument("--timing-only", action="store_true", help="only the step-time measurements")
    parser.add_argument("--no-timing", action="store_true", help="skip the step-time measurement")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON", help="merge result files into --out")
    args = parser.parse_args(argv)
    if args.merge:
        return merge([Path(f) for f in args.merge], Path(args.out) if args.out else RESULTS / "training_recipes.json")
    cfg = dict(SMOKE if args.smoke else FULL)
    if args.extra:
        for name, kw in json.loads(args.extra).items():
            if isinstance(kw.get("time_sampler"), list):  # ["logit_normal", loc, scale]
                kw["time_sampler"] = fmlib.logit_normal(*kw["time_sampler"][1:])
            RECIPES[name], RECIPE_LABELS[name] = kw, name
    if args.eval_every:
        cfg["eval_every"] = args.eval_every
    for key in ("seeds", "tasks", "recipes"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    torch.set_num_threads(args.threads)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    out = (
        Path(args.out)
        if args.out
        else RESULTS / ("training_recipes_smoke.json" if args.smoke else "training_recipes.json")
    )
    begin = time.perf_counter()
    runs = []
    for seed in [] if args.timing_only else cfg["seeds"]:
        for task in cfg["tasks"]:
            for recipe in cfg["recipes"]:
                r = run(task, seed, recipe, cfg)
                runs.append(r)
                log(
                    f"{task:10s} seed {seed} {recipe:30s} W2/floor {r['w2_over_floor']:.3f} "
                    f"({r['train_seconds']:.1f} s)"
                )
    timing = None if args.no_timing else step_times(cfg)
    components = None if args.no_timing else component_times(cfg)
    if timing:
        for o, v in timing.items():
            log(f"step time {o:14s} {v['ms_per_step_median']:.2f} ms  x{v['relative_to_baseline']:.3f}")
        for o, v in components["overhead_fraction"].items():
            log(f"overhead {o:14s} {100 * v:.2f}% of a step ({components['ms_per_call']['step']:.2f} ms)")
    result = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "fmlib": fmlib.__version__,
            "torch_threads": args.threads,
            "mode": "smoke" if args.smoke else "full",
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        },
        "config": {
            **cfg,
            "recipes_kwargs": {k: {a: str(b) for a, b in RECIPES[k].items()} for k in cfg["recipes"]},
            "recipe_labels": {k: RECIPE_LABELS[k] for k in cfg["recipes"]},
            "timing_options": {k: {a: str(b) for a, b in v.items()} for k, v in OPTIONS.items()},
            "w2": "fmlib.wasserstein2 (exact) between n_eval points generated with euler_steps Euler steps and "
            "n_eval held-out points; floor: the same between two independent held-out draws",
        },
        "runs": runs,
        "summary": summarize(runs),
        "step_time": timing,
        "step_time_components": components,
    }
    result["meta"]["wall_seconds"] = time.perf_counter() - begin
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    log(f"wrote {out} ({result['meta']['wall_seconds']:.0f} s)")
    for task, d in result["summary"].items():
        for recipe, s in d.items():
            w = s["w2_over_floor"]
            log(f"  {task:10s} {recipe:30s} W2/floor {w['mean']:.3f} ± {w['sd']:.3f}")
    return result


def merge(files: list[Path], out: Path) -> dict:
    """One result from several partial runs (e.g. tasks run in parallel processes): runs concatenated."""
    parts = [json.loads(f.read_text()) for f in files]
    runs = [r for p in parts for r in p["runs"]]
    cfg = dict(parts[0]["config"])
    cfg["seeds"] = sorted({r["seed"] for r in runs})
    cfg["tasks"] = list(dict.fromkeys(r["task"] for r in runs))
    cfg["recipes"] = list(dict.fromkeys(r["recipe"] for r in runs))
    cfg["recipes_kwargs"] = {k: {a: str(b) for a, b in RECIPES[k].items()} for k in cfg["recipes"]}
    cfg["recipe_labels"] = {k: RECIPE_LABELS[k] for k in cfg["recipes"]}
    result = {
        "meta": {
            **parts[0]["meta"],
            "merged_from": [p["meta"]["command"] for p in parts],
            "wall_seconds": sum(p["meta"]["wall_seconds"] for p in parts),
        },
        "config": cfg,
        "runs": runs,
        "summary": summarize(runs),
        "step_time": next((p["step_time"] for p in parts if p.get("step_time")), None),
        "step_time_components": next((p["step_time_components"] for p in parts if p.get("step_time_components")), None),
    }
    write_json(out, result)
    return result


if __name__ == "__main__":
    main()
