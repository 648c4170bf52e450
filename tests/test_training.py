"""The training module's learning-rate schedules, through a real Lightning fit."""

import math
import os
import signal
from collections.abc import Callable, Sequence

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from anomaly_vae.config import TrainingConfig
from anomaly_vae.errors import InputError
from anomaly_vae.models.lightning_module import COSINE_FLOOR, VAETrainingModule
from anomaly_vae.models.tabular_vae import TabularVAE
from anomaly_vae.training import fit_vae
from pipelines.train import tabular_loss_terms

PEAK = 1e-2
EPOCHS = 3


def _fit(schedule: str) -> list[float]:
    """Fits a small model and returns the learning rate each training step ran at."""
    torch.manual_seed(0)
    rows = 96
    data = TensorDataset(torch.randn(rows, 4), torch.ones(rows, 4), torch.zeros(rows, 0).long())
    model = TabularVAE(n_numeric=4, n_indicators=0, category_sizes=[], hidden=[8], latent=2)
    module = VAETrainingModule(model, tabular_loss_terms, learning_rate=PEAK, lr_schedule=schedule)
    rates: list[float] = []

    class RecordRate(pl.Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        callbacks=[RecordRate()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(data, batch_size=32)
    trainer.fit(module, loader, loader)
    return rates


def test_cosine_schedule_decays_from_the_peak_to_the_floor_over_the_whole_fit() -> None:
    rates = _fit("cosine")
    assert len(rates) == EPOCHS * 3
    assert rates[0] == pytest.approx(PEAK)
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))
    # One step before the end of the cosine: the last step runs just above the floor.
    assert PEAK * COSINE_FLOOR < rates[-1] < 0.05 * PEAK


def test_constant_schedule_keeps_the_rate() -> None:
    rates = _fit("constant")
    assert rates == [pytest.approx(PEAK)] * (EPOCHS * 3)


def _tiny_model_and_rows() -> tuple[TabularVAE, TensorDataset]:
    """A seeded four-feature VAE and 64 rows for it, in `tabular_loss_terms`' tensors."""
    torch.manual_seed(0)
    rows = 64
    data = TensorDataset(torch.randn(rows, 4), torch.ones(rows, 4), torch.zeros(rows, 0).long())
    model = TabularVAE(n_numeric=4, n_indicators=0, category_sizes=[], hidden=[8], latent=2)
    return model, data


def _scaled_loss(
    factor: float, when: Callable[[int, TabularVAE], bool]
) -> Callable[[TabularVAE, Sequence[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]:
    """`tabular_loss_terms` with the recon term times `factor` on the calls (counted from 1,
    training and validation batches alike) that `when` picks."""
    calls = 0

    def terms(model: TabularVAE, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        nonlocal calls
        calls += 1
        recon, kl = tabular_loss_terms(model, batch)
        return (recon * factor, kl) if when(calls, model) else (recon, kl)

    return terms


def test_a_fit_whose_loss_is_never_finite_says_so_in_one_line() -> None:
    model, data = _tiny_model_and_rows()
    # Adam moves every weight by about the learning rate on its first step: 1e20 overflows.
    training = TrainingConfig(epochs=2, batch_size=32, learning_rate=1e20)
    with pytest.raises(InputError, match=r"diverged.*lower training.learning_rate \(now 1e\+20\)"):
        fit_vae(model, tabular_loss_terms, data, data, training, beta=1.0)


def test_a_fit_keeps_its_best_finite_weights() -> None:
    model, data = _tiny_model_and_rows()
    result = fit_vae(model, tabular_loss_terms, data, data, TrainingConfig(epochs=2), beta=1.0)
    assert math.isfinite(result.best_val_loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_fit_that_diverges_after_its_first_epoch_says_so_when_training_ends() -> None:
    """Early stopping ended such a fit at its first NaN validation loss, and `train` said only
    "(3 epochs)": the credit-card sample with `--set training.epochs=20`, as the README runs
    it, kept its first epoch's weights without a word."""
    from types import SimpleNamespace

    from anomaly_vae.tracking import Registration
    from pipelines.tracked_training import closing_lines

    model, data = _tiny_model_and_rows()
    # Epoch 0: two training batches and one validation batch; NaN from then on.
    diverging = _scaled_loss(math.nan, lambda call, _: call > 3)
    training = TrainingConfig(epochs=10, batch_size=32)
    fit = fit_vae(model, diverging, data, data, training, beta=1.0)
    assert (fit.diverged_epoch, fit.best_epoch) == (1, 0)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    calibration = SimpleNamespace(summary=lambda: "threshold 1 by f1: {}")
    lines = closing_lines(
        "64 rows", fit, 0.1, calibration, "run", 0.2, Registration("x", "1", True)
    )
    assert lines[1] == (
        "training diverged: the validation loss was not finite from epoch 2; the model "
        "keeps epoch 1's weights; a lower training.learning_rate may train longer"
    )
    assert len(lines) == 3


def test_a_fit_stopped_by_sigterm_exits_as_a_terminated_process_does() -> None:
    """Lightning ended it with SystemExit(None): `anomaly-vae train` exited 0, no model made."""
    model, data = _tiny_model_and_rows()

    def terminated(
        model: TabularVAE, batch: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler, during the fit
        return tabular_loss_terms(model, batch)

    with pytest.raises(SystemExit) as stopped:
        fit_vae(model, terminated, data, data, TrainingConfig(epochs=2), beta=1.0)
    assert stopped.value.code == 128 + signal.SIGTERM


def test_the_closing_line_counts_one_epoch_in_the_singular() -> None:
    """`--set training.epochs=1`, the quick check, reported "(1 epochs)"."""
    from types import SimpleNamespace

    from anomaly_vae.tracking import Registration
    from pipelines.tracked_training import closing_lines

    calibration = SimpleNamespace(summary=lambda: "threshold 1 by f1: {}")
    for epochs, said in ((1, "(1 epoch);"), (2, "(2 epochs);")):
        fit = SimpleNamespace(epochs=epochs, diverged_epoch=None)
        registration = Registration("x", "1", True)
        first, _ = closing_lines("10 rows", fit, 0.1, calibration, "run", 0.2, registration)
        assert said in first


def _best_val_loss_after_a_spike(gradient_clip: float | None, spike: float) -> float:
    """The best validation loss of a fit whose fifth loss term is `spike` times too large, as
    one extreme row makes it."""
    model, _ = _tiny_model_and_rows()
    data = TensorDataset(torch.randn(256, 4), torch.ones(256, 4), torch.zeros(256, 0).long())
    spiking = _scaled_loss(spike, lambda call, model: model.training and call == 5)
    training = TrainingConfig(
        epochs=10, batch_size=32, early_stopping_patience=0, gradient_clip=gradient_clip
    )
    return fit_vae(model, spiking, data, data, training, beta=1.0).best_val_loss


def test_the_gradient_cap_keeps_one_spike_from_setting_training_back() -> None:
    """One huge gradient fills Adam's second moment for hundreds of steps and its first moment
    pushes on for tens: on the full credit-card sample the loss blew up in the third epoch and
    the model kept its first epoch's weights. The default cap on the gradient's norm holds the
    spike to an ordinary step."""
    default = TrainingConfig().gradient_clip
    calm = _best_val_loss_after_a_spike(default, spike=1.0)
    assert _best_val_loss_after_a_spike(default, spike=1e6) < 1.005 * calm
    assert _best_val_loss_after_a_spike(None, spike=1e6) > 1.01 * calm


def test_a_fit_on_a_worker_thread_returns_its_result() -> None:
    """Restoring the Ctrl-C handler after the fit raised "signal only works in main thread":
    `train` called from a web app's worker thread failed after every fit."""
    from concurrent.futures import ThreadPoolExecutor

    model, data = _tiny_model_and_rows()
    with ThreadPoolExecutor(1) as worker:
        fitting = worker.submit(
            fit_vae, model, tabular_loss_terms, data, data, TrainingConfig(epochs=2), 1.0
        )
        result = fitting.result()
    assert result.epochs == 2
    assert math.isfinite(result.best_val_loss)


def test_a_fit_leaves_the_callers_lightning_logging_and_warnings_filters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fit set Lightning's loggers to ERROR and added its warnings filters for good: a
    notebook's own Lightning fit after `train` printed no model summary and no hints."""
    import logging
    import warnings

    lightning = logging.getLogger("pytorch_lightning")
    monkeypatch.setattr(lightning, "level", lightning.level)  # put back after the test
    lightning.setLevel(logging.INFO)  # as a notebook sets it
    model, data = _tiny_model_and_rows()
    with warnings.catch_warnings():
        warnings.resetwarnings()  # the caller's filters: none, not what an earlier fit left
        fit_vae(model, tabular_loss_terms, data, data, TrainingConfig(epochs=1), beta=1.0)
        assert warnings.filters == []
    assert lightning.level == logging.INFO


def test_a_fit_runs_in_a_process_without_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """`sys.stderr` is None under pythonw or a service: the progress bar's isatty() raised."""
    model, data = _tiny_model_and_rows()
    monkeypatch.setattr("sys.stderr", None)
    result = fit_vae(model, tabular_loss_terms, data, data, TrainingConfig(epochs=1), beta=1.0)
    assert result.epochs == 1
