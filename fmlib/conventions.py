"""Conventions across papers and libraries: convert times, states, predictions and guidance scales to the book's.

The book's convention (Lipman et al. 2023; Lipman et al. 2024, *Flow Matching Guide and Code*): time t in [0, 1],
t = 0 is the noise x0 ~ N(0, I), t = 1 is the data x1, the velocity is u_t = d x_t / dt, and classifier-free
guidance is ``u(x | null) + w (u(x | y) - u(x | null))`` (w = 1: the conditional field; see
:func:`~fmlib.cfg_combine`).

Every convention writes its noisy state as x = alpha x_data + sigma eps in its own time variable tau. The
conversion maps it onto the book's CondOT path y = t x1 + (1 - t) x0 at the **same signal-to-noise ratio**:

    t = alpha / (alpha + sigma),    y = x / (alpha + sigma),

with the same data point and the same noise (x1 = x_data, x0 = eps). For the flow conventions this is the
identity (or t = 1 - tau for SD3); for the diffusion conventions it is the change of time and scale under which
all Gaussian paths share one marginal velocity (Lipman et al. 2024, Section 4.8.2; Kingma et al. 2021,
Section 3; Karras et al. 2022, Section 4). Under it a deterministic DDIM step is exactly one Euler step of the
book's ODE (Song et al. 2021a, eq. 12; Karras et al. 2022, Section 4).

Conventions (the names in :data:`CONVENTIONS`; tau is the convention's own time):

========================  ======================  ===========================================  ==============
name                      time tau                x (data x_d, noise eps)                       model output
========================  ======================  ===========================================  ==============
``book``                  t in [0, 1]             t x_d + (1 - t) eps                          velocity
``flow_matching``         t in [0, 1]             the same (Meta's library and the Guide)      velocity
``torchcfm``              t in [0, 1]             the same (Tong et al. 2024)                  velocity
``mit_6s184``             t in [0, 1]             alpha_t z + beta_t eps, CondOT in the labs   velocity
``sd3``                   t in [0, 1]             (1 - t) x_d + t eps (Esser et al. 2024)      velocity
``ddpm``                  step n in [0, 1000]     sqrt(abar_n) x_d + sqrt(1 - abar_n) eps      epsilon
``diffusers``             timestep k in [0, 999]  DDPM with abar of step n = k + 1             epsilon
``score_sde_vp``          t in [0, 1]             VP SDE, beta in [0.1, 20] (Song 2021b)       score
``score_sde_ve``          t in [0, 1]             x_d + sigma_t eps, sigma in [0.01, 50]        score
``edm``                   sigma in [0, inf)       x_d + sigma eps (Karras et al. 2022)         data (D(x; s))
========================  ======================  ===========================================  ==============

DDPM uses the linear betas of Ho et al. (2020), Section 4 (beta from 1e-4 to 0.02 over N = 1000 steps,
abar_n the product of (1 - beta_i) over i <= n, abar_0 = 1), computed in float64; between integer steps log abar is
interpolated linearly, so fractional steps are times between two of DDPM's steps. ``diffusers`` is its
``DDPMScheduler``/``DDIMScheduler`` default (the same betas, 0-indexed: ``alphas_cumprod[k]`` is abar of step
k + 1; diffusers computes them in float32). The flow conventions' ``velocity`` is the book's for any scheduler;
their other predictions assume the CondOT path (each library's default).

Predictions (``prediction=``; the default is the convention's model output above): ``"velocity"`` (dx / dtau in
the convention's time), ``"epsilon"`` (the noise), ``"data"`` (the denoiser E[x_d | x]: x0 in DDPM and EDM, x1
in the book), ``"score"`` (grad_x log p(x)) and ``"v_prediction"`` (Salimans & Ho's v = alpha eps - sigma x_d,
diffusers' ``prediction_type="v_prediction"``; not a velocity).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real

import torch
from torch import Tensor

from ._checks import as_time, check_batch, check_real, check_same_shape, unsqueeze_like
from .paths import AffinePath, CondOTScheduler

__all__ = [
    "CONVENTIONS",
    "GUIDANCE_CONVENTIONS",
    "CONVENTION_PREDICTIONS",
    "to_book_time",
    "from_book_time",
    "to_book_state",
    "from_book_state",
    "to_book_velocity",
    "from_book_velocity",
    "to_book_guidance",
    "from_book_guidance",
]

CONVENTIONS = (
    "book",
    "flow_matching",
    "torchcfm",
    "mit_6s184",
    "sd3",
    "ddpm",
    "diffusers",
    "score_sde_vp",
    "score_sde_ve",
    "edm",
)
"""The conventions :func:`to_book_time` and the other maps understand."""

CONVENTION_PREDICTIONS = ("velocity", "epsilon", "data", "score", "v_prediction")
"""What a convention's network may output: see the module's docstring."""

GUIDANCE_CONVENTIONS = ("book", "flow_matching", "mit_6s184", "diffusers", "sd3", "ho_salimans")
"""Conventions with a classifier-free guidance scale (DDPM, score SDEs, EDM and torchcfm define none)."""

_BOOK_PATH = AffinePath(CondOTScheduler())

# -- DDPM's discrete schedule ---------------------------------------------------------------------------------

_DDPM_STEPS = 1000
_DDPM_BETA = (1e-4, 0.02)


def _ddpm_neg_log_alpha_bar() -> Tensor:
    """-log abar_n for n = 0..1000 (float64, increasing, 0 at n = 0); Ho et al. (2020), Section 4."""
    betas = torch.linspace(*_DDPM_BETA, _DDPM_STEPS, dtype=torch.float64)
    return torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(-torch.log1p(-betas), 0)])


_DDPM_NLAB = _ddpm_neg_log_alpha_bar()


def _interp(n: Tensor) -> Tensor:
    """-log abar at fractional steps n in [0, 1000], linear between integer steps."""
    table = _DDPM_NLAB.to(device=n.device, dtype=torch.float64)
    nd = n.to(torch.float64)
    i = nd.floor().clamp(0, _DDPM_STEPS - 1)
    f = nd - i
    i = i.long()
    return (table[i] + f * (table[i + 1] - table[i])).to(n.dtype)


def _inverse_interp(nlab: Tensor) -> Tensor:
    """The fractional step n with -log abar_n = nlab (the inverse of :func:`_interp`)."""
    table = _DDPM_NLAB.to(device=nlab.device, dtype=torch.float64)
    v = nlab.to(torch.float64)
    i = (torch.searchsorted(table, v.contiguous(), right=True) - 1).clamp(0, _DDPM_STEPS - 1)
    lo, hi = table[i], table[i + 1]
    return (i.to(torch.float64) + (v - lo) / (hi - lo)).to(nlab.dtype)


# -- the conventions --------------------------------------------------------------------------------------------

# The ratio q = sigma / alpha at the convention's time fixes the book's time t = 1 / (1 + q) and the scale
# alpha + sigma = alpha (1 + q). Each convention gives tau -> (alpha, sigma), their derivatives (None where the
# time is discrete) and the inverse book time -> tau.


@dataclass(frozen=True)
class _Convention:
    name: str
    lo: float
    hi: float
    what: str  # the time variable, for error messages
    prediction: str  # the model's output
    flow: bool  # the book's state and velocity already (x is not rescaled)
    alpha_sigma: Callable[[Tensor], tuple[Tensor, Tensor]]
    derivatives: Callable[[Tensor], tuple[Tensor, Tensor]] | None
    to_book: Callable[[Tensor], Tensor]
    from_book: Callable[[Tensor], Tensor]


def _flow(name: str) -> _Convention:
    return _Convention(
        name,
        0.0,
        1.0,
        "t (t = 0 noise, t = 1 data)",
        "velocity",
        True,
        lambda t: (t, 1 - t),
        lambda t: (torch.ones_like(t), -torch.ones_like(t)),
        lambda t: t,
        lambda t: t,
    )


def _vp(beta_min: float = 0.1, beta_max: float = 20.0) -> _Convention:
    spread = beta_max - beta_min

    def big_t(tau: Tensor) -> Tensor:
        return beta_min * tau + 0.5 * spread * tau**2

    def alpha_sigma(tau: Tensor) -> tuple[Tensor, Tensor]:
        tt = big_t(tau)
        return torch.exp(-0.5 * tt), torch.sqrt(-torch.expm1(-tt))

    def derivatives(tau: Tensor) -> tuple[Tensor, Tensor]:
        alpha, sigma = alpha_sigma(tau)
        beta = beta_min + spread * tau
        return -0.5 * beta * alpha, 0.5 * beta * alpha**2 / sigma

    def from_book(t: Tensor) -> Tensor:
        tt = torch.log1p(((1 - t) / t) ** 2)
        return 2 * tt / (beta_min + torch.sqrt(beta_min**2 + 2 * spread * tt))

    return _Convention(
        "score_sde_vp",
        0.0,
        1.0,
        "t (t = 0 data, t = 1 noise)",
        "score",
        False,
        alpha_sigma,
        derivatives,
        lambda tau: 1 / (1 + torch.sqrt(torch.expm1(big_t(tau)))),
        from_book,
    )


def _ve(sigma_min: float = 0.01, sigma_max: float = 50.0) -> _Convention:
    log_ratio = math.log(sigma_max / sigma_min)

    def sigma(tau: Tensor) -> Tensor:
        return sigma_min * torch.exp(log_ratio * tau)

    return _Convention(
        "score_sde_ve",
        0.0,
        1.0,
        "t (t = 0 data, t = 1 noise)",
        "score",
        False,
        lambda tau: (torch.ones_like(tau), sigma(tau)),
        lambda tau: (torch.zeros_like(tau), log_ratio * sigma(tau)),
        lambda tau: 1 / (1 + sigma(tau)),
        lambda t: torch.log((1 - t) / (t * sigma_min)) / log_ratio,
    )


def _ddpm(name: str, offset: int) -> _Convention:
    def alpha_sigma(n: Tensor) -> tuple[Tensor, Tensor]:
        nlab = _interp(n + offset)
        return torch.exp(-0.5 * nlab), torch.sqrt(-torch.expm1(-nlab))

    return _Convention(
        name,
        0.0,
        float(_DDPM_STEPS - offset),
        "step n (n = 0 data, n = 1000 noise)" if offset == 0 else "timestep k (k = 999 noise; k = 0 is step 1)",
        "epsilon",
        False,
        alpha_sigma,
        None,
        lambda n: 1 / (1 + torch.sqrt(torch.expm1(_interp(n + offset)))),
        lambda t: _inverse_interp(torch.log1p(((1 - t) / t) ** 2)) - offset,
    )


_SD3 = _Convention(
    "sd3",
    0.0,
    1.0,
    "t (t = 0 data, t = 1 noise)",
    "velocity",
    True,
    lambda tau: (1 - tau, tau),
    lambda tau: (-torch.ones_like(tau), torch.ones_like(tau)),
    lambda tau: 1 - tau,
    lambda t: 1 - t,
)

_EDM = _Convention(
    "edm",
    0.0,
    math.inf,
    "sigma (sigma = 0 data)",
    "data",
    False,
    lambda s: (torch.ones_like(s), s),
    lambda s: (torch.zeros_like(s), torch.ones_like(s)),
    lambda s: 1 / (1 + s),
    lambda t: (1 - t) / t,
)

_TABLE: dict[str, _Convention] = {
    **{name: _flow(name) for name in ("book", "flow_matching", "torchcfm", "mit_6s184")},
    "sd3": _SD3,
    "ddpm": _ddpm("ddpm", 0),
    "diffusers": _ddpm("diffusers", 1),
    "score_sde_vp": _vp(),
    "score_sde_ve": _ve(),
    "edm": _EDM,
}
assert tuple(_TABLE) == CONVENTIONS


def _convention(convention: object) -> _Convention:
    if not isinstance(convention, str):
        raise TypeError(f"convention must be a str, one of {CONVENTIONS}; got {type(convention).__name__}")
    if convention not in _TABLE:
        raise ValueError(f"convention must be one of {CONVENTIONS}; got {convention!r}")
    return _TABLE[convention]


def _prediction(prediction: object, conv: _Convention) -> str:
    if prediction is None:
        return conv.prediction
    if not isinstance(prediction, str):
        raise TypeError(f"prediction must be a str, one of {CONVENTION_PREDICTIONS}; got {type(prediction).__name__}")
    if prediction not in CONVENTION_PREDICTIONS:
        raise ValueError(f"prediction must be one of {CONVENTION_PREDICTIONS} or None; got {prediction!r}")
    if prediction == "velocity" and conv.derivatives is None:
        raise ValueError(
            f"prediction='velocity' is undefined for convention {conv.name!r}: its time is a discrete step, so "
            "there is no d x / d(time); use prediction='epsilon' (its model's output)"
        )
    return prediction


# -- checks on times -------------------------------------------------------------------------------------------


def _as_times(t: object) -> Tensor:
    """t as a floating tensor: a number gives a 0-d float64 tensor, an integer tensor becomes float64."""
    if isinstance(t, bool) or not isinstance(t, (Real, Tensor)):
        raise TypeError(f"t must be a real number or a tensor; got {type(t).__name__}")
    if not isinstance(t, Tensor):
        return torch.tensor(float(t), dtype=torch.float64)
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"t must be a real tensor; got dtype {t.dtype}")
    return t if t.is_floating_point() else t.to(torch.float64)


def _check_range(t: Tensor, conv: _Convention) -> Tensor:
    if t.numel() == 0:
        return t
    if bool(torch.isnan(t).any()):
        raise ValueError(f"t must not be NaN ({conv.name}: {conv.what})")
    lo, hi = float(t.min()), float(t.max())
    if lo < conv.lo or hi > conv.hi or (math.isinf(hi) and conv.hi == math.inf):
        raise ValueError(
            f"t must lie in [{conv.lo:g}, {conv.hi:g}{')' if math.isinf(conv.hi) else ']'} for convention "
            f"{conv.name!r}, whose time is {conv.what}; got values in [{lo:g}, {hi:g}]"
        )
    return t


def _book_times(t: Tensor, conv: _Convention) -> Tensor:
    """Check book times t in [0, 1] that the convention reaches; return its own times."""
    if t.numel() == 0:
        return conv.from_book(t)
    if bool(torch.isnan(t).any()):
        raise ValueError("t must not be NaN (the book's time, in [0, 1])")
    lo, hi = float(t.min()), float(t.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"t must lie in [0, 1] (the book's time: 0 noise, 1 data); got values in [{lo:g}, {hi:g}]")
    reach = conv.to_book(torch.tensor([conv.lo, conv.hi], dtype=torch.float64))
    first, last = float(reach.min()), float(reach.max())
    slack = 4 * torch.finfo(t.dtype).eps  # a book time rounded to t's dtype may step just outside
    if lo < first * (1 - slack) or hi > last * (1 + slack) or (conv.name == "edm" and lo == 0.0):
        raise ValueError(
            f"t must lie in [{first:.6g}, {last:.6g}] for convention {conv.name!r} (its time is {conv.what}, "
            f"from {conv.lo:g} to {conv.hi:g}); got book times in [{lo:g}, {hi:g}]"
        )
    return conv.from_book(t).clamp(conv.lo, conv.hi)


# -- times -----------------------------------------------------------------------------------------------------


def to_book_time(t: float | Tensor, convention: str) -> Tensor:
    """The book's time for a time ``t`` of ``convention``: the time of equal signal-to-noise ratio.

    With the convention's x = alpha x_data + sigma eps at ``t``, the book's time is alpha / (alpha + sigma)
    (t = 0 noise, t = 1 data). For ``book``, ``flow_matching``, ``torchcfm`` and ``mit_6s184`` it is t itself; for
    ``sd3`` it is 1 - t; for ``edm`` (t = sigma) and ``score_sde_ve`` it is 1 / (1 + sigma). Lipman et al. (2024),
    Section 4.8.2 (scheduler change at equal signal-to-noise ratio); Kingma et al. (2021), Section 3.

    Args:
        t: the convention's time: a number or a tensor of any shape (integer tensors allowed for ``ddpm`` and
            ``diffusers``, whose steps may also be fractional), in the convention's range (see the module's
            table).
        convention: one of :data:`CONVENTIONS`.

    Returns:
        The book's times, t's shape, in [0, 1]; float64 for a number or an integer tensor, otherwise
        ``torch.promote_types(t.dtype, torch.float32)``.

    Raises:
        ValueError: for an unknown convention, or t outside the convention's range or NaN.
        TypeError: if convention is not a str or t is not a real number or tensor.

    Example:
        >>> float(to_book_time(0.25, "sd3")), float(to_book_time(1.0, "edm"))
        (0.75, 0.5)
    """
    conv = _convention(convention)
    tt = _as_times(t)
    tt = tt.to(torch.promote_types(tt.dtype, torch.float32))
    return conv.to_book(_check_range(tt, conv))


def from_book_time(t: float | Tensor, convention: str) -> Tensor:
    """The time of ``convention`` at the book's time ``t``; the inverse of :func:`to_book_time`.

    Args:
        t: the book's time (0 noise, 1 data): a number or a floating tensor of any shape, in [0, 1] and within
            the range the convention reaches (DDPM's last step n = 1000 is at book time 0.0064, so an earlier
            book time has no DDPM step; EDM's sigma is infinite at t = 0).
        convention: one of :data:`CONVENTIONS`.

    Returns:
        The convention's times, t's shape and dtype as in :func:`to_book_time` (fractional steps for ``ddpm``
        and ``diffusers``).

    Raises:
        ValueError: for an unknown convention, t outside [0, 1] or outside what the convention reaches, or NaN.
        TypeError: if convention is not a str or t is not a real number or tensor.

    Example:
        >>> float(from_book_time(0.5, "edm")), float(from_book_time(0.75, "sd3"))
        (1.0, 0.25)
    """
    conv = _convention(convention)
    tt = _as_times(t)
    return _book_times(tt.to(torch.promote_types(tt.dtype, torch.float32)), conv)


# -- states ----------------------------------------------------------------------------------------------------


def _times_for(t: object, x: Tensor, conv: _Convention, book: bool) -> tuple[Tensor, Tensor]:
    """(the convention's times, the book's times), each of shape (B,) in x's compute dtype."""
    if isinstance(t, bool) or not isinstance(t, (Real, Tensor)):
        raise TypeError(f"t must be a real number or a tensor of shape ({x.shape[0]},); got {type(t).__name__}")
    tt = as_time(_as_times(t) if isinstance(t, Tensor) else t, x, unit_interval=False)
    if book:
        tau = from_book_time(tt, conv.name).to(tt.dtype)
        return tau, tt
    return tt, to_book_time(tt, conv.name).to(tt.dtype)


def _scale(tau: Tensor, conv: _Convention, x: Tensor) -> Tensor | None:
    """alpha + sigma at tau, shaped to broadcast against x; None for the flow conventions (scale 1)."""
    if conv.flow:
        return None
    alpha, sigma = conv.alpha_sigma(tau)
    return unsqueeze_like(alpha + sigma, x)


def to_book_state(x: Tensor, t: float | Tensor, convention: str) -> Tensor:
    """The book's state y = x / (alpha + sigma) for a state ``x`` of ``convention`` at its time ``t``.

    y lies on the book's CondOT path y = t' x1 + (1 - t') x0 with t' = :func:`to_book_time` (t) and the same data
    point and noise. For the flow conventions (and ``sd3``, whose alpha + sigma = 1) y = x.

    Args:
        x: states, shape ``(B, *D)``, floating dtype.
        t: the convention's time: a number, a 0-d tensor or a tensor of shape (B,).
        convention: one of :data:`CONVENTIONS`.

    Returns:
        y, x's shape and dtype.

    Raises:
        ValueError: for an unknown convention, a t out of range or of the wrong shape.
        TypeError: if x is not a floating tensor, t is not a number or tensor, or convention not a str.
    """
    conv = _convention(convention)
    check_batch(x, "x")
    tau, _ = _times_for(t, x, conv, book=False)
    k = _scale(tau, conv, x)
    return x if k is None else (x.to(tau.dtype) / k).to(x.dtype)


def from_book_state(x: Tensor, t: float | Tensor, convention: str) -> Tensor:
    """The state of ``convention`` for the book's state ``x`` at the book's time ``t``; see :func:`to_book_state`.

    Args:
        x: the book's states, shape ``(B, *D)``, floating dtype.
        t: the book's time in [0, 1] (within what the convention reaches): a number, a 0-d tensor or shape (B,).
        convention: one of :data:`CONVENTIONS`.

    Returns:
        (alpha + sigma) x, x's shape and dtype, alpha and sigma taken at the convention's time
        :func:`from_book_time` (t).

    Raises:
        ValueError, TypeError: as :func:`to_book_state`, with the book's range for t.
    """
    conv = _convention(convention)
    check_batch(x, "x")
    tau, _ = _times_for(t, x, conv, book=True)
    k = _scale(tau, conv, x)
    return x if k is None else (x.to(tau.dtype) * k).to(x.dtype)


# -- predictions and velocities -----------------------------------------------------------------------------------


def _prepare(value: Tensor, x: Tensor, name: str) -> None:
    check_batch(value, name)
    check_batch(x, "x")
    check_same_shape(value, x, name, "x")


def _check_velocity_map(
    out: Tensor, coefficients: tuple[Tensor, Tensor], tau: Tensor, conv: _Convention, fname: str, arg: str
) -> None:
    """Raise where the chain rule's result is not finite: a singular time, or inputs that are not finite."""
    if bool(torch.isfinite(out).all()):
        return
    where = f"t in [{float(tau.min()):g}, {float(tau.max()):g}]"
    slope, den = coefficients
    if not (bool(torch.isfinite(slope).all()) and bool(torch.isfinite(den).all()) and bool((den != 0).all())):
        raise ValueError(
            f"{fname}: the velocity of convention {conv.name!r} is singular at {where} "
            "(d sigma / dt is infinite at its data end)"
        )
    raise ValueError(
        f"{fname}: the result is not finite at {where} of convention {conv.name!r}: "
        f"{arg} or x is not finite (or too large)"
    )


def to_book_velocity(
    pred: Tensor, x: Tensor, t: float | Tensor, convention: str, prediction: str | None = None
) -> Tensor:
    """The book's velocity at (:func:`to_book_state` (x), :func:`to_book_time` (t)) from a network's output.

    ``pred`` is what the convention's network outputs at its state ``x`` and time ``t``. It is mapped to the
    book's frame (the noise and the data point are shared; the score scales by alpha + sigma; a velocity
    d x / d tau by the chain rule) and turned into the velocity of the book's CondOT path with
    :class:`~fmlib.AffinePath`'s maps (``epsilon_to_velocity``, ``x1_to_velocity``, ``score_to_velocity``;
    Lipman et al. 2024, Section 4.8.1). For ``sd3`` the velocity flips sign (its time runs the other way).

    Args:
        pred: the network's output, shape ``(B, *D)`` (x's shape), floating dtype.
        x: the convention's state, shape ``(B, *D)``.
        t: the convention's time: a number, a 0-d tensor or a tensor of shape (B,).
        convention: one of :data:`CONVENTIONS`.
        prediction: one of :data:`CONVENTION_PREDICTIONS`; None means the convention's model output
            (``velocity``, ``epsilon``, ``score`` or ``data``, see the module's table).

    Returns:
        The book's velocity u_t at the book's state, x's shape and dtype.

    Raises:
        ValueError: for an unknown convention or prediction, a velocity of a discrete-time convention, shapes
            that differ, t out of range, or where the map is undefined (an epsilon or a score at the noise end,
            a data prediction at sigma = 0), or a result that is not finite (pred or x not finite).
        TypeError: if pred or x is not a floating tensor, or convention or prediction is not a str.

    Example:
        >>> import torch
        >>> v_sd3 = torch.tensor([[1.0, -2.0]])
        >>> to_book_velocity(v_sd3, torch.zeros(1, 2), 0.3, "sd3")
        tensor([[-1.,  2.]])
    """
    conv = _convention(convention)
    kind = _prediction(prediction, conv)
    _prepare(pred, x, "pred")
    tau, t_book = _times_for(t, x, conv, book=False)
    if conv.flow and kind == "velocity":
        return (-pred if conv.name == "sd3" else pred).to(x.dtype)
    dtype = t_book.dtype
    p, xc = pred.to(dtype), x.to(dtype)
    alpha, sigma = (unsqueeze_like(c, x) for c in conv.alpha_sigma(tau))
    k = torch.ones_like(alpha) if conv.flow else alpha + sigma
    y = xc / k
    if kind == "velocity":
        assert conv.derivatives is not None
        d_alpha, d_sigma = (unsqueeze_like(c, x) for c in conv.derivatives(tau))
        # x = k y: dx/dtau = k' y + k (dy/dt) (dt/dtau), dt/dtau = (alpha' sigma - alpha sigma') / k^2
        out = k * (p - (d_alpha + d_sigma) * y) / (d_alpha * sigma - alpha * d_sigma)
        _check_velocity_map(
            out, (d_alpha + d_sigma, d_alpha * sigma - alpha * d_sigma), tau, conv, "to_book_velocity", "pred"
        )
        return out.to(x.dtype)
    if kind == "v_prediction":
        kind, p = "data", (alpha * xc - sigma * p) / (alpha**2 + sigma**2)
    if kind == "epsilon":
        out = _BOOK_PATH.epsilon_to_velocity(p, y, t_book)
    elif kind == "data":
        out = _BOOK_PATH.x1_to_velocity(p, y, t_book)
    else:  # score: grad_y log p(y) = (alpha + sigma) grad_x log p(x)
        out = _BOOK_PATH.score_to_velocity(k * p, y, t_book)
    return out.to(x.dtype)


def from_book_velocity(
    v: Tensor, x: Tensor, t: float | Tensor, convention: str, prediction: str | None = None
) -> Tensor:
    """What ``convention``'s network outputs, given the book's velocity ``v`` at the book's state and time.

    The inverse of :func:`to_book_velocity`: ``x`` and ``t`` are the book's (:func:`to_book_state` and
    :func:`to_book_time` of the convention's), and the result is the ``prediction`` at the convention's state
    :func:`from_book_state` (x, t) and time :func:`from_book_time` (t). Uses
    :class:`~fmlib.AffinePath`'s maps ``velocity_to_epsilon``, ``velocity_to_x1``, ``velocity_to_score``
    (Lipman et al. 2024, Section 4.8.1).

    Args:
        v: the book's velocity, shape ``(B, *D)``, floating dtype.
        x: the book's state, shape ``(B, *D)``.
        t: the book's time in [0, 1] (within what the convention reaches): a number, a 0-d tensor or shape (B,).
        convention: one of :data:`CONVENTIONS`.
        prediction: one of :data:`CONVENTION_PREDICTIONS`; None means the convention's model output.

    Returns:
        The prediction, x's shape and dtype.

    Raises:
        ValueError, TypeError: as :func:`to_book_velocity`, with the book's range for t.

    Example:
        >>> import torch
        >>> from_book_velocity(torch.tensor([[1.0, -1.0]]), torch.zeros(1, 2), 0.5, "ddpm")
        tensor([[-0.5000,  0.5000]])
    """
    conv = _convention(convention)
    kind = _prediction(prediction, conv)
    _prepare(v, x, "v")
    tau, t_book = _times_for(t, x, conv, book=True)
    if conv.flow and kind == "velocity":
        return (-v if conv.name == "sd3" else v).to(x.dtype)
    dtype = t_book.dtype
    alpha, sigma = (unsqueeze_like(c, x) for c in conv.alpha_sigma(tau))
    k = torch.ones_like(alpha) if conv.flow else alpha + sigma
    if kind == "velocity":
        assert conv.derivatives is not None
        d_alpha, d_sigma = (unsqueeze_like(c, x) for c in conv.derivatives(tau))
        vc, y = v.to(dtype), x.to(dtype)
        out = (d_alpha + d_sigma) * y + (d_alpha * sigma - alpha * d_sigma) * vc / k
        _check_velocity_map(
            out, (d_alpha + d_sigma, d_alpha * sigma - alpha * d_sigma), tau, conv, "from_book_velocity", "v"
        )
        return out.to(x.dtype)
    if kind == "epsilon":
        return _BOOK_PATH.velocity_to_epsilon(v, x, t_book)
    if kind == "data":
        return _BOOK_PATH.velocity_to_x1(v, x, t_book)
    if kind == "score":
        return (_BOOK_PATH.velocity_to_score(v, x, t_book).to(dtype) / k).to(x.dtype)
    eps = _BOOK_PATH.velocity_to_epsilon(v, x, t_book).to(dtype)
    x1 = _BOOK_PATH.velocity_to_x1(v, x, t_book).to(dtype)
    return (alpha * eps - sigma * x1).to(x.dtype)


# -- guidance ----------------------------------------------------------------------------------------------------


def _guidance_offset(convention: object) -> float:
    if not isinstance(convention, str):
        raise TypeError(f"convention must be a str, one of {GUIDANCE_CONVENTIONS}; got {type(convention).__name__}")
    if convention not in GUIDANCE_CONVENTIONS:
        extra = " (it defines no guidance scale)" if convention in CONVENTIONS else ""
        raise ValueError(f"convention must be one of {GUIDANCE_CONVENTIONS}{extra}; got {convention!r}")
    return 1.0 if convention == "ho_salimans" else 0.0


def to_book_guidance(w: float, convention: str) -> float:
    """The book's guidance scale for a scale ``w`` written in ``convention``.

    The book guides with u(x | null) + w (u(x | y) - u(x | null)) (:func:`~fmlib.cfg_combine`). The Flow
    Matching Guide (Lipman et al. 2024, Section 6), MIT 6.S184 (Holderrieth & Erives 2025) and diffusers'
    ``guidance_scale`` (also for SD3) write the same combination, so their scale is the book's. Ho & Salimans
    (2022), eq. 6, write (1 + w') eps(x | y) - w' eps(x | null): the book's w = 1 + w'. Because every map
    between velocity, noise, data and score predictions is affine with coefficients that do not depend on the
    label, the scale means the same for all predictions.

    Args:
        w: a finite real number.
        convention: one of :data:`GUIDANCE_CONVENTIONS`.

    Returns:
        The book's w (a float).

    Raises:
        ValueError: for a convention without a guidance scale or an unknown one, or w not finite.
        TypeError: if w is not a real number or convention is not a str.

    Example:
        >>> to_book_guidance(7.5, "diffusers"), to_book_guidance(0.3, "ho_salimans")
        (7.5, 1.3)
    """
    offset = _guidance_offset(convention)
    return check_real(w, "w") + offset


def from_book_guidance(w: float, convention: str) -> float:
    """The scale of ``convention`` for the book's guidance scale ``w``; the inverse of :func:`to_book_guidance`.

    Args:
        w: the book's scale, a finite real number.
        convention: one of :data:`GUIDANCE_CONVENTIONS`.

    Returns:
        The convention's scale (a float): w itself, or w - 1 for ``ho_salimans``.

    Raises:
        ValueError, TypeError: as :func:`to_book_guidance`.

    Example:
        >>> from_book_guidance(2.0, "ho_salimans")
        1.0
    """
    offset = _guidance_offset(convention)
    return check_real(w, "w") - offset
