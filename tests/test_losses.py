"""The CFM loss: squared norm over features, mean over the batch."""

import pytest
import torch

from fmlib import GaussianPath, LinearPath, cfm_loss, logit_normal


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


# -- couplings, per-row conditions, weights and time samplers -----------------------------------------------


def test_weighted_loss_matches_hand_computation(gen):
    x0 = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    x1 = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    t = torch.rand(6, generator=gen, dtype=torch.float64)
    w = torch.tensor([0.0, 1.0, 2.5, 0.5, 3.0, 1.0], dtype=torch.float64)

    def model(x, t):
        return 0.3 * x + t[:, None]

    total = 0.0
    for b in range(6):  # row by row, in plain Python: mean over the batch of w_b |v_b - u_b|^2
        xt = [(1 - float(t[b])) * float(x0[b, j]) + float(t[b]) * float(x1[b, j]) for j in range(3)]
        err = [0.3 * xt[j] + float(t[b]) - (float(x1[b, j]) - float(x0[b, j])) for j in range(3)]
        total += float(w[b]) * sum(e * e for e in err)
    loss = cfm_loss(model, LinearPath(), x1, x0=x0, t=t, weights=w)
    assert abs(float(loss) - total / 6) < 1e-12


def test_unit_weights_give_the_unweighted_loss(gen):
    x1 = torch.randn(8, 2, generator=gen)
    model = torch.nn.Linear(2, 2)
    a = cfm_loss(lambda x, t: model(x), LinearPath(), x1, generator=torch.Generator().manual_seed(0))
    b = cfm_loss(
        lambda x, t: model(x), LinearPath(), x1, generator=torch.Generator().manual_seed(0), weights=torch.ones(8)
    )
    torch.testing.assert_close(a, b)


def _class_data(gen, batch=64, classes=4):
    centres = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, 0.0], [0.0, -3.0]])[:classes]
    labels = torch.randint(0, classes, (batch,), generator=gen)
    return centres, labels, centres[labels]


def _oracle(centres):
    """Knows x1 = centres[y] from the label, so on the straight path x1 - x0 = (x1 - x_t) / (1 - t)."""

    def model(x, t, y):
        return (centres[y] - x) / (1 - t)[:, None]

    return model


def test_label_conditional_oracle_has_zero_loss_with_a_permuting_coupling(gen):
    centres, labels, x1 = _class_data(gen)
    x0 = torch.randn(x1.shape, generator=gen)
    t = 0.9 * torch.rand(x1.shape[0], generator=gen)

    def sort_coupling(x0, x1):  # pairs the i-th smallest x0[:, 0] with the i-th smallest x1[:, 0]
        pi = torch.empty(x1.shape[0], dtype=torch.long)
        pi[torch.argsort(x0[:, 0])] = torch.argsort(x1[:, 0])
        return pi

    pi = sort_coupling(x0, x1)
    assert not torch.equal(pi, torch.arange(x1.shape[0]))  # it does permute
    loss = cfm_loss(_oracle(centres), LinearPath(), x1, x0=x0, t=t, coupling=sort_coupling, cond=labels)
    assert float(loss) < 1e-10
    # had the labels not followed x1, the oracle would be wrong on the rows whose label changed
    wrong = cfm_loss(_oracle(centres), LinearPath(), x1[pi], x0=x0, t=t, cond=labels)
    assert float(wrong) > 1.0


def test_weights_follow_the_coupling(gen):
    x0, x1 = torch.zeros(4, 1), torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    w = torch.tensor([0.0, 0.0, 0.0, 1.0])  # only the row x1 = 4 counts
    reverse = lambda a, b: torch.arange(3, -1, -1)  # noqa: E731
    loss = cfm_loss(lambda x, t: torch.zeros_like(x), LinearPath(), x1, x0=x0, t=0.5, coupling=reverse, weights=w)
    assert float(loss) == 16.0 / 4  # |x1 - x0|^2 = 16 for the row x1 = 4, wherever the coupling puts it


def test_a_coupling_returns_indices_not_pairs(gen):
    # one coupling protocol: pi such that x1[pi] goes with x0; a pair (x0, x1) is refused, naming the fix
    x0, x1 = torch.randn(5, 2, generator=gen), torch.randn(5, 2, generator=gen)
    with pytest.raises(TypeError, match="coupling must return an int64 index tensor.*ot_assignment"):
        cfm_loss(lambda x, t: x, LinearPath(), x1, x0=x0, t=0.3, coupling=lambda a, b: (a, b.flip(0)))


@pytest.mark.parametrize(
    ("pi", "message"),
    [
        (torch.arange(4), r"shape \(5,\); got shape \(4,\)"),
        (torch.arange(5.0), "int64 index tensor of shape"),
        (torch.tensor([0, 1, 2, 3, 5]), r"indices in 0..4; got values in \[0, 5\]"),
        (torch.tensor([-1, 1, 2, 3, 4]), r"indices in 0..4; got values in \[-1, 4\]"),
    ],
)
def test_bad_coupling_output_raises(pi, message):
    with pytest.raises(ValueError, match=f"coupling must return.*{message}"):
        cfm_loss(lambda x, t: x, LinearPath(), torch.zeros(5, 2), coupling=lambda a, b: pi)
    with pytest.raises(TypeError, match="coupling must return"):
        cfm_loss(lambda x, t: x, LinearPath(), torch.zeros(5, 2), coupling=lambda a, b: [0, 1, 2, 3, 4])


@pytest.mark.parametrize(
    ("w", "message"),
    [
        (torch.tensor([1.0, -0.5, 1.0]), "weights must be >= 0; got a minimum of -0.5"),
        (torch.tensor([1.0, float("nan"), 1.0]), "weights must be finite"),
        (torch.tensor([1.0, float("inf"), 1.0]), "weights must be finite"),
        (torch.ones(3, 1), r"weights must have shape \(3,\)"),
        (torch.ones(4), r"weights must have shape \(3,\)"),
    ],
)
def test_bad_weights_raise(w, message):
    with pytest.raises(ValueError, match=message):
        cfm_loss(lambda x, t: x, LinearPath(), torch.zeros(3, 2), weights=w)


def test_bad_cond_raises():
    with pytest.raises(ValueError, match=r"cond must have one row per sample, shape \(3, ...\); got shape \(2,\)"):
        cfm_loss(lambda x, t, y: x, LinearPath(), torch.zeros(3, 2), cond=torch.zeros(2))
    with pytest.raises(TypeError, match="cond must be a tensor"):
        cfm_loss(lambda x, t, y: x, LinearPath(), torch.zeros(3, 2), cond=[0, 1, 2])


def test_model_is_called_with_cond(gen):
    seen = {}

    def model(x, t, y):
        seen["y"] = y
        return torch.zeros_like(x)

    y = torch.tensor([2, 0, 1])
    cfm_loss(model, LinearPath(), torch.zeros(3, 2), cond=y, generator=gen)
    assert torch.equal(seen["y"], y)


def test_logit_normal_draws_follow_its_cdf():
    import numpy as np
    from scipy.stats import kstest, norm

    for loc, scale in ((0.0, 1.0), (0.5, 0.7), (-1.0, 2.0)):

        def cdf(t, loc=loc, scale=scale):
            return norm.cdf((np.log(t) - np.log1p(-t) - loc) / scale)

        g = torch.Generator().manual_seed(7)
        t = logit_normal(loc, scale)(20_000, g, torch.float64, torch.device("cpu"))
        assert t.shape == (20_000,) and t.dtype == torch.float64
        assert kstest(t.numpy(), cdf).pvalue > 1e-3
        u = torch.rand(20_000, generator=g, dtype=torch.float64)  # the test can tell uniform draws apart
        assert kstest(u.numpy(), cdf).pvalue < 1e-6


def test_time_sampler_draws_the_times_of_the_loss(gen):
    calls = []

    def half(n, generator, dtype, device):
        calls.append((n, dtype))
        return torch.full((n,), 0.5, dtype=dtype, device=device)

    x0, x1 = torch.randn(4, 2, generator=gen), torch.randn(4, 2, generator=gen)
    a = cfm_loss(lambda x, t: x * t[:, None], LinearPath(), x1, x0=x0, time_sampler=half)
    b = cfm_loss(lambda x, t: x * t[:, None], LinearPath(), x1, x0=x0, t=0.5)
    torch.testing.assert_close(a, b)
    assert calls == [(4, torch.float32)]
    # the named samplers draw from the generator: equal seeds, equal losses
    for name in ("uniform", "logit_normal", logit_normal(0.3, 0.5)):
        losses = [
            cfm_loss(
                lambda x, t: x, LinearPath(), x1, x0=x0, time_sampler=name, generator=torch.Generator().manual_seed(1)
            )
            for _ in range(2)
        ]
        assert losses[0] == losses[1]


@pytest.mark.parametrize(
    ("sampler", "error", "message"),
    [
        (lambda n, g, d, dev: torch.full((n,), 1.5), ValueError, r"time_sampler must return times in \[0, 1\]"),
        (lambda n, g, d, dev: torch.full((n,), -0.1), ValueError, r"time_sampler must return times in \[0, 1\]"),
        (lambda n, g, d, dev: torch.full((n,), float("nan")), ValueError, "time_sampler must return finite times"),
        (lambda n, g, d, dev: torch.rand(n + 1), ValueError, r"time_sampler must return a tensor of shape \(4,\)"),
        (lambda n, g, d, dev: torch.rand(n, 1), ValueError, r"time_sampler must return a tensor of shape \(4,\)"),
        (lambda n, g, d, dev: [0.5] * n, TypeError, "time_sampler must return a floating tensor"),
        ("beta", ValueError, "time_sampler must be 'uniform', 'logit_normal' or a callable"),
        (0.5, TypeError, "time_sampler must be 'uniform', 'logit_normal' or a callable"),
    ],
)
def test_bad_time_sampler_raises(sampler, error, message):
    with pytest.raises(error, match=message):
        cfm_loss(lambda x, t: x, LinearPath(), torch.zeros(4, 2), time_sampler=sampler)


@pytest.mark.parametrize(("loc", "scale"), [(0.0, 0.0), (0.0, -1.0), (float("nan"), 1.0), (0.0, float("inf"))])
def test_bad_logit_normal_parameters_raise(loc, scale):
    with pytest.raises(ValueError, match="logit_normal: (loc|scale) must be"):
        logit_normal(loc, scale)
