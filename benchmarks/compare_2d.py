"""Side-by-side 2D benchmark: fmlib against torchcfm (Tong et al.) and Meta's flow_matching.

All three libraries train the *same* network (``fmlib.MLP(2, hidden=64, depth=3)``, one initial state dict per
seed loaded into a fresh copy for every library) on the *same* minibatches (data rows, source draws x0 and times t
are drawn once per seed and fed to every library), with the same optimiser (Adam), learning rate, batch size (512)
and number of steps, on the same path (straight line, sigma = 0):

* fmlib: ``fmlib.cfm_loss(model, fmlib.LinearPath(0.0), x1, x0=x0, t=t, coupling=...)``, OT pairs from
  ``fmlib.minibatch_ot`` (POT's exact ``emd``, read off as a permutation);
* torchcfm: ``ConditionalFlowMatcher(sigma=0)`` and ``ExactOptimalTransportConditionalFlowMatcher(sigma=0)``
  (POT's ``emd`` on the full plan, pairs sampled from it), loss ``mean((v - u)^2)`` as in its examples;
* flow_matching: ``AffineProbPath(CondOTScheduler())``, loss ``mean((v - dx_t)^2)`` as in its examples. It has no
  OT coupler, so it is benchmarked with the independent coupling only.

The losses differ by a constant factor (fmlib sums over the 2 features, the others average): Adam is invariant to
it up to its epsilon. Within each coupling the libraries are trained in interleaved blocks of steps (round-robin,
order rotated every block), so a change in the load of the shared machine hits all of them alike; each block is
timed with ``time.perf_counter`` after a warm-up, and the step-time ratios come from the same run.

Sampling: each library's own fixed-step Euler sampler (fmlib.integrate; flow_matching's ODESolver over a uniform
time grid; torchcfm has no sampler of its own -- its examples use torchdyn or torchdiffeq -- so torchdiffeq.odeint,
torchdyn being left out for its heavy dependencies). Sampling speed is timed on one common trained model at equal
NFE (checked with fmlib.NFECounter). Quality: exact W2 (fmlib.wasserstein2) between n_eval generated points and
n_eval held-out data points at 1, 2, 4, 8 and 100 Euler steps; NPE (Tong et al. 2024) with 100 Euler steps; the
finite-sample floor W2(held-out draw, another held-out draw) of the same size.

Install the two other libraries without their declared dependencies (torchcfm's pull torchvision and a CUDA torch):
    python -m pip install --no-deps -c benchmarks/constraints.txt -r benchmarks/requirements.txt

Usage:
    python benchmarks/compare_2d.py    # the full benchmark: ~20 min on 2 idle cores (35 min beside other jobs)
    python benchmarks/compare_2d.py --smoke --out /tmp/smoke.json --figures-dir ""   # < 60 s
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import fmlib

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# name -> (source data set or None for N(0, I), target data set); names as in fmlib.DATASETS
TASKS = {
    "gauss_to_8gaussians": (None, "8gaussians"),
    "gauss_to_moons": (None, "moons"),
    "gauss_to_s_curve": (None, "s_curve"),
    "8gaussians_to_moons": ("8gaussians", "moons"),
}
TASK_LABELS = {
    "gauss_to_8gaussians": "N(0,I) -> 8 Gaussians",
    "gauss_to_moons": "N(0,I) -> moons",
    "gauss_to_s_curve": "N(0,I) -> S-curve",
    "8gaussians_to_moons": "8 Gaussians -> moons",
}
# variant -> (library, coupling)
VARIANTS = {
    "fmlib_independent": ("fmlib", "independent"),
    "torchcfm_independent": ("torchcfm", "independent"),
    "flow_matching_independent": ("flow_matching", "independent"),
    "fmlib_ot": ("fmlib", "ot"),
    "torchcfm_ot": ("torchcfm", "ot"),
}
SAMPLERS = ("fmlib", "torchcfm", "flow_matching")

FULL = dict(
    seeds=[0, 1, 2, 3, 4],
    tasks=list(TASKS),
    steps_independent=1500,
    steps_ot=150,
    batch_size=512,
    lr=3e-3,
    hidden=64,
    depth=3,
    n_train=20_000,
    n_eval=1000,
    nfe=[1, 2, 4, 8, 100],
    npe_steps=100,
    block_independent=50,
    block_ot=10,
    warmup_independent=20,
    warmup_ot=2,
    sampling_nfe=[8, 100],
    sampling_repeats=5,
    stored_samples=300,
    long_reference=dict(tasks=["gauss_to_moons", "gauss_to_s_curve"], seed=0, steps=10_000),
)
SMOKE = dict(
    FULL,
    seeds=[0],
    tasks=["8gaussians_to_moons"],
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
    long_reference=dict(tasks=["gauss_to_moons"], seed=0, steps=20),
)


# ----------------------------------------------------------------------------------------------- libraries
def import_libraries():
    """Import torchcfm and flow_matching (installed with --no-deps from benchmarks/requirements.txt)."""
    import torchdiffeq
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler
    from flow_matching.solver import ODESolver
    from torchcfm.conditional_flow_matching import ConditionalFlowMatcher, ExactOptimalTransportConditionalFlowMatcher

    return dict(
        AffineProbPath=AffineProbPath,
        CondOTScheduler=CondOTScheduler,
        ODESolver=ODESolver,
        CFM=ConditionalFlowMatcher,
        OTCFM=ExactOptimalTransportConditionalFlowMatcher,
        odeint=torchdiffeq.odeint,
    )


def make_loss(variant: str, libs: dict):
    """loss(model, x0, x1, t) -> scalar, written the way each library's documentation trains a model."""
    library, coupling = VARIANTS[variant]
    if library == "fmlib":
        path = fmlib.LinearPath(0.0)
        pair = fmlib.minibatch_ot if coupling == "ot" else None

        def loss(model, x0, x1, t):
            return fmlib.cfm_loss(model, path, x1, x0=x0, t=t, coupling=pair)
    elif library == "torchcfm":
        matcher = libs["OTCFM"](sigma=0.0) if coupling == "ot" else libs["CFM"](sigma=0.0)

        def loss(model, x0, x1, t):
            t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1, t)
            return torch.mean((model(xt, t) - ut) ** 2)
    elif library == "flow_matching":
        if coupling != "independent":
            raise ValueError("flow_matching has no OT coupler")
        path = libs["AffineProbPath"](scheduler=libs["CondOTScheduler"]())

        def loss(model, x0, x1, t):
            s = path.sample(x_0=x0, x_1=x1, t=t)
            return torch.pow(model(s.x_t, s.t) - s.dx_t, 2).mean()
    else:
        raise ValueError(library)
    return loss


def sample(library: str, model, x0: torch.Tensor, nfe: int, libs: dict) -> torch.Tensor:
    """Euler from t = 0 to 1 with ``nfe`` equal steps, through each library's sampler."""
    with torch.no_grad():
        if library == "fmlib":
            return fmlib.integrate(model, x0, steps=nfe, method="euler")
        grid = torch.linspace(0.0, 1.0, nfe + 1, dtype=x0.dtype)
        if library == "flow_matching":
            # step_size=None: the fixed-step solver steps exactly on time_grid (a step_size would let
            # torchdiffeq build its own grid, off by one step for some sizes in float32)
            return libs["ODESolver"](velocity_model=model).sample(
                x_init=x0, step_size=None, method="euler", time_grid=grid
            )
        if library == "torchcfm":
            return libs["odeint"](lambda t, x: model(x, t), x0, grid, method="euler")[-1]
    raise ValueError(library)


# ----------------------------------------------------------------------------------------------- helpers
def draw(name: str | None, n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(n, 2, generator=gen) if name is None else fmlib.sample_data(name, n, generator=gen)


def stored(x: torch.Tensor) -> list:
    """The first ``stored_samples`` points, rounded to 3 decimals, for the figures."""
    return np.round(x[: CFG["stored_samples"]].double().numpy(), 3).tolist()


def write_json(path: Path, obj) -> None:
    """JSON with one level of indentation per dict, and every list of numbers (or of number pairs) on one line."""

    def flat(x):
        return isinstance(x, list) and all(isinstance(e, (int, float)) or flat(e) for e in x)

    def fmt(x, depth):
        pad, inner = " " * depth, " " * (depth + 1)
        if isinstance(x, dict) and x:
            items = [f"{inner}{json.dumps(k)}: {fmt(v, depth + 1)}" for k, v in x.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(x, list) and x and not flat(x):
            return "[\n" + ",\n".join(inner + fmt(e, depth + 1) for e in x) + "\n" + pad + "]"
        return json.dumps(x, separators=(",", ":") if isinstance(x, list) else None)

    path.write_text(fmt(obj, 0) + "\n")


def mean_sd(values) -> dict:
    values = [float(v) for v in values]
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def machine_info(threads: int) -> dict:
    import flow_matching
    import ot
    import scipy
    import torchcfm
    import torchdiffeq

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "fmlib"], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {
        "git_commit": commit,
        "fmlib_uncommitted_changes": dirty,
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "pot": ot.__version__,
        "torchdiffeq": torchdiffeq.__version__,
        "fmlib": fmlib.__version__,
        "torchcfm": torchcfm.__version__,
        "flow_matching": flow_matching.__version__,
        "torch_threads": threads,
        "device": "cpu",
    }


# ----------------------------------------------------------------------------------------------- training
def train_interleaved(variants, models, losses_fn, batches, pool, steps, block, checkpoints, on_checkpoint):
    """Train each variant's model for ``steps`` steps on identical batches, in round-robin blocks.

    Only the step loop is timed (perf_counter around each block). Returns per-variant total seconds, block
    times and the last losses. ``on_checkpoint(step)`` runs (untimed) after the blocks that end at a checkpoint.
    """
    opts = {v: torch.optim.Adam(models[v].parameters(), lr=CFG["lr"]) for v in variants}
    block_times = {v: [] for v in variants}
    last_losses = {v: [] for v in variants}
    idx, x0s, ts = batches
    order = list(variants)
    for start in range(0, steps, block):
        stop = min(start + block, steps)
        for v in order:
            model, opt, loss_fn, hist = models[v], opts[v], losses_fn[v], last_losses[v]
            begin = time.perf_counter()
            for k in range(start, stop):
                loss = loss_fn(model, x0s[k], pool[idx[k]], ts[k])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                hist.append(loss.detach())
            block_times[v].append(time.perf_counter() - begin)
        order = order[1:] + order[:1]
        if stop in checkpoints:
            on_checkpoint(stop)
    return {
        v: {
            "seconds": sum(block_times[v]),
            "block_seconds": block_times[v],
            "last_loss_mean": float(torch.stack(last_losses[v][-min(50, steps) :]).mean()),
        }
        for v in variants
    }


def evaluate(library: str, model, x0_eval, x1_eval, w2sq_src, libs) -> dict:
    w2, samples = {}, {}
    for nfe in CFG["nfe"]:
        xs = sample(library, model, x0_eval, nfe, libs)
        w2[str(nfe)] = fmlib.wasserstein2(xs, x1_eval)
        samples[str(nfe)] = xs
    pe = fmlib.path_energy(model, x0_eval, steps=CFG["npe_steps"])
    # = fmlib.normalized_path_energy(model, x0_eval, x1_eval, steps), with W2(x0, x1)^2 computed once per task/seed
    npe = abs(pe - w2sq_src) / w2sq_src
    return {"w2": w2, "npe": npe, "path_energy": pe}, samples


def time_sampling(model, x0, libs) -> dict:
    """Seconds per sampling call of n_eval points at each NFE, each sampler on the same model, interleaved."""
    out = {}
    for nfe in CFG["sampling_nfe"]:
        for lib in SAMPLERS:  # warm-up and NFE check
            counter = fmlib.NFECounter(model)
            sample(lib, counter, x0, nfe, libs)
            if counter.nfe != nfe:
                raise RuntimeError(f"{lib} sampler used {counter.nfe} evaluations for {nfe} Euler steps")
        secs = {lib: [] for lib in SAMPLERS}
        for _ in range(CFG["sampling_repeats"]):
            for lib in SAMPLERS:
                begin = time.perf_counter()
                sample(lib, model, x0, nfe, libs)
                secs[lib].append(time.perf_counter() - begin)
        out[str(nfe)] = {lib: statistics.fmean(s) for lib, s in secs.items()}
    return out


def run_task_seed(task: str, seed: int, libs: dict, log) -> dict:
    source, target = TASKS[task]
    gen = torch.Generator().manual_seed(1000 * seed + list(TASKS).index(task))
    pool = draw(target, CFG["n_train"], gen)
    src_pool = None if source is None else draw(source, CFG["n_train"], gen)
    x1_eval, x1_eval2 = draw(target, CFG["n_eval"], gen), draw(target, CFG["n_eval"], gen)
    x0_eval = draw(source, CFG["n_eval"], gen)
    steps_max = max(CFG["steps_independent"], CFG["steps_ot"])
    b = CFG["batch_size"]
    idx = torch.randint(0, CFG["n_train"], (steps_max, b), generator=gen)
    if src_pool is None:
        x0s = torch.randn(steps_max, b, 2, generator=gen)
    else:
        x0s = src_pool[torch.randint(0, CFG["n_train"], (steps_max, b), generator=gen)]
    ts = torch.rand(steps_max, b, generator=gen)
    batches = (idx, x0s, ts)

    t_eval = time.perf_counter()
    floor = fmlib.wasserstein2(x1_eval, x1_eval2)
    w2sq_src = fmlib.wasserstein2(x0_eval, x1_eval) ** 2
    eval_seconds = time.perf_counter() - t_eval

    torch.manual_seed(seed)
    init = copy.deepcopy(fmlib.MLP(2, hidden=CFG["hidden"], depth=CFG["depth"]).state_dict())

    def fresh():
        m = fmlib.MLP(2, hidden=CFG["hidden"], depth=CFG["depth"])
        m.load_state_dict(init)
        return m

    losses_fn = {v: make_loss(v, libs) for v in VARIANTS}
    # warm-up of every code path on throwaway copies (not timed, not kept)
    for v, (_, coupling) in VARIANTS.items():
        m = fresh()
        opt = torch.optim.Adam(m.parameters(), lr=CFG["lr"])
        for k in range(CFG["warmup_ot"] if coupling == "ot" else CFG["warmup_independent"]):
            loss = losses_fn[v](m, x0s[k], pool[idx[k]], ts[k])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    models = {v: fresh() for v in VARIANTS}
    evals = {v: {} for v in VARIANTS}
    kept = {}

    def on_checkpoint(step):
        nonlocal eval_seconds
        begin = time.perf_counter()
        for v in group:
            models[v].eval()
            evals[v][str(step)], samples = evaluate(VARIANTS[v][0], models[v], x0_eval, x1_eval, w2sq_src, libs)
            models[v].train()
            if seed == CFG["seeds"][0]:
                kept.setdefault(v, {})[str(step)] = {"100": stored(samples["100"])}
        eval_seconds += time.perf_counter() - begin

    timing = {}
    for coupling, steps, block in (
        ("independent", CFG["steps_independent"], CFG["block_independent"]),
        ("ot", CFG["steps_ot"], CFG["block_ot"]),
    ):
        group = [v for v, (_, c) in VARIANTS.items() if c == coupling]
        np.random.seed(seed)  # torchcfm samples its OT pairs with NumPy's global generator
        torch.manual_seed(seed)  # torchcfm draws its (sigma = 0, unused) noise from torch's global generator
        checkpoints = {steps, CFG["steps_ot"]} if coupling == "independent" else {steps}
        timing.update(
            train_interleaved(group, models, losses_fn, batches, pool, steps, block, checkpoints, on_checkpoint)
        )
        for v in group:
            timing[v]["steps"] = steps
            timing[v]["ms_per_step"] = 1e3 * timing[v]["seconds"] / steps

    models["fmlib_independent"].eval()
    sampling = time_sampling(models["fmlib_independent"], x0_eval, libs)
    rec = {
        "task": task,
        "seed": seed,
        "floor_w2": floor,
        "w2_source_data": math.sqrt(w2sq_src),
        "eval_seconds": eval_seconds,
        "sampling_seconds": sampling,
        "variants": {
            v: {"library": VARIANTS[v][0], "coupling": VARIANTS[v][1], **timing[v], "evals": evals[v]} for v in VARIANTS
        },
    }
    if kept:
        rec["samples"] = {"x1_eval": stored(x1_eval), **kept}
    log(
        f"{task} seed {seed}: floor {floor:.4f}; "
        + "; ".join(
            f"{v} {timing[v]['ms_per_step']:.1f} ms/step W2@100 {evals[v][str(timing[v]['steps'])]['w2']['100']:.4f}"
            for v in VARIANTS
        )
    )
    return rec


def long_reference(log) -> dict:
    """fmlib alone, trained longer with fmlib.train (independent coupling): how close to the floor can this
    model get, and is the gap training or integration error (Euler 100 vs Euler 1000 vs RK4 100)?"""
    ref = CFG["long_reference"]
    out = {}
    for task in ref["tasks"]:
        source, target = TASKS[task]
        gen = torch.Generator().manual_seed(1000 * ref["seed"] + list(TASKS).index(task))
        pool = draw(target, CFG["n_train"], gen)
        x1_eval, x1_eval2 = draw(target, CFG["n_eval"], gen), draw(target, CFG["n_eval"], gen)
        x0_eval = draw(source, CFG["n_eval"], gen)
        if source is not None:
            raise ValueError("the long reference uses fmlib.train, whose source is N(0, I)")
        torch.manual_seed(ref["seed"])
        model = fmlib.MLP(2, hidden=CFG["hidden"], depth=CFG["depth"])
        begin = time.perf_counter()
        losses = fmlib.train(
            model,
            fmlib.LinearPath(0.0),
            pool,
            ref["steps"],
            batch_size=CFG["batch_size"],
            lr=CFG["lr"],
            generator=gen,
            progress=False,
        )
        seconds = time.perf_counter() - begin
        w2 = {}
        with torch.no_grad():
            for label, steps, method in (
                ("euler_100", 100, "euler"),
                ("euler_1000", 1000, "euler"),
                ("rk4_100", 100, "rk4"),
            ):
                w2[label] = fmlib.wasserstein2(fmlib.integrate(model, x0_eval, steps=steps, method=method), x1_eval)
        floor = fmlib.wasserstein2(x1_eval, x1_eval2)
        out[task] = {
            "seed": ref["seed"],
            "steps": ref["steps"],
            "train_seconds": seconds,
            "floor_w2": floor,
            "w2": w2,
            "w2_over_floor": {k: v / floor for k, v in w2.items()},
            "last_loss_mean": statistics.fmean(losses[-min(50, len(losses)) :]),
        }
        log(f"long reference {task}: {ref['steps']} steps, W2 {w2} floor {floor:.4f}")
    return out


# ----------------------------------------------------------------------------------------------- summary
def summarize(runs: list[dict]) -> dict:
    seeds, tasks = CFG["seeds"], CFG["tasks"]
    by = {(r["task"], r["seed"]): r for r in runs}
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
            key = f"fmlib/{VARIANTS[b][0]}"
            # all tasks: per seed, total time over the four tasks; then mean and sd over the seeds
            overall = [
                sum(by[t, s]["variants"][a]["seconds"] for t in tasks)
                / sum(by[t, s]["variants"][b]["seconds"] for t in tasks)
                for s in seeds
            ]
            per_task = {
                t: mean_sd([by[t, s]["variants"][a]["seconds"] / by[t, s]["variants"][b]["seconds"] for s in seeds])
                for t in tasks
            }
            step_ratio[coupling][key] = {"all_tasks": mean_sd(overall), "per_task": per_task}
    for v in VARIANTS:
        step_ms[v] = {
            "all_tasks": mean_sd(
                [statistics.fmean(by[t, s]["variants"][v]["ms_per_step"] for t in tasks) for s in seeds]
            ),
            "per_task": {t: mean_sd([by[t, s]["variants"][v]["ms_per_step"] for s in seeds]) for t in tasks},
        }
    sampling_ratio, sampling_ms = {}, {}
    for nfe in map(str, CFG["sampling_nfe"]):
        sampling_ratio[nfe] = {}
        for other in ("torchcfm", "flow_matching"):
            per_seed = [
                sum(by[t, s]["sampling_seconds"][nfe]["fmlib"] for t in tasks)
                / sum(by[t, s]["sampling_seconds"][nfe][other] for t in tasks)
                for s in seeds
            ]
            sampling_ratio[nfe][f"fmlib/{other}"] = mean_sd(per_seed)
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
                w2[t][v][step] = {nfe: mean_sd([e["w2"][nfe] for e in ev]) for nfe in map(str, CFG["nfe"])}
                npe[t][v][step] = mean_sd([e["npe"] for e in ev])
    # the targets of the issue, measured (not asserted)
    s_ind, s_ot = str(CFG["steps_independent"]), str(CFG["steps_ot"])
    targets = {
        "ot_step_speedup_vs_torchcfm": {
            "target": ">= 5 (torchcfm time / fmlib time)",
            "measured": mean_sd(
                [
                    1 / r
                    for r in [
                        sum(by[t, s]["variants"]["fmlib_ot"]["seconds"] for t in tasks)
                        / sum(by[t, s]["variants"]["torchcfm_ot"]["seconds"] for t in tasks)
                        for s in seeds
                    ]
                ]
            ),
        },
        "ot_w2_fmlib_minus_torchcfm": {
            t: {
                nfe: mean_sd(
                    [
                        by[t, s]["variants"]["fmlib_ot"]["evals"][s_ot]["w2"][nfe]
                        - by[t, s]["variants"]["torchcfm_ot"]["evals"][s_ot]["w2"][nfe]
                        for s in seeds
                    ]
                )
                for nfe in map(str, CFG["nfe"])
            }
            for t in tasks
        },
        "fmlib_w2_100_over_floor": {
            t: mean_sd(
                [
                    by[t, s]["variants"]["fmlib_independent"]["evals"][s_ind]["w2"]["100"] / by[t, s]["floor_w2"]
                    for s in seeds
                ]
            )
            for t in tasks
        },
        "fmlib_ot_w2_100_over_floor": {
            t: mean_sd(
                [by[t, s]["variants"]["fmlib_ot"]["evals"][s_ot]["w2"]["100"] / by[t, s]["floor_w2"] for s in seeds]
            )
            for t in tasks
        },
    }
    return {
        "train_step_ratio": step_ratio,
        "train_ms_per_step": step_ms,
        "sampling_ratio": sampling_ratio,
        "sampling_ms_per_call": sampling_ms,
        "w2": w2,
        "npe": npe,
        "floor_w2": floor,
        "targets": targets,
    }


# ----------------------------------------------------------------------------------------------- figures
def make_figures(result: dict, outdir: Path, stem: str = "compare_2d") -> list[str]:
    """Draw the PNGs into outdir as {stem}_time_ratios.png, {stem}_w2.png, {stem}_samples.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    cfg, summ = result["config"], result["summary"]
    written = []

    fig, ax = plt.subplots(figsize=(8, 3.6))
    labels, means, sds = [], [], []
    for coupling, d in summ["train_step_ratio"].items():
        for key, val in d.items():
            labels.append(f"training\n{coupling}\n{key}")
            means.append(val["all_tasks"]["mean"])
            sds.append(val["all_tasks"]["sd"])
    for nfe, d in summ["sampling_ratio"].items():
        for key, val in d.items():
            labels.append(f"sampling\nNFE {nfe}\n{key}")
            means.append(val["mean"])
            sds.append(val["sd"])
    ax.bar(range(len(means)), means, yerr=sds, capsize=3, color="tab:blue")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(range(len(means)), labels, fontsize=7)
    ax.set_ylabel("time ratio (fmlib / other)")
    ax.set_title(f"Time ratios, mean ± sd over {len(cfg['seeds'])} seeds (< 1: fmlib faster)")
    fig.tight_layout()
    fig.savefig(outdir / f"{stem}_time_ratios.png", dpi=120)
    plt.close(fig)
    written.append(f"{stem}_time_ratios.png")

    tasks = cfg["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.4 * len(tasks), 3.6), squeeze=False)
    nfes = [int(n) for n in cfg["nfe"]]
    styles = {
        "fmlib": ("tab:blue", "o", 0.92),
        "torchcfm": ("tab:orange", "s", 1.0),
        "flow_matching": ("tab:green", "^", 1.08),
    }  # x offsets so coinciding curves stay visible
    for ax, t in zip(axes[0], tasks):
        for v, per_step in summ["w2"][t].items():
            lib, coupling = VARIANTS[v]
            color, marker, shift = styles[lib]
            for step, d in per_step.items():
                ls = "-" if coupling == "ot" else ("--" if int(step) == cfg["steps_ot"] else ":")
                ax.errorbar(
                    [n * shift for n in nfes],
                    [d[str(n)]["mean"] for n in nfes],
                    yerr=[d[str(n)]["sd"] for n in nfes],
                    color=color,
                    marker=marker,
                    ls=ls,
                    ms=3,
                    lw=1,
                    capsize=2,
                    label=f"{lib}, {coupling}, {step} steps",
                )
        fl = summ["floor_w2"][t]
        ax.axhspan(fl["mean"] - fl["sd"], fl["mean"] + fl["sd"], color="0.85")
        ax.axhline(fl["mean"], color="k", lw=0.8, label="finite-sample floor (± sd)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("Euler steps (NFE)")
        ax.set_title(TASK_LABELS[t], fontsize=10)
    axes[0][0].set_ylabel("W2 to held-out data")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle(f"W2 against Euler steps, mean ± sd over {len(cfg['seeds'])} seeds", fontsize=11)
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    fig.savefig(outdir / f"{stem}_w2.png", dpi=120)
    plt.close(fig)
    written.append(f"{stem}_w2.png")

    runs_with_samples = [r for r in result["runs"] if "samples" in r]
    if runs_with_samples:
        s_ot, s_ind = str(cfg["steps_ot"]), str(cfg["steps_independent"])
        columns = [
            ("fmlib_independent", s_ot),
            ("fmlib_ot", s_ot),
            ("torchcfm_ot", s_ot),
            ("fmlib_independent", s_ind),
            ("torchcfm_independent", s_ind),
            ("flow_matching_independent", s_ind),
        ]
        fig, axes = plt.subplots(
            len(runs_with_samples),
            len(columns) + 1,
            figsize=(2.1 * (len(columns) + 1), 2.2 * len(runs_with_samples) + 0.4),
            squeeze=False,
        )
        for row, r in zip(axes, runs_with_samples):
            data = np.array(r["samples"]["x1_eval"])
            row[0].scatter(data[:, 0], data[:, 1], s=2, color="k")
            row[0].set_title("held-out data", fontsize=8)
            row[0].set_ylabel(TASK_LABELS[r["task"]], fontsize=8)
            for ax, (v, step) in zip(row[1:], columns):
                pts = np.array(r["samples"][v][step]["100"])
                ax.scatter(pts[:, 0], pts[:, 1], s=2, color=styles[VARIANTS[v][0]][0])
                ax.set_title(f"{VARIANTS[v][0]}, {VARIANTS[v][1]}\n{step} steps", fontsize=8)
            for ax in row:
                ax.set_xlim(-4, 4)
                ax.set_ylim(-4, 4)
                ax.set_aspect("equal")
                ax.set_xticks([])
                ax.set_yticks([])
        fig.suptitle(f"Samples (100 Euler steps, seed {runs_with_samples[0]['seed']})", fontsize=11)
        fig.tight_layout()
        fig.savefig(outdir / f"{stem}_samples.png", dpi=120)
        plt.close(fig)
        written.append(f"{stem}_samples.png")
    return written


# ----------------------------------------------------------------------------------------------- main
CFG: dict = {}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny run that exercises every library and metric")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/compare_2d[_smoke].json)")
    parser.add_argument(
        "--figures-dir", default=None, help="where the PNGs go (default benchmarks/results; '' for none)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the seeds")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=None, help="override the tasks")
    parser.add_argument("--steps-independent", type=int, default=None)
    parser.add_argument("--steps-ot", type=int, default=None)
    parser.add_argument(
        "--figures-from",
        default=None,
        metavar="JSON",
        help="only redraw the figures of an existing result file (into --figures-dir)",
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.figures_from:
        result = json.loads(Path(args.figures_from).read_text())
        src = Path(args.figures_from)
        print(make_figures(result, Path(args.figures_dir) if args.figures_dir else RESULTS, stem=src.stem))
        return result

    CFG.clear()
    CFG.update(SMOKE if args.smoke else FULL)
    for key in ("seeds", "tasks", "steps_independent", "steps_ot"):
        if getattr(args, key) is not None:
            CFG[key] = getattr(args, key)
    torch.set_num_threads(args.threads)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    out = Path(args.out) if args.out else RESULTS / ("compare_2d_smoke.json" if args.smoke else "compare_2d.json")
    figdir = RESULTS if args.figures_dir is None else (Path(args.figures_dir) if args.figures_dir else None)

    libs = import_libraries()
    begin = time.perf_counter()
    runs = []
    for seed in CFG["seeds"]:
        for task in CFG["tasks"]:
            runs.append(run_task_seed(task, seed, libs, log))
    reference = long_reference(log)
    if args.smoke:  # the cached-W2 NPE is fmlib.normalized_path_energy
        source, target = TASKS[runs[0]["task"]]
        gen = torch.Generator().manual_seed(0)
        m = fmlib.MLP(2, hidden=8, depth=1)
        x0, x1 = draw(source, 50, gen), draw(target, 50, gen)
        w2sq = fmlib.wasserstein2(x0, x1) ** 2
        pe = fmlib.path_energy(m, x0, steps=5)
        assert math.isclose(abs(pe - w2sq) / w2sq, fmlib.normalized_path_energy(m, x0, x1, steps=5), rel_tol=1e-9)
    result = {
        "meta": {
            **machine_info(args.threads),
            "mode": "smoke" if args.smoke else "full",
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        },
        "config": {
            **CFG,
            "path": "straight line, sigma = 0 (fmlib.LinearPath(0.0); torchcfm "
            "ConditionalFlowMatcher(sigma=0); flow_matching AffineProbPath(CondOTScheduler()))",
            "model": f"fmlib.MLP(2, hidden={CFG['hidden']}, depth={CFG['depth']}), one initial state dict "
            "per seed shared by all libraries",
            "optimizer": "Adam, constant learning rate",
            "ot": {
                "fmlib": "fmlib.minibatch_ot (scipy.optimize.linear_sum_assignment, a permutation)",
                "torchcfm": "ExactOptimalTransportConditionalFlowMatcher (ot.emd plan, pairs sampled with replacement)",
                "flow_matching": "none (no OT coupler): independent coupling only",
            },
            "samplers": {
                "fmlib": "fmlib.integrate(method='euler')",
                "torchcfm": "torchdiffeq.odeint(method='euler') on a uniform grid (torchcfm has no "
                "sampler; its examples use torchdyn or torchdiffeq)",
                "flow_matching": "ODESolver.sample(method='euler', step_size=None, uniform time_grid)",
            },
            "timing": "time.perf_counter around blocks of training steps, libraries interleaved block by "
            "block (order rotated), after warm-up; ratios are fmlib time / other time; 'all_tasks' "
            "= per seed, total over the tasks, then mean and sd over seeds",
            "w2": "fmlib.wasserstein2 (exact) between n_eval generated points and n_eval held-out points",
            "npe": "|PE - W2(x0, x1)^2| / W2(x0, x1)^2, PE = fmlib.path_energy with npe_steps Euler steps "
            "(= fmlib.normalized_path_energy)",
            "floor": "fmlib.wasserstein2 between two independent held-out draws of n_eval points",
        },
        "runs": runs,
        "long_reference": reference,
    }
    result["summary"] = summarize(runs)
    result["meta"]["wall_seconds"] = time.perf_counter() - begin
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)  # first without figures: a plotting error loses no measurement
    if figdir is not None:
        result["figures"] = make_figures(result, figdir, stem=out.stem)  # the smoke run never overwrites these
        write_json(out, result)
    log(f"wrote {out} ({result['meta']['wall_seconds']:.0f} s)")
    print_tables(result, log)
    return result


def print_tables(result: dict, log) -> None:
    s = result["summary"]
    log("\ntraining step time ratio (fmlib / other), mean ± sd over seeds")
    for coupling, d in s["train_step_ratio"].items():
        for key, val in d.items():
            a = val["all_tasks"]
            log(f"  {coupling:12s} {key:22s} {a['mean']:.3f} ± {a['sd']:.3f}")
    for v, d in s["train_ms_per_step"].items():
        log(f"  {v:26s} {d['all_tasks']['mean']:.2f} ± {d['all_tasks']['sd']:.2f} ms/step")
    log("sampling time ratio (fmlib / other)")
    for nfe, d in s["sampling_ratio"].items():
        for key, val in d.items():
            log(f"  NFE {nfe:4s} {key:22s} {val['mean']:.3f} ± {val['sd']:.3f}")
    log("W2 (mean ± sd), floor, NPE")
    for t, d in s["w2"].items():
        log(f" {t}: floor {s['floor_w2'][t]['mean']:.4f} ± {s['floor_w2'][t]['sd']:.4f}")
        for v, per_step in d.items():
            for step, w in per_step.items():
                cells = " ".join(f"{w[n]['mean']:.3f}±{w[n]['sd']:.3f}" for n in w)
                npe = s["npe"][t][v][step]
                log(f"   {v:26s} {step:>5s} steps  W2@{','.join(w)}: {cells}  NPE {npe['mean']:.3f}±{npe['sd']:.3f}")


if __name__ == "__main__":
    main()
