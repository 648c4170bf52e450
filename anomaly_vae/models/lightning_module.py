"""VAETrainingModule: the LightningModule that trains any of the package's VAEs.

It owns the optimisation only: the network is a plain `nn.Module` and the per-sample loss
terms come from `anomaly_vae.scoring`, so the loss minimised here is by construction the
batch mean of the scores used to flag anomalies (recon + beta * KL).

Example:
    >>> module = VAETrainingModule(model, tabular_loss_terms, beta=1.0, learning_rate=1e-3)
    >>> pl.Trainer(max_epochs=10).fit(module, train_loader, val_loader)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytorch_lightning as pl
import torch
from torch import nn

# (model, batch) -> per-sample reconstruction NLL (n,) and KL (n,), with z sampled.
LossTerms = Callable[[nn.Module, Sequence[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


class VAETrainingModule(pl.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        loss_terms: LossTerms,
        beta: float = 1.0,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss_terms = loss_terms
        self.save_hyperparameters(ignore=["model", "loss_terms"])

    def _step(self, batch: Sequence[torch.Tensor], stage: str) -> torch.Tensor:
        recon, kl = self.loss_terms(self.model, batch)
        loss = (recon + self.hparams.beta * kl).mean()
        n = len(recon)
        self.log(
            f"{stage}_loss",
            loss,
            on_epoch=True,
            on_step=False,
            prog_bar=True,
            batch_size=n,
            sync_dist=True,
        )
        self.log(
            f"{stage}_recon",
            recon.mean(),
            on_epoch=True,
            on_step=False,
            batch_size=n,
            sync_dist=True,
        )
        self.log(
            f"{stage}_kl", kl.mean(), on_epoch=True, on_step=False, batch_size=n, sync_dist=True
        )
        return loss

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.model.parameters(),
            lr=self.hparams.learning_rate,
            weight_decay=self.hparams.weight_decay,
        )
