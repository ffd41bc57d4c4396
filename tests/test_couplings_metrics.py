"""Minibatch OT couplings and transport metrics, against brute force and closed forms."""

import itertools
import math

import pytest
import torch

from fmlib import (
    integrate,
    minibatch_ot,
    normalized_path_energy,
    path_energy,
    straightness,
    wasserstein2,
)


def test_bug_report_pairs_and_cost():
    x0 = torch.tensor([[0.0], [10.0], [20.0]])
    x1 = torch.tensor([[21.0], [1.0], [11.0]])
    a, b = minibatch_ot(x0, x1)
    assert torch.equal(a, x0)
    assert b.flatten().tolist() == [1.0, 11.0, 21.0]
    assert float((a - b).pow(2).sum()) == 3.0


def test_assignment_is_optimal_permutation_by_brute_force(gen):
    x0 = torch.randn(7, 2, generator=gen, dtype=torch.float64)
    x1 = torch.randn(7, 2, generator=gen, dtype=torch.float64) + 1
    a, b = minibatch_ot(x0, x1)
    cost = float((a - b).pow(2).sum())
    best = min(float((x0 - x1[list(p)]).pow(2).sum()) for p in itertools.permutations(range(7)))
    assert abs(cost - best) < 1e-10
    # a permutation: every row used once
    assert sorted(map(tuple, b.tolist())) == sorted(map(tuple, x1.tolist()))


def test_image_shaped_batches(gen):
    x0 = torch.randn(6, 1, 4, 4, generator=gen)
    x1 = torch.randn(6, 1, 4, 4, generator=gen)
    a, b = minibatch_ot(x0, x1)
    assert b.shape == x1.shape
    assert (a - b).pow(2).sum() <= (x0 - x1).pow(2).sum() + 1e-5


@pytest.mark.parametrize(
    "x0, x1, match",
    [
        (torch.zeros(3, 2), torch.zeros(4, 2), "same shape"),
        (torch.zeros(0, 2), torch.zeros(0, 2), "at least one sample"),
        (torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, 2), "x0 must be finite"),
        (torch.zeros(1, 2), torch.tensor([[float("inf"), 0.0]]), "x1 must be finite"),
    ],
)
def test_coupling_bad_input(x0, x1, match):
    with pytest.raises(ValueError, match=match):
        minibatch_ot(x0, x1)


def test_w2_closed_forms(gen):
    assert wasserstein2(torch.tensor([[0.0], [1.0]]), torch.tensor([[3.0], [4.0]])) == 3.0
    x = torch.randn(50, 2, generator=gen, dtype=torch.float64)
    shift = torch.tensor([3.0, -4.0], dtype=torch.float64)
    assert abs(wasserstein2(x, x + shift) - 5.0) < 1e-9  # a translation is optimal: W2 = |shift|
    assert wasserstein2(x, x) == 0.0
    # unequal sizes through POT: point mass against two points at distance 1 and 3 -> sqrt((1 + 9) / 2)
    assert abs(wasserstein2(torch.zeros(1, 1), torch.tensor([[1.0], [3.0]])) - math.sqrt(5.0)) < 1e-9
    # duplicating every point does not change the measure
    assert abs(wasserstein2(x, torch.cat([x, x]) + shift) - 5.0) < 1e-9


def test_w2_bad_input():
    with pytest.raises(ValueError, match="same feature shape"):
        wasserstein2(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="y must be finite"):
        wasserstein2(torch.zeros(3, 2), torch.full((3, 2), float("nan")))


def test_path_energy_and_npe_of_the_optimal_translation(gen):
    # v = constant shift: straight paths, PE = |shift|^2 = W2^2, so NPE = 0
    x0 = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    shift = torch.tensor([1.0, 2.0], dtype=torch.float64)
    v = lambda x, t: shift.expand_as(x)  # noqa: E731
    assert abs(path_energy(v, x0, steps=10) - 5.0) < 1e-12
    assert normalized_path_energy(v, x0, x0 + shift, steps=10) < 1e-12
    # a detour orthogonal to the shift: same endpoints, PE = |shift|^2 + |p|^2 / 2, so NPE = |p|^2 / (2 |shift|^2)
    p = torch.tensor([2.0, -1.0], dtype=torch.float64)
    w = lambda x, t: (shift + torch.cos(2 * math.pi * t)[:, None] * p).expand_as(x)  # noqa: E731
    assert abs(normalized_path_energy(w, x0, x0 + shift, steps=64) - 0.5) < 1e-9


def test_npe_undefined_when_source_equals_target(gen):
    x0 = torch.randn(8, 2, generator=gen)
    with pytest.raises(ValueError, match="W2"):
        normalized_path_energy(lambda x, t: torch.zeros_like(x), x0, x0)


def test_straightness(gen):
    x0 = torch.randn(32, 2, generator=gen, dtype=torch.float64)
    straight = integrate(lambda x, t: torch.ones_like(x), x0, steps=20, trajectory=True)
    assert straightness(straight) < 1e-20
    # rotation by pi/2 over [0, 1]: |v|^2 = (pi/2)^2 r^2, chord |c|^2 = 2 r^2 and int <v, c> dt = |c|^2,
    # so S = E r^2 (pi^2/4 - 2)
    rot = integrate(
        lambda x, t: (math.pi / 2) * torch.stack([-x[:, 1], x[:, 0]], 1), x0, steps=400, method="rk4", trajectory=True
    )
    expected = float(x0.pow(2).sum(1).mean()) * (math.pi**2 / 4 - 2)
    assert abs(straightness(rot) - expected) < 1e-4 * expected


def test_coupling_cost_equals_scipy_assignment_on_a_large_batch(gen):
    # 300 rows: solved by POT's network simplex in fmlib, checked against SciPy's assignment solver
    from scipy.optimize import linear_sum_assignment

    x0 = torch.randn(300, 2, generator=gen, dtype=torch.float64)
    x1 = torch.randn(300, 2, generator=gen, dtype=torch.float64) * 2
    a, b = minibatch_ot(x0, x1)
    cost = torch.cdist(x0, x1).pow(2).numpy()
    rows, cols = linear_sum_assignment(cost)
    assert abs(float((a - b).pow(2).sum()) - cost[rows, cols].sum()) < 1e-9
    assert len({tuple(r) for r in b.tolist()}) == 300
