"""An exponential moving average (EMA) of a model's parameters, with the usual warm-up of the decay.

Polyak & Juditsky (1992) for averaging the iterates of stochastic gradient methods; the exponential form and
the warm-up ``min(decay, (1 + n) / (10 + n))`` follow TensorFlow's ``ExponentialMovingAverage``
(``num_updates``); flow-matching and diffusion models are evaluated with such averaged weights
(Song & Ermon 2020, Section 3.5; Karras et al. 2024, Section 3).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from numbers import Real
from typing import Any

import torch
from torch import nn

__all__ = ["EMA"]


def _check_decay(decay: object) -> None:
    if isinstance(decay, bool) or not isinstance(decay, Real):
        raise TypeError(f"decay must be a float in [0, 1); got {type(decay).__name__}")
    if not math.isfinite(float(decay)) or not 0.0 <= float(decay) < 1.0:
        raise ValueError(f"decay must be a float in [0, 1); got {decay!r}")


class EMA:
    """Keep ``theta_ema <- d_n theta_ema + (1 - d_n) theta`` after every optimiser step.

    The average starts at the model's parameters when the EMA is created. With ``warmup`` (the default) the
    decay of the n-th update (n = 0, 1, ...) is ``d_n = min(decay, (1 + n) / (10 + n))``: early on, when the
    weights move fast, the average forgets quickly, and it reaches ``decay`` after about ``9 / (1 - decay)``
    updates; without warm-up d_n = decay. Only parameters are averaged (buffers are left as they are).
    Averages are kept in ``promote_types(dtype, float32)`` so half-precision parameters do not lose the
    small increments ``(1 - d) (theta - theta_ema)``.

    Args:
        model: the module whose parameters are averaged (trained in place by an optimiser).
        decay: the decay d in [0, 1); the average spans about ``1 / (1 - d)`` steps. d = 0 keeps a copy
            of the latest parameters.
        warmup: use the warm-up ``min(decay, (1 + n) / (10 + n))``.

    Raises:
        TypeError: if model is not an ``nn.Module`` or decay is not a real number.
        ValueError: if decay is not a number in [0, 1).

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(1, 1, bias=False)
        >>> _ = torch.nn.init.zeros_(lin.weight)
        >>> ema = EMA(lin, decay=0.5, warmup=False)
        >>> with torch.no_grad():
        ...     _ = lin.weight.fill_(1.0)
        >>> ema.update()
        >>> with ema.averaged():
        ...     float(lin.weight.detach())
        0.5
        >>> float(lin.weight.detach())  # the training weights are back
        1.0
    """

    model: nn.Module
    decay: float
    warmup: bool
    num_updates: int
    shadow: list[torch.Tensor]
    _params: list[nn.Parameter]

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        _check_decay(decay)
        self.model = model
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        named = list(model.named_parameters())
        self._names = [name for name, _ in named]
        self._params = [p for _, p in named]
        if not self._params:
            raise ValueError(f"model must have parameters to average; {type(model).__name__} has none")
        self.shadow = [p.detach().to(torch.promote_types(p.dtype, torch.float32)).clone() for p in self._params]

    def current_decay(self) -> float:
        """The decay d_n the next :meth:`update` uses."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self) -> None:
        """Fold the model's current parameters into the average (call after each optimiser step)."""
        d = self.current_decay()
        current = [p.detach().to(s.dtype) for p, s in zip(self._params, self.shadow)]
        torch._foreach_lerp_(self.shadow, current, 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module | None = None) -> None:
        """Write the averaged parameters into ``model`` (default: the tracked model), overwriting its own."""
        params = self._params if model is None else list(model.parameters())
        if len(params) != len(self.shadow) or any(p.shape != s.shape for p, s in zip(params, self.shadow)):
            raise ValueError("model must have the tracked model's parameter shapes")
        for p, s in zip(params, self.shadow):
            p.copy_(s)

    @contextmanager
    def averaged(self) -> Iterator[nn.Module]:
        """Within the block the tracked model carries the averaged parameters; its own come back after.

        Example: ``with ema.averaged() as m: x = fmlib.integrate(m, x0)``.
        """
        saved = [p.detach().clone() for p in self._params]
        self.copy_to()
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for p, s in zip(self._params, saved):
                    p.copy_(s)

    def state_dict(self) -> dict[str, Any]:
        """The averages keyed by parameter name, the decay and the update count (save it beside the model's).

        Keys are names, not positions, so a model whose layers are registered in another order loads the
        right average into each parameter.
        """
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "shadow": {name: s.clone() for name, s in zip(self._names, self.shadow)},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            ValueError: if the state lacks a key, or its averages' names or shapes differ from the tracked
                model's parameters (the mismatched names are listed); nothing is changed then.
        """
        missing = {"shadow", "decay", "warmup", "num_updates"} - set(state)
        if missing:
            raise ValueError(f"state is missing {sorted(missing)}; pass what EMA.state_dict() returned")
        _check_decay(state["decay"])
        shadow = state["shadow"]
        if not isinstance(shadow, dict):
            raise ValueError(
                "state['shadow'] must map parameter names to averages; pass what EMA.state_dict() returned"
            )
        mine = dict(zip(self._names, self.shadow))
        only_state, only_model = sorted(set(shadow) - set(mine)), sorted(set(mine) - set(shadow))
        if only_state or only_model:
            raise ValueError(
                f"state must hold one average per parameter of the tracked model; names only in the state: "
                f"{only_state[:5]}, only in the model: {only_model[:5]}"
            )
        shapes = [n for n in self._names if tuple(shadow[n].shape) != tuple(mine[n].shape)]
        if shapes:
            raise ValueError(f"state must hold averages of the tracked model's shapes; these differ: {shapes[:5]}")
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        self.shadow = [
            shadow[n].detach().to(dtype=b.dtype, device=b.device).clone() for n, b in zip(self._names, self.shadow)
        ]

    def __repr__(self) -> str:
        return f"EMA(decay={self.decay:g}, warmup={self.warmup}, num_updates={self.num_updates})"
