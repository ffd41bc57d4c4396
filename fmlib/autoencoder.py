"""A small convolutional autoencoder for latent flow matching (a VAE with a small KL weight)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import check_batch, check_finite, check_int, check_real

__all__ = ["Autoencoder", "train_autoencoder"]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(min(8, c_out), c_out), nn.SiLU())


class Autoencoder(nn.Module):
    """A convolutional autoencoder (B, C, S, S) -> latent (B, latent_channels, S/4, S/4) -> (B, C, S, S).

    The latent space of latent flow matching (Rombach et al. 2022, "High-resolution image synthesis with
    latent diffusion models", sec. 3.1): flow matching is trained on the latents of the data set
    (:meth:`encode_dataset`) and its samples are decoded (:meth:`decode`). At 28x28 with the defaults the
    latent is 4 x 7 x 7 = 196 numbers for 784 pixels.

    Encoder: conv block at S, strided conv to S/2, conv block, strided conv to S/4, conv block, a 1x1 conv
    to the mean and log-variance of the latent. Decoder: the mirror image (transposed convolutions up).
    A conv block is 3x3 conv, GroupNorm, SiLU.

    Why a VAE with a small KL weight and not a plain autoencoder. Flow matching starts from N(0, I) and
    its samples land near, not on, the training latents, so two things matter: (1) latents of about unit
    scale per channel, and (2) a decoder that is smooth around the latents, mapping a slightly wrong latent
    to a slightly wrong image. A plain autoencoder gives neither: nothing fixes the scale of its latents
    and its decoder is only trained on the encoder's exact outputs. The VAE's objective (Kingma & Welling
    2014) decodes a noisy latent ``z = mu + sigma * eps``, so the decoder is trained on a neighbourhood of
    every latent, and its KL term ``KL(N(mu, sigma^2) || N(0, 1))`` keeps the latents at a bounded scale;
    with a small weight (``kl_weight``, 1e-3 per latent number against the per-pixel squared error, as the
    KL-regularised autoencoders of latent diffusion use a small weight) the reconstructions stay sharp. The
    scale is then made exactly unit: :meth:`fit_latent_stats` stores the per-channel mean and standard
    deviation of the training latents (buffers, saved with the weights), :meth:`encode` returns
    ``(mu - mean) / std`` and :meth:`decode` undoes it (the "scale factor" of latent diffusion, per channel).
    :func:`train_autoencoder` calls :meth:`fit_latent_stats` on its training images at the end.

    Precision: the network runs in its weights' dtype (bfloat16 or float16 after ``.to(...)``, with x in that
    dtype).

    Args:
        image_size: side S of the square images, a multiple of 4.
        in_channels: image channels C, >= 1.
        latent_channels: channels of the latent, >= 1.
        channels: width at S (2 channels at S/2 and S/4), a multiple of 8.
        kl_weight: weight of the KL term per latent number, >= 0 (with 0 the encoder learns to shrink its
            noise to nothing: a plain autoencoder).

    Raises:
        TypeError: for non-int sizes or a kl_weight that is not a real number.
        ValueError: for an image_size that is not a positive multiple of 4, sizes below 1, channels not a
            multiple of 8, a negative kl_weight; in the methods, images or latents of the wrong shape (naming
            the argument and the expected shape).

    Example:
        >>> import torch
        >>> ae = Autoencoder()
        >>> z = ae.encode(torch.zeros(2, 1, 28, 28))
        >>> tuple(z.shape), tuple(ae.decode(z).shape)
        ((2, 4, 7, 7), (2, 1, 28, 28))
    """

    latent_mean: Tensor  # registered buffers (saved with the weights, moved by .to())
    latent_std: Tensor

    def __init__(
        self,
        image_size: int = 28,
        in_channels: int = 1,
        latent_channels: int = 4,
        channels: int = 32,
        kl_weight: float = 1e-3,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("image_size", image_size, 4),
            ("in_channels", in_channels, 1),
            ("latent_channels", latent_channels, 1),
            ("channels", channels, 8),
        ):
            check_int(value, name, low)
        self.kl_weight = check_real(kl_weight, "kl_weight", low=0.0)
        if image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 (two 2x downsamplings); got {image_size}")
        if channels % 8:
            raise ValueError(f"channels must be a multiple of 8 (GroupNorm with 8 groups); got {channels}")
        self.image_size = image_size
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.latent_size = image_size // 4
        c, c2 = channels, 2 * channels
        self.encoder = nn.Sequential(
            _block(in_channels, c),
            nn.Conv2d(c, c2, 3, stride=2, padding=1),
            _block(c2, c2),
            nn.Conv2d(c2, c2, 3, stride=2, padding=1),
            _block(c2, c2),
            nn.Conv2d(c2, 2 * latent_channels, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, c2, 3, padding=1),
            _block(c2, c2),
            nn.ConvTranspose2d(c2, c2, 2, stride=2),
            _block(c2, c2),
            nn.ConvTranspose2d(c2, c, 2, stride=2),
            _block(c, c),
            nn.Conv2d(c, in_channels, 3, padding=1),
        )
        self.register_buffer("latent_mean", torch.zeros(latent_channels))
        self.register_buffer("latent_std", torch.ones(latent_channels))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """The shape (latent_channels, S/4, S/4) of one latent."""
        return (self.latent_channels, self.latent_size, self.latent_size)

    def _check(self, x: object, name: str, want: tuple[int, ...]) -> Tensor:
        check_batch(x, name)
        assert isinstance(x, Tensor)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"{name} must have shape (B, {', '.join(map(str, want))}) for this Autoencoder; got {tuple(x.shape)}"
            )
        return x

    def _image_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    def _moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The raw (unstandardised) posterior mean and log-variance, each (B, latent_channels, S/4, S/4)."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def _scale(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.latent_mean.to(z.dtype)[:, None, None], self.latent_std.to(z.dtype)[:, None, None]

    def encode(self, x: Tensor) -> Tensor:
        """The standardised latent ``(mu(x) - latent_mean) / latent_std`` (the posterior mean), ``(B, *latent_shape)``.

        Raises:
            ValueError: if x is not of shape (B, in_channels, image_size, image_size).
        """
        x = self._check(x, "x", self._image_shape())
        mean, std = self._scale(x)
        return (self._moments(x)[0] - mean) / std

    def decode(self, z: Tensor) -> Tensor:
        """Images (B, in_channels, S, S) from standardised latents z of shape ``(B, *latent_shape)``.

        Raises:
            ValueError: if z is not of shape (B, latent_channels, S/4, S/4).
        """
        z = self._check(z, "z", self.latent_shape)
        mean, std = self._scale(z)
        return self.decoder(z * std + mean)

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction ``decode(encode(x))``, shape of x."""
        return self.decode(self.encode(x))

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The training objective, a scalar: mean squared error of ``decoder(mu + sigma eps)`` against x (per
        pixel) plus ``kl_weight`` times the mean KL(N(mu, sigma^2) || N(0, 1)) per latent number
        (Kingma & Welling 2014, eq. 10, with a weighted KL). eps ~ N(0, I) is drawn from ``generator``.

        Raises:
            ValueError: if x is not of shape (B, in_channels, image_size, image_size).
        """
        x = self._check(x, "x", self._image_shape())
        mu, logvar = self._moments(x)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=getattr(generator, "device", None))
        z = mu + torch.exp(0.5 * logvar) * eps.to(mu.device)
        recon = (self.decoder(z) - x).pow(2).mean()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        return recon + self.kl_weight * kl

    def _raw_means(self, x: Tensor, batch_size: int) -> Tensor:
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return torch.cat([self._moments(x[i : i + batch_size])[0] for i in range(0, x.shape[0], batch_size)])
        finally:
            self.train(was_training)

    def fit_latent_stats(self, x: Tensor, batch_size: int = 256) -> Autoencoder:
        """Set ``latent_mean`` and ``latent_std`` to the per-channel mean and standard deviation of the raw
        latents of images x (over images and positions), so that ``encode(x)`` has mean 0 and standard
        deviation 1 per channel. Returns self.

        Raises:
            ValueError: if x is not of shape (N, in_channels, image_size, image_size) with N >= 2, or not finite.
            TypeError: if batch_size is not an int.
        """
        x = self._check(x, "x", self._image_shape())
        check_int(batch_size, "batch_size", 1)
        check_finite(x, "x")
        if x.shape[0] < 2:
            raise ValueError(f"x must hold at least 2 images for a standard deviation; got {x.shape[0]}")
        mu = self._raw_means(x, batch_size).float()
        per_channel = mu.transpose(0, 1).reshape(self.latent_channels, -1)
        self.latent_mean.copy_(per_channel.mean(1))
        self.latent_std.copy_(per_channel.std(1).clamp_min(1e-6))
        return self

    def encode_dataset(self, x: Tensor, batch_size: int = 256) -> Tensor:
        """Encode a data set once: the standardised latents of x, ``(N, *latent_shape)``, without an autograd graph.

        Runs in eval mode under ``torch.no_grad()`` in batches of ``batch_size`` (the mode is restored
        afterwards) and returns a detached tensor: latents that carried the encoder's graph would keep every
        activation of the encoder alive and let a flow-matching loss train the encoder
        (:func:`~fmlib.train` refuses such data).

        Raises:
            ValueError: if x is not of shape (N, in_channels, image_size, image_size), or batch_size < 1.
            TypeError: if batch_size is not an int.
        """
        x = self._check(x, "x", self._image_shape())
        check_int(batch_size, "batch_size", 1)
        mean, std = self._scale(x)
        return ((self._raw_means(x, batch_size) - mean) / std).detach()


def train_autoencoder(
    ae: Autoencoder,
    images: Tensor,
    steps: int,
    batch_size: int = 128,
    lr: float = 2e-3,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> list[float]:
    """Train ``ae`` on ``images`` by Adam on :meth:`Autoencoder.loss`, then fit its latent statistics.

    Each step draws ``batch_size`` images uniformly with replacement and the latent noise from
    ``generator`` (on its device; the batch moves to the images' device), so equally seeded runs give the
    same losses. The learning rate decays from ``lr`` to 0 along a cosine. At the end the model is in eval
    mode and :meth:`Autoencoder.fit_latent_stats` has been called on ``images``.

    Args:
        ae: the autoencoder; trained in place, on the images' device (move it there first).
        images: training images (N, in_channels, image_size, image_size), finite, without an autograd graph.
        steps: optimiser steps, >= 1.
        batch_size: images per step, >= 1.
        lr: peak learning rate, > 0.
        generator: seeds the batches and the latent noise.
        progress: show a tqdm progress bar.

    Returns:
        The loss of every step, a list of ``steps`` floats.

    Raises:
        TypeError: if ae is not an :class:`Autoencoder`, images not a floating tensor, steps or batch_size
            not an int, lr not a real number.
        ValueError: for images of the wrong shape, not finite or carrying an autograd graph, steps or
            batch_size < 1, or lr <= 0.

    Example:
        >>> import torch
        >>> ae = Autoencoder(image_size=8, channels=8)
        >>> losses = train_autoencoder(ae, torch.rand(16, 1, 8, 8) * 2 - 1, 3, batch_size=4, progress=False)
        >>> len(losses)
        3
    """
    from tqdm.auto import tqdm

    if not isinstance(ae, Autoencoder):
        raise TypeError(f"ae must be an fmlib.Autoencoder; got {type(ae).__name__}")
    ae._check(images, "images", ae._image_shape())
    check_int(steps, "steps", 1)
    check_int(batch_size, "batch_size", 1)
    check_real(lr, "lr", low=0.0, low_inclusive=False)
    check_finite(images, "images")
    if images.requires_grad:
        raise ValueError("images must not carry an autograd graph; detach them")
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gdev = generator.device if generator is not None else "cpu"
    losses: list[float] = []
    ae.train()
    for _ in tqdm(range(steps), disable=not progress, desc="autoencoder"):
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=generator, device=gdev)
        loss = ae.loss(images[idx.to(images.device)], generator=generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    ae.eval()
    ae.fit_latent_stats(images)
    return losses
