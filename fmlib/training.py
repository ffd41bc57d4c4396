"""Training loops for the CFM loss (unconditional, and class-conditional with label dropout), with a tqdm bar."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ._checks import check_batch, check_int, check_labels, check_real
from .guidance import _with_labels, drop_labels
from .losses import cfm_loss
from .paths import ProbPath

__all__ = ["train", "train_conditional"]


def train(
    model: nn.Module,
    path: ProbPath,
    data: Tensor,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    generator: torch.Generator | None = None,
    progress: bool = True,
    coupling: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    source: Tensor | None = None,
) -> list[float]:
    """Train ``model`` on ``data`` by minimising :func:`~fmlib.cfm_loss` with Adam.

    Each step draws a minibatch of ``batch_size`` rows of ``data`` (with
    replacement), x0 (fresh N(0, I) noise, or rows of ``source``) and t ~ U[0, 1], all from ``generator``,
    so two runs with equally seeded generators and models give the same losses.

    Args:
        model: velocity model ``model(x, t)``; its parameters are updated in place.
        path: conditional path defining the regression target.
        data: the training set x1, shape ``(N, *D)``, on the model's device.
        steps: number of optimiser steps, >= 1.
        batch_size: minibatch size, >= 1.
        lr: Adam learning rate, > 0.
        generator: random generator on data's device.
        progress: show a tqdm progress bar.
        coupling: passed to :func:`~fmlib.cfm_loss` (e.g. ``fmlib.minibatch_ot`` for OT-CFM).
        source: optional samples of a non-Gaussian source p_0, shape ``(M, *D)`` like data; each step draws
            its x0 minibatch from these rows. Default: fresh N(0, I) noise.

    Returns:
        The loss of every step, a list of ``steps`` floats.

    Raises:
        ValueError: for steps, batch_size or lr out of range, or empty data.
    """
    check_batch(data, "data")
    if source is not None:
        check_batch(source, "source")
        if source.shape[1:] != data.shape[1:]:
            raise ValueError(
                f"source must have data's feature shape {tuple(data.shape[1:])}; got {tuple(source.shape[1:])}"
            )

    def step_loss() -> Tensor:
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=generator, device=data.device)
        x0 = None
        if source is not None:
            x0 = source[torch.randint(0, source.shape[0], (batch_size,), generator=generator, device=source.device)]
        return cfm_loss(model, path, data[idx], x0=x0, generator=generator, coupling=coupling)

    return adam_loop(model, step_loss, steps, batch_size, lr, progress)


def adam_loop(
    model: nn.Module, step_loss: Callable[[], Tensor], steps: int, batch_size: int, lr: float, progress: bool
) -> list[float]:
    """Run ``steps`` Adam steps on ``step_loss()`` (which draws its own minibatch); return the losses.

    Shared by :func:`train` and :func:`train_conditional`; validates steps, batch_size and lr.
    """
    check_int(steps, "steps")
    check_int(batch_size, "batch_size")
    check_real(lr, "lr", low=0.0, low_inclusive=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = torch.empty(steps)
    model.train()
    for k in tqdm(range(steps), disable=not progress, desc="training", mininterval=1.0):
        loss = step_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[k] = loss.detach()
    model.eval()
    return losses.tolist()


def train_conditional(
    model: nn.Module,
    path: ProbPath,
    images: Tensor,
    labels: Tensor,
    steps: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    p_uncond: float = 0.2,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> list[float]:
    """Train a class-conditional model ``model(x, t, y)`` with the CFM loss and label dropout.

    Each step draws ``batch_size`` rows of (images, labels) with replacement, replaces each label by the
    null label ``model.num_classes`` with probability ``p_uncond`` (:func:`drop_labels`), and takes an
    Adam step on :func:`~fmlib.cfm_loss` of the field ``(x, t) -> model(x, t, y)``: the conditional
    path and its target do not depend on y, only the network sees it. All randomness comes from
    ``generator``, so equally seeded runs give equal losses.

    Args:
        model: a conditional velocity model with a ``num_classes`` attribute (e.g. :class:`DigitUNet`).
        path: the conditional probability path.
        images: training images x1, shape ``(N, *D)``, on the model's device.
        labels: their labels in 0..num_classes - 1, shape (N,).
        steps: optimiser steps, >= 1.
        batch_size: minibatch size, >= 1.
        lr: Adam learning rate, > 0.
        p_uncond: label dropout probability, in [0, 1].
        generator: random generator on the images' device.
        progress: show a tqdm progress bar.

    Returns:
        The loss of every step, a list of ``steps`` floats.

    Raises:
        ValueError: for arguments out of range, labels of the wrong shape or range, or a model without
            ``num_classes``.
    """
    check_batch(images, "images")
    num_classes = getattr(model, "num_classes", None)
    if not isinstance(num_classes, int):
        raise ValueError("model must have an int attribute num_classes (the null label); got none")
    labels = check_labels(labels, images.shape[0], num_classes, allow_null=False, name="labels")
    labels = labels.to(images.device)

    def step_loss() -> Tensor:
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=generator, device=images.device)
        y = drop_labels(labels[idx], p_uncond, num_classes, generator)
        return cfm_loss(_with_labels(model, y), path, images[idx], generator=generator)

    return adam_loop(model, step_loss, steps, batch_size, lr, progress)
