"""Checks of lab 2, flow matching from scratch in 2D (``labs/lab02_flow_matching_2d.ipynb``).

The student writes the linear path, the CFM loss, a training loop over a ``DataLoader`` and an Euler
sampler in plain PyTorch. The checks compare the path with its closed form at given points, the loss
with fmlib's independent :func:`fmlib.cfm_loss` and closed forms on fixed fields, the training loop by
what it achieves on a small problem whose answer is known (data concentrated at one point), the
sampler with Euler's exact discrete solution on fields with a closed form, and the trained model's
samples on the moons by W2 against the finite-sample floor, as chapter 0 measures it (Lipman et al.
2023, eqs. 20-23; the book's chapter 0).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data import sample_data, seeded_generator
from ..losses import cfm_loss as _fmlib_cfm_loss
from ..metrics import wasserstein2
from ..paths import LinearPath
from ._grader import CheckFailed, call, task

LAB = "lab02_flow_matching_2d"
F64 = torch.float64


def _fmt(x: torch.Tensor) -> str:
    return np.array2string(x.detach().cpu().numpy(), precision=4, separator=", ").replace("\n", "")


def _tensor(what: str, out: object, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise CheckFailed(f"{what} should be a torch.Tensor; got a {type(out).__name__}")
    if tuple(out.shape) != shape:
        raise CheckFailed(f"{what} should have shape {shape}; got {tuple(out.shape)}")
    if not torch.isfinite(out).all():
        raise CheckFailed(f"{what} holds NaN or inf")
    return out


@task(lab=LAB, name="linear_path", points=2, needs=("linear_path",))
def check_linear_path(ns: dict) -> None:
    """x_t = (1 - t) x0 + t x1 and u_t = x1 - x0 at given points, batch first, t of shape (B,)."""
    x0 = torch.tensor([[1.0, 0.0], [-2.0, 1.0], [0.5, 0.5], [3.0, -1.0]], dtype=F64)
    x1 = torch.tensor([[0.0, 2.0], [2.0, 2.0], [0.5, -0.5], [1.0, 1.0]], dtype=F64)
    t = torch.tensor([0.25, 0.0, 1.0, 0.5], dtype=F64)
    out = call(ns, "linear_path", x0.clone(), x1.clone(), t.clone())
    if not isinstance(out, tuple) or len(out) != 2:
        raise CheckFailed(f"`linear_path` should return a pair (x_t, u_t); got {type(out).__name__}")
    x_t = _tensor("x_t", out[0], (4, 2))
    u_t = _tensor("u_t", out[1], (4, 2))
    want_x = torch.tensor([[0.75, 0.5], [-2.0, 1.0], [0.5, -0.5], [2.0, 0.0]], dtype=F64)
    want_u = x1 - x0
    if not torch.allclose(x_t.to(F64), want_x, atol=1e-9):
        raise CheckFailed(
            f"x0 = {_fmt(x0)}, x1 = {_fmt(x1)}, t = {_fmt(t)}: x_t = (1 - t) x0 + t x1 = {_fmt(want_x)} "
            f"(x0 at t = 0, x1 at t = 1); got {_fmt(x_t)}"
        )
    if not torch.allclose(u_t.to(F64), want_u, atol=1e-9):
        raise CheckFailed(f"u_t = d x_t / dt = x1 - x0 = {_fmt(want_u)} for these points; got {_fmt(u_t)}")


class _Affine(nn.Module):
    """A fixed field v(x, t) = A x + b t + c, for the loss check."""

    def __init__(self) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=F64))
        self.b = nn.Parameter(torch.tensor([1.0, -0.5], dtype=F64))
        self.c = nn.Parameter(torch.tensor([0.1, 0.2], dtype=F64))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x @ self.A.T + t[:, None] * self.b + self.c


@task(lab=LAB, name="cfm_loss", points=2, needs=("cfm_loss",))
def check_cfm_loss(ns: dict) -> None:
    """The CFM loss: closed forms on v = 0 and on v = x1 - x0, fmlib.cfm_loss on a fixed field, a gradient."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 2, generator=g, dtype=F64)
    x1 = torch.randn(64, 2, generator=g, dtype=F64) + 2
    t = torch.rand(64, generator=g, dtype=F64)

    def zero(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    out = call(ns, "cfm_loss", zero, x0, x1, t)
    loss = _tensor("the loss", out, ())
    want = (x1 - x0).pow(2).sum(dim=1).mean()
    if not torch.allclose(loss.to(F64), want, rtol=1e-9):
        raise CheckFailed(
            f"with v = 0 the loss is the mean over the batch of |x1 - x0|^2 (summed over the 2 coordinates) "
            f"= {want.item():.4f}; got {loss.item():.4f}"
        )
    model = _Affine()
    loss = _tensor("the loss", call(ns, "cfm_loss", model, x0, x1, t), ())
    want = _fmlib_cfm_loss(model, LinearPath(), x1, x0=x0, t=t)
    if not torch.allclose(loss.to(F64), want, rtol=1e-9):
        raise CheckFailed(
            f"on the field v(x, t) = A x + b t + c, fmlib.cfm_loss gives {want.item():.6f}; got {loss.item():.6f}"
            " (call the model as model(x_t, t), t of shape (B,))"
        )
    if not loss.requires_grad:
        raise CheckFailed("the loss carries no gradient to the model's parameters: do not detach it or use .item()")
    (grad,) = torch.autograd.grad(loss, model.A)
    (want_grad,) = torch.autograd.grad(want, model.A)
    if not torch.allclose(grad, want_grad, rtol=1e-7):
        raise CheckFailed("the loss's gradient with respect to the model's parameters differs from fmlib.cfm_loss's")


class _SmallMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t[:, None]], dim=1))


def _euler(v: nn.Module, x: torch.Tensor, steps: int) -> torch.Tensor:
    for k in range(steps):
        x = x + v(x, torch.full((len(x),), k / steps)) / steps
    return x


TRAIN_STEPS = 300


@task(lab=LAB, name="train", points=2, needs=("train",))
def check_train(ns: dict) -> str:
    """The loop over a DataLoader: `steps` losses, a lower held-out CFM loss, samples at the data's point."""
    from torch.utils.data import DataLoader

    center = torch.tensor([2.0, -1.0])
    data = center + 0.05 * torch.randn(1024, 2, generator=torch.Generator().manual_seed(1))
    loader: DataLoader = DataLoader(data, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(2))  # type: ignore[arg-type]
    torch.manual_seed(0)
    model = _SmallMLP()
    g = torch.Generator().manual_seed(3)
    x0h, th = torch.randn(4096, 2, generator=g), torch.rand(4096, generator=g)
    x1h = center + 0.05 * torch.randn(4096, 2, generator=g)
    with torch.no_grad():
        before = _fmlib_cfm_loss(model, LinearPath(), x1h, x0=x0h, t=th).item()
    losses = call(ns, "train", model, loader, TRAIN_STEPS, 1e-2, torch.Generator().manual_seed(4))
    try:
        losses = [float(x) for x in losses]
    except Exception:
        raise CheckFailed(
            f"`train` should return the list of the {TRAIN_STEPS} losses (floats); got {type(losses).__name__}"
        ) from None
    if len(losses) != TRAIN_STEPS:
        raise CheckFailed(
            f"`train(model, loader, steps={TRAIN_STEPS}, ...)` should take {TRAIN_STEPS} optimizer steps and "
            f"return one loss per step (cycling over the loader's 8 minibatches as often as needed); got "
            f"{len(losses)} losses"
        )
    with torch.no_grad():
        after = _fmlib_cfm_loss(model, LinearPath(), x1h, x0=x0h, t=th).item()
        mean = _euler(model, torch.randn(2000, 2, generator=g), 50).mean(0)
    if not after < 0.5 * before:
        raise CheckFailed(
            f"on data at (2, -1) (1024 points, sd 0.05), {TRAIN_STEPS} steps at lr 1e-2 should at least halve "
            f"the held-out CFM loss of a small MLP; it went from {before:.3f} to {after:.3f}"
        )
    if (mean - center).norm() > 0.3:
        raise CheckFailed(
            f"after training on data at (2, -1), samples of the model should land near (2, -1); their mean is "
            f"{_fmt(mean)}: are x0 (noise) and x1 (data) the right way round?"
        )
    return f"held-out loss {before:.2f} -> {after:.2f}"


@task(lab=LAB, name="sample", points=2, needs=("sample",))
def check_sample(ns: dict) -> None:
    """Euler from t = 0 to 1: exact results on a constant field, a field linear in t, and v = a x."""
    x0 = torch.tensor([[1.0, -2.0], [0.5, 0.25], [0.0, 3.0]], dtype=F64)
    c = torch.tensor([2.0, -1.0], dtype=F64)
    calls = []

    def constant(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t)
        if t.shape != (len(x),):
            raise CheckFailed(f"`sample` should call v(x, t) with t of shape (B,) = ({len(x)},); got {tuple(t.shape)}")
        calls.append(t.detach().clone())
        return c.expand_as(x)

    out = _tensor("`sample`'s result", call(ns, "sample", constant, x0.clone(), 7), (3, 2))
    if len(calls) != 7:
        raise CheckFailed(f"`sample(v, x0, 7)` should evaluate v 7 times (once per Euler step); it did {len(calls)}")
    if not torch.allclose(out.to(F64), x0 + c, atol=1e-9):
        raise CheckFailed(f"on the constant field v = (2, -1), x(1) = x0 + (2, -1) = {_fmt(x0 + c)}; got {_fmt(out)}")

    def ramp(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(t, dtype=x.dtype)[:, None] * c

    n = 8
    want = x0 + c * (n - 1) / (2 * n)  # h * sum_k (k h) c, k = 0 .. n-1
    out = _tensor("`sample`'s result", call(ns, "sample", ramp, x0.clone(), n), (3, 2))
    if not torch.allclose(out.to(F64), want, atol=1e-9):
        raise CheckFailed(
            f"on v(x, t) = t (2, -1) with 8 steps, Euler evaluates v at t_k = k / 8, k = 0..7, and gives "
            f"x0 + (7/16) (2, -1) = {_fmt(want)}; got {_fmt(out)}"
        )

    def linear(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * x

    n = 10
    want = (1 - 0.5 / n) ** n * x0
    out = _tensor("`sample`'s result", call(ns, "sample", linear, x0.clone(), n), (3, 2))
    if not torch.allclose(out.to(F64), want, atol=1e-9):
        raise CheckFailed(
            f"on v(x, t) = -x / 2 with 10 steps, Euler multiplies x by (1 - 0.05) each step: x(1) = "
            f"0.95^10 x0 = {_fmt(want)}; got {_fmt(out)}"
        )


@task(lab=LAB, name="moons_quality", points=2, needs=("sample", "v"))
def check_moons_quality(ns: dict) -> str:
    """The trained `v` sampled by `sample` (100 steps): W2 to held-out moons under 2x the finite-sample floor."""
    device = ns.get("device")
    device = device if isinstance(device, torch.device) else torch.device("cpu")
    held_out = sample_data("moons", 1000, generator=seeded_generator(10))
    draws = 4
    fresh = [sample_data("moons", 1000, generator=seeded_generator(20 + k)) for k in range(draws)]
    floor = float(np.mean([wasserstein2(x, held_out) for x in fresh]))
    dists = []
    with torch.no_grad():
        for k in range(draws):
            x0 = torch.randn(1000, 2, generator=seeded_generator(30 + k)).to(device)
            x = _tensor("`sample(v, x0, 100)`", call(ns, "sample", ns["v"], x0, 100), (1000, 2))
            dists.append(wasserstein2(x.detach().float().cpu(), held_out))
    ratio = float(np.mean(dists)) / floor
    if not ratio < 2:
        raise CheckFailed(
            f"W2 between 1000 samples (100 Euler steps) and 1000 held-out moons, mean of {draws} draws, is "
            f"{ratio:.2f} times the finite-sample floor {floor:.3f} (W2 between two draws of the data); "
            f"it should be below 2"
        )
    return f"W2 / floor = {ratio:.2f}"
