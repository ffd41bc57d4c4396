"""Conditional paths: expected values from the path formulas, finite differences and torch.distributions."""

import copy
import inspect
import math
import pickle

import pytest
import torch

import fmlib
from fmlib import (
    AffinePath,
    CondOTScheduler,
    CosineScheduler,
    GaussianPath,
    LinearPath,
    PathSample,
    PolynomialScheduler,
    ProbPath,
    SchrodingerBridgePath,
    VPScheduler,
)

AFFINE = [AffinePath(CosineScheduler()), AffinePath(PolynomialScheduler(2)), AffinePath(VPScheduler())]
# Every path of fmlib: the property tests below run over all of them (test_the_path_table_is_complete keeps it so).
PATHS = [LinearPath(0.0), LinearPath(0.3), GaussianPath(0.0), GaussianPath(0.05), SchrodingerBridgePath(0.5)] + AFFINE


def test_the_path_table_is_complete():
    # each concrete ProbPath that fmlib exports has an instance in PATHS
    exported = {
        obj
        for obj in (getattr(fmlib, name) for name in fmlib.__all__)
        if isinstance(obj, type) and issubclass(obj, ProbPath) and not inspect.isabstract(obj)
    }
    assert exported and exported <= {type(p) for p in PATHS}, exported - {type(p) for p in PATHS}


def draw(gen, b=16, d=3):
    x0 = torch.randn(b, d, generator=gen, dtype=torch.float64)
    x1 = torch.randn(b, d, generator=gen, dtype=torch.float64) * 2 + 1
    return x0, x1


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_u_t_is_finite_difference_of_x_t(path, gen):
    x0, x1 = draw(gen)
    t = torch.rand(16, generator=gen, dtype=torch.float64) * 0.8 + 0.1
    h = 1e-5
    # same noise draw on both sides: reseed the generator for the path's own eps
    xp = path.sample(x0, x1, t + h, generator=torch.Generator().manual_seed(7)).x_t
    xm = path.sample(x0, x1, t - h, generator=torch.Generator().manual_seed(7)).x_t
    fd = (xp - xm) / (2 * h)
    u = path.sample(x0, x1, t, generator=torch.Generator().manual_seed(7)).u_t
    torch.testing.assert_close(u, fd, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("path", [LinearPath(0.0), GaussianPath(0.0), GaussianPath(0.2)], ids=repr)
def test_boundary_at_t0_is_source_draw(path, gen):
    x0, x1 = draw(gen)
    torch.testing.assert_close(path.sample(x0, x1, 0.0).x_t, x0, rtol=0, atol=0)


@pytest.mark.parametrize("path", [LinearPath(0.0), GaussianPath(0.0)], ids=repr)
def test_boundary_at_t1_is_data(path, gen):
    x0, x1 = draw(gen)
    torch.testing.assert_close(path.sample(x0, x1, 1.0).x_t, x1, rtol=0, atol=0)


def test_gaussian_path_with_sigma_min_ends_at_spread_sigma_min(gen):
    x0, x1 = draw(gen)
    s = GaussianPath(0.1).sample(x0, x1, 1.0)
    torch.testing.assert_close(s.x_t, x1 + 0.1 * x0)


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_sample_target_equals_conditional_velocity_at_x_t(path, gen):
    x0, x1 = draw(gen)
    t = torch.rand(16, generator=gen, dtype=torch.float64) * 0.95
    s = path.sample(x0, x1, t, generator=gen)
    assert isinstance(s, PathSample)
    torch.testing.assert_close(path.conditional_velocity(s.x_t, t, x0=x0, x1=x1), s.u_t)
    assert s.t.shape == (16,) and s.x_t.dtype == torch.float64


def test_linear_path_bug_report_case():
    # target is x1 - x0, not x1 - x_t
    path = LinearPath()
    x0, x1 = torch.tensor([[1.0, -1.0]]), torch.tensor([[3.0, 1.0]])
    for t, expected in [(0.0, [1.0, -1.0]), (0.25, [1.5, -0.5]), (1.0, [3.0, 1.0])]:
        s = path.sample(x0, x1, t)
        torch.testing.assert_close(s.x_t, torch.tensor([expected]))
        torch.testing.assert_close(s.u_t, torch.tensor([[2.0, 2.0]]))
        torch.testing.assert_close(path.conditional_velocity(s.x_t, t, x0=x0, x1=x1), torch.tensor([[2.0, 2.0]]))


def test_gaussian_velocity_sign_points_to_x1():
    # The seed slide's (x - x1)/(1 - t) has the wrong sign.
    x, x1, t = torch.tensor([[0.5, -2.0]], dtype=torch.float64), torch.tensor([[3.0, 1.0]], dtype=torch.float64), 0.4
    u = GaussianPath().conditional_velocity(x, t, x1=x1)
    torch.testing.assert_close(u, (x1 - x) / (1 - t))
    assert not torch.allclose(u, (x - x1) / (1 - t))
    # and the flow psi_t(x0) = t x1 + (1 - t) x0 moves with it: finite difference at x = psi_t(x0)
    x0 = (x - t * x1) / (1 - t)
    h = 1e-3
    fd = ((t + h) * x1 + (1 - t - h) * x0 - ((t - h) * x1 + (1 - t + h) * x0)) / (2 * h)
    torch.testing.assert_close(u, fd)


def test_gaussian_velocity_general_sigma_min_closed_form():
    # Lipman et al. (2023), eq. 21, evaluated by hand
    x, x1 = torch.tensor([[1.0, 2.0]]), torch.tensor([[-1.0, 0.5]])
    u = GaussianPath(0.1).conditional_velocity(x, 0.5, x1=x1)
    expected = torch.tensor([[(-1.0 - 0.9 * 1.0) / 0.55, (0.5 - 0.9 * 2.0) / 0.55]])
    torch.testing.assert_close(u, expected)


@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
def test_gaussian_log_prob_against_torch_distributions(sigma_min, gen):
    x0, x1 = draw(gen)
    x = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    t = torch.rand(16, generator=gen, dtype=torch.float64) * 0.9
    std = 1 - (1 - sigma_min) * t
    ref = torch.distributions.MultivariateNormal(
        t[:, None] * x1, covariance_matrix=std[:, None, None] ** 2 * torch.eye(3, dtype=torch.float64)
    ).log_prob(x)
    torch.testing.assert_close(GaussianPath(sigma_min).log_prob(x, t, x1=x1), ref)


def test_linear_log_prob_against_torch_distributions(gen):
    x0, x1 = draw(gen)
    x = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    t = torch.rand(16, generator=gen, dtype=torch.float64)
    ref = torch.distributions.Independent(torch.distributions.Normal((1 - t[:, None]) * x0 + t[:, None] * x1, 0.3), 1)
    torch.testing.assert_close(LinearPath(0.3).log_prob(x, t, x0=x0, x1=x1), ref.log_prob(x))


def test_log_prob_over_image_shaped_features(gen):
    x1 = torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64)
    x = torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64)
    ref = torch.distributions.Normal(0.5 * x1, 0.5).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(GaussianPath().log_prob(x, 0.5, x1=x1), ref)


def test_sampling_statistics_match_gaussian_path(gen):
    # Linear path (sigma = 0) with x0 ~ N(0, I), x1 fixed, has the Gaussian path's law N(t x1, (1 - t)^2 I)
    n, t = 200_000, 0.3
    x1 = torch.tensor([[2.0, -1.0]], dtype=torch.float64).expand(n, 2)
    x0 = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    xt = LinearPath().sample(x0, x1, t).x_t
    se = (1 - t) / math.sqrt(n)
    assert torch.allclose(xt.mean(0), t * x1[0], atol=5 * se)
    assert torch.allclose(xt.std(0), torch.full((2,), 1 - t, dtype=torch.float64), atol=5 * se)


def test_time_as_float_0d_and_batch_agree(gen):
    x0, x1 = draw(gen, b=5)
    path = LinearPath()
    a = path.sample(x0, x1, 0.3).x_t
    b = path.sample(x0, x1, torch.tensor(0.3)).x_t
    c = path.sample(x0, x1, torch.full((5,), 0.3)).x_t
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


@pytest.mark.parametrize("path", AFFINE, ids=repr)
def test_affine_log_prob_against_torch_distributions(path, gen):
    x0, x1 = draw(gen)
    x = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    t = torch.rand(16, generator=gen, dtype=torch.float64) * 0.9
    c = path.scheduler(t)
    ref = torch.distributions.Normal(c.alpha_t[:, None] * x1, c.sigma_t[:, None]).log_prob(x).sum(1)
    torch.testing.assert_close(path.log_prob(x, t, x1=x1), ref)


def test_gaussian_path_is_the_condot_affine_path(gen):
    x0, x1 = draw(gen)
    t = torch.rand(16, generator=gen, dtype=torch.float64)
    a, b = GaussianPath(0.1), AffinePath(CondOTScheduler(0.1))
    assert torch.equal(a.sample(x0, x1, t).x_t, b.sample(x0, x1, t).x_t)
    assert torch.equal(a.sample(x0, x1, t).u_t, b.sample(x0, x1, t).u_t)
    assert repr(a) == "GaussianPath(sigma_min=0.1)" and repr(b) == "AffinePath(CondOTScheduler(sigma_min=0.1))"


def test_linear_path_coefficients_include_the_tube():
    c = LinearPath(0.3).coefficients(torch.tensor([0.0, 0.6, 1.0], dtype=torch.float64))
    torch.testing.assert_close(c.sigma_t, torch.tensor([1.0, 0.4, 0.0], dtype=torch.float64).hypot(torch.tensor(0.3)))
    h = 1e-6
    fd = (LinearPath(0.3).coefficients(0.6 + h).sigma_t - LinearPath(0.3).coefficients(0.6 - h).sigma_t) / (2 * h)
    torch.testing.assert_close(c.d_sigma_t[1], fd)


@pytest.mark.parametrize("path", PATHS, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_field_one_float_step_from_the_ends(path, dtype, gen):
    zero, one = torch.tensor(0.0, dtype=dtype), torch.tensor(1.0, dtype=dtype)
    x0, x1 = (v.to(dtype) for v in draw(gen, b=4))
    for t in (torch.nextafter(zero, one), torch.nextafter(one, zero)):
        s = path.sample(x0, x1, t, generator=gen)
        assert torch.isfinite(s.x_t).all() and torch.isfinite(s.u_t).all() and s.x_t.dtype == dtype
        assert float(s.t[0]) == float(t) and float(t) not in (0.0, 1.0)
        assert torch.isfinite(path.conditional_velocity(s.x_t, t, x0=x0, x1=x1)).all()
        if not (isinstance(path, LinearPath) and path.sigma == 0):
            assert torch.isfinite(path.log_prob(s.x_t, t, x0=x0, x1=x1)).all()


# --- bad input -----------------------------------------------------------------------------------


def test_batch_sizes_differ_raise():
    with pytest.raises(ValueError, match="x0 and x1.*batch sizes differ"):
        LinearPath().sample(torch.zeros(3, 2), torch.zeros(4, 2), 0.5)


def test_feature_shapes_differ_raise():
    with pytest.raises(ValueError, match="x0 and x1"):
        GaussianPath().sample(torch.zeros(3, 2), torch.zeros(3, 3), 0.5)


@pytest.mark.parametrize("t", [-0.1, 1.5, float("nan"), torch.tensor([0.2, 1.2, 0.3])])
def test_time_outside_unit_interval_raises(t):
    with pytest.raises(ValueError, match="t must"):
        LinearPath().sample(torch.zeros(3, 2), torch.zeros(3, 2), t)


def test_time_of_wrong_length_raises():
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(3,\)"):
        LinearPath().sample(torch.zeros(3, 2), torch.zeros(3, 2), torch.rand(4))


def test_negative_sigma_raises():
    with pytest.raises(ValueError, match="sigma must be a finite float >= 0; got -0.1"):
        LinearPath(-0.1)


@pytest.mark.parametrize("s", [-0.01, 1.0, 2.0])
def test_sigma_min_outside_range_raises(s):
    with pytest.raises(ValueError, match=r"sigma_min must lie in \[0, 1\)"):
        GaussianPath(s)


def test_undefined_velocity_and_density_raise_instead_of_inf():
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="t must be < 1"):
        GaussianPath().conditional_velocity(x, 1.0, x1=x)
    with pytest.raises(ValueError, match="t must be < 1"):
        GaussianPath().log_prob(x, 1.0, x1=x)
    with pytest.raises(ValueError, match="no density"):
        LinearPath().log_prob(x, 0.5, x0=x, x1=x)
    with pytest.raises(ValueError, match="needs x1"):
        GaussianPath().conditional_velocity(x, 0.5)


def test_non_tensor_and_integer_inputs_raise_type_error():
    with pytest.raises(TypeError, match="x0 must be a torch.Tensor"):
        LinearPath().sample([[0.0]], torch.zeros(1, 1), 0.5)
    with pytest.raises(TypeError, match="floating dtype"):
        LinearPath().sample(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1), 0.5)


# --- parameters are read-only: the value a path reports is the value it computes with --------------------

READ_ONLY = [
    (lambda: GaussianPath(0.0), "sigma_min", 0.5),
    (lambda: LinearPath(0.0), "sigma", 0.5),
    (lambda: AffinePath(CosineScheduler()), "scheduler", PolynomialScheduler(2)),
    (lambda: SchrodingerBridgePath(0.5), "sigma", 2.0),
    (lambda: CondOTScheduler(0.0), "sigma_min", 0.5),
    (lambda: PolynomialScheduler(2), "n", 3.0),
    (VPScheduler, "beta_min", 1.0),
    (VPScheduler, "beta_max", 5.0),
]


@pytest.mark.parametrize(
    ("make", "name", "value"), READ_ONLY, ids=[f"{m().__class__.__name__}.{n}" for m, n, _ in READ_ONLY]
)
def test_parameters_are_read_only(make, name, value, gen):
    obj = make()
    before = repr(obj)
    kind = type(obj).__name__
    with pytest.raises(AttributeError, match=rf"{kind}.*{name} is read-only.*new {kind}"):
        setattr(obj, name, value)
    with pytest.raises(AttributeError, match="read-only"):
        delattr(obj, name)
    assert repr(obj) == before
    # still what it was built with, in what it reports and in what it computes
    t = torch.tensor([0.3, 0.6], dtype=torch.float64)
    if isinstance(obj, GaussianPath):
        assert obj.sigma_min == 0.0 and torch.equal(obj.std(t), 1 - t)
        torch.testing.assert_close(obj.coefficients(t).sigma_t, 1 - t)
    elif isinstance(obj, LinearPath):
        x0, x1 = draw(gen, b=2)
        torch.testing.assert_close(obj.sample(x0, x1, t).x_t, (1 - t[:, None]) * x0 + t[:, None] * x1)
    elif isinstance(obj, AffinePath):
        torch.testing.assert_close(obj.coefficients(t).alpha_t, torch.sin(math.pi / 2 * t))
    elif isinstance(obj, SchrodingerBridgePath):
        torch.testing.assert_close(obj.std(t), 0.5 * torch.sqrt(t * (1 - t)))
    elif isinstance(obj, CondOTScheduler):
        torch.testing.assert_close(obj(t).sigma_t, 1 - t)
    elif isinstance(obj, PolynomialScheduler):
        torch.testing.assert_close(obj(t).alpha_t, t**2)
    else:  # VP with the defaults (0.1, 20): alpha_t = exp(-T / 2), T = 0.1 s + 9.95 s^2
        s = 1 - t
        torch.testing.assert_close(obj(t).alpha_t, torch.exp(-0.5 * (0.1 * s + 9.95 * s**2)))
    # other attributes, copies and pickles are unaffected
    obj.note = "free"
    assert copy.deepcopy(obj).__repr__() == before and pickle.loads(pickle.dumps(obj)).__repr__() == before
