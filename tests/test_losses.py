"""The CFM loss: squared norm over features, mean over the batch."""

import pytest
import torch

from fmlib import GaussianPath, LinearPath, cfm_loss


@pytest.mark.parametrize("row", range(4))
def test_one_row_off_gives_loss_two_and_gradient_on_that_row_only(row, gen):
    x0 = torch.randn(4, 2, generator=gen)
    x1 = torch.randn(4, 2, generator=gen)
    offset = torch.zeros(4, 2)
    offset[row] = torch.tensor([2.0, 2.0])
    pred = (x1 - x0 + offset).requires_grad_()  # LinearPath target is x1 - x0
    loss = cfm_loss(lambda x, t: pred, LinearPath(), x1, x0=x0, t=0.5)
    assert loss.shape == ()
    torch.testing.assert_close(loss, torch.tensor(2.0))  # |[2, 2]|^2 / 4
    loss.backward()
    expected = torch.zeros(4, 2)
    expected[row] = 2 * offset[row] / 4  # d/dpred of mean_b |pred_b - u_b|^2
    torch.testing.assert_close(pred.grad, expected)


def test_loss_matches_hand_computation_on_gaussian_path(gen):
    x0 = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    x1 = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    t = torch.rand(8, generator=gen, dtype=torch.float64)
    w = torch.randn(3, 3, generator=gen, dtype=torch.float64)

    def model(x, t):
        return x @ w + t[:, None]

    xt = t[:, None] * x1 + (1 - t[:, None]) * x0
    expected = ((model(xt, t) - (x1 - x0)) ** 2).sum(1).mean()
    torch.testing.assert_close(cfm_loss(model, GaussianPath(), x1, x0=x0, t=t), expected)


def test_defaults_are_reproducible_with_a_generator():
    x1 = torch.randn(32, 2)
    model = torch.nn.Linear(2, 2)

    def v(x, t):
        return model(x)

    a = cfm_loss(v, GaussianPath(), x1, generator=torch.Generator().manual_seed(3))
    b = cfm_loss(v, GaussianPath(), x1, generator=torch.Generator().manual_seed(3))
    c = cfm_loss(v, GaussianPath(), x1, generator=torch.Generator().manual_seed(4))
    assert a == b and a != c


def test_model_gets_time_of_shape_b_and_features_of_any_shape(gen):
    seen = {}

    def model(x, t):
        seen["t"] = t.shape
        return torch.zeros_like(x)

    x1 = torch.randn(5, 1, 8, 8, generator=gen)
    cfm_loss(model, GaussianPath(), x1, generator=gen)
    assert seen["t"] == (5,)


def test_wrong_model_output_shape_raises(gen):
    x1 = torch.randn(4, 2, generator=gen)
    with pytest.raises(ValueError, match=r"model\(x_t, t\) must return a tensor of x's shape \(4, 2\); got \(4, 1\)"):
        cfm_loss(lambda x, t: x[:, :1], LinearPath(), x1, generator=gen)


def test_mismatched_x0_raises(gen):
    with pytest.raises(ValueError, match="x0 and x1"):
        cfm_loss(lambda x, t: x, LinearPath(), torch.zeros(4, 2), x0=torch.zeros(3, 2))


def test_bad_time_raises():
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        cfm_loss(lambda x, t: x, LinearPath(), torch.zeros(4, 2), t=2.0)
