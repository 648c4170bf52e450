"""Shared fixtures: a private MLflow store per test session, small real data, the CLI runner."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from pipelines.cli import main

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Started in the background by a shell without job control (`make test &` in a script, under
# nohup), the suite inherits Ctrl-C ignored, and Python then raises no KeyboardInterrupt: seven
# tests of what Ctrl-C does failed for the way the suite was started, not for the code.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def run_cli(*args: str) -> Result:
    """Invoke `anomaly-vae ARGS` in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def train_cli(config: Path, *args: str) -> str:
    """Train from `config` through the command line; the registered model's URI."""
    result = run_cli("train", config, *args)
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[-1]


def train_on_codes_beyond_2_53(folder: Path) -> str:
    """A model of a categorical column of int64 codes 2^53 and 2^53 + 1 beside nulls (which
    pandas and Spark would read as floats, one code) and a number; its URI."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    low = 2**53
    codes = pa.array([None if i % 10 == 0 else low + i % 2 for i in range(300)], pa.int64())
    amounts = pa.array([1.0 + i % 7 for i in range(300)])
    pq.write_table(pa.table({"code": codes, "amount": amounts}), folder / "train.parquet")
    config = folder / "codes.yaml"
    config.write_text(f"data:\n  path: {folder / 'train.parquet'}\n  categorical: [code]\n")
    return train_cli(config, "--set", "training.epochs=2")


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A cache folder of the session's own ($XDG_CACHE_HOME), where `serve` and Spark would
    keep downloaded models: never the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(folder))
        yield folder


@pytest.fixture(autouse=True)
def fresh_mlflow_settings() -> Iterator[None]:
    """Each test starts with MLflow's tracking settings as a new process has them: the
    commands put back the settings they found, so a store that a test set would outlive it
    and outrank the next test's MLFLOW_TRACKING_URI."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    variables = {name: os.environ.get(name) for name in names}
    yield
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    for name, value in variables.items():  # MLflow sets them beside its own settings
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite MLflow store for one test; never the repository's mlruns/."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the real data in {SHARED_DATA}, which is absent on this machine")
    return SHARED_DATA


@pytest.fixture(scope="session")
def breast_cancer_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Train and test Parquet files from scikit-learn's breast-cancer table (demo split)."""
    from pipelines.demo import write_breast_cancer

    return write_breast_cancer(tmp_path_factory.mktemp("breast_cancer"))


@pytest.fixture(scope="session")
def breast_cancer_model(
    breast_cancer_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    """(model URI, tracking URI) of a model trained once per session through the CLI."""
    folder = tmp_path_factory.mktemp("breast_cancer_model")
    tracking = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    config = folder / "config.yaml"
    train_path, _ = breast_cancer_files
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"path": str(train_path), "label": "label", "id_columns": ["id"]},
                "training": {"epochs": 40, "batch_size": 64},
            }
        )
    )
    result = run_cli("train", config, "--tracking-uri", tracking)
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[-1], tracking


@pytest.fixture
def private_registry(breast_cancer_model: tuple[str, str], tmp_path: Path) -> tuple[str, str]:
    """The session's breast-cancer model in a copy of its store: new versions, runs and aliases
    there leave the shared store untouched."""
    model_uri, tracking = breast_cancer_model
    db = tmp_path / "mlflow.db"
    shutil.copy(tracking.removeprefix("sqlite:///"), db)
    return model_uri, f"sqlite:///{db}"


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    """(model URI, tracking URI, labelled test folder) for the README's digits demo, trained
    once per test module (a test may recalibrate it) and shared by the image test files."""
    from pipelines.demo import write_digits

    folder = tmp_path_factory.mktemp("digits")
    train_dir, test_dir = write_digits(folder)
    tracking = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    result = run_cli(
        "train",
        REPO / "configs" / "digits.yaml",
        "--set",
        f"data.path={train_dir}",
        "--set",
        "training.epochs=50",
        "--tracking-uri",
        tracking,
    )
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[-1], tracking, test_dir
