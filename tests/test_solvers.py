"""Fixed-step integrators: closed-form flows, Taylor expansions, convergence orders."""

import math
import subprocess
import sys
import textwrap

import pytest
import torch

import fmlib.solvers
from fmlib import (
    SOLVERS,
    FixedStepMethod,
    NFECounter,
    euler_step,
    heun_step,
    integrate,
    integrate_adaptive,
    midpoint_step,
    register_solver,
    rk4_step,
    time_grid,
)

# Global orders from Hairer, Norsett & Wanner, Section II.1 (not read from the registry).
ORDERS = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


def ralston_step(v, x, t, dt):
    """Ralston's second-order method (c2 = 2/3, weights 1/4, 3/4): a step function written by a user."""
    b = x.shape[0]
    k1 = v(x, torch.full((b,), t, dtype=x.dtype))
    k2 = v(x + 2 / 3 * dt * k1, torch.full((b,), t + 2 / 3 * dt, dtype=x.dtype))
    return x + dt * (0.25 * k1 + 0.75 * k2)


@pytest.fixture
def registry():
    """Restore the registry after a test that registers methods."""
    saved = dict(fmlib.solvers._REGISTRY)
    yield
    fmlib.solvers._REGISTRY.clear()
    fmlib.solvers._REGISTRY.update(saved)


def field(x, t):
    """dx/dt = cos(t) x, whose flow is x(t) = x(0) exp(sin t - sin t0)."""
    return torch.cos(t)[:, None] * x


def exact(x0, t0, t1):
    return x0 * math.exp(math.sin(t1) - math.sin(t0))


def measured_order(method):
    """log2 of the error ratio when the step halves (16 -> 32 steps), on dx/dt = cos(t) x over [0, 1]."""
    x0 = torch.tensor([[1.0], [-0.5]], dtype=torch.float64)
    errors = [
        float((integrate(field, x0, 0.0, 1.0, steps=n, method=method) - exact(x0, 0.0, 1.0)).abs().max())
        for n in (4, 8, 16, 32)
    ]
    return [math.log2(a / b) for a, b in zip(errors, errors[1:])]


@pytest.mark.parametrize("method", ORDERS)
def test_convergence_order(method):
    observed = measured_order(method)
    assert abs(observed[-1] - ORDERS[method]) < 0.15, (method, observed)


@pytest.mark.parametrize("method", ORDERS)
def test_registry_entries_declare_their_measured_order_and_nfe(method):
    entry = SOLVERS[method]
    assert isinstance(entry, FixedStepMethod)
    assert entry.order == ORDERS[method]
    assert abs(measured_order(method)[-1] - entry.order) < 0.15
    counter = NFECounter(field)
    integrate(counter, torch.ones(2, 1, dtype=torch.float64), steps=6, method=method)
    assert counter.nfe == 6 * entry.nfe_per_step


def test_the_orders_cover_every_built_in_solver():
    # every method fmlib ships has its order from the literature above, measured by the tests that use ORDERS
    assert set(fmlib.solvers._BUILT_IN) == set(ORDERS)


def test_user_step_function_reaches_order_two():
    observed = measured_order(ralston_step)
    assert abs(observed[-1] - 2) < 0.15, observed
    counter = NFECounter(field)
    integrate(counter, torch.ones(2, 1, dtype=torch.float64), steps=5, method=ralston_step)
    assert counter.nfe == 10


def test_registered_user_method_is_used_by_name(registry):
    register_solver("ralston", ralston_step, order=2, nfe_per_step=2)
    assert SOLVERS["ralston"] == FixedStepMethod(ralston_step, 2, 2)
    assert SOLVERS["ralston"].step is ralston_step and SOLVERS["ralston"].nfe_per_step == 2
    assert abs(measured_order("ralston")[-1] - SOLVERS["ralston"].order) < 0.15
    counter = NFECounter(field)
    integrate(counter, torch.ones(2, 1, dtype=torch.float64), steps=4, method="ralston")
    assert counter.nfe == 4 * SOLVERS["ralston"].nfe_per_step
    # One Ralston step on dx/dt = x is the degree-2 Taylor polynomial: 1 + h + h^2 / 2.
    one = integrate(lambda x, t: x, torch.ones(1, 1, dtype=torch.float64), steps=1, method="ralston")
    assert float(one) == 2.5
    # A FixedStepMethod is accepted as it is.
    torch.testing.assert_close(
        integrate(field, torch.ones(1, 1), steps=3, method=SOLVERS["ralston"]),
        integrate(field, torch.ones(1, 1), steps=3, method=ralston_step),
    )


def test_register_solver_refuses_to_overwrite(registry):
    register_solver("ralston", ralston_step, 2, 2)
    with pytest.raises(ValueError, match="'ralston' is already registered"):
        register_solver("ralston", euler_step, 1, 1)
    register_solver("ralston", euler_step, 1, 1, overwrite=True)
    assert SOLVERS["ralston"].order == 1
    for name in ORDERS:
        with pytest.raises(ValueError, match=f"{name!r} is a built-in method"):
            register_solver(name, ralston_step, 2, 2, overwrite=True)
    assert SOLVERS["euler"].step is euler_step


@pytest.mark.parametrize(
    "args, error, match",
    [
        (("r", ralston_step, 2.0, 2), TypeError, "order must be an int"),
        (("r", ralston_step, 0, 2), ValueError, "order must be an int >= 1; got 0"),
        (("r", ralston_step, 2, True), TypeError, "nfe_per_step must be an int"),
        (("r", "ralston", 2, 2), TypeError, "step must be a callable"),
        ((3, ralston_step, 2, 2), TypeError, "name must be a str"),
        (("", ralston_step, 2, 2), ValueError, "name must be a non-empty"),
    ],
)
def test_register_solver_validates(registry, args, error, match):
    before = dict(SOLVERS)
    with pytest.raises(error, match=match):
        register_solver(*args)
    assert dict(SOLVERS) == before


def test_solvers_is_read_only_and_methods_frozen():
    with pytest.raises(TypeError):
        SOLVERS["x"] = SOLVERS["euler"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        SOLVERS["euler"].order = 3  # type: ignore[misc]


def test_method_of_the_wrong_kind_raises():
    with pytest.raises(TypeError, match="method must be a registered name, a FixedStepMethod or a step function"):
        integrate(field, torch.ones(1, 1), method=4)
    with pytest.raises(ValueError, match="method's step must return a tensor of x's shape"):
        integrate(field, torch.ones(1, 1), method=lambda v, x, t, dt: x.sum())


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
    assert len(calls) == 5 * SOLVERS[method].nfe_per_step
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
    with pytest.raises(ValueError, match=f"steps must be an int >= 1; got {steps}"):
        integrate(lambda x, t: x, torch.ones(1, 1), steps=steps)


@pytest.mark.parametrize("steps", [10.0, "10", None, True])
def test_non_integer_steps_raise(steps):
    with pytest.raises(TypeError, match="steps must be an int"):
        integrate(lambda x, t: x, torch.ones(1, 1), steps=steps)


def test_unknown_method_raises():
    with pytest.raises(ValueError, match="method must be one of .*or a step function; got 'rk45'"):
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


# --- low precision ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_small_steps_are_not_rounded_away_in_low_precision(dtype):
    # dx/dt = 1 from x = 1 over [0, 1]: exactly 2. In bfloat16 1 + 0.001 rounds back to 1 (ulp 2^-7),
    # so the steps must be accumulated in float32 and only the result rounded.
    seen = []

    def ones(x, t):
        seen.append((x.dtype, t.dtype, float(t[0])))
        return torch.ones_like(x)

    x1 = integrate(ones, torch.ones(3, 2, dtype=dtype), steps=1000, method="euler")
    assert x1.dtype == dtype
    assert torch.equal(x1, torch.full((3, 2), 2.0, dtype=dtype))  # 2 is exact in both formats
    assert len({t for _, _, t in seen}) == 1000  # k / 1000 for k = 0..999, all distinct
    assert {(a, b) for a, b, _ in seen} == {(dtype, torch.float32)}
    traj = integrate(ones, torch.ones(3, 2, dtype=dtype), steps=1000, trajectory=True)
    assert traj.dtype == dtype and float(traj[500, 0, 0]) == 1.5


@pytest.mark.parametrize("step", [euler_step, midpoint_step, heun_step, rk4_step])
def test_single_steps_compute_in_float32_for_low_precision(step):
    seen = set()

    def v(x, t):
        seen.add((x.dtype, t.dtype))
        return torch.sin(3 * x) + t[:, None]

    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    out = step(v, x, 0.3, 0.01)
    # the same step with the state in float32 and the field's output rounded as the field's own dtype
    # would round it, then the result rounded once
    reference = step(lambda y, t: v(y.to(torch.bfloat16), t).float(), x.float(), 0.3, 0.01).to(torch.bfloat16)
    assert out.dtype == torch.bfloat16 and torch.equal(out, reference)
    assert not torch.equal(out, x)  # the step of 0.01 is not rounded away
    assert seen == {(torch.bfloat16, torch.float32)}


def test_times_near_one_are_not_rounded_for_low_precision_states():
    seen = []
    x = torch.ones(1, 1, dtype=torch.bfloat16)
    integrate(lambda x, t: seen.append(t) or torch.zeros_like(x), x, t0=0.99, t1=0.999, steps=9)
    assert all(t.dtype == torch.float32 for t in seen)
    assert abs(float(seen[-1]) - 0.998) < 1e-6  # bfloat16 would give 1.0


def test_adaptive_in_low_precision():
    seen = set()

    def v(x, t):
        seen.add((x.dtype, t.dtype))
        return x

    x1, _ = integrate_adaptive(v, torch.ones(2, 1, dtype=torch.bfloat16), rtol=1e-6, atol=1e-6)
    assert x1.dtype == torch.bfloat16 and float(x1[0]) == float(torch.tensor(math.e, dtype=torch.bfloat16))
    assert seen == {(torch.bfloat16, torch.float32)}


# --- adaptive integration at its limits -----------------------------------------------------------


def test_adaptive_blow_up_names_the_time():
    # dx/dt = x^2, x(0) = 2: x(t) = 2 / (1 - 2 t), which blows up at t = 1/2.
    with pytest.raises(ValueError, match=r"blows up near t = 0\.500"):
        integrate_adaptive(lambda x, t: x**2, torch.full((1, 1), 2.0, dtype=torch.float64))


def test_adaptive_max_steps_bounds_the_steps():
    v = NFECounter(lambda x, t: torch.cos(20 * t)[:, None] * x)
    with pytest.raises(RuntimeError, match=r"more than max_steps = 5 steps and stopped at t = 0\.\d+"):
        integrate_adaptive(v, torch.ones(1, 1, dtype=torch.float64), rtol=1e-10, atol=1e-10, max_steps=5)
    # dopri5: 6 evaluations per step (first-same-as-last) plus 2 to choose the first step
    assert v.nfe <= 2 + 6 * 5
    _, nfe = integrate_adaptive(v, torch.ones(1, 1, dtype=torch.float64), rtol=1e-10, atol=1e-10)
    assert nfe > 2 + 6 * 5  # the same problem needs more than 5 steps


def test_adaptive_limits_hold_under_python_optimize():
    # python -O strips torchdiffeq's assert-based guards; the bound and the blow-up error must not depend on them.
    script = textwrap.dedent(
        """
        import sys
        import torch
        from fmlib import integrate_adaptive
        print("optimize:", sys.flags.optimize)
        x = torch.full((1, 1), 2.0, dtype=torch.float64)
        try:
            integrate_adaptive(lambda x, t: x**2, x)
        except ValueError as err:
            print("blow-up:", err)
        try:
            integrate_adaptive(lambda x, t: torch.cos(20 * t)[:, None] * x, x, rtol=1e-10, atol=1e-10, max_steps=5)
        except RuntimeError as err:
            print("bound:", err)
        """
    )
    out = subprocess.run([sys.executable, "-O", "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "optimize: 1" in out.stdout
    assert "blow-up: the solution blows up near t = 0.500" in out.stdout
    assert "bound: integrate_adaptive took more than max_steps = 5 steps" in out.stdout


def inplace_euler_step(v, x, t, dt):
    """Euler written in place, as a user might: x += dt v(x, t), returning x itself."""
    return x.add_(dt * v(x, torch.full((x.shape[0],), t, dtype=x.dtype)))


@pytest.mark.parametrize("half", [False, True], ids=["float64", "bfloat16"])
def test_an_in_place_step_leaves_the_caller_and_the_trajectory_intact(registry, half):
    register_solver("inplace_euler", inplace_euler_step, order=1, nfe_per_step=1)
    dtype = torch.bfloat16 if half else torch.float64
    x0 = torch.tensor([[1.0], [-2.0]], dtype=dtype)
    kept = x0.clone()
    # dx/dt = x with Euler, h = 1/4: x_k = x0 (1 + 1/4)^k, written out by hand
    want = torch.stack([x0.double() * 1.25**k for k in range(5)]).to(dtype)
    for method in ("inplace_euler", inplace_euler_step):
        traj = integrate(lambda x, t: x, x0, steps=4, method=method, trajectory=True)
        assert torch.equal(x0, kept)  # the caller's x0 is untouched
        torch.testing.assert_close(traj, want)  # every stored state is its own
        end = integrate(lambda x, t: x, x0, steps=4, method=method)
        assert torch.equal(x0, kept)
        torch.testing.assert_close(end, want[-1])
