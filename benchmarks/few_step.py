"""Few-step generation against the data: MeanFlow, shortcut models, progressive distillation, 2-rectified flow and
I-CFM + Euler, by W2 to held-out data in units of the finite-sample floor after 1, 2, 4 and 100 evaluations.

For each data set (the 8 Gaussians and the moons) and seed, on one CPU thread:

* I-CFM: ``fmlib.train`` with ``LinearPath()`` and ``Recipe()`` for ``steps`` steps; sampled with Euler;
* 2-rectified flow: ``fmlib.reflow_pairs`` of the I-CFM model (``pairs`` noise points, 20 RK4 steps), then
  ``fmlib.train`` on the fixed pairs for ``steps`` steps from the I-CFM weights; sampled with Euler;
* MeanFlow: ``fmlib.meanflow_loss`` (logit-normal(0.4, 1) times, 75 % of rows with r = t) for ``steps`` steps with
  Adam on a cosine schedule and an EMA of the weights; sampled with ``fmlib.sample_flow_map``;
* shortcut model: ``fmlib.shortcut_loss`` with the same loop; ``fmlib.sample_shortcut`` (Euler on its d = 0 field
  for 100 evaluations);
* progressive distillation of the I-CFM model from 32 Euler steps down to 1, ``round_steps`` steps per round
  (``fmlib.progressive_distillation_loss``); each student sampled with its own number of Euler steps.

The model is ``fmlib.MLP(2, hidden, depth=3)`` (``two_times=True`` for the flow maps), batch 256, as in the chapter
``book/few_step_generation.ipynb`` (which trains 1000 steps per model). Each W2 is divided by the floor, the mean
W2 between ``floor_draws`` independent data samples of ``n_eval`` points and the held-out set
(``harness.w2_floor``). Recorded per method: W2 / floor at each NFE (mean and sd over seeds), training steps,
network passes per training step and training wall time; and whether the issue's targets hold (best one-step
method within 1.5x of the floor, best two-step within 1.3x, on every data set).

Usage (from the repository root):
    python benchmarks/few_step.py            # the full run (not timed yet: run it alone)
    python benchmarks/few_step.py --smoke --out /tmp/few_step_smoke.json   # about a minute
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as `python benchmarks/few_step.py`: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fmlib  # noqa: E402
from benchmarks import harness  # noqa: E402

METHODS = ("icfm_euler", "rectified2_euler", "meanflow", "shortcut", "distilled")
# network passes per training step (forward = 1, backward = 2, a JVP's forward with tangent = 2; a shortcut step
# adds two graph-free forwards on a quarter of the rows; a distillation step two teacher forwards)
PASSES_PER_STEP = {"icfm_euler": 3, "rectified2_euler": 3, "meanflow": 4, "shortcut": 3.5, "distilled": 5}


@dataclass(frozen=True)
class Config:
    """Everything a run depends on (the defaults are the full benchmark)."""

    datasets: tuple[str, ...] = ("8gaussians", "moons")
    seeds: tuple[int, ...] = (0, 1, 2)
    hidden: int = 64
    batch: int = 256
    steps: int = 4000
    round_steps: int = 800
    teacher_steps: int = 32
    pairs: int = 8192
    meanflow_lr: float = 3e-3
    shortcut_lr: float = 3e-2
    distill_lr: float = 3e-3
    n_train: int = 20_000
    n_eval: int = 1000
    floor_draws: int = 8
    nfes: tuple[int, ...] = (1, 2, 4, 100)

    @classmethod
    def smoke(cls) -> Config:
        """A tiny run of every part (about a minute on a shared machine)."""
        return cls(
            datasets=("8gaussians",),
            seeds=(0,),
            hidden=16,
            batch=64,
            steps=30,
            round_steps=10,
            teacher_steps=4,
            pairs=256,
            n_train=2000,
            n_eval=200,
            floor_draws=2,
        )

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """The Config stored in a result's ``config``."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})


def fit(model, loss_fn: Callable, data: torch.Tensor, cfg, steps: int, seed: int, lr: float, labels=None):
    """The chapter's loop: Adam, cosine schedule, EMA 0.999 of the weights, minibatches of ``cfg.batch`` rows
    drawn with replacement; ``loss_fn(model, x1, g)``, or ``loss_fn(model, x1, y, g)`` with the rows' ``labels``."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = fmlib.lr_schedule(opt, steps, "cosine")
    ema = fmlib.EMA(model, 0.999)
    g = fmlib.seeded_generator(seed)
    for _ in range(steps):
        i = torch.randint(len(data), (cfg.batch,), generator=g)
        loss = loss_fn(model, data[i], g) if labels is None else loss_fn(model, data[i], labels[i], g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        ema.update()
    ema.copy_to()
    return model.eval()


def run_seed(cfg: Config, name: str, seed: int, log: Callable[[str], None]) -> dict:
    """Train every method on one data set with one seed; W2 / floor at each NFE and training wall times."""
    base = 1000 * seed
    data = fmlib.sample_data(name, cfg.n_train, generator=fmlib.seeded_generator(base))
    test = fmlib.sample_data(name, cfg.n_eval, generator=fmlib.seeded_generator(base + 1))
    z = torch.randn(cfg.n_eval, 2, generator=fmlib.seeded_generator(base + 2))
    draws = iter(range(base + 100, base + 100 + cfg.floor_draws))
    floor = harness.w2_floor(
        test,
        lambda: fmlib.sample_data(name, cfg.n_eval, generator=fmlib.seeded_generator(next(draws))),
        cfg.floor_draws,
    )
    path = fmlib.LinearPath()

    def mlp(two_times=False, s=base + 4):
        torch.manual_seed(s)
        return fmlib.MLP(2, hidden=cfg.hidden, depth=3, two_times=two_times)

    wall = {}
    t0 = time.perf_counter()
    icfm = mlp()
    fmlib.train(
        icfm, path, data, cfg.steps, batch_size=cfg.batch, generator=fmlib.seeded_generator(base + 4), progress=False
    )
    wall["icfm_euler"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    x0p = torch.randn(cfg.pairs, 2, generator=fmlib.seeded_generator(base + 8))
    x0p, x1p = fmlib.reflow_pairs(icfm, x0p, steps=20)
    rf2 = mlp()
    rf2.load_state_dict(icfm.state_dict())
    fmlib.train(
        rf2,
        path,
        x1p,
        cfg.steps,
        batch_size=cfg.batch,
        source=x0p,
        generator=fmlib.seeded_generator(base + 9),
        progress=False,
    )
    wall["rectified2_euler"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    times = fmlib.logit_normal(0.4, 1.0)
    mf = fit(
        mlp(True),
        lambda m, x1, g: fmlib.meanflow_loss(m, path, x1, generator=g, time_sampler=times),
        data,
        cfg,
        cfg.steps,
        base + 5,
        cfg.meanflow_lr,
    )
    wall["meanflow"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sc = fit(
        mlp(True),
        lambda m, x1, g: fmlib.shortcut_loss(m, path, x1, generator=g),
        data,
        cfg,
        cfg.steps,
        base + 6,
        cfg.shortcut_lr,
    )
    wall["shortcut"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    teacher, students, k = icfm, {}, cfg.teacher_steps // 2
    while k >= 1:
        student = mlp()
        student.load_state_dict(teacher.state_dict())

        def pd(m, x1, g, teacher=teacher, k=k):
            return fmlib.progressive_distillation_loss(m, teacher, path, x1, steps=k, generator=g)

        students[k] = teacher = fit(student, pd, data, cfg, cfg.round_steps, base + 10 + k, cfg.distill_lr)
        k //= 2
    wall["distilled"] = time.perf_counter() - t0

    samplers = {
        "icfm_euler": lambda n: fmlib.integrate(icfm, z, steps=n),
        "rectified2_euler": lambda n: fmlib.integrate(rf2, z, steps=n),
        "meanflow": lambda n: fmlib.sample_flow_map(mf, z, n),
        "shortcut": lambda n: (
            fmlib.sample_shortcut(sc, z, n) if n <= 64 else fmlib.integrate(lambda x, t: sc(x, t, 0 * t), z, steps=n)
        ),
        "distilled": lambda n: fmlib.integrate(students[n], z, steps=n),
    }
    quality = {}
    with torch.no_grad():
        for method, sample in samplers.items():
            quality[method] = {
                str(n): float(fmlib.wasserstein2(sample(n), test)) / floor
                for n in cfg.nfes
                if method != "distilled" or n in students
            }
    log(f"{name} seed {seed}: " + ", ".join(f"{m} 1-NFE {q['1']:.2f}" for m, q in quality.items()))
    return {"floor": floor, "quality": quality, "wall": wall}


def main(argv: list[str] | None = None) -> dict:
    parser = harness.parser(__doc__, default_out="few_step.json")
    args = parser.parse_args(argv)
    if args.smoke and args.out == parser.get_default("out"):
        args.out = str(harness.RESULTS / "few_step_smoke.json")  # a smoke run never overwrites the full results
    cfg = Config.smoke() if args.smoke else Config()
    result = harness.new_result("few_step", cfg, args, libraries=("ot",), argv=argv)
    log = harness.logger(args.quiet)
    result["datasets"] = {}
    for name in cfg.datasets:
        runs = [run_seed(cfg, name, seed, log) for seed in cfg.seeds]
        methods = {}
        for m in METHODS:
            nfes = runs[0]["quality"][m].keys()
            methods[m] = {
                "w2_over_floor": {n: harness.mean_sd([r["quality"][m][n] for r in runs]) for n in nfes},
                "train_seconds": harness.mean_sd([r["wall"][m] for r in runs]),
                "passes_per_step": PASSES_PER_STEP[m],
            }
        methods["icfm_euler"]["train_steps"] = cfg.steps
        methods["rectified2_euler"]["train_steps"] = 2 * cfg.steps  # on top of the I-CFM model
        methods["meanflow"]["train_steps"] = methods["shortcut"]["train_steps"] = cfg.steps
        rounds = cfg.teacher_steps.bit_length() - 1
        methods["distilled"]["train_steps"] = cfg.steps + rounds * cfg.round_steps
        few = [m for m in METHODS if m != "icfm_euler"]
        best1 = min(few, key=lambda m: methods[m]["w2_over_floor"]["1"]["mean"])
        best2 = min(few, key=lambda m: methods[m]["w2_over_floor"]["2"]["mean"])
        result["datasets"][name] = {
            "floor": harness.mean_sd([r["floor"] for r in runs]),
            "methods": methods,
            "best_one_step": {"method": best1, "w2_over_floor": methods[best1]["w2_over_floor"]["1"]["mean"]},
            "best_two_steps": {"method": best2, "w2_over_floor": methods[best2]["w2_over_floor"]["2"]["mean"]},
        }
    result["targets"] = {
        "one_step_within_1.5x": all(d["best_one_step"]["w2_over_floor"] <= 1.5 for d in result["datasets"].values()),
        "two_steps_within_1.3x": all(d["best_two_steps"]["w2_over_floor"] <= 1.3 for d in result["datasets"].values()),
    }
    log(f"wrote {harness.save(result, args.out)}")
    return result


if __name__ == "__main__":
    main()
