"""integrate_sde: the ODE when g = 0, the right marginals for every g (a Gaussian data set with its
closed-form velocity), one field evaluation per step, stability at t -> 1, and bad input.
euler_maruyama: Euler when g = 0, Brownian motion's variance, the Ornstein-Uhlenbeck moments of the
discrete scheme (a closed-form recursion), a time-dependent g, seeding, low precision and bad input."""

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
    euler_maruyama,
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


# --- euler_maruyama -------------------------------------------------------------------------------------


def zero_drift(x, t):
    return torch.zeros_like(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("t0, t1", [(0.0, 1.0), (1.0, 0.25)])
def test_em_zero_diffusion_is_euler_exactly(dtype, t0, t1, gen):
    def f(x, t):
        return torch.sin(x) - t[:, None] * x

    x = torch.randn(20, 3, generator=gen, dtype=dtype)
    ode = integrate(f, x, t0, t1, steps=17, method="euler", trajectory=True)
    for g in (0.0, lambda t: 0.0):
        sde = euler_maruyama(f, g, x, t0, t1, 17, generator=gen, trajectory=True)
        assert sde.dtype == dtype and torch.equal(sde, ode)


@pytest.mark.parametrize("t0, t1", [(0.2, 1.7), (1.0, 0.0)])
def test_em_brownian_motion_has_variance_g2_times_elapsed_time(t0, t1):
    # f = 0, constant g: X_t1 - X_t0 is a sum of independent N(0, g^2 |h|) increments, N(0, g^2 |t1 - t0|),
    # and the increments of different steps are uncorrelated
    n, g = 40_000, 1.5
    x = torch.full((n, 2), 3.0, dtype=F64)
    traj = euler_maruyama(zero_drift, g, x, t0, t1, 10, generator=torch.Generator().manual_seed(5), trajectory=True)
    var = g**2 * abs(t1 - t0)
    d = traj[-1] - x
    assert ((d.mean(0)).abs() < 4 * math.sqrt(var / n)).all(), d.mean(0)
    assert ((d.var(0) - var).abs() < 4 * var * math.sqrt(2 / (n - 1))).all(), d.var(0)
    inc = traj.diff(dim=0)[..., 0]  # (10, n)
    corr = torch.corrcoef(inc)
    off_diagonal = corr - torch.diag(torch.diag(corr))
    assert off_diagonal.abs().max() < 4 / math.sqrt(n)


@pytest.mark.parametrize("steps", [5, 40])
def test_em_ornstein_uhlenbeck_moments_follow_the_discrete_recursion(steps):
    # dX = -theta X dt + g dW from X_0 = x0: one EM step maps mean m -> (1 - theta h) m and
    # variance v -> (1 - theta h)^2 v + g^2 h, a closed form of the scheme independent of the code
    theta, g, x0, n = 2.0, 1.0, 2.0, 100_000
    h = 1.0 / steps
    m, v = x0, 0.0
    for _ in range(steps):
        m, v = (1 - theta * h) * m, (1 - theta * h) ** 2 * v + g**2 * h
    out = euler_maruyama(
        lambda x, t: -theta * x,
        g,
        torch.full((n, 1), x0, dtype=F64),
        steps=steps,
        generator=torch.Generator().manual_seed(6),
    )
    assert abs(out.mean().item() - m) < 4 * math.sqrt(v / n)
    assert abs(out.var().item() - v) < 4 * v * math.sqrt(2 / (n - 1))
    # and the scheme's moments approach the exact ones, e^{-theta} x0 and g^2 (1 - e^{-2 theta}) / (2 theta),
    # at the rate h (weak order 1): the error times steps stays bounded
    v_exact = g**2 * (1 - math.exp(-2 * theta)) / (2 * theta)
    assert abs(m - math.exp(-theta) * x0) * steps < 2.0 and abs(v - v_exact) * steps < 2.0


def test_em_time_dependent_diffusion_is_evaluated_at_the_left_end_of_each_step():
    # g(t) = t on 4 steps of [0, 1]: Var X_1 = sum_k g(t_k)^2 h = (0 + 1 + 4 + 9) / 64
    seen = []

    def g(t):
        seen.append(t)
        return t

    n = 100_000
    out = euler_maruyama(
        zero_drift, g, torch.zeros(n, 1, dtype=F64), steps=4, generator=torch.Generator().manual_seed(7)
    )
    assert seen == [0.0, 0.25, 0.5, 0.75]
    var = 14 / 64
    assert abs(out.var().item() - var) < 4 * var * math.sqrt(2 / (n - 1))


def test_em_seeded_and_trajectory_starts_at_x(gen):
    x = torch.randn(50, 2, generator=gen)
    a = euler_maruyama(lambda y, t: -y, 0.7, x, steps=30, generator=torch.Generator().manual_seed(3), trajectory=True)
    b = euler_maruyama(lambda y, t: -y, 0.7, x, steps=30, generator=torch.Generator().manual_seed(3), trajectory=True)
    c = euler_maruyama(lambda y, t: -y, 0.7, x, steps=30, generator=torch.Generator().manual_seed(4), trajectory=True)
    assert a.shape == (31, 50, 2) and torch.equal(a[0], x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_em_bfloat16_state_accumulates_in_float32():
    def f(x, t):
        assert x.dtype == torch.bfloat16 and t.dtype == torch.float32
        return torch.ones_like(x)

    out = euler_maruyama(f, 0.0, torch.ones(2, 1, dtype=torch.bfloat16), steps=1000)
    assert out.dtype == torch.bfloat16 and torch.all(out == 2.0)


def test_em_bad_input_raises_before_stepping():
    calls = []

    def f(x, t):
        calls.append(1)
        return x

    x = torch.zeros(2, 2)
    with pytest.raises(TypeError, match="drift must be a callable"):
        euler_maruyama(None, 1.0, x)
    with pytest.raises(ValueError, match=r"diffusion must give a finite float >= 0; got -1.0 at t = 0"):
        euler_maruyama(f, -1.0, x)
    with pytest.raises(TypeError, match="diffusion must be a float >= 0 or a callable"):
        euler_maruyama(f, "0.5", x)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        euler_maruyama(f, 1.0, x, steps=0)
    with pytest.raises(TypeError, match="t0"):
        euler_maruyama(f, 1.0, x, t0="0")
    assert calls == []
    with pytest.raises(ValueError, match=r"drift\(x, t\) must return a tensor of x's shape"):
        euler_maruyama(lambda y, t: y[:1], 1.0, x)
    with pytest.raises(ValueError, match="got -1.0 at t = 0.6"):
        euler_maruyama(f, lambda t: -1.0 if t > 0.5 else 0.0, x, steps=5)
    with pytest.raises(ValueError, match="the state became NaN or inf at step 1"):
        euler_maruyama(lambda y, t: torch.full_like(y, float("inf")), 0.0, x)
