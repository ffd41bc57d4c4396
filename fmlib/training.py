"""One training loop for the CFM loss, from a notebook to many processes.

:func:`train` minimises :func:`~fmlib.cfm_loss` with a :class:`Recipe` (AdamW, a learning-rate schedule from
``torch.optim.lr_scheduler``, an exponential moving average of the weights, optional gradient clipping, a
time distribution). The same call takes a tensor, a ``torch.utils.data.Dataset`` or a ``DataLoader``; class
labels with label dropout (``cond=``, ``p_uncond=``); checkpoints and resumption; mixed precision through
``torch.autocast``; ``torch.compile``; and, when ``torch.distributed`` is initialised (as under ``torchrun``),
``DistributedDataParallel``. Sources: Kingma & Ba (2015) for Adam; Loshchilov & Hutter (2019) for AdamW's
decoupled weight decay and (2017) for the cosine schedule; Goyal et al. (2017) for the linear warm-up and for
data-parallel training with a global minibatch; Polyak & Juditsky (1992) for iterate averaging; Esser et al.
(2024) for logit-normal times; Ho & Salimans (2022) for label dropout; Micikevicius et al. (2018) for mixed
precision with loss scaling.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from ._checks import check_batch, check_finite, check_int, check_labels, check_real
from .ema import EMA
from .losses import TimeSampler, apply_coupling, regression_loss, sample_times
from .paths import ProbPath

__all__ = ["train", "Recipe", "TrainingRecord", "lr_schedule", "PRECISIONS"]

#: The mixed-precision modes of :func:`train`: the dtype the forward pass runs in under ``torch.autocast``.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

Schedule = str | Callable[[torch.optim.Optimizer, int], LRScheduler]
DEFAULT_WARMUP_FRACTION = 0.05
_CHECK_EVERY = 50  # steps between host syncs that look for a NaN/inf loss


def _optional_positive(value: object, name: str) -> float | None:
    if value is None:
        return None
    return check_real(value, name, low=0.0, low_inclusive=False)


@dataclass(frozen=True)
class Recipe:
    """How :func:`train` optimises: the optimiser, its schedule, the weight average and the time distribution.

    ``Recipe()`` is the recipe measured best on the book's 2D tasks (a 3x64 MLP, batch 512, 1500 steps;
    ``benchmarks/training_recipes.py``, chapter 10): AdamW at peak rate 3e-2 without weight decay (that is
    Adam), a linear warm-up over 5 % of the steps then a cosine decay to 0, an EMA of the weights with decay
    0.999, t ~ U[0, 1]. Image networks (the U-Net of chapter 7 and larger) want a smaller rate: start from
    ``Recipe(lr=1e-3)``. ``Recipe.constant(lr)`` is plain constant-rate Adam without averaging.

    Attributes:
        lr: peak learning rate, a finite float > 0.
        betas: AdamW's (beta1, beta2), each in [0, 1).
        weight_decay: AdamW's decoupled weight decay, >= 0 (Loshchilov & Hutter 2019).
        schedule: ``"cosine"`` (warm-up then cosine decay to 0), ``"constant"`` (warm-up then constant), or a
            callable ``(optimizer, steps) -> LRScheduler`` (see :func:`lr_schedule`).
        warmup: warm-up steps (None: 5 % of the steps for "cosine", 0 for "constant").
        ema: decay of the weight average in [0, 1) (:class:`~fmlib.EMA`, with warm-up), or None for none.
        clip_grad_norm: clip the gradient's global 2-norm to this value before each step (None: off).
        time_sampler: distribution of t: ``"uniform"``, ``"logit_normal"``, ``fmlib.logit_normal(loc, scale)``
            or a callable (see :func:`~fmlib.cfm_loss`); None is uniform.

    Raises:
        ValueError, TypeError: on construction, for a field out of range or of the wrong kind, naming it.

    Example:
        >>> Recipe.constant(3e-3)
        Recipe(lr=0.003, betas=(0.9, 0.999), weight_decay=0.0, schedule='constant', warmup=None, ema=None, \
clip_grad_norm=None, time_sampler=None)
    """

    lr: float = 3e-2
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    schedule: Schedule = "cosine"
    warmup: int | None = None
    ema: float | None = 0.999
    clip_grad_norm: float | None = None
    time_sampler: str | TimeSampler | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", check_real(self.lr, "lr", low=0.0, low_inclusive=False))
        betas = self.betas
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2); got {betas!r}")
        object.__setattr__(
            self, "betas", tuple(check_real(b, "betas", low=0.0, high=1.0, high_inclusive=False) for b in betas)
        )
        object.__setattr__(self, "weight_decay", check_real(self.weight_decay, "weight_decay", low=0.0))
        if isinstance(self.schedule, str):
            if self.schedule not in ("constant", "cosine"):
                raise ValueError(f"schedule must be 'constant', 'cosine' or a callable; got {self.schedule!r}")
        elif not callable(self.schedule):
            raise TypeError(f"schedule must be 'constant', 'cosine' or a callable; got {type(self.schedule).__name__}")
        if self.warmup is not None:
            check_int(self.warmup, "warmup", low=0)
        object.__setattr__(self, "ema", _check_decay(self.ema))
        object.__setattr__(self, "clip_grad_norm", _optional_positive(self.clip_grad_norm, "clip_grad_norm"))
        ts = self.time_sampler
        if isinstance(ts, str) and ts not in ("uniform", "logit_normal"):
            raise ValueError(f"time_sampler must be 'uniform', 'logit_normal' or a callable; got {ts!r}")
        if ts is not None and not isinstance(ts, str) and not callable(ts):
            raise TypeError(f"time_sampler must be 'uniform', 'logit_normal' or a callable; got {type(ts).__name__}")

    @classmethod
    def constant(cls, lr: float) -> Recipe:
        """Plain Adam at the constant rate ``lr``: no warm-up, no decay, no weight average."""
        return cls(lr=lr, schedule="constant", ema=None)

    def signature(self) -> dict[str, str]:
        """Each field as text: what a checkpoint stores to recognise its recipe.

        Values by their repr; a function by its module and qualified name, and an object whose repr holds a memory
        address by its class, so the same recipe gives the same signature in another process.
        """
        return {f.name: _describe(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _describe(value: object) -> str:
    text = repr(value)
    if " at 0x" not in text:
        return text
    if hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}.{value.__qualname__}"
    return f"{type(value).__module__}.{type(value).__qualname__}"


class TrainingRecord(list):
    """What a training run returns: the list of per-step losses, with the rest of the log as attributes.

    It *is* the list of losses (``record[k]`` is the loss of step k, ``len(record) == steps``), with the rest of
    the log as attributes. Under ``torch.distributed`` each loss
    is the mean over the ranks, the loss of the global minibatch.

    Attributes:
        lr: the learning rate used at every step (list of floats).
        grad_norm: the gradient norm before clipping at every step (empty unless the recipe clips).
        eval_steps: the steps (1-based counts of optimiser steps) after which the model was evaluated.
        eval_losses: the held-out CFM loss at those steps (U[0, 1] times, fixed draws of x0 and t, averaged
            weights when EMA is on); empty without ``eval_data``.
        callback_values: what ``callback(step, model)`` returned at those steps (rank 0 only).
        best_step: with ``keep_best``, the evaluated step whose weights the model carries at the end.
        ema: the :class:`~fmlib.EMA` (or None); its averages are in the returned model (unless ``keep_best``
            put the best evaluated weights there).
        final_weights: the training (non-averaged) parameters after the last step, by parameter name, when the
            model ends with other weights (EMA or ``keep_best``); None otherwise (then they are the model's).
        optimizer: the optimiser, with its state.
        checkpoints: the checkpoint files this run wrote.
        seconds: wall time of the loop, evaluations and checkpoints excluded.
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
        self.best_step: int | None = None
        self.ema: EMA | None = None
        self.final_weights: dict[str, Tensor] | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.checkpoints: list[Path] = []
        self.seconds: float = 0.0

    def _log(self) -> dict[str, Any]:
        return {
            "losses": list(self),
            "lr": self.lr,
            "grad_norm": self.grad_norm,
            "eval_steps": self.eval_steps,
            "eval_losses": self.eval_losses,
            "callback_values": self.callback_values,
            "best_step": self.best_step,
            "seconds": self.seconds,
        }

    def _restore(self, log: dict[str, Any]) -> None:
        self[:] = log["losses"]
        for key in ("lr", "grad_norm", "eval_steps", "eval_losses", "callback_values"):
            setattr(self, key, list(log[key]))
        self.best_step, self.seconds = log["best_step"], float(log["seconds"])


def lr_schedule(
    optimizer: torch.optim.Optimizer, steps: int, schedule: Schedule = "cosine", warmup_steps: int | None = None
) -> LRScheduler:
    """A learning-rate scheduler over ``steps`` optimiser steps (call ``.step()`` after each).

    With base rate lr and w warm-up steps, step k (k = 0 .. steps - 1) uses

    * ``"constant"``: lr * min(1, (k + 1) / w) (w = 0 by default: lr throughout);
    * ``"cosine"``: lr (k + 1) / w for k < w, then lr (1 + cos(pi (k - w) / (steps - w))) / 2
      (Loshchilov & Hutter 2017, without restarts, decaying towards 0 at the end; linear warm-up of
      Goyal et al. 2017). Default w = round(0.05 steps).

    A callable ``schedule(optimizer, steps)`` is called and its scheduler returned. Schedulers that step
    on a metric (``ReduceLROnPlateau``) are refused: :func:`train` steps its schedule once per optimiser step.

    Raises:
        ValueError: for an unknown name, steps < 1, or warmup_steps not an int in 0..steps.
        TypeError: if schedule is neither a name nor callable, or a callable does not return an LRScheduler,
            or returns a ReduceLROnPlateau.
    """
    check_int(steps, "steps")
    if callable(schedule) and not isinstance(schedule, str):
        sched = schedule(optimizer, steps)
        if isinstance(sched, ReduceLROnPlateau):
            raise TypeError(
                "schedule must return a scheduler that steps once per optimiser step; ReduceLROnPlateau needs a "
                "metric: use a callback that watches the held-out loss instead"
            )
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
    if ema is None:
        return None
    if isinstance(ema, bool) or not isinstance(ema, Real):
        raise TypeError(f"ema must be None (off) or a decay in [0, 1); got {type(ema).__name__}")
    if not math.isfinite(float(ema)) or not 0.0 <= float(ema) < 1.0:
        raise ValueError(f"ema must be None (off) or a decay in [0, 1); got {ema!r}")
    return float(ema)


# -- where the minibatches come from -------------------------------------------------------------------------


class _GlobalBatches(Sampler[list[int]]):
    """Index lists of this rank's share of every global minibatch of a map-style Dataset.

    Each epoch is a permutation drawn from ``seed + epoch``; global batch k of an epoch is its entries
    k B .. (k + 1) B - 1 (the last incomplete batch is dropped), and rank r takes rows r b .. (r + 1) b - 1
    (b = B / world). So N ranks see the rows of one process's minibatch, and the stream is a function of
    the step alone, which makes resumption exact.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, rank: int, world: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_step, self.rank, self.world = start_step, rank, world
        self.per_epoch = n // batch_size

    def __iter__(self) -> Iterator[list[int]]:
        b = self.batch_size // self.world
        step = self.start_step
        while True:
            epoch, k = divmod(step, self.per_epoch)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
            rows = perm[k * self.batch_size : (k + 1) * self.batch_size]
            yield rows[self.rank * b : (self.rank + 1) * b].tolist()
            step += 1


def _split_item(batch: object, where: str) -> tuple[Tensor, Tensor | None]:
    """A batch (or item) is x1, (x1,) as a TensorDataset gives it, or (x1, y) with y a tensor or an int label."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) in (1, 2) and isinstance(batch[0], Tensor):
        if len(batch) == 1:
            return batch[0], None
        y = batch[1]
        if isinstance(y, Integral) and not isinstance(y, bool):
            return batch[0], torch.tensor(int(y))
        if isinstance(y, Tensor):
            return batch[0], y
    raise TypeError(f"{where} must yield x1 or (x1, y) as tensors (y may be an int label); got {type(batch).__name__}")


def _cycle_loader(loader: DataLoader, start_step: int) -> Iterator[object]:
    """Iterate a user's DataLoader forever, skipping the batches a resumed run has already taken."""
    try:
        per_epoch = len(loader)
    except TypeError:
        per_epoch = 0
    epoch, skip = divmod(start_step, per_epoch) if per_epoch else (0, 0)
    while True:
        set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
        if set_epoch is not None:  # DistributedSampler reshuffles per epoch
            set_epoch(epoch)
        empty = True
        for i, batch in enumerate(loader):
            empty = False
            if i < skip:
                continue
            yield batch
        if empty:
            raise ValueError("data is a DataLoader that yields no batches")
        skip, epoch = 0, epoch + 1


# -- distributed -----------------------------------------------------------------------------------------------


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _autocast_active() -> str | None:
    for device_type in ("cpu", "cuda"):
        if torch.is_autocast_enabled(device_type):
            return device_type
    return None


def _check_compile(compile: object, device: torch.device) -> bool:
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be True or False; got {type(compile).__name__}")
    if not compile:
        return False
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        raise ValueError("compile=True needs torch.compile, which does not support this Python or platform")
    if device.type == "cpu" and shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("c++") is None:
        raise ValueError(
            "compile=True on a CPU needs a C++ compiler (torch.compile's inductor backend generates C++); "
            "none was found on PATH (set CXX or install g++)"
        )
    return True


# -- the loop ----------------------------------------------------------------------------------------------------


def _state_signature(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _load_checkpoint(resume: str | os.PathLike, device: torch.device) -> tuple[dict[str, Any], Path]:
    path = Path(resume)
    if path.is_dir():
        files = sorted(path.glob("step_*.pt"))
        if not files:
            raise ValueError(f"resume: no checkpoint step_*.pt in {path}")
        path = files[-1]
    if not path.is_file():
        raise ValueError(f"resume must name a checkpoint file or a checkpoint directory; {path} does not exist")
    state = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != "fmlib.train/1":
        raise ValueError(f"resume: {path} is not a checkpoint written by fmlib.train")
    return state, path


def _plan(
    batch_size: int | None, precision: str, n: int, shape: tuple[int, ...], dtype: torch.dtype, keep_best: bool
) -> dict[str, Any]:
    """What besides the model and recipe a resumed run must repeat: batch size, precision, the data's form."""
    return {
        "batch_size": batch_size,
        "precision": precision,
        "data_rows": n,
        "data_shape": list(shape),
        "data_dtype": str(dtype),
        "keep_best": keep_best,
    }


def _check_resume(state: dict[str, Any], model: nn.Module, recipe: Recipe, steps: int, path: Path) -> None:
    want, got = _state_signature(model), {k: tuple(v) for k, v in state["model_shapes"].items()}
    if want != got:
        missing = sorted(set(got) - set(want))
        extra = sorted(set(want) - set(got))
        shapes = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        raise ValueError(
            f"resume: {path} holds another model; keys only in the checkpoint: {missing[:5]}, only in the model: "
            f"{extra[:5]}, of other shapes: {shapes[:5]}"
        )
    mine = recipe.signature()
    diff = sorted(k for k in mine if state["recipe"].get(k) != mine[k])
    if diff:
        theirs = {k: state["recipe"].get(k) for k in diff}
        raise ValueError(f"resume: {path} was trained with another recipe; differing fields {theirs}")
    done = int(state["step"])
    if done > steps:
        raise ValueError(f"resume: {path} is at step {done}, beyond steps = {steps}")
    if state["steps"] != steps and recipe.schedule != "constant":
        raise ValueError(
            f"steps must equal the checkpoint's planned steps ({state['steps']}) to resume a {recipe.schedule!r} "
            f"schedule (it spans the whole run); got {steps}"
        )


def train(
    model: nn.Module,
    path: ProbPath,
    data: Tensor | Dataset | DataLoader,
    steps: int,
    *,
    recipe: Recipe | None = None,
    batch_size: int | None = None,
    cond: Tensor | None = None,
    p_uncond: float = 0.0,
    coupling: Callable[[Tensor, Tensor], Any] | None = None,
    source: Tensor | None = None,
    generator: torch.Generator | None = None,
    eval_data: Tensor | tuple[Tensor, Tensor] | None = None,
    eval_every: int | None = None,
    keep_best: bool = False,
    callback: Callable[[int, nn.Module], Any] | None = None,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: str | os.PathLike | None = None,
    precision: str = "fp32",
    compile: bool = False,
) -> TrainingRecord:
    """Train ``model`` by minimising :func:`~fmlib.cfm_loss` along ``path`` with a :class:`Recipe`.

    Every step takes a global minibatch of ``batch_size`` rows x1 (with their labels), x0 (fresh N(0, I)
    noise, or the rows of ``source`` paired with them) and t (the recipe's time sampler), all drawn from
    ``generator``, so equally seeded runs give the same losses. After the last step the model is in eval
    mode and carries the averaged weights when the recipe has an EMA (the best evaluated ones with
    ``keep_best``). Input is checked once, before the first step: bad arguments raise before any weight changes.

    Data:
        * a tensor of shape ``(N, *D)``: rows drawn uniformly with replacement each step;
        * a map-style ``torch.utils.data.Dataset`` whose items are ``x1`` or ``(x1, y)``: an epoch is a
          permutation drawn from the generator, cut into global minibatches (the last partial one dropped),
          loaded through a ``DataLoader`` (streaming: items may be read from disk as they are asked for);
        * a ``DataLoader`` yielding ``x1`` or ``(x1, y)`` batches: used as it is, epoch after epoch (its
          own sampler decides the order; under torchrun give it a ``DistributedSampler``).

    Many processes: when ``torch.distributed`` is initialised (``torchrun``), the model is wrapped in
    ``DistributedDataParallel`` and every rank draws the same global minibatch (indices, x0, t, label
    dropout) from the same generator and keeps its own ``batch_size / world_size`` rows, so N processes
    take the steps one process takes with the same ``batch_size``, up to float rounding (a coupling then
    pairs each rank's rows among themselves). The EMA is kept on every rank (the weights are equal);
    checkpoints, the progress bar and the callback run on rank 0; every rank ends with the same weights.

    Args:
        model: a velocity model ``model(x, t)``, or ``model(x, t, y)`` when labels are given; its parameters
            are updated in place, on the device of the data (tensor data) or its own.
        path: the conditional path that defines the regression target.
        data: the training set x1 (see Data above), finite, without an autograd graph.
        steps: total number of optimiser steps, >= 1 (including those of a resumed run).
        recipe: the :class:`Recipe` (default ``Recipe()``).
        batch_size: the global minibatch size (default 256), divisible by the number of processes; not
            allowed with a DataLoader (its batches are used as they are).
        cond: labels of a tensor ``data``, one per row, shape (N,) (an integer tensor in
            0..model.num_classes - 1 when the model has ``num_classes``), passed as the model's third
            argument. A Dataset or DataLoader gives its labels in its items.
        p_uncond: probability of replacing a label by the null label ``model.num_classes`` (label dropout
            for classifier-free guidance, Ho & Salimans 2022), in [0, 1].
        coupling: an index-returning ``coupling(x0, x1) -> pi`` such as ``fmlib.ot_assignment``, applied to
            each minibatch (see :func:`~fmlib.cfm_loss`); labels follow their rows.
        source: samples of a non-Gaussian source, shape ``(N, *D)`` like a tensor ``data``: row i is paired
            with row i of data (a reflow pair set keeps its pairing; a ``coupling`` then re-pairs the rows of each
            minibatch, as for OT between two data sets). Default: fresh N(0, I) noise.
        generator: random generator on the data's device (required under torch.distributed).
        eval_data: held-out data ``(M, *D)``, or ``(x, y)`` with labels: its CFM loss is logged every
            ``eval_every`` steps, with fixed draws of x0 and t.
        eval_every: evaluation period in steps (default steps // 10); the last step is always evaluated.
        keep_best: end with the evaluated weights of the lowest held-out loss (needs eval_data); against
            memorisation of a small training set.
        callback: ``callback(step, model)`` at the same steps (model in eval mode, carrying the averaged
            weights with EMA; rank 0 only); its return values are logged (plain numbers, strings, tuples,
            lists or dicts of them, or tensors, when checkpointing). A callback may change the weights in place;
            a layer it replaces is not trained (the optimiser holds the parameters it was given).
        progress: show a tqdm progress bar with the mean loss of the last 50 steps.
        checkpoint_dir: write a checkpoint ``step_NNNNNNNN.pt`` there every ``checkpoint_every`` steps and
            at the end: the model, the EMA, the optimiser, the schedule, the generator's state, the step,
            the recipe and the record so far, in one ``torch.save`` file that loads with ``weights_only=True``.
        checkpoint_every: checkpoint period in steps (default: only at the end); needs checkpoint_dir.
        resume: a checkpoint file, or a directory (its latest checkpoint), to continue from: the same model,
            recipe, batch size, precision, ``keep_best`` and data (rows, shape, dtype), and the same ``steps`` for a
            cosine schedule, all checked before anything is loaded. A tensor or Dataset run resumed this way
            takes bitwise the same steps as an uninterrupted one on the CPU.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``: the forward pass runs under ``torch.autocast`` in
            that dtype on the data's device (fp16 with a gradient scaler); the weights, the loss, the
            optimiser state and the EMA stay float32. Do not wrap ``train`` in ``torch.autocast`` yourself:
            autocast caches low-precision copies of the weights for as long as its block is open, so the
            forward pass would keep seeing the starting weights; ``train`` refuses to run inside one.
        compile: compile the model with ``torch.compile`` for the training steps (it needs a supported
            Python and, on a CPU, a C++ compiler; the first steps are slow while it compiles).

    Returns:
        A :class:`TrainingRecord`: the list of the ``steps`` losses, with ``.lr``, ``.eval_steps``,
        ``.eval_losses``, ``.callback_values``, ``.grad_norm``, ``.best_step``, ``.ema``,
        ``.checkpoints`` and ``.seconds``.

    Raises:
        ValueError: for arguments out of range; empty or non-finite data; a source, eval_data or Dataset
            item of another shape; labels of the wrong length or range; p_uncond > 0 for a model without
            ``num_classes``; an unknown precision; compile=True where torch.compile cannot run;
            checkpoint_every without checkpoint_dir; keep_best without eval_data; a batch_size not
            divisible by the number of processes; a distributed run without a generator; a checkpoint of
            another model, recipe or plan; a training loss that becomes NaN or inf.
        TypeError: for arguments of the wrong kind.
        RuntimeError: when called inside an open ``torch.autocast`` block.
    """
    recipe = Recipe() if recipe is None else recipe
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a fmlib.Recipe; got {type(recipe).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    check_int(steps, "steps")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}; got {precision!r}")
    outer = _autocast_active()
    if outer is not None:
        raise RuntimeError(  # the caller's state, not an argument
            f"train is running inside torch.autocast ({outer}): autocast caches low-precision copies of the "
            "starting weights while its block is open, so nothing would be learned; call train outside it and "
            "pass precision='bf16' or 'fp16'"
        )
    rank, world = _world()
    if world > 1 and generator is None:
        raise ValueError(
            "generator is required under torch.distributed: every rank draws the same global minibatch from it"
        )
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable (step, model); got {type(callback).__name__}")
    if not isinstance(keep_best, bool):
        raise TypeError(f"keep_best must be True or False; got {type(keep_best).__name__}")
    if keep_best and eval_data is None:
        raise ValueError("keep_best needs eval_data: the best weights are those of the lowest held-out loss")
    if checkpoint_every is not None:
        check_int(checkpoint_every, "checkpoint_every")
        if checkpoint_dir is None:
            raise ValueError("checkpoint_every needs checkpoint_dir: where to write the checkpoints")
    check_real(p_uncond, "p_uncond", low=0.0, high=1.0)
    num_classes = getattr(model, "num_classes", None)
    if p_uncond > 0 and not isinstance(num_classes, int):
        raise ValueError("p_uncond > 0 needs a model with an int attribute num_classes (the null label); got none")
    if eval_every is None:
        eval_every = max(1, steps // 10)
    check_int(eval_every, "eval_every")

    # -- the data: a tensor, a Dataset or a DataLoader -----------------------------------------------------
    params = list(model.parameters())
    model_device = params[0].device if params else torch.device("cpu")
    loader: DataLoader | None = None
    if isinstance(data, Tensor):
        data = _check_tensor_data(data, "data")
        device = data.device
        n = data.shape[0]
        feature_shape = tuple(data.shape[1:])
        if cond is not None:
            cond = _check_cond(cond, n, num_classes, "cond").to(device)
        if source is not None:
            source = _check_tensor_data(source, "source")
            if tuple(source.shape) != tuple(data.shape):
                raise ValueError(
                    f"source must have data's shape {tuple(data.shape)} (row i of source is paired with row i of "
                    f"data); got {tuple(source.shape)}"
                )
            source = source.to(device)
    elif isinstance(data, (Dataset, DataLoader)):
        if cond is not None:
            raise ValueError("cond is for tensor data; a Dataset or DataLoader gives (x1, y) items instead")
        if source is not None:
            raise ValueError("source is for tensor data; pair x0 with x1 in a tensor data set")
        device = model_device
        if isinstance(data, DataLoader):
            if batch_size is not None:
                raise ValueError("batch_size is set by the DataLoader given as data; leave batch_size out")
            loader = data
            if loader.batch_size is None and loader.batch_sampler is None:
                raise ValueError("data is an unbatched DataLoader (batch_size=None); give it a batch_size")
            first = next(iter(loader), None)
            if first is None:
                raise ValueError("data is a DataLoader that yields no batches")
        else:
            if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
                raise TypeError(
                    "data must be a map-style Dataset (with __len__); wrap an IterableDataset in a DataLoader"
                )
            if len(data) == 0:
                raise ValueError("data is an empty Dataset")
            first = data[0]
        x_first, y_first = _split_item(first, "data")
        feature_shape = tuple(x_first.shape[1:] if isinstance(data, DataLoader) else x_first.shape)
        if not x_first.is_floating_point():
            raise TypeError(f"data must yield floating-point x1; got dtype {x_first.dtype}")
        n = len(data) if isinstance(data, Dataset) else 0  # type: ignore[arg-type]
    else:
        raise TypeError(f"data must be a tensor, a torch.utils.data.Dataset or a DataLoader; got {type(data).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
    if checkpoint_dir is not None:
        if not isinstance(checkpoint_dir, (str, os.PathLike)):
            raise TypeError(f"checkpoint_dir must be a path; got {type(checkpoint_dir).__name__}")
        if Path(checkpoint_dir).exists() and not Path(checkpoint_dir).is_dir():
            raise ValueError(f"checkpoint_dir must be a directory; {checkpoint_dir} is a file")
    if recipe.warmup is not None and recipe.warmup > steps:
        raise ValueError(f"recipe.warmup must be <= steps = {steps}; got {recipe.warmup}")
    if params and model_device.type != device.type:
        raise ValueError(f"model must live on the data's device ({device}); its parameters are on {model_device}")
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator must live on the data's device ({device}); got one on {generator.device}")
    if batch_size is None and loader is None:
        batch_size = 256
    if batch_size is not None:
        check_int(batch_size, "batch_size")
        if batch_size % world:
            raise ValueError(f"batch_size must be divisible by the number of processes ({world}); got {batch_size}")
        if isinstance(data, Dataset) and not isinstance(data, Tensor) and batch_size > n:
            raise ValueError(f"batch_size must be <= the Dataset's length {n}; got {batch_size}")
    labelled = cond is not None if isinstance(data, Tensor) else y_first is not None
    if p_uncond > 0 and not labelled:
        raise ValueError("p_uncond > 0 needs labels: pass cond= or a data set of (x1, y) items")
    data_dtype = data.dtype if isinstance(data, Tensor) else x_first.dtype
    eval_x, eval_y = _check_eval_data(eval_data, feature_shape, num_classes, device)
    if eval_x is not None:
        if eval_x.dtype != data_dtype:
            raise ValueError(f"eval_data must have the training data's dtype {data_dtype}; got {eval_x.dtype}")
        if labelled != (eval_y is not None):
            want = "a pair (x, y) with labels, as the training data has" if labelled else "unlabelled, as the data is"
            raise ValueError(f"eval_data must be {want}")
    compiled = _check_compile(compile, device)
    autocast_dtype = PRECISIONS[precision]
    if autocast_dtype is not None and device.type not in ("cpu", "cuda"):
        raise ValueError(f"precision={precision!r} needs a CPU or CUDA device; got {device}")
    state: dict[str, Any] | None = None
    if resume is not None:
        state, resume_path = _load_checkpoint(resume, device)
        _check_resume(state, model, recipe, steps, resume_path)
        plan = _plan(batch_size, precision, n, feature_shape, data_dtype, keep_best)
        diff = {k: (state["plan"].get(k), v) for k, v in plan.items() if state["plan"].get(k) != v}
        if diff:
            raise ValueError(
                f"resume: {resume_path} was trained with other settings: {diff} (checkpoint's, this call's); a "
                "resumed run must repeat the call that wrote it"
            )

    # -- everything is checked: build the optimiser, the schedule and the wrappers ---------------------------
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("model must have trainable parameters")
    optimizer = torch.optim.AdamW(trainable, lr=recipe.lr, betas=recipe.betas, weight_decay=recipe.weight_decay)
    scheduler = lr_schedule(optimizer, steps, recipe.schedule, recipe.warmup)
    averager = EMA(model, recipe.ema) if recipe.ema is not None else None
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    record = TrainingRecord([])
    best: tuple[float, dict[str, Tensor]] | None = None
    start = 0
    data_seed = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if averager is not None:
            averager.load_state_dict(state["ema"])
        _generator_of(generator, device).set_state(state["generator"].cpu())
        record._restore(state["record"])
        start, data_seed = int(state["step"]), state["data_seed"]
        if keep_best and state.get("best") is not None:
            best = (float(state["best_loss"]), state["best"])
    if isinstance(data, Dataset) and not isinstance(data, Tensor) and data_seed is None:
        data_seed = int(torch.randint(0, 2**62, (), generator=generator, device=device))
    forward: nn.Module = model
    if world > 1:
        ids = (
            [device.index if device.index is not None else torch.cuda.current_device()]
            if device.type == "cuda"
            else None
        )
        forward = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if compiled:
        forward = torch.compile(forward)  # type: ignore[assignment]

    # -- one global minibatch per step ----------------------------------------------------------------------
    B = batch_size if batch_size is not None else 0  # 0: the DataLoader decides
    rows = slice(rank * (B // world), (rank + 1) * (B // world))
    tensor_data = data if isinstance(data, Tensor) else None
    stream: Iterator[object] | None = None
    if loader is not None:
        stream = _cycle_loader(loader, start)
    elif tensor_data is None:
        assert data_seed is not None
        sampler = _GlobalBatches(n, B, data_seed, start, rank, world)
        stream = iter(DataLoader(data, batch_sampler=sampler))  # type: ignore[arg-type]
    time_dtype = None
    checked = False

    def autocast() -> contextlib.AbstractContextManager:
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=autocast_dtype)

    def next_batch() -> tuple[Tensor, Tensor | None, Tensor | None, int]:
        """This rank's x1, y, x0 (None: draw noise) and the global batch size."""
        if tensor_data is not None:
            idx = torch.randint(0, n, (B,), generator=generator, device=device)[rows]
            x1 = tensor_data[idx]
            return x1, (None if cond is None else cond[idx]), (None if source is None else source[idx]), B
        assert stream is not None
        x1, y = _split_item(next(stream), "data")
        if x1.requires_grad:
            raise ValueError("data must not carry an autograd graph; encode it under torch.no_grad() or detach it")
        if tuple(x1.shape[1:]) != feature_shape or not x1.is_floating_point():
            raise ValueError(
                f"data must yield x1 of shape (b, {', '.join(map(str, feature_shape))}); got {tuple(x1.shape)}"
            )
        x1 = x1.to(device, non_blocking=True)
        if y is not None:
            y = _check_cond(y, x1.shape[0], num_classes, "data's labels").to(device)
        return x1, y, None, x1.shape[0] * world

    def step_loss() -> Tensor:
        nonlocal time_dtype, checked
        x1, y, x0, global_b = next_batch()
        local = slice(rank * x1.shape[0], (rank + 1) * x1.shape[0])
        if p_uncond > 0:
            if y is None:
                raise ValueError("p_uncond > 0 needs labels: pass cond= or a data set of (x1, y) items")
            drop = torch.rand(global_b, generator=generator, device=device)[local] < p_uncond
            y = torch.where(drop, torch.full_like(y, int(num_classes)), y)  # type: ignore[arg-type]
        if x0 is None:
            x0 = torch.randn((global_b, *x1.shape[1:]), generator=generator, dtype=x1.dtype, device=device)[local]
        if time_dtype is None:
            time_dtype = torch.promote_types(x1.dtype, torch.float32)
        t = sample_times(recipe.time_sampler, global_b, generator, time_dtype, device)[local]
        if coupling is not None:
            x0, x1, y, _ = apply_coupling(coupling, x0, x1, y, None)
        with autocast():
            loss = regression_loss(
                forward, path, x0, x1, t, y, generator=generator, check_output=not checked, trusted=checked
            )
        checked = True  # the first step checked the path's inputs and the model's output; the draws keep their form
        return loss

    # -- the loop -------------------------------------------------------------------------------------------
    norms = torch.empty(steps) if recipe.clip_grad_norm is not None else None
    if norms is not None and record.grad_norm:
        norms[:start] = torch.tensor(record.grad_norm)
    losses = torch.empty(steps, device=device)
    if start:
        losses[:start] = torch.tensor(list(record), device=device)
    lrs = list(record.lr)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None and rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    seconds, begin = record.seconds, time.perf_counter()
    evaluating = eval_x is not None or callback is not None
    held_out = None
    if eval_x is not None:
        ex0, et = _fixed_draws(eval_x)

        def held_out() -> Tensor:
            return regression_loss(model, path, ex0, eval_x, et, eval_y, generator=torch.Generator(device))

    checked_to = start
    model.train()
    bar = tqdm(
        range(start, steps),
        disable=not progress or rank != 0,
        desc="training",
        mininterval=1.0,
        initial=start,
        total=steps,
    )
    for k in bar:
        lrs.append(optimizer.param_groups[0]["lr"])
        loss = step_loss()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if norms is not None:
            scaler.unscale_(optimizer)
            norms[k] = torch.nn.utils.clip_grad_norm_(trainable, recipe.clip_grad_norm or 0.0).detach()
        scaler.step(optimizer)
        scaler.update()
        if precision == "fp16":  # the scaler skips the steps whose gradients overflowed, by design
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
                scheduler.step()
        else:
            scheduler.step()
        if averager is not None:
            averager.update()
        if world > 1:  # the record holds the loss of the global minibatch
            loss = loss.detach().clone()
            dist.all_reduce(loss)
            loss /= world
        losses[k] = loss.detach()
        done = k + 1
        evaluate_now = evaluating and (done % eval_every == 0 or done == steps)
        save_now = ckpt_dir is not None and (
            done == steps or (checkpoint_every is not None and done % checkpoint_every == 0)
        )
        if done % _CHECK_EVERY == 0 or done == steps or evaluate_now or save_now:
            # one sync per 50 steps, and before anything reads the weights: stop at a NaN/inf loss
            _check_losses(losses[:done], checked_to, precision)
            if progress and rank == 0 and done - checked_to > 0:
                bar.set_postfix(loss=f"{float(losses[checked_to:done].mean()):.4g}", refresh=False)
            checked_to = done
        if evaluate_now:
            seconds += time.perf_counter() - begin
            value = _evaluate(model, averager, record, done, held_out, callback if rank == 0 else None, bool(ckpt_dir))
            if keep_best and value is not None and (best is None or value < best[0]):
                best = (value, _evaluated_weights(model, averager))
                record.best_step = done
            begin = time.perf_counter()
        if save_now:
            seconds += time.perf_counter() - begin
            if rank == 0 and ckpt_dir is not None:
                record[:] = losses[:done].tolist()
                record.lr = lrs[:done]
                record.grad_norm = norms[:done].tolist() if norms is not None else []
                record.seconds = seconds
                file = ckpt_dir / f"step_{done:08d}.pt"
                torch.save(
                    {
                        "format": "fmlib.train/1",
                        "step": done,
                        "steps": steps,
                        "model": model.state_dict(),
                        "model_shapes": {k2: list(v) for k2, v in _state_signature(model).items()},
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "ema": averager.state_dict() if averager is not None else None,
                        "generator": _generator_of(generator, device).get_state(),
                        "data_seed": data_seed,
                        "recipe": recipe.signature(),
                        "plan": _plan(batch_size, precision, n, feature_shape, data_dtype, keep_best),
                        "record": record._log(),
                        "best": best[1] if best is not None else None,
                        "best_loss": best[0] if best is not None else None,
                    },
                    file,
                )
                record.checkpoints.append(file)
            if world > 1:
                dist.barrier()
            begin = time.perf_counter()
    seconds += time.perf_counter() - begin
    model.eval()
    if averager is not None or best is not None:
        record.final_weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    if averager is not None:
        averager.copy_to()
    if best is not None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(best[1][name])
    record[:] = losses.tolist()
    record.lr = lrs
    record.grad_norm = norms.tolist() if norms is not None else []
    record.ema, record.optimizer, record.seconds = averager, optimizer, seconds
    return record


def _generator_of(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    if generator is not None:
        return generator
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


def _check_losses(losses: Tensor, start: int, precision: str) -> None:
    bad = (~torch.isfinite(losses[start:])).nonzero()
    if bad.numel():
        first = start + int(bad[0])
        hint = "" if precision == "fp32" else f", or train with precision='fp32' (this run used {precision!r})"
        raise ValueError(
            f"the training loss became NaN or inf at step {first + 1} (loss {float(losses[first])}); "
            f"check the data for non-finite values, or lower the learning rate{hint}"
        )


def _check_tensor_data(x: object, name: str) -> Tensor:
    check_batch(x, name)
    assert isinstance(x, Tensor)
    if x.requires_grad:
        raise ValueError(
            f"{name} must not carry an autograd graph (it requires grad); encode it under torch.no_grad() "
            f"or pass {name}.detach()"
        )
    check_finite(x, name)
    return x


def _check_cond(y: object, n: int, num_classes: object, name: str) -> Tensor:
    if isinstance(num_classes, int):
        return check_labels(y, n, num_classes, allow_null=False, name=name)
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a tensor with one row per sample, shape ({n}, ...); got {type(y).__name__}")
    if y.dim() == 0 or y.shape[0] != n:
        raise ValueError(f"{name} must have one row per sample, shape ({n}, ...); got shape {tuple(y.shape)}")
    return y


def _check_eval_data(
    eval_data: object, feature_shape: tuple[int, ...], num_classes: object, device: torch.device
) -> tuple[Tensor | None, Tensor | None]:
    if eval_data is None:
        return None, None
    if isinstance(eval_data, tuple):
        if len(eval_data) != 2:
            raise TypeError("eval_data must be a tensor or a pair (x, y)")
        x, y = eval_data
    else:
        x, y = eval_data, None
    x = _check_tensor_data(x, "eval_data")
    if tuple(x.shape[1:]) != feature_shape:
        raise ValueError(f"eval_data must have data's feature shape {feature_shape}; got {tuple(x.shape[1:])}")
    if y is not None:
        y = _check_cond(y, x.shape[0], num_classes, "eval_data labels").to(device)
    return x.to(device), y


def _fixed_draws(x: Tensor) -> tuple[Tensor, Tensor]:
    """x0 ~ N(0, I) and t ~ U[0, 1] for a held-out batch, from their own seeded generator (fixed across calls)."""
    g = torch.Generator(device=x.device).manual_seed(0)
    x0 = torch.randn(x.shape, generator=g, dtype=x.dtype, device=x.device)
    t = torch.rand(x.shape[0], generator=g, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
    return x0, t


def _evaluated_weights(model: nn.Module, averager: EMA | None) -> dict[str, Tensor]:
    if averager is None:
        return {name: p.detach().clone() for name, p in model.named_parameters()}
    with averager.averaged():
        return {name: p.detach().clone() for name, p in model.named_parameters()}


_PLAIN = (int, float, str, bool, type(None), Tensor)


def _plain(value: object) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _evaluate(
    model: nn.Module,
    averager: EMA | None,
    record: TrainingRecord,
    step: int,
    held_out: Callable[[], Tensor] | None,
    callback: Callable[[int, nn.Module], Any] | None,
    checkpointing: bool,
) -> float | None:
    """Log the held-out loss and the callback's value with the evaluated (averaged) weights, in eval mode."""
    model.eval()
    value = None
    scope = averager.averaged() if averager is not None else contextlib.nullcontext()
    try:
        with scope:
            record.eval_steps.append(step)
            if held_out is not None:
                with torch.no_grad():
                    value = float(held_out())
                record.eval_losses.append(value)
            if callback is not None:
                out = callback(step, model)
                if checkpointing and not _plain(out):
                    raise TypeError(
                        "callback must return plain values (numbers, strings, tensors, tuples, lists or dicts of them) "
                        f"when checkpointing, so that checkpoints load with weights_only=True; got {type(out).__name__}"
                    )
                record.callback_values.append(out)
    finally:
        model.train()
    return value
