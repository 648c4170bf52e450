"""TabularVAE: a variational autoencoder for mixed numeric and categorical rows.

The encoder is an MLP over scaled numeric values, 0/1 binary values, missing-value indicators
and one-hot categories, ending in the mean and log-variance of a diagonal Gaussian posterior.
The decoder maps a latent code back to a Gaussian mean per numeric column (with one learned
scale per column), one Bernoulli logit per binary column and logits per categorical column. A
plain `nn.Module`: scoring never imports Lightning.

Example:
    >>> model = TabularVAE(n_numeric=4, n_indicators=0, category_sizes=[3], hidden=[16], latent=2)
    >>> out = model(torch.zeros(5, 4), torch.ones(5, 4), torch.zeros(5, 1, dtype=torch.long))
    >>> out.numeric_mean.shape, out.logits.shape
    (torch.Size([5, 4]), torch.Size([5, 3, 1]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import islice

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_vae.models.losses import has_unseen

# The hidden-layer nonlinearities a model can be built with. SiLU was the first default; its
# exp makes it cost 30% of a scoring pass on one CPU thread, where the ReLUs are nearly free.
# In place: each follows a linear layer, whose gradient does not need its output, and a new
# tensor per layer cost 6% of scoring 5_campaign's 15,604 test rows (15.9 against 15.0 ms).
ACTIVATIONS = {
    "leaky-relu": lambda: nn.LeakyReLU(0.1, inplace=True),
    "relu": lambda: nn.ReLU(inplace=True),
    "silu": lambda: nn.SiLU(inplace=True),
}

# Learned per-column scales are kept within [e^-4, e^2]: a column that is nearly constant on
# training data would otherwise get a vanishing scale and make every small deviation infinite.
LOG_SCALE_BOUNDS = (-4.0, 2.0)


@dataclass
class TabularOutput:
    mu: torch.Tensor
    log_var: torch.Tensor
    numeric_mean: torch.Tensor  # (n, n_numeric + n_binary): means, then binary logits
    log_scale: torch.Tensor
    logits: torch.Tensor  # (n, most categories, n_categorical), padded with -inf


def mlp(sizes: list[int], dropout: float, activation: str) -> nn.Sequential:
    """Linear layers with `activation` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class TabularVAE(nn.Module):
    def __init__(
        self,
        n_numeric: int,
        n_indicators: int,
        category_sizes: list[int],
        hidden: list[int],
        latent: int,
        learn_scale: bool = True,
        dropout: float = 0.0,
        indicator_columns: list[int] | None = None,
        activation: str = "leaky-relu",
        unseen_nll: list[float] | None = None,
    ) -> None:
        """`unseen_nll` holds one value per binary column, which follow the numeric ones in
        the `numeric` inputs: what a value that is neither of the column's two (a NaN input)
        costs. Binary columns take one logit each where a category of two (and its unknown
        bucket) took three: scoring 5_campaign's 49 dummies took half the time."""
        super().__init__()
        self.n_numeric = n_numeric
        # Derived from the preprocessor, like the category layout below: not saved.
        self.register_buffer(
            "unseen_nll", torch.tensor(unseen_nll or [], dtype=torch.float32), persistent=False
        )
        self.n_binary = len(self.unseen_nll)
        self.category_sizes = list(category_sizes)
        self.latent = latent
        self.register_buffer(
            "indicator_columns",
            torch.tensor(indicator_columns or list(range(n_indicators)), dtype=torch.long),
        )
        # Every categorical column at once, whatever their number: one embedding bag stands for
        # the one-hot inputs and one gather lays the logits out as (n, category, column), where a
        # loop over columns cost a tensor operation each (a table of 50 dummies: 100 per batch).
        # Categories before columns, as `F.cross_entropy` wants them: (n, column, category)
        # needed a transposed copy, and the two passes cost a fifth of scoring 5_campaign.
        # Derived from category_sizes, so not saved with the weights.
        sizes = torch.tensor(category_sizes, dtype=torch.long)
        starts = sizes.cumsum(0) - sizes
        width = max(category_sizes, default=0)
        self.category_width = width
        pad = sum(category_sizes)  # the index of a -inf column appended to the logits
        slots = starts[:, None] + torch.arange(width)
        in_column = torch.arange(width) < sizes[:, None]
        self.register_buffer("category_starts", starts[None, :], persistent=False)
        self.register_buffer(
            "category_slots", torch.where(in_column, slots, pad).T.flatten(), persistent=False
        )
        n_in = n_numeric + self.n_binary + n_indicators + sum(category_sizes)
        n_out = n_numeric + self.n_binary + sum(category_sizes)
        self.encoder = mlp([n_in, *hidden, 2 * latent], dropout, activation)
        self.decoder = mlp([latent, *reversed(hidden), n_out], dropout, activation)
        self.log_scale = nn.Parameter(torch.zeros(n_numeric), requires_grad=learn_scale)

    def encode(
        self, numeric: torch.Tensor, observed: torch.Tensor, codes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [numeric]
        # An unseen binary value (NaN) reads as halfway between the two the model knows. They
        # are rare: a batch without any is read as it is, without a copy.
        if self.n_binary and has_unseen(numeric[:, self.n_numeric :]):
            binary = torch.nan_to_num(numeric[:, self.n_numeric :], nan=0.5)
            parts = [numeric[:, : self.n_numeric], binary]
        if len(self.indicator_columns):
            parts.append(1.0 - observed.index_select(1, self.indicator_columns))
        # Joining a single part would only copy it: a pass over the input on every batch.
        dense = torch.cat(parts, 1) if len(parts) > 1 else numeric
        first = self.encoder[0]
        hidden = F.linear(dense, first.weight[:, : dense.shape[1]], first.bias)
        if self.category_sizes:
            # The first layer's product with the one-hot inputs is the sum of one weight column
            # per categorical column: an embedding bag. Building the one-hot matrix and
            # multiplying by it took 4x as long on 5_campaign's 49 three-way columns.
            columns = first.weight[:, dense.shape[1] :].T.contiguous()
            hidden = hidden + F.embedding_bag(codes + self.category_starts, columns, mode="sum")
        for layer in islice(self.encoder, 1, None):
            hidden = layer(hidden)
        mu, log_var = hidden.chunk(2, dim=1)
        return mu, log_var

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Numeric means and binary logits (n, n_numeric + n_binary), and category logits
        (n, most categories, n_categorical), padded with -inf past each column's own
        categories."""
        out = self.decoder(z)
        n_dense = self.n_numeric + self.n_binary
        numeric_mean = out[:, :n_dense]
        if not self.category_sizes:  # the layout below costs a few operations even for none
            return numeric_mean, out.new_empty(len(z), 0, 0)
        padded = F.pad(out[:, n_dense:], (0, 1), value=-math.inf)
        logits = padded.index_select(1, self.category_slots)
        return numeric_mean, logits.view(len(z), self.category_width, len(self.category_sizes))

    def bounded_log_scale(self) -> torch.Tensor:
        return self.log_scale.clamp(*LOG_SCALE_BOUNDS)

    def forward(
        self, numeric: torch.Tensor, observed: torch.Tensor, codes: torch.Tensor
    ) -> TabularOutput:
        """Encode and decode at z = mu (scoring decodes sampled codes via `decode`)."""
        mu, log_var = self.encode(numeric, observed, codes)
        numeric_mean, logits = self.decode(mu)
        return TabularOutput(mu, log_var, numeric_mean, self.bounded_log_scale(), logits)
