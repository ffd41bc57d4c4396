"""ot_assignment, class-conditional and sub-batch OT, the Sinkhorn coupling and reflow pairs.

Reference values come from brute force over all permutations, SciPy's Hungarian-type assignment solver
(``linear_sum_assignment``, not the network simplex the library uses), closed-form entropic plans and flows
known in closed form.
"""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from fmlib import (
    minibatch_ot,
    normalized_path_energy,
    ot_assignment,
    reflow_pairs,
    sinkhorn_coupling,
    wasserstein2,
)

SCALES = [1e-8, 1.0, 1e8]


def _np_cost(x0, x1):
    """Squared distances in NumPy float64, computed independently of fmlib."""
    a, b = x0.double().numpy().reshape(len(x0), -1), x1.double().numpy().reshape(len(x1), -1)
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def _cost(x0, x1, pi):
    c = _np_cost(x0, x1)
    return c[np.arange(len(c)), pi.numpy()].sum()


def _is_permutation(pi, n):
    return pi.dtype == torch.int64 and pi.shape == (n,) and sorted(pi.tolist()) == list(range(n))


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_assignment_matches_brute_force_at_every_scale(gen, scale, dtype):
    for _ in range(3):
        x0 = torch.randn(7, 2, generator=gen, dtype=torch.float64)
        x1 = torch.randn(7, 2, generator=gen, dtype=torch.float64) + 0.5
        x0, x1 = (x0 * scale).to(dtype), (x1 * scale).to(dtype)
        pi = ot_assignment(x0, x1)
        assert _is_permutation(pi, 7)
        c = _np_cost(x0, x1)
        best = min(c[np.arange(7), list(p)].sum() for p in itertools.permutations(range(7)))
        assert _cost(x0, x1, pi) <= best * (1 + 1e-12)


@pytest.mark.parametrize("scale", SCALES)
def test_assignment_cost_never_above_the_assignment_solver(gen, scale):
    # 300 rows: above the size where fmlib itself calls SciPy, so this compares the network simplex with SciPy
    x0 = torch.randn(300, 3, generator=gen, dtype=torch.float64) * scale
    x1 = (torch.randn(300, 3, generator=gen, dtype=torch.float64) * 2 + 1) * scale
    pi = ot_assignment(x0, x1)
    assert _is_permutation(pi, 300)
    c = _np_cost(x0, x1)
    # SciPy on the cost at unit scale (its comparisons are not made at the 1e-16 level of the raw costs)
    rows, cols = linear_sum_assignment(c / scale**2)
    assert _cost(x0, x1, pi) <= c[rows, cols].sum() * (1 + 1e-12)


def test_the_same_pairing_at_every_scale(gen):
    x0 = torch.randn(300, 2, generator=gen, dtype=torch.float64)
    x1 = torch.randn(300, 2, generator=gen, dtype=torch.float64) * 1.5 + 1
    pi = ot_assignment(x0, x1)
    for scale in (1e-8, 1e8):
        assert torch.equal(ot_assignment(x0 * scale, x1 * scale), pi)
        # float32 inputs at that scale: still an optimal pairing of those float32 points
        a, b = (x0 * scale).float(), (x1 * scale).float()
        rows, cols = linear_sum_assignment(_np_cost(a, b) / scale**2)
        assert _cost(a, b, ot_assignment(a, b)) / scale**2 <= _np_cost(a, b)[rows, cols].sum() / scale**2 + 1e-9


def test_w2_and_npe_are_exact_at_every_scale(gen):
    x = torch.randn(150, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(150, 2, generator=gen, dtype=torch.float64) * 0.5 + torch.tensor([2.0, -1.0], dtype=torch.float64)
    c = _np_cost(x, y)
    rows, cols = linear_sum_assignment(c)
    w2_ref = math.sqrt(c[rows, cols].mean())  # equal sizes: W2 is the optimal assignment's mean cost
    assert abs(wasserstein2(x, y) - w2_ref) < 1e-12 * w2_ref
    shift = torch.tensor([1.0, 2.0], dtype=torch.float64)
    npe_ref = normalized_path_energy(lambda z, t: shift.expand_as(z) * 0.9, x, x + shift, steps=4)
    assert abs(npe_ref - 0.19) < 1e-12  # PE = 0.81 |s|^2 against W2^2 = |s|^2
    for scale in SCALES:
        assert abs(wasserstein2(x * scale, y * scale) / scale - w2_ref) < 1e-9 * w2_ref
        assert abs(wasserstein2((x * scale).float(), (y * scale).float()) / scale - w2_ref) < 1e-5 * w2_ref
        npe = normalized_path_energy(
            lambda z, t, c=scale: (c * shift).expand_as(z) * 0.9, x * scale, (x + shift) * scale, 4
        )
        assert abs(npe - npe_ref) < 1e-9


def test_minibatch_ot_is_x1_permuted_by_the_assignment(gen):
    x0 = torch.randn(40, 1, 3, 3, generator=gen)
    x1 = torch.randn(40, 1, 3, 3, generator=gen)
    a, b = minibatch_ot(x0, x1)
    assert torch.equal(a, x0) and not a.requires_grad  # the same points, detached
    assert torch.equal(b, x1[ot_assignment(x0, x1)])


def test_class_conditional_ot_never_pairs_across_labels_and_is_optimal_within(gen):
    n = 30
    labels = torch.randint(0, 4, (n,), generator=gen)
    x0 = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    # data far apart by class, so that unconstrained OT would pair across labels
    x1 = torch.randn(n, 2, generator=gen, dtype=torch.float64) + 5 * labels[:, None].double()
    pi = ot_assignment(x0, x1, labels=labels)
    assert _is_permutation(pi, n)
    assert torch.equal(labels[pi], labels)
    assert not torch.equal(labels[ot_assignment(x0, x1)], labels)  # the constraint matters here
    c = _np_cost(x0, x1)
    for k in labels.unique():
        g = torch.nonzero(labels == k).flatten().numpy()
        rows, cols = linear_sum_assignment(c[np.ix_(g, g)])
        assert c[g, pi.numpy()[g]].sum() <= c[np.ix_(g, g)][rows, cols].sum() * (1 + 1e-12)


def test_sub_batch_ot_is_exact_within_each_block(gen):
    n, b = 50, 16
    x0 = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    x1 = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    pi = ot_assignment(x0, x1, block_size=b)
    assert _is_permutation(pi, n)
    c = _np_cost(x0, x1)
    total = 0.0
    for start in range(0, n, b):
        g = np.arange(start, min(start + b, n))
        assert set(pi.numpy()[g]) == set(g)  # stays within its block
        rows, cols = linear_sum_assignment(c[np.ix_(g, g)])
        total += c[np.ix_(g, g)][rows, cols].sum()
    assert abs(_cost(x0, x1, pi) - total) < 1e-9 * total
    assert _cost(x0, x1, pi) >= _cost(x0, x1, ot_assignment(x0, x1)) - 1e-9  # blocks cannot beat the full problem
    assert torch.equal(ot_assignment(x0, x1, block_size=n), ot_assignment(x0, x1))


def test_one_point_and_ties():
    assert ot_assignment(torch.zeros(1, 3), torch.ones(1, 3)).tolist() == [0]
    pi = ot_assignment(torch.zeros(5, 2), torch.zeros(5, 2))  # every pairing optimal: still a permutation
    assert _is_permutation(pi, 5)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(x0=torch.zeros(3, 2), x1=torch.zeros(4, 2)), ValueError, "same shape"),
        (dict(x0=torch.zeros(3, 2), x1=torch.zeros(3, 3)), ValueError, "same shape"),
        (dict(x0=torch.zeros(0, 2), x1=torch.zeros(0, 2)), ValueError, "at least one sample"),
        (dict(x0=torch.tensor([[math.nan, 0.0]]), x1=torch.zeros(1, 2)), ValueError, "x0 must be finite"),
        (dict(x0=torch.zeros(1, 2), x1=torch.tensor([[math.inf, 0.0]])), ValueError, "x1 must be finite"),
        (
            dict(x0=torch.zeros(2, 2), x1=torch.zeros(2, 2), labels=torch.zeros(3, dtype=torch.long)),
            ValueError,
            "labels",
        ),
        (dict(x0=torch.zeros(2, 2), x1=torch.zeros(2, 2), labels=torch.zeros(2)), ValueError, "labels"),
        (dict(x0=torch.zeros(2, 2), x1=torch.zeros(2, 2), labels=[0, 1]), TypeError, "labels"),
        (dict(x0=torch.zeros(2, 2), x1=torch.zeros(2, 2), block_size=0), ValueError, "block_size"),
        (dict(x0=torch.zeros(2, 2), x1=torch.zeros(2, 2), block_size=8.0), TypeError, "block_size"),
        (dict(x0=torch.zeros(2, 2, dtype=torch.long), x1=torch.zeros(2, 2)), TypeError, "x0"),
    ],
)
def test_assignment_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ot_assignment(**kwargs)


def test_sinkhorn_rows_follow_the_closed_form_entropic_plan(gen):
    # m copies of a two-point problem: by symmetry the entropic plan of the 2m points has, for a row at A, the
    # mass share q = sqrt(r) / (1 + sqrt(r)) on the partners at A', r = exp(-(C_AA' + C_BB' - C_AB' - C_BA') / reg)
    m, reg = 500, 1.0
    a0, b0, a1, b1 = 0.0, 1.0, 0.3, 1.6
    x0 = torch.tensor([[a0]] * m + [[b0]] * m, dtype=torch.float64)
    x1 = torch.tensor([[a1]] * m + [[b1]] * m, dtype=torch.float64)
    r = math.exp(-((a0 - a1) ** 2 + (b0 - b1) ** 2 - (a0 - b1) ** 2 - (b0 - a1) ** 2) / reg)
    q = math.sqrt(r) / (1 + math.sqrt(r))
    pi = sinkhorn_coupling(reg, generator=gen)(x0, x1)
    assert pi.dtype == torch.int64 and pi.shape == (2 * m,)
    share = float((pi[:m] < m).double().mean())
    assert abs(share - q) < 4 * math.sqrt(q * (1 - q) / m)
    share_b = float((pi[m:] >= m).double().mean())
    assert abs(share_b - q) < 4 * math.sqrt(q * (1 - q) / m)


def test_sinkhorn_limits(gen):
    # points a unit apart, partners 0.1 off a permutation: the exact pairing beats every other by a cost of
    # at least about 1, so at reg << 1 the entropic plan is that permutation up to exp(-1 / reg)
    perm = torch.randperm(8, generator=gen)
    x0 = torch.arange(8, dtype=torch.float64)[:, None]
    x1 = x0[perm] + 0.1 * torch.rand(8, 1, generator=gen, dtype=torch.float64)
    exact = ot_assignment(x0, x1)
    assert torch.equal(exact, perm.argsort())
    assert torch.equal(sinkhorn_coupling(0.02, generator=gen)(x0, x1), exact)
    # the log-domain method does not underflow where the plain one would
    with pytest.raises(ValueError, match="underflows"):
        sinkhorn_coupling(2e-4, generator=gen)(x0, x1 + 0.5)
    log_domain = sinkhorn_coupling(2e-4, generator=gen, method="sinkhorn_log", num_iter=5000)
    assert torch.equal(log_domain(x0, x1 + 0.5), exact)  # a translation of x1 does not change the OT pairing
    # too few iterations: the plan misses its marginals, and the coupling says so
    with pytest.warns(UserWarning, match="did not converge"):
        sinkhorn_coupling(2e-4, generator=gen, method="sinkhorn_log", num_iter=20)(x0, x1 + 0.5)
    x0 = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    x1 = torch.randn(64, 2, generator=gen, dtype=torch.float64) + 1
    # huge reg: the independent coupling, every partner equally likely: the mean cost over many draws is the
    # mean of the whole cost matrix
    coupling = sinkhorn_coupling(1e6, generator=gen)
    draws = torch.stack([coupling(x0, x1) for _ in range(50)])
    mean_cost = np.mean([_cost(x0, x1, p) for p in draws]) / 64
    indep = _np_cost(x0, x1).mean()
    assert abs(mean_cost - indep) < 0.05 * indep


def test_sinkhorn_reports_underflow_instead_of_nan(gen):
    x0 = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    x1 = torch.randn(16, 2, generator=gen, dtype=torch.float64) + 30
    with pytest.raises(ValueError, match="reg=1e-06 underflows"):
        sinkhorn_coupling(1e-6)(x0, x1)


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        (dict(reg=0.0), ValueError),
        (dict(reg=-1.0), ValueError),
        (dict(reg=math.nan), ValueError),
        (dict(reg=True), TypeError),
        (dict(reg="1"), TypeError),
        (dict(reg=1.0, method="greenkhorn"), ValueError),
        (dict(reg=1.0, num_iter=0), ValueError),
        (dict(reg=1.0, num_iter=10.0), TypeError),
        (dict(reg=1.0, tol=0.0), ValueError),
        (dict(reg=1.0, method=None), TypeError),
    ],
)
def test_sinkhorn_bad_arguments(kwargs, exc):
    with pytest.raises(exc, match=next(iter(kwargs)) if len(kwargs) == 1 else list(kwargs)[-1]):
        sinkhorn_coupling(**kwargs)


def test_sinkhorn_checks_the_batch():
    with pytest.raises(ValueError, match="same shape"):
        sinkhorn_coupling(1.0)(torch.zeros(3, 2), torch.zeros(4, 2))


def test_reflow_pairs_return_the_endpoints_of_known_flows(gen):
    x0 = torch.randn(32, 2, generator=gen, dtype=torch.float64)
    # v = A x with A a rotation generator times theta: x1 = exp(A) x0, a rotation by theta
    theta = 1.3
    a, b = reflow_pairs(lambda x, t: theta * torch.stack([-x[:, 1], x[:, 0]], 1), x0, steps=100, method="rk4")
    rot = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64)
    assert torch.equal(a, x0) and not a.requires_grad  # the same points, detached
    assert (b - x0 @ rot.T).abs().max() < 1e-9  # RK4 error ~ h^4 = 1e-8 times a small constant
    # a time-dependent field v = 3 t^2: x1 = x0 + 1, exact for RK4 (a cubic in t)
    _, b = reflow_pairs(lambda x, t: 3 * t[:, None] ** 2 * torch.ones_like(x), x0, steps=5, method="rk4")
    assert (b - (x0 + 1)).abs().max() < 1e-13
    # Euler: first order, error close to h / 2 * |d v / dt| integrated = 1/(2 steps) for v = 2t
    _, b = reflow_pairs(lambda x, t: 2 * t[:, None] * torch.ones_like(x), x0, steps=10, method="euler")
    assert (b - (x0 + 1 - 0.1)).abs().max() < 1e-12  # left Riemann sum of 2t: 1 - 1/steps


def test_reflow_pairs_detach_and_report_blow_up():
    w = torch.ones(1, requires_grad=True)
    _, b = reflow_pairs(lambda x, t: w * x, torch.ones(3, 1), steps=10)
    assert not b.requires_grad
    with pytest.raises(ValueError, match="NaN or inf"):
        reflow_pairs(lambda x, t: x**2, torch.full((2, 1), 2.0), steps=100)
    with pytest.raises(ValueError, match="x0 must be finite"):
        reflow_pairs(lambda x, t: x, torch.tensor([[math.nan]]), steps=1)


def _two_point_share(x0, x1, reg):
    """Closed form of the 2x2 entropic plan with uniform marginals: P = [[a, 1/2 - a], [1/2 - a, a]] and
    P_00 P_11 / (P_01 P_10) = exp(-(C_00 + C_11 - C_01 - C_10) / reg), so a / (1/2 - a) = sqrt of that; the
    returned 2a is the chance that each row is drawn with the partner of the same index."""
    c = _np_cost(x0, x1)
    r = math.exp(-(c[0, 0] + c[1, 1] - c[0, 1] - c[1, 0]) / (2 * reg))
    return r / (1 + r)


def test_sinkhorn_pairs_an_outlier_whose_kernel_column_underflows():
    # x1 = (0, L): every exp(-C / reg) of the outlier's column is below float64's range (999^2 / 1000 = 998 >
    # 745), yet the entropic plan pairs x0 = 1 with it with probability e / (1 + e) = 0.731. m copies of each
    # point have the same plan shares (by symmetry), so one call draws m partners for the copies of x0 = 1.
    m = 200
    x0 = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    x1 = torch.tensor([[0.0], [1000.0]], dtype=torch.float64)
    q = _two_point_share(x0, x1, 1000.0)
    assert abs(q - math.e / (1 + math.e)) < 1e-12
    # the plain iterations cannot give that column any mass: refused, and the message says what works
    with pytest.raises(ValueError, match=r"reg=1000 underflows.*x1\[1\].*method='sinkhorn_log'"):
        sinkhorn_coupling(1000.0)(x0, x1)
    coupling = sinkhorn_coupling(1000.0, generator=torch.Generator().manual_seed(0), method="sinkhorn_log")
    pi = coupling(x0.repeat_interleave(m, 0), x1.repeat_interleave(m, 0))
    share = float((pi[m:] >= m).double().mean())
    assert abs(share - q) < 4 * math.sqrt(q * (1 - q) / m), share
    # the near-certain case: probability 1 - 1 / (1 + e^10) = 0.99995 of pairing the outlier
    x1 = torch.tensor([[0.0], [100.0]], dtype=torch.float64)
    assert abs(_two_point_share(x0, x1, 10.0) - 0.9999546) < 1e-7
    with pytest.raises(ValueError, match=r"underflows.*x1\[1\]"):
        sinkhorn_coupling(10.0)(x0, x1)
    coupling = sinkhorn_coupling(10.0, generator=torch.Generator().manual_seed(0), method="sinkhorn_log")
    m = 20  # iterations converge slowly here (the kernel's Hilbert contraction is tanh(5)): keep the problem small
    pi = coupling(x0.repeat_interleave(m, 0), x1.repeat_interleave(m, 0))
    assert int((pi[m:] >= m).sum()) >= m - 1  # expected misses: m / (1 + e^10) = 0.001
