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
from pytorch_lightning.utilities.types import OptimizerLRSchedulerConfig
from torch import nn

# (model, batch) -> per-sample reconstruction NLL (n,) and KL (n,), with z sampled.
LossTerms = Callable[[nn.Module, Sequence[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]
FUSED_ADAM_DEVICES = ("cpu", "cuda")
# The cosine schedule's last learning rate, as a fraction of the first.
COSINE_FLOOR = 0.01


class VAETrainingModule(pl.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        loss_terms: LossTerms,
        beta: float = 1.0,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        lr_schedule: str = "constant",
    ) -> None:
        super().__init__()
        self.model = model
        self.loss_terms = loss_terms
        self.save_hyperparameters(ignore=["model", "loss_terms"])
        self._sums: dict[str, torch.Tensor] = {}  # stage -> (recon sum, KL sum, rows)
        self.epoch_metrics: dict[str, float] = {}  # the last epoch's, set at validation's end

    def _step(self, batch: Sequence[torch.Tensor], stage: str) -> torch.Tensor:
        recon, kl = self.loss_terms(self.model, batch)
        self._accumulate(stage, recon.detach(), kl.detach())
        return (recon + self.hparams.beta * kl).mean()

    def _accumulate(self, stage: str, recon: torch.Tensor, kl: torch.Tensor) -> None:
        """Adds a batch to the epoch's sums of recon, KL and rows.

        Summing here replaces three `self.log` calls per step, whose bookkeeping took longer
        than the step itself on small tables.
        """
        sums = torch.stack([recon, kl, torch.ones_like(recon)]).float().sum(1)
        if stage in self._sums:
            sums = sums + self._sums[stage]
        self._sums[stage] = sums

    def on_validation_epoch_end(self) -> None:
        """Sets `epoch_metrics` to the epoch's train and validation means; logs `val_loss`.

        Validation runs after the epoch's last training batch, so both stages' sums are
        complete here. Only the monitored `val_loss` goes through `self.log` (early stopping,
        best weights, progress bar): each call cost more than a training step on small tables,
        so the MLflow callback reads `epoch_metrics` instead.
        """
        self.epoch_metrics = {}
        for stage, sums in self._sums.items():
            self.epoch_metrics.update(self._means(stage, sums))
        self._sums.clear()
        if "val_loss" in self.epoch_metrics:
            self.log("val_loss", self.epoch_metrics["val_loss"], prog_bar=True)

    def _means(self, stage: str, sums: torch.Tensor) -> dict[str, float]:
        """{stage}_loss, _recon and _kl: per-row means over every process's rows."""
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        recon, kl = (sums[:2] / sums[2]).tolist()
        loss = recon + self.hparams.beta * kl
        return {f"{stage}_loss": loss, f"{stage}_recon": recon, f"{stage}_kl": kl}

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def _fused_adam(self) -> bool:
        """The fused kernel where the device has one, unless gradients are clipped under mixed
        precision: Lightning refuses to clip for an optimizer that unscales gradients itself,
        which stopped `train` at `bf16-mixed` or `16-mixed` (and training.gradient_clip's
        default) in a "does not allow for gradient clipping" traceback."""
        clips_mixed = bool(self.trainer.gradient_clip_val) and "mixed" in self.trainer.precision
        return self.device.type in FUSED_ADAM_DEVICES and not clips_mixed

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig | torch.optim.Optimizer:
        # The fused kernel updates every parameter in one call; the default loops over the
        # parameters in Python, which on small networks took longer than the update itself.
        optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=self.hparams.learning_rate,
            weight_decay=self.hparams.weight_decay,
            fused=True if self._fused_adam() else None,
        )
        if self.hparams.lr_schedule == "constant":
            return optimizer
        # Cosine decay over every step the trainer will take, to a hundredth of the peak: the
        # early steps move fast at a high rate, the last ones settle at a low one, where a
        # constant rate has to trade one against the other.
        decay = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer,
            T_max=max(1, int(self.trainer.estimated_stepping_batches)),
            eta_min=self.hparams.learning_rate * COSINE_FLOOR,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": decay, "interval": "step"}}
