"""EmpiricalMarginal against independent computations: dense mixtures, the continuity equation,
self-normalised Monte Carlo over z, and memorisation by the exact minimiser."""

import math
import warnings

import pytest
import torch

from fmlib import (
    AffinePath,
    CosineScheduler,
    EmpiricalMarginal,
    GaussianPath,
    LinearPath,
    PolynomialScheduler,
    ProbPath,
    VPScheduler,
    divergence,
    integrate,
    log_likelihood,
    marginal,
)

PATHS = [GaussianPath(0.0), GaussianPath(0.05), LinearPath(0.0), LinearPath(0.2)]
AFFINE = [AffinePath(CosineScheduler()), AffinePath(PolynomialScheduler(2)), AffinePath(VPScheduler())]


def data(gen, n=40, shape=(2,), dtype=torch.float64):
    return torch.randn(n, *shape, generator=gen, dtype=dtype) * 1.5


def dense_reference(x1, path, x, t):
    """log p_t(x), posterior and marginal velocity by dense sums over z.

    The conditional density given x1 is N(t x1, b_t^2 I) with b_t written out per path; the
    conditional velocity comes from GaussianPath.conditional_velocity (Lipman et al. eq. 21) or,
    for the linear path, from E[x1 - x0 | x_t, x1] by Gaussian conditioning.
    """
    n, b = x1.shape[0], x.shape[0]
    xr = x[:, None].expand(b, n, -1).reshape(b * n, -1)
    x1r = x1[None].expand(b, n, -1).reshape(b * n, -1)
    tr = t[:, None].expand(b, n).reshape(-1)
    if isinstance(path, LinearPath):
        std = torch.sqrt((1 - t) ** 2 + path.sigma**2)
        comp = torch.distributions.Normal(t[:, None, None] * x1[None], std[:, None, None])
        logc = comp.log_prob(x[:, None]).sum(-1)  # (B, N)
    else:  # the path's own conditional density N(alpha_t x1, sigma_t^2 I), tested in test_paths
        logc = path.log_prob(xr, tr, x1=x1r).reshape(b, n)
    log_p = torch.logsumexp(logc, 1) - math.log(n)
    w = torch.softmax(logc, 1)
    if not isinstance(path, LinearPath):
        ucond = path.conditional_velocity(xr, tr, x1=x1r)
    else:
        e_x0 = ((1 - tr) / ((1 - tr) ** 2 + path.sigma**2))[:, None] * (xr - tr[:, None] * x1r)
        ucond = x1r - e_x0
    u = (w[..., None] * ucond.reshape(b, n, -1)).sum(1)
    return log_p, w, u


@pytest.mark.parametrize("path", PATHS + AFFINE, ids=repr)
def test_against_dense_computation(path, gen):
    x1 = data(gen)
    x = torch.randn(30, 2, generator=gen, dtype=torch.float64) * 2
    t = torch.rand(30, generator=gen, dtype=torch.float64) * 0.98
    ref_lp, ref_w, ref_u = dense_reference(x1, path, x, t)
    m = EmpiricalMarginal(x1, path, chunk_size=64)  # force many blocks
    torch.testing.assert_close(m.log_prob(x, t), ref_lp)
    torch.testing.assert_close(m.posterior(x, t), ref_w)
    torch.testing.assert_close(m.velocity(x, t), ref_u)
    torch.testing.assert_close(m.posterior(x, t).sum(1), torch.ones(30, dtype=torch.float64))


def test_time_zero_is_the_source(gen):
    x1 = data(gen)
    x = torch.randn(10, 2, generator=gen, dtype=torch.float64)
    m = EmpiricalMarginal(x1, GaussianPath())
    ref = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(1)
    torch.testing.assert_close(m.log_prob(x, 0.0), ref)
    # at t = 0 the posterior is uniform and u_0(x) = mean(x1) - x
    torch.testing.assert_close(m.velocity(x, 0.0), x1.mean(0) - x)


@pytest.mark.parametrize("path", PATHS + AFFINE, ids=repr)
def test_continuity_equation(path, gen):
    x1 = data(gen, n=25)
    idx = torch.randint(0, 25, (20,), generator=gen)
    t = torch.rand(20, generator=gen, dtype=torch.float64) * 0.8 + 0.1
    # points where the density is not negligible: near the path's means
    x = (
        path.coefficients(t).alpha_t[:, None] * x1[idx] + 0.5 * torch.randn(20, 2, generator=gen, dtype=torch.float64)
    ).requires_grad_()
    m = EmpiricalMarginal(x1, path)
    h = 1e-5
    with torch.no_grad():
        dp_dt = (m.log_prob(x, t + h).exp() - m.log_prob(x, t - h).exp()) / (2 * h)
    flux = m.log_prob(x, t).exp()[:, None] * m.velocity(x, t)  # p_t u_t, shape (B, 2)
    div = sum(torch.autograd.grad(flux[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(2))
    residual = (dp_dt + div).abs()
    relative = residual / (dp_dt.abs() + div.abs())
    assert relative.max() < 1e-4, relative.max()
    # and the check can fail: a wrong field (sign flipped) breaks it
    flux_wrong = m.log_prob(x, t).exp()[:, None] * (-m.velocity(x, t))
    div_wrong = sum(torch.autograd.grad(flux_wrong[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(2))
    assert ((dp_dt + div_wrong).abs() / (dp_dt.abs() + div_wrong.abs())).max() > 0.1


@pytest.mark.parametrize("path", [GaussianPath(0.0), LinearPath(0.5)], ids=repr)
def test_velocity_is_posterior_mean_of_conditional_velocity_monte_carlo(path, gen):
    """Self-normalised importance sampling over z: draw z from its prior, weight by p_t(x | z)."""
    x1 = data(gen, n=30)
    x = torch.tensor([[0.4, -0.7], [1.5, 0.8]], dtype=torch.float64)
    t = 0.6
    m = EmpiricalMarginal(x1, path)
    exact = m.velocity(x, t)
    draws = 200_000
    for k in range(x.shape[0]):
        xk = x[k : k + 1].expand(draws, 2)
        z1 = x1[torch.randint(0, 30, (draws,), generator=gen)]
        z0 = torch.randn(draws, 2, generator=gen, dtype=torch.float64)
        if isinstance(path, GaussianPath):  # z = x1
            logw = path.log_prob(xk, t, x1=z1)
            u = path.conditional_velocity(xk, t, x1=z1)
        else:  # z = (x0, x1), the path's own conditional density and target x1 - x0
            logw = path.log_prob(xk, t, x0=z0, x1=z1)
            u = path.conditional_velocity(xk, t, x0=z0, x1=z1)
        w = torch.softmax(logw, 0)
        estimate = (w[:, None] * u).sum(0)
        stderr = torch.sqrt((w[:, None] ** 2 * (u - estimate) ** 2).sum(0))
        assert torch.all((estimate - exact[k]).abs() < 4 * stderr + 1e-12), (estimate, exact[k], stderr)


def test_exact_minimiser_memorises_training_points(gen):
    x1 = data(gen, n=20)
    spacing = torch.cdist(x1, x1).add(torch.eye(20, dtype=torch.float64) * 1e9).min(1).values.min()
    m = EmpiricalMarginal(x1, GaussianPath())
    x0 = torch.randn(200, 2, generator=gen, dtype=torch.float64)
    ends = (0.5, 0.9, 0.99, 0.999)
    traj = integrate(m.velocity, x0, 0.0, 0.999, steps=999, method="euler", trajectory=True)
    nearest = [float(torch.cdist(traj[round(t * 1000)], x1).min(1).values.max()) for t in ends]
    assert all(a > b for a, b in zip(nearest, nearest[1:])), nearest  # distance -> 0 as t -> 1
    # every particle sits within O(1 - t) of a training point: far closer than the points are to each other
    assert nearest[-1] < 0.05 * float(spacing), (nearest, float(spacing))


def test_image_shaped_features_and_float32(gen):
    x1 = torch.randn(12, 1, 8, 8, generator=gen)
    x = torch.randn(5, 1, 8, 8, generator=gen)
    m = EmpiricalMarginal(x1, GaussianPath(0.01))
    flat = EmpiricalMarginal(x1.flatten(1), GaussianPath(0.01))
    v = m.velocity(x, 0.7)
    assert v.shape == (5, 1, 8, 8) and v.dtype == torch.float32
    torch.testing.assert_close(v.flatten(1), flat.velocity(x.flatten(1), 0.7))
    x64 = x.double()
    torch.testing.assert_close(m.log_prob(x, 0.7).double(), m.log_prob(x64, 0.7), rtol=1e-4, atol=1e-3)


def test_differentiable_in_x(gen):
    x1 = data(gen, n=10)
    m = EmpiricalMarginal(x1, GaussianPath())
    x = torch.randn(3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y: m.velocity(y, 0.4), (x,))
    assert torch.autograd.gradcheck(lambda y: m.log_prob(y, 0.4), (x,))


@pytest.mark.parametrize("path", [GaussianPath(0.0), LinearPath(0.3)] + AFFINE, ids=repr)
def test_score_from_velocity_is_autograd_of_log_prob(path, gen):
    x1 = data(gen, n=12)
    m = EmpiricalMarginal(x1, path)
    x = torch.randn(10, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.rand(10, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    (grad,) = torch.autograd.grad(m.log_prob(x, t).sum(), x)
    with torch.no_grad():
        score = path.velocity_to_score(m.velocity(x, t), x, t)
    torch.testing.assert_close(score, grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(path.velocity_to_x1(m.velocity(x, t), x, t), m.posterior_mean(x, t))


@pytest.mark.parametrize("dtype,t", [(torch.float32, 1e-20), (torch.float64, 1e-200)])
@pytest.mark.parametrize("features", [1, 10])
def test_tiny_t_is_finite_and_correct(dtype, t, features):
    # data {-1, 1}: at t -> 0 the posterior is uniform, xbar -> 0, u_t(x) -> -(1 - sigma_min) x
    d = torch.zeros(2, features, dtype=dtype)
    d[:, 0] = torch.tensor([-1.0, 1.0])
    x = torch.zeros(1, features, dtype=dtype)
    x[0, 0] = 0.5
    m = EmpiricalMarginal(d, GaussianPath(0.01))
    for xq in (x, x.clone().requires_grad_()):  # the fused route and the autograd (cdist) route
        v = m.velocity(xq, t).detach()
        assert torch.isfinite(v).all()
        assert abs(float(v[0, 0]) + 0.495) < 1e-6 and float(v[0, 1:].abs().sum()) == 0.0
        assert torch.isfinite(m.log_prob(xq, t)).all()
    torch.testing.assert_close(m.posterior(x, t), torch.full((1, 2), 0.5, dtype=dtype))


@pytest.mark.parametrize("path", PATHS + AFFINE, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_method_one_float_step_from_the_ends(path, dtype, gen):
    zero, one = torch.tensor(0.0, dtype=dtype), torch.tensor(1.0, dtype=dtype)
    x1 = data(gen, n=7, dtype=dtype)
    m = EmpiricalMarginal(x1, path)
    for features in (2, 12):
        d = torch.randn(7, features, generator=gen, dtype=dtype) if features > 2 else x1
        mm = EmpiricalMarginal(d, path) if features > 2 else m
        x = torch.randn(4, features, generator=gen, dtype=dtype) * 2
        for t in (torch.nextafter(zero, one), torch.nextafter(one, zero)):
            for xq in (x, x.clone().requires_grad_()):
                for out in (mm.velocity(xq, t), mm.log_prob(xq, t), mm.posterior(xq, t), mm.posterior_mean(xq, t)):
                    assert torch.isfinite(out).all() and out.dtype == dtype, (path, float(t))
            assert torch.isfinite(mm.conditional_velocities(x, t)).all()


def test_bfloat16_query_uses_float32_times(gen):
    x1 = data(gen, n=20, dtype=torch.float32)
    m = EmpiricalMarginal(x1, GaussianPath(0.0))
    x = (0.999 * x1[:5] + 0.001 * torch.randn(5, 2, generator=gen)).to(torch.bfloat16)
    v = m.velocity(x, 0.999)  # bfloat16(0.999) would be 1.0, where the marginal has no velocity
    assert v.dtype == torch.bfloat16
    torch.testing.assert_close(v, m.velocity(x.float(), 0.999).to(torch.bfloat16))


# --- bad input -----------------------------------------------------------------------------------


def test_empty_data_raises():
    with pytest.raises(ValueError, match="data must hold at least one point"):
        EmpiricalMarginal(torch.zeros(0, 2), GaussianPath())


def test_feature_shape_mismatch_raises(gen):
    m = EmpiricalMarginal(data(gen), GaussianPath())
    with pytest.raises(ValueError, match=r"x must have the data's feature shape \(2,\).*got \(4, 3\)"):
        m.velocity(torch.zeros(4, 3, dtype=torch.float64), 0.5)


@pytest.mark.parametrize("t", [-0.5, 1.01])
def test_time_outside_unit_interval_raises(t, gen):
    m = EmpiricalMarginal(data(gen), GaussianPath())
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        m.log_prob(torch.zeros(2, 2, dtype=torch.float64), t)


def test_zero_variance_at_t1_raises(gen):
    m = EmpiricalMarginal(data(gen), GaussianPath())
    with pytest.raises(ValueError, match="t must be < 1"):
        m.velocity(torch.zeros(2, 2, dtype=torch.float64), 1.0)


def test_unsupported_path_raises(gen):
    class Other(ProbPath):
        def sample(self, x0, x1, t, generator=None): ...
        def conditional_velocity(self, x, t, x0=None, x1=None): ...
        def log_prob(self, x, t, x0=None, x1=None): ...

    with pytest.raises(TypeError, match=r"path must have a coefficients\(t\) method.*got Other"):
        EmpiricalMarginal(data(gen), Other())


def test_fast_and_autograd_paths_agree(gen):
    # without a graph, few features take the fused per-feature path; with x requiring grad, cdist's exact mode
    x1 = data(gen, n=50)
    x = torch.randn(20, 2, generator=gen, dtype=torch.float64)
    m = EmpiricalMarginal(x1, LinearPath(0.1))
    with torch.no_grad():
        fast = m.velocity(x, 0.7)
    slow = m.velocity(x.clone().requires_grad_(), 0.7)
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-12, atol=1e-12)


# --- the cast-data cache follows the data ---------------------------------------------------------------


def two_point_posterior(x, t, sigma_min):
    """p(z = first | x_t = x) for data {(1, 0), (-1, 0)} on GaussianPath(sigma_min): a logistic in x_1."""
    s = 1 - (1 - sigma_min) * t
    return torch.sigmoid(2 * t * x[:, 0] / s**2)


def test_a_call_under_inference_mode_does_not_poison_later_autograd():
    m = EmpiricalMarginal(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), GaussianPath(0.1))
    x = torch.tensor([[0.5, 0.2]], dtype=torch.float64)  # a float64 query: the float32 data cast and cached
    with torch.inference_mode():
        first = m.velocity(x, 0.5)
    # the divergence by autograd against one by central differences of the same field (float64)
    h, e = 1e-6, torch.eye(2, dtype=torch.float64)
    fd = sum((m.velocity(x + h * e[i], 0.5) - m.velocity(x - h * e[i], 0.5))[0, i] / (2 * h) for i in range(2))
    torch.testing.assert_close(divergence(m.velocity, x, 0.5), fd.reshape(1), rtol=1e-7, atol=1e-9)
    assert torch.isfinite(log_likelihood(m.velocity, x, steps=3)).all()
    torch.testing.assert_close(m.velocity(x, 0.5), first)


def test_reassigned_data_is_used_by_every_dtype():
    data = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    m = EmpiricalMarginal(data, GaussianPath(0.1))
    x = torch.tensor([[0.5, 0.2]], dtype=torch.float64)
    torch.testing.assert_close(m.posterior(x, 0.5)[:, 0], two_point_posterior(x, 0.5, 0.1))
    m.posterior(x.float(), 0.5)
    m.data = -data  # the two points swap
    for xq in (x, x.float()):
        torch.testing.assert_close(m.posterior(xq, 0.5)[:, 1], two_point_posterior(xq, 0.5, 0.1))
    assert m.data.shape == (2, 2) and torch.equal(m.data, -data)
    with pytest.raises(ValueError, match="data must be finite"):
        m.data = torch.full((2, 2), math.nan)
    assert torch.equal(m.data, -data)  # a refused assignment changes nothing


def test_data_changed_in_place_is_used_by_every_dtype():
    m = EmpiricalMarginal(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), GaussianPath(0.1))
    x = torch.tensor([[0.5, 0.2]], dtype=torch.float64)
    m.posterior(x, 0.5), m.posterior(x.float(), 0.5)  # fill the cache for both dtypes
    m.data.neg_()
    for xq in (x, x.float()):
        torch.testing.assert_close(m.posterior(xq, 0.5)[:, 1], two_point_posterior(xq, 0.5, 0.1))
        torch.testing.assert_close(m.velocity(xq, 0.5), m.velocity(x, 0.5).to(xq.dtype))
    m.data[0, 0] = math.inf
    with pytest.raises(ValueError, match="data must be finite"):
        m.velocity(x, 0.5)


def test_data_made_under_inference_mode_serve_autograd_later():
    with torch.inference_mode():
        m = EmpiricalMarginal(torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64), GaussianPath(0.1))
        m.velocity(torch.zeros(1, 2, dtype=torch.float64), 0.5)
    x = torch.tensor([[0.5, 0.2]], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(m.log_prob(x, 0.5).sum(), x)
    # d/dx log p_t(x) = (alpha_t xbar - x) / sigma_t^2, the score of the mixture
    a, s = 0.5, 1 - 0.9 * 0.5
    w = two_point_posterior(x.detach(), 0.5, 0.1)
    xbar = torch.stack([2 * w - 1, torch.zeros_like(w)], 1)
    torch.testing.assert_close(g, (a * xbar - x.detach()) / s**2)


@pytest.mark.parametrize("chunk_size", [2**22, 257])
def test_float32_rows_by_both_routes_match_float64(gen, chunk_size):
    # Times across (0, 1): early rows take the expanded form (one matrix product per block), late rows (small
    # sigma_t, where expanding would lose digits) the differences; both, put back in order, against float64.
    x1 = data(gen, n=300)
    x = torch.randn(64, 2, generator=gen, dtype=torch.float64) * 2
    t = torch.linspace(0.0, 0.99, 64, dtype=torch.float64)
    path = GaussianPath(0.01)
    exact = EmpiricalMarginal(x1, path)
    m32 = EmpiricalMarginal(x1.float(), path, chunk_size=chunk_size)
    with torch.no_grad():
        v64, lp64 = exact.velocity(x, t), exact.log_prob(x, t)
        v32, lp32 = m32.velocity(x.float(), t.float()), m32.log_prob(x.float(), t.float())
    scale = v64.norm(dim=1, keepdim=True).clamp_min(1.0)
    assert ((v32.double() - v64) / scale).abs().max() < 1e-4
    assert ((lp32.double() - lp64).abs() <= 1e-3 + 1e-5 * lp64.abs()).all()  # float32 of log p ~ -900
    # the split is real: some rows each way
    xf, a, s = x.float(), path.coefficients(t.float()).alpha_t, path.coefficients(t.float()).sigma_t
    fast = m32._expansion_ok(xf, a, s, x1.float().pow(2).sum(1))
    assert fast.any() and not fast.all()


def _two_values_data(n=4096, big=4.47):
    # every point at -big except index 1 at +big: a strided subset of the data (every 4th point) misses it
    y = torch.full((n, 1), -big)
    y[1] = big
    return y


@pytest.fixture
def fused_calls(monkeypatch):
    """Every query takes torch.compile's fused kernel (the route from 2^33 pairs on the CPU), in calls of 256
    data points; the list records whether each call returned the kernel's sums."""
    calls = []
    original = marginal._fused_sums

    def counting(*args):
        out = original(*args)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(marginal, "_FUSED_MIN_PAIRS", 1)
    monkeypatch.setattr(marginal, "_FUSED_COLS", 256)
    monkeypatch.setattr(marginal, "_fused_sums", counting)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_kernel_against_the_dense_computation(dtype, fused_calls, gen):
    path = GaussianPath(0.0)
    x1 = data(gen, n=700)
    x = torch.randn(40, 2, generator=gen, dtype=torch.float64) * 2
    t = torch.linspace(0.05, 0.8, 40, dtype=torch.float64)  # where the expanded form holds for every row
    ref_lp, _, ref_u = dense_reference(x1, path, x, t)
    m = EmpiricalMarginal(x1.to(dtype), path)
    with torch.no_grad():
        lp, u = m.log_prob(x.to(dtype), t.to(dtype)), m.velocity(x.to(dtype), t.to(dtype))
    assert len(fused_calls) == 2 * 3 and all(fused_calls)  # 700 points in calls of 256, for each method
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(u.double(), ref_u, rtol=rtol, atol=rtol * float(ref_u.abs().max()))
    torch.testing.assert_close(lp.double(), ref_lp, rtol=rtol, atol=rtol)


def test_a_failing_compiler_leaves_the_eager_loop_with_one_warning(monkeypatch, gen):
    x1, x = data(gen, n=300, dtype=torch.float32), torch.randn(20, 2, generator=gen)
    m = EmpiricalMarginal(x1, GaussianPath())
    with torch.no_grad():
        eager = m.velocity(x, 0.5)

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(marginal, "_fused_exp2_sums", lambda: broken)
    monkeypatch.setattr(marginal, "_fused_failed", [])
    monkeypatch.setattr(marginal, "_FUSED_MIN_PAIRS", 1)
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="could not be compiled.*no C\\+\\+ compiler"):
        first = m.velocity(x, 0.5)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # once is enough: later calls take the eager loop silently
        second = m.velocity(x, 0.5)
    assert torch.equal(first, eager) and torch.equal(second, eager)


def test_past_the_recompile_limit_the_eager_loop_takes_over_with_one_warning(fused_calls, monkeypatch, gen):
    # past torch.compile's limit of compiled variants the kernel would run uncompiled (many times slower than the
    # eager loop, with (rows, data) intermediates): the limit raises instead, and the eager loop takes over
    torch._dynamo.reset()
    monkeypatch.setattr(marginal, "_fused_failed", [])
    x1, x = data(gen, n=300), torch.randn(20, 2, generator=gen, dtype=torch.float64)
    t = torch.full((20,), 0.5, dtype=torch.float64)
    _, _, ref_u = dense_reference(x1, GaussianPath(), x, t)
    m32, m64 = EmpiricalMarginal(x1.float(), GaussianPath()), EmpiricalMarginal(x1, GaussianPath())
    with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=1):
        u32 = m32.velocity(x.float(), 0.5)  # the one variant allowed
        with pytest.warns(RuntimeWarning, match="could not be compiled.*[Rr]ecompile"):
            u64 = m64.velocity(x, 0.5)  # a second variant: over the limit
        again = m64.velocity(x, 0.5)
    assert fused_calls[0] and not fused_calls[-1] and len(marginal._fused_failed) == 1
    torch.testing.assert_close(u32.double(), ref_u, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(u64, ref_u)
    assert torch.equal(again, u64)


@pytest.mark.parametrize("route", ["eager", "fused"])
def test_gradients_with_respect_to_the_data(route, request, gen):
    # data that require grad take the differentiable route (never the product into a reused buffer, nor the
    # fused kernel, which keeps no graph): d log p_t(x) / d x1^(i) and d u_t(x) / d x1^(i) against dense autograd
    if route == "fused":
        request.getfixturevalue("fused_calls")
    y, x = data(gen, n=50), torch.randn(10, 2, generator=gen, dtype=torch.float64)
    t = torch.full((10,), 0.5, dtype=torch.float64)
    yg, yr = y.clone().requires_grad_(), y.clone().requires_grad_()
    m = EmpiricalMarginal(yg, GaussianPath())
    lp, _, u = dense_reference(yr, GaussianPath(), x, t)
    for ours, ref in ((m.log_prob(x, t).sum(), lp.sum()), ((m.velocity(x, t) ** 2).sum(), (u**2).sum())):
        (g,) = torch.autograd.grad(ours, yg)
        (g_ref,) = torch.autograd.grad(ref, yr, retain_graph=True)
        torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("route", ["eager", "fused"])
@pytest.mark.parametrize("query", [5.59, -5.59])
def test_one_dimensional_far_apart_logits_against_the_closed_form(query, route, request):
    # 1D, float32, t = 0.5 on GaussianPath (alpha = sigma = 0.5): the two logits differ by about 100 nats.
    # x = +5.59: the single point at +big dominates, e^100 times each other weight (beyond float32's range
    # from any shift that misses it); x = -5.59: its weight is e^-100 of the others (below float32's smallest
    # normal number). The log density, the posterior mean and the velocity against float64 closed forms, by the
    # eager loop and by the fused kernel.
    if route == "fused":
        request.getfixturevalue("fused_calls")
    y = _two_values_data()
    path = GaussianPath()
    m = EmpiricalMarginal(y, path)
    x = torch.tensor([[query]])
    with torch.no_grad():
        lp, xbar, v = m.log_prob(x, 0.5), m.posterior_mean(x, 0.5), m.velocity(x, 0.5)
    a = s = 0.5
    logits = -((query - a * y.double()[:, 0]) ** 2) / (2 * s**2)
    exact_lp = torch.logsumexp(logits, 0) - math.log(len(y)) - math.log(s) - 0.5 * math.log(2 * math.pi)
    w = torch.softmax(logits, 0)
    exact_xbar = float((w * y.double()[:, 0]).sum())
    exact_v = exact_xbar + (-1 / s) * (query - a * exact_xbar)  # d_alpha = 1, d_sigma / sigma = -1 / s
    assert abs(float(lp) - float(exact_lp)) < 1e-4 * abs(float(exact_lp)) + 1e-5
    assert abs(float(xbar) - exact_xbar) < 1e-5 * 4.47
    assert abs(float(v) - exact_v) < 1e-4 * max(1.0, abs(exact_v))
