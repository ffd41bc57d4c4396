"""Checks of lab 3, couplings and straight flows (``labs/lab03_couplings_straight_flows.ipynb``).

The student's minibatch OT pairing is compared with the optimum found independently (a brute force over
all permutations of tiny problems, POT's network simplex ``ot.emd2`` on larger ones); the trained models
are measured by the grader itself, on its own noise and its own held-out data: straightness (Liu et al.
2023, Section 2.2) with ``fmlib.straightness`` and the W2 distance of few-step Euler samples in units of
the finite-sample floor (the W2 between two independent data sets of the same size). The reflow pairs are
checked on a velocity field whose flow is known in closed form. Chapters 6 and 9 of the book; Tong et al.
(2024), Section 3.2; Liu et al. (2023), Algorithm 1.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch

from ._grader import CheckFailed, call, task

LAB = "lab03_couplings_straight_flows"
F64 = torch.float64

N_EVAL = 1000
"""Samples of the grader's held-out set and of its noise."""
STRAIGHTER_BY = 5.0
"""OT-CFM's straightness must be below I-CFM's divided by this (the reference solution: about 60x)."""
MAX_W2_100 = 2.5
"""Every trained model's W2 / floor after 100 Euler steps must be below this (solution: about 1.6-1.8)."""
MAX_W2_TWO_STEPS = 1.8
"""The 2-rectified flow's W2 / floor after 2 Euler steps must be below this (solution: about 1.2; the
I-CFM flow it starts from: about 2.3)."""


def _pairing(ns: dict, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    before0, before1 = x0.clone(), x1.clone()
    pi = call(ns, "ot_pairing", x0, x1)
    if not isinstance(pi, torch.Tensor):
        raise CheckFailed(f"`ot_pairing` should return a torch.Tensor of indices; it returned {type(pi).__name__}")
    n = x0.shape[0]
    if tuple(pi.shape) != (n,):
        raise CheckFailed(
            f"`ot_pairing` should return indices of shape ({n},) for a batch of {n}; got {tuple(pi.shape)}"
        )
    if pi.dtype != torch.int64:
        raise CheckFailed(f"`ot_pairing` should return int64 indices (usable as x1[pi]); got dtype {pi.dtype}")
    if not torch.equal(pi.cpu().sort().values, torch.arange(n)):
        raise CheckFailed(
            f"`ot_pairing` should return a permutation of 0..{n - 1} (every data point used once); got "
            f"{pi.tolist() if n <= 8 else 'indices with repeats or gaps'}"
        )
    if not (torch.equal(x0, before0) and torch.equal(x1, before1)):
        raise CheckFailed("`ot_pairing` changed its inputs in place; return the indices and leave x0, x1 alone")
    return pi.cpu()


def _cost(x0: torch.Tensor, x1: torch.Tensor, pi: torch.Tensor | list[int]) -> float:
    pi = torch.as_tensor(pi)
    return float((x0 - x1[pi]).flatten(1).pow(2).sum(1).sum())


@task(lab=LAB, name="ot_pairing", points=3, needs=("ot_pairing",))
def check_ot_pairing(ns: dict) -> str:
    """ot_pairing: a permutation whose squared-distance cost is the optimum (brute force; POT's ot.emd2)."""
    gen = torch.Generator().manual_seed(31)
    for trial in range(3):  # tiny problems: every one of the 6! = 720 pairings
        x0 = torch.randn(6, 2, generator=gen, dtype=F64)
        x1 = torch.randn(6, 2, generator=gen, dtype=F64) * 2 + 1
        pi = _pairing(ns, x0, x1)
        best = min(_cost(x0, x1, list(p)) for p in itertools.permutations(range(6)))
        got = _cost(x0, x1, pi)
        if got > best * (1 + 1e-9) + 1e-12:
            raise CheckFailed(
                f"6 points in 2D (problem {trial + 1}): the cheapest pairing of all 720 costs "
                f"sum |x0 - x1[pi]|^2 = {best:.4f}; yours costs {got:.4f} (is the cost the squared distance, "
                f"and is x1[pi[i]] the partner of x0[i]?)"
            )
    import ot

    x0 = torch.randn(64, 2, 2, generator=gen, dtype=F64)  # images of 2x2 pixels: flatten the features
    x1 = torch.randn(64, 2, 2, generator=gen, dtype=F64) + torch.tensor([[3.0, 0.0], [0.0, -1.0]], dtype=F64)
    pi = _pairing(ns, x0, x1)
    cost = torch.cdist(x0.flatten(1), x1.flatten(1)).pow(2).numpy()
    best = float(ot.emd2(np.full(64, 1 / 64), np.full(64, 1 / 64), cost)) * 64
    got = _cost(x0, x1, pi)
    if got > best * (1 + 1e-7):
        raise CheckFailed(
            f"64 samples of shape (2, 2): the optimal transport cost (POT's ot.emd2) is {best:.4f}; your "
            f"pairing costs {got:.4f} (flatten each sample to a vector before the distances)"
        )
    independent = _cost(x0, x1, torch.arange(64))
    return f"optimal on 3 brute-forced problems and on 64 points (cost {got:.2f}, identity pairing {independent:.2f})"


# -- the grader's own evaluation set ------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _eval_set() -> tuple[torch.Tensor, torch.Tensor, float]:
    """(held-out data, noise, floor): all drawn here, independently of the notebook's draws."""
    import fmlib

    g = torch.Generator().manual_seed(303)
    test = fmlib.eight_gaussians(N_EVAL, generator=g)
    z = torch.randn(N_EVAL, 2, generator=g)
    floor = float(np.mean([fmlib.wasserstein2(fmlib.eight_gaussians(N_EVAL, generator=g), test) for _ in range(4)]))
    return test, z, floor


def _model(ns: dict, name: str, what: str) -> torch.nn.Module:
    if name not in ns:
        raise CheckFailed(f"`{name}` is not defined: run the cell that trains {what}")
    m = ns[name]
    if not isinstance(m, torch.nn.Module):
        raise CheckFailed(
            f"`{name}` should be the trained network ({what}), a torch.nn.Module; it is {type(m).__name__}"
        )
    return m


def _measure(model: torch.nn.Module, z: torch.Tensor, test: torch.Tensor, floor: float, steps: list[int]) -> dict:
    """Straightness over 100 Euler steps and W2 / floor after each number of Euler steps (on the CPU)."""
    import fmlib

    device = next(model.parameters()).device
    zd = z.to(device)
    out: dict[str | int, float] = {}
    with torch.no_grad():
        traj = fmlib.integrate(model, zd, steps=100, trajectory=True).cpu().float()
        if not torch.isfinite(traj).all():
            raise CheckFailed("the model's samples hold NaN or inf")
        out["S"] = fmlib.straightness(traj)
        out[100] = fmlib.wasserstein2(traj[-1], test) / floor
        for k in steps:
            out[k] = fmlib.wasserstein2(fmlib.integrate(model, zd, steps=k).cpu().float(), test) / floor
    return out


@task(lab=LAB, name="ot_cfm", points=3, needs=("icfm", "otcfm"))
def check_ot_cfm(ns: dict) -> str:
    """OT-CFM trained with the student's pairing: good samples, and far straighter than I-CFM."""
    test, z, floor = _eval_set()
    r_i = _measure(_model(ns, "icfm", "I-CFM"), z, test, floor, [])
    r_o = _measure(_model(ns, "otcfm", "OT-CFM"), z, test, floor, [])
    for name, r in (("icfm", r_i), ("otcfm", r_o)):
        if r[100] > MAX_W2_100:
            raise CheckFailed(
                f"`{name}` after 100 Euler steps: W2 = {r[100]:.2f} x the finite-sample floor (the W2 between two "
                f"data sets of {N_EVAL}); expected below {MAX_W2_100}: train longer, or check the training cell"
            )
    if not r_o["S"] < r_i["S"] / STRAIGHTER_BY:
        raise CheckFailed(
            f"straightness S (0 for straight paths): I-CFM {r_i['S']:.4f}, OT-CFM {r_o['S']:.4f}; the OT coupling "
            f"should make the flow at least {STRAIGHTER_BY:g}x straighter (is `otcfm` trained with "
            f"coupling=ot_pairing?)"
        )
    return (
        f"S: I-CFM {r_i['S']:.4f}, OT-CFM {r_o['S']:.4f} ({r_i['S'] / max(r_o['S'], 1e-12):.0f}x straighter); "
        f"W2 / floor at 100 steps {r_i[100]:.2f}, {r_o[100]:.2f}"
    )


def _rotation(x: torch.Tensor, t: object) -> torch.Tensor:
    """v(x, t) = (1 + t) J x: the flow from 0 to 1 rotates x by 1.5 radians."""
    t = torch.as_tensor(t, dtype=x.dtype)
    rate = 1 + (t.expand(x.shape[0]) if t.ndim == 0 else t.reshape(-1))[:, None]
    return rate * torch.stack([-x[:, 1], x[:, 0]], dim=1)


@task(lab=LAB, name="reflow_pairs", points=2, needs=("make_reflow_pairs",))
def check_reflow_pairs(ns: dict) -> str:
    """make_reflow_pairs: x0 kept, x1_hat the flow's endpoint (a rotation with a closed form), detached."""
    x0 = torch.tensor([[1.0, 0.0], [0.3, -0.8], [-1.2, 0.5]], dtype=F64)
    angle = 1.5
    c, s = math.cos(angle), math.sin(angle)
    exact = torch.stack([c * x0[:, 0] - s * x0[:, 1], s * x0[:, 0] + c * x0[:, 1]], dim=1)
    steps = 20
    euler = x0.clone()
    for k in range(steps):  # the grader's own Euler: the least accuracy accepted
        euler = euler + _rotation(euler, torch.full((3,), k / steps, dtype=F64)) / steps
    err_euler = (euler - exact).norm(dim=1).max().item()
    out = call(ns, "make_reflow_pairs", _rotation, x0.clone(), steps)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise CheckFailed("`make_reflow_pairs` should return a tuple (x0, x1_hat)")
    a, b = out
    for name, v in (("x0", a), ("x1_hat", b)):
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != (3, 2):
            raise CheckFailed(f"`make_reflow_pairs`'s {name} should be a tensor of x0's shape (3, 2)")
    if not torch.equal(a, x0):
        raise CheckFailed("`make_reflow_pairs` should return x0 unchanged as the first element of each pair")
    err = (b.to(F64) - exact).norm(dim=1).max().item()
    if not err <= 1.01 * err_euler:
        raise CheckFailed(
            f"for dx/dt = (1 + t) J x (a rotation by 1.5 rad from t = 0 to 1) with {steps} steps, x1_hat is "
            f"{err:.3g} from the exact endpoint; Euler's method is {err_euler:.3g} from it (integrate from t = 0 "
            f"to t = 1 with step 1 / steps, passing t as a tensor of shape (B,))"
        )
    net = torch.nn.Linear(2, 2)
    _, b = call(ns, "make_reflow_pairs", lambda x, t: net(x), torch.randn(5, 2), 4)
    if b.requires_grad:
        raise CheckFailed("x1_hat carries an autograd graph: integrate under torch.no_grad() (the pairs are data)")
    return f"endpoint error {err:.1e} with {steps} steps (Euler's: {err_euler:.1e})"


@task(lab=LAB, name="rectified", points=3, needs=("icfm", "rectified"))
def check_rectified(ns: dict) -> str:
    """The 2-rectified flow: few-step W2 near the floor (2 Euler steps), straighter than I-CFM."""
    test, z, floor = _eval_set()
    r_i = _measure(_model(ns, "icfm", "I-CFM"), z, test, floor, [1, 2])
    r_r = _measure(_model(ns, "rectified", "the 2-rectified flow"), z, test, floor, [1, 2])
    if r_r[2] > MAX_W2_TWO_STEPS:
        raise CheckFailed(
            f"the 2-rectified flow after 2 Euler steps: W2 = {r_r[2]:.2f} x the finite-sample floor; expected below "
            f"{MAX_W2_TWO_STEPS} (I-CFM's: {r_i[2]:.2f}). Train it on your pairs (x0, x1_hat) with source=x0"
        )
    if not r_r["S"] < r_i["S"] / STRAIGHTER_BY:
        raise CheckFailed(
            f"straightness: I-CFM {r_i['S']:.4f}, 2-rectified {r_r['S']:.4f}; reflow should straighten the flow "
            f"at least {STRAIGHTER_BY:g}x"
        )
    return (
        f"W2 / floor after 1 and 2 Euler steps: I-CFM {r_i[1]:.2f}, {r_i[2]:.2f}; 2-rectified {r_r[1]:.2f}, "
        f"{r_r[2]:.2f}; S {r_i['S']:.4f} -> {r_r['S']:.4f}"
    )
