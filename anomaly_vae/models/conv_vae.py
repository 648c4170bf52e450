"""ConvVAE: a convolutional variational autoencoder for square images.

The encoder is a stack of stride-2 convolutions (each halves the side) ending in the mean and
log-variance of a diagonal Gaussian posterior; the decoder mirrors it with transposed
convolutions back to (channels, size, size). Its output is per-pixel logits: for a Bernoulli
likelihood they are the logits of p(x | z), for a Gaussian one their sigmoid is the mean, with
one learned scale shared by all pixels; for ssim their sigmoid is the reconstruction that SSIM
compares with the input. A plain `nn.Module`: scoring never imports Lightning.

Example:
    >>> model = ConvVAE(channels=1, size=28, conv_channels=[32, 64], latent=2)
    >>> mu, log_var = model.encode(torch.zeros(5, 1, 28, 28))
    >>> model.decode(mu).shape
    torch.Size([5, 1, 28, 28])
"""

from __future__ import annotations

import torch
from torch import nn

from anomaly_vae.errors import InputError
from anomaly_vae.models.tabular_vae import LOG_SCALE_BOUNDS

# Pixel noise in [0, 1] images is a few percent. The shared scale is one scalar that Adam moves
# by about one learning rate per step, so starting it at 1 (log 0) would leave the
# reconstruction term outweighed by the KL term for thousands of steps: blurry decodes.
INITIAL_LOG_SCALE = -2.0


class ConvVAE(nn.Module):
    def __init__(
        self,
        channels: int,
        size: int,
        conv_channels: list[int],
        latent: int,
        likelihood: str = "bernoulli",
    ) -> None:
        super().__init__()
        factor = 2 ** len(conv_channels)
        if size % factor:
            raise InputError(
                f"image.size {size} must be divisible by {factor} for {len(conv_channels)} "
                "stride-2 conv layers (model.conv_channels)"
            )
        self.channels, self.size, self.likelihood = channels, size, likelihood
        self.inner = (conv_channels[-1], size // factor, size // factor)
        widths = [channels, *conv_channels]
        encoder: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            encoder += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.encoder = nn.Sequential(*encoder, nn.Flatten())
        flat = conv_channels[-1] * (size // factor) ** 2
        self.to_mu = nn.Linear(flat, latent)
        self.to_log_var = nn.Linear(flat, latent)
        self.from_latent = nn.Sequential(nn.Linear(latent, flat), nn.LeakyReLU(0.2))
        decoder: list[nn.Module] = []
        reversed_widths = widths[::-1]
        for i, (c_in, c_out) in enumerate(
            zip(reversed_widths[:-1], reversed_widths[1:], strict=True)
        ):
            decoder.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
            if i < len(conv_channels) - 1:
                decoder.append(nn.LeakyReLU(0.2))
        self.decoder = nn.Sequential(*decoder)
        self.log_scale = nn.Parameter(
            torch.tensor(INITIAL_LOG_SCALE), requires_grad=likelihood == "gaussian"
        )
        # Channels-last filters: oneDNN's convolutions run faster with channels innermost
        # (the tiles model, 256 images on two threads: encode 136 -> 102 ms, decode 227 ->
        # 155 ms), and the feature maps follow the filters' layout. Saved weights load into
        # either layout.
        self.to(memory_format=torch.channels_last)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.to_mu(h), self.to_log_var(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits (n, channels, size, size)."""
        return self.decoder(self.from_latent(z).view(-1, *self.inner))

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        """The reconstructed image in [0, 1] for decoder logits."""
        return torch.sigmoid(logits)

    def bounded_log_scale(self) -> torch.Tensor:
        return self.log_scale.clamp(*LOG_SCALE_BOUNDS)
