"""Training loops for the CFM loss (unconditional, and class-conditional with label dropout).

Both loops share one recipe (:func:`fit`): Adam with a learning-rate schedule from
``torch.optim.lr_scheduler`` (linear warm-up then cosine decay, or constant), an exponential moving average
of the weights (:class:`~fmlib.EMA`), optional gradient-norm clipping, a choice of time distribution and
per-sample weights for :func:`~fmlib.cfm_loss`, a held-out loss every few steps, and a tqdm bar that shows
the running loss. Sources: Kingma & Ba (2015) for Adam; Loshchilov & Hutter (2017) for the cosine schedule;
Goyal et al. (2017) for the linear warm-up; Polyak & Juditsky (1992) for iterate averaging; Esser et al.
(2024) for logit-normal times.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from numbers import Real
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler
from tqdm import tqdm

from ._checks import check_batch, check_finite, check_int, check_labels, check_real
from .ema import EMA
from .guidance import drop_labels
from .losses import TimeSampler, cfm_loss
from .paths import ProbPath

__all__ = ["train", "train_conditional", "TrainingRecord", "lr_schedule", "fit"]

#: The default recipe of :func:`train` (chosen from the measurements of ``benchmarks/training_recipes.py`` on the
#: 2D tasks); :func:`train_conditional` shares it except for its peak rate, ``DEFAULT_LR_CONDITIONAL``.
DEFAULT_LR = 3e-2
DEFAULT_LR_CONDITIONAL = 1e-3
DEFAULT_SCHEDULE = "cosine"
DEFAULT_WARMUP_FRACTION = 0.05
DEFAULT_EMA = 0.999

Schedule = str | Callable[[torch.optim.Optimizer, int], LRScheduler]


class TrainingRecord(list):
    """What a training run returns: the list of per-step losses, with the rest of the log as attributes.

    It *is* a list (``record[k]`` is the loss of step k, ``len(record) == steps``), so code that treats the
    return value of :func:`train` as the list of losses keeps working.

    Attributes:
        lr: the learning rate used at every step (list of floats).
        grad_norm: the gradient norm before clipping at every step (list of floats; empty unless
            ``clip_grad_norm`` is set).
        eval_steps: the steps (1-based counts of optimiser steps) after which the model was evaluated.
        eval_losses: the held-out CFM loss at those steps (U[0, 1] times, unweighted, with fixed draws of
            x0 and t, averaged weights when EMA is on); empty without ``eval_data``.
        callback_values: what ``callback(step, model)`` returned at those steps; empty without a callback.
        ema: the :class:`~fmlib.EMA` (or None); its averages are in the returned model.
        final_weights: the training (non-averaged) parameters after the last step, by parameter name
            (None without EMA: then they are the model's).
        optimizer: the Adam optimiser, with its state (to resume).
        seconds: wall time of the loop, evaluations excluded.
    """

    def __init__(self, losses: list[float]) -> None:
        if not isinstance(losses, (list, tuple)):
            raise TypeError(f"losses must be a list of floats; got {type(losses).__name__}")
        super().__init__(losses)
        self.lr: list[float] = []
        self.grad_norm: list[float] = []
        self.eval_steps: list[int] = []
        self.eval_losses: list[float] = []
        self.callback_values: list[Any] = []
        self.ema: EMA | None = None
        self.final_weights: dict[str, Tensor] | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.seconds: float = 0.0


def lr_schedule(
    optimizer: torch.optim.Optimizer, steps: int, schedule: Schedule = "cosine", warmup_steps: int | None = None
) -> LRScheduler:
    """A learning-rate scheduler over ``steps`` optimiser steps (call ``.step()`` after each).

    With base rate lr and w warm-up steps, step k (k = 0 .. steps - 1) uses

    * ``"constant"``: lr * min(1, (k + 1) / w) (w = 0 by default: lr throughout);
    * ``"cosine"``: lr (k + 1) / w for k < w, then lr (1 + cos(pi (k - w) / (steps - w))) / 2
      (Loshchilov & Hutter 2017, without restarts, decaying towards 0 at the end; linear warm-up of
      Goyal et al. 2017). Default w = round(0.05 steps).

    A callable ``schedule(optimizer, steps)`` is called and its scheduler returned.

    Raises:
        ValueError: for an unknown name, steps < 1, or warmup_steps not an int in 0..steps.
        TypeError: if schedule is neither a name nor callable, or a callable does not return an LRScheduler.
    """
    check_int(steps, "steps")
    if callable(schedule) and not isinstance(schedule, str):
        sched = schedule(optimizer, steps)
        if not isinstance(sched, LRScheduler):
            raise TypeError(f"schedule must return a torch.optim.lr_scheduler.LRScheduler; got {type(sched).__name__}")
        return sched
    if not isinstance(schedule, str):
        raise TypeError(f"schedule must be 'constant', 'cosine' or a callable; got {type(schedule).__name__}")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant', 'cosine' or a callable (optimizer, steps); got {schedule!r}")
    if warmup_steps is None:
        warmup_steps = round(DEFAULT_WARMUP_FRACTION * steps) if schedule == "cosine" else 0
    check_int(warmup_steps, "warmup_steps", low=0)
    if warmup_steps > steps:
        raise ValueError(f"warmup_steps must be <= steps = {steps}; got {warmup_steps}")
    w = warmup_steps

    def factor(k: int) -> float:
        if k < w:
            return (k + 1) / w
        if schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * (k - w) / max(1, steps - w)))

    return LambdaLR(optimizer, factor)


def _check_decay(ema: object) -> float | None:
    if ema is None or ema is False:
        return None
    if isinstance(ema, bool) or not isinstance(ema, Real):
        raise TypeError(f"ema must be None (off) or a decay in [0, 1); got {type(ema).__name__}")
    if not math.isfinite(float(ema)):
        raise ValueError(f"ema must be None (off) or a decay in [0, 1); got {ema!r}")
    if not 0.0 <= float(ema) < 1.0:
        raise ValueError(f"ema must be None (off) or a decay in [0, 1); got {ema!r}")
    return float(ema)


def _check_losses(losses: Tensor, start: int) -> None:
    bad = (~torch.isfinite(losses[start:])).nonzero()
    if bad.numel():
        first = start + int(bad[0])
        raise ValueError(
            f"the training loss became NaN or inf at step {first + 1} (loss {float(losses[first])}); "
            "check the data for non-finite values, or lower the learning rate"
        )


def fit(
    model: nn.Module,
    step_loss: Callable[[], Tensor],
    steps: int,
    lr: float,
    *,
    progress: bool = True,
    schedule: Schedule = DEFAULT_SCHEDULE,
    warmup_steps: int | None = None,
    ema: float | None = DEFAULT_EMA,
    clip_grad_norm: float | None = None,
    eval_loss: Callable[[], Tensor] | None = None,
    eval_every: int | None = None,
    callback: Callable[[int, nn.Module], Any] | None = None,
) -> TrainingRecord:
    """Run ``steps`` Adam steps on ``step_loss()`` (which draws its own minibatch) with the book's recipe.

    Shared by :func:`train` and :func:`train_conditional` (see :func:`train` for the arguments). After the
    last step the model is in eval mode and, with EMA, carries the averaged parameters.
    """
    check_int(steps, "steps")
    lr = check_real(lr, "lr", low=0.0, low_inclusive=False)
    decay = _check_decay(ema)
    if clip_grad_norm is not None and (
        isinstance(clip_grad_norm, bool)
        or not isinstance(clip_grad_norm, Real)
        or not clip_grad_norm > 0
        or not math.isfinite(clip_grad_norm)
    ):
        raise ValueError(f"clip_grad_norm must be None (off) or a finite float > 0; got {clip_grad_norm!r}")
    if eval_every is None:
        eval_every = max(1, steps // 10)
    check_int(eval_every, "eval_every")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable (step, model); got {type(callback).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    scheduler = lr_schedule(optimizer, steps, schedule, warmup_steps)
    averager = EMA(model, decay) if decay is not None else None
    evaluating = eval_loss is not None or callback is not None
    losses = torch.empty(steps)
    norms = torch.empty(steps) if clip_grad_norm is not None else None
    lrs: list[float] = []
    record = TrainingRecord([])
    seconds, begin = 0.0, time.perf_counter()
    model.train()
    bar = tqdm(range(steps), disable=not progress, desc="training", mininterval=1.0)
    for k in bar:
        lrs.append(optimizer.param_groups[0]["lr"])
        loss = step_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if norms is not None:
            norms[k] = torch.nn.utils.clip_grad_norm_(params, float(clip_grad_norm)).detach()
        optimizer.step()
        scheduler.step()
        if averager is not None:
            averager.update()
        losses[k] = loss.detach()
        if (k + 1) % 50 == 0 or k + 1 == steps:  # one sync per 50 steps: stop at a NaN/inf loss, never return one
            _check_losses(losses[: k + 1], max(0, k - 49))
        if progress and (k + 1) % 50 == 0:
            bar.set_postfix(loss=f"{float(losses[k - 49 : k + 1].mean()):.4g}", refresh=False)
        if evaluating and ((k + 1) % eval_every == 0 or k + 1 == steps):
            seconds += time.perf_counter() - begin
            _evaluate(model, averager, record, k + 1, eval_loss, callback)
            begin = time.perf_counter()
    seconds += time.perf_counter() - begin
    model.eval()
    if averager is not None:
        record.final_weights = {n: p.detach().clone() for n, p in model.named_parameters()}
        averager.copy_to()
    record.extend(losses.tolist())
    record.lr = lrs
    record.grad_norm = norms.tolist() if norms is not None else []
    record.ema, record.optimizer, record.seconds = averager, optimizer, seconds
    return record


def _evaluate(
    model: nn.Module,
    averager: EMA | None,
    record: TrainingRecord,
    step: int,
    eval_loss: Callable[[], Tensor] | None,
    callback: Callable[[int, nn.Module], Any] | None,
) -> None:
    model.eval()
    try:
        if averager is not None:
            with averager.averaged():
                _evaluate_now(model, record, step, eval_loss, callback)
        else:
            _evaluate_now(model, record, step, eval_loss, callback)
    finally:
        model.train()


def _evaluate_now(
    model: nn.Module,
    record: TrainingRecord,
    step: int,
    eval_loss: Callable[[], Tensor] | None,
    callback: Callable[[int, nn.Module], Any] | None,
) -> None:
    record.eval_steps.append(step)
    if eval_loss is not None:
        with torch.no_grad():
            record.eval_losses.append(float(eval_loss()))
    if callback is not None:
        record.callback_values.append(callback(step, model))


def _fixed_draws(x: Tensor) -> tuple[Tensor, Tensor]:
    """x0 ~ N(0, I) and t ~ U[0, 1] for a held-out batch, from their own seeded generator (fixed across calls)."""
    g = torch.Generator(device=x.device).manual_seed(0)
    x0 = torch.randn(x.shape, generator=g, dtype=x.dtype, device=x.device)
    t = torch.rand(x.shape[0], generator=g, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
    return x0, t


def _check_row_weights(weights: Tensor | None, n: int, name_data: str) -> Tensor | None:
    if weights is None:
        return None
    if not isinstance(weights, Tensor):
        raise TypeError(
            f"weights must be a tensor of shape ({n},), one per row of {name_data}; got {type(weights).__name__}"
        )
    if weights.shape != (n,):
        raise ValueError(
            f"weights must have shape ({n},), one per row of {name_data}; got shape {tuple(weights.shape)}"
        )
    if not bool(torch.isfinite(weights).all()):
        raise ValueError("weights must be finite; they hold NaN or inf")
    if float(weights.min()) < 0:
        raise ValueError(f"weights must be >= 0; got a minimum of {float(weights.min()):g}")
    return weights


def train(
    model: nn.Module,
    path: ProbPath,
    data: Tensor,
    steps: int,
    batch_size: int = 256,
    lr: float = DEFAULT_LR,
    generator: torch.Generator | None = None,
    progress: bool = True,
    coupling: Callable[[Tensor, Tensor], Any] | None = None,
    source: Tensor | None = None,
    *,
    schedule: Schedule = DEFAULT_SCHEDULE,
    warmup_steps: int | None = None,
    ema: float | None = DEFAULT_EMA,
    time_sampler: str | TimeSampler | None = None,
    weights: Tensor | None = None,
    clip_grad_norm: float | None = None,
    eval_data: Tensor | None = None,
    eval_every: int | None = None,
    callback: Callable[[int, nn.Module], Any] | None = None,
) -> TrainingRecord:
    """Train ``model`` on ``data`` by minimising :func:`~fmlib.cfm_loss` with Adam.

    Each step draws a minibatch of ``batch_size`` rows of ``data`` (with replacement), x0 (fresh N(0, I)
    noise, or rows of ``source``) and t (from ``time_sampler``), all from ``generator``, so two runs with
    equally seeded generators and models give the same losses. The default recipe: Adam at peak rate
    ``lr = 3e-2``, a linear warm-up over 5% of the steps then a cosine decay to 0 (``schedule="cosine"``), and
    an exponential moving average of the weights with decay 0.999 and warm-up (``ema``), which the returned
    model carries; t ~ U[0, 1]. ``schedule="constant", ema=None`` is plain constant-rate Adam. The peak rate
    was chosen on the book's 2D tasks (a small MLP, batch 512, 1500 steps; ``benchmarks/training_recipes.py``);
    larger networks usually want a smaller one.

    Args:
        model: velocity model ``model(x, t)``; its parameters are updated in place.
        path: conditional path defining the regression target.
        data: the training set x1, shape ``(N, *D)``, on the model's device.
        steps: number of optimiser steps, >= 1.
        batch_size: minibatch size, >= 1.
        lr: Adam's (peak) learning rate, > 0.
        generator: random generator on data's device.
        progress: show a tqdm progress bar (with the mean loss of the last 50 steps).
        coupling: passed to :func:`~fmlib.cfm_loss` (an index-returning ``coupling(x0, x1) -> pi``, or
            ``fmlib.minibatch_ot`` for OT-CFM); ``weights`` follow the pairing.
        source: optional samples of a non-Gaussian source p_0, shape ``(M, *D)`` like data; each step draws
            its x0 minibatch from these rows. Default: fresh N(0, I) noise.
        schedule: ``"cosine"`` (warm-up then cosine decay), ``"constant"``, or a callable
            ``(optimizer, steps) -> LRScheduler`` (see :func:`lr_schedule`).
        warmup_steps: linear warm-up length (default: 5% of the steps for "cosine", 0 for "constant").
        ema: decay of the weight average in [0, 1) (:class:`~fmlib.EMA`, with warm-up), or None for none.
        time_sampler: distribution of t (``"uniform"``, ``"logit_normal"``, ``fmlib.logit_normal(loc, scale)``
            or a callable), see :func:`~fmlib.cfm_loss`.
        weights: optional per-row loss weights of ``data``, shape (N,), finite and >= 0; the loss of a step is
            ``mean_b w_b |v - u|^2`` over the drawn rows.
        clip_grad_norm: clip the gradient's global 2-norm to this value before each step (None: off).
        eval_data: optional held-out data, shape ``(M, *D)``: the CFM loss on it is logged every ``eval_every`` steps.
        eval_every: evaluation period in steps (default steps // 10); the last step is always evaluated.
        callback: optional ``callback(step, model)`` called at the same steps (the model in eval mode,
            carrying the averaged weights when EMA is on); its return values are logged.

    Returns:
        A :class:`TrainingRecord`: the list of the ``steps`` losses, with ``.lr``, ``.eval_steps``,
        ``.eval_losses``, ``.callback_values``, ``.grad_norm``, ``.ema`` and ``.seconds``.

    Raises:
        ValueError: for steps, batch_size, lr, ema, warmup_steps, clip_grad_norm or eval_every out of range,
            empty data, a source or eval_data of another feature shape, or bad weights.
    """
    check_batch(data, "data")
    check_finite(data, "data")
    check_int(batch_size, "batch_size")
    if source is not None:
        check_batch(source, "source")
        check_finite(source, "source")
        if source.shape[1:] != data.shape[1:]:
            raise ValueError(
                f"source must have data's feature shape {tuple(data.shape[1:])}; got {tuple(source.shape[1:])}"
            )
    weights = _check_row_weights(weights, data.shape[0], "data")
    eval_loss = None
    if eval_data is not None:
        check_batch(eval_data, "eval_data")
        check_finite(eval_data, "eval_data")
        if eval_data.shape[1:] != data.shape[1:]:
            raise ValueError(
                f"eval_data must have data's feature shape {tuple(data.shape[1:])}; got {tuple(eval_data.shape[1:])}"
            )
        ex0, et = _fixed_draws(eval_data)

        def eval_loss() -> Tensor:
            return cfm_loss(model, path, eval_data, x0=ex0, t=et, generator=torch.Generator(eval_data.device))

    def step_loss() -> Tensor:
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=generator, device=data.device)
        x0 = None
        if source is not None:
            x0 = source[torch.randint(0, source.shape[0], (batch_size,), generator=generator, device=source.device)]
        w = None if weights is None else weights[idx.to(weights.device)]
        return cfm_loss(
            model, path, data[idx], x0=x0, generator=generator, coupling=coupling, weights=w, time_sampler=time_sampler
        )

    return fit(
        model,
        step_loss,
        steps,
        lr,
        progress=progress,
        schedule=schedule,
        warmup_steps=warmup_steps,
        ema=ema,
        clip_grad_norm=clip_grad_norm,
        eval_loss=eval_loss,
        eval_every=eval_every,
        callback=callback,
    )


def train_conditional(
    model: nn.Module,
    path: ProbPath,
    images: Tensor,
    labels: Tensor,
    steps: int,
    batch_size: int = 128,
    lr: float = DEFAULT_LR_CONDITIONAL,
    p_uncond: float = 0.2,
    generator: torch.Generator | None = None,
    progress: bool = True,
    coupling: Callable[[Tensor, Tensor], Tensor] | None = None,
    *,
    schedule: Schedule = DEFAULT_SCHEDULE,
    warmup_steps: int | None = None,
    ema: float | None = DEFAULT_EMA,
    time_sampler: str | TimeSampler | None = None,
    weights: Tensor | None = None,
    clip_grad_norm: float | None = None,
    eval_data: tuple[Tensor, Tensor] | None = None,
    eval_every: int | None = None,
    callback: Callable[[int, nn.Module], Any] | None = None,
) -> TrainingRecord:
    """Train a class-conditional model ``model(x, t, y)`` with the CFM loss and label dropout.

    Each step draws ``batch_size`` rows of (images, labels) with replacement, replaces each label by the
    null label ``model.num_classes`` with probability ``p_uncond`` (:func:`drop_labels`), and takes an
    Adam step on :func:`~fmlib.cfm_loss` with ``cond=y``: the conditional path and its target do not depend
    on y, only the network sees it. With a ``coupling`` the labels (and weights) are permuted with their
    images, so every label stays with its image. All randomness comes from ``generator``, so equally seeded
    runs give equal losses. The recipe (schedule, EMA, clipping, time sampler, evaluation) is that of
    :func:`train`, with the same defaults except the peak rate (1e-3, for image networks).

    Args:
        model: a conditional velocity model with a ``num_classes`` attribute (e.g. :class:`DigitUNet`).
        path: the conditional probability path.
        images: training images x1, shape ``(N, *D)``, on the model's device.
        labels: their labels in 0..num_classes - 1, shape (N,).
        steps: optimiser steps, >= 1.
        batch_size: minibatch size, >= 1.
        lr: Adam's (peak) learning rate, > 0.
        p_uncond: label dropout probability, in [0, 1].
        generator: random generator on the images' device.
        progress: show a tqdm progress bar.
        coupling: optional index-returning ``coupling(x0, x1) -> pi`` (see :func:`~fmlib.cfm_loss`).
        schedule, warmup_steps, ema, time_sampler, clip_grad_norm, eval_every, callback: as in :func:`train`.
        weights: optional per-row loss weights of ``images``, shape (N,), finite and >= 0.
        eval_data: optional held-out ``(images, labels)``; their CFM loss (labels kept) is logged.

    Returns:
        A :class:`TrainingRecord` (the list of the ``steps`` losses, and the log; see :func:`train`).

    Raises:
        ValueError: for arguments out of range, labels of the wrong shape or range, or a model without
            ``num_classes``.
    """
    check_batch(images, "images")
    check_finite(images, "images")
    check_int(batch_size, "batch_size")
    num_classes = getattr(model, "num_classes", None)
    if not isinstance(num_classes, int):
        raise ValueError("model must have an int attribute num_classes (the null label); got none")
    labels = check_labels(labels, images.shape[0], num_classes, allow_null=False, name="labels")
    labels = labels.to(images.device)
    weights = _check_row_weights(weights, images.shape[0], "images")
    eval_loss = None
    if eval_data is not None:
        if not isinstance(eval_data, tuple) or len(eval_data) != 2:
            raise TypeError("eval_data must be a pair (images, labels)")
        eval_x = check_batch(eval_data[0], "eval_data images")
        eval_y = check_labels(eval_data[1], eval_x.shape[0], num_classes, allow_null=False, name="eval_data labels")
        eval_y = eval_y.to(eval_x.device)
        ex0, et = _fixed_draws(eval_x)

        def eval_loss() -> Tensor:
            return cfm_loss(model, path, eval_x, x0=ex0, t=et, generator=torch.Generator(eval_x.device), cond=eval_y)

    def step_loss() -> Tensor:
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=generator, device=images.device)
        y = drop_labels(labels[idx], p_uncond, num_classes, generator)
        w = None if weights is None else weights[idx.to(weights.device)]
        return cfm_loss(
            model,
            path,
            images[idx],
            generator=generator,
            coupling=coupling,
            cond=y,
            weights=w,
            time_sampler=time_sampler,
        )

    return fit(
        model,
        step_loss,
        steps,
        lr,
        progress=progress,
        schedule=schedule,
        warmup_steps=warmup_steps,
        ema=ema,
        clip_grad_norm=clip_grad_norm,
        eval_loss=eval_loss,
        eval_every=eval_every,
        callback=callback,
    )
