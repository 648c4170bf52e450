"""TabularVAE's shortcuts for categorical columns against the plain one-hot network."""

import math

import torch
import torch.nn.functional as F

from anomaly_vae.models.tabular_vae import TabularVAE

SIZES = [3, 5, 2]


def _model_and_rows() -> tuple[TabularVAE, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = TabularVAE(
        n_numeric=3,
        n_indicators=1,
        indicator_columns=[1],
        category_sizes=SIZES,
        hidden=[8],
        latent=2,
    )
    rows = 7
    numeric = torch.randn(rows, 3)
    observed = (torch.rand(rows, 3) > 0.3).float()
    codes = torch.stack([torch.randint(0, size, (rows,)) for size in SIZES], 1)
    return model, numeric, observed, codes


def test_encoder_reads_categories_as_one_hot_inputs() -> None:
    model, numeric, observed, codes = _model_and_rows()
    one_hot = torch.cat([F.one_hot(codes[:, j], size) for j, size in enumerate(SIZES)], 1)
    inputs = torch.cat([numeric, 1.0 - observed[:, [1]], one_hot.float()], 1)
    expected_mu, expected_log_var = model.encoder(inputs).chunk(2, dim=1)
    mu, log_var = model.encode(numeric, observed, codes)
    torch.testing.assert_close(mu, expected_mu)
    torch.testing.assert_close(log_var, expected_log_var)

    # Training reaches the weights of the categories seen, and only those.
    mu.sum().backward()
    category_grads = model.encoder[0].weight.grad[:, 4:]
    seen = one_hot.sum(0) > 0
    assert (category_grads[:, seen].abs().sum(0) > 0).all()
    assert (category_grads[:, ~seen] == 0).all()


def test_logits_are_laid_out_category_by_column_and_padded() -> None:
    model, numeric, observed, codes = _model_and_rows()
    z = torch.randn(len(codes), 2)
    out = model.decoder(z)
    numeric_mean, logits = model.decode(z)
    assert logits.shape == (len(codes), max(SIZES), len(SIZES))
    torch.testing.assert_close(numeric_mean, out[:, :3])
    start = 3
    for j, size in enumerate(SIZES):
        torch.testing.assert_close(logits[:, :size, j], out[:, start : start + size])
        assert (logits[:, size:, j] == -math.inf).all()
        start += size
