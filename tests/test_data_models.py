"""Toy data, the MLP and the training loop."""

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
