"""Discrete flow matching: mixture paths on token sequences, their exact marginal, the loss and the jump sampler.

A sequence of L tokens is an int64 tensor of shape (B, L) with values in a vocabulary 0..V-1. A
continuous-time Markov chain (CTMC) moves it by jumps: position i of x jumps to the state y at the rate
u_t^i(y, x) >= 0 (y != x^i), and u_t^i(x^i, x) = -sum_{y != x^i} u_t^i(y, x), so each row of the
*probability velocity* u (shape (B, L, num_states)) sums to zero. The distribution p_t of the chain obeys
the Kolmogorov forward equation

    d p_t(x) / dt = sum_y u_t(x, y) p_t(y),

where the rate from y to x is u_t^i(x^i, y) when x and y differ at position i alone, and the diagonal
sum_i u_t^i(y^i, y) when x = y (Lipman et al. 2024, Section 6, eqs. 6.5-6.8).

The *mixture path* factorises over positions and mixes the data with a source p_0:

    p_t(x^i | x1^i) = kappa_t delta(x^i, x1^i) + (1 - kappa_t) p_0(x^i),

with kappa_0 = 0 and kappa_1 = 1 (here kappa_t is a scheduler's alpha_t). The source is either the
*mask* (one extra state, index V, so that every sequence starts fully masked) or uniform over the
vocabulary. The conditional velocity kappa_t' / (1 - kappa_t) (delta(y, x1^i) - delta(y, x^i)) generates
this path, and averaging it over the posterior p_{1|t}(x1^i | x) gives the marginal velocity

    u_t^i(y, x) = kappa_t' / (1 - kappa_t) (p_{1|t}(y | x) - delta(y, x^i))

(Gat et al. 2024, Section 2.3 and eq. 21; Campbell et al. 2024, Section 3; Lipman et al. 2024,
Section 7.4). A network that predicts the posterior p_{1|t}(x1^i | x) therefore gives the velocity in closed
form; it is trained with a cross-entropy (or the generalised KL of Lipman et al. 2024, Section 7.5) and
sampled with Euler jumps.

Sources: Gat et al. (2024), *Discrete Flow Matching*; Campbell et al. (2024), *Generative Flows on
Discrete State-Spaces*; Lipman et al. (2024), *Flow Matching Guide and Code*, Sections 6 (continuous-time
Markov chains) and 7 (discrete flow matching).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real

import torch
from torch import Tensor, nn

from ._checks import ReadOnlyParameters, as_time, check_int, check_labels, check_real
from .losses import _check_weights, sample_times
from .schedulers import Scheduler

__all__ = [
    "MixtureDiscretePath",
    "discrete_cfm_loss",
    "DiscreteEmpiricalMarginal",
    "sample_discrete",
    "TokenMLP",
    "SOURCES",
    "LOSSES",
]

SOURCES = ("mask", "uniform")
"""The sources of a :class:`MixtureDiscretePath`: one extra mask state, or uniform over the vocabulary."""

LOSSES = ("cross_entropy", "generalized_kl")
"""The losses of :func:`discrete_cfm_loss`."""


# -- input checks -------------------------------------------------------------------------------------------


def _check_tokens(x: object, name: str, high: int, what: str) -> Tensor:
    """Return x if it is an integer tensor of shape (B, L), B, L >= 1, with values in 0..high-1."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be an int64 tensor of tokens, shape (B, L); got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(
            f"{name} must hold integer tokens (int64, shape (B, L)); got dtype {x.dtype} (convert with .long())"
        )
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must have shape (B, L) with B, L >= 1; got shape {tuple(x.shape)}")
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi >= high:
        raise ValueError(f"{name} must hold {what} in 0..{high - 1}; got values in [{lo}, {hi}]")
    return x.long()


def _times(t: object, batch: int, device: torch.device, dtype: torch.dtype, name: str = "t") -> Tensor:
    """t (a float, a 0-d tensor or shape (batch,)) as a tensor of shape (batch,) in [0, 1]."""
    if isinstance(t, Tensor) and (t.dtype == torch.bool or t.is_complex()):
        raise TypeError(
            f"{name} must be a float, a 0-d tensor or a real tensor of shape ({batch},); got dtype {t.dtype}"
        )
    return as_time(t, torch.empty(batch, device=device, dtype=dtype), name)


def _float_dtype(t: object, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype of the probabilities: ``dtype`` if given, else t's if t is a float64 tensor, else float32."""
    if dtype is not None:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype; got {dtype!r}")
        return torch.promote_types(dtype, torch.float32)
    if isinstance(t, Tensor) and t.is_floating_point():
        return torch.promote_types(t.dtype, torch.float32)
    return torch.float32


def _check_cond(cond: object, batch: int, name: str = "cond") -> Tensor:
    if not isinstance(cond, Tensor):
        raise TypeError(
            f"{name} must be a tensor with one row per sample, shape ({batch}, ...); got {type(cond).__name__}"
        )
    if cond.dim() == 0 or cond.shape[0] != batch:
        raise ValueError(f"{name} must have one row per sample, shape ({batch}, ...); got shape {tuple(cond.shape)}")
    return cond


# -- the path ------------------------------------------------------------------------------------------------


class MixtureDiscretePath(ReadOnlyParameters):
    """The factorised mixture path p_t(x^i | x1^i) = kappa_t delta(x^i, x1^i) + (1 - kappa_t) p_0(x^i).

    kappa_t is the scheduler's alpha_t (the weight of the data), which must run from kappa_0 = 0 to
    kappa_1 = 1 and never decrease: :class:`~fmlib.CondOTScheduler` (kappa_t = t, whatever its sigma_min),
    :class:`~fmlib.PolynomialScheduler` (t^n) and :class:`~fmlib.CosineScheduler` qualify; the VP
    schedule (alpha_0 > 0) does not. With ``source="mask"`` the source is one extra *mask* state with index
    ``vocab_size`` (states 0..vocab_size, ``num_states = vocab_size + 1``): a position is either still
    masked or already shows its final token. With ``source="uniform"`` p_0 is uniform over the vocabulary
    (``num_states = vocab_size``). Gat et al. (2024), eqs. 8-9; Lipman et al. (2024), Section 7.3.

    A network for this path predicts the logits of the posterior p_{1|t}(x1^i | x) (shape
    (B, L, vocab_size), never the mask); :meth:`velocity` turns the posterior into the probability
    velocity u of shape (B, L, num_states).

    Args:
        scheduler: a :class:`~fmlib.Scheduler` with alpha_0 = 0, alpha_1 = 1, non-decreasing.
        vocab_size: the number of tokens V, an int >= 2.
        source: ``"mask"`` or ``"uniform"``.

    Attributes:
        num_states: the number of states of a position (V + 1 with the mask, V without).
        mask_index: the mask state V, or None for the uniform source.

    Raises:
        TypeError: if scheduler is not a Scheduler, vocab_size not an int or source not a string.
        ValueError: if the scheduler's alpha_t does not run from 0 to 1 (or decreases), vocab_size < 2,
            or source is not one of ``SOURCES``.

    Example:
        >>> from fmlib import CondOTScheduler
        >>> path = MixtureDiscretePath(CondOTScheduler(), vocab_size=4, source="mask")
        >>> path.num_states, path.mask_index
        (5, 4)
        >>> path.sample(None, torch.tensor([[0, 1, 2, 3]]), 1.0)
        tensor([[0, 1, 2, 3]])
    """

    _parameters: tuple[str, ...] = ("scheduler", "vocab_size", "source")
    _kind = "path"

    def __init__(self, scheduler: Scheduler, vocab_size: int, source: str = "mask") -> None:
        if not isinstance(scheduler, Scheduler):
            raise TypeError(
                "scheduler must be an fmlib Scheduler whose alpha_t runs from 0 to 1 (e.g. fmlib.CondOTScheduler()); "
                f"got {type(scheduler).__name__}"
            )
        grid = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
        alpha = scheduler._alpha_sigma(grid)[0]  # alpha_t alone is defined on all of [0, 1]
        a0, a1 = float(alpha[0]), float(alpha[-1])
        if abs(a0) > 1e-12 or abs(a1 - 1.0) > 1e-12:
            raise ValueError(
                f"scheduler must have alpha_0 = 0 and alpha_1 = 1 (kappa_t runs from the source to the data); "
                f"{scheduler!r} has alpha_0 = {a0:.6g} and alpha_1 = {a1:.6g}"
            )
        if bool((alpha.diff() < 0).any()):
            raise ValueError(f"scheduler must have a non-decreasing alpha_t (jump rates >= 0); {scheduler!r} decreases")
        check_int(vocab_size, "vocab_size", low=2)
        if not isinstance(source, str):
            raise TypeError(f"source must be one of {SOURCES}; got {type(source).__name__}")
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}; got {source!r}")
        self.scheduler = scheduler
        self.vocab_size = int(vocab_size)
        self.source = source

    def __repr__(self) -> str:
        return f"MixtureDiscretePath({self.scheduler!r}, vocab_size={self.vocab_size}, source={self.source!r})"

    @property
    def num_states(self) -> int:
        """The number of states of a position: vocab_size + 1 with the mask source, vocab_size otherwise."""
        return self.vocab_size + (1 if self.source == "mask" else 0)

    @property
    def mask_index(self) -> int | None:
        """The index of the mask state (``vocab_size``), or None for the uniform source."""
        return self.vocab_size if self.source == "mask" else None

    def kappa(self, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """(kappa_t, d kappa_t / dt) at times t (a float or a floating tensor in [0, 1]), each of t's shape."""
        s = self.scheduler(t)
        return s.alpha_t, s.d_alpha_t

    def source_probs(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """p_0 over the states, shape (num_states,): one-hot on the mask, or uniform 1 / vocab_size.

        Raises:
            TypeError: if dtype is not a floating torch.dtype.
        """
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype; got {dtype!r}")
        if self.source == "mask":
            p = torch.zeros(self.num_states, dtype=dtype, device=device)
            p[self.vocab_size] = 1.0
            return p
        return torch.full((self.num_states,), 1.0 / self.vocab_size, dtype=dtype, device=device)

    def sample_source(self, shape: tuple[int, int], generator: torch.Generator | None = None, device=None) -> Tensor:
        """Draws x0 ~ p_0 of shape (B, L), int64: all masks, or uniform tokens drawn with ``generator``."""
        if not (isinstance(shape, tuple) and len(shape) == 2):
            raise ValueError(f"shape must be a pair (B, L); got {shape!r}")
        for n, name in zip(shape, ("B", "L")):
            check_int(n, f"shape's {name}")
        if self.source == "mask":
            return torch.full(shape, self.vocab_size, dtype=torch.long, device=device)
        return torch.randint(0, self.vocab_size, shape, generator=generator, device=device)

    def check_tokens(self, x: object, name: str = "x") -> Tensor:
        """Return x as int64 if it is a (B, L) integer tensor of states 0..num_states - 1 (else raise)."""
        return _check_tokens(x, name, self.num_states, "states")

    def sample(
        self, x0: Tensor | None, x1: Tensor, t: float | Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw x_t ~ p_t(x | x0, x1): each position independently is x1^i with probability kappa_t, else x0^i.

        Args:
            x0: source tokens, int64 of shape (B, L) with states in 0..num_states - 1 (for the mask source
                usually all ``mask_index``), or None to draw them from p_0 with ``generator``.
            x1: data tokens, int64 of shape (B, L) in 0..vocab_size - 1.
            t: times in [0, 1]: a float, a 0-d tensor or shape (B,).
            generator: random generator on x1's device.

        Returns:
            x_t, int64 of shape (B, L).

        Raises:
            TypeError: if x0 or x1 is not an integer tensor, or t is neither a number nor a tensor.
            ValueError: if x1 holds tokens outside 0..vocab_size - 1, x0 states outside 0..num_states - 1,
                x0 and x1 differ in shape, or t is outside [0, 1] or of the wrong length.
        """
        x1 = _check_tokens(x1, "x1", self.vocab_size, "tokens")
        if x0 is None:
            x0 = self.sample_source(tuple(x1.shape), generator, x1.device)  # type: ignore[arg-type]
        x0 = self.check_tokens(x0, "x0")
        if x0.shape != x1.shape:
            raise ValueError(f"x0 and x1 must have the same shape (B, L); got {tuple(x0.shape)} and {tuple(x1.shape)}")
        tt = _times(t, x1.shape[0], x1.device, torch.float64 if _is_f64(t) else torch.float32)
        kappa = self.kappa(tt)[0]
        r = torch.rand(x1.shape, generator=generator, device=x1.device, dtype=tt.dtype)
        return torch.where(r < kappa[:, None], x1, x0)

    def jump_rate(self, t: float | Tensor) -> Tensor:
        """kappa_t' / (1 - kappa_t), shape of t; raises ValueError where kappa_t = 1 (no rate is defined there)."""
        kappa, dkappa = self.kappa(t)
        done = kappa >= 1
        if bool(done.any()):
            bad = torch.as_tensor(t).expand_as(kappa)[done]
            raise ValueError(
                f"t must be below the time where kappa_t reaches 1 (there every position has jumped and the rate "
                f"kappa_t' / (1 - kappa_t) is infinite); got t = {float(bad[0]):g}"
            )
        return dkappa / (1 - kappa)

    def velocity(self, posterior: Tensor, x: Tensor, t: float | Tensor) -> Tensor:
        """The probability velocity u_t^i(y, x) = kappa_t' / (1 - kappa_t) (p_{1|t}(y | x) - delta(y, x^i)).

        Gat et al. (2024), eq. 21 (with the denoiser's posterior); Lipman et al. (2024), eq. 7.24. The
        off-diagonal entries are the jump rates (>= 0) and the diagonal entry u_t^i(x^i, x) is minus their
        sum, so every row sums to zero to rounding.

        Args:
            posterior: the probabilities p_{1|t}(. | x), shape (B, L, vocab_size), >= 0, floating.
            x: the current states, int64 of shape (B, L) in 0..num_states - 1.
            t: times in [0, 1) (below the time where kappa_t = 1): a float, 0-d or shape (B,).

        Returns:
            u of shape (B, L, num_states) in the posterior's dtype; the mask column (mask source) holds 0
            off the diagonal.

        Raises:
            TypeError: if posterior is not a floating tensor or x not an integer tensor.
            ValueError: for a posterior of the wrong shape or vocabulary size, negative or non-finite
                probabilities, states out of range, or t where kappa_t = 1.
        """
        x = self.check_tokens(x, "x")
        p = self._check_posterior(posterior, x, "posterior")
        t = _times(t, x.shape[0], x.device, p.dtype)
        rate = self.jump_rate(t)
        return _velocity_from(p, x, rate, self.num_states)

    def _check_posterior(self, posterior: object, x: Tensor, name: str) -> Tensor:
        want = (*x.shape, self.vocab_size)
        if not isinstance(posterior, Tensor) or not posterior.is_floating_point():
            what = posterior.dtype if isinstance(posterior, Tensor) else type(posterior).__name__
            raise TypeError(f"{name} must be a floating tensor of probabilities, shape {want}; got {what}")
        if tuple(posterior.shape) != want:
            raise ValueError(
                f"{name} must have shape (B, L, vocab_size) = {want} (one probability per token, no mask); "
                f"got {tuple(posterior.shape)}"
            )
        values = posterior.detach()
        if not bool(torch.isfinite(values).all()) or float(values.min()) < 0:
            raise ValueError(f"{name} must hold finite probabilities >= 0")
        return posterior


def _is_f64(t: object) -> bool:
    return isinstance(t, Tensor) and t.dtype == torch.float64


def _velocity_from(q: Tensor, x: Tensor, rate: Tensor, num_states: int) -> Tensor:
    """u = rate (q padded to num_states, off the diagonal), diagonal = -sum of the row; q >= 0."""
    b, length, v = q.shape
    u = q.new_zeros(b, length, num_states)
    u[..., :v] = q * rate[:, None, None]
    u.scatter_(-1, x[..., None], 0.0)
    u.scatter_(-1, x[..., None], -u.sum(-1, keepdim=True))
    return u


# -- the model's logits ---------------------------------------------------------------------------------------


def _call_logits(
    model: Callable[..., Tensor], x: Tensor, t: Tensor, cond: Tensor | None, vocab_size: int, name: str
) -> Tensor:
    out = model(x, t) if cond is None else model(x, t, cond)
    want = (*x.shape, vocab_size)
    if not isinstance(out, Tensor) or not out.is_floating_point():
        what = out.dtype if isinstance(out, Tensor) else type(out).__name__
        raise TypeError(f"{name} must return floating logits of shape (B, L, vocab_size) = {want}; got {what}")
    if tuple(out.shape) != want:
        raise ValueError(
            f"{name} must return logits of shape (B, L, vocab_size) = {want} (vocab_size = {vocab_size}, no mask "
            f"column); got {tuple(out.shape)}"
        )
    return out


def _softmax(logits: Tensor, dtype: torch.dtype, name: str) -> Tensor:
    """softmax(logits) in ``dtype``; ValueError for NaN logits or a row of -inf (no distribution)."""
    p = torch.softmax(logits.to(dtype), dim=-1)
    if bool(torch.isnan(p).any()):
        raise ValueError(f"{name} returned logits with NaN (or a row of all -inf or +inf): no posterior to sample")
    return p


# -- the loss -------------------------------------------------------------------------------------------------


def discrete_cfm_loss(
    model: Callable[..., Tensor],
    path: MixtureDiscretePath,
    x1: Tensor,
    x0: Tensor | None = None,
    t: float | Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    cond: Tensor | None = None,
    weights: Tensor | None = None,
    time_sampler: str | Callable | None = None,
    loss: str = "cross_entropy",
) -> Tensor:
    """The discrete flow matching loss: a network predicts the posterior p_{1|t}(x1^i | x_t) of each position.

    With x_t ~ p_t(. | x0, x1) from ``path.sample`` and logits = ``model(x_t, t)``:

    - ``loss="cross_entropy"`` (default): ``-sum_i log p_theta(x1^i | x_t)``, the cross-entropy of the
      posterior (Gat et al. 2024, eq. 28; Campbell et al. 2024, Section 3.2). Every time weighs the same,
      so the loss is bounded and its gradient has a low variance; it is the usual choice for training.
    - ``loss="generalized_kl"``: the Bregman divergence between the conditional velocity and the model's
      velocity (Lipman et al. 2024, Section 7.5, eq. 7.29), which for this path is, per position,
      ``c_t [(1 - delta) (-log p_theta(x1^i | x_t)) + delta - p_theta(x_t^i | x_t)]`` with
      ``c_t = kappa_t' / (1 - kappa_t)`` and ``delta = [x_t^i = x1^i]`` (p_theta of the mask is 0). It
      measures the error of the velocity the sampler uses, and with the mask source its expectation over
      uniform t is the negative evidence lower bound on log p(x1) of masked diffusion (Shi et al. 2024;
      Sahoo et al. 2024): choose it to compare likelihoods. Its weight c_t grows as t -> 1 (1 / (1 - t)
      for kappa_t = t), so its gradient is noisier.

    Both are minimised by the true posterior. The per-row loss is summed over the L positions (nats per
    sequence) and averaged over the batch, like :func:`~fmlib.cfm_loss`.

    Args:
        model: ``model(x, t)`` (or ``model(x, t, cond)``) taking int64 states (B, L) and times (B,) and
            returning posterior logits of shape (B, L, path.vocab_size).
        path: a :class:`MixtureDiscretePath`.
        x1: data tokens, int64 of shape (B, L) in 0..vocab_size - 1.
        x0: source states of x1's shape; default: drawn from the path's source with ``generator``.
        t: times in [0, 1] (float, 0-d or shape (B,)); default: draws of ``time_sampler``. With
            ``loss="generalized_kl"`` t must stay below the time where kappa_t = 1.
        generator: random generator for the defaults and for the path's draws.
        cond: optional per-row condition (e.g. class labels), passed as the model's third argument.
        weights: optional per-row weights, shape (B,), finite and >= 0.
        time_sampler: ``None``/``"uniform"``, ``"logit_normal"`` or a callable, as in :func:`~fmlib.cfm_loss`.
        loss: ``"cross_entropy"`` or ``"generalized_kl"``.

    Returns:
        A 0-d tensor, differentiable with respect to the model's parameters.

    Raises:
        TypeError: if path is not a MixtureDiscretePath, x1/x0 are not integer tensors, the model returns no
            floating tensor, cond or weights are not tensors, loss is not a str.
        ValueError: tokens out of range, shapes that differ, t outside [0, 1], logits whose shape is not
            (B, L, vocab_size), a wrong cond or weights shape, negative weights, or an unknown loss.
    """
    if not isinstance(path, MixtureDiscretePath):
        raise TypeError(f"path must be a MixtureDiscretePath; got {type(path).__name__}")
    if not isinstance(loss, str):
        raise TypeError(f"loss must be one of {LOSSES}; got {type(loss).__name__}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}; got {loss!r}")
    x1 = _check_tokens(x1, "x1", path.vocab_size, "tokens")
    batch = x1.shape[0]
    if x0 is not None:
        x0 = path.check_tokens(x0, "x0")
    if cond is not None:
        cond = _check_cond(cond, batch)
    if weights is not None:
        weights = _check_weights(weights, batch, x1.device)
    if t is None:
        t = sample_times(time_sampler, batch, generator, torch.float32, x1.device)
    tt = _times(t, batch, x1.device, torch.float64 if _is_f64(t) else torch.float32)
    x_t = path.sample(x0, x1, tt, generator=generator)
    logits = _call_logits(
        model, x_t, tt, cond, path.vocab_size, "model(x_t, t)" if cond is None else "model(x_t, t, cond)"
    )
    logp = torch.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=-1)
    logp_x1 = logp.gather(-1, x1[..., None]).squeeze(-1)
    if loss == "cross_entropy":
        per_row = -logp_x1.sum(dim=1)
    else:
        rate = path.jump_rate(tt).to(logp.dtype)
        same = (x_t == x1).to(logp.dtype)
        in_vocab = x_t < path.vocab_size
        p_xt = torch.where(
            in_vocab, logp.gather(-1, x_t.clamp(max=path.vocab_size - 1)[..., None]).squeeze(-1).exp(), 0.0
        )
        per_pos = torch.where(x_t == x1, 0.0, -logp_x1) + same - p_xt  # no 0 * inf where p_theta(x1) = 0
        per_row = rate * per_pos.sum(dim=1)
    if weights is not None:
        per_row = per_row * weights.to(per_row.dtype)
    return per_row.mean()


# -- the exact marginal of a data set ----------------------------------------------------------------------------


class DiscreteEmpiricalMarginal:
    """Exact marginal p_t, posterior p_{1|t} and velocity of a mixture path toward a data set of sequences.

    For data {x1^(n)}, n = 1..N, the marginal is p_t(x) = (1/N) sum_n prod_i p_t(x^i | x1^(n), i) and the
    posterior over the data is w_n(x, t) = prod_i p_t(x^i | x1^(n), i) / (N p_t(x)). The per-position
    posterior is p_{1|t}^i(y | x) = sum_n w_n [x1^(n), i = y], and the velocity follows from it by
    :meth:`MixtureDiscretePath.velocity` (the discrete marginalisation trick: Gat et al. 2024,
    Theorem 3; Lipman et al. 2024, Section 7.2). This is the discrete counterpart of
    :class:`~fmlib.EmpiricalMarginal`.

    Calling the marginal, ``marginal(x, t)``, returns the log-posterior log p_{1|t} (shape
    (B, L, vocab_size); -inf where a token has probability 0), so it can stand wherever a trained
    network's logits are expected (:func:`sample_discrete`, :func:`discrete_cfm_loss`).

    Sequences of probability zero: with the mask source a sequence whose revealed tokens no datum has
    together has p_t(x) = 0 (an Euler step can produce one by revealing two positions at once), and its
    posterior is undefined. There the posterior is the limit of the one in which every impossible position
    has a vanishing probability: the data with the fewest impossible positions, weighted as usual among
    themselves. :meth:`log_prob` is -inf there. At t = 0 and t = 1, where kappa_t makes some factors
    vanish (a revealed token at t = 0, as in infilling), the posterior is its limit from inside (0, 1).

    Args:
        data: the data, int64 of shape (N, L) with tokens in 0..path.vocab_size - 1.
        path: a :class:`MixtureDiscretePath`.
        chunk_size: the largest number of (query, datum) pairs handled at once.

    Precision: the probabilities are float32, or float64 when t is a float64 tensor or ``dtype``
    is given as float64.

    Raises:
        TypeError: data not an integer tensor, path not a MixtureDiscretePath, chunk_size not an int.
        ValueError: tokens out of range, a query of another length or with states out of range,
            t outside [0, 1], chunk_size < 1.

    Example:
        >>> from fmlib import CondOTScheduler
        >>> path = MixtureDiscretePath(CondOTScheduler(), vocab_size=3, source="mask")
        >>> m = DiscreteEmpiricalMarginal(torch.tensor([[0, 1], [0, 2]]), path)
        >>> m.posterior(torch.tensor([[3, 3]]), 0.5)      # nothing revealed: the data's frequencies
        tensor([[[1.0000, 0.0000, 0.0000],
                 [0.0000, 0.5000, 0.5000]]])
    """

    def __init__(self, data: Tensor, path: MixtureDiscretePath, chunk_size: int = 2**22) -> None:
        if not isinstance(path, MixtureDiscretePath):
            raise TypeError(f"path must be a MixtureDiscretePath; got {type(path).__name__}")
        data = _check_tokens(data, "data", path.vocab_size, "tokens")
        check_int(chunk_size, "chunk_size")
        self.data = data.clone()
        self.path = path
        self.chunk_size = int(chunk_size)
        self._cache: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}

    def __repr__(self) -> str:
        return f"DiscreteEmpiricalMarginal(N={self.data.shape[0]}, L={self.data.shape[1]}, path={self.path!r})"

    def _onehots(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """The data one-hot over the states (N, L * S) and over the vocabulary (N, L * V), cached."""
        key = (dtype, device)
        if key not in self._cache:
            d = self.data.to(device)
            s = torch.nn.functional.one_hot(d, self.path.num_states).to(dtype).flatten(1)
            v = torch.nn.functional.one_hot(d, self.path.vocab_size).to(dtype).flatten(1)
            self._cache[key] = (s, v)
        return self._cache[key]

    def _inputs(self, x: Tensor, t: float | Tensor, dtype: torch.dtype | None) -> tuple[Tensor, Tensor]:
        x = self.path.check_tokens(x, "x")
        if x.shape[1] != self.data.shape[1]:
            raise ValueError(
                f"x must have the data's length L = {self.data.shape[1]}, shape (B, {self.data.shape[1]}); "
                f"got {tuple(x.shape)}"
            )
        return x, _times(t, x.shape[0], x.device, _float_dtype(t, dtype))

    def _scores(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(rank of the zeros, finite log-likelihood f), each (B, N).

        log p_t(x | x1^(n)) = f where the rank is 0. A factor of p_t(x | x1^(n)) is zero either for good
        (a revealed token that differs from x1^(n)'s with the mask source: "hard") or because kappa_t is
        0 or 1 ("soft": it vanishes like kappa_t or 1 - kappa_t as t leaves 0 or 1). The rank
        (L + 1) * hard + soft orders the data as the limit of the posterior from inside (0, 1) does.
        """
        path, dtype = self.path, t.dtype
        kappa = path.kappa(t)[0][:, None]  # (B, 1)
        p0 = path.source_probs(dtype, x.device)[x]  # (B, L): p_0(x^i)
        p_match = kappa + (1 - kappa) * p0  # probability of x^i given x1^i = x^i
        p_miss = (1 - kappa) * p0  # probability of x^i given x1^i != x^i
        zero_m, zero_n = p_match <= 0, p_miss <= 0
        hard_n = p0 <= 0
        soft_n = zero_n & ~hard_n
        tiny = torch.finfo(dtype).tiny
        lm = torch.where(zero_m, 0.0, torch.log(p_match.clamp_min(tiny)))
        ln = torch.where(zero_n, 0.0, torch.log(p_miss.clamp_min(tiny)))
        d_states = self._onehots(dtype, x.device)[0]  # (N, L * S)
        oh = torch.nn.functional.one_hot(x, path.num_states).to(dtype)  # (B, L, S)

        def matched(w: Tensor) -> Tensor:  # sum_i w_bi [x_b^i = x1^(n), i], (B, N)
            return (oh * w[..., None]).flatten(1) @ d_states.T

        def missed(z: Tensor) -> Tensor:  # sum_i z_bi [x_b^i != x1^(n), i], (B, N)
            zf = z.to(dtype)
            return zf.sum(1, keepdim=True) - matched(zf)

        hard = missed(hard_n)
        soft = matched(zero_m.to(dtype)) + missed(soft_n)
        f = matched(lm - ln) + ln.sum(1, keepdim=True)
        return hard * (x.shape[1] + 1) + soft, f

    def _chunks(self, batch: int) -> int:
        return max(1, self.chunk_size // max(1, self.data.shape[0]))

    def log_prob(self, x: Tensor, t: float | Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """log p_t(x) of the marginal, shape (B,); -inf for sequences of probability zero.

        Args:
            x: states, int64 (B, L) in 0..num_states - 1.
            t: times in [0, 1] (float, 0-d or shape (B,)).
            dtype: floating dtype of the result (default float32, or t's if t is a float64 tensor;
                float16 and bfloat16 give float32).
        """
        x, t = self._inputs(x, t, dtype)
        out = []
        step = self._chunks(x.shape[0])
        for s in range(0, x.shape[0], step):
            rank, f = self._scores(x[s : s + step], t[s : s + step])
            out.append(torch.logsumexp(torch.where(rank == 0, f, -math.inf), dim=1) - math.log(self.data.shape[0]))
        return torch.cat(out)

    def data_weights(self, x: Tensor, t: float | Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """The posterior over the data, w_n(x, t) = p(x1 = x1^(n) | x_t = x), shape (B, N); rows sum to 1."""
        x, t = self._inputs(x, t, dtype)
        w, inverse = self._weights(x, t)
        return w if inverse is None else w[inverse]

    def _weights(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor | None]:
        """The data weights, of every row or (with ``inverse``) of the distinct rows: row b is w[inverse[b]]."""
        s, length = self.path.num_states, x.shape[1]
        if x.shape[0] > 64 and length * math.log2(s) < 62 and bool((t == t[0]).all()):
            # one time for every row (as in the sampler): compute once per distinct sequence
            codes = (x * s ** torch.arange(length, device=x.device)).sum(1)  # no x @ w: CUDA has no int64 matmul
            distinct, first, inverse = _unique_first(codes)
            if distinct < x.shape[0] // 2:
                return self._weights_all(x[first], t[first]), inverse
        return self._weights_all(x, t), None

    def _weights_all(self, x: Tensor, t: Tensor) -> Tensor:
        out = []
        step = self._chunks(x.shape[0])
        for s in range(0, x.shape[0], step):
            rank, f = self._scores(x[s : s + step], t[s : s + step])
            fewest = rank == rank.min(dim=1, keepdim=True).values
            out.append(torch.softmax(torch.where(fewest, f, -math.inf), dim=1))
        return torch.cat(out)

    def _posterior(self, x: Tensor, t: Tensor) -> Tensor:
        w, inverse = self._weights(x, t)
        p = w @ self._onehots(t.dtype, x.device)[1]
        if inverse is not None:
            p = p[inverse]
        return p.view(x.shape[0], x.shape[1], self.path.vocab_size)

    def posterior(self, x: Tensor, t: float | Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """p_{1|t}(y | x) of every position, shape (B, L, vocab_size); each row sums to 1.

        Args:
            x: states, int64 (B, L) in 0..num_states - 1.
            t: times in [0, 1] (float, 0-d or shape (B,)).
            dtype: floating dtype of the result (default float32, or t's if t is a float64 tensor;
                float16 and bfloat16 give float32).
        """
        x, t = self._inputs(x, t, dtype)
        return self._posterior(x, t)

    def velocity(self, x: Tensor, t: float | Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """The marginal probability velocity u_t(., x), shape (B, L, num_states); rows sum to 0.

        t must stay below the time where kappa_t = 1 (ValueError otherwise).
        """
        x, t = self._inputs(x, t, dtype)
        rate = self.path.jump_rate(t)
        return _velocity_from(self._posterior(x, t), x, rate, self.path.num_states)

    def __call__(self, x: Tensor, t: float | Tensor) -> Tensor:
        """log p_{1|t}(y | x), shape (B, L, vocab_size): logits for :func:`sample_discrete`."""
        return torch.log(self.posterior(x, t))


def _unique_first(codes: Tensor) -> tuple[int, Tensor, Tensor]:
    """(number of distinct codes, index of one row per distinct code, inverse map of every row)."""
    values, inverse = torch.unique(codes, return_inverse=True)
    first = torch.empty(values.shape[0], dtype=torch.long, device=codes.device)
    first.scatter_(0, inverse, torch.arange(codes.shape[0], device=codes.device))
    return values.shape[0], first, inverse


# -- sampling -------------------------------------------------------------------------------------------------------


def _categorical(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One draw per row of probs (..., S) (rows sum to 1, >= 0) by the inverse CDF; never a zero-probability state."""
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[:-1] + (1,), generator=generator, device=probs.device, dtype=probs.dtype)
    idx = (cdf <= u * cdf[..., -1:]).sum(-1)
    s = probs.shape[-1]
    last = s - 1 - (probs.flip(-1) > 0).to(torch.uint8).argmax(-1)  # the last state of positive probability
    return torch.minimum(idx, last)


def sample_discrete(
    model: Callable[..., Tensor],
    x0: Tensor,
    path: MixtureDiscretePath,
    steps: int,
    generator: torch.Generator | None = None,
    *,
    cond: Tensor | None = None,
    guidance: float | None = None,
    null_cond: Tensor | int | None = None,
    held: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    trajectory: bool = False,
) -> Tensor:
    """Simulate the CTMC of a posterior model from t = 0 to 1 with Euler jumps.

    At t_k = k / steps, with h = 1 / steps, each position i of x jumps to y != x^i with probability
    ``h u_t^i(y, x)`` and stays with probability ``1 - h sum_y u_t^i(y, x)`` (Gat et al. 2024, Section 2.5;
    Campbell et al. 2024, Section 3.3; Lipman et al. 2024, eq. 6.7), where u is the velocity of
    :meth:`MixtureDiscretePath.velocity` built from softmax(model(x, t)). Where the jump probabilities
    add up to more than 1 they are scaled down to sum to 1 (clipped to a probability). The last step,
    from t = 1 - h to 1, replaces h kappa_t' / (1 - kappa_t) by its exact value over the step,
    (kappa_1 - kappa_t) / (1 - kappa_t) = 1: every position then jumps to a draw of the posterior, so every
    masked position lands on a token (for kappa_t = t the two are the same).

    Guidance: with ``guidance=w``, ``cond`` (the condition, e.g. labels) and ``null_cond`` (the condition
    meaning "none", e.g. the null label), the velocity is ``u_null + w (u_cond - u_null)`` (w = 1: the
    conditional velocity; w > 1 extrapolates, as classifier-free guidance does for continuous flows). Both
    velocities share the diagonal structure, so this is the velocity of q = p_null + w (p_cond - p_null);
    for w > 1, q can be negative where the conditional posterior is below the unconditional one, and
    negative jump rates do not exist, so the off-diagonal rates are clipped at 0 (the diagonal is minus the
    sum of what is left). Nisonoff et al. (2024) discuss guidance for discrete flows at length.

    With the mask source a revealed position keeps its token: under the mixture path its posterior is a
    point mass on the token it shows, so its exact rates are 0 (the carry-over of Sahoo et al. 2024); the
    sampler uses this rather than a network's estimate of that posterior.

    Infilling: ``held`` marks positions whose value in x0 is known and kept; their rates are set to 0,
    and the model sees them at every step (they look like positions that reached x1 early, which the
    mixture path produces with probability kappa_t).

    Args:
        model: ``model(x, t)`` (or ``model(x, t, cond)``) returning posterior logits (B, L, vocab_size),
            e.g. a trained network or a :class:`DiscreteEmpiricalMarginal`. Called under ``torch.no_grad``.
        x0: initial states, int64 (B, L) in 0..num_states - 1 (e.g. ``path.sample_source``), with the
            known tokens at the held positions.
        path: the :class:`MixtureDiscretePath` the model was trained on.
        steps: number of Euler steps (= NFE without guidance, 2 x steps with it), an int >= 1.
        generator: random generator on x0's device.
        cond: per-row condition passed as the model's third argument.
        guidance: the guidance weight w >= 0 (needs cond and null_cond); None: no guidance.
        null_cond: the "no condition" value: a tensor like cond, or an int filled to cond's shape.
        held: bool (B, L) or (L,): True where x0's token is kept (no held position may be masked).
        dtype: floating dtype of the probabilities and times (float32 or float64; float16 and bfloat16
            are raised to float32, in which k / steps does not round).
        trajectory: if True return all states, shape (steps + 1, B, L).

    Returns:
        The states at t = 1, int64 (B, L) (tokens, no mask), or the trajectory.

    Raises:
        TypeError: path not a MixtureDiscretePath, model not callable, x0 not an integer tensor, steps not an
            int, guidance not a number, null_cond a bool, held not a bool tensor.
        ValueError: states out of range, steps < 1, logits not of shape (B, L, vocab_size) or with NaN
            (or a row of all -inf), guidance < 0
            or without cond and null_cond, a held mask of the wrong shape or holding masked positions.
    """
    if not isinstance(path, MixtureDiscretePath):
        raise TypeError(f"path must be a MixtureDiscretePath; got {type(path).__name__}")
    if not callable(model):
        raise TypeError(f"model must be callable, model(x, t) -> logits; got {type(model).__name__}")
    x = path.check_tokens(x0, "x0").clone()
    steps = check_int(steps, "steps", low=1)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype; got {dtype!r}")
    dtype = torch.promote_types(dtype, torch.float32)  # k / steps must not round (0.998 -> 1.0 in bfloat16)
    batch, length = x.shape
    if cond is not None:
        cond = _check_cond(cond, batch)
    null: Tensor | None = None
    w = 1.0
    if guidance is not None:
        if isinstance(guidance, bool) or not isinstance(guidance, Real):
            raise TypeError(f"guidance must be a real number w >= 0; got {type(guidance).__name__}")
        w = check_real(guidance, "guidance", low=0.0)
        if cond is None or null_cond is None:
            raise ValueError("guidance needs cond (the condition) and null_cond (the condition meaning 'none')")
        if isinstance(null_cond, bool):
            raise TypeError("null_cond must be an int label or a tensor like cond; got bool")
        null = (
            torch.full_like(cond, null_cond)
            if isinstance(null_cond, int)
            else _check_cond(null_cond, batch, "null_cond")
        )
    keep = torch.zeros_like(x, dtype=torch.bool)
    if held is not None:
        if not isinstance(held, Tensor) or held.dtype != torch.bool:
            raise TypeError(f"held must be a bool tensor of shape ({batch}, {length}) or ({length},); got {held!r:.60}")
        if held.shape not in ((batch, length), (length,)):
            raise ValueError(f"held must have shape ({batch}, {length}) or ({length},); got {tuple(held.shape)}")
        keep = held.to(x.device).expand(batch, length)
        if path.mask_index is not None and bool((x[keep] == path.mask_index).any()):
            raise ValueError("held positions must hold known tokens in x0; some of them are masked")
    states = [x.clone()] if trajectory else []
    s = path.num_states
    with torch.no_grad():
        for k in range(steps):
            t_k = torch.full((batch,), k / steps, dtype=dtype, device=x.device)
            name = "model(x, t)" if cond is None else "model(x, t, cond)"
            fixed = keep if path.mask_index is None else keep | (x != path.mask_index)
            p = _softmax(_call_logits(model, x, t_k, cond, path.vocab_size, name), dtype, name)
            if null is not None and w != 1.0:
                p_null = _softmax(_call_logits(model, x, t_k, null, path.vocab_size, name), dtype, name)
                p = p_null + w * (p - p_null)
            if k == steps - 1:
                factor = torch.ones((), dtype=dtype, device=x.device)
            else:
                factor = path.jump_rate(t_k[:1])[0] / steps
            jump = torch.zeros(batch, length, s, dtype=dtype, device=x.device)
            jump[..., : path.vocab_size] = (p * factor).clamp_min(0.0)
            jump.scatter_(-1, x[..., None], 0.0)
            total = jump.sum(-1, keepdim=True)
            jump = jump / total.clamp_min(1.0)
            stay = (1.0 - total).clamp_min(0.0)
            if k == steps - 1 and path.mask_index is not None:
                stay = torch.where(x[..., None] == path.mask_index, 0.0, stay)  # every masked position lands
            jump.scatter_(-1, x[..., None], stay)
            x = torch.where(fixed, x, _categorical(jump, generator))
            if trajectory:
                states.append(x.clone())
    return torch.stack(states) if trajectory else x


# -- a small posterior network ------------------------------------------------------------------------------------


class TokenMLP(nn.Module):
    """A multilayer perceptron that predicts the posterior logits of every position of a token sequence.

    The input is the one-hot encoding of the L states (num_states each), Fourier features of t and,
    with ``num_classes``, a learned embedding of a label 0..num_classes (the last one is the null label of
    classifier-free guidance). The output has shape (B, L, vocab_size): it follows the convention of
    :func:`sample_discrete` and :func:`discrete_cfm_loss`, ``model(x, t)`` or ``model(x, t, y)``.

    Args:
        length: the sequence length L.
        vocab_size: the number of tokens V (the outputs per position).
        num_states: the number of input states per position (V + 1 with a mask, V without).
        hidden: width of the hidden layers.
        depth: number of hidden layers, >= 1.
        num_classes: number of labels (the null label is ``num_classes``), or None for no labels.
        time_freqs: number of Fourier frequencies of t.

    Raises:
        TypeError: if a size is not an int.
        ValueError: if a size is < 1, num_states < vocab_size, or (in forward) x or y do not fit.

    Example:
        >>> net = TokenMLP(length=3, vocab_size=4, num_states=5, hidden=16)
        >>> net(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2)).shape
        torch.Size([2, 3, 4])
    """

    freqs: Tensor
    offsets: Tensor

    def __init__(
        self,
        length: int,
        vocab_size: int,
        num_states: int,
        hidden: int = 256,
        depth: int = 3,
        num_classes: int | None = None,
        time_freqs: int = 4,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("length", length, 1),
            ("vocab_size", vocab_size, 1),
            ("num_states", num_states, 1),
            ("hidden", hidden, 1),
            ("depth", depth, 1),
            ("time_freqs", time_freqs, 0),
        ):
            check_int(value, name, low)
        if num_states < vocab_size:
            raise ValueError(f"num_states must be >= vocab_size = {vocab_size}; got {num_states}")
        if num_classes is not None:
            check_int(num_classes, "num_classes", 1)
        self.length, self.vocab_size, self.num_states, self.num_classes = length, vocab_size, num_states, num_classes
        self.register_buffer("freqs", 2 * math.pi * torch.arange(1, time_freqs + 1, dtype=torch.float32))
        # the first layer is linear in the one-hot encoding of x: one learned vector per (position, state),
        # summed over positions (an embedding lookup instead of a (B, L * num_states) matrix product)
        self.tokens = nn.Embedding(length * num_states, hidden)
        nn.init.normal_(self.tokens.weight, std=1 / math.sqrt(length))
        self.register_buffer("offsets", torch.arange(length) * num_states)
        self.inp = nn.Linear(1 + 2 * time_freqs, hidden)
        self.embed = nn.Embedding(num_classes + 1, hidden) if num_classes is not None else None
        layers: list[nn.Module] = []
        for _ in range(depth - 1):
            layers += [nn.SiLU(), nn.Linear(hidden, hidden)]
        self.body = nn.Sequential(*layers, nn.SiLU(), nn.Linear(hidden, length * vocab_size))

    def forward(self, x: Tensor, t: float | Tensor, y: Tensor | None = None) -> Tensor:
        """Logits of shape (B, L, vocab_size) for states x (int64, (B, L)), times t and optional labels y."""
        x = _check_tokens(x, "x", self.num_states, "states")
        if x.shape[1] != self.length:
            raise ValueError(f"x must have length L = {self.length}; got shape {tuple(x.shape)}")
        tt = _times(t, x.shape[0], x.device, torch.float32)[:, None]
        w = self.inp.weight
        feats = [tt.to(w.dtype)]
        if self.freqs.numel():
            a = tt * self.freqs
            feats += [torch.sin(a).to(w.dtype), torch.cos(a).to(w.dtype)]
        h = self.inp(torch.cat(feats, dim=1)) + self.tokens(x + self.offsets).sum(1)
        if self.embed is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)  # type: ignore[arg-type]
            h = h + self.embed(check_labels(y, x.shape[0], self.num_classes, allow_null=True).to(x.device))  # type: ignore[arg-type]
        elif y is not None:
            raise ValueError("y must be None for a TokenMLP built without num_classes")
        return self.body(h).view(x.shape[0], self.length, self.vocab_size)
