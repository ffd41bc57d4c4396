"""Few-step generation on images: the 8x8 digits with guidance, by class accuracy and Frechet distance after 1, 2,
4 and 100 evaluations, against the data floor; the checkpoints of the few-step chapter's image section.

Data: ``fmlib.load_digits_split()`` (1,437 training and 360 held-out 8x8 digits), one CPU thread. Every network is
chapter 7's U-Net (``fmlib.DigitUNet``, or ``fmlib.UNet`` with the same layers and ``two_times=True``), batch
``batch``, guided with ``w`` (``fmlib.guided_velocity``, label dropout ``p_uncond`` in training):

* **teacher** (I-CFM): ``fmlib.train`` with ``LinearPath()`` and ``Recipe(lr=lr)``, ``steps`` steps; sampled with
  guided Euler (1, 2, 4 NFE) and the midpoint rule (100 NFE: 50 steps), the reference;
* **distilled**: progressive distillation of the *guided* teacher (``fmlib.progressive_distillation_loss``), from
  ``teacher_steps`` Euler steps down to 1, ``round_steps`` steps per round, each student starting from its
  teacher's weights; the students are conditional models with the guidance built in (one network pass per step);
* **2-rectified**: ``pairs`` noise points pushed through the guided teacher (``fmlib.reflow_pairs``, 20 RK4
  steps) with random labels, then ``fmlib.train`` on the fixed (noise, image, label) triples for ``steps`` steps
  from the teacher's weights (no label dropout: the guidance is in the pairs); sampled with Euler;
* **MeanFlow**: ``fmlib.meanflow_loss`` on a two-time U-Net ``u(x, r, t, y)`` with label dropout, ``steps`` steps
  (the chapter's loop: Adam, cosine schedule, EMA 0.999); sampled with ``fmlib.sample_flow_map`` on the guided
  average velocity (``guided_velocity`` of the two-time model: the combination of the conditional and the
  unconditional jump, which is exact guidance only in the limit of many jumps).

NFE counts evaluations of the sampler's field. A guided field (teacher, MeanFlow) evaluates the network on the
conditional and the null label in one batch of 2B; a distilled or rectified student needs one batch of B.

Evaluation as in chapter 7: ``fmlib.DigitClassifier(hidden=64)`` trained on the training split; for the 360
held-out labels, class accuracy of the samples and the Frechet distance (FD) of the classifier's features to the
held-out set, in units of the floor, the FD of 360 training images to the held-out set. Each method's training
wall time and steps are recorded (run it alone: the times are what compare).

Usage (from the repository root):
    python benchmarks/few_step_digits.py            # the full run (about 15 minutes on one core)
    python benchmarks/few_step_digits.py --smoke --out /tmp/few_step_digits_smoke.json   # a minute, no checkpoints
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as `python benchmarks/few_step_digits.py`: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fmlib  # noqa: E402
from benchmarks import harness  # noqa: E402
from benchmarks.few_step import fit  # noqa: E402

METHODS = ("teacher", "distilled", "rectified2", "meanflow")


@dataclass(frozen=True)
class Config:
    """Everything a run depends on (the defaults are the full benchmark)."""

    channels: int = 16
    emb_dim: int = 64
    batch: int = 128
    steps: int = 2000
    lr: float = 2e-3
    p_uncond: float = 0.1
    w: float = 2.0
    teacher_steps: int = 32
    round_steps: int = 400
    distill_lr: float = 5e-4
    pairs: int = 8192
    meanflow_lr: float = 2e-3
    nfes: tuple[int, ...] = (1, 2, 4, 100)
    seed: int = 0
    save_checkpoints: bool = True

    @classmethod
    def smoke(cls) -> Config:
        """A tiny run of every part (about a minute)."""
        return cls(
            channels=8, emb_dim=16, batch=32, steps=4, teacher_steps=4, round_steps=2, pairs=64, save_checkpoints=False
        )

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """The Config stored in a result's ``config``."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})


def network(cfg: Config, two_times: bool = False) -> torch.nn.Module:
    """Chapter 7's U-Net (the same layers and initial weights for a given seed), one or two times."""
    torch.manual_seed(cfg.seed)
    if two_times:
        kwargs = dict(image_size=8, channels=cfg.channels, channel_mults=(1, 2), emb_dim=cfg.emb_dim, attention=False)
        return fmlib.UNet(**kwargs, two_times=True)
    return fmlib.DigitUNet(channels=cfg.channels, emb_dim=cfg.emb_dim)


def train_all(cfg: Config, x: torch.Tensor, y: torch.Tensor, log: Callable[[str], None]) -> tuple[dict, dict]:
    """Every method's networks and training wall time (seconds)."""
    path, null = fmlib.LinearPath(), fmlib.NUM_CLASSES
    nets, wall = {}, {}

    start = time.perf_counter()
    teacher = network(cfg)
    fmlib.train(
        teacher,
        path,
        x,
        cfg.steps,
        recipe=fmlib.Recipe(lr=cfg.lr),
        batch_size=cfg.batch,
        cond=y,
        p_uncond=cfg.p_uncond,
        generator=fmlib.seeded_generator(cfg.seed + 1),
        progress=False,
    )
    nets["teacher"], wall["teacher"] = teacher.eval(), time.perf_counter() - start
    log(f"teacher: {cfg.steps} steps in {wall['teacher']:.0f} s")

    # progressive distillation of the guided teacher: the first round's teacher is the guided field
    start = time.perf_counter()
    students, previous, k = {}, None, cfg.teacher_steps // 2
    while k >= 1:
        student = network(cfg)
        student.load_state_dict((previous or teacher).state_dict())

        def loss(m, x1, labels, g, previous=previous, k=k):
            if previous is None:
                field = fmlib.guided_velocity(teacher, labels, cfg.w)
            else:
                field = lambda xt, t: previous(xt, t, labels)  # noqa: E731
            return fmlib.progressive_distillation_loss(
                lambda xt, t: m(xt, t, labels), field, path, x1, steps=k, generator=g
            )

        students[k] = previous = fit(
            student, loss, x, cfg, cfg.round_steps, cfg.seed + 10 + k, cfg.distill_lr, labels=y
        )
        k //= 2
    nets["distilled"], wall["distilled"] = students, time.perf_counter() - start
    log(f"distilled: {len(students)} rounds of {cfg.round_steps} steps in {wall['distilled']:.0f} s")

    # 2-rectified: (noise, image, label) triples from the guided teacher, then a conditional model on them
    start = time.perf_counter()
    gp = fmlib.seeded_generator(cfg.seed + 8)
    x0p = torch.randn(cfg.pairs, *x.shape[1:], generator=gp)
    yp = torch.randint(10, (cfg.pairs,), generator=gp)
    with torch.no_grad():
        x0p, x1p = fmlib.reflow_pairs(fmlib.guided_velocity(teacher, yp, cfg.w), x0p, steps=20)
    rf2 = network(cfg)
    rf2.load_state_dict(teacher.state_dict())
    fmlib.train(
        rf2,
        path,
        x1p,
        cfg.steps,
        recipe=fmlib.Recipe(lr=cfg.lr),
        batch_size=cfg.batch,
        cond=yp,
        source=x0p,
        generator=fmlib.seeded_generator(cfg.seed + 9),
        progress=False,
    )
    nets["rectified2"], wall["rectified2"] = rf2.eval(), time.perf_counter() - start
    log(f"2-rectified: {cfg.pairs} pairs and {cfg.steps} steps in {wall['rectified2']:.0f} s")

    start = time.perf_counter()
    times = fmlib.logit_normal(0.4, 1.0)

    def mf_loss(m, x1, labels, g):
        drop = torch.rand(labels.shape, generator=g) < cfg.p_uncond
        labels = torch.where(drop, torch.full_like(labels, null), labels)
        return fmlib.meanflow_loss(lambda xr, r, t: m(xr, r, t, labels), path, x1, generator=g, time_sampler=times)

    nets["meanflow"] = fit(
        network(cfg, two_times=True), mf_loss, x, cfg, cfg.steps, cfg.seed + 5, cfg.meanflow_lr, labels=y
    )
    wall["meanflow"] = time.perf_counter() - start
    log(f"MeanFlow: {cfg.steps} steps in {wall['meanflow']:.0f} s")
    return nets, wall


def samplers(nets: dict, labels: torch.Tensor, w: float) -> dict[str, Callable[[torch.Tensor, int], torch.Tensor]]:
    """``sample(z, nfe)`` of every method (None where a method has no sampler with that NFE)."""
    teacher, students, rf2, mf = nets["teacher"], nets["distilled"], nets["rectified2"], nets["meanflow"]
    guided = fmlib.guided_velocity(teacher, labels, w)

    def teacher_sample(z, n):
        if n >= 8:  # the reference: the midpoint rule, two evaluations per step
            return fmlib.integrate(guided, z, steps=n // 2, method="midpoint")
        return fmlib.integrate(guided, z, steps=n)

    def distilled_sample(z, n):
        return fmlib.integrate(lambda x, t: students[n](x, t, labels), z, steps=n) if n in students else None

    return {
        "teacher": teacher_sample,
        "distilled": distilled_sample,
        "rectified2": lambda z, n: fmlib.integrate(lambda x, t: rf2(x, t, labels), z, steps=n),
        "meanflow": lambda z, n: fmlib.sample_flow_map(fmlib.guided_velocity(mf, labels, w), z, n),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = harness.parser(__doc__, default_out="few_step_digits.json")
    args = parser.parse_args(argv)
    if args.smoke and args.out == parser.get_default("out"):
        args.out = str(harness.RESULTS / "few_step_digits_smoke.json")  # a smoke run never overwrites the results
    cfg = Config.smoke() if args.smoke else Config()
    result = harness.new_result("few_step_digits", cfg, args, argv=argv)
    log = harness.logger(args.quiet)
    split = fmlib.load_digits_split()
    x_train, y_train, x_test, y_test = split.x_train, split.y_train, split.x_test, split.y_test

    nets, wall = train_all(cfg, x_train, y_train, log)

    clf = fmlib.DigitClassifier(hidden=64, seed=cfg.seed).fit(x_train, y_train)
    f_test = clf.features(x_test)
    perm = torch.randperm(len(x_train), generator=fmlib.seeded_generator(cfg.seed + 7))[: len(x_test)]
    floor = fmlib.frechet_distance(clf.features(x_train[perm]), f_test)
    result["reference"] = {"classifier_test_accuracy": clf.accuracy(x_test, y_test), "fd_floor": floor}

    z = torch.randn(x_test.shape, generator=fmlib.seeded_generator(cfg.seed + 20))
    methods = {}
    with torch.no_grad():
        for name, sample in samplers(nets, y_test, cfg.w).items():
            rows = {}
            for n in cfg.nfes:
                images = sample(z, n)
                if images is None:
                    continue
                images = images.clamp(-1, 1)
                fd = fmlib.frechet_distance(clf.features(images), f_test)
                rows[str(n)] = {"accuracy": clf.accuracy(images, y_test), "fd": fd, "fd_over_floor": fd / floor}
            methods[name] = {"quality": rows, "train_seconds": wall[name]}
            log(
                f"{name}: "
                + ", ".join(
                    f"NFE {n} acc {q['accuracy']:.3f} FD/floor {q['fd_over_floor']:.2f}" for n, q in rows.items()
                )
            )
    rounds = cfg.teacher_steps.bit_length() - 1
    methods["teacher"]["train_steps"] = cfg.steps
    methods["distilled"]["train_steps"] = cfg.steps + rounds * cfg.round_steps  # the teacher's, then the rounds
    methods["rectified2"]["train_steps"] = 2 * cfg.steps
    methods["meanflow"]["train_steps"] = cfg.steps
    result["methods"] = methods
    few = [m for m in METHODS if m != "teacher"]
    best1 = min(few, key=lambda m: methods[m]["quality"]["1"]["fd_over_floor"])
    best2 = min(few, key=lambda m: methods[m]["quality"]["2"]["fd_over_floor"])
    result["best_one_step"] = {"method": best1, **methods[best1]["quality"]["1"]}
    result["best_two_steps"] = {"method": best2, **methods[best2]["quality"]["2"]}

    if cfg.save_checkpoints:
        common = {"channels": cfg.channels, "emb_dim": cfg.emb_dim, "w": cfg.w}
        files = {
            "teacher": harness.save_checkpoint(
                "few_step_digits_teacher.pt", nets["teacher"], result["meta"], **common, steps=cfg.steps
            ),
            "meanflow": harness.save_checkpoint(
                "few_step_digits_meanflow.pt", nets["meanflow"], result["meta"], **common, steps=cfg.steps
            ),
            "rectified2": harness.save_checkpoint(
                "few_step_digits_rectified2.pt", nets["rectified2"], result["meta"], **common
            ),
        }
        for k in (1, 2):
            files[f"distilled_{k}"] = harness.save_checkpoint(
                f"few_step_digits_distilled_{k}.pt", nets["distilled"][k], result["meta"], **common
            )
        result["checkpoints"] = files
    log(f"wrote {harness.save(result, args.out)}")
    return result


if __name__ == "__main__":
    main()
