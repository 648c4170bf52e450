"""The pictures people expect from an image VAE, as matplotlib figures for `mlflow.log_figure`.

- inputs beside their reconstructions;
- validation posterior means coloured by label (the latent itself when it is 2-D, else its
  first two principal components);
- what the decoder has learned: a 2-D latent decoded on a regular grid over [-2, 2]^2, or for
  larger latents decodes of samples from the prior N(0, I).

Figures use the Agg backend: training runs on servers without a display.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from anomaly_vae.models.conv_vae import ConvVAE  # noqa: E402

GRID_LIMIT = 2.0
SAMPLE_SEED = 0


def _tile(images: np.ndarray, columns: int, gap: int = 1) -> np.ndarray:
    """(n, channels, h, w) in [0, 1] -> one mosaic with white gaps, (rows*h, columns*w[, c])."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    mosaic = np.ones((rows * (h + gap) - gap, columns * (w + gap) - gap, c), dtype=np.float32)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        top, left = r * (h + gap), col * (w + gap)
        mosaic[top : top + h, left : left + w] = image.transpose(1, 2, 0)
    return mosaic.squeeze(2) if c == 1 else mosaic


def _show(ax: plt.Axes, mosaic: np.ndarray, title: str) -> None:
    ax.imshow(mosaic, cmap="gray" if mosaic.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_title(title)
    ax.axis("off")


@torch.inference_mode()
def decode_means(model: ConvVAE, z: torch.Tensor) -> np.ndarray:
    return model.mean(model.decode(z)).numpy()


@torch.inference_mode()
def reconstruction_grid(model: ConvVAE, pixels: np.ndarray, labels: np.ndarray) -> Figure:
    """Up to 8 normal and 8 anomalous inputs, each row of inputs above its reconstructions."""
    picks = [np.flatnonzero(~labels)[:8], np.flatnonzero(labels)[:8]]
    groups = [
        (name, rows) for name, rows in zip(("normal", "anomalous"), picks, strict=True) if len(rows)
    ]
    fig, axes = plt.subplots(2 * len(groups), 1, figsize=(8, 2.2 * len(groups) * 2), squeeze=False)
    for g, (name, rows) in enumerate(groups):
        x = pixels[rows]
        mu, _ = model.encode(torch.from_numpy(x))
        _show(axes[2 * g, 0], _tile(x, 8), f"{name} inputs")
        _show(axes[2 * g + 1, 0], _tile(decode_means(model, mu), 8), "reconstructions (z = mu)")
    fig.tight_layout()
    return fig


def latent_scatter(mu: np.ndarray, labels: np.ndarray) -> Figure:
    """Posterior means of validation images, normal and anomalous in different colours."""
    if mu.shape[1] == 2:
        points, axis_names = mu, ("z1", "z2")
    else:
        from sklearn.decomposition import PCA

        points, axis_names = PCA(n_components=2).fit_transform(mu), ("PC 1 of mu", "PC 2 of mu")
    fig, ax = plt.subplots(figsize=(6, 5))
    for flag, name, colour in ((False, "normal", "tab:blue"), (True, "anomalous", "tab:red")):
        chosen = labels == flag
        if chosen.any():
            ax.scatter(*points[chosen].T, s=6, alpha=0.6, c=colour, label=name)
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.set_title("validation posterior means")
    ax.legend(loc="upper right")  # "best" searches among every point: slow on many images
    fig.tight_layout()
    return fig


def latent_decodes(model: ConvVAE, latent: int, steps: int = 15) -> Figure:
    """A 2-D latent decoded on a grid over [-2, 2]^2; otherwise 64 decoded prior samples."""
    if latent == 2:
        axis = torch.linspace(-GRID_LIMIT, GRID_LIMIT, steps)
        # Rows run from z2 = +2 at the top to -2 at the bottom, like a plot's y axis.
        z = torch.stack(torch.meshgrid(axis, axis.flip(0), indexing="xy"), dim=-1).reshape(-1, 2)
        columns, title = steps, "decodes of z on a grid over [-2, 2] x [-2, 2]"
    else:
        generator = torch.Generator().manual_seed(SAMPLE_SEED)
        z = torch.randn(64, latent, generator=generator)
        columns, title = 8, "decodes of samples from N(0, I)"
    fig, ax = plt.subplots(figsize=(7, 7))
    _show(ax, _tile(decode_means(model, z), columns), title)
    fig.tight_layout()
    return fig


def overlay(image: np.ndarray, heat: np.ndarray, vmax: float) -> np.ndarray:
    """An RGB uint8 picture: the image in grey with the anomaly map as a translucent heatmap.

    The colour map is looked up in a table of its 256 colours, already weighted: matplotlib's
    own call made float RGBA values of every pixel first, 7.5 ms of a tile at its own size
    (400 x 250) against 2.2."""
    grey = image.mean(axis=0) if image.ndim == 3 else image
    levels = len(_HEAT_COLOURS)
    if vmax > 0:
        # A pixel whose term is not finite is drawn as no heat: cast to an index, NaN was
        # -2^63 and the command ended in an IndexError.
        scaled = np.nan_to_num(heat * (levels / vmax), nan=0.0, posinf=levels - 1)
        index = np.clip(scaled, 0, levels - 1).astype(np.intp)
    else:
        index = np.zeros(heat.shape, np.intp)
    blended = _HEAT_COLOURS[index]
    blended += (0.55 * 255) * grey[..., None]
    return np.clip(blended, 0, 255, out=blended).astype(np.uint8)


# The heatmap's colours (jet, 256 levels) as 0-255 values, times their share of the blend.
_HEAT_COLOURS = 0.45 * plt.get_cmap("jet")(np.arange(256), bytes=True)[:, :3].astype(np.float32)
