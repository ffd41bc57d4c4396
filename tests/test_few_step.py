"""Few-step generation: flow maps, the MeanFlow identity and loss, shortcut models, progressive distillation.

The reference is Gaussian data x1 ~ N(mu, s^2 I): along an affine path x_t = alpha_t x1 + sigma_t x0 the marginal is
N(m_t, S_t^2 I) with m_t = alpha_t mu and S_t^2 = alpha_t^2 s^2 + sigma_t^2, its velocity is affine in x, and the
flow map is X_{r,t}(x) = m_t + (S_t / S_r)(x - m_r) (the one increasing affine map that pushes N(m_r, S_r^2 I) onto
N(m_t, S_t^2 I)); the average velocity is u = (X_{r,t}(x) - x) / (t - r).
"""

import os
import pickle
import socket

import pytest
import torch

import fmlib
from fmlib import (
    AffinePath,
    CondOTScheduler,
    CosineScheduler,
    GaussianPath,
    LinearPath,
    PolynomialScheduler,
    VPScheduler,
)

MU, S = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.5
AFFINE_PATHS = [
    LinearPath(),
    LinearPath(sigma=0.1),
    GaussianPath(),
    GaussianPath(sigma_min=0.01),
    AffinePath(CondOTScheduler()),
    AffinePath(CosineScheduler()),
    AffinePath(PolynomialScheduler(2.0)),
    AffinePath(VPScheduler()),
]
IDS = [repr(p) for p in AFFINE_PATHS]
SMOOTH_PATHS = [LinearPath(), GaussianPath(), AffinePath(CosineScheduler())]


def moments(path, t):
    """m_t, S_t and their time derivatives, each of shape (B, 1) (t of shape (B,))."""
    c = path.coefficients(t)
    std = torch.sqrt(c.alpha_t**2 * S**2 + c.sigma_t**2)
    d_std = (c.alpha_t * c.d_alpha_t * S**2 + c.sigma_t * c.d_sigma_t) / std
    return (c.alpha_t[:, None] * MU, std[:, None], c.d_alpha_t[:, None] * MU, d_std[:, None])


def velocity(path):
    """The marginal velocity v(x, t) = dm_t + (dS_t / S_t)(x - m_t) of the Gaussian data."""

    def v(x, t):
        m, s_t, dm, ds = moments(path, t)
        return dm + ds / s_t * (x - m)

    return v


def flow_map(path, x, r, t):
    m_r, s_r, _, _ = moments(path, r)
    m_t, s_t, _, _ = moments(path, t)
    return m_t + s_t / s_r * (x - m_r)


def average_velocity(path):
    """u(x, r, t) = (X_{r,t}(x) - x) / (t - r), and v(x, r) where r = t."""
    v = velocity(path)

    def u(x, r, t):
        gap = t - r
        safe = torch.where(gap > 0, gap, torch.ones_like(gap))[:, None]
        return torch.where((gap > 0)[:, None], (flow_map(path, x, r, t) - x) / safe, v(x, r))

    return u


def draws(n, g, low=0.0, gap=0.05):
    """x at time r for the Gaussian data, and times r < t with t - r >= gap."""
    r = low + (1 - gap - low) * torch.rand(n, generator=g, dtype=torch.float64)
    t = r + gap + (1 - r - gap) * torch.rand(n, generator=g, dtype=torch.float64)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x, r, t


# -- the flow map and the average velocity of Gaussian data -------------------------------------------------------


@pytest.mark.parametrize("path", SMOOTH_PATHS, ids=repr)
def test_the_gaussian_marginal_velocity_is_the_posterior_mean_of_the_conditional_velocity(path, gen):
    """v from the moments against path.x1_to_velocity of E[x1 | x_t] = mu + alpha s^2 / S^2 (x - alpha mu)."""
    x, t = torch.randn(64, 2, generator=gen, dtype=torch.float64), torch.rand(64, generator=gen, dtype=torch.float64)
    t = 0.02 + 0.96 * t
    c = path.coefficients(t)
    a, S2 = c.alpha_t[:, None], c.alpha_t[:, None] ** 2 * S**2 + c.sigma_t[:, None] ** 2
    x1_hat = MU + a * S**2 / S2 * (x - a * MU)
    assert torch.allclose(velocity(path)(x, t), path.x1_to_velocity(x1_hat, x, t), rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", SMOOTH_PATHS, ids=repr)
def test_the_average_velocity_of_gaussian_data_matches_its_closed_form(path, gen):
    """u from the closed form against the ODE of v solved with RK4 (400 steps), and u(x, t, t) = v(x, t)."""
    v, u = velocity(path), average_velocity(path)
    x = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    for r, t in [(0.0, 1.0), (0.1, 0.35), (0.5, 0.9), (0.3, 0.31)]:
        end = fmlib.integrate(v, x, r, t, steps=400, method="rk4")
        rr, tt = torch.full((16,), r, dtype=torch.float64), torch.full((16,), t, dtype=torch.float64)
        assert torch.allclose(u(x, rr, tt), (end - x) / (t - r), rtol=0, atol=1e-9), (r, t)
    tt = torch.full((16,), 0.4, dtype=torch.float64)
    assert torch.allclose(u(x, tt - 1e-7, tt), v(x, tt), rtol=0, atol=1e-5)  # the limit r -> t is v


@pytest.mark.parametrize("path", SMOOTH_PATHS, ids=repr)
def test_the_meanflow_identity_holds_with_a_plus_sign_in_the_books_time(path, gen):
    """u(x, r, t) = v(x, r) + (t - r) d/dr u(x, r, t), the total derivative along the flow, to 1e-10 in float64."""
    v, u = velocity(path), average_velocity(path)
    x, r, t = draws(256, gen)
    target = fmlib.meanflow_target(u, x, r, t, v(x, r))
    assert target.dtype == torch.float64
    assert (target - u(x, r, t)).abs().max() < 1e-10
    # the paper's sign (minus), carried over without reversing time, is wrong here by 2 (t - r) d/dr u
    dudr = (target - v(x, r)) / (t - r)[:, None]
    assert (v(x, r) - (t - r)[:, None] * dudr - u(x, r, t)).abs().max() > 1e-2
    # d/dr u along the flow by central differences: move the start point along its trajectory
    h = 1e-5
    up = u(flow_map(path, x, r, r + h), r + h, t)
    down = u(flow_map(path, x, r, r - h), r - h, t)
    assert torch.allclose(dudr, (up - down) / (2 * h), rtol=0, atol=1e-6)


# -- the MeanFlow loss ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", AFFINE_PATHS, ids=IDS)
def test_meanflow_loss_with_r_equal_t_is_the_cfm_loss_of_model_x_t_t(path):
    torch.manual_seed(0)
    net = fmlib.MLP(2, hidden=16, depth=2, two_times=True)
    g = torch.Generator().manual_seed(0)
    x1, x0, t = fmlib.two_moons(128, generator=g), torch.randn(128, 2, generator=g), torch.rand(128, generator=g)
    mf = fmlib.meanflow_loss(net, path, x1, x0=x0, r=t, t=t, generator=torch.Generator().manual_seed(5))
    mf.backward()
    g_mf = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    cfm = fmlib.cfm_loss(lambda x, s: net(x, s, s), path, x1, x0=x0, t=t, generator=torch.Generator().manual_seed(5))
    cfm.backward()
    assert torch.allclose(mf, cfm, rtol=1e-6, atol=0), (float(mf), float(cfm))
    assert all(torch.allclose(a, p.grad, rtol=1e-5, atol=1e-7) for a, p in zip(g_mf, net.parameters()))


def test_meanflow_loss_is_the_squared_error_to_the_detached_identity_target(gen):
    """The one-pass loss against a two-pass reference written out: target from meanflow_target, plain regression."""
    torch.manual_seed(1)
    net = fmlib.MLP(2, hidden=16, depth=2, two_times=True)
    x1, x0 = torch.randn(64, 2, generator=gen), torch.randn(64, 2, generator=gen)
    _, r, t = draws(64, gen)
    r, t = r.float(), t.float()
    path = GaussianPath()
    loss = fmlib.meanflow_loss(net, path, x1, x0=x0, r=r, t=t)
    loss.backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    s = path.sample(x0, x1, r)
    target = fmlib.meanflow_target(net, s.x_t, r, t, s.u_t)
    assert not target.requires_grad
    ref = (net(s.x_t, r, t) - target).pow(2).sum(1).mean()
    ref.backward()
    assert torch.allclose(loss, ref, rtol=1e-6)
    assert all(torch.allclose(a, p.grad, rtol=1e-5, atol=1e-7) for a, p in zip(grads, net.parameters()))
    # adaptive weighting with p = 1: each row's error e enters as e / sg(e + c)
    e = (net(s.x_t, r, t) - target).pow(2).sum(1).detach()
    weighted = fmlib.meanflow_loss(net, path, x1, x0=x0, r=r, t=t, adaptive_p=1.0, adaptive_c=0.01)
    assert torch.allclose(weighted, (e / (e + 0.01)).mean(), rtol=1e-5)


def test_the_default_times_have_the_documented_share_with_r_equal_t(gen):
    seen = {}

    def spy(x, r, t):
        seen["r"], seen["t"] = r.detach().clone(), t.detach().clone()
        return torch.zeros_like(x)

    fmlib.meanflow_loss(spy, LinearPath(), torch.zeros(20_000, 1), generator=gen)
    r, t = seen["r"], seen["t"]
    assert bool((r <= t).all()) and float(r.min()) >= 0 and float(t.max()) <= 1
    assert abs(float((r == t).double().mean()) - 0.75) < 0.02  # 0.75 +- 6 standard errors (0.003)
    distinct = r < t
    # t = max of two uniforms (density 2t, mean 2/3), r = min (mean 1/3) on the rows with r != t
    assert abs(float(t[distinct].mean()) - 2 / 3) < 0.02 and abs(float(r[distinct].mean()) - 1 / 3) < 0.02


def test_the_exact_average_velocity_is_a_stationary_point_of_the_meanflow_loss():
    """Model theta * u_exact: the expected gradient is 2 (theta - 1) E[v . u] (the conditional velocity averages to
    v given x_r), so it vanishes at theta = 1 and is 0.4 E[v . u] at theta = 1.2."""
    path = LinearPath()
    u, v = average_velocity(path), velocity(path)

    class Scaled(torch.nn.Module):
        def __init__(self, theta):
            super().__init__()
            self.theta = torch.nn.Parameter(torch.tensor(theta, dtype=torch.float64))

        def forward(self, x, r, t):
            return self.theta * u(x, r, t)

    g = torch.Generator().manual_seed(7)
    batches = []
    for _ in range(10):
        x1 = MU + S * torch.randn(5000, 2, generator=g, dtype=torch.float64)
        x0 = torch.randn(5000, 2, generator=g, dtype=torch.float64)
        _, r, t = draws(5000, g, gap=0.0)
        batches.append((x1, x0, r, t))

    def grads(theta):
        out = []
        for x1, x0, r, t in batches:
            model = Scaled(theta)
            fmlib.meanflow_loss(model, path, x1, x0=x0, r=r, t=t).backward()
            out.append(float(model.theta.grad))
        mean = sum(out) / len(out)
        se = (sum((o - mean) ** 2 for o in out) / (len(out) - 1) / len(out)) ** 0.5
        return mean, se

    g1, se1 = grads(1.0)
    g12, se12 = grads(1.2)
    # the expected value at 1.2 from the same draws, computed without the loss: 0.4 E[v(x_r, r) . u(x_r, r, t)]
    vu = []
    for x1, x0, r, t in batches:
        x_r = path.sample(x0, x1, r).x_t
        vu.append(float((v(x_r, r) * u(x_r, r, t)).sum(1).mean()))
    expected = 0.4 * sum(vu) / len(vu)
    assert abs(g1) < 4 * se1 + 1e-12, (g1, se1)
    assert g12 > 20 * se12 and abs(g12) > 20 * abs(g1), (g12, se12, g1)
    assert abs(g12 - expected) < 4 * se12 + 0.02 * abs(expected), (g12, expected, se12)


# -- sampling a flow map -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SMOOTH_PATHS, ids=repr)
def test_one_jump_of_the_exact_flow_map_lands_on_the_ode_solution(path, gen):
    u, v = average_velocity(path), velocity(path)
    x0 = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    ode = fmlib.integrate(v, x0, steps=400, method="rk4")
    calls = []

    def counted(x, r, t):
        calls.append(1)
        return u(x, r, t)

    one = fmlib.sample_flow_map(counted, x0, steps=1)
    assert len(calls) == 1 and one.dtype == torch.float64
    assert torch.allclose(one, ode, rtol=0, atol=1e-9)
    calls.clear()
    four = fmlib.sample_flow_map(counted, x0, steps=[0.0, 0.1, 0.5, 0.6, 1.0])
    assert len(calls) == 4 and torch.allclose(four, ode, rtol=0, atol=1e-9)
    traj = fmlib.sample_flow_map(u, x0, steps=4, trajectory=True)
    assert traj.shape == (5, 64, 2) and torch.equal(traj[0], x0)
    half = fmlib.integrate(v, x0, 0.0, 0.5, steps=200, method="rk4")
    assert torch.allclose(traj[2], half, rtol=0, atol=1e-9)


def test_one_euler_step_of_the_velocity_misses_where_one_jump_of_the_map_does_not(gen):
    """The reason for flow maps: for Gaussian data whose mean is far from 0, the velocity at t = 0 points at the
    mean of x1 (E[x1] at x = x0 is mu), so one Euler step collapses every point onto mu."""
    path = LinearPath()
    x0 = torch.randn(2000, 2, generator=gen, dtype=torch.float64)
    euler = fmlib.integrate(velocity(path), x0, steps=1)
    jump = fmlib.sample_flow_map(average_velocity(path), x0, steps=1)
    assert torch.allclose(euler, MU.expand_as(euler), atol=1e-12)
    assert abs(float(jump.std(0).mean()) - S) < 0.03


# -- shortcut models -----------------------------------------------------------------------------------------------


def test_the_exact_flow_map_is_self_consistent_under_the_shortcut_loss(gen):
    """s(x, t, d) = u(x, t, t + d): two jumps of d are one jump of 2d, so the consistency term vanishes on every
    level but the finest, whose targets are two Euler steps of size d = 1 / M of s(., ., 0) = v: a squared error
    O(d^2) on a share 1 / log2(M) of the rows, so going from M = 64 to M = 512 divides it by 64 * 9 / 6 = 96.
    A map that overshoots in proportion to d is far off."""
    path = LinearPath()
    u = average_velocity(path)
    x1 = MU + S * torch.randn(4096, 2, generator=gen, dtype=torch.float64)
    exact = lambda x, t, d: u(x, t, (t + d).clamp(max=1.0))  # noqa: E731

    def loss(model, m):
        g = torch.Generator().manual_seed(2)
        return float(fmlib.shortcut_loss(model, path, x1, generator=g, consistency_share=1.0, max_steps=m))

    coarse, fine = loss(exact, 64), loss(exact, 512)
    assert 50 < coarse / fine < 200, (coarse, fine)
    # a jump that overshoots by d / 2 per unit time: two jumps of d overshoot half as much as one of 2d
    off = loss(lambda x, t, d: exact(x, t, d) + 0.5 * d[:, None], 64)
    assert off > 50 * coarse, (off, coarse)
    # flow-matching rows only: the CFM loss of s(x, t, 0) on the same draws
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    fm = fmlib.shortcut_loss(exact, path, x1, generator=g1, consistency_share=0.0)
    cfm = fmlib.cfm_loss(lambda x, t: exact(x, t, torch.zeros_like(t)), path, x1, generator=g2)
    assert torch.allclose(fm, cfm, rtol=1e-12)


def test_the_shortcut_loss_draws_step_sizes_on_the_dyadic_grid_and_times_on_their_multiples(gen):
    seen = {}

    def spy(x, t, d):
        seen.setdefault("calls", []).append((t.clone(), d.clone()))
        return torch.zeros_like(x)

    fmlib.shortcut_loss(spy, LinearPath(), torch.zeros(4000, 2), generator=gen, max_steps=16)
    t, d = seen["calls"][-1]  # the prediction's call: every row
    sc = d > 0
    assert abs(float(sc.double().mean()) - 0.25) < 1e-3
    two_d = d[sc]
    assert set(torch.round(two_d * 16).long().tolist()) == {2, 4, 8, 16}
    k = t[sc] / two_d
    assert torch.allclose(k, k.round(), atol=1e-5) and bool((t[sc] + two_d <= 1 + 1e-6).all())


def test_sample_shortcut_takes_steps_of_size_one_over_steps(gen):
    x0 = torch.randn(8, 2, generator=gen)
    sizes = []

    def s(x, t, d):
        sizes.append(d.clone())
        return torch.ones_like(x)

    out = fmlib.sample_shortcut(s, x0, steps=4)
    assert len(sizes) == 4 and all(torch.allclose(d, torch.full((8,), 0.25)) for d in sizes)
    assert torch.allclose(out, x0 + 1)


# -- progressive distillation --------------------------------------------------------------------------------------


def test_progressive_distillation_targets_two_euler_steps_of_the_teacher(gen):
    """For v(x, t) = -t x the student that jumps like two Euler half steps has zero loss; the teacher itself (one
    Euler step of size h) does not, since v changes along a step."""
    v = lambda x, t: -t[:, None] * x  # noqa: E731
    K = 4
    h = 1.0 / K

    def two_steps(x, t):
        x_mid = x + h / 2 * v(x, t)
        return (x_mid + h / 2 * v(x_mid, t + h / 2) - x) / h

    x1 = torch.randn(256, 2, generator=gen, dtype=torch.float64)
    zero = fmlib.progressive_distillation_loss(two_steps, v, LinearPath(), x1, steps=K, generator=gen)
    assert float(zero) < 1e-28
    assert float(fmlib.progressive_distillation_loss(v, v, LinearPath(), x1, steps=K, generator=gen)) > 1e-4
    # a student trained to zero loss samples like the teacher with twice as many Euler steps
    x0 = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    student = fmlib.integrate(two_steps, x0, steps=K)
    teacher = fmlib.integrate(v, x0, steps=2 * K)
    assert torch.allclose(student, teacher, rtol=0, atol=1e-12)


# -- many processes ------------------------------------------------------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_meanflow_gradients_stay_in_sync_across_two_ddp_processes(tmp_path):
    """Two gloo ranks, each with its own rows: the JVP of the bare module, the prediction through the wrapper, so
    both ranks hold the average of the two local gradients (computed here in one process), on two steps."""
    import _few_step_workers as w

    ctx = torch.multiprocessing.start_processes(
        w.meanflow_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    try:
        while not ctx.join(timeout=120):
            pass
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    ranks = []
    for r in range(2):
        with open(os.path.join(tmp_path, f"rank{r}.pkl"), "rb") as f:
            ranks.append(pickle.load(f))
    net = w.model()
    local = []
    for r in range(2):
        net.zero_grad(set_to_none=True)
        x1, x0, rr, tt = w.rank_batch(r)
        fmlib.meanflow_loss(net, LinearPath(), x1, x0=x0, r=rr, t=tt).backward()
        local.append([p.grad.clone() for p in net.parameters()])
    assert any(not torch.allclose(a, b) for a, b in zip(*local))  # the ranks' own gradients differ
    for step in range(2):
        for a, b, g0, g1 in zip(ranks[0][step], ranks[1][step], *local):
            assert torch.allclose(a, b) and torch.allclose(a, (g0 + g1) / 2, rtol=1e-5, atol=1e-6)
