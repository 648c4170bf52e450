"""The loss terms against hand-computed values."""

import math

import pytest
import torch

from anomaly_vae.models.losses import (
    categorical_nll,
    gaussian_nll,
    kl_divergence,
    reparameterize,
)

X = torch.tensor([[0.8, 0.2, 0.6, 0.4]])
X_HAT = torch.tensor([[0.75, 0.25, 0.65, 0.35]])
MU = torch.tensor([[0.5, -0.3]])
LOG_VAR = torch.tensor([[0.2, 0.4]])


def test_worked_example_kl_term() -> None:
    # 0.5 * sum(mu^2 + sigma^2 - log sigma^2 - 1)
    assert kl_divergence(MU, LOG_VAR).item() == pytest.approx(0.2266, abs=5e-5)
    assert round(kl_divergence(MU, LOG_VAR).item(), 3) == 0.227


def test_kl_is_zero_only_at_the_prior() -> None:
    assert kl_divergence(torch.zeros(1, 3), torch.zeros(1, 3)).item() == 0.0
    assert kl_divergence(torch.zeros(1, 3), torch.full((1, 3), 0.5)).item() > 0


def test_unit_gaussian_nll_is_half_squared_error_plus_constant() -> None:
    # Squared errors 0.0025 each: 0.5 * 0.01 plus half log 2 pi per feature.
    nll = gaussian_nll(X, X_HAT, torch.zeros(4)).sum().item()
    assert nll == pytest.approx(0.005 + 4 * 0.5 * math.log(2 * math.pi))


def test_gaussian_nll_matches_torch_distribution() -> None:
    log_scale = torch.tensor([0.1, -0.5, 0.3, 0.0])
    reference = -torch.distributions.Normal(X_HAT, log_scale.exp()).log_prob(X)
    assert torch.allclose(gaussian_nll(X, X_HAT, log_scale), reference, atol=1e-6)


def test_categorical_nll_is_cross_entropy_per_column_ignoring_padding() -> None:
    columns = torch.tensor([[2.0, 0.0, -1.0], [0.5, -0.5, -math.inf]])  # 3 and 2 categories
    nll = categorical_nll(torch.tensor([[1, 0]]), columns.T[None])  # (n, category, column)
    assert nll.shape == (1, 2)
    assert nll[0, 0].item() == pytest.approx(-torch.log_softmax(columns[0], 0)[1].item())
    two = torch.tensor([0.5, -0.5])
    assert nll[0, 1].item() == pytest.approx(-torch.log_softmax(two, 0)[0].item())


def test_reparameterize_is_reproducible_with_a_generator() -> None:
    a = reparameterize(MU, LOG_VAR, torch.Generator().manual_seed(3))
    b = reparameterize(MU, LOG_VAR, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not torch.equal(a, MU)
