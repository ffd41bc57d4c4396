"""What fmlib.train's options cost and buy: its overhead over a bare loop, mixed precision, torch.compile, and two
processes against one.

1. Overhead. ``fmlib.train`` with the default ``Recipe()`` (AdamW without decay = Adam, warm-up + cosine
   schedule, EMA 0.999) against a bare PyTorch loop doing the same work (the same draws of indices, x0 and t,
   the straight-line CFM loss, ``torch.optim.Adam``, the same ``LambdaLR`` factor, ``fmlib.EMA``) on the 3x64
   MLP at batch 512, one thread. Both run in interleaved blocks of steps (order alternated); reported: the median
   over rounds of the ratio of the two blocks of a round (a paired ratio, which slow drifts of the machine's
   speed cancel out of), with the median per-step times.
2. Precision and compilation on an image network (``fmlib.DigitUNet()``, chapter 7's U-Net, on the 8x8 digits,
   batch 64, class labels with label dropout): fp32 eager, bf16, fp16, fp32 compiled and
   bf16 compiled. Each trains the same steps from the same initial weights and draws; reported: the median step
   time after a warm-up (compilation excluded) and the held-out CFM loss at the end, both as ratios to fp32 eager.
3. Two processes x one thread (``torch.distributed``, gloo, loopback) against one process x two threads on the
   same network, global batch and steps: throughput ratio.

The machine's load (1-minute average) is recorded at the start and the end; a result taken while the load
exceeded the cores the run uses plus 0.5 is marked ``"quiet": false``, and the book does not show it.

Usage (from the repository root, alone on the machine):
    python benchmarks/training_scale.py                    # about 10 minutes, alone on two cores
    python benchmarks/training_scale.py --smoke --out /tmp/scale_smoke.json
"""

from __future__ import annotations

import copy
import math
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as `python benchmarks/training_scale.py`: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fmlib  # noqa: E402
from benchmarks import harness  # noqa: E402


@dataclass(frozen=True)
class Config:
    overhead_block_steps: int = 100
    overhead_rounds: int = 25
    image_steps: int = 150
    image_timing_steps: int = 10
    image_channels: int = 32
    image_size: int = 8
    image_batch: int = 64
    precisions: tuple[str, ...] = ("fp32", "bf16", "fp16", "fp32+compile", "bf16+compile")
    ddp_steps: int = 60
    ddp_warmup: int = 10
    seed: int = 0

    @classmethod
    def smoke(cls) -> Config:
        return cls(
            overhead_block_steps=10,
            overhead_rounds=2,
            image_steps=6,
            image_timing_steps=3,
            image_channels=8,
            precisions=("fp32", "bf16"),
            ddp_steps=4,
            ddp_warmup=2,
        )


# -- 1. overhead ---------------------------------------------------------------------------------------------------


def bare_loop(model, data, steps, generator, lr=3e-2, ema_decay=0.999):
    """The work fmlib.train does with Recipe() on tensor data, written out with PyTorch alone."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    warm = round(0.05 * steps)

    def factor(k):
        if k < warm:
            return (k + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (k - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    ema = fmlib.EMA(model, ema_decay)
    losses = torch.empty(steps)
    for k in range(steps):
        idx = torch.randint(0, data.shape[0], (512,), generator=generator)
        x1 = data[idx]
        x0 = torch.randn(x1.shape, generator=generator)
        t = torch.rand(512, generator=generator)
        tt = t[:, None]
        x_t = (1 - tt) * x0 + tt * x1
        loss = (model(x_t, t) - (x1 - x0)).pow(2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema.update()
        losses[k] = loss.detach()
    ema.copy_to()
    return losses


def measure_overhead(cfg: Config, log) -> dict:
    data = fmlib.two_moons(20_000, generator=torch.Generator().manual_seed(cfg.seed))
    torch.manual_seed(cfg.seed)
    base = fmlib.MLP(2, hidden=64, depth=3)
    n = cfg.overhead_block_steps
    times = {"fmlib.train": [], "bare loop": []}

    def run_fmlib():
        fmlib.train(
            copy.deepcopy(base),
            fmlib.LinearPath(),
            data,
            n,
            batch_size=512,
            generator=torch.Generator().manual_seed(1),
            progress=False,
        )

    def run_bare():
        bare_loop(copy.deepcopy(base), data, n, torch.Generator().manual_seed(1))

    # the same steps: identical losses show that the bare loop does the same work
    torch.manual_seed(0)
    a = fmlib.train(
        copy.deepcopy(base),
        fmlib.LinearPath(),
        data,
        n,
        batch_size=512,
        generator=torch.Generator().manual_seed(1),
        progress=False,
    )
    b = bare_loop(copy.deepcopy(base), data, n, torch.Generator().manual_seed(1))
    max_rel = float(((torch.tensor(list(a)) - b).abs() / b.abs()).max())
    run_fmlib(), run_bare()  # warm-up
    for r in range(cfg.overhead_rounds):
        order = [("fmlib.train", run_fmlib), ("bare loop", run_bare)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / n)
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = [a / b for a, b in zip(times["fmlib.train"], times["bare loop"])]
    ratio = statistics.median(paired)
    log(
        f"overhead: fmlib.train {1e3 * med['fmlib.train']:.3f} ms/step, bare {1e3 * med['bare loop']:.3f}: {ratio:.3f}x"
    )
    return {
        "ms_per_step": {k: 1e3 * v for k, v in med.items()},
        "all_ms_per_step": {k: [1e3 * x for x in v] for k, v in times.items()},
        "ratio": ratio,
        "paired_ratios": paired,
        "losses_max_relative_difference": max_rel,
    }


# -- 2. precision and compilation ----------------------------------------------------------------------------------


def image_data(cfg: Config):
    split = fmlib.load_digits_split(seed=cfg.seed)
    up = lambda x: F.interpolate(x, size=cfg.image_size, mode="bilinear", align_corners=False)  # noqa: E731
    return up(split.x_train), split.y_train, up(split.x_test), split.y_test


def image_model(cfg: Config):
    torch.manual_seed(cfg.seed)
    return fmlib.DigitUNet(channels=cfg.image_channels, image_size=cfg.image_size)


def held_out_loss(model, x, y):
    with torch.no_grad():
        return float(fmlib.cfm_loss(model, fmlib.LinearPath(), x, generator=torch.Generator().manual_seed(5), cond=y))


def measure_precision(cfg: Config, log) -> dict:
    x, y, xt, yt = image_data(cfg)
    rows = {}
    for variant in cfg.precisions:
        precision, _, compiled = variant.partition("+")
        kw = dict(
            recipe=fmlib.Recipe(lr=1e-3),
            batch_size=cfg.image_batch,
            cond=y,
            p_uncond=0.2,
            progress=False,
            precision=precision,
            compile=bool(compiled),
        )
        # timing: a short run after a warm-up run (which pays for compilation)
        model = image_model(cfg)
        fmlib.train(model, fmlib.LinearPath(), x, 3, generator=torch.Generator().manual_seed(2), **kw)
        start = time.perf_counter()
        fmlib.train(
            model, fmlib.LinearPath(), x, cfg.image_timing_steps, generator=torch.Generator().manual_seed(3), **kw
        )
        step = (time.perf_counter() - start) / cfg.image_timing_steps
        # quality: the full run from the common initial weights
        model = image_model(cfg)
        start = time.perf_counter()
        rec = fmlib.train(
            model, fmlib.LinearPath(), x, cfg.image_steps, generator=torch.Generator().manual_seed(1), **kw
        )
        total = time.perf_counter() - start
        rows[variant] = {
            "ms_per_step": 1e3 * step,
            "run_seconds": total,
            "held_out_loss": held_out_loss(model, xt, yt),
            "final_train_loss": statistics.fmean(rec[-20:]),
        }
        log(
            f"{variant}: {1e3 * step:.1f} ms/step, run {total:.1f} s, "
            f"held-out loss {rows[variant]['held_out_loss']:.4f}"
        )
    ref = rows["fp32"]
    for row in rows.values():
        row["step_time_ratio"] = row["ms_per_step"] / ref["ms_per_step"]
        row["loss_ratio"] = row["held_out_loss"] / ref["held_out_loss"]
    return rows


# -- 3. two processes against one ----------------------------------------------------------------------------------


def _ddp_worker(rank, world, port, cfg, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        seconds = _timed_run(cfg)
        if rank == 0:
            Path(out).write_text(repr(seconds))
    finally:
        dist.destroy_process_group()


def _timed_run(cfg: Config) -> float:
    x, y, _, _ = image_data(cfg)
    model = image_model(cfg)
    kw = dict(recipe=fmlib.Recipe(lr=1e-3), batch_size=cfg.image_batch, cond=y, p_uncond=0.2, progress=False)
    fmlib.train(model, fmlib.LinearPath(), x, cfg.ddp_warmup, generator=torch.Generator().manual_seed(2), **kw)
    rec = fmlib.train(model, fmlib.LinearPath(), x, cfg.ddp_steps, generator=torch.Generator().manual_seed(3), **kw)
    return rec.seconds


def measure_ddp(cfg: Config, log) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    one = _timed_run(cfg)
    torch.set_num_threads(threads)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "seconds")
        torch.multiprocessing.spawn(_ddp_worker, args=(2, port, cfg, out), nprocs=2)
        two = float(Path(out).read_text())
    ratio = one / two
    log(f"DDP: 1 process x 2 threads {one:.2f} s, 2 processes x 1 thread {two:.2f} s: throughput ratio {ratio:.2f}")
    return {
        "one_process_two_threads_seconds": one,
        "two_processes_one_thread_seconds": two,
        "throughput_ratio": ratio,
        "steps": cfg.ddp_steps,
    }


def main(argv=None):
    args = harness.parser(__doc__, default_out="training_scale.json").parse_args(argv)
    cfg = Config.smoke() if args.smoke else Config()
    log = harness.logger(args.quiet)
    result = harness.new_result("training_scale", cfg, args)
    result["meta"]["cores_used"] = 2  # the two-process section uses both cores
    result["overhead"] = measure_overhead(cfg, log)
    result["precision"] = measure_precision(cfg, log)
    result["ddp"] = measure_ddp(cfg, log)
    out = harness.save(result, args.out)
    log(f"wrote {out} (quiet: {result['meta']['quiet']})")
    return result


if __name__ == "__main__":
    main()
