"""NFE counting, adaptive integration, divergences and log-likelihoods against analytic values."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from fmlib import (
    SOLVERS,
    EmpiricalMarginal,
    GaussianPath,
    NFECounter,
    divergence,
    integrate,
    integrate_adaptive,
    log_likelihood,
)

X = torch.tensor([[1.0, 2.0]], dtype=torch.float64)


def gaussian_log_prob(x):
    return -0.5 * x.pow(2).sum(1) - x.shape[1] / 2 * math.log(2 * math.pi)


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun", "rk4"])
def test_nfe_counter_counts_per_step_cost(method):
    v = NFECounter(lambda x, t: -x)
    integrate(v, torch.ones(4, 2), steps=7, method=method)
    assert v.nfe == 7 * SOLVERS[method].nfe_per_step
    v.reset()
    assert v.nfe == 0


def test_adaptive_dopri5_on_exponential():
    x1, nfe = integrate_adaptive(lambda x, t: x, torch.ones(3, 1, dtype=torch.float64), rtol=1e-6, atol=1e-6)
    assert torch.all((x1 - math.e).abs() < 1e-5)
    assert x1.dtype == torch.float64 and nfe > 0 and nfe % 1 == 0


def test_adaptive_nfe_grows_as_tolerance_shrinks_and_matches_counter():
    def field(x, t):
        return torch.cos(4 * t)[:, None] * x

    nfes = [integrate_adaptive(field, torch.ones(2, 1), rtol=tol, atol=tol)[1] for tol in (1e-3, 1e-6, 1e-9)]
    assert nfes[0] < nfes[1] < nfes[2]
    counted = NFECounter(field)
    _, nfe = integrate_adaptive(counted, torch.ones(2, 1), rtol=1e-6, atol=1e-6)
    assert counted.nfe == nfe


def test_adaptive_backward_and_time_shape():
    seen = set()

    def v(x, t):
        seen.add(tuple(t.shape))
        return x

    x0, _ = integrate_adaptive(v, torch.full((5, 1), math.e, dtype=torch.float64), t0=1.0, t1=0.0, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(x0, torch.ones(5, 1, dtype=torch.float64), rtol=1e-6, atol=0)
    assert seen == {(5,)}


def test_likelihood_time_dependent_linear_field():
    # v = 3 t^2 x: x_0 = x e^{-1}, int div = 2; log p_1([1, 2]) = log N(x e^{-1}) - 2 = -4.176215
    lp = log_likelihood(lambda x, t: 3 * t[:, None] ** 2 * x, X, steps=400, method="rk4")
    expected = float(gaussian_log_prob(X * math.exp(-1))) - 2.0
    assert abs(expected - (-4.176215)) < 1e-6
    assert abs(lp.item() - expected) < 1e-5
    assert lp.dtype == torch.float64 and lp.shape == (1,)


@pytest.mark.parametrize("theta, value, slope", [(0.0, -4.337877, 3.000000), (0.5, -3.757576, -0.160603)])
def test_likelihood_and_its_gradient_in_the_parameter(theta, value, slope):
    th = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    lp = log_likelihood(lambda x, t: th * x, X, steps=100, method="rk4")
    assert abs(lp.item() - value) < 1e-5
    lp.sum().backward()
    assert abs(float(th.grad) - slope) < 1e-5
    # closed form: log N(e^{-theta} x) - 2 theta, derivative 5 e^{-2 theta} - 2
    assert abs(value - (float(gaussian_log_prob(X * math.exp(-theta))) - 2 * theta)) < 1e-6
    assert abs(slope - (5 * math.exp(-2 * theta) - 2)) < 1e-6


def test_gradient_flows_to_x():
    x = X.clone().requires_grad_()
    lp = log_likelihood(lambda x, t: 0.5 * x, x, steps=50)
    (g,) = torch.autograd.grad(lp.sum(), x)
    # d/dx [log N(e^{-0.5} x)] = -e^{-1} x
    torch.testing.assert_close(g, -math.exp(-1) * X, rtol=1e-6, atol=1e-9)


def test_no_graph_under_no_grad():
    th = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        lp = log_likelihood(lambda x, t: th * x, X, steps=10)
    assert not lp.requires_grad


@pytest.mark.parametrize("probes", [1, 3, 10])
def test_hutchinson_is_exact_for_diagonal_fields(probes):
    a = torch.tensor([1.0, 4.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, generator=g, dtype=torch.float64)
    exact = log_likelihood(lambda x, t: x * a, x, steps=40, divergence="exact")
    hutch = log_likelihood(lambda x, t: x * a, x, steps=40, divergence="hutchinson", probes=probes, generator=g)
    torch.testing.assert_close(hutch, exact)


def test_hutchinson_is_unbiased_on_a_non_diagonal_field():
    a = torch.tensor([[0.3, 1.0], [-2.0, 0.1]], dtype=torch.float64)  # trace 0.4, off-diagonal probes matter
    x = torch.zeros(4000, 2, dtype=torch.float64)
    exact = log_likelihood(lambda x, t: x @ a.T, x[:1], steps=4, divergence="exact").detach()
    g = torch.Generator().manual_seed(1)
    hutch = log_likelihood(lambda x, t: x @ a.T, x, steps=4, divergence="hutchinson", probes=2, generator=g).detach()
    se = hutch.std() / math.sqrt(hutch.numel())
    assert abs(float(hutch.mean() - exact)) < 4 * float(se)
    assert float(hutch.std()) > 0  # each estimate is noisy


def test_custom_source_density():
    lp = log_likelihood(lambda x, t: torch.zeros_like(x), X, steps=2, log_p0=lambda z: -z.pow(2).sum(1))
    torch.testing.assert_close(lp, torch.tensor([-5.0], dtype=torch.float64))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "rk45"}, "method must be one of"),
        ({"divergence": "trace"}, "divergence must be 'exact' or 'hutchinson'"),
        ({"probes": 0}, "probes must be an int >= 1"),
        ({"steps": 0}, "steps must be an int >= 1"),
        ({"method": "dopri5", "rtol": 0.0}, "rtol must be > 0"),
        ({"method": "dopri5", "atol": -1.0}, "atol must be > 0"),
    ],
)
def test_likelihood_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        log_likelihood(lambda x, t: x, X, **kwargs)


def test_likelihood_needs_batch_dimension():
    with pytest.raises(ValueError, match="batch dimension"):
        log_likelihood(lambda x, t: x, torch.tensor(1.0))


@pytest.mark.parametrize(
    "kwargs, match",
    [({"method": "rk4"}, "method must be one of"), ({"rtol": 0.0}, "rtol must be"), ({"atol": -1e-3}, "atol must be")],
)
def test_adaptive_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        integrate_adaptive(lambda x, t: x, torch.ones(1, 1), **kwargs)


@pytest.mark.parametrize("t0, t1", [(0.0, 1.0), (1.0, 0.0)])
def test_adaptive_never_evaluates_outside_the_interval(t0, t1):
    seen = []

    def v(x, t):
        seen.append(float(t[0]))
        return -3 * x

    integrate_adaptive(v, torch.ones(2, 1, dtype=torch.float64), t0=t0, t1=t1, rtol=1e-6, atol=1e-6)
    assert min(seen) >= min(t0, t1) and max(seen) <= max(t0, t1), (min(seen), max(seen))


# --- divergence --------------------------------------------------------------------------------------


def test_divergence_of_a_linear_field_is_the_trace():
    a = torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    div = divergence(lambda x, t: x @ a.T, x, 0.3)
    assert div.shape == (5,) and div.dtype == torch.float64 and not div.requires_grad
    torch.testing.assert_close(div, torch.full((5,), float(torch.trace(a)), dtype=torch.float64))


def test_divergence_of_a_nonlinear_field_on_images():
    # v = sin(x) t, elementwise, on (B, 1, 2, 2): div = t sum cos(x)
    x = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.linspace(0, 1, 4, dtype=torch.float64)
    div = divergence(lambda x, t: torch.sin(x) * t[:, None, None, None], x, t)
    torch.testing.assert_close(div, t * torch.cos(x).flatten(1).sum(1))


def test_divergence_with_create_graph_is_differentiable():
    # v = theta A x: div = theta tr(A), d div / d theta = tr(A); the graph reaches x for v = x^3 (div 3 sum x^2)
    a = torch.tensor([[1.0, 2.0], [0.5, -4.0]], dtype=torch.float64)
    theta = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    div = divergence(lambda x, t: theta * x @ a.T, torch.ones(2, 2, dtype=torch.float64), 0.0, create_graph=True)
    (g,) = torch.autograd.grad(div.sum(), theta)
    assert abs(float(g) - 2 * (1.0 - 4.0)) < 1e-12
    x = torch.tensor([[1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(divergence(lambda x, t: x**3, x, 0.0, create_graph=True).sum(), x)
    torch.testing.assert_close(gx, 6 * x.detach())


def test_divergence_of_a_constant_field_is_zero():
    div = divergence(lambda x, t: torch.ones_like(x), torch.zeros(3, 2), 0.5)
    assert torch.equal(div, torch.zeros(3))


# --- likelihood off the data: a stiff case --------------------------------------------------------


def mixture_log_p1(x, centres, sigma):
    """log of (1/N) sum_i N(x; c_i, sigma^2), 1-d: the marginal p_1 of GaussianPath(sigma) on the data."""
    log_terms = -((x - np.asarray(centres)) ** 2) / (2 * sigma**2)
    return float(np.logaddexp.reduce(log_terms) - math.log(len(centres)) - 0.5 * math.log(2 * math.pi * sigma**2))


def radau_log_p1(x1, centres, sigma):
    """The augmented ODE (x_t, int div) of the exact marginal field solved backward by SciPy's stiff Radau."""
    c = np.asarray(centres)

    def rhs(t, y):
        b = 1 - (1 - sigma) * t
        g = -(y[0] - t * c) / b**2  # d/dx of the log-weights
        w = np.exp(g * (y[0] - t * c) / 2 - np.max(g * (y[0] - t * c) / 2))
        w /= w.sum()
        u = (c - (1 - sigma) * y[0]) / b
        div = -(1 - sigma) / b + np.sum(u * w * (g - np.sum(w * g)))
        return [np.sum(w * u), -div]

    sol = solve_ivp(rhs, (1.0, 0.0), [x1, 0.0], method="Radau", rtol=1e-12, atol=1e-12)
    x0, a0 = sol.y[:, -1]
    return -0.5 * x0**2 - 0.5 * math.log(2 * math.pi) - a0


def test_log_likelihood_between_narrow_modes_needs_adaptive_steps():
    # data {-1, 1}, GaussianPath(0.01): p_1 = (N(-1, 0.01^2) + N(1, 0.01^2)) / 2, and the exact marginal
    # field transports N(0, 1) onto it, so log p_1(0.5) has a closed form: -1247.0069.
    closed = mixture_log_p1(0.5, [-1.0, 1.0], 0.01)
    assert abs(closed - (-1247.0069)) < 5e-5
    assert abs(radau_log_p1(0.5, [-1.0, 1.0], 0.01) - closed) < 1e-6  # a stiff solver agrees
    field = EmpiricalMarginal(torch.tensor([[-1.0], [1.0]], dtype=torch.float64), GaussianPath(0.01)).velocity
    x = torch.tensor([[0.5]], dtype=torch.float64)
    with torch.no_grad():
        rk4 = float(log_likelihood(field, x, steps=100, method="rk4"))
        dopri5 = float(log_likelihood(field, x, method="dopri5", rtol=1e-10, atol=1e-10))
    assert abs(dopri5 - closed) < 1e-4, dopri5
    assert abs(rk4 - closed) > 100, rk4  # fixed steps far too coarse for the layer near t = 1


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_adaptive_likelihood_and_gradient_match_closed_form(method):
    # v = theta x: log p_1(x) = log N(e^{-theta} x) - 2 theta, derivative 5 e^{-2 theta} - 2 at x = [1, 2]
    th = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    lp = log_likelihood(lambda x, t: th * x, X, method=method, rtol=1e-9, atol=1e-9)
    expected = float(gaussian_log_prob(X * math.exp(-0.5))) - 1.0
    assert abs(lp.item() - expected) < 1e-6
    lp.sum().backward()
    assert abs(float(th.grad) - (5 * math.exp(-1.0) - 2)) < 1e-5


def test_likelihood_accepts_a_step_function():
    def ralston(v, x, t, dt):
        b = x.shape[0]
        k1 = v(x, torch.full((b,), t, dtype=x.dtype))
        k2 = v(x + 2 / 3 * dt * k1, torch.full((b,), t + 2 / 3 * dt, dtype=x.dtype))
        return x + dt * (0.25 * k1 + 0.75 * k2)

    lp = log_likelihood(lambda x, t: 3 * t[:, None] ** 2 * x, X, steps=400, method=ralston)
    assert abs(lp.item() - (float(gaussian_log_prob(X * math.exp(-1))) - 2.0)) < 1e-4


# --- autograd switched off: the divergence is computed or refused, never taken as 0 ----------------------

# tr A = 0.8; the off-diagonal part is antisymmetric, so Hutchinson's e^T A e = tr A for every probe
A_TR08 = torch.tensor([[0.5, 0.2], [-0.2, 0.3]], dtype=torch.float64)


@torch.no_grad()
def no_grad_linear_field(x, t):
    return x @ A_TR08.T.to(x.dtype)


def linear_field_closed_form(x):
    # v = A x: x_0 = expm(-A) x_1 and log p_1(x) = log N(x_0) - tr A
    return gaussian_log_prob(x @ torch.linalg.matrix_exp(-A_TR08).T) - 0.8


def test_divergence_of_a_no_grad_field_is_refused_not_zero():
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ValueError, match="no_grad"):
        divergence(no_grad_linear_field, x, 0.5)
    with pytest.raises(ValueError, match="no_grad"):
        divergence(lambda x, t: x.detach() @ A_TR08.T, x, 0.5)


@pytest.mark.parametrize("div", ["exact", "hutchinson"])
def test_log_likelihood_of_a_no_grad_field_is_refused_not_off_by_the_trace(div):
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ValueError, match="no_grad"):
        log_likelihood(no_grad_linear_field, x, steps=20, divergence=div)
    # the same field with autograd: the closed form, under an outer no_grad too
    with torch.no_grad():
        lp = log_likelihood(lambda x, t: x @ A_TR08.T, x, steps=200, divergence=div)
    torch.testing.assert_close(lp, linear_field_closed_form(x), atol=1e-8, rtol=0)


@pytest.mark.parametrize("div", ["exact", "hutchinson"])
def test_log_likelihood_refuses_inference_mode(div):
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        log_likelihood(lambda x, t: x @ A_TR08.T, x, steps=20, divergence=div)


def test_constant_fields_still_have_zero_divergence_in_the_likelihood():
    # v = c: x_0 = x_1 - c, div = 0, so log p_1(x) = log N(x - c)
    x = torch.tensor([[0.3, -1.0]], dtype=torch.float64)
    c = torch.tensor([0.5, 2.0], dtype=torch.float64)
    for div in ("exact", "hutchinson"):
        lp = log_likelihood(lambda x, t: c.expand_as(x), x, steps=5, divergence=div)
        torch.testing.assert_close(lp, gaussian_log_prob(x - c))
