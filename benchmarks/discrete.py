"""Discrete flow matching, fmlib beside flow_matching: path probabilities, sampling speed and sample quality.

All on one CPU thread, written to ``benchmarks/results/discrete.json`` with the machine's description and load:

1. ``path_check``: the probability that a position of x_t shows its data token, P(x_t = x1) = kappa_t, by
   Monte Carlo through ``fmlib.MixtureDiscretePath.sample`` and through flow_matching's
   ``MixtureDiscreteProbPath.sample`` (kappa_t = t^n: ``PolynomialScheduler(n)`` and
   ``PolynomialConvexScheduler(n)``, n = 1, 2), each against kappa_t in standard errors; and the largest
   difference between the two libraries' velocities from the same posterior logits.
2. ``digits``: the scikit-learn 8x8 digits as 64 tokens of 17 grey levels (the pixels 0..16), mask source,
   kappa_t = t. One class-conditional ``fmlib.TokenMLP`` (label dropout 0.2) is trained with
   ``fmlib.discrete_cfm_loss``; the same network, the same initial states and the same steps then sample through
   ``fmlib.sample_discrete`` and through flow_matching's ``MixtureDiscreteEulerSolver`` (``adapters``):
   seconds per sampling run (median of interleaved rounds; ``time_ratio`` = flow_matching / fmlib, above 1 when
   fmlib is faster), and the label accuracy of the conditional samples (w = 1) and of fmlib's guided samples
   (w = ``guidance``) by the book's ``fmlib.DigitClassifier`` trained on the training images (its accuracy on the
   held-out images is stored beside). Target: guided accuracy >= 0.9; fmlib at least as fast.
3. ``grid2d``: two moons quantised to a 32 x 32 grid (2 tokens of 32 values), mask source; W2 between decoded
   samples (cell centres) and held-out points, against the finite-sample floor of the same size
   (``harness.w2_floor``). Target: within 1.5x of the floor.

Usage (from the repository root):
    python benchmarks/discrete.py            # several minutes on one idle core
    python benchmarks/discrete.py --smoke --out /tmp/discrete_smoke.json   # seconds
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as `python benchmarks/discrete.py`: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fmlib  # noqa: E402
from benchmarks import adapters, harness  # noqa: E402

V, L = 17, 64  # grey levels, pixels


@dataclass(frozen=True)
class Config:
    """Everything a run depends on (the defaults are the full benchmark)."""

    path_draws: int = 200_000
    path_times: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    hidden: int = 256
    depth: int = 3
    train_steps: int = 4000
    batch: int = 128
    lr: float = 2e-3
    p_uncond: float = 0.2
    samples_per_class: int = 100
    steps: tuple[int, ...] = (16, 32, 64)
    guidance: float = 2.0
    timing_rounds: int = 5
    grid_bins: int = 32
    grid_train_steps: int = 3000
    grid_points: int = 2000
    seed: int = 0

    @classmethod
    def smoke(cls) -> Config:
        """Every part at toy sizes (seconds)."""
        return cls(
            path_draws=2000,
            path_times=(0.5,),
            hidden=32,
            depth=1,
            train_steps=5,
            samples_per_class=2,
            steps=(4,),
            timing_rounds=1,
            grid_train_steps=5,
            grid_points=100,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        kwargs: dict[str, Any] = {f.name: d[f.name] for f in fields(cls)}
        for k, v in kwargs.items():
            if isinstance(v, list):
                kwargs[k] = tuple(v)
        return cls(**kwargs)


def to_tokens(images: torch.Tensor) -> torch.Tensor:
    """load_digits_split's images (x / 8 - 1) back to scikit-learn's pixels 0..16, shape (B, 64)."""
    return ((images + 1) * 8).round().long().flatten(1)


def train(net: torch.nn.Module, path, data, steps, cfg: Config, cond=None, seed: int = 0) -> list[float]:
    """Adam with a cosine-decayed rate on discrete_cfm_loss (label dropout when cond is given)."""
    g = fmlib.seeded_generator(seed)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for _ in range(steps):
        i = torch.randint(0, data.shape[0], (cfg.batch,), generator=g)
        y = None if cond is None else fmlib.drop_labels(cond[i], cfg.p_uncond, 10, generator=g)
        loss = fmlib.discrete_cfm_loss(net, path, data[i], generator=g, cond=y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    net.eval()
    return losses


def path_check(cfg: Config, log) -> dict[str, Any]:
    fm_lib = {n: adapters.flow_matching_discrete(n) for n in (1.0, 2.0)}
    out: dict[str, Any] = {"rows": [], "max_velocity_difference": 0.0}
    x1 = torch.randint(0, V, (cfg.path_draws,), generator=fmlib.seeded_generator(cfg.seed))[:, None]
    x0 = torch.full_like(x1, V)
    for n, fm in fm_lib.items():
        ours = fmlib.MixtureDiscretePath(fmlib.PolynomialScheduler(n), V, "mask")
        for t in cfg.path_times:
            kappa = t**n
            share = float((ours.sample(x0, x1, t, generator=fmlib.seeded_generator(1)) == x1).double().mean())
            with torch.random.fork_rng():
                torch.random.manual_seed(cfg.seed)  # flow_matching draws from the global generator
                fm_x = fm["path"].sample(x_0=x0, x_1=x1, t=torch.full((x1.shape[0],), t)).x_t
            fm_share = float((fm_x == x1).double().mean())
            se = math.sqrt(kappa * (1 - kappa) / x1.numel())
            out["rows"].append(
                dict(
                    n=n,
                    t=t,
                    kappa=kappa,
                    fmlib=share,
                    flow_matching=fm_share,
                    se=se,
                    fmlib_z=(share - kappa) / se,
                    flow_matching_z=(fm_share - kappa) / se,
                )
            )
        logits = torch.randn(64, 8, V, generator=fmlib.seeded_generator(2), dtype=torch.float64)
        x = torch.randint(0, V + 1, (64, 8), generator=fmlib.seeded_generator(3))
        times = torch.rand(64, generator=fmlib.seeded_generator(4), dtype=torch.float64) * 0.95
        u = ours.velocity(torch.softmax(logits, -1), x, times)
        padded = torch.cat([logits, torch.full((64, 8, 1), -math.inf, dtype=torch.float64)], -1)
        diff = float((u - fm["path"].posterior_to_velocity(padded, x, times)).abs().max())
        out["max_velocity_difference"] = max(out["max_velocity_difference"], diff)
    out["max_abs_z"] = max(max(abs(r["fmlib_z"]), abs(r["flow_matching_z"])) for r in out["rows"])
    log(f"path check: max |z| {out['max_abs_z']:.2f}, velocity difference {out['max_velocity_difference']:.1e}")
    return out


def digits(cfg: Config, log) -> dict[str, Any]:
    split = fmlib.load_digits_split()
    x_train, y_train = to_tokens(split.x_train), split.y_train
    path = fmlib.MixtureDiscretePath(fmlib.CondOTScheduler(), V, "mask")
    torch.manual_seed(cfg.seed)  # the network's initial weights
    net = fmlib.TokenMLP(L, V, path.num_states, hidden=cfg.hidden, depth=cfg.depth, num_classes=10)
    with harness.Stopwatch() as watch:
        losses = train(net, path, x_train, cfg.train_steps, cfg, cond=y_train, seed=cfg.seed)
    clf = fmlib.DigitClassifier(hidden=64, seed=0).fit(split.x_train, split.y_train)
    fm = adapters.flow_matching_discrete(1.0)
    labels = torch.arange(10).repeat_interleave(cfg.samples_per_class)
    x0 = path.sample_source((labels.shape[0], L))

    def images(tokens: torch.Tensor) -> torch.Tensor:
        return (tokens.float() / 8 - 1).view(-1, 1, 8, 8)

    def ours(steps: int, w: float | None = None) -> torch.Tensor:
        g = fmlib.seeded_generator(cfg.seed + 10)
        return fmlib.sample_discrete(net, x0, path, steps, g, cond=labels, guidance=w, null_cond=10)

    def theirs(steps: int) -> torch.Tensor:
        with torch.random.fork_rng():
            torch.random.manual_seed(cfg.seed + 10)
            return adapters.sample_discrete_flow_matching(net, x0, steps, V, fm, cond=labels)

    rows = {}
    for steps in cfg.steps:
        t_ours: list[float] = []
        t_theirs: list[float] = []
        for _ in range(cfg.timing_rounds):  # interleaved: a change of load hits both alike
            t_ours.append(harness.timed(functools.partial(ours, steps), 1)[0])
            t_theirs.append(harness.timed(functools.partial(theirs, steps), 1)[0])
        a, b = sorted(t_ours)[len(t_ours) // 2], sorted(t_theirs)[len(t_theirs) // 2]
        x_ours, x_theirs, x_guided = ours(steps), theirs(steps), ours(steps, cfg.guidance)
        rows[str(steps)] = dict(
            seconds={"fmlib": a, "flow_matching": b},
            time_ratio=b / a,
            accuracy={
                "fmlib": clf.accuracy(images(x_ours), labels),
                "flow_matching": clf.accuracy(images(x_theirs), labels),
                "fmlib_guided": clf.accuracy(images(x_guided), labels),
            },
            masked_left={"fmlib": int((x_ours == V).sum()), "flow_matching": int((x_theirs == V).sum())},
        )
        log(f"digits, {steps} steps: {rows[str(steps)]}")
    return dict(
        train_seconds=watch.seconds,
        final_loss_per_pixel=sum(losses[-50:]) / min(50, len(losses)) / L,
        classifier_accuracy=clf.accuracy(split.x_test, split.y_test),
        samples=int(labels.shape[0]),
        rows=rows,
    )


def grid2d(cfg: Config, log) -> dict[str, Any]:
    lo, hi, bins = -3.5, 3.5, cfg.grid_bins
    width = (hi - lo) / bins

    def quantise(x: torch.Tensor) -> torch.Tensor:
        return ((x - lo) / width).floor().clamp(0, bins - 1).long()

    def decode(k: torch.Tensor) -> torch.Tensor:
        return lo + (k.double() + 0.5) * width

    g = fmlib.seeded_generator(cfg.seed + 20)
    data = quantise(fmlib.two_moons(max(4000, cfg.grid_points), generator=g))
    held = decode(quantise(fmlib.two_moons(cfg.grid_points, generator=g)))

    def draw() -> torch.Tensor:
        return decode(quantise(fmlib.two_moons(cfg.grid_points, generator=g)))

    floor = harness.w2_floor(held, draw)
    path = fmlib.MixtureDiscretePath(fmlib.CondOTScheduler(), bins, "mask")
    torch.manual_seed(cfg.seed)
    net = fmlib.TokenMLP(2, bins, path.num_states, hidden=max(32, cfg.hidden // 2), depth=2)
    train(net, path, data, cfg.grid_train_steps, cfg, seed=cfg.seed + 1)
    rows: dict[str, dict[str, float]] = {}
    for steps in cfg.steps:
        x = fmlib.sample_discrete(net, path.sample_source((cfg.grid_points, 2)), path, steps, g)
        w2 = fmlib.wasserstein2(decode(x), held)
        rows[str(steps)] = {"w2": w2, "ratio_to_floor": w2 / floor}
    out = {"floor": floor, "rows": rows}
    log(f"grid2d: {out}")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = harness.parser(__doc__, "discrete.json").parse_args(argv)
    cfg = Config.smoke() if args.smoke else Config()
    if args.smoke and args.out == str(harness.RESULTS / "discrete.json"):
        args.out = str(harness.RESULTS / "discrete_smoke.json")
    log = harness.logger(args.quiet)
    result = harness.new_result("discrete", cfg, args, libraries=("flow_matching", "sklearn"))
    result["path_check"] = path_check(cfg, log)
    result["digits"] = digits(cfg, log)
    result["grid2d"] = grid2d(cfg, log)
    harness.save(result, args.out)
    log(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
