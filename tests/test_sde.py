"""integrate_sde: the ODE when g = 0, the right marginals for every g (a Gaussian data set with its
closed-form velocity), one field evaluation per step, stability at t -> 1, and bad input."""

import math

import pytest
import torch

from fmlib import (
    AffinePath,
    CosineScheduler,
    EmpiricalMarginal,
    GaussianPath,
    NFECounter,
    VPScheduler,
    integrate,
    integrate_sde,
)

F64 = torch.float64
M, S = torch.tensor([1.0, -2.0], dtype=F64), 0.5


def gaussian_field(path):
    """The exact marginal velocity for data N(M, S^2 I): E[d_alpha x1 + d_sigma x0 | x_t = x] in closed form."""

    def v(x, t):
        c = path.coefficients(t)
        a, sg, da, ds = (z[:, None] for z in (c.alpha_t, c.sigma_t, c.d_alpha_t, c.d_sigma_t))
        var = a**2 * S**2 + sg**2
        return da * M + (da * a * S**2 + ds * sg) * (x - a * M) / var

    return v


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_diffusion_is_euler_exactly(dtype, gen):
    path = AffinePath(CosineScheduler())
    data = torch.randn(10, 2, generator=gen, dtype=dtype)
    v = EmpiricalMarginal(data, path).velocity
    x0 = torch.randn(30, 2, generator=gen, dtype=dtype)
    ode = integrate(v, x0, 0.0, 1.0, steps=25, method="euler", trajectory=True)
    for g in (0.0, lambda t: 0.0):
        sde = integrate_sde(v, x0, path, g, 25, generator=gen, trajectory=True)
        assert sde.dtype == dtype and torch.equal(sde, ode)


@pytest.mark.parametrize("path", [GaussianPath(), AffinePath(CosineScheduler()), AffinePath(VPScheduler())], ids=repr)
@pytest.mark.parametrize("g", [0.0, 0.5, 1.0])
def test_mean_and_variance_at_t1_for_every_diffusion(path, g):
    n = 2000
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    c = path.coefficients(0.0)  # start from the path's own p_0 (the VP path's is not exactly N(0, I))
    x0 = c.alpha_t * M + torch.sqrt(c.alpha_t**2 * S**2 + c.sigma_t**2) * x0
    out = integrate_sde(gaussian_field(path), x0, path, g, 100, generator=torch.Generator().manual_seed(2))
    se_mean, se_var = S / math.sqrt(n), S**2 * math.sqrt(2 / (n - 1))
    assert ((out.mean(0) - M).abs() < 4 * se_mean).all(), (out.mean(0), M)
    assert ((out.var(0) - S**2).abs() < 4 * se_var).all(), out.var(0)


def test_one_field_evaluation_per_step_and_seeded(gen):
    path = GaussianPath()
    v = NFECounter(gaussian_field(path))
    x0 = torch.randn(50, 2, generator=gen, dtype=F64)
    a = integrate_sde(v, x0, path, 0.8, 40, generator=torch.Generator().manual_seed(3))
    assert v.nfe == 40
    b = integrate_sde(v, x0, path, 0.8, 40, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    c = integrate_sde(v, x0, path, 0.8, 40, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(a, c)


def test_noise_changes_trajectories_not_the_start(gen):
    path = GaussianPath()
    x0 = torch.randn(100, 2, generator=gen, dtype=F64)
    traj = integrate_sde(gaussian_field(path), x0, path, 1.0, 20, generator=gen, trajectory=True)
    ode = integrate(gaussian_field(path), x0, steps=20, trajectory=True)
    assert traj.shape == (21, 100, 2) and torch.equal(traj[0], x0)
    assert (traj[10] - ode[10]).abs().mean() > 0.1  # the paths differ in the middle


def test_point_mass_data_stays_finite_near_t1(gen):
    # the score of the exact marginal grows like 1 / (1 - t)^2; the cap sigma_t / sqrt(h) keeps the
    # explicit steps stable, and the samples land on the data points
    data = torch.tensor([[-1.0, 0.0], [1.0, 0.5], [0.0, 2.0]], dtype=F64)
    path = GaussianPath()
    m = EmpiricalMarginal(data, path)
    x0 = torch.randn(300, 2, generator=gen, dtype=F64)
    out = integrate_sde(m.velocity, x0, path, 2.0, 100, generator=gen)
    assert torch.isfinite(out).all()
    assert torch.cdist(out, data).min(1).values.max() < 0.1  # the points are 1.1 or more apart


def test_bfloat16_state_accumulates_in_float32():
    seen = []

    def v(x, t):
        seen.append(float(t[0]))
        assert x.dtype == torch.bfloat16 and t.dtype == torch.float32
        return torch.ones_like(x)

    out = integrate_sde(v, torch.ones(2, 1, dtype=torch.bfloat16), GaussianPath(), 0.0, 1000)
    assert out.dtype == torch.bfloat16 and torch.all(out == 2.0)
    assert len(set(seen)) == 1000


# --- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("g", [-0.1, float("nan"), float("inf")])
def test_bad_diffusion_value_raises(g):
    with pytest.raises(ValueError, match="diffusion must give a finite float >= 0"):
        integrate_sde(lambda x, t: x, torch.zeros(2, 2), GaussianPath(), g, 5)


def test_bad_diffusion_callable_raises():
    with pytest.raises(ValueError, match=r"diffusion must give a finite float >= 0; got -1.0 at t = 0.2"):
        integrate_sde(lambda x, t: x, torch.zeros(2, 2), GaussianPath(), lambda t: -1.0 if t > 0.1 else 0.0, 5)
    with pytest.raises(TypeError, match="diffusion must be a float >= 0 or a callable"):
        integrate_sde(lambda x, t: x, torch.zeros(2, 2), GaussianPath(), "0.5", 5)


def test_bad_arguments_raise():
    x = torch.zeros(2, 2)
    with pytest.raises(TypeError, match="v must be a callable"):
        integrate_sde(None, x, GaussianPath(), 0.5, 5)
    with pytest.raises(TypeError, match="path must be an AffinePath"):
        integrate_sde(lambda y, t: y, x, "cosine", 0.5, 5)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        integrate_sde(lambda y, t: y, x, GaussianPath(), 0.5, 0)
    with pytest.raises(ValueError, match="must return a tensor of x's shape"):
        integrate_sde(lambda y, t: y[:1], x, GaussianPath(), 0.5, 5)
