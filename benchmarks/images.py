"""Images at 28x28: a U-Net, a diffusion transformer (DiT) and a latent DiT on MNIST-5k, beside torchcfm's
conditional MNIST example, at equal training wall time; the checkpoints of chapter 13.

Data: ``fmlib.load_mnist_5k()`` (4,000 training and 1,000 held-out images, 400/100 per digit). One CPU thread.

1. **Step times**: each model's training step is timed inside its own loop (``fmlib.train`` for fmlib's models;
   torchcfm's example loop for torchcfm's ``UNetModel``) by a clock stamp at every forward pass, the models
   interleaved round after round so that a drift in the machine's speed hits all of them alike; the median of
   ``timing_rounds`` x ``timing_steps`` steps. Only this part is timed: run it on a
   quiet machine (``timing_quiet`` records whether the load stayed within the core used).
2. **Training at equal wall time**: ``steps`` fixes each model's step count, chosen so that steps x step time is
   about the same for every model (``train_minutes_at_step_time`` reports it). The step counts are fixed, so the
   trained weights (and every quality number below) do not depend on what else the machine does meanwhile. The
   latent DiT's budget covers its flow training only; the autoencoder (trained once, ``ae_steps`` steps, reusable
   for any latent model) is reported on its own.
3. **Evaluation**: ``n_eval`` samples (equal numbers per digit; ``n_eval_torchcfm`` for torchcfm's far slower
   network) with the midpoint rule, ``sampler_steps`` steps, guided with ``w`` (fmlib's models learn the null
   label with ``p_uncond``; torchcfm's example has no null label, so it is sampled conditionally, w = 1, beside the
   U-Net at w = 1). Metrics: ``fmlib.DigitClassifier`` (``classifier_hidden`` hidden units) trained on the
   training split: its held-out accuracy; the class accuracy of the samples; the Frechet distance (FD) of its
   hidden features between the samples and the training split, in units of the floor, the FD between as many
   held-out images (as many of each digit) and the training split; nearest-neighbour distances to the training
   split (copying): the share of samples closer to their nearest training image than the median held-out image
   is, and the number closer than the closest held-out image.

Checkpoints (float16 state dicts, with the command, commit and step counts that made them) go to
``benchmarks/checkpoints/`` (see its README); the chapter ``book/13_images_at_28x28.ipynb`` loads them.

Usage (from the repository root):
    python benchmarks/images.py            # the full run (about an hour on one core)
    python benchmarks/images.py --smoke --out /tmp/images_smoke.json   # a minute; writes no checkpoints
    python benchmarks/images.py --timing-only   # the step times again (quiet machine), into results/images.json
    python benchmarks/images.py --guidance-sweep   # each stored checkpoint at several w, into results/images.json

4. **Guidance sweep** (``--guidance-sweep``, after a full run): the stored float16 checkpoints (what chapter 13
   loads) sampled as in 3 at each w of ``SWEEP_WS``; the issue's targets are then judged on the model and w with
   the smallest FD among those whose class accuracy is at least 0.95.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as `python benchmarks/images.py`: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fmlib  # noqa: E402
from benchmarks import harness  # noqa: E402

CHECKPOINTS = harness.CHECKPOINTS
MODELS = ("unet", "dit", "latent_dit", "torchcfm_unet")
SWEEP_WS = (1.0, 1.5, 2.0, 3.0)


@dataclass(frozen=True)
class Config:
    """Everything a run depends on (the defaults are the full benchmark)."""

    # training steps per model: about equal wall time on one CPU thread (steps x the step times measured in the
    # same run, reported as "train_minutes_at_step_time")
    steps: dict = dataclasses.field(
        default_factory=lambda: {"unet": 3600, "dit": 4800, "latent_dit": 4800, "torchcfm_unet": 160}
    )
    batch: int = 64
    lr: float = 1e-3
    p_uncond: float = 0.1
    w: float = 2.0
    sampler_steps: int = 10
    n_eval: int = 500
    n_eval_torchcfm: int = 200
    timing_steps: int = 3
    timing_rounds: int = 3
    ae_steps: int = 600
    ae_batch: int = 64
    classifier_hidden: int = 256
    unet: dict = dataclasses.field(default_factory=lambda: {"image_size": 28, "channels": 16, "emb_dim": 64})
    dit: dict = dataclasses.field(
        default_factory=lambda: {"image_size": 28, "patch_size": 4, "dim": 64, "depth": 4, "heads": 4}
    )
    latent_dit: dict = dataclasses.field(
        default_factory=lambda: {"image_size": 7, "patch_size": 1, "in_channels": 4, "dim": 64, "depth": 4, "heads": 4}
    )
    autoencoder: dict = dataclasses.field(default_factory=lambda: {"latent_channels": 4})
    # torchcfm's examples/images/conditional_mnist.ipynb
    torchcfm_unet: dict = dataclasses.field(default_factory=lambda: {"num_channels": 32, "num_res_blocks": 1})
    seed: int = 0
    save_checkpoints: bool = True

    @classmethod
    def smoke(cls) -> Config:
        """A tiny run of every part (about a minute)."""
        return cls(
            steps={"unet": 3, "dit": 3, "latent_dit": 3, "torchcfm_unet": 2},
            batch=16,
            n_eval=40,
            n_eval_torchcfm=20,
            sampler_steps=2,
            timing_steps=1,
            timing_rounds=1,
            ae_steps=5,
            ae_batch=16,
            classifier_hidden=16,
            unet={"image_size": 28, "channels": 8, "emb_dim": 16},
            dit={"image_size": 28, "patch_size": 7, "dim": 32, "depth": 1, "heads": 2},
            latent_dit={"image_size": 7, "patch_size": 1, "in_channels": 4, "dim": 32, "depth": 1, "heads": 2},
            autoencoder={"latent_channels": 4, "channels": 8},
            torchcfm_unet={"num_channels": 32, "num_res_blocks": 1},  # GroupNorm(32) needs 32
            save_checkpoints=False,
        )

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """The Config stored in a result's ``config``."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ------------------------------------------------------------------------------------------------ the models
def build(name: str, cfg: Config) -> torch.nn.Module:
    """A freshly initialised network (the same seed for every model)."""
    torch.manual_seed(cfg.seed)
    if name == "unet":
        return fmlib.UNet(**cfg.unet)
    if name in ("dit", "latent_dit"):
        return fmlib.DiT(**getattr(cfg, name))
    if name == "torchcfm_unet":
        from torchcfm.models.unet import UNetModel

        return UNetModel(dim=(1, 28, 28), num_classes=10, class_cond=True, **cfg.torchcfm_unet)
    raise ValueError(f"unknown model {name!r}")


def trainer(name: str, cfg: Config, data: torch.Tensor, labels: torch.Tensor) -> Callable:
    """``fit(model, steps, seed)``: the model's own training loop."""
    if name == "torchcfm_unet":
        from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

        def fit(model, steps, seed):
            # torchcfm's examples/images/conditional_mnist.ipynb: Adam (default lr 1e-3), sigma = 0,
            # model(t, x_t, y), mean squared error; minibatches drawn with replacement here (a 5k set)
            torch.manual_seed(seed)
            fm = ConditionalFlowMatcher(sigma=0.0)
            opt = torch.optim.Adam(model.parameters())
            g = fmlib.seeded_generator(seed)
            model.train()
            for _ in range(steps):
                i = torch.randint(len(data), (cfg.batch,), generator=g)
                x1, y = data[i], labels[i]
                x0 = torch.randn(x1.shape, generator=g)
                t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1)
                loss = torch.mean((model(t, xt, y) - ut) ** 2)
                opt.zero_grad()
                loss.backward()
                opt.step()
            return model.eval()

        return fit

    def fit(model, steps, seed):
        fmlib.train(
            model,
            fmlib.LinearPath(),
            data,
            steps,
            recipe=fmlib.Recipe(lr=cfg.lr),
            batch_size=cfg.batch,
            cond=labels,
            p_uncond=cfg.p_uncond,
            generator=fmlib.seeded_generator(seed),
            progress=False,
        )
        return model

    return fit


def step_times(cfg: Config, fits: dict[str, Callable], log: Callable[[str], None]) -> dict[str, dict]:
    """Seconds per training step of each model, in interleaved rounds.

    A forward pre-hook stamps the clock at every training step's forward pass (each loop calls the network once
    per step), so the difference of consecutive stamps is one whole step: forward, backward, optimiser, EMA and
    the drawing of the batch. Each round trains a fresh model ``timing_steps + 2`` steps and keeps the
    differences after the first step (which carries the warm-up); the median over all rounds is returned.
    """
    per_step: dict[str, list[float]] = {name: [] for name in fits}
    for r in range(cfg.timing_rounds):
        for name, fit in fits.items():
            stamps: list[float] = []
            model = build(name, cfg)
            hook = model.register_forward_pre_hook(lambda module, args, s=stamps: s.append(time.perf_counter()))
            fit(model, cfg.timing_steps + 2, cfg.seed + 100 + r)
            hook.remove()
            per_step[name] += [b - a for a, b in zip(stamps[1:], stamps[2:])]
        times = ", ".join(f"{k} {statistics.median(v) * 1e3:.0f}" for k, v in per_step.items())
        log(f"step times (ms) after round {r}: {times}")
    return {name: {"median_s": statistics.median(v), "steps_s": v} for name, v in per_step.items()}


def add_step_times(result: dict, cfg: Config, fits: dict[str, Callable], log: Callable[[str], None]) -> None:
    """Measure the step times and put them (and the ratios that use them) into ``result``."""
    result["load_timing_start"] = harness.load_average()
    timing = step_times(cfg, fits, log)
    result["load_timing_end"] = harness.load_average()
    # quiet: the load stayed within the one core used (plus 0.5), as harness.is_quiet judges a whole run
    result["timing_quiet"] = max(result["load_timing_start"], result["load_timing_end"]) <= 1.5
    result["step_times"] = timing
    rows = result["models"]
    for name, row in rows.items():
        row["step_ms"] = 1e3 * timing[name]["median_s"]
        row["train_minutes_at_step_time"] = row["steps"] * timing[name]["median_s"] / 60
    result.setdefault("ratios", {}).update(
        {
            "unet_over_torchcfm_step_time": rows["unet"]["step_ms"] / rows["torchcfm_unet"]["step_ms"],
            "latent_dit_over_dit_step_time": rows["latent_dit"]["step_ms"] / rows["dit"]["step_ms"],
        }
    )


# ------------------------------------------------------------------------------------------------ evaluation
def sample(model: torch.nn.Module, name: str, labels: torch.Tensor, w: float, cfg: Config, shape) -> torch.Tensor:
    """Midpoint rule from N(0, I) noise (the same noise for every model of a shape); guided for fmlib's models."""
    x0 = torch.randn(labels.shape[0], *shape, generator=fmlib.seeded_generator(cfg.seed + 7))
    out = []
    with torch.no_grad():
        for start in range(0, labels.shape[0], 250):  # chunks: the guided field's batch stays small
            y = labels[start : start + 250]
            if name == "torchcfm_unet":
                field = lambda x, t, y=y: model(t, x, y)  # noqa: E731
            else:
                field = fmlib.guided_velocity(model, y, w)
            out.append(fmlib.integrate(field, x0[start : start + 250], steps=cfg.sampler_steps, method="midpoint"))
    return torch.cat(out)


def evaluate(images: torch.Tensor, labels: torch.Tensor, clf, ref: dict, n: int) -> dict:
    """Class accuracy, FD / floor (the floor of n held-out images) and nearest-neighbour (copying) numbers."""
    images = images.clamp(-1, 1)
    fd = fmlib.frechet_distance(clf.features(images), ref["train_features"])
    nn = fmlib.nearest_distances(images, ref["x_train"])
    return {
        "accuracy": clf.accuracy(images, labels),
        "fd": fd,
        "fd_over_floor": fd / ref["fd_floor"][n],
        "nn_median": float(nn.median()),
        "share_closer_than_median_test": float((nn < ref["nn_test_median"]).double().mean()),
        "closer_than_any_test": int((nn < ref["nn_test_min"]).sum()),
    }


def reference(cfg: Config, split) -> tuple:
    """The classifier and the reference numbers: training features, the FD floor of each sample size and the
    nearest-neighbour distances of the held-out images to the training split."""
    x_train, y_train, x_test, y_test = split.x_train, split.y_train, split.x_test, split.y_test
    clf = fmlib.DigitClassifier(hidden=cfg.classifier_hidden, seed=cfg.seed).fit(x_train, y_train)
    ref = {"x_train": x_train, "train_features": clf.features(x_train)}
    # the floor of n samples: FD(n held-out images, n / 10 of each digit, training split)
    ref["fd_floor"] = {}
    for n in sorted({cfg.n_eval, cfg.n_eval_torchcfm, len(x_test)}):
        held = torch.cat([x_test[y_test == c][: n // 10] for c in range(10)])
        ref["fd_floor"][n] = fmlib.frechet_distance(clf.features(held), ref["train_features"])
    nn_test = fmlib.nearest_distances(x_test, x_train)
    ref["nn_test_median"], ref["nn_test_min"] = float(nn_test.median()), float(nn_test.min())
    return clf, ref


def load_checkpoint(name: str, cfg: Config) -> torch.nn.Module:
    """A stored network with its float16 weights in float32, as chapter 13 loads it."""
    ckpt = torch.load(CHECKPOINTS / f"images_{name}.pt", map_location="cpu")
    model = fmlib.Autoencoder(**ckpt["kwargs"]) if name == "autoencoder" else build(name, cfg)
    model.load_state_dict({k: v.float() for k, v in ckpt["state_dict"].items()})
    return model.eval()


def guidance_sweep(result: dict, cfg: Config, split, log: Callable[[str], None]) -> None:
    """Every fmlib model's stored checkpoint at each w of SWEEP_WS; the targets on the best (model, w)."""
    clf, ref = reference(cfg, split)
    ae = load_checkpoint("autoencoder", cfg)
    labels = torch.arange(10).repeat_interleave(cfg.n_eval // 10)
    sweep = {}
    for name in ("unet", "dit", "latent_dit"):
        model = load_checkpoint(name, cfg)
        shape = (4, 7, 7) if name == "latent_dit" else tuple(split.x_train.shape[1:])
        sweep[name] = {}
        for w in SWEEP_WS:
            z = sample(model, name, labels, w, cfg, shape)
            with torch.no_grad():
                images = ae.decode(z) if name == "latent_dit" else z
            sweep[name][f"w={w:g}"] = evaluate(images, labels, clf, ref, cfg.n_eval)
        log(
            f"{name}: "
            + ", ".join(
                f"{w} acc {q['accuracy']:.3f} FD/floor {q['fd_over_floor']:.2f}" for w, q in sweep[name].items()
            )
        )
    result["guidance_sweep"] = {"ws": list(SWEEP_WS), "from": "the float16 checkpoints", "models": sweep}
    accurate = [
        (q["fd_over_floor"], name, w) for name, row in sweep.items() for w, q in row.items() if q["accuracy"] >= 0.95
    ]
    if accurate:
        _, name, w = min(accurate)
        b = sweep[name][w]
        result["best_swept"] = {"model": name, "w": float(w[2:]), **b}
        result["targets_swept"] = {
            "best_accuracy_at_least_0.95": True,
            "best_fd_within_3x_floor": b["fd_over_floor"] <= 3.0,
            "best_no_sample_closer_than_median_test": b["share_closer_than_median_test"] == 0.0,
            "best_no_sample_closer_than_any_test": b["closer_than_any_test"] == 0,
        }
    else:
        result["best_swept"], result["targets_swept"] = None, {"best_accuracy_at_least_0.95": False}


def main(argv: list[str] | None = None) -> dict:
    parser = harness.parser(__doc__, default_out="images.json")
    parser.add_argument(
        "--timing-only",
        action="store_true",
        help="measure the step times again (on a quiet machine) and update them in the result file --out",
    )
    parser.add_argument(
        "--guidance-sweep",
        action="store_true",
        help="sample the stored checkpoints at several guidance scales and update the result file --out",
    )
    args = parser.parse_args(argv)
    if args.smoke and args.out == parser.get_default("out"):
        args.out = str(harness.RESULTS / "images_smoke.json")
    log = harness.logger(args.quiet)
    split = fmlib.load_mnist_5k()
    x_train, y_train, x_test, y_test = split.x_train, split.y_train, split.x_test, split.y_test
    if args.guidance_sweep:
        result = harness.load(args.out)
        cfg = Config.from_dict(result["config"])
        torch.set_num_threads(args.threads)
        guidance_sweep(result, cfg, split, log)
        log(f"updated the guidance sweep in {harness.write_json(args.out, result) or args.out}")
        return result
    if args.timing_only:  # the step time does not depend on the values of the latents: random ones will do
        result = harness.load(args.out)
        cfg = Config.from_dict(result["config"])
        torch.set_num_threads(args.threads)
        z = torch.randn(len(x_train), 4, 7, 7, generator=fmlib.seeded_generator(0))
        fits = {name: trainer(name, cfg, z if name == "latent_dit" else x_train, y_train) for name in MODELS}
        add_step_times(result, cfg, fits, log)
        result["timing_command"] = " ".join(["benchmarks/images.py", *(sys.argv[1:] if argv is None else argv)])
        log(f"updated the step times in {harness.write_json(args.out, result) or args.out}")
        return result
    cfg = Config.smoke() if args.smoke else Config()
    result = harness.new_result("images", cfg, args, libraries=("torchcfm",), argv=argv)

    # the autoencoder and the latents of the training images (encoded once, without a graph)
    torch.manual_seed(cfg.seed)
    ae = fmlib.Autoencoder(**cfg.autoencoder)
    start = time.perf_counter()
    ae_losses = fmlib.train_autoencoder(
        ae, x_train, cfg.ae_steps, cfg.ae_batch, generator=fmlib.seeded_generator(cfg.seed + 1), progress=False
    )
    ae_seconds = time.perf_counter() - start
    z_train = ae.encode_dataset(x_train)
    with torch.no_grad():
        recon = ae.decode(ae.encode_dataset(x_test))
    ae_mse = float((recon - x_test).pow(2).mean())
    log(f"autoencoder: {cfg.ae_steps} steps in {ae_seconds:.0f} s, held-out MSE {ae_mse:.4f}")

    fits = {
        "unet": trainer("unet", cfg, x_train, y_train),
        "dit": trainer("dit", cfg, x_train, y_train),
        "latent_dit": trainer("latent_dit", cfg, z_train, y_train),
        "torchcfm_unet": trainer("torchcfm_unet", cfg, x_train, y_train),
    }

    start = time.perf_counter()
    clf, ref = reference(cfg, split)
    result["reference"] = {
        "classifier_test_accuracy": clf.accuracy(x_test, y_test),
        "classifier_fit_seconds": time.perf_counter() - start,
        "fd_floor": {str(n): v for n, v in ref["fd_floor"].items()},
        "nn_test_median": ref["nn_test_median"],
        "nn_test_min": ref["nn_test_min"],
        "n_train": len(x_train),
        "n_test": len(x_test),
    }
    result["autoencoder"] = {
        "steps": cfg.ae_steps,
        "train_seconds": ae_seconds,
        "test_mse": ae_mse,
        "final_loss": float(np.mean(ae_losses[-50:])),
        "parameters": sum(p.numel() for p in ae.parameters()),
        "latent_shape": list(z_train.shape[1:]),
        "compression": x_train[0].numel() / z_train[0].numel(),
    }

    rows = {}
    for name, fit in fits.items():
        steps = cfg.steps[name]
        model = build(name, cfg)
        start = time.perf_counter()
        fit(model, steps, cfg.seed + 1)
        train_seconds = time.perf_counter() - start
        n = cfg.n_eval_torchcfm if name == "torchcfm_unet" else cfg.n_eval
        labels = torch.arange(10).repeat_interleave(n // 10)
        shape = z_train.shape[1:] if name == "latent_dit" else x_train.shape[1:]
        decode = ae.decode if name == "latent_dit" else (lambda z: z)
        row = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "steps": steps,
            "train_seconds_this_run": train_seconds,
            "nfe_per_sample": 2 * cfg.sampler_steps,  # midpoint: two evaluations of the field per step
            "n_eval": n,
        }
        # torchcfm's example has no null label: conditional sampling (w = 1); the U-Net also at w = 1 beside it
        ws = {"torchcfm_unet": (1.0,), "unet": (1.0, cfg.w)}.get(name, (cfg.w,))
        for w in ws:
            start = time.perf_counter()
            z = sample(model, name, labels, w, cfg, shape)
            with torch.no_grad():
                images = decode(z)
            row[f"w={w:g}"] = {
                **evaluate(images, labels, clf, ref, n),
                "sample_seconds": time.perf_counter() - start,
            }
        rows[name] = row
        done = ", ".join(
            f"{w} acc {q['accuracy']:.3f} FD/floor {q['fd_over_floor']:.2f}" for w, q in row.items() if w[:2] == "w="
        )
        log(f"{name}: {steps} steps in {train_seconds:.0f} s, {done}")
        if cfg.save_checkpoints and name != "torchcfm_unet":
            row["checkpoint"] = harness.save_checkpoint(
                f"images_{name}.pt",
                model,
                result["meta"],
                kwargs=getattr(cfg, name),
                steps=steps,
                p_uncond=cfg.p_uncond,
            )
    if cfg.save_checkpoints:
        result["autoencoder"]["checkpoint"] = harness.save_checkpoint(
            "images_autoencoder.pt", ae, result["meta"], kwargs=cfg.autoencoder, steps=cfg.ae_steps
        )
    result["models"] = rows
    # the step times last: the only timed part, measured after the long work (see the module's docstring)
    add_step_times(result, cfg, fits, log)

    guided = {k: v[f"w={cfg.w:g}"] for k, v in rows.items() if k != "torchcfm_unet"}
    best = min(guided, key=lambda k: guided[k]["fd_over_floor"])
    b = guided[best]
    result["best"] = best
    ours, theirs = rows["unet"]["w=1"], rows["torchcfm_unet"]["w=1"]
    result["ratios"].update(
        {
            "unet_over_torchcfm_fd_over_floor_w1": ours["fd_over_floor"] / theirs["fd_over_floor"],
            "latent_dit_over_dit_fd": guided["latent_dit"]["fd"] / guided["dit"]["fd"],
            "latent_dit_over_unet_fd": guided["latent_dit"]["fd"] / guided["unet"]["fd"],
        }
    )
    result["targets"] = {
        "best_accuracy_at_least_0.95": b["accuracy"] >= 0.95,
        "best_fd_within_3x_floor": b["fd_over_floor"] <= 3.0,
        "best_no_sample_closer_than_median_test": b["share_closer_than_median_test"] == 0.0,
        "best_no_sample_closer_than_any_test": b["closer_than_any_test"] == 0,
        "unet_matches_torchcfm_w1": ours["fd_over_floor"] <= theirs["fd_over_floor"]
        and ours["accuracy"] >= theirs["accuracy"],
    }
    log(f"wrote {harness.save(result, args.out)}")
    return result


if __name__ == "__main__":
    main()
