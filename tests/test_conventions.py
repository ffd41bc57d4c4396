"""Conventions across papers and libraries (fmlib.conventions).

Every expected value is derived here independently of fmlib.conventions: each convention's alpha and sigma
written from its paper (DDPM's alpha-bar as a cumulative product of its betas), the exact posterior predictions
of a three-point data set in the convention's own variables, the book's exact marginal velocity from
fmlib.EmpiricalMarginal, the deterministic DDIM update from Song et al. (2021a), eq. 12, and the installed
flow_matching and torchcfm libraries.
"""

import math

import pytest
import torch

import fmlib
from fmlib import (
    CONVENTIONS,
    EmpiricalMarginal,
    GaussianPath,
    cfg_combine,
    euler_step,
    from_book_guidance,
    from_book_state,
    from_book_time,
    from_book_velocity,
    to_book_guidance,
    to_book_state,
    to_book_time,
    to_book_velocity,
)

F64 = torch.float64
FLOW = ("book", "flow_matching", "torchcfm", "mit_6s184")

# -- each convention written out from its source --------------------------------------------------------------

BETAS = torch.linspace(1e-4, 0.02, 1000, dtype=F64)  # Ho et al. (2020), Section 4
ALPHA_BAR = torch.cat([torch.ones(1, dtype=F64), torch.cumprod(1 - BETAS, 0)])  # abar_0 = 1 (the data)


def ddpm_alpha_sigma(n):
    ab = ALPHA_BAR[n.long()]
    return ab.sqrt(), (1 - ab).sqrt()


def vp_alpha_sigma(tau, beta_min=0.1, beta_max=20.0):  # Song et al. (2021b), eq. 33 (VP SDE marginals)
    log_mean = -0.25 * tau**2 * (beta_max - beta_min) - 0.5 * tau * beta_min
    return torch.exp(log_mean), torch.sqrt(1 - torch.exp(2 * log_mean))


def ve_alpha_sigma(tau, sigma_min=0.01, sigma_max=50.0):  # Song et al. (2021b), Section 3.4
    return torch.ones_like(tau), sigma_min * (sigma_max / sigma_min) ** tau


ALPHA_SIGMA = {
    **{name: (lambda t: (t, 1 - t)) for name in FLOW},
    "sd3": lambda t: (1 - t, t),  # Esser et al. (2024), Section 3: z_t = (1 - t) x0 + t eps
    "score_sde_vp": vp_alpha_sigma,
    "score_sde_ve": ve_alpha_sigma,
    "edm": lambda s: (torch.ones_like(s), s),  # Karras et al. (2022), s(t) = 1, sigma(t) = t
}
CONTINUOUS = tuple(ALPHA_SIGMA)
DISCRETE = ("ddpm", "diffusers")

# interior times of each convention (the diffusion conventions' data ends have sigma = 0 or d sigma = inf)
TIMES = {
    **{name: torch.tensor([0.05, 0.3, 0.5, 0.77, 0.95], dtype=F64) for name in FLOW + ("sd3",)},
    "score_sde_vp": torch.tensor([0.02, 0.3, 0.5, 0.77, 1.0], dtype=F64),
    "score_sde_ve": torch.tensor([0.0, 0.3, 0.5, 0.77, 1.0], dtype=F64),
    "edm": torch.tensor([0.002, 0.1, 1.0, 5.0, 80.0], dtype=F64),
    "ddpm": torch.tensor([1.0, 10.0, 250.0, 600.0, 1000.0], dtype=F64),
    "diffusers": torch.tensor([0.0, 9.0, 249.0, 599.0, 999.0], dtype=F64),
}


def alpha_sigma(name, tau):
    if name == "ddpm":
        return ddpm_alpha_sigma(tau)
    if name == "diffusers":
        return ddpm_alpha_sigma(tau + 1)  # alphas_cumprod[k] is abar of DDPM's step k + 1
    return ALPHA_SIGMA[name](tau)


def derivatives(name, tau):
    """(d alpha / d tau, d sigma / d tau) by forward-mode autodiff of the functions above."""
    ones = torch.ones_like(tau)
    _, da = torch.func.jvp(lambda s: ALPHA_SIGMA[name](s)[0], (tau,), (ones,))
    _, ds = torch.func.jvp(lambda s: ALPHA_SIGMA[name](s)[1], (tau,), (ones,))
    return da, ds


# -- round trips -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONVENTIONS)
def test_time_round_trips(name):
    tau = TIMES[name]
    back = from_book_time(to_book_time(tau, name), name)
    torch.testing.assert_close(back, tau, rtol=1e-12, atol=1e-10)
    t = to_book_time(tau, name)
    torch.testing.assert_close(to_book_time(from_book_time(t, name), name), t, rtol=1e-13, atol=0)
    assert bool(((t >= 0) & (t <= 1)).all())


@pytest.mark.parametrize("name", CONVENTIONS)
def test_book_time_is_the_time_of_equal_signal_to_noise_ratio(name):
    tau = TIMES[name]
    alpha, sigma = alpha_sigma(name, tau)
    torch.testing.assert_close(to_book_time(tau, name), alpha / (alpha + sigma), rtol=1e-12, atol=0)


def test_data_and_noise_ends():
    assert float(to_book_time(0.0, "ddpm")) == 1.0  # abar_0 = 1: the data
    assert float(to_book_time(0.0, "edm")) == 1.0
    assert float(to_book_time(0.0, "score_sde_vp")) == 1.0
    assert float(to_book_time(1.0, "sd3")) == 0.0 and float(to_book_time(0.0, "sd3")) == 1.0
    for name in FLOW:
        assert float(to_book_time(0.0, name)) == 0.0 and float(to_book_time(1.0, name)) == 1.0
    # diffusers' timestep k is DDPM's step k + 1
    torch.testing.assert_close(
        to_book_time(torch.arange(1000), "diffusers"), to_book_time(torch.arange(1, 1001), "ddpm")
    )


def test_fractional_ddpm_steps_lie_between_the_integer_steps():
    t = to_book_time(torch.tensor([600.0, 600.25, 601.0], dtype=F64), "ddpm")
    assert float(t[0]) > float(t[1]) > float(t[2])


@pytest.mark.parametrize("name", CONVENTIONS)
def test_state_and_prediction_round_trips(name):
    g = fmlib.seeded_generator(0)
    tau = TIMES[name]
    x = torch.randn(5, 3, generator=g, dtype=F64)
    pred = torch.randn(5, 3, generator=g, dtype=F64)
    y, t = to_book_state(x, tau, name), to_book_time(tau, name)
    torch.testing.assert_close(from_book_state(y, t, name), x, rtol=1e-12, atol=1e-12)
    kinds = ("epsilon", "data", "score", "v_prediction") + (("velocity",) if name in CONTINUOUS else ())
    for kind in kinds:
        tt = tau
        if kind in ("data", "v_prediction", "score", "velocity") and name == "score_sde_vp":
            tt = tau.clamp(min=0.02)
        v = to_book_velocity(pred, x, tt, name, prediction=kind)
        back = from_book_velocity(v, to_book_state(x, tt, name), to_book_time(tt, name), name, prediction=kind)
        torch.testing.assert_close(back, pred, rtol=1e-9, atol=1e-9, msg=f"{name}, {kind}")


# -- the converted predictions of an exact model are the book's exact marginal velocity ---------------------------

DATA = torch.tensor([[1.0, 0.5], [-0.8, 1.2], [0.3, -1.1]], dtype=F64)


def posterior_predictions(name, x, tau):
    """The exact E[x_data | x], E[eps | x], score and dx/dtau for DATA in the convention's own variables."""
    alpha, sigma = alpha_sigma(name, tau)
    a, s = alpha[:, None], sigma[:, None]
    d2 = ((x[:, None, :] - a[:, None] * DATA[None]) ** 2).sum(-1)
    weights = torch.softmax(-d2 / (2 * s**2), dim=1)
    x_data = weights @ DATA
    eps = (x - a * x_data) / s
    out = {"data": x_data, "epsilon": eps, "score": -eps / s, "v_prediction": a * eps - s * x_data}
    if name in CONTINUOUS:
        da, ds = derivatives(name, tau)
        out["velocity"] = da[:, None] * x_data + ds[:, None] * eps
    return out


@pytest.mark.parametrize("name", CONVENTIONS)
def test_exact_predictions_convert_to_the_books_marginal_velocity(name):
    tau = TIMES[name].clamp(min=0.02) if name == "score_sde_vp" else TIMES[name]
    if name == "score_sde_ve":
        tau = tau.clamp(min=1e-3)
    alpha, sigma = alpha_sigma(name, tau)
    g = fmlib.seeded_generator(1)
    eps = torch.randn(5, 2, generator=g, dtype=F64)
    x = alpha[:, None] * DATA[torch.arange(5) % 3] + sigma[:, None] * eps
    y, t = to_book_state(x, tau, name), to_book_time(tau, name)
    torch.testing.assert_close(y, x / (alpha + sigma)[:, None], rtol=1e-12, atol=1e-12)
    expected = EmpiricalMarginal(DATA, GaussianPath()).velocity(y, t)
    for kind, pred in posterior_predictions(name, x, tau).items():
        got = to_book_velocity(pred, x, tau, name, prediction=kind)
        torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-8, msg=f"{name}, {kind}")


# -- a DDIM step is an Euler step of the book's flow ----------------------------------------------------------------


def ddim_step(x, eps, n, n_next):
    """Deterministic DDIM (Song et al. 2021a, eq. 12 with sigma_t = 0), in DDPM's variables."""
    ab, ab_next = ALPHA_BAR[n], ALPHA_BAR[n_next]
    x0_pred = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
    return ab_next.sqrt() * x0_pred + (1 - ab_next).sqrt() * eps


@pytest.mark.parametrize("n, n_next", [(1000, 980), (600, 500), (300, 299), (50, 0), (1000, 0)])
def test_a_ddim_step_is_an_euler_step_of_the_converted_velocity(n, n_next):
    g = fmlib.seeded_generator(2)
    x = torch.randn(8, 3, generator=g, dtype=F64)
    eps = torch.randn(8, 3, generator=g, dtype=F64)  # any network output
    expected = ddim_step(x, eps, n, n_next)
    t, t_next = to_book_time(float(n), "ddpm"), to_book_time(float(n_next), "ddpm")
    y = to_book_state(x, n, "ddpm")
    v = to_book_velocity(eps, x, n, "ddpm")
    y_next = euler_step(lambda _y, _t: v, y, t, t_next - t)
    got = from_book_state(y_next, t_next, "ddpm")
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # the same step through diffusers' timesteps (k = n - 1); diffusers' data end k = -1 does not exist
    if n_next >= 1:
        k, k_next = n - 1, n_next - 1
        tk, tk_next = to_book_time(float(k), "diffusers"), to_book_time(float(k_next), "diffusers")
        yk = to_book_state(x, k, "diffusers")
        vk = to_book_velocity(eps, x, k, "diffusers")
        got_k = from_book_state(yk + (tk_next - tk) * vk, tk_next, "diffusers")
        torch.testing.assert_close(got_k, expected, rtol=1e-12, atol=1e-12)


def test_a_ddim_trajectory_is_euler_on_the_book_time_grid():
    g = fmlib.seeded_generator(3)
    x = torch.randn(6, 2, generator=g, dtype=F64)
    steps = [1000, 800, 600, 400, 200, 100, 20]

    def eps_model(z, n):  # a smooth stand-in for a network eps(x_n, n)
        return torch.tanh(z) * (n / 1000) + 0.1 * z

    ddim = x.clone()
    for n, n_next in zip(steps, steps[1:]):
        ddim = ddim_step(ddim, eps_model(ddim, n), n, n_next)
    y = to_book_state(x, steps[0], "ddpm")
    for n, n_next in zip(steps, steps[1:]):
        t, t_next = to_book_time(float(n), "ddpm"), to_book_time(float(n_next), "ddpm")
        x_n = from_book_state(y, t, "ddpm")
        v = to_book_velocity(eps_model(x_n, n), x_n, n, "ddpm")
        y = y + (t_next - t) * v
    torch.testing.assert_close(
        from_book_state(y, to_book_time(float(steps[-1]), "ddpm"), "ddpm"), ddim, rtol=1e-11, atol=1e-11
    )


def test_an_edm_euler_step_and_an_sd3_euler_step_are_book_euler_steps():
    g = fmlib.seeded_generator(4)
    x = torch.randn(4, 3, generator=g, dtype=F64)
    pred = torch.randn(4, 3, generator=g, dtype=F64)
    # EDM (Karras et al. 2022, Algorithm 1 without the Heun correction): d = (x - D) / sigma
    s, s_next = 2.5, 0.7
    x_edm = x + (s_next - s) * (x - pred) / s
    t, t_next = to_book_time(s, "edm"), to_book_time(s_next, "edm")
    y_next = to_book_state(x, s, "edm") + (t_next - t) * to_book_velocity(pred, x, s, "edm")
    torch.testing.assert_close(from_book_state(y_next, t_next, "edm"), x_edm, rtol=1e-12, atol=1e-12)
    # SD3 samples from t = 1 (noise) to 0 with x <- x + (t_next - t) v
    r, r_next = 0.8, 0.55
    x_sd3 = x + (r_next - r) * pred
    t, t_next = to_book_time(r, "sd3"), to_book_time(r_next, "sd3")
    y_next = x + (t_next - t) * to_book_velocity(pred, x, r, "sd3")
    torch.testing.assert_close(y_next, x_sd3, rtol=1e-12, atol=1e-12)


# -- guidance scales ----------------------------------------------------------------------------------------------


def test_guidance_scales_by_hand():
    cond, uncond = torch.tensor([[2.0, -1.0]]), torch.tensor([[0.5, 1.0]])
    # diffusers: noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond), scale 7.5
    by_hand = torch.tensor([[0.5 + 7.5 * 1.5, 1.0 + 7.5 * (-2.0)]])
    assert to_book_guidance(7.5, "diffusers") == 7.5 and to_book_guidance(7.5, "sd3") == 7.5
    torch.testing.assert_close(cfg_combine(cond, uncond, to_book_guidance(7.5, "diffusers")), by_hand)
    # Ho & Salimans (2022), eq. 6: (1 + w) eps_cond - w eps_uncond with w = 0.3
    by_hand = torch.tensor([[1.3 * 2.0 - 0.3 * 0.5, 1.3 * (-1.0) - 0.3 * 1.0]])
    assert to_book_guidance(0.3, "ho_salimans") == pytest.approx(1.3, abs=1e-15)
    torch.testing.assert_close(cfg_combine(cond, uncond, to_book_guidance(0.3, "ho_salimans")), by_hand)
    for name in fmlib.GUIDANCE_CONVENTIONS:
        for w in (0.0, 1.0, 2.5, 7.5):
            assert to_book_guidance(from_book_guidance(w, name), name) == pytest.approx(w, abs=1e-15)
            assert from_book_guidance(to_book_guidance(w, name), name) == pytest.approx(w, abs=1e-15)


@pytest.mark.parametrize("name", ["ddpm", "edm", "score_sde_vp"])
def test_guiding_the_prediction_is_guiding_the_velocity(name):
    # the maps are affine in the prediction with label-independent coefficients, so the scale carries over
    tau = TIMES[name][1:4]
    g = fmlib.seeded_generator(5)
    x, cond, uncond = (torch.randn(3, 2, generator=g, dtype=F64) for _ in range(3))
    w = 3.0
    guided_then_converted = to_book_velocity(cfg_combine(cond, uncond, w), x, tau, name)
    converted_then_guided = cfg_combine(to_book_velocity(cond, x, tau, name), to_book_velocity(uncond, x, tau, name), w)
    torch.testing.assert_close(guided_then_converted, converted_then_guided, rtol=1e-12, atol=1e-12)


# -- the installed libraries ----------------------------------------------------------------------------------------


def test_flow_matching_schedulers_give_the_same_alpha_and_sigma():
    scheduler = pytest.importorskip("flow_matching.path.scheduler")
    path_mod = pytest.importorskip("flow_matching.path")
    tau = torch.tensor([0.05, 0.3, 0.6, 0.9, 1.0], dtype=F64)
    # flow_matching's VPScheduler is the VP SDE in flow time t = 1 - tau (data at t = 1)
    out = scheduler.VPScheduler()(1 - tau)
    torch.testing.assert_close(to_book_time(tau, "score_sde_vp"), out.alpha_t / (out.alpha_t + out.sigma_t))
    ones = torch.ones(5, 1, dtype=F64)
    torch.testing.assert_close(to_book_state(ones, tau, "score_sde_vp"), ones / (out.alpha_t + out.sigma_t)[:, None])
    # fmlib's own VPScheduler agrees
    ours = fmlib.VPScheduler()(1 - tau[:-1])
    torch.testing.assert_close(to_book_time(tau[:-1], "score_sde_vp"), ours.alpha_t / (ours.alpha_t + ours.sigma_t))
    # a conditional velocity of flow_matching's VP path (d x / dt, t = 1 - tau) is the CondOT velocity x1 - x0
    g = fmlib.seeded_generator(6)
    x0, x1 = torch.randn(4, 2, generator=g, dtype=F64), torch.randn(4, 2, generator=g, dtype=F64)
    t_fm = torch.tensor([0.1, 0.4, 0.7, 0.95], dtype=F64)
    sample = path_mod.AffineProbPath(scheduler.VPScheduler()).sample(x_0=x0, x_1=x1, t=t_fm)
    v = to_book_velocity(-sample.dx_t, sample.x_t, 1 - t_fm, "score_sde_vp", prediction="velocity")
    torch.testing.assert_close(v, x1 - x0, rtol=1e-10, atol=1e-10)
    # CondOT: the library's time is the book's
    fm = path_mod.CondOTProbPath().sample(x_0=x0, x_1=x1, t=t_fm)
    book = fmlib.LinearPath().sample(x0, x1, t_fm)
    torch.testing.assert_close(to_book_state(fm.x_t, t_fm, "flow_matching"), book.x_t)
    torch.testing.assert_close(to_book_velocity(fm.dx_t, fm.x_t, t_fm, "flow_matching"), book.u_t)


def test_torchcfm_and_sd3_paths_are_the_books_path():
    cfm = pytest.importorskip("torchcfm.conditional_flow_matching")
    g = fmlib.seeded_generator(7)
    x0, x1 = torch.randn(4, 2, generator=g, dtype=F64), torch.randn(4, 2, generator=g, dtype=F64)
    t = torch.tensor([0.1, 0.4, 0.7, 0.95], dtype=F64)
    _, xt, ut = cfm.ConditionalFlowMatcher(sigma=0.0).sample_location_and_conditional_flow(x0, x1, t=t)
    book = fmlib.LinearPath().sample(x0, x1, t)
    torch.testing.assert_close(to_book_state(xt, t, "torchcfm"), book.x_t)
    torch.testing.assert_close(to_book_velocity(ut, xt, t, "torchcfm"), book.u_t)
    # SD3 (Esser et al. 2024, Section 3): z = (1 - r) x_data + r eps, target eps - x_data
    r = 1 - t
    z, target = (1 - r[:, None]) * x1 + r[:, None] * x0, x0 - x1
    torch.testing.assert_close(to_book_time(r, "sd3"), t)
    torch.testing.assert_close(to_book_state(z, r, "sd3"), book.x_t)
    torch.testing.assert_close(to_book_velocity(target, z, r, "sd3"), book.u_t)


# -- bad input ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: to_book_time(0.5, "karras"), ValueError, "convention"),
        (lambda: to_book_time(0.5, None), TypeError, "convention"),
        (lambda: to_book_time(1001, "ddpm"), ValueError, "t must lie in [0, 1000]"),
        (lambda: to_book_time(-0.1, "edm"), ValueError, "t must lie"),
        (lambda: to_book_time(float("inf"), "edm"), ValueError, "t must lie"),
        (lambda: to_book_time(1.5, "sd3"), ValueError, "t must lie in [0, 1]"),
        (lambda: to_book_time(float("nan"), "book"), ValueError, "t must"),
        (lambda: to_book_time("0.5", "book"), TypeError, "t must be"),
        (lambda: from_book_time(0.001, "ddpm"), ValueError, "t must lie"),
        (lambda: from_book_time(1.0, "diffusers"), ValueError, "t must lie"),
        (lambda: from_book_time(0.0, "edm"), ValueError, "t must lie"),
        (lambda: from_book_time(1.2, "book"), ValueError, "t must lie in [0, 1]"),
        (
            lambda: to_book_velocity(torch.zeros(2, 2), torch.zeros(2, 2), 10, "ddpm", "velocity"),
            ValueError,
            "velocity",
        ),
        (lambda: to_book_velocity(torch.zeros(2, 2), torch.zeros(2, 2), 0.5, "book", "x0"), ValueError, "prediction"),
        (lambda: to_book_velocity(torch.zeros(2, 2), torch.zeros(3, 2), 0.5, "book"), ValueError, "pred and x"),
        (
            lambda: to_book_velocity(torch.zeros(2, 2), torch.zeros(2, 2), 0.0, "score_sde_vp", "velocity"),
            ValueError,
            "singular",
        ),
        (lambda: to_book_velocity(torch.zeros(2, 2), torch.zeros(2, 2), 0.0, "book", "epsilon"), ValueError, "alpha_t"),
        (lambda: to_book_guidance(2.0, "ddpm"), ValueError, "no guidance scale"),
        (lambda: to_book_guidance(float("nan"), "diffusers"), ValueError, "w must"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error) as info:
        call()
    assert type(info.value) is error
    assert match in str(info.value), str(info.value)


def test_dtypes_follow_the_inputs():
    assert to_book_time(3, "ddpm").dtype == F64
    assert to_book_time(torch.tensor([3, 4]), "ddpm").dtype == F64
    assert to_book_time(torch.tensor([0.5], dtype=torch.float16), "edm").dtype == torch.float32
    x = torch.randn(3, 2, generator=fmlib.seeded_generator(8))
    assert to_book_velocity(x, x, 500, "ddpm").dtype == torch.float32
    assert to_book_state(x.half(), 500, "ddpm").dtype == torch.float16
    assert math.isclose(float(to_book_time(1.0, "score_sde_ve")), 1 / 51)


@pytest.mark.parametrize("name", ["book", "sd3", "torchcfm"])
def test_flow_velocities_come_back_in_xs_dtype(name):
    # The docstrings promise x's dtype; the flow conventions' velocity (a pass-through or a sign flip) must too.
    x = torch.randn(3, 2, generator=fmlib.seeded_generator(9), dtype=F64)
    v = torch.randn(3, 2, generator=fmlib.seeded_generator(10))
    assert to_book_velocity(v, x, 0.3, name).dtype == F64
    assert from_book_velocity(v, x, 0.3, name).dtype == F64
    assert to_book_velocity(v.double(), x.float(), 0.3, name).dtype == torch.float32


@pytest.mark.parametrize("convert", [to_book_velocity, from_book_velocity])
def test_a_non_finite_input_is_not_called_a_singular_time(convert):
    # At t = 0.5 EDM's velocity map is regular: a NaN input must be named as such, not blamed on the time.
    x = torch.randn(2, 2, generator=fmlib.seeded_generator(11))
    with pytest.raises(ValueError) as info:
        convert(torch.full((2, 2), math.nan), x, 0.5, "edm", "velocity")
    assert "singular" not in str(info.value) and "finite" in str(info.value), str(info.value)
    with pytest.raises(ValueError, match="singular"):
        convert(torch.zeros(2, 2), x, 0.0 if convert is to_book_velocity else 1.0, "score_sde_vp", "velocity")
