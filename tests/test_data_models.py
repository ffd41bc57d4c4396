"""Toy data, the MLP and the training loop."""

import copy
import math

import pytest
import torch

import fmlib
from fmlib import DATASETS, MLP, checkerboard, eight_gaussians, sample_data


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_datasets_are_seeded_and_shaped(name):
    a = sample_data(name, 300, generator=torch.Generator().manual_seed(0))
    b = sample_data(name, 300, generator=torch.Generator().manual_seed(0))
    c = sample_data(name, 300, generator=torch.Generator().manual_seed(1))
    assert a.shape == (300, 2) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() < 5
    assert sample_data(name, 10, dtype=torch.float64).dtype == torch.float64


def test_checkerboard_points_lie_in_dark_cells(gen):
    x = checkerboard(5000, generator=gen) + 2.0  # cells [i, i+1) x [j, j+1), i, j in 0..3
    col, row = x[:, 0].floor(), x[:, 1].floor()
    assert torch.all((col + row) % 2 == 0)
    assert len(set(zip(col.tolist(), row.tolist()))) == 8


def test_eight_gaussians_modes(gen):
    x = eight_gaussians(20000, radius=2.0, std=0.1, generator=gen)
    angle = torch.atan2(x[:, 1], x[:, 0]) % (2 * math.pi)
    k = torch.round(angle / (2 * math.pi / 8)) % 8
    counts = torch.bincount(k.long(), minlength=8).float()
    assert counts.min() > 20000 / 8 * 0.9  # each mode about 1/8 of the mass
    assert abs(float(x.norm(dim=1).mean()) - 2.0) < 0.02


def test_two_moons_are_independent_uniform_draws_on_the_arcs():
    # noise = 0: undo the scaling; every point is on the outer arc (cos a, sin a) or the inner arc
    # (1 - cos a, 1/2 - sin a), a in [0, pi], each arc with probability 1/2
    from scipy.stats import kstest

    n = 4000
    x = fmlib.two_moons(n, noise=0.0, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    u = x / 2 + torch.tensor([0.5, 0.25], dtype=torch.float64)
    on_outer = (u.norm(dim=1) - 1).abs() < 1e-12
    on_inner = ((u - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1) - 1).abs() < 1e-12
    assert torch.all(on_outer ^ on_inner)
    share = on_outer.double().mean().item()
    assert abs(share - 0.5) < 4 * math.sqrt(0.25 / n), share
    a = torch.where(on_outer, torch.atan2(u[:, 1], u[:, 0]), torch.atan2(0.5 - u[:, 1], 1 - u[:, 0]))
    assert a.min() >= 0 and a.max() <= math.pi
    # uniform positions (KS test), and drawn independently: a grid of evenly spaced positions (scikit-learn's
    # make_moons) has a KS distance far below that of n independent draws, sqrt(n) D < 0.4 w.p. 0.003
    ks = kstest((a / math.pi).numpy(), "uniform")
    assert 0.4 < math.sqrt(n) * ks.statistic < 1.95, ks  # the Kolmogorov distribution's 0.3% and 99.9% points
    grid = (torch.arange(n // 2, dtype=torch.float64) + 0.5) / (n // 2)
    assert math.sqrt(n) * kstest(grid.numpy(), "uniform").statistic < 0.4  # the check can fail


def test_bad_dataset_arguments():
    with pytest.raises(ValueError, match="name must be one of"):
        sample_data("swiss", 10)
    with pytest.raises(ValueError, match="n must be >= 1"):
        fmlib.two_moons(0)


def test_mlp_shapes_times_and_dtype():
    torch.manual_seed(0)
    model = MLP(4, hidden=16, depth=2)
    x = torch.randn(3, 2, 2)
    assert model(x, 0.5).shape == (3, 2, 2)
    torch.testing.assert_close(model(x, 0.5), model(x, torch.full((3,), 0.5)))
    assert model.double()(x.double(), 0.1).dtype == torch.float64
    with pytest.raises(ValueError, match="x must have 4 features"):
        model.float()(torch.randn(3, 3), 0.5)


# --- half precision: every network runs in bfloat16 and float16 -----------------------------------------


def _relative_error(out, ref):
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def _half_and_reference(model, half):
    """The model in ``half``, and a float32 copy of exactly those (rounded) weights."""
    low = copy.deepcopy(model).to(half)
    return low, copy.deepcopy(low).float()


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=str)
def test_mlp_runs_in_half_precision_and_integrates(half):
    torch.manual_seed(0)
    low, ref = _half_and_reference(MLP(2, hidden=64, depth=3), half)
    x = torch.randn(256, 2).to(half)
    t = torch.rand(256)
    with torch.no_grad():
        out = low(x, t)
        assert out.dtype == half and out.shape == x.shape
        # one rounding per layer: a few units of the half type's precision, whatever the time
        assert _relative_error(out, ref(x.float(), t)) < 4 * torch.finfo(half).eps
        assert _relative_error(low(x, 0.3), ref(x.float(), 0.3)) < 4 * torch.finfo(half).eps
        x1 = fmlib.integrate(low, x, steps=10, method="rk4")
        assert x1.dtype == half
        assert _relative_error(x1, fmlib.integrate(ref, x.float(), steps=10, method="rk4")) < 4 * torch.finfo(half).eps


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=str)
def test_digit_unet_runs_in_half_precision_and_integrates(half):
    torch.manual_seed(0)
    net = fmlib.DigitUNet(channels=8, emb_dim=16)
    torch.nn.init.normal_(net.out.weight, std=0.1)  # the output layer starts at 0: make the field non-zero
    low, ref = _half_and_reference(net, half)
    x = torch.randn(16, 1, 8, 8).to(half)
    t, y = torch.rand(16), torch.arange(16) % 11
    with torch.no_grad():
        out = low(x, t, y)
        assert out.dtype == half and out.shape == x.shape
        assert _relative_error(out, ref(x.float(), t, y)) < 4 * torch.finfo(half).eps
        x1 = fmlib.integrate(lambda x, t: low(x, t, 3), x, steps=5)
        assert x1.dtype == half
        want = fmlib.integrate(lambda x, t: ref(x, t, 3), x.float(), steps=5)
        assert _relative_error(x1, want) < 4 * torch.finfo(half).eps
