"""Fitting a VAE with Lightning: early stopping, best weights, per-epoch metrics to MLflow.

The only module that imports Lightning, and only training pipelines import it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from anomaly_vae.config import TrainingConfig
from anomaly_vae.errors import InputError, first_line
from anomaly_vae.models.lightning_module import LossTerms, VAETrainingModule
from anomaly_vae.terminal import loggers_at, stderr_is_terminal

_LIGHTNING_LOGGERS = (
    "pytorch_lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "lightning_fabric",
)


@dataclass
class FitResult:
    epochs: int
    best_val_loss: float
    best_epoch: int  # counted from 0, as the steps of the per-epoch metrics
    processes: int  # the world size: 2 for `devices: 2` with a ddp strategy
    # The first epoch (from 0) whose validation loss was NaN or infinite, where early stopping
    # ended the fit; None when every epoch's loss was finite.
    diverged_epoch: int | None = None


class KeepBestWeights(pl.Callback):
    """Restores the weights of the epoch with the lowest validation loss when fitting ends.

    Early stopping alone would leave the weights of the last, worse, epochs; keeping the best
    state in memory avoids writing checkpoints to disk.
    """

    def __init__(self, monitor: str = "val_loss") -> None:
        self.monitor = monitor
        self.best = float("inf")
        self.best_epoch = -1
        self.diverged_epoch: int | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # Not on_validation_epoch_end: callbacks run that hook before the module's own, which
        # logs the epoch's val_loss.
        if trainer.sanity_checking:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if not math.isfinite(value) and self.diverged_epoch is None:
            self.diverged_epoch = trainer.current_epoch
        if value < self.best:
            self.best = value
            self.best_epoch = trainer.current_epoch
            self.state = {k: v.detach().clone() for k, v in module.model.state_dict().items()}

    def on_fit_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.state is not None:
            module.model.load_state_dict(self.state)


class SeesCtrlC(pl.Callback):
    """Notes whether Ctrl-C (KeyboardInterrupt) stopped the fit, which Lightning hides."""

    def __init__(self) -> None:
        self.seen = False

    def on_exception(
        self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.seen = isinstance(exception, KeyboardInterrupt)


class EpochMetricsToMlflow(pl.Callback):
    """Logs the epoch's train and validation losses to the active MLflow run."""

    def on_validation_end(self, trainer: pl.Trainer, module: VAETrainingModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        # No run can be active unless MLflow was imported; importing it here would add seconds
        # to every untracked fit (benchmarks, notebooks).
        mlflow = sys.modules.get("mlflow")
        if mlflow is not None and mlflow.active_run() is not None:
            mlflow.log_metrics(module.epoch_metrics, step=trainer.current_epoch)


def fit_vae(
    model: nn.Module,
    loss_terms: LossTerms,
    train_data: Dataset,
    val_data: Dataset,
    training: TrainingConfig,
    beta: float,
) -> FitResult:
    """Train `model` in place and leave it holding its best validation weights."""
    pl.seed_everything(training.seed, verbose=False)
    module = VAETrainingModule(
        model,
        loss_terms,
        beta,
        training.learning_rate,
        training.weight_decay,
        training.lr_schedule,
    )
    generator = torch.Generator().manual_seed(training.seed)
    train_loader = _loader(train_data, training.batch_size, shuffle=True, generator=generator)
    val_loader = _loader(val_data, max(training.batch_size, 1024))
    best = KeepBestWeights()
    ctrl_c = SeesCtrlC()
    callbacks: list[pl.Callback] = [best, EpochMetricsToMlflow(), ctrl_c]
    if training.early_stopping_patience:
        callbacks.append(
            EarlyStopping(monitor="val_loss", patience=training.early_stopping_patience)
        )
    sigint_handler = signal.getsignal(signal.SIGINT)
    with _quiet_lightning():
        trainer = _trainer(training, callbacks)
        try:
            trainer.fit(module, train_loader, val_loader)
        except SIGTERMException:
            # Lightning ends a fit that SIGTERM stopped with SystemExit(None), exit status 0: a
            # training stopped by `timeout` or a job scheduler read as a success, with no model.
            raise SystemExit(128 + signal.SIGTERM) from None
        except BaseException:
            if not ctrl_c.seen:
                raise
        finally:
            # Lightning ignores Ctrl-C from the first one on, and never restores it. Off the
            # main thread (a web app's worker) Python sets no handler, nor did Lightning:
            # restoring one there raised "signal only works in main thread" after every fit.
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, sigint_handler)
    if ctrl_c.seen:
        # Lightning swallows the KeyboardInterrupt and ends the fit its own way: SystemExit(1)
        # since 2.4 (`train` exited 1 without a word), a NameError in some 2.5 releases, a
        # plain return before. Raised again, the command says it was interrupted.
        raise KeyboardInterrupt
    # `precision: 64-true` leaves the weights float64, which scoring's float32 rows met in
    # calibration with torch's "mat1 and mat2 must have the same dtype" traceback.
    model.float()
    if best.state is None:
        # Every epoch's loss was NaN or infinite: weights that score every row NaN, which
        # calibration cannot place a threshold among. A learning rate far too high does it.
        raise InputError(
            f"training diverged: the validation loss was not finite in any epoch; lower "
            f"training.learning_rate (now {training.learning_rate:g})"
        )
    return FitResult(
        epochs=trainer.current_epoch,
        best_val_loss=best.best,
        best_epoch=best.best_epoch,
        processes=trainer.world_size,
        diverged_epoch=best.diverged_epoch,
    )


def _trainer(training: TrainingConfig, callbacks: list[pl.Callback]) -> pl.Trainer:
    """Lightning's `Trainer` for the config; an unusable `training.trainer` section (an
    accelerator this machine lacks, a misspelt precision) is the user's to fix, in one line."""
    settings = training.trainer
    try:
        return pl.Trainer(
            max_epochs=training.epochs,
            accelerator=settings.accelerator,
            devices=settings.devices,
            strategy=settings.strategy,
            precision=settings.precision,
            callbacks=callbacks,
            gradient_clip_val=training.gradient_clip,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=stderr_is_terminal(),
            num_sanity_val_steps=0,
            deterministic=True,
        )
    except (MisconfigurationException, ValueError, TypeError) as exc:
        raise InputError(f"training.trainer: {first_line(exc)}") from exc


class _TensorBatches(TensorDataset):
    """A `TensorDataset` that hands the loader a whole batch per fetch.

    The default loader indexes one row at a time and stacks the rows again, a Python loop
    that took longer than the network's step on small tables; `__getitems__` indexes each
    tensor once per batch instead. The sampler (and Lightning's distributed sampler) is
    unchanged, so batches hold the same rows in the same order.
    """

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        return self[torch.as_tensor(indices)]


def _keep_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The collate function for `_TensorBatches`, whose fetches are batches already."""
    return batch


def _loader(data: Dataset, batch_size: int, **options: Any) -> DataLoader:
    """A loader over `data`, fetching in-memory tensors a batch at a time."""
    if isinstance(data, TensorDataset):
        batches = _TensorBatches(*data.tensors)
        return DataLoader(batches, batch_size=batch_size, collate_fn=_keep_batch, **options)
    return DataLoader(data, batch_size=batch_size, **options)


def is_ddp_worker() -> bool:
    """True in a process started only to join a multi-process fit, not to track it.

    Lightning's `ddp` strategy re-runs the command that started training once per extra
    device with LOCAL_RANK set (torchrun and SLURM set RANK or SLURM_PROCID, other nodes
    NODE_RANK). Those processes must fit, then stop: the rank-0 process logs and registers.
    """
    ranks = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    return any(int(os.environ.get(name) or 0) > 0 for name in ranks)


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's hints about GPUs and data-loader workers are noise for our users; quiet for
    the fit only: a notebook's own Lightning fit after `train` printed no model summary and no
    hints, and the caller's warnings filters kept ours."""
    with warnings.catch_warnings(), loggers_at(logging.ERROR, *_LIGHTNING_LOGGERS):
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*GPU available.*")
        warnings.filterwarnings("ignore", ".*treespec.*")
        # VAETrainingModule sums its epoch metrics across processes itself before logging them.
        warnings.filterwarnings("ignore", ".*sync_dist=True.*")
        yield
