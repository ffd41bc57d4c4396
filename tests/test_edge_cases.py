"""Edge cases found by trying to break fmlib: each must raise a clear error, never return NaN or inf."""

import pytest
import torch

import fmlib


def test_a_float16_map_that_overflows_raises():
    h = torch.ones(2, 2, dtype=torch.float16)
    # 200 / sigma_t^2 at t = 0.9999 is about 2e10 in float32, inf in float16
    with pytest.raises(ValueError, match="overflowed"):
        fmlib.GaussianPath().velocity_to_score(200 * h, h, 0.9999)


def test_change_scheduler_reports_a_float16_overflow():
    h = torch.ones(2, 2, dtype=torch.float16)
    field = fmlib.change_scheduler(
        lambda x, t: 1e3 * x, fmlib.GaussianPath(), fmlib.AffinePath(fmlib.CosineScheduler())
    )
    with pytest.raises(ValueError, match="overflowed"):
        field(100 * h, 0.999)


def test_integrate_reports_a_state_that_overflows_float16():
    h = torch.ones(2, 2, dtype=torch.float16)
    # 6e4 + 4 * 6e4 / 4 = 1.2e5 > 65504, the largest float16
    with pytest.raises(ValueError, match="NaN or inf"):
        fmlib.integrate(lambda x, t: torch.full_like(x, 6e4), 6e4 * h, steps=4)


def test_cfm_loss_and_train_refuse_non_finite_data():
    nan = torch.full((4, 2), float("nan"))
    with pytest.raises(ValueError, match="x1 must be finite"):
        fmlib.cfm_loss(lambda x, t: 0 * x, fmlib.LinearPath(), nan)
    with pytest.raises(ValueError, match="x0 must be finite"):
        fmlib.cfm_loss(lambda x, t: 0 * x, fmlib.LinearPath(), torch.zeros(4, 2), x0=nan)
    with pytest.raises(ValueError, match="data must be finite"):
        fmlib.train(fmlib.MLP(2, hidden=8), fmlib.LinearPath(), nan, steps=2, batch_size=4, progress=False)


def test_train_stops_at_a_non_finite_loss():
    torch.manual_seed(0)
    data = 1e20 * torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    # squared errors of 1e40 overflow float32 in the first step
    with pytest.raises(ValueError, match="NaN or inf at step 1"):
        fmlib.train(fmlib.MLP(2, hidden=8), fmlib.LinearPath(), data, steps=3, batch_size=4, progress=False)


def test_logit_normal_draws_stay_inside_the_open_interval():
    # scale 8: |loc + scale z| > 17 for about a third of the draws, where float32 sigmoid rounds to 0 or 1
    t = fmlib.logit_normal(0.0, 8.0)(2000, torch.Generator().manual_seed(0), torch.float32, torch.device("cpu"))
    assert bool((t > 0).all()) and bool((t < 1).all())
    loss = fmlib.cfm_loss(
        lambda x, t: 0 * x,
        fmlib.AffinePath(fmlib.VPScheduler()),
        torch.randn(2000, 2, generator=torch.Generator().manual_seed(1)),
        time_sampler=fmlib.logit_normal(0.0, 8.0),
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.isfinite(loss)


def test_ema_checks_a_restored_state_and_needs_parameters():
    ema = fmlib.EMA(torch.nn.Linear(2, 2), 0.9)
    state = ema.state_dict()
    with pytest.raises(ValueError, match="decay"):
        ema.load_state_dict({**state, "decay": 5.0})
    with pytest.raises(ValueError, match="missing"):
        ema.load_state_dict({"shadow": state["shadow"]})
    with pytest.raises(ValueError, match="no.*parameters|has none"):
        fmlib.EMA(torch.nn.ReLU(), 0.9)


def test_divergence_refuses_inference_mode():
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        fmlib.divergence(lambda x, t: 2 * x, torch.randn(3, 2), 0.5)
    # outside it: the divergence of 2x in 2D is 4
    assert torch.allclose(fmlib.divergence(lambda x, t: 2 * x, torch.randn(3, 2), 0.5), torch.full((3,), 4.0))


def test_reflow_pairs_returns_detached_tensors():
    x0 = torch.randn(4, 2, requires_grad=True)
    a, b = fmlib.reflow_pairs(lambda x, t: torch.ones_like(x), x0, steps=2, method="euler")
    assert not a.requires_grad and not b.requires_grad
    assert torch.allclose(b, x0.detach() + 1)


def test_sde_sampling_starts_where_the_snr_stands_still():
    # PolynomialScheduler(2): alpha = t^2 has zero slope at t = 0, so the velocity does not determine the score
    # there; with alpha_0 = 0, p_0 = N(0, I) and the score is -x. Data N(0, I) too: the exact field is
    # u_t(x) = x (d_alpha alpha + d_sigma sigma) / (alpha^2 + sigma^2), and every g keeps N(0, I) at t = 1.
    path = fmlib.AffinePath(fmlib.PolynomialScheduler(2))

    def exact(x, t):
        c = path.coefficients(t)
        r = (c.d_alpha_t * c.alpha_t + c.d_sigma_t * c.sigma_t) / (c.alpha_t**2 + c.sigma_t**2)
        return r[:, None] * x

    x = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = fmlib.integrate_sde(exact, x, path, 0.5, steps=200, generator=torch.Generator().manual_seed(1))
    var = out.var(0)
    # the variance of 20,000 draws of N(0, 1) has a standard error of about 0.01
    assert torch.allclose(var, torch.ones(2, dtype=torch.float64), atol=0.05), var


def test_one_dimensional_batches_are_batches_of_scalars():
    # shape (B,): B samples of one feature, as check_batch accepts and integrate handles
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(6, generator=g), torch.randn(6, generator=g)
    pi = fmlib.ot_assignment(x0, x1)
    # 1D OT is sorting: the k-th smallest x0 goes with the k-th smallest x1
    assert torch.equal(x1[pi][x0.argsort()], x1.sort().values)
    loss = fmlib.cfm_loss(lambda x, t: torch.zeros_like(x), fmlib.LinearPath(), x1, x0=x0, t=0.5)
    assert torch.allclose(loss, (x1 - x0).pow(2).mean())


@pytest.mark.parametrize("scale", [1e-200, 1e200])
def test_ot_and_w2_at_extreme_coordinate_scales(scale):
    # squared coordinates near 1e400 or 1e-400 leave float64; the pairing and W2 / scale must not change
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(40, 2, generator=g, dtype=torch.float64), torch.randn(40, 2, generator=g, dtype=torch.float64)
    pi = fmlib.ot_assignment(x0, x1)
    assert torch.equal(fmlib.ot_assignment(scale * x0, scale * x1), pi)
    w2 = fmlib.wasserstein2(x0, x1)
    assert fmlib.wasserstein2(scale * x0, scale * x1) / scale == pytest.approx(w2, rel=1e-12)
    # W2 of the optimal pairing, computed directly
    assert w2 == pytest.approx(float((x0 - x1[pi]).pow(2).sum(1).mean().sqrt()), rel=1e-12)


def test_sinkhorn_reg_is_in_the_units_of_the_squared_coordinates():
    # the same problem at coordinate scale 1 and 1e100 (reg scaled by 1e200): the same plan, so equally
    # seeded draws give the same pairs; at scale 1e200, reg = 1 is below float64's range relative to the
    # squared coordinates (1e400), and the error says so
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(30, 2, generator=g, dtype=torch.float64), torch.randn(30, 2, generator=g, dtype=torch.float64)
    a = fmlib.sinkhorn_coupling(0.5, generator=torch.Generator().manual_seed(2))(x0, x1)
    b = fmlib.sinkhorn_coupling(0.5e200, generator=torch.Generator().manual_seed(2))(1e100 * x0, 1e100 * x1)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="reg=1 is out of float64's range"):
        fmlib.sinkhorn_coupling(1.0)(1e200 * x0, 1e200 * x1)


@pytest.mark.parametrize(("dtype", "sigma"), [(torch.float16, 1e5), (torch.float32, 1e39)])
def test_schrodinger_bridge_sample_reports_an_overflow(dtype, sigma):
    x0, x1 = torch.zeros(4, 2, dtype=dtype), torch.ones(4, 2, dtype=dtype)
    path = fmlib.SchrodingerBridgePath(sigma)
    with pytest.raises(ValueError, match="overflows"):
        path.sample(x0, x1, 0.5, generator=torch.Generator().manual_seed(0))
    # a sigma the dtype holds samples finitely
    s = fmlib.SchrodingerBridgePath(1.0).sample(x0, x1, 0.5, generator=torch.Generator().manual_seed(0))
    assert s.x_t.dtype == dtype and torch.isfinite(s.x_t).all() and torch.isfinite(s.u_t).all()


@pytest.mark.parametrize("t", [torch.tensor(True), torch.ones(3, dtype=torch.bool), torch.full((3,), 0.5j)])
def test_boolean_or_complex_times_are_refused(t):
    x = torch.zeros(3, 2)
    with pytest.raises(TypeError, match="t must hold real times"):
        fmlib.euler_step(lambda x, t: 0 * x, x, t, 0.1)
    with pytest.raises(TypeError, match="t must hold real times"):
        fmlib.cfm_loss(lambda x, t: 0 * x, fmlib.LinearPath(), x, t=t)
    with pytest.raises(TypeError, match="t must hold real times"):
        fmlib.MLP(2, hidden=8)(x, t)
