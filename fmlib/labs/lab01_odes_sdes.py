"""Checks of lab 1, ODEs and SDEs (``labs/lab01_odes_sdes.ipynb``): Euler, Heun, orders, Euler-Maruyama, OU.

Each check measures the student's function against values found independently of it: a step's value
at a point from its definition, the convergence order of the student's step measured on an ODE with a
closed-form flow (a rotation at the time-dependent rate 1 + t), the weak order of Euler-Maruyama on an
Ornstein-Uhlenbeck SDE with known mean and variance, and the OU process's moments against the closed
form (Hairer, Norsett & Wanner, Section II.1; Kloeden & Platen, Section 14.1; chapters 5 and
``sde_primer`` of the book).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._grader import CheckFailed, call, task

LAB = "lab01_odes_sdes"
F64 = torch.float64


def _fmt(x: torch.Tensor | float) -> str:
    if isinstance(x, torch.Tensor):
        return np.array2string(x.detach().cpu().numpy(), precision=4, separator=", ").replace("\n", "")
    return f"{x:.4g}"


def _tensor(name: str, out: object, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise CheckFailed(f"`{name}` should return a torch.Tensor; it returned a {type(out).__name__}")
    if tuple(out.shape) != shape:
        raise CheckFailed(f"`{name}` should return a tensor of shape {shape} (x's shape); got {tuple(out.shape)}")
    if not torch.isfinite(out).all():
        raise CheckFailed(f"`{name}` returned NaN or inf")
    return out


def _times(t: object, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=x.dtype)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


def _rotation(x: torch.Tensor, t: object) -> torch.Tensor:
    """v(x, t) = (1 + t) J x, J the rotation by +90 degrees: the flow rotates x by t + t^2 / 2."""
    rate = 1 + _times(t, x)[:, None]
    return rate * torch.stack([-x[:, 1], x[:, 0]], dim=1)


def _rotated(x0: torch.Tensor, angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.stack([c * x0[:, 0] - s * x0[:, 1], s * x0[:, 0] + c * x0[:, 1]], dim=1)


ORDER_STEPS = [16, 32, 64, 128, 256]


def _measured_order(ns: dict, name: str) -> tuple[float, list[float]]:
    """The order of the student's step on dx/dt = (1 + t) J x over [0, 1], fitted by least squares."""
    x0 = torch.tensor([[1.0, 0.0], [0.3, -0.8], [-1.2, 0.5]], dtype=F64)
    exact = _rotated(x0, 1.5)
    errors = []
    with torch.no_grad():
        for n in ORDER_STEPS:
            x, h = x0.clone(), 1.0 / n
            for k in range(n):
                x = _tensor(name, call(ns, name, _rotation, x, torch.full((3,), k * h, dtype=F64), h), (3, 2))
            errors.append((x - exact).norm(dim=1).max().item())
    if min(errors) <= 0:
        raise CheckFailed(f"`{name}` gave the exact flow of a rotation: it is not a one-step method of x and v")
    slope = np.polyfit(np.log(ORDER_STEPS), np.log(errors), 1)[0]
    return float(-slope), errors


def _step_at_a_point(ns: dict, name: str, expected_of: str) -> None:
    x = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=F64)
    t = torch.tensor([0.0, 0.5], dtype=F64)
    dt = 0.1

    def v(y: torch.Tensor, s: object) -> torch.Tensor:  # v(x, t) = t - x
        return _times(s, y)[:, None] - y

    if name == "euler_step":
        expected = x + dt * v(x, t)
    else:  # Heun: the trapezoid of the slopes at both ends of the Euler step
        k1 = v(x, t)
        expected = x + dt / 2 * (k1 + v(x + dt * k1, t + dt))
    out = _tensor(name, call(ns, name, v, x.clone(), t.clone(), dt), (2, 2))
    if not torch.allclose(out.to(F64), expected, atol=1e-9):
        raise CheckFailed(
            f"for v(x, t) = t - x, x = {_fmt(x)}, t = {_fmt(t)}, dt = {dt}: expected {expected_of} = "
            f"{_fmt(expected)}; got {_fmt(out)}"
        )


@task(lab=LAB, name="euler_step", points=2, needs=("euler_step",))
def check_euler_step(ns: dict) -> str:
    """Euler's step: its value at a point, and order 1 measured on a rotation with a closed-form flow."""
    _step_at_a_point(ns, "euler_step", "x + dt v(x, t)")
    order, errors = _measured_order(ns, "euler_step")
    if not 0.85 <= order <= 1.15:
        raise CheckFailed(
            f"measured order {order:.2f} on dx/dt = (1 + t) J x with {ORDER_STEPS} steps; Euler's is 1 "
            f"(errors {', '.join(f'{e:.1e}' for e in errors)})"
        )
    return f"order {order:.2f}"


@task(lab=LAB, name="heun_step", points=2, needs=("heun_step",))
def check_heun_step(ns: dict) -> str:
    """Heun's step: its value at a point, and order 2 measured on a rotation with a closed-form flow."""
    _step_at_a_point(ns, "heun_step", "x + dt/2 (k1 + k2), k1 = v(x, t), k2 = v(x + dt k1, t + dt)")
    order, errors = _measured_order(ns, "heun_step")
    if not 1.8 <= order <= 2.2:
        raise CheckFailed(
            f"measured order {order:.2f} on dx/dt = (1 + t) J x with {ORDER_STEPS} steps; Heun's is 2 "
            f"(errors {', '.join(f'{e:.1e}' for e in errors)}); is k2 evaluated at time t + dt?"
        )
    return f"order {order:.2f}"


@task(lab=LAB, name="fit_order", points=1, needs=("fit_order",))
def check_fit_order(ns: dict) -> None:
    """fit_order: minus the least-squares slope of log(error) against log(steps)."""
    steps = [10, 20, 40, 80, 160]
    exact = [3.0 * n**-2.5 for n in steps]
    out = call(ns, "fit_order", steps, exact)
    if not isinstance(out, (float, int)) or isinstance(out, bool):
        raise CheckFailed(f"`fit_order` should return a Python float; got {type(out).__name__}")
    if abs(out - 2.5) > 1e-6:
        raise CheckFailed(f"errors 3 n^(-2.5) for n = {steps} have order 2.5; got {out:.4g}")
    rng = np.random.default_rng(0)
    noisy = [0.5 / n * math.exp(0.2 * rng.standard_normal()) for n in steps]
    expected = -float(np.polyfit(np.log(steps), np.log(noisy), 1)[0])  # least squares, independently
    out = call(ns, "fit_order", steps, noisy)
    if abs(float(out) - expected) > 1e-6:
        raise CheckFailed(
            f"for errors that are not an exact power law, the least-squares fit of log(error) against "
            f"log(steps) gives order {expected:.4f}; got {float(out):.4f} (fit all points, not two)"
        )


@task(lab=LAB, name="euler_maruyama_step", points=2, needs=("euler_maruyama_step",))
def check_euler_maruyama_step(ns: dict) -> str:
    """Euler-Maruyama: its value at a point, and weak order 1 measured on an OU SDE with known moments."""
    theta, g = 2.0, 0.5

    def f(y: torch.Tensor, s: object) -> torch.Tensor:
        return -theta * y

    x = torch.tensor([[1.0], [2.0]], dtype=F64)
    t, dt, z = torch.zeros(2, dtype=F64), 0.01, torch.tensor([[1.0], [-1.0]], dtype=F64)
    expected = x + f(x, t) * dt + g * math.sqrt(dt) * z
    out = _tensor("euler_maruyama_step", call(ns, "euler_maruyama_step", f, g, x.clone(), t, dt, z.clone()), (2, 1))
    if not torch.allclose(out.to(F64), expected, atol=1e-9):
        raise CheckFailed(
            f"for f(x, t) = -2 x, g = 0.5, x = {_fmt(x)}, dt = 0.01, z = {_fmt(z)}: expected "
            f"x + f(x, t) dt + g sqrt(dt) z = {_fmt(expected)}; got {_fmt(out)}"
        )
    # weak order: dX = -theta X dt + dW from X_0 = 2 to t = 1 (the sde_primer chapter's experiment)
    x0, n_paths = 2.0, 400_000
    m_exact = math.exp(-theta) * x0
    v_exact = (1 - math.exp(-2 * theta)) / (2 * theta)
    counts = [4, 8, 16, 32, 64]
    err_m, err_v = [], []
    with torch.no_grad():
        for n in counts:
            gen = torch.Generator().manual_seed(100 + n)
            y, h = torch.full((n_paths, 1), x0, dtype=F64), 1.0 / n
            for k in range(n):
                zk = torch.randn(y.shape, generator=gen, dtype=F64)
                y = call(ns, "euler_maruyama_step", f, 1.0, y, torch.full((n_paths,), k * h, dtype=F64), h, zk)
            y = _tensor("euler_maruyama_step", y, (n_paths, 1))
            err_m.append(abs(y.mean().item() - m_exact))
            err_v.append(abs(y.var().item() - v_exact))
    slopes = [float(-np.polyfit(np.log(counts), np.log(e), 1)[0]) for e in (err_m, err_v)]
    if not (0.75 <= slopes[0] <= 1.25 and 0.75 <= slopes[1] <= 1.25):
        raise CheckFailed(
            f"weak order on dX = -2 X dt + dW, X_0 = 2, with {counts} steps: the errors of the mean and the "
            f"variance at t = 1 fall with orders {slopes[0]:.2f} and {slopes[1]:.2f}; Euler-Maruyama's is 1 "
            f"(variance errors {', '.join(f'{e:.1e}' for e in err_v)}): is the noise scaled by sqrt(dt)?"
        )
    return f"weak orders {slopes[0]:.2f} (mean), {slopes[1]:.2f} (variance)"


@task(lab=LAB, name="simulate_ou", points=3, needs=("simulate_ou",))
def check_simulate_ou(ns: dict) -> str:
    """The OU process: mean and variance at T = 0.5 and at T = 6 (its stationary law) against the closed form."""
    theta, g, m0, n = 1.5, 1.0, 3.0, 20_000
    notes = []
    for T, steps in ((0.5, 100), (6.0, 600)):
        x0 = torch.full((n, 1), m0, dtype=F64)
        out = call(ns, "simulate_ou", theta, g, x0.clone(), T, steps, torch.Generator().manual_seed(7))
        out = _tensor("simulate_ou", out, (n, 1)).to(F64)
        decay = math.exp(-theta * T)
        mean, var = decay * m0, g**2 / (2 * theta) * (1 - decay**2)
        got_m, got_v = out.mean().item(), out.var().item()
        tol_m = 4 * math.sqrt(var / n)
        tol_v = 6 * var * math.sqrt(2 / n) + 0.02 * var  # sampling error and Euler-Maruyama's bias at dt = 0.01
        if abs(got_m - mean) > tol_m or abs(got_v - var) > tol_v:
            raise CheckFailed(
                f"OU with theta = 1.5, g = 1, X_0 = 3, T = {T} ({steps} steps, 20000 paths): the closed form "
                f"gives mean {mean:.4f} and variance {var:.4f} (tolerances {tol_m:.3f}, {tol_v:.3f}); got mean "
                f"{got_m:.4f}, variance {got_v:.4f}"
            )
        notes.append(f"T = {T:g}: mean {got_m:.3f}, variance {got_v:.3f} (exact {mean:.3f}, {var:.3f})")
    again = call(ns, "simulate_ou", theta, g, x0.clone(), 6.0, 600, torch.Generator().manual_seed(7))
    if not torch.equal(again.to(F64), out):
        raise CheckFailed("two runs with generators seeded alike differ: draw every noise with `generator`")
    return "; ".join(notes)
