"""Schedulers, AffinePath's parameterisation maps, change_scheduler and cfm_loss(prediction=...).

Expected values come from the schedulers' formulas written out here, central finite differences,
and the closed-form posterior of a Gaussian data distribution N(m, s^2 I)."""

import math

import pytest
import torch

from fmlib import (
    AffinePath,
    CondOTScheduler,
    CosineScheduler,
    EmpiricalMarginal,
    GaussianPath,
    LinearPath,
    PolynomialScheduler,
    Scheduler,
    VPScheduler,
    cfm_loss,
    change_scheduler,
)

F64 = torch.float64
SCHEDULERS = [CondOTScheduler(), CondOTScheduler(0.05), CosineScheduler(), PolynomialScheduler(2), VPScheduler()]
FOUR = [CondOTScheduler(), CosineScheduler(), PolynomialScheduler(3), VPScheduler()]


def formula(sched, t):
    """(alpha, sigma) at a float t, written out from each scheduler's definition."""
    if isinstance(sched, CondOTScheduler):
        return t, 1 - (1 - sched.sigma_min) * t
    if isinstance(sched, CosineScheduler):
        return math.sin(math.pi * t / 2), math.cos(math.pi * t / 2)
    if isinstance(sched, PolynomialScheduler):
        return t**sched.n, 1 - t**sched.n
    s = 1 - t
    big_t = sched.beta_min * s + 0.5 * (sched.beta_max - sched.beta_min) * s**2
    a = math.exp(-big_t / 2)
    return a, math.sqrt(1 - a * a)


@pytest.mark.parametrize("sched", SCHEDULERS, ids=repr)
@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
def test_values_from_the_formulas(sched, t):
    if isinstance(sched, VPScheduler) and t == 1.0:
        with pytest.raises(ValueError, match="d sigma_t / dt is infinite at t = 1"):
            sched(t)
        c = sched(1 - 1e-12)  # the limits alpha -> 1, sigma -> 0
        assert abs(float(c.alpha_t) - 1) < 1e-12 and float(c.sigma_t) < 1e-6
        return
    c = sched(torch.tensor(t, dtype=F64))
    a, s = formula(sched, t)
    assert c.alpha_t.shape == () and c.alpha_t.dtype == F64
    assert math.isclose(float(c.alpha_t), a, rel_tol=1e-13, abs_tol=1e-15)
    assert math.isclose(float(c.sigma_t), s, rel_tol=1e-13, abs_tol=1e-15)


@pytest.mark.parametrize("sched", SCHEDULERS, ids=repr)
def test_derivatives_are_central_finite_differences(sched):
    t = torch.linspace(0.05, 0.95, 19, dtype=F64)
    h = 1e-6
    c, cp, cm = sched(t), sched(t + h), sched(t - h)
    torch.testing.assert_close(c.d_alpha_t, (cp.alpha_t - cm.alpha_t) / (2 * h), rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(c.d_sigma_t, (cp.sigma_t - cm.sigma_t) / (2 * h), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("sched", SCHEDULERS, ids=repr)
def test_time_for_snr_inverts_the_schedule_and_matches_bisection(sched):
    t = torch.linspace(0.0, 0.999, 50, dtype=F64)
    c = sched(t)
    closed = sched.time_for_snr(c.alpha_t, c.sigma_t)
    generic = Scheduler.time_for_snr(sched, c.alpha_t, c.sigma_t)  # the base class's bisection
    torch.testing.assert_close(closed, t, rtol=0, atol=1e-9)
    torch.testing.assert_close(generic, t, rtol=0, atol=1e-9)


def test_shapes_dtype_and_float_input():
    t = torch.rand(3, 4, dtype=torch.float32)
    c = CosineScheduler()(t)
    assert all(f.shape == (3, 4) and f.dtype == torch.float32 for f in (c.alpha_t, c.sigma_t, c.d_alpha_t, c.d_sigma_t))
    assert CondOTScheduler()(0.5).alpha_t.dtype == F64


def test_vp_does_not_start_at_pure_noise():
    # alpha_0 = exp(-(beta_min + beta_max) / 4): the VP path's p_0 is N(alpha_0 m, ...) , not N(0, I)
    c = VPScheduler(0.1, 20.0)(0.0)
    assert math.isclose(float(c.alpha_t), math.exp(-(0.1 + 20.0) / 4), rel_tol=1e-14)
    assert float(c.alpha_t) > 0.006


# --- the Gaussian case: closed-form posterior ----------------------------------------------------


def gaussian_case(sched, gen, b=64, d=3):
    m = torch.tensor([1.0, -2.0, 0.5], dtype=F64)[:d]
    s = 0.7
    t = torch.rand(b, generator=gen, dtype=F64) * 0.96 + 0.02
    c = sched(t)
    a, sg, da, ds = (v[:, None] for v in (c.alpha_t, c.sigma_t, c.d_alpha_t, c.d_sigma_t))
    var = a**2 * s**2 + sg**2  # p_t = N(alpha m, var I)
    x = a * m + var.sqrt() * torch.randn(b, d, generator=gen, dtype=F64)
    x1_hat = m + a * s**2 * (x - a * m) / var  # E[x1 | x_t = x]
    eps_hat = sg * (x - a * m) / var  # E[x0 | x_t = x]
    v = da * x1_hat + ds * eps_hat
    score = -(x - a * m) / var
    return x, t, v, x1_hat, eps_hat, score


@pytest.mark.parametrize("sched", FOUR, ids=repr)
def test_every_conversion_against_the_gaussian_closed_form(sched, gen):
    path = AffinePath(sched)
    x, t, v, x1_hat, eps_hat, score = gaussian_case(sched, gen)
    close = dict(rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(path.velocity_to_x1(v, x, t), x1_hat, **close)
    torch.testing.assert_close(path.x1_to_velocity(x1_hat, x, t), v, **close)
    torch.testing.assert_close(path.velocity_to_epsilon(v, x, t), eps_hat, **close)
    torch.testing.assert_close(path.epsilon_to_velocity(eps_hat, x, t), v, **close)
    torch.testing.assert_close(path.velocity_to_score(v, x, t), score, **close)
    torch.testing.assert_close(path.score_to_velocity(score, x, t), v, **close)


@pytest.mark.parametrize("sched", FOUR, ids=repr)
def test_score_is_the_gradient_of_the_gaussian_log_density(sched, gen):
    x, t, v, *_ = gaussian_case(sched, gen, b=8)
    c = sched(t)
    var = c.alpha_t**2 * 0.49 + c.sigma_t**2
    m = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    xg = x.clone().requires_grad_()
    logp = torch.distributions.Normal(c.alpha_t[:, None] * m, var.sqrt()[:, None]).log_prob(xg).sum()
    (grad,) = torch.autograd.grad(logp, xg)
    torch.testing.assert_close(AffinePath(sched).velocity_to_score(v, x, t), grad)


@pytest.mark.parametrize("sched", FOUR, ids=repr)
def test_round_trips_are_exact_to_rounding(sched, gen):
    path = AffinePath(sched)
    x = torch.randn(20, 2, generator=gen, dtype=F64)
    w = torch.randn(20, 2, generator=gen, dtype=F64)
    t = torch.rand(20, generator=gen, dtype=F64) * 0.9 + 0.05
    for there, back in [
        (path.velocity_to_x1, path.x1_to_velocity),
        (path.velocity_to_epsilon, path.epsilon_to_velocity),
        (path.velocity_to_score, path.score_to_velocity),
    ]:
        torch.testing.assert_close(back(there(w, x, t), x, t), w, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("sched", [CondOTScheduler(), CosineScheduler()], ids=repr)
def test_undefined_maps_raise(sched):
    with pytest.raises(ValueError, match="PolynomialScheduler"):  # d/dt (alpha / sigma) = 0 at t = 0 for n > 1
        AffinePath(PolynomialScheduler(2)).velocity_to_x1(torch.ones(1, 1), torch.ones(1, 1), 0.0)
    path, x = AffinePath(sched), torch.ones(2, 2)
    with pytest.raises(ValueError, match="divides by sigma_t, which is 0 at t = 1"):
        path.x1_to_velocity(x, x, 1.0)
    with pytest.raises(ValueError, match="divides by sigma_t"):
        path.velocity_to_score(x, x, 1.0)
    with pytest.raises(ValueError, match="divides by alpha_t, which is 0 at t = 0"):
        path.epsilon_to_velocity(x, x, 0.0)
    with pytest.raises(ValueError, match="divides by alpha_t"):
        path.score_to_velocity(x, x, torch.tensor([0.5, 0.0]))
    # the other two are defined at both ends: x1_hat = x / alpha_1, eps_hat = x / sigma_0
    torch.testing.assert_close(path.velocity_to_x1(torch.zeros(2, 2), x, 1.0), x)
    torch.testing.assert_close(path.velocity_to_epsilon(torch.zeros(2, 2), x, 0.0), x)


PATHS = [GaussianPath(), GaussianPath(0.01), LinearPath(0.0), LinearPath(0.2)] + [AffinePath(s) for s in FOUR[1:]]


@pytest.mark.parametrize("path", PATHS, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_maps_one_float_step_from_the_ends_are_finite_or_raise(path, dtype):
    zero, one = torch.tensor(0.0, dtype=dtype), torch.tensor(1.0, dtype=dtype)
    x = torch.tensor([[0.5, -1.0], [2.0, 0.3]], dtype=dtype)
    w = torch.tensor([[1.0, 0.2], [-0.4, 0.9]], dtype=dtype)
    names = ["velocity_to_x1", "x1_to_velocity", "velocity_to_epsilon", "epsilon_to_velocity"]
    names += ["velocity_to_score", "score_to_velocity"]
    for t in (torch.nextafter(zero, one), torch.nextafter(one, zero)):
        for name in names:
            try:
                out = getattr(path, name)(w, x, t)
            except ValueError as err:  # a map may refuse where it is undefined or overflows, never return inf
                assert "overflowed" in str(err) or "undefined" in str(err), err
                continue
            assert torch.isfinite(out).all() and out.dtype == dtype, (name, float(t))
        # the maps that never divide by a vanishing coefficient succeed wherever the SNR moves
        c = path.coefficients(t)
        if float(c.d_alpha_t * c.sigma_t - c.d_sigma_t * c.alpha_t) > 0:
            assert torch.isfinite(path.velocity_to_x1(w, x, t)).all()
            assert torch.isfinite(path.velocity_to_epsilon(w, x, t)).all()


# --- scheduler change -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pair",
    [
        (GaussianPath(), AffinePath(CosineScheduler())),
        (AffinePath(CosineScheduler()), AffinePath(PolynomialScheduler(2))),
        (AffinePath(CosineScheduler()), AffinePath(VPScheduler())),
        (GaussianPath(), LinearPath(0.3)),
    ],
    ids=lambda p: f"{p[0]!r}->{p[1]!r}",
)
def test_change_scheduler_of_the_exact_field_is_the_exact_field(pair, gen):
    src, dst = pair
    data = torch.randn(15, 2, generator=gen, dtype=F64) * 1.5
    field = change_scheduler(EmpiricalMarginal(data, src).velocity, src, dst)
    x = torch.randn(40, 2, generator=gen, dtype=F64) * 2
    r = torch.rand(40, generator=gen, dtype=F64) * 0.97 + 0.02
    torch.testing.assert_close(field(x, r), EmpiricalMarginal(data, dst).velocity(x, r), rtol=1e-7, atol=1e-7)


def test_change_to_the_same_scheduler_is_the_identity(gen):
    path = AffinePath(CosineScheduler())
    x, t = torch.randn(5, 2, generator=gen, dtype=F64), torch.rand(5, generator=gen, dtype=F64) * 0.9

    def v(y, s):
        return y * s[:, None] + 1

    torch.testing.assert_close(change_scheduler(v, path, path)(x, t), v(x, t))


def test_change_scheduler_outside_the_range_raises():
    # the VP path never reaches SNR 0, so it cannot stand in for the cosine path at r = 0
    field = change_scheduler(lambda x, t: x, AffinePath(VPScheduler()), AffinePath(CosineScheduler()))
    with pytest.raises(ValueError, match="cannot reach this signal-to-noise ratio"):
        field(torch.zeros(2, 2), 0.0)


def test_change_scheduler_bad_arguments():
    with pytest.raises(TypeError, match="v must be a callable"):
        change_scheduler(3, GaussianPath(), GaussianPath())
    with pytest.raises(TypeError, match="to_path must be an AffinePath"):
        change_scheduler(lambda x, t: x, GaussianPath(), "cosine")


# --- cfm_loss(prediction=...) ----------------------------------------------------------------------


def test_prediction_targets_and_their_time_weights(gen):
    path = AffinePath(CosineScheduler())
    x0, x1 = torch.randn(32, 2, generator=gen, dtype=F64), torch.randn(32, 2, generator=gen, dtype=F64)
    guess = torch.randn(32, 2, generator=gen, dtype=F64)
    t = 0.35
    for name, want in [("x1", x1), ("epsilon", x0)]:
        loss = cfm_loss(lambda x, s: guess, path, x1, x0=x0, t=t, prediction=name)
        torch.testing.assert_close(loss, (guess - want).pow(2).sum(1).mean())
    # the velocity loss of the induced field is (rate / sigma)^2 times the x1 loss at a fixed t
    c = CosineScheduler()(t)
    rate = float(c.d_alpha_t * c.sigma_t - c.d_sigma_t * c.alpha_t)
    x_t = path.sample(x0, x1, t).x_t

    def as_velocity(x, s):
        return path.x1_to_velocity(guess, x, s)

    lv = cfm_loss(as_velocity, path, x1, x0=x0, t=t)
    lx = cfm_loss(lambda x, s: guess, path, x1, x0=x0, t=t, prediction="x1")
    torch.testing.assert_close(lv, (rate / float(c.sigma_t)) ** 2 * lx)
    assert torch.equal(path.sample(x0, x1, t).x_t, x_t)


def test_linear_path_epsilon_target_is_the_standardised_noise(gen):
    path = LinearPath(0.4)
    x0, x1 = torch.randn(6, 2, generator=gen, dtype=F64), torch.randn(6, 2, generator=gen, dtype=F64)
    s = path.sample(x0, x1, 0.7, generator=gen)
    eps = path.target(s, "epsilon")
    torch.testing.assert_close(eps, (s.x_t - 0.7 * x1) / math.sqrt(0.3**2 + 0.4**2))


def test_prediction_bad_input():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="prediction must be one of"):
        cfm_loss(lambda y, t: y, GaussianPath(), x, prediction="score")

    class Other(torch.nn.Module):
        pass

    from fmlib import ProbPath

    class NotAffine(ProbPath):
        def sample(self, x0, x1, t, generator=None): ...
        def conditional_velocity(self, x, t, x0=None, x1=None): ...
        def log_prob(self, x, t, x0=None, x1=None): ...

    with pytest.raises(TypeError, match="prediction='x1' needs an AffinePath"):
        cfm_loss(lambda y, t: y, NotAffine(), x, prediction="x1")


# --- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [-0.1, 1.5, float("nan"), torch.tensor([0.2, 1.2])])
def test_scheduler_time_outside_unit_interval_raises(t):
    with pytest.raises(ValueError, match="t must"):
        CosineScheduler()(t)


def test_scheduler_bad_arguments():
    with pytest.raises(TypeError, match="floating dtype"):
        CosineScheduler()(torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="t must be a float"):
        CosineScheduler()("0.5")
    with pytest.raises(ValueError, match="n must be >= 1, a finite real number; got 0.5"):
        PolynomialScheduler(0.5)
    with pytest.raises(ValueError, match="beta_min must be > 0"):
        VPScheduler(0.0)
    with pytest.raises(ValueError, match="beta_max must be >= 1"):
        VPScheduler(1.0, 0.5)
    with pytest.raises(ValueError, match=r"sigma_min must be in \[0, 1\)"):
        CondOTScheduler(1.0)
    with pytest.raises(TypeError, match="scheduler must be a fmlib Scheduler"):
        AffinePath("cosine")
    with pytest.raises(ValueError, match="alpha and sigma must be >= 0"):
        CosineScheduler().time_for_snr(torch.tensor([-1.0]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="x1_hat and x must have the same shape"):
        GaussianPath().x1_to_velocity(torch.zeros(2, 3), torch.zeros(2, 2), 0.5)
    with pytest.raises(ValueError, match="t must lie in"):
        GaussianPath().velocity_to_score(torch.zeros(2, 2), torch.zeros(2, 2), 1.5)


def test_low_precision_state_keeps_float32_times():
    # GaussianPath(0) at t = 0.999 with a bfloat16 state: t must not round to 1 (bfloat16(0.999) == 1)
    assert float(torch.tensor(0.999, dtype=torch.bfloat16)) == 1.0
    path = GaussianPath(0.0)
    x = torch.full((2, 2), 0.5, dtype=torch.bfloat16)
    x1 = torch.full((2, 2), 1.5, dtype=torch.bfloat16)
    u = path.conditional_velocity(x, 0.999, x1=x1)
    s_t = 1 - torch.tensor(0.999, dtype=torch.float32)
    expected = ((1.5 - 0.5) / s_t).to(torch.bfloat16)
    assert u.dtype == torch.bfloat16 and torch.all(u == expected)
    lp = path.log_prob(x, 0.999, x1=x1)
    assert lp.dtype == torch.bfloat16 and torch.isfinite(lp).all()
    s = path.sample(x, x1, 0.999)
    assert s.t.dtype == torch.float32 and float(s.t[0]) == float(torch.tensor(0.999))
    score = path.velocity_to_score(u, x, 0.999)
    assert torch.isfinite(score).all()


def test_change_scheduler_with_a_bfloat16_state_calls_v_with_float32_times():
    seen = {}

    def v(x, t):
        seen["dtypes"] = (x.dtype, t.dtype)
        return -x

    field = change_scheduler(v, GaussianPath(), AffinePath(CosineScheduler()))
    x = torch.full((3, 2), 0.5, dtype=torch.bfloat16)
    out = field(x, 0.999)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert seen["dtypes"] == (torch.bfloat16, torch.float32)
    reference = field(x.float(), 0.999)  # the same computation on the float32 state
    torch.testing.assert_close(out.float(), reference, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("scale", [1.0, 1e6, 1e-6, 1e100, 1e-100])
def test_vp_time_for_snr_keeps_its_digits_at_high_snr(scale):
    # choose s = 1 - t first: T = beta_min s + (beta_max - beta_min) s^2 / 2 and sigma / alpha = sqrt(e^T - 1)
    # (expm1: accurate to a few ulps), at any common scale of the pair; then t = 1 - s is the exact answer
    sched = VPScheduler()
    s = torch.tensor([1e-2, 1e-4, 1e-6, 1e-8, 1e-10, 1e-12, 1e-14], dtype=F64)
    big_t = sched.beta_min * s + 0.5 * (sched.beta_max - sched.beta_min) * s**2
    alpha = torch.full_like(s, scale)
    sigma = scale * torch.sqrt(torch.expm1(big_t))
    got = sched.time_for_snr(alpha, sigma)
    # 1 - s rounds to the float64 grid near 1 (spacing 1.1e-16): one ulp is all that is left
    torch.testing.assert_close(got, 1 - s, rtol=0, atol=2.3e-16)
    # and at low SNR, where sigma / alpha is large, as before (through the schedule's own values)
    t = torch.tensor([0.0, 1e-3, 0.1], dtype=F64)
    c = sched(t)
    torch.testing.assert_close(sched.time_for_snr(c.alpha_t * scale, c.sigma_t * scale), t, rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="below its range"):
        sched.time_for_snr(torch.tensor([0.0], dtype=F64), torch.tensor([1.0], dtype=F64))
