"""Tests of class-conditional training on the digits: data split, U-Net, guidance, training and image metrics."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

import fmlib
from fmlib import (
    DigitClassifier,
    DigitUNet,
    GaussianPath,
    Recipe,
    cfg_combine,
    cfm_loss,
    drop_labels,
    frechet_distance,
    frechet_distance_gaussians,
    guided_velocity,
    image_grid,
    integrate,
    load_digits_split,
    nearest_distances,
    train,
)
from fmlib.data import NUM_CLASSES


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny convolutions: one thread is faster than several, and far faster on a busy shared CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def split():
    return load_digits_split()


def small_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return DigitUNet(channels=8, emb_dim=16, **kwargs)


def randomise_output(model, seed=0):
    # The output layer starts at zero; give it random weights so the field depends on x, t and y.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.out.weight.copy_(0.1 * torch.randn(model.out.weight.shape, generator=g))
    return model


# -- data ---------------------------------------------------------------------------------------------


def test_split_shapes_range_and_types(split):
    assert split.x_train.shape == (1437, 1, 8, 8) and split.x_test.shape == (360, 1, 8, 8)
    assert split.y_train.shape == (1437,) and split.y_test.shape == (360,)
    assert split.x_train.dtype == torch.float32 and split.y_train.dtype == torch.int64
    for x in (split.x_train, split.x_test):
        assert x.min() == -1.0 and x.max() == 1.0
    assert set(split.y_train.tolist()) == set(range(10)) == set(split.y_test.tolist())


def test_split_is_fixed_partition_and_stratified(split):
    again = load_digits_split()
    for a, b in ((split.x_train, again.x_train), (split.y_train, again.y_train), (split.x_test, again.x_test)):
        assert torch.equal(a, b)
    other = load_digits_split(seed=1)
    assert not torch.equal(split.y_test, other.y_test)
    # the two parts hold every image exactly once: compare sorted rows of (pixels, label) with the full set
    from sklearn.datasets import load_digits

    digits = load_digits()
    full = np.concatenate([digits.images.reshape(-1, 64) / 8 - 1, digits.target[:, None]], axis=1)
    parts = np.concatenate(
        [
            np.concatenate([s_x.reshape(-1, 64).numpy(), s_y[:, None].numpy()], axis=1)
            for s_x, s_y in ((split.x_train, split.y_train), (split.x_test, split.y_test))
        ]
    )
    assert np.array_equal(
        np.unique(full, axis=0, return_counts=True)[1], np.unique(parts, axis=0, return_counts=True)[1]
    )
    assert np.allclose(np.unique(full, axis=0), np.unique(parts, axis=0))
    # stratified: each class's held-out count is within 1 of 20 % of its total
    total = np.bincount(digits.target, minlength=10)
    held = np.bincount(split.y_test.numpy(), minlength=10)
    assert np.all(np.abs(held - 0.2 * total) <= 1)


def test_split_dtype_and_errors():
    s = load_digits_split(test_fraction=0.5, dtype=torch.float64)
    assert s.x_train.dtype == torch.float64 and s.x_test.shape[0] in (898, 899)
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match="test_fraction"):
            load_digits_split(test_fraction=bad)
    with pytest.raises(ValueError, match="dtype"):
        load_digits_split(dtype=torch.int64)


# -- model ------------------------------------------------------------------------------------------


def test_model_shapes_and_zero_init():
    model = small_model()
    x = torch.randn(5, 1, 8, 8)
    out = model(x, torch.rand(5), torch.tensor([0, 3, 9, 10, 10]))
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(x)), "the output layer starts at zero"
    assert model(x, 0.3, 7).shape == x.shape  # float time, int label for the whole batch
    assert model.null_label == NUM_CLASSES == model.num_classes


def test_model_depends_on_label_and_time_and_follows_dtype():
    model = randomise_output(small_model())
    x = torch.randn(4, 1, 8, 8)
    a, b = model(x, 0.5, 1), model(x, 0.5, 2)
    assert not torch.allclose(a, b), "the label changes the field"
    assert not torch.allclose(model(x, 0.1, 1), a), "the time changes the field"
    model64 = model.double()
    assert model64(x.double(), 0.5, 1).dtype == torch.float64


@pytest.mark.parametrize(
    "y, error",
    [
        (torch.tensor([0, 11]), ValueError),
        (torch.tensor([-1, 0]), ValueError),
        (11, ValueError),
        (torch.tensor([0.0, 1.0]), TypeError),  # the wrong kind of labels
        ([0, 1], TypeError),
    ],
)
def test_model_rejects_bad_labels(y, error):
    with pytest.raises(error, match="y"):
        small_model()(torch.zeros(2, 1, 8, 8), 0.5, y)


def test_model_rejects_label_batch_mismatch():
    with pytest.raises(ValueError, match=r"y must have shape \(2,\)"):
        small_model()(torch.zeros(2, 1, 8, 8), 0.5, torch.tensor([1, 2, 3]))


@pytest.mark.parametrize("shape", [(2, 64), (2, 8, 8), (2, 1, 7, 8), (2, 3, 8, 8)])
def test_model_rejects_bad_images(shape):
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 8, 8\)"):
        small_model()(torch.zeros(shape), 0.5, 1)


def test_model_constructor_errors():
    with pytest.raises(ValueError, match="channels"):
        DigitUNet(channels=12)
    with pytest.raises(ValueError, match="num_classes"):
        DigitUNet(num_classes=0)


# -- guidance ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("w, expected", [(0.0, [0.0, 1.0]), (1.0, [1.0, 0.0]), (3.0, [3.0, -2.0])])
def test_cfg_combine_numbers(w, expected):
    out = cfg_combine(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), w)
    assert torch.equal(out, torch.tensor(expected))


@pytest.mark.parametrize("w", [-0.5, math.nan, math.inf])
def test_negative_or_nonfinite_w_is_rejected(w):
    with pytest.raises(ValueError, match="w must"):
        cfg_combine(torch.zeros(2), torch.zeros(2), w)
    with pytest.raises(ValueError, match="w must"):
        guided_velocity(small_model(), 1, w)


def test_cfg_combine_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        cfg_combine(torch.zeros(2), torch.zeros(3), 1.0)


def test_guided_velocity_matches_model_calls():
    model = randomise_output(small_model())
    x, t = torch.randn(4, 1, 8, 8), torch.rand(4)
    y = torch.tensor([0, 1, 2, 9])
    null = torch.full((4,), NUM_CLASSES)
    v_c, v_u = model(x, t, y), model(x, t, null)
    assert torch.allclose(guided_velocity(model, y, 0)(x, t), v_u)
    assert torch.allclose(guided_velocity(model, y, 1)(x, t), v_c)
    assert torch.allclose(guided_velocity(model, y, 2.5)(x, t), v_u + 2.5 * (v_c - v_u), atol=1e-6)
    # an int label is the same for the whole batch
    assert torch.allclose(guided_velocity(model, 3, 2.0)(x, t), cfg_combine(model(x, t, 3), v_u, 2.0), atol=1e-6)


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5])
def test_guided_velocity_of_a_two_time_model_combines_the_average_velocities(w):
    torch.manual_seed(0)
    model = randomise_output(fmlib.UNet(image_size=8, channels=8, emb_dim=16, attention=False, two_times=True))
    x, r, t = torch.randn(4, 1, 8, 8), torch.rand(4) * 0.5, 0.5 + torch.rand(4) * 0.5
    y = torch.tensor([0, 1, 2, 9])
    with torch.no_grad():
        u_c, u_u = model(x, r, t, y), model(x, r, t, torch.full((4,), NUM_CLASSES))
        got = guided_velocity(model, y, w)(x, r, t)
        # one jump of the guided field through sample_flow_map is x0 + u(x0, 0, 1)
        jump = fmlib.sample_flow_map(guided_velocity(model, y, w), x, 1)
        u01 = [model(x, torch.zeros(4), torch.ones(4), lab) for lab in (y, torch.full((4,), NUM_CLASSES))]
    torch.testing.assert_close(got, u_u + w * (u_c - u_u), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(jump, x + u01[1] + w * (u01[0] - u01[1]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5])
def test_guided_velocity_with_a_0d_label_is_that_class_for_every_sample(w):
    model = randomise_output(small_model())
    x, t = torch.randn(4, 1, 8, 8), torch.rand(4)
    v_c, v_u = model(x, t, torch.full((4,), 3)), model(x, t, torch.full((4,), NUM_CLASSES))
    with torch.no_grad():
        got = guided_velocity(model, torch.tensor(3), w)(x, t)
        torch.testing.assert_close(got, v_u + w * (v_c - v_u), atol=1e-6, rtol=1e-5)
        # the same field at another batch size
        assert guided_velocity(model, torch.tensor(3), w)(x[:1], t[:1]).shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match="y"):
        guided_velocity(model, torch.tensor(10), w)  # the null label as a 0-d tensor: refused at once


def test_guided_velocity_works_with_integrate_and_checks_labels():
    model = randomise_output(small_model())
    x1 = integrate(guided_velocity(model, torch.arange(6) % 10, 2.0), torch.randn(6, 1, 8, 8), steps=3)
    assert x1.shape == (6, 1, 8, 8) and torch.isfinite(x1).all()
    with pytest.raises(ValueError, match="y"):
        guided_velocity(model, 10, 2.0)  # the null label is not a class to guide towards
    with pytest.raises(ValueError, match="y"):
        guided_velocity(model, torch.tensor([1, 2]), 2.0)(torch.zeros(3, 1, 8, 8), torch.zeros(3))


# -- training ---------------------------------------------------------------------------------------


def test_drop_labels(gen):
    labels = torch.arange(10).repeat(100)
    assert torch.equal(drop_labels(labels, 0.0, generator=gen), labels)
    assert torch.equal(drop_labels(labels, 1.0, generator=gen), torch.full_like(labels, NUM_CLASSES))
    dropped = drop_labels(labels, 0.2, generator=gen)
    share = (dropped == NUM_CLASSES).float().mean().item()
    assert abs(share - 0.2) < 4 * math.sqrt(0.2 * 0.8 / 1000)  # four standard errors
    kept = dropped != NUM_CLASSES
    assert torch.equal(dropped[kept], labels[kept])
    with pytest.raises(ValueError, match="p_uncond"):
        drop_labels(labels, 1.5)


def test_a_few_training_steps_lower_the_loss(split):
    path = GaussianPath()
    model = small_model()
    x, y = split.x_train[:256], split.y_train[:256]

    def fixed_loss():
        # the same draws (x0, t) before and after training
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            return cfm_loss(lambda xt, t: model(xt, t, y), path, x, generator=g).item()

    before = fixed_loss()
    losses = train(
        model,
        path,
        x,
        25,
        cond=y,
        p_uncond=0.2,
        recipe=Recipe(lr=3e-3),
        batch_size=64,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    after = fixed_loss()
    assert len(losses) == 25 and all(math.isfinite(v) for v in losses)
    assert after < 0.8 * before, (before, after)
    assert not model.training


def test_training_is_reproducible(split):
    path = GaussianPath()
    runs = []
    for _ in range(2):
        model = small_model()
        runs.append(
            train(
                model,
                path,
                split.x_train,
                3,
                cond=split.y_train,
                p_uncond=0.2,
                recipe=Recipe(lr=1e-3),
                batch_size=16,
                generator=torch.Generator().manual_seed(3),
                progress=False,
            )
        )
    assert runs[0] == runs[1]


def test_training_argument_errors(split):
    path, model = GaussianPath(), small_model()
    x, y = split.x_train, split.y_train
    with pytest.raises(ValueError, match="cond must hold labels"):
        train(model, path, x[:4], 1, cond=torch.tensor([0, 1, 2, 10]), p_uncond=0.2, progress=False)
    with pytest.raises(ValueError, match="cond must have shape"):
        train(model, path, x[:4], 1, cond=torch.tensor([0, 1, 2]), p_uncond=0.2, progress=False)
    with pytest.raises(ValueError, match="steps"):
        train(model, path, x, 0, cond=y, p_uncond=0.2, progress=False)
    with pytest.raises(ValueError, match="p_uncond"):
        train(model, path, x, 1, cond=y, p_uncond=-0.1, progress=False)
    with pytest.raises(ValueError, match="num_classes"):
        train(torch.nn.Linear(2, 2), path, x, 1, cond=y, p_uncond=0.2, progress=False)


# -- metrics ----------------------------------------------------------------------------------------


def test_frechet_gaussians_closed_forms():
    # 1D: (mu1 - mu2)^2 + (sigma1 - sigma2)^2
    assert frechet_distance_gaussians([0.0], [[1.0]], [1.0], [[4.0]]) == pytest.approx(2.0)
    # diagonal: the 1D formula summed over coordinates
    m1, m2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 0.0])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([3.0, 2.0, 0.1])
    expected = np.sum((m1 - m2) ** 2) + np.sum((s1 - s2) ** 2)
    assert frechet_distance_gaussians(m1, np.diag(s1**2), m2, np.diag(s2**2)) == pytest.approx(expected, rel=1e-12)
    # the same Gaussian: 0
    a = np.array([[2.0, 0.5], [0.5, 1.0]])
    assert frechet_distance_gaussians(m1[:2], a, m1[:2], a) == pytest.approx(0.0, abs=1e-12)


def test_frechet_gaussians_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    c1, c2 = a @ a.T + 0.1 * np.eye(5), b @ b.T
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    ref = np.sum((m1 - m2) ** 2) + np.trace(c1 + c2) - 2 * np.trace(scipy.linalg.sqrtm(c1 @ c2)).real
    assert frechet_distance_gaussians(m1, c1, m2, c2) == pytest.approx(ref, rel=1e-8)
    # symmetric in its two arguments
    assert frechet_distance_gaussians(m2, c2, m1, c1) == pytest.approx(ref, rel=1e-8)


def test_frechet_distance_from_samples():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 4))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-10)
    assert frechet_distance(torch.as_tensor(x), x + 1.0) == pytest.approx(4.0, rel=1e-9)  # a shift by (1,1,1,1)
    # two large samples of N(0, 1) and N(2, 9) in 1D: close to (0 - 2)^2 + (1 - 3)^2 = 8
    y1, y2 = rng.normal(0, 1, size=(20_000, 1)), rng.normal(2, 3, size=(20_000, 1))
    assert frechet_distance(y1, y2) == pytest.approx(8.0, rel=0.05)
    with pytest.raises(ValueError, match="2 samples"):
        frechet_distance(x[:1], x)
    with pytest.raises(ValueError, match="same size"):
        frechet_distance(x, x[:, :3])
    with pytest.raises(ValueError, match="mu1, mu2"):
        frechet_distance_gaussians(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))


def test_nearest_distances():
    ref = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    samples = torch.tensor([[0.0, 1.0], [3.0, 4.0], [6.0, 8.0]])
    assert torch.allclose(nearest_distances(samples, ref), torch.tensor([1.0, 0.0, 5.0]))
    assert torch.allclose(nearest_distances(ref, ref, exclude_self=True), torch.tensor([5.0, 5.0]))
    with pytest.raises(ValueError, match="same image shape"):
        nearest_distances(samples, torch.zeros(2, 3))


def test_classifier_accuracy_and_features(split):
    clf = DigitClassifier(hidden=32, max_iter=100).fit(split.x_train, split.y_train)
    assert clf.accuracy(split.x_test, split.y_test) > 0.9
    f = clf.features(split.x_test[:7])
    assert f.shape == (7, 32) and (f >= 0).all()
    # the features are the hidden layer: the read-out of them reproduces scikit-learn's predictions
    logits = f @ clf.net.coefs_[1] + clf.net.intercepts_[1]
    assert np.array_equal(logits.argmax(1), clf.predict(split.x_test[:7]))


def test_image_grid():
    images = torch.arange(3 * 4, dtype=torch.float32).reshape(3, 1, 2, 2)
    grid = image_grid(images, nrow=2, pad=1, pad_value=-5.0)
    assert grid.shape == (2 * 3 - 1, 2 * 3 - 1)
    assert np.array_equal(grid[0:2, 3:5], images[1, 0].numpy())
    assert np.array_equal(grid[3:5, 0:2], images[2, 0].numpy())
    assert (grid[3:5, 3:5] == -5.0).all()  # the missing fourth tile
    with pytest.raises(ValueError, match="nrow"):
        image_grid(images, nrow=0)


def test_guided_velocity_needs_a_conditional_model():
    with pytest.raises(TypeError, match="num_classes"):
        guided_velocity(torch.nn.Linear(2, 2), 1, w=2.0)
