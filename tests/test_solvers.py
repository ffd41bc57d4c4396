"""Fixed-step integrators: closed-form flows, Taylor expansions, convergence orders."""

import math

import pytest
import torch

from fmlib import NFE_PER_STEP, euler_step, heun_step, integrate, midpoint_step, rk4_step, time_grid

ORDERS = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


def field(x, t):
    """dx/dt = cos(t) x, whose flow is x(t) = x(0) exp(sin t - sin t0)."""
    return torch.cos(t)[:, None] * x


def exact(x0, t0, t1):
    return x0 * math.exp(math.sin(t1) - math.sin(t0))


@pytest.mark.parametrize("method", ORDERS)
def test_convergence_order(method):
    x0 = torch.tensor([[1.0], [-0.5]], dtype=torch.float64)
    steps = [4, 8, 16, 32]
    errors = [
        float((integrate(field, x0, 0.0, 1.0, steps=n, method=method) - exact(x0, 0.0, 1.0)).abs().max()) for n in steps
    ]
    observed = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert abs(observed[-1] - ORDERS[method]) < 0.15, (method, observed)


@pytest.mark.parametrize(
    "step, poly",
    [
        (euler_step, lambda h: 1 + h),
        (midpoint_step, lambda h: 1 + h + h**2 / 2),
        (heun_step, lambda h: 1 + h + h**2 / 2),
        (rk4_step, lambda h: 1 + h + h**2 / 2 + h**3 / 6 + h**4 / 24),
    ],
)
def test_one_step_on_linear_field_is_taylor_polynomial(step, poly):
    # For dx/dt = x, an order-p Runge-Kutta step multiplies by the Taylor polynomial of exp of degree p.
    x = torch.tensor([[1.0]], dtype=torch.float64)
    for h in (0.1, -0.3):
        torch.testing.assert_close(step(lambda x, t: x, x, 0.0, h), x * poly(h), rtol=1e-14, atol=0)


def test_euler_50_steps_on_exponential():
    x = integrate(lambda x, t: x, torch.ones(1, 1, dtype=torch.float64), 0.0, 1.0, steps=50)
    assert abs(float(x) - 1.02**50) < 1e-12
    assert abs(float(x) - 2.691588) < 1e-6


def test_one_euler_step_on_constant_field_is_exact():
    c = torch.tensor([[0.3, -2.0]])
    x0 = torch.tensor([[1.0, 1.0]])
    torch.testing.assert_close(integrate(lambda x, t: c.expand_as(x), x0, steps=1), x0 + c, rtol=0, atol=0)


@pytest.mark.parametrize("method", ORDERS)
def test_forward_then_backward_returns_start(method):
    x0 = torch.randn(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x1 = integrate(field, x0, 0.0, 1.0, steps=200, method=method)
    back = integrate(field, x1, 1.0, 0.0, steps=200, method=method)
    # global error O(h^p) each way, h = 1/200
    tol = 10 * (1 / 200) ** ORDERS[method]
    torch.testing.assert_close(back, x0, rtol=0, atol=tol)


def test_backward_integration_matches_exact_flow():
    x1 = torch.tensor([[2.0]], dtype=torch.float64)
    torch.testing.assert_close(
        integrate(field, x1, 1.0, 0.0, steps=64, method="rk4"), exact(x1, 1.0, 0.0), rtol=1e-8, atol=0
    )


def test_trajectory_shape_and_ends():
    x0 = torch.randn(5, 3, 2)
    traj = integrate(lambda x, t: -x, x0, steps=7, method="heun", trajectory=True)
    assert traj.shape == (8, 5, 3, 2)
    torch.testing.assert_close(traj[0], x0)
    torch.testing.assert_close(traj[-1], integrate(lambda x, t: -x, x0, steps=7, method="heun"))


@pytest.mark.parametrize("method", ORDERS)
def test_nfe_per_step_and_time_argument(method):
    calls = []

    def v(x, t):
        calls.append((t.shape, t.dtype))
        return torch.zeros_like(x)

    integrate(v, torch.zeros(3, 2, dtype=torch.float64), steps=5, method=method)
    assert len(calls) == 5 * NFE_PER_STEP[method]
    assert all(c == ((3,), torch.float64) for c in calls)


def test_dtype_is_kept():
    assert integrate(lambda x, t: x, torch.ones(2, 1, dtype=torch.float64), steps=3).dtype == torch.float64
    assert integrate(lambda x, t: x, torch.ones(2, 1), steps=3).dtype == torch.float32


def test_time_grid_from_step_size_ends_at_t1():
    torch.testing.assert_close(
        time_grid(0.0, 1.0, step_size=0.3), torch.tensor([0.0, 0.3, 0.6, 0.9, 1.0], dtype=torch.float64)
    )
    g = time_grid(0.0, 5.9, step_size=1e-4)
    assert g.shape == (59001,) and g[-1].item() == 5.9 and g[0].item() == 0.0
    assert torch.all(g[1:] > g[:-1])
    back = time_grid(1.0, 0.0, step_size=0.3)
    torch.testing.assert_close(back, torch.tensor([1.0, 0.7, 0.4, 0.1, 0.0], dtype=torch.float64))


def test_time_grid_from_steps():
    torch.testing.assert_close(time_grid(0.0, 1.0, steps=4), torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=torch.float64))


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [0, -3])
def test_steps_below_one_raise(steps):
    with pytest.raises(ValueError, match=f"steps must be >= 1; got {steps}"):
        integrate(lambda x, t: x, torch.ones(1, 1), steps=steps)


def test_non_integer_steps_raise():
    with pytest.raises(TypeError, match="steps must be an int"):
        integrate(lambda x, t: x, torch.ones(1, 1), steps=10.0)


def test_unknown_method_raises():
    with pytest.raises(ValueError, match="method must be one of .*got 'rk45'"):
        integrate(lambda x, t: x, torch.ones(1, 1), method="rk45")


def test_blow_up_raises_instead_of_returning_inf():
    with pytest.raises(ValueError, match="NaN or inf at step"):
        integrate(lambda x, t: x**2, torch.full((1, 1), 1e10), steps=5)


def test_field_with_wrong_output_shape_raises():
    with pytest.raises(ValueError, match=r"must return a tensor of x's shape \(2, 2\)"):
        integrate(lambda x, t: x.sum(1), torch.ones(2, 2), steps=2)


def test_x_without_batch_dimension_raises():
    with pytest.raises(ValueError, match="batch dimension"):
        integrate(lambda x, t: x, torch.tensor(1.0), steps=2)


def test_time_grid_arguments():
    with pytest.raises(ValueError, match="exactly one of steps or step_size"):
        time_grid(0.0, 1.0)
    with pytest.raises(ValueError, match="step_size must be > 0"):
        time_grid(0.0, 1.0, step_size=-0.1)


def test_non_callable_field_raises():
    with pytest.raises(TypeError, match="v must be a callable velocity field"):
        integrate(3, torch.ones(1, 1), steps=2)
