"""fmlib, torchcfm and Meta's flow_matching behind one interface: a training loss and an Euler sampler.

Each adapter is written the way the library's own documentation trains and samples a model, on the straight-line
path with sigma = 0:

* fmlib: ``fmlib.cfm_loss(model, fmlib.LinearPath(0.0), x1, x0=x0, t=t)``; OT pairs from ``fmlib.minibatch_ot``
  (an exact optimal permutation, solved with POT's network simplex ``ot.emd``, SciPy's
  ``linear_sum_assignment`` only as a fallback); sampler ``fmlib.integrate(method="euler")``;
* torchcfm: ``ConditionalFlowMatcher(sigma=0)`` and ``ExactOptimalTransportConditionalFlowMatcher(sigma=0)``
  (POT's ``ot.emd`` plan, pairs drawn from it with replacement), loss ``mean((v - u)^2)``; torchcfm has no sampler of
  its own (its examples use torchdyn or torchdiffeq), so ``torchdiffeq.odeint(method="euler")`` on a uniform grid;
* flow_matching: ``AffineProbPath(CondOTScheduler())``, loss ``mean((v - dx_t)^2)``; sampler ``ODESolver`` on a
  uniform time grid. It has no OT coupler: independent pairs only.

torchcfm (MIT) and flow_matching (CC BY-NC 4.0) are imported, never copied. Install them without their declared
dependencies (torchcfm's pull torchvision and with it a CUDA torch):
``python -m pip install --no-deps -c benchmarks/constraints.txt -r benchmarks/requirements.txt``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import fmlib

LIBRARIES = ("fmlib", "torchcfm", "flow_matching")
COUPLINGS = ("independent", "ot")

DESCRIPTION = {
    "path": "straight line, sigma = 0 (fmlib.LinearPath(0.0); torchcfm ConditionalFlowMatcher(sigma=0); "
    "flow_matching AffineProbPath(CondOTScheduler()))",
    "ot": {
        "fmlib": "fmlib.minibatch_ot (an exact optimal permutation from POT's network simplex ot.emd; "
        "scipy.optimize.linear_sum_assignment only as a fallback)",
        "torchcfm": "ExactOptimalTransportConditionalFlowMatcher (ot.emd plan, pairs sampled with replacement)",
        "flow_matching": "none (no OT coupler): independent coupling only",
    },
    "samplers": {
        "fmlib": "fmlib.integrate(method='euler')",
        "torchcfm": "torchdiffeq.odeint(method='euler') on a uniform grid (torchcfm has no sampler; its examples "
        "use torchdyn or torchdiffeq)",
        "flow_matching": "ODESolver.sample(method='euler', step_size=None, uniform time_grid)",
    },
}
"""How each library is used, in words: stored in the results' ``config``."""

Loss = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Variant:
    """One library trained with one coupling."""

    library: str
    coupling: str

    @property
    def name(self) -> str:
        return f"{self.library}_{self.coupling}"


VARIANTS = {
    v.name: v
    for v in (
        Variant("fmlib", "independent"),
        Variant("torchcfm", "independent"),
        Variant("flow_matching", "independent"),
        Variant("fmlib", "ot"),
        Variant("torchcfm", "ot"),
    )
}
"""Every (library, coupling) pair the comparison trains, by name (``"fmlib_ot"``, ...)."""


def import_libraries() -> dict[str, Any]:
    """The classes and functions of torchcfm, flow_matching and torchdiffeq that the adapters call."""
    import torchdiffeq
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler
    from flow_matching.solver import ODESolver
    from torchcfm.conditional_flow_matching import ConditionalFlowMatcher, ExactOptimalTransportConditionalFlowMatcher

    return dict(
        AffineProbPath=AffineProbPath,
        CondOTScheduler=CondOTScheduler,
        ODESolver=ODESolver,
        CFM=ConditionalFlowMatcher,
        OTCFM=ExactOptimalTransportConditionalFlowMatcher,
        odeint=torchdiffeq.odeint,
    )


def make_loss(variant: Variant, libs: dict[str, Any]) -> Loss:
    """``loss(model, x0, x1, t) -> scalar``, as the variant's library documents it."""
    if variant.coupling not in COUPLINGS:
        raise ValueError(f"coupling must be one of {COUPLINGS}, got {variant.coupling!r}")
    if variant.library == "fmlib":
        path = fmlib.LinearPath(0.0)
        ot = variant.coupling == "ot"

        def loss(model, x0, x1, t):
            if ot:
                x0, x1 = fmlib.minibatch_ot(x0, x1)
            return fmlib.cfm_loss(model, path, x1, x0=x0, t=t)

    elif variant.library == "torchcfm":
        matcher = libs["OTCFM"](sigma=0.0) if variant.coupling == "ot" else libs["CFM"](sigma=0.0)

        def loss(model, x0, x1, t):
            t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1, t)
            return torch.mean((model(xt, t) - ut) ** 2)

    elif variant.library == "flow_matching":
        if variant.coupling != "independent":
            raise ValueError("flow_matching has no OT coupler: coupling must be 'independent'")
        path = libs["AffineProbPath"](scheduler=libs["CondOTScheduler"]())

        def loss(model, x0, x1, t):
            s = path.sample(x_0=x0, x_1=x1, t=t)
            return torch.pow(model(s.x_t, s.t) - s.dx_t, 2).mean()

    else:
        raise ValueError(f"library must be one of {LIBRARIES}, got {variant.library!r}")
    return loss


def sample(library: str, model: Callable, x0: torch.Tensor, nfe: int, libs: dict[str, Any]) -> torch.Tensor:
    """Euler from t = 0 to 1 with ``nfe`` equal steps, through the library's own sampler (no gradients)."""
    with torch.no_grad():
        if library == "fmlib":
            return fmlib.integrate(model, x0, steps=nfe, method="euler")
        grid = torch.linspace(0.0, 1.0, nfe + 1, dtype=x0.dtype, device=x0.device)
        if library == "flow_matching":
            # step_size=None: the fixed-step solver steps exactly on time_grid (a step_size would let
            # torchdiffeq build its own grid, off by one step for some sizes in float32)
            return libs["ODESolver"](velocity_model=model).sample(
                x_init=x0, step_size=None, method="euler", time_grid=grid
            )
        if library == "torchcfm":
            return libs["odeint"](lambda t, x: model(x, t), x0, grid, method="euler")[-1]
    raise ValueError(f"library must be one of {LIBRARIES}, got {library!r}")


def flow_matching_discrete(kappa_power: float) -> dict[str, Any]:
    """flow_matching's discrete classes for kappa_t = t^n: the path, its scheduler and the Euler jump solver."""
    from flow_matching.path import MixtureDiscreteProbPath
    from flow_matching.path.scheduler import PolynomialConvexScheduler
    from flow_matching.solver import MixtureDiscreteEulerSolver
    from flow_matching.utils import ModelWrapper

    return dict(
        path=MixtureDiscreteProbPath(PolynomialConvexScheduler(n=kappa_power)),
        Solver=MixtureDiscreteEulerSolver,
        ModelWrapper=ModelWrapper,
    )


def sample_discrete_flow_matching(
    net: Callable, x0: torch.Tensor, steps: int, vocab_size: int, fm: dict[str, Any], cond: torch.Tensor | None = None
) -> torch.Tensor:
    """flow_matching's ``MixtureDiscreteEulerSolver`` on a posterior network ``net(x, t[, cond]) -> logits``.

    The solver, as its documentation shows, takes a model that returns posterior *probabilities* over every state;
    the network's probabilities over the vocabulary get a zero column for the mask (index ``vocab_size``).
    """

    class Probabilities(fm["ModelWrapper"]):
        def forward(self, x, t, **extras):
            logits = net(x, t) if cond is None else net(x, t, cond)
            p = torch.softmax(logits.float(), dim=-1)
            return torch.cat([p, p.new_zeros(*p.shape[:-1], 1)], dim=-1)

    solver = fm["Solver"](model=Probabilities(net), path=fm["path"], vocabulary_size=vocab_size + 1)
    with torch.no_grad():
        grid = torch.linspace(0.0, 1.0, steps + 1, device=x0.device)  # exactly `steps` steps
        return solver.sample(x_init=x0, step_size=None, time_grid=grid)
