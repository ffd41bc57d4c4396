"""One contract for every public function of fmlib: bad input raises TypeError (wrong kind of object) or
ValueError (right kind, value out of range), with a message that names the argument.

Each row of ``BAD_INPUTS`` is (public name, call, expected exception, a substring naming the argument).
``test_every_public_callable_has_a_row`` keeps the table complete as fmlib grows.
"""

import json
import pathlib

import numpy as np
import pytest
import torch

import fmlib
from fmlib import (
    MLP,
    AffinePath,
    CondOTScheduler,
    CosineScheduler,
    DigitClassifier,
    DigitUNet,
    DiscreteEmpiricalMarginal,
    EmpiricalMarginal,
    FixedStepMethod,
    GaussianPath,
    LinearPath,
    MixtureDiscretePath,
    NFECounter,
    PolynomialScheduler,
    Recipe,
    SchrodingerBridgePath,
    TokenMLP,
    VPScheduler,
    cfg_combine,
    cfm_loss,
    change_scheduler,
    checkerboard,
    discrete_cfm_loss,
    divergence,
    drop_labels,
    eight_gaussians,
    euler_maruyama,
    euler_step,
    frechet_distance,
    frechet_distance_gaussians,
    guided_velocity,
    heun_step,
    image_grid,
    integrate,
    integrate_adaptive,
    integrate_sde,
    load_digits_split,
    log_likelihood,
    midpoint_step,
    minibatch_ot,
    nearest_distances,
    normalized_path_energy,
    ot_assignment,
    path_energy,
    reflow_pairs,
    register_solver,
    rk4_step,
    s_curve,
    sample_data,
    sample_discrete,
    seeded_generator,
    sinkhorn_coupling,
    spirals,
    straightness,
    time_grid,
    train,
    two_moons,
    wasserstein2,
)

# Public names that are not functions to call with arguments: data containers and the abstract base class.
NOT_CHECKED = {"PathSample", "ProbPath", "DigitsSplit", "Scheduler", "SchedulerOutput"}

X = torch.zeros(4, 2)
IMAGES = torch.zeros(3, 1, 8, 8)


def v(x, t):
    return -x


def u(x, r, t):
    """An average velocity model(x, r, t) (that of v = -x's flow is not needed: only shapes matter here)."""
    return -x


def u_bad(x, r, t):
    return x[:, :1]


def unet():
    return DigitUNet(channels=8)


DPATH = MixtureDiscretePath(CondOTScheduler(), vocab_size=4, source="mask")
TOKENS = torch.tensor([[0, 1, 2], [3, 3, 0]])


def logits(vocab_size):
    """A posterior model returning uniform logits over vocab_size tokens (wrong when vocab_size != 4)."""
    return lambda x, t, *cond: torch.zeros(*x.shape, vocab_size)


def row(name, call, error, match):
    return pytest.param(call, error, match, id=f"{name}-{error.__name__}-{match}")


# (name, call, error, substring naming the argument)
TABLE = [
    ("LinearPath", lambda: LinearPath(sigma="0.1"), TypeError, "sigma"),
    ("LinearPath", lambda: LinearPath(sigma=-0.1), ValueError, "sigma"),
    ("LinearPath", lambda: LinearPath(sigma=float("nan")), ValueError, "sigma"),
    ("GaussianPath", lambda: GaussianPath(sigma_min=None), TypeError, "sigma_min"),
    ("GaussianPath", lambda: GaussianPath(sigma_min=1.0), ValueError, "sigma_min"),
    ("cfm_loss", lambda: cfm_loss(v, GaussianPath(), [[1.0, 2.0]]), TypeError, "x1"),
    ("cfm_loss", lambda: cfm_loss(v, GaussianPath(), X, t=1.5), ValueError, "t must lie in"),
    ("cfm_loss", lambda: cfm_loss(v, GaussianPath(), X, t="0.5"), TypeError, "t must be"),
    ("cfm_loss", lambda: cfm_loss(v, GaussianPath(), X, x0=torch.zeros(3, 2)), ValueError, "x0 and x1"),
    ("EmpiricalMarginal", lambda: EmpiricalMarginal([[1.0]], GaussianPath()), TypeError, "data"),
    ("EmpiricalMarginal", lambda: EmpiricalMarginal(X, GaussianPath(), chunk_size=0), ValueError, "chunk_size"),
    ("EmpiricalMarginal", lambda: EmpiricalMarginal(X, GaussianPath(), chunk_size=2.0**20), TypeError, "chunk_size"),
    ("EmpiricalMarginal", lambda: EmpiricalMarginal(X, GaussianPath()).velocity(X, 2.0), ValueError, "t must lie"),
    ("euler_step", lambda: euler_step(v, None, 0.0, 0.1), TypeError, "x must be a torch.Tensor"),
    ("euler_step", lambda: euler_step(v, X, "0", 0.1), TypeError, "t must be"),
    ("midpoint_step", lambda: midpoint_step(v, torch.zeros(2, dtype=torch.long), 0.0, 0.1), TypeError, "x must have"),
    ("heun_step", lambda: heun_step(v, torch.tensor(1.0), 0.0, 0.1), ValueError, "x must have a batch dimension"),
    ("rk4_step", lambda: rk4_step(lambda x, t: x[:, :1], X, 0.0, 0.1), ValueError, "v(x, t) must return"),
    ("integrate", lambda: integrate(v, X, steps=10.0), TypeError, "steps"),
    ("integrate", lambda: integrate(v, X, steps="10"), TypeError, "steps"),
    ("integrate", lambda: integrate(v, X, steps=0), ValueError, "steps"),
    ("integrate", lambda: integrate(v, None), TypeError, "x must be"),
    ("integrate", lambda: integrate(None, X), TypeError, "v must be"),
    ("integrate", lambda: integrate(v, X, t1=float("inf")), ValueError, "t1"),
    ("integrate", lambda: integrate(v, X, t0="0"), TypeError, "t0"),
    ("integrate", lambda: integrate(v, X, method="rk45"), ValueError, "method"),
    ("integrate", lambda: integrate(v, X, method=4), TypeError, "method"),
    ("time_grid", lambda: time_grid(0.0, 1.0, steps=2.5), TypeError, "steps"),
    ("time_grid", lambda: time_grid(0.0, 1.0, step_size=0.0), ValueError, "step_size"),
    ("time_grid", lambda: time_grid(0.0, 1.0, step_size="0.1"), TypeError, "step_size"),
    ("FixedStepMethod", lambda: FixedStepMethod(euler_step, 1.0, 1), TypeError, "order"),
    ("FixedStepMethod", lambda: FixedStepMethod(euler_step, 1, 0), ValueError, "nfe_per_step"),
    ("FixedStepMethod", lambda: FixedStepMethod("euler", 1, 1), TypeError, "step"),
    ("register_solver", lambda: register_solver("euler", euler_step, 1, 1), ValueError, "euler"),
    ("register_solver", lambda: register_solver(None, euler_step, 1, 1), TypeError, "name"),
    ("register_solver", lambda: register_solver("new", euler_step, True, 1), TypeError, "order"),
    ("NFECounter", lambda: NFECounter(None), TypeError, "v must be"),
    ("integrate_adaptive", lambda: integrate_adaptive(v, X, rtol="1e-5"), TypeError, "rtol"),
    ("integrate_adaptive", lambda: integrate_adaptive(v, X, atol=0.0), ValueError, "atol"),
    ("integrate_adaptive", lambda: integrate_adaptive(v, X, max_steps=0), ValueError, "max_steps"),
    ("integrate_adaptive", lambda: integrate_adaptive(v, X, max_steps=100.0), TypeError, "max_steps"),
    ("integrate_adaptive", lambda: integrate_adaptive(v, X, method="rk4"), ValueError, "method"),
    ("integrate_adaptive", lambda: integrate_adaptive(v, X, method=None), TypeError, "method"),
    ("log_likelihood", lambda: log_likelihood(v, X, probes=1.0), TypeError, "probes"),
    ("log_likelihood", lambda: log_likelihood(v, X, steps=0), ValueError, "steps"),
    ("log_likelihood", lambda: log_likelihood(v, X, divergence="trace"), ValueError, "divergence"),
    ("log_likelihood", lambda: log_likelihood(v, X, method="dopri5", rtol=-1.0), ValueError, "rtol"),
    ("log_likelihood", lambda: log_likelihood(v, "x"), TypeError, "x must be"),
    ("log_likelihood", lambda: log_likelihood(v, X, steps=2, log_p0=lambda x: x.sum()), ValueError, "log_p0"),
    (
        "log_likelihood",
        lambda: log_likelihood(v, X, steps=2, log_p0=lambda x: x[:, 0] * float("nan")),
        ValueError,
        "log_p0",
    ),
    ("divergence", lambda: divergence(v, "x", 0.0), TypeError, "x must be"),
    ("divergence", lambda: divergence(None, X, 0.0), TypeError, "v must be"),
    ("divergence", lambda: divergence(v, X, torch.zeros(3)), ValueError, "t must be"),
    ("minibatch_ot", lambda: minibatch_ot([[1.0]], X), TypeError, "x0"),
    ("minibatch_ot", lambda: minibatch_ot(X, torch.zeros(3, 2)), ValueError, "x0 and x1"),
    ("ot_assignment", lambda: ot_assignment([[1.0]], X), TypeError, "x0"),
    ("ot_assignment", lambda: ot_assignment(X, torch.zeros(3, 2)), ValueError, "x0 and x1"),
    ("ot_assignment", lambda: ot_assignment(X, X, labels=torch.zeros(3, dtype=torch.long)), ValueError, "labels"),
    ("ot_assignment", lambda: ot_assignment(X, X, labels=[0, 1, 2, 3]), TypeError, "labels"),
    ("ot_assignment", lambda: ot_assignment(X, X, block_size=0), ValueError, "block_size"),
    ("ot_assignment", lambda: ot_assignment(X, X, block_size=2.0), TypeError, "block_size"),
    ("sinkhorn_coupling", lambda: sinkhorn_coupling(0.0), ValueError, "reg"),
    ("sinkhorn_coupling", lambda: sinkhorn_coupling("1"), TypeError, "reg"),
    ("sinkhorn_coupling", lambda: sinkhorn_coupling(1.0, method="greenkhorn"), ValueError, "method"),
    ("sinkhorn_coupling", lambda: sinkhorn_coupling(1.0, num_iter=5.0), TypeError, "num_iter"),
    ("sinkhorn_coupling", lambda: sinkhorn_coupling(1e-6)(X, X + 30.0), ValueError, "reg"),
    ("sinkhorn_coupling", lambda: sinkhorn_coupling(1.0)(X, torch.zeros(3, 2)), ValueError, "x0 and x1"),
    ("SchrodingerBridgePath", lambda: SchrodingerBridgePath(0.0), ValueError, "sigma"),
    ("SchrodingerBridgePath", lambda: SchrodingerBridgePath("1"), TypeError, "sigma"),
    ("SchrodingerBridgePath", lambda: SchrodingerBridgePath(1.0).sample(X, X, 1.5), ValueError, "t must lie"),
    ("reflow_pairs", lambda: reflow_pairs(None, X), TypeError, "v must be"),
    ("reflow_pairs", lambda: reflow_pairs(v, X, steps=0), ValueError, "steps"),
    ("reflow_pairs", lambda: reflow_pairs(v, "x0"), TypeError, "x0"),
    ("wasserstein2", lambda: wasserstein2([[1.0]], X), TypeError, "x must be"),
    ("wasserstein2", lambda: wasserstein2(X, torch.zeros(3, 5)), ValueError, "x and y"),
    ("path_energy", lambda: path_energy(v, X, steps=2.0), TypeError, "steps"),
    ("path_energy", lambda: path_energy(v, X, steps=0), ValueError, "steps"),
    ("path_energy", lambda: path_energy(v, "x0"), TypeError, "x0"),
    ("normalized_path_energy", lambda: normalized_path_energy(v, X, X), ValueError, "W2(x0, x1) = 0"),
    ("normalized_path_energy", lambda: normalized_path_energy(v, X, X + 1, steps=1.0), TypeError, "steps"),
    ("straightness", lambda: straightness("traj"), TypeError, "traj"),
    ("straightness", lambda: straightness(torch.zeros(1, 3, 2)), ValueError, "traj"),
    ("MLP", lambda: MLP(2.0), TypeError, "dim"),
    ("MLP", lambda: MLP(0), ValueError, "dim"),
    ("MLP", lambda: MLP(2, hidden="64"), TypeError, "hidden"),
    ("train", lambda: train(MLP(2), GaussianPath(), X, steps=10.0, progress=False), TypeError, "steps"),
    ("train", lambda: train(MLP(2), GaussianPath(), X, steps=0, progress=False), ValueError, "steps"),
    ("Recipe", lambda: Recipe(lr="1e-3"), TypeError, "lr"),
    ("Recipe", lambda: Recipe(lr=0.0), ValueError, "lr"),
    (
        "train",
        lambda: train(MLP(2), GaussianPath(), X, steps=1, recipe={"lr": 1e-3}, progress=False),
        TypeError,
        "recipe",
    ),
    ("train", lambda: train(MLP(2), GaussianPath(), X, steps=1, batch_size=0, progress=False), ValueError, "batch"),
    ("train", lambda: train(MLP(2), GaussianPath(), "data", steps=1, progress=False), TypeError, "data"),
    ("train", lambda: train(MLP(2), GaussianPath(), X, steps=1, source=X[:3], progress=False), ValueError, "source"),
    ("load_digits_split", lambda: load_digits_split(test_fraction=1.0), ValueError, "test_fraction"),
    ("load_digits_split", lambda: load_digits_split(test_fraction="0.2"), TypeError, "test_fraction"),
    ("load_digits_split", lambda: load_digits_split(seed=0.0), TypeError, "seed"),
    ("load_digits_split", lambda: load_digits_split(dtype="float32"), TypeError, "dtype"),
    ("load_digits_split", lambda: load_digits_split(dtype=torch.int64), ValueError, "dtype"),
    ("DigitUNet", lambda: DigitUNet(channels=12), ValueError, "channels"),
    ("DigitUNet", lambda: DigitUNet(channels=16.0), TypeError, "channels"),
    ("DigitUNet", lambda: DigitUNet(num_classes=0), ValueError, "num_classes"),
    ("UNet", lambda: fmlib.UNet(channels=8)(torch.zeros(2, 1, 8, 8), 0.5, 1), ValueError, "x must have shape"),
    ("UNet", lambda: fmlib.UNet(channels=8)(torch.zeros(2, 1, 28, 28), 0.5, 11), ValueError, "y"),
    ("UNet", lambda: fmlib.UNet(image_size=28.0), TypeError, "image_size"),
    ("UNet", lambda: fmlib.UNet(channel_mults=(1, 2, 2, 2)), ValueError, "channel_mults"),
    ("DiT", lambda: fmlib.DiT(patch_size=3), ValueError, "patch_size"),
    ("DiT", lambda: fmlib.DiT(depth=2.0), TypeError, "depth"),
    ("DiT", lambda: fmlib.DiT(dim=16, depth=1)(torch.zeros(2, 3, 28, 28), 0.5, 1), ValueError, "x must have shape"),
    ("sincos_pos_embed_2d", lambda: fmlib.sincos_pos_embed_2d(4, 10), ValueError, "dim"),
    ("sincos_pos_embed_2d", lambda: fmlib.sincos_pos_embed_2d(4.0, 8), TypeError, "grid"),
    ("Autoencoder", lambda: fmlib.Autoencoder(image_size=30), ValueError, "image_size"),
    ("Autoencoder", lambda: fmlib.Autoencoder(channels="32"), TypeError, "channels"),
    ("Autoencoder", lambda: fmlib.Autoencoder(channels=8).decode(torch.zeros(2, 4, 8, 8)), ValueError, "z must"),
    ("train_autoencoder", lambda: fmlib.train_autoencoder(None, IMAGES, 1), TypeError, "ae"),
    (
        "train_autoencoder",
        lambda: fmlib.train_autoencoder(fmlib.Autoencoder(image_size=8, channels=8), IMAGES, 1.0),
        TypeError,
        "steps",
    ),
    ("load_mnist_5k", lambda: fmlib.load_mnist_5k(test_fraction=0.0), ValueError, "test_fraction"),
    ("load_mnist_5k", lambda: fmlib.load_mnist_5k(seed=-1), ValueError, "seed"),
    ("load_mnist_5k", lambda: fmlib.load_mnist_5k(dtype=torch.int64), ValueError, "dtype"),
    ("drop_labels", lambda: drop_labels(torch.arange(3), 1.5, 10), ValueError, "p_uncond"),
    ("drop_labels", lambda: drop_labels(torch.arange(3), "0.5", 10), TypeError, "p_uncond"),
    ("drop_labels", lambda: drop_labels([0, 1, 2], 0.5, 10), TypeError, "labels"),
    ("drop_labels", lambda: drop_labels(torch.arange(3), 0.5, "10"), TypeError, "null_label"),
    (
        "train",
        lambda: train(unet(), GaussianPath(), IMAGES, steps=0, cond=torch.arange(3), p_uncond=0.2, progress=False),
        ValueError,
        "steps",
    ),
    (
        "train",
        lambda: train(unet(), GaussianPath(), IMAGES, steps=1.0, cond=torch.arange(3), p_uncond=0.2, progress=False),
        TypeError,
        "steps",
    ),
    (
        "train",
        lambda: train(unet(), GaussianPath(), IMAGES, steps=1, cond=torch.arange(3), p_uncond=2.0, progress=False),
        ValueError,
        "p_uncond",
    ),
    ("cfg_combine", lambda: cfg_combine(X, X, -1.0), ValueError, "w"),
    ("cfg_combine", lambda: cfg_combine(X, X, "1"), TypeError, "w"),
    ("cfg_combine", lambda: cfg_combine("v", X, 1.0), TypeError, "v_cond"),
    ("cfg_combine", lambda: cfg_combine(X, torch.zeros(3, 2), 1.0), ValueError, "v_cond and v_uncond"),
    ("guided_velocity", lambda: guided_velocity(unet(), 3, -2.0), ValueError, "w"),
    ("guided_velocity", lambda: guided_velocity(unet(), 3, None), TypeError, "w"),
    ("guided_velocity", lambda: guided_velocity(unet(), 11, 1.0), ValueError, "y"),
    ("DigitClassifier", lambda: DigitClassifier(hidden=0), ValueError, "hidden"),
    ("DigitClassifier", lambda: DigitClassifier(hidden=2.5), TypeError, "hidden"),
    ("DigitClassifier", lambda: DigitClassifier(alpha=-1.0), ValueError, "alpha"),
    ("DigitClassifier", lambda: DigitClassifier(max_iter=None), TypeError, "max_iter"),
    ("frechet_distance", lambda: frechet_distance(np.zeros((1, 2)), np.zeros((3, 2))), ValueError, "2 samples"),
    ("frechet_distance", lambda: frechet_distance(np.zeros((3, 2)), np.zeros((3, 4))), ValueError, "features1"),
    ("frechet_distance", lambda: frechet_distance("a", np.zeros((3, 2))), TypeError, "features1"),
    (
        "frechet_distance_gaussians",
        lambda: frechet_distance_gaussians(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3)),
        ValueError,
        "mu1, mu2",
    ),
    (
        "frechet_distance_gaussians",
        lambda: frechet_distance_gaussians(np.zeros(1), np.eye(1) * np.nan, np.zeros(1), np.eye(1)),
        ValueError,
        "cov1",
    ),
    ("nearest_distances", lambda: nearest_distances("x", X), TypeError, "samples"),
    ("nearest_distances", lambda: nearest_distances(X, torch.zeros(3, 5)), ValueError, "samples and reference"),
    ("image_grid", lambda: image_grid(IMAGES, nrow=0), ValueError, "nrow"),
    ("image_grid", lambda: image_grid(IMAGES, nrow=2, pad=-1), ValueError, "pad"),
    ("image_grid", lambda: image_grid(IMAGES, nrow=2.0), TypeError, "nrow"),
    ("image_grid", lambda: image_grid(torch.zeros(3, 8, 8), nrow=2), ValueError, "images"),
    ("image_grid", lambda: image_grid("images", nrow=2), TypeError, "images"),
    ("two_moons", lambda: two_moons(0), ValueError, "n must be"),
    ("two_moons", lambda: two_moons(2.0), TypeError, "n must be"),
    ("two_moons", lambda: two_moons(5, noise=-1.0), ValueError, "noise"),
    ("two_moons", lambda: two_moons(5, noise="0.1"), TypeError, "noise"),
    ("eight_gaussians", lambda: eight_gaussians(5, std=-1.0), ValueError, "std"),
    ("eight_gaussians", lambda: eight_gaussians(5, radius="2"), TypeError, "radius"),
    ("checkerboard", lambda: checkerboard(1.5), TypeError, "n must be"),
    ("checkerboard", lambda: checkerboard(-1), ValueError, "n must be"),
    ("spirals", lambda: spirals(5, noise=float("inf")), ValueError, "noise"),
    ("s_curve", lambda: s_curve(5, noise=-1.0), ValueError, "noise"),
    ("sample_data", lambda: sample_data("two_moons", 5), ValueError, "name"),
    ("sample_data", lambda: sample_data(3, 5), TypeError, "name"),
    ("sample_data", lambda: sample_data("moons", 5.0), TypeError, "n must be"),
    ("seeded_generator", lambda: seeded_generator(-1), ValueError, "seed"),
    ("seeded_generator", lambda: seeded_generator(1.0), TypeError, "seed"),
    ("seeded_generator", lambda: seeded_generator("1"), TypeError, "seed"),
    # Gaussian paths, schedulers, scheduler change and SDE sampling
    ("CondOTScheduler", lambda: CondOTScheduler(sigma_min=1.0), ValueError, "sigma_min"),
    ("CondOTScheduler", lambda: CondOTScheduler(sigma_min="0"), TypeError, "sigma_min"),
    ("CosineScheduler", lambda: CosineScheduler()(1.5), ValueError, "t must lie"),
    ("CosineScheduler", lambda: CosineScheduler()("0.5"), TypeError, "t must be"),
    ("PolynomialScheduler", lambda: PolynomialScheduler(0.5), ValueError, "n must be"),
    ("PolynomialScheduler", lambda: PolynomialScheduler(None), TypeError, "n must be"),
    ("VPScheduler", lambda: VPScheduler(beta_min=0.0), ValueError, "beta_min"),
    ("VPScheduler", lambda: VPScheduler(beta_max="20"), TypeError, "beta_max"),
    ("AffinePath", lambda: AffinePath("cosine"), TypeError, "scheduler"),
    ("AffinePath", lambda: AffinePath(CosineScheduler()).velocity_to_score(X, X, 1.0), ValueError, "sigma_t"),
    ("change_scheduler", lambda: change_scheduler(None, GaussianPath(), GaussianPath()), TypeError, "v must be"),
    ("change_scheduler", lambda: change_scheduler(v, GaussianPath(), "cosine"), TypeError, "to_path"),
    ("integrate_sde", lambda: integrate_sde(v, X, GaussianPath(), -1.0, 5), ValueError, "diffusion"),
    ("integrate_sde", lambda: integrate_sde(v, X, GaussianPath(), "1", 5), TypeError, "diffusion"),
    ("integrate_sde", lambda: integrate_sde(v, X, "path", 1.0, 5), TypeError, "path"),
    ("euler_maruyama", lambda: euler_maruyama("f", 1.0, X), TypeError, "drift"),
    ("euler_maruyama", lambda: euler_maruyama(v, -1.0, X), ValueError, "diffusion"),
    ("euler_maruyama", lambda: euler_maruyama(v, lambda t: "1", X), TypeError, "diffusion"),
    ("euler_maruyama", lambda: euler_maruyama(v, 1.0, X.long()), TypeError, "x must"),
    ("euler_maruyama", lambda: euler_maruyama(v, 1.0, X, steps=0), ValueError, "steps"),
    ("euler_maruyama", lambda: euler_maruyama(v, 1.0, X, steps=2.0), TypeError, "steps"),
    ("euler_maruyama", lambda: euler_maruyama(v, 1.0, X, t1=float("nan")), ValueError, "t1"),
    ("euler_maruyama", lambda: euler_maruyama(lambda x, t: x[:1], 1.0, X), ValueError, "drift(x, t)"),
    ("cfm_loss", lambda: cfm_loss(v, GaussianPath(), X, prediction="score"), ValueError, "prediction"),
    ("cfm_loss", lambda: cfm_loss(v, GaussianPath(), X, weights=-torch.ones(len(X))), ValueError, "weights"),
    ("cfm_loss", lambda: cfm_loss(v, GaussianPath(), X, time_sampler=0.5), TypeError, "time_sampler"),
    ("cfm_loss", lambda: cfm_loss(v, GaussianPath(), X, coupling=lambda a, b: [0]), TypeError, "coupling"),
    ("logit_normal", lambda: fmlib.logit_normal(0.0, -1.0), ValueError, "scale"),
    ("logit_normal", lambda: fmlib.logit_normal("0", 1.0), TypeError, "loc"),
    ("EMA", lambda: fmlib.EMA(MLP(2), decay=1.0), ValueError, "decay"),
    ("EMA", lambda: fmlib.EMA(MLP(2), decay="0.9"), TypeError, "decay"),
    ("EMA", lambda: fmlib.EMA(v, decay=0.9), TypeError, "model"),
    (
        "lr_schedule",
        lambda: fmlib.lr_schedule(torch.optim.SGD(MLP(2).parameters(), 0.1), 10, "linear"),
        ValueError,
        "schedule",
    ),
    ("lr_schedule", lambda: fmlib.lr_schedule(torch.optim.SGD(MLP(2).parameters(), 0.1), 10, 3), TypeError, "schedule"),
    ("TrainingRecord", lambda: fmlib.TrainingRecord(3), TypeError, "losses"),
    ("Recipe", lambda: Recipe(ema=1.0), ValueError, "ema"),
    ("Recipe", lambda: Recipe(ema="0.9"), TypeError, "ema"),
    ("to_book_time", lambda: fmlib.to_book_time(0.5, "karras"), ValueError, "convention"),
    ("to_book_time", lambda: fmlib.to_book_time(1001, "ddpm"), ValueError, "t must lie"),
    ("to_book_time", lambda: fmlib.to_book_time("0.5", "book"), TypeError, "t must be"),
    ("from_book_time", lambda: fmlib.from_book_time(0.0, "edm"), ValueError, "t must lie"),
    ("from_book_time", lambda: fmlib.from_book_time(0.5, 3), TypeError, "convention"),
    ("to_book_state", lambda: fmlib.to_book_state(X, 1.5, "sd3"), ValueError, "t must lie"),
    ("to_book_state", lambda: fmlib.to_book_state(X.long(), 0.5, "sd3"), TypeError, "x must"),
    ("from_book_state", lambda: fmlib.from_book_state(X, 0.001, "ddpm"), ValueError, "t must lie"),
    ("from_book_state", lambda: fmlib.from_book_state(X, torch.zeros(3), "edm"), ValueError, "t must"),
    ("to_book_velocity", lambda: fmlib.to_book_velocity(X, X, 5, "ddpm", "velocity"), ValueError, "velocity"),
    ("to_book_velocity", lambda: fmlib.to_book_velocity(X, X, 0.5, "book", "x0"), ValueError, "prediction"),
    ("to_book_velocity", lambda: fmlib.to_book_velocity(X, X, 0.5, "book", 1), TypeError, "prediction"),
    ("to_book_velocity", lambda: fmlib.to_book_velocity(X[:2], X, 0.5, "book"), ValueError, "pred and x"),
    ("from_book_velocity", lambda: fmlib.from_book_velocity(X, X, 0.5, "SD3"), ValueError, "convention"),
    ("from_book_velocity", lambda: fmlib.from_book_velocity([0.0], X, 0.5, "sd3"), TypeError, "v must"),
    ("to_book_guidance", lambda: fmlib.to_book_guidance(2.0, "ddpm"), ValueError, "convention"),
    ("to_book_guidance", lambda: fmlib.to_book_guidance("2", "diffusers"), TypeError, "w must"),
    ("from_book_guidance", lambda: fmlib.from_book_guidance(float("inf"), "ho_salimans"), ValueError, "w must"),
    ("from_book_guidance", lambda: fmlib.from_book_guidance(2.0, None), TypeError, "convention"),
    # discrete flow matching: tokens are int64 (B, L); a model returns logits (B, L, vocab_size)
    ("MixtureDiscretePath", lambda: MixtureDiscretePath(VPScheduler(), 4), ValueError, "scheduler"),
    ("MixtureDiscretePath", lambda: MixtureDiscretePath("linear", 4), TypeError, "scheduler"),
    ("MixtureDiscretePath", lambda: MixtureDiscretePath(CondOTScheduler(), 4, source="noise"), ValueError, "source"),
    ("MixtureDiscretePath", lambda: MixtureDiscretePath(CondOTScheduler(), 4.0), TypeError, "vocab_size"),
    ("MixtureDiscretePath", lambda: DPATH.sample(None, TOKENS.float(), 0.5), TypeError, "x1"),
    ("MixtureDiscretePath", lambda: DPATH.sample(None, TOKENS + 4, 0.5), ValueError, "x1"),
    ("MixtureDiscretePath", lambda: DPATH.sample(TOKENS + 5, TOKENS, 0.5), ValueError, "x0"),
    ("MixtureDiscretePath", lambda: DPATH.velocity(torch.ones(2, 3, 5) / 5, TOKENS, 0.5), ValueError, "posterior"),
    ("MixtureDiscretePath", lambda: DPATH.velocity(torch.ones(2, 3, 4) / 4, TOKENS, 1.0), ValueError, "t must be"),
    ("discrete_cfm_loss", lambda: discrete_cfm_loss(logits(5), DPATH, TOKENS), ValueError, "model(x_t, t)"),
    ("discrete_cfm_loss", lambda: discrete_cfm_loss(logits(4), DPATH, TOKENS.float()), TypeError, "x1"),
    ("discrete_cfm_loss", lambda: discrete_cfm_loss(logits(4), DPATH, TOKENS, loss="mse"), ValueError, "loss"),
    ("discrete_cfm_loss", lambda: discrete_cfm_loss(logits(4), DPATH, TOKENS, t=1.5), ValueError, "t must lie"),
    ("discrete_cfm_loss", lambda: discrete_cfm_loss(logits(4), GaussianPath(), TOKENS), TypeError, "path"),
    ("DiscreteEmpiricalMarginal", lambda: DiscreteEmpiricalMarginal(TOKENS.float(), DPATH), TypeError, "data"),
    ("DiscreteEmpiricalMarginal", lambda: DiscreteEmpiricalMarginal(TOKENS - 1, DPATH), ValueError, "data"),
    (
        "DiscreteEmpiricalMarginal",
        lambda: DiscreteEmpiricalMarginal(TOKENS, DPATH).posterior(TOKENS[:, :2], 0.5),
        ValueError,
        "x",
    ),
    (
        "DiscreteEmpiricalMarginal",
        lambda: DiscreteEmpiricalMarginal(TOKENS, DPATH).velocity(TOKENS + 9, 0.5),
        ValueError,
        "x",
    ),
    (
        "sample_discrete",
        lambda: sample_discrete(logits(4), DPATH.sample_source((2, 3)), DPATH, steps=0),
        ValueError,
        "steps",
    ),
    (
        "sample_discrete",
        lambda: sample_discrete(logits(4), DPATH.sample_source((2, 3)), DPATH, steps=2.0),
        TypeError,
        "steps",
    ),
    (
        "sample_discrete",
        lambda: sample_discrete(logits(5), DPATH.sample_source((2, 3)), DPATH, steps=2),
        ValueError,
        "model(x, t)",
    ),
    ("sample_discrete", lambda: sample_discrete(logits(4), TOKENS.float(), DPATH, steps=2), TypeError, "x0"),
    ("sample_discrete", lambda: sample_discrete(logits(4), TOKENS + 5, DPATH, steps=2), ValueError, "x0"),
    (
        "sample_discrete",
        lambda: sample_discrete(logits(4), DPATH.sample_source((2, 3)), DPATH, 2, held=torch.ones(3, dtype=torch.bool)),
        ValueError,
        "held",
    ),
    ("sample_discrete", lambda: sample_discrete(logits(4), TOKENS, DPATH, 2, guidance=2.0), ValueError, "guidance"),
    ("TokenMLP", lambda: TokenMLP(3, 4, 3), ValueError, "num_states"),
    ("TokenMLP", lambda: TokenMLP(3.0, 4, 5), TypeError, "length"),
    ("TokenMLP", lambda: TokenMLP(3, 4, 5)(TOKENS.float(), 0.5), TypeError, "x"),
    # few-step generation: a flow-map network is model(x, r, t), r <= t; a shortcut model is model(x, t, d)
    ("MLP", lambda: MLP(2, two_times=1), TypeError, "two_times"),
    ("MLP", lambda: MLP(2, two_times=True)(X, 0.5), ValueError, "model(x, r, t)"),
    ("meanflow_loss", lambda: fmlib.meanflow_loss(u, LinearPath(), X, r=0.6, t=0.4), ValueError, "r must be <= t"),
    ("meanflow_loss", lambda: fmlib.meanflow_loss(u, LinearPath(), X, r=-0.1, t=0.4), ValueError, "r must lie"),
    ("meanflow_loss", lambda: fmlib.meanflow_loss(u, LinearPath(), X, r=0.1, t=1.5), ValueError, "t must lie"),
    ("meanflow_loss", lambda: fmlib.meanflow_loss(u, LinearPath(), X, r=0.1), ValueError, "r and t together"),
    ("meanflow_loss", lambda: fmlib.meanflow_loss(u_bad, LinearPath(), X), ValueError, "model(x, r, t)"),
    ("meanflow_loss", lambda: fmlib.meanflow_loss(u, SchrodingerBridgePath(1.0), X), TypeError, "path"),
    ("meanflow_loss", lambda: fmlib.meanflow_loss(u, LinearPath(), X, equal_share=1.5), ValueError, "equal_share"),
    ("meanflow_loss", lambda: fmlib.meanflow_loss(u, LinearPath(), X, adaptive_p=-1.0), ValueError, "adaptive_p"),
    ("meanflow_loss", lambda: fmlib.meanflow_loss(u, LinearPath(), X.long()), TypeError, "x1"),
    ("meanflow_target", lambda: fmlib.meanflow_target(u, X, 0.7, 0.2, X), ValueError, "r must be <= t"),
    ("meanflow_target", lambda: fmlib.meanflow_target(u, X, 0.2, 0.7, X[:3]), ValueError, "v and x"),
    ("meanflow_target", lambda: fmlib.meanflow_target(u_bad, X, 0.2, 0.7, X), ValueError, "model(x, r, t)"),
    ("sample_flow_map", lambda: fmlib.sample_flow_map(u, X, steps=0), ValueError, "steps"),
    ("sample_flow_map", lambda: fmlib.sample_flow_map(u, X, steps=1.5), TypeError, "steps"),
    ("sample_flow_map", lambda: fmlib.sample_flow_map(u, X, steps=[0.0, 0.5, 0.4]), ValueError, "increasing"),
    ("sample_flow_map", lambda: fmlib.sample_flow_map(u, X, steps=[0.0, 1.5]), ValueError, "[0, 1]"),
    ("sample_flow_map", lambda: fmlib.sample_flow_map(u_bad, X, steps=2), ValueError, "model(x, r, t)"),
    ("sample_flow_map", lambda: fmlib.sample_flow_map(u, "x0"), TypeError, "x0"),
    ("shortcut_loss", lambda: fmlib.shortcut_loss(u, LinearPath(), X, max_steps=12), ValueError, "max_steps"),
    ("shortcut_loss", lambda: fmlib.shortcut_loss(u, LinearPath(), X, max_steps=8.0), TypeError, "max_steps"),
    ("shortcut_loss", lambda: fmlib.shortcut_loss(u, LinearPath(), X, consistency_share=-0.5), ValueError, "share"),
    ("shortcut_loss", lambda: fmlib.shortcut_loss(u_bad, LinearPath(), X), ValueError, "model(x, t, d)"),
    ("sample_shortcut", lambda: fmlib.sample_shortcut(u, X, steps=0), ValueError, "steps"),
    ("sample_shortcut", lambda: fmlib.sample_shortcut(u, X, steps=[0.0, 1.0]), TypeError, "steps"),
    ("sample_shortcut", lambda: fmlib.sample_shortcut(u_bad, X, steps=2), ValueError, "model(x, r, t)"),
    (
        "progressive_distillation_loss",
        lambda: fmlib.progressive_distillation_loss(v, v, LinearPath(), X, steps=0),
        ValueError,
        "steps",
    ),
    (
        "progressive_distillation_loss",
        lambda: fmlib.progressive_distillation_loss(v, lambda x, t: x[:1], LinearPath(), X, steps=2),
        ValueError,
        "teacher(x, t)",
    ),
    (
        "progressive_distillation_loss",
        lambda: fmlib.progressive_distillation_loss(v, None, LinearPath(), X, steps=2),
        TypeError,
        "teacher",
    ),
]


@pytest.mark.parametrize("call, error, match", [row(*r) for r in TABLE])
def test_bad_input_raises_the_right_error_naming_the_argument(call, error, match):
    with pytest.raises(error) as info:
        call()
    assert type(info.value) is error  # not a subclass that happens to match (e.g. an error from a library)
    assert match in str(info.value), str(info.value)


def test_every_public_callable_has_a_row():
    public = {name for name in fmlib.__all__ if callable(getattr(fmlib, name))} - NOT_CHECKED
    covered = {r[0] for r in TABLE}
    assert public - covered == set(), f"public callables without a bad-input row: {sorted(public - covered)}"
    assert covered <= set(fmlib.__all__)


@pytest.mark.parametrize("notebook", sorted(pathlib.Path(__file__).parent.parent.glob("book/*.ipynb")), ids=str)
def test_notebook_kernelspec_is_python3(notebook):
    # Jupyter Book and nbval start the kernel named here; any other name fails with NoSuchKernel.
    meta = json.loads(notebook.read_text(encoding="utf-8"))["metadata"]
    assert meta.get("kernelspec", {}).get("name") == "python3", (notebook.name, meta.get("kernelspec"))


def test_there_are_notebooks_to_check():
    assert len(list(pathlib.Path(__file__).parent.parent.glob("book/*.ipynb"))) >= 7
