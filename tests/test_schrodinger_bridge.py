"""SchrodingerBridgePath against the Brownian bridge's closed forms and finite differences."""

import math

import pytest
import torch

from fmlib import SchrodingerBridgePath


def _pair(gen, b=4, dtype=torch.float64):
    return torch.randn(b, 3, generator=gen, dtype=dtype), torch.randn(b, 3, generator=gen, dtype=dtype) + 2


def test_mean_and_variance_match_the_bridge(gen):
    sigma, t, n = 0.7, 0.3, 200_000
    x0 = torch.tensor([[1.0, -2.0]], dtype=torch.float64).expand(n, 2)
    x1 = torch.tensor([[3.0, 0.5]], dtype=torch.float64).expand(n, 2)
    s = SchrodingerBridgePath(sigma).sample(x0, x1, t, generator=gen)
    mean = (1 - t) * x0[0] + t * x1[0]
    var = sigma**2 * t * (1 - t)
    # the sample mean has standard error sqrt(var / n); the sample variance sqrt(2 / n) var
    assert (s.x_t.mean(0) - mean).abs().max() < 5 * math.sqrt(var / n)
    assert (s.x_t.var(0) - var).abs().max() < 5 * math.sqrt(2 / n) * var


@pytest.mark.parametrize("t", [0.05, 0.3, 0.5, 0.8, 0.99])
def test_sample_velocity_is_the_time_derivative_of_the_path(gen, t):
    # x_t = mu_t + s_t eps with eps fixed (same seed): d x_t / dt = (x1 - x0) + s_t' eps, by central differences
    path, h = SchrodingerBridgePath(1.3), 1e-6
    x0, x1 = _pair(gen)
    seed = 7
    plus = path.sample(x0, x1, t + h, generator=torch.Generator().manual_seed(seed)).x_t
    minus = path.sample(x0, x1, t - h, generator=torch.Generator().manual_seed(seed)).x_t
    s = path.sample(x0, x1, t, generator=torch.Generator().manual_seed(seed))
    fd = (plus - minus) / (2 * h)
    assert (s.u_t - fd).abs().max() < 1e-6 * (1 + fd.abs().max())
    # the same value from the field written in x: (x1 - x0) + (1 - 2t) / (2 t (1 - t)) (x - mu_t)
    u = path.conditional_velocity(s.x_t, t, x0=x0, x1=x1)
    assert (u - s.u_t).abs().max() < 1e-10


def test_velocity_formula_against_the_std_derivative(gen):
    # s_t = sigma sqrt(t (1 - t)): its derivative by finite differences, times eps, plus the mean's derivative
    sigma, t, h = 0.4, 0.2, 1e-6
    path = SchrodingerBridgePath(sigma)
    x0, x1 = _pair(gen)
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    ds = (sigma * math.sqrt((t + h) * (1 - t - h)) - sigma * math.sqrt((t - h) * (1 - t + h))) / (2 * h)
    mean = (1 - t) * x0 + t * x1
    x = mean + sigma * math.sqrt(t * (1 - t)) * eps
    assert (path.conditional_velocity(x, t, x0=x0, x1=x1) - (x1 - x0 + ds * eps)).abs().max() < 1e-7


def test_log_prob_is_the_gaussian_density(gen):
    path = SchrodingerBridgePath(0.5)
    x0, x1 = _pair(gen)
    t = torch.tensor([0.1, 0.4, 0.6, 0.95], dtype=torch.float64)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    mean = (1 - t[:, None]) * x0 + t[:, None] * x1
    std = 0.5 * torch.sqrt(t * (1 - t))
    ref = torch.distributions.Normal(mean, std[:, None]).log_prob(x).sum(1)
    assert torch.allclose(path.log_prob(x, t, x0=x0, x1=x1), ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="point mass"):
        path.log_prob(x, 0.0, x0=x0, x1=x1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_ends_and_one_float_step_inside(gen, dtype):
    path = SchrodingerBridgePath(1.0)
    x0, x1 = _pair(gen, dtype=dtype)
    for t in (0.0, 1.0):
        s = path.sample(x0, x1, t, generator=gen)
        assert torch.equal(s.x_t, x0 if t == 0 else x1)
        assert torch.equal(s.u_t, x1 - x0)
        assert torch.equal(path.conditional_velocity(s.x_t, t, x0=x0, x1=x1), x1 - x0)
    zero, one = torch.tensor(0.0, dtype=dtype), torch.tensor(1.0, dtype=dtype)
    for t in (torch.nextafter(zero, one), torch.nextafter(one, zero)):
        s = path.sample(x0, x1, t, generator=gen)
        assert torch.isfinite(s.x_t).all() and torch.isfinite(s.u_t).all()
        u = path.conditional_velocity(s.x_t, t, x0=x0, x1=x1)
        assert torch.isfinite(u).all()
    with pytest.raises(ValueError, match="only defined there"):
        path.conditional_velocity(x0 + 1, 0.0, x0=x0, x1=x1)


def test_overflow_is_reported_not_returned(gen):
    path = SchrodingerBridgePath(1.0)
    x0, x1 = _pair(gen)
    t = torch.nextafter(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="overflows"):
        path.conditional_velocity(x0 + 1.0, t, x0=x0, x1=x1)


def test_low_precision_state_keeps_float32_times(gen):
    path = SchrodingerBridgePath(0.5)
    x0, x1 = (a.to(torch.bfloat16) for a in _pair(gen))
    s = path.sample(x0, x1, 0.999, generator=gen)
    assert s.t.dtype == torch.float32 and float(s.t[0]) == pytest.approx(0.999, abs=1e-7)
    assert s.x_t.dtype == torch.bfloat16 and s.u_t.dtype == torch.bfloat16
    assert torch.isfinite(s.u_t.float()).all()


@pytest.mark.parametrize(
    "sigma, exc", [(0.0, ValueError), (-0.1, ValueError), (math.inf, ValueError), ("1", TypeError)]
)
def test_bad_sigma(sigma, exc):
    with pytest.raises(exc, match="sigma"):
        SchrodingerBridgePath(sigma)


def test_bad_arguments(gen):
    path = SchrodingerBridgePath(0.5)
    x0, x1 = _pair(gen)
    with pytest.raises(ValueError, match="t must lie in"):
        path.sample(x0, x1, 1.5)
    with pytest.raises(ValueError, match="same shape"):
        path.sample(x0, x1[:3], 0.5)
    with pytest.raises(ValueError, match="needs x1"):
        path.conditional_velocity(x0, 0.5, x0=x0)
