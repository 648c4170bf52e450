"""TabularVAE's shortcuts for categorical and binary columns against the plain network."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from anomaly_vae.models.losses import HALF_LOG_2PI
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


def test_binary_columns_take_one_logit_and_unseen_values_their_cost() -> None:
    """Two binary columns follow two numeric ones: encoded 0/1 (NaN where a value was neither
    of the two), decoded to one Bernoulli logit each."""
    from anomaly_vae.data.preprocessing import EncodedTable
    from anomaly_vae.scoring import score_tabular, tabular_terms

    torch.manual_seed(0)
    unseen = [5.0, 7.0]
    model = TabularVAE(
        n_numeric=2, n_indicators=0, category_sizes=[3], hidden=[8], latent=2, unseen_nll=unseen
    ).eval()
    assert model.decoder[-1].out_features == 2 + 2 + 3
    numeric = torch.tensor([[0.1, -1.0, 1.0, 0.0], [2.0, 0.5, math.nan, 1.0]])
    observed = torch.ones(2, 4)
    codes = torch.tensor([[1], [2]])

    # The encoder reads an unseen value as halfway between the two.
    inputs = torch.cat([numeric.nan_to_num(0.5), F.one_hot(codes[:, 0], 3).float()], 1)
    expected_mu, _ = model.encoder(inputs).chunk(2, dim=1)
    mu, _ = model.encode(numeric, observed, codes)
    torch.testing.assert_close(mu, expected_mu)

    with torch.no_grad():
        nll, _, _ = tabular_terms(model, numeric, observed, codes)
        outputs, _ = model.decode(mu)
    bce = F.binary_cross_entropy_with_logits(
        outputs[:, 2:4], numeric[:, 2:].nan_to_num(0.0), reduction="none"
    )
    torch.testing.assert_close(nll[0, 2:4], bce[0])
    assert nll[1, 2] == unseen[0]
    torch.testing.assert_close(nll[1, 3], bce[1, 1])

    # Features rank by their terms above their best: a numeric term's best is that of a perfect
    # reconstruction, a binary or categorical term's 0.
    encoded = EncodedTable(numeric.numpy(), observed.numpy(), codes.numpy())
    scores = score_tabular(model, encoded, top_k=5)
    above = nll.clone()
    above[:, :2] -= model.bounded_log_scale().detach() + HALF_LOG_2PI
    ranked = np.argsort(-above.numpy(), axis=1, kind="stable")
    np.testing.assert_array_equal(scores.top_features, ranked)
    np.testing.assert_array_equal(
        score_tabular(model, encoded, top_k=2).top_features, ranked[:, :2]
    )
    np.testing.assert_allclose(scores.recon, nll.sum(1).numpy(), rtol=1e-5)


def test_batches_with_and_without_unseen_binary_values_score_alike() -> None:
    """A batch without unseen values skips the passes that handle them: its rows score as
    they do next to a row with one."""
    from anomaly_vae.scoring import tabular_terms

    torch.manual_seed(0)
    unseen_nll = [5.0, 7.0]
    model = TabularVAE(
        n_numeric=2, n_indicators=0, category_sizes=[], hidden=[8], latent=2, unseen_nll=unseen_nll
    ).eval()
    seen = torch.tensor([[0.1, -1.0, 1.0, 0.0], [2.0, 0.5, 0.0, 1.0]])
    rows = torch.cat([seen, torch.tensor([[0.3, 0.2, math.nan, 1.0]])])
    with torch.no_grad():
        alone = tabular_terms(model, seen, torch.ones(2, 4), torch.zeros(2, 0, dtype=torch.long))
        mixed = tabular_terms(model, rows, torch.ones(3, 4), torch.zeros(3, 0, dtype=torch.long))
    torch.testing.assert_close(mixed[0][:2], alone[0])
    torch.testing.assert_close(mixed[1][:2], alone[1])
    assert mixed[0][2, 2] == unseen_nll[0]
    assert torch.isfinite(mixed[0]).all()
