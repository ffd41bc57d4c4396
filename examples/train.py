"""Train a flow matching model on one of the book's data sets with fmlib.train, from the command line.

The same command runs in one process or, unchanged, under torchrun on many GPUs or nodes::

    python examples/train.py --data moons --steps 2000
    torchrun --nproc_per_node=2 examples/train.py --data digits --steps 3000 --checkpoint-dir runs/digits
    python examples/train.py --data digits --steps 3000 --checkpoint-dir runs/digits --resume runs/digits

Data sets: the 2D sets of fmlib.DATASETS (an MLP), ``wine`` (scikit-learn's 178 x 13 table, standardised; an
MLP) and ``digits`` (scikit-learn's 8x8 digits; fmlib.DigitUNet with labels and label dropout). At the end,
rank 0 prints the held-out W2 (2D sets, wine) or the held-out class accuracy of guided samples (digits).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist

import fmlib


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="moons", choices=sorted(fmlib.DATASETS) + ["wine", "digits"])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=None, help="global minibatch (default 512; 128 for digits)")
    p.add_argument("--lr", type=float, default=None, help="peak rate (default: fmlib.Recipe's; 1e-3 for digits)")
    p.add_argument("--schedule", default="cosine", choices=["cosine", "constant"])
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay; 0 turns it off")
    p.add_argument("--precision", default="fp32", choices=sorted(fmlib.PRECISIONS))
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--resume", default=None, help="a checkpoint file or directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--n-train", type=int, default=10_000, help="points drawn for a 2D set")
    p.add_argument("--result", default=None, help="write the final metrics as JSON to this file (rank 0)")
    return p.parse_args(argv)


def setup_distributed(device_arg: str | None) -> tuple[torch.device, int, int]:
    """Under torchrun (RANK and WORLD_SIZE set): one process group, NCCL on GPUs and gloo on CPUs."""
    cuda = torch.cuda.is_available() and device_arg in (None, "cuda")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        local = int(os.environ.get("LOCAL_RANK", 0))
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
        device = torch.device("cuda", local) if cuda else torch.device("cpu")
        return device, dist.get_rank(), dist.get_world_size()
    return torch.device(device_arg or ("cuda" if cuda else "cpu")), 0, 1


def load(name: str, n_train: int, seed: int, device: torch.device):
    """(x_train, y_train or None, x_test, y_test or None, model) for a data set name."""
    if name == "digits":
        split = fmlib.load_digits_split(seed=seed, device=device)
        torch.manual_seed(seed)
        return split.x_train, split.y_train, split.x_test, split.y_test, fmlib.DigitUNet().to(device)
    if name == "wine":
        from sklearn.datasets import load_wine
        from sklearn.model_selection import train_test_split

        x = torch.tensor(load_wine().data, dtype=torch.float32)
        x_tr, x_te = train_test_split(x, test_size=0.25, random_state=seed)
        mean, std = x_tr.mean(0), x_tr.std(0)  # standardise with the training rows' statistics only
        torch.manual_seed(seed)
        model = fmlib.MLP(13, hidden=128, depth=3).to(device)
        return ((x_tr - mean) / std).to(device), None, ((x_te - mean) / std).to(device), None, model
    g = torch.Generator().manual_seed(seed)
    x_tr = fmlib.sample_data(name, n_train, generator=g).to(device)
    x_te = fmlib.sample_data(name, 1000, generator=g).to(device)
    torch.manual_seed(seed)
    return x_tr, None, x_te, None, fmlib.MLP(2, hidden=64, depth=3).to(device)


def evaluate(name, model, x_test, y_test, seed, device) -> dict[str, float]:
    g = torch.Generator(device=device).manual_seed(seed + 1)
    with torch.no_grad():
        if name == "digits":
            clf = fmlib.DigitClassifier(seed=0).fit(*_digits_train(seed))
            x0 = torch.randn(x_test.shape, generator=g, device=device)
            v = fmlib.guided_velocity(model, y_test, 2.0)
            samples = fmlib.integrate(v, x0, steps=50, method="midpoint")
            return {"guided_accuracy": float(clf.accuracy(samples.cpu(), y_test.cpu()))}
        x0 = torch.randn(x_test.shape, generator=g, device=device)
        samples = fmlib.integrate(model, x0, steps=100, method="rk4")
        return {"w2": fmlib.wasserstein2(samples.cpu(), x_test.cpu())}


def _digits_train(seed):
    split = fmlib.load_digits_split(seed=seed)
    return split.x_train, split.y_train


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device, rank, world = setup_distributed(args.device)
    try:
        x_train, y_train, x_test, y_test, model = load(args.data, args.n_train, args.seed, device)
        digits = args.data == "digits"
        lr = args.lr if args.lr is not None else (1e-3 if digits else fmlib.Recipe().lr)
        recipe = fmlib.Recipe(lr=lr, schedule=args.schedule, ema=args.ema or None)
        start = time.perf_counter()
        record = fmlib.train(
            model,
            fmlib.LinearPath() if digits else fmlib.GaussianPath(),
            x_train,
            args.steps,
            recipe=recipe,
            batch_size=args.batch_size or (128 if digits else 512),
            cond=y_train,
            p_uncond=0.2 if digits else 0.0,
            generator=torch.Generator(device=device).manual_seed(args.seed),
            eval_data=(x_test, y_test) if digits else x_test,
            progress=rank == 0 and sys.stderr.isatty(),
            checkpoint_dir=args.checkpoint_dir,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            precision=args.precision,
            compile=args.compile,
        )
        seconds = time.perf_counter() - start
        if rank == 0:
            result = {
                "data": args.data,
                "steps": args.steps,
                "processes": world,
                "device": str(device),
                "final_loss": sum(record[-50:]) / len(record[-50:]),
                "held_out_loss": record.eval_losses[-1],
                "seconds": seconds,
                **evaluate(args.data, model, x_test, y_test, args.seed, device),
            }
            print(json.dumps(result))
            if args.result:
                with open(args.result, "w") as f:
                    json.dump(result, f, indent=1)
    finally:
        if world > 1:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
