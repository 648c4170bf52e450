"""What the MLflow runs hold for someone comparing them: names, lineage, tags, data, metrics."""

from __future__ import annotations

import functools
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import REPO, run_cli
from mlflow.entities import Run

from anomaly_vae.errors import InputError
from anomaly_vae.tracking import data_digest
from pipelines.runs import list_runs


def test_evaluate_and_calibrate_runs_stay_with_the_version_they_read(
    private_registry, breast_cancer_files
) -> None:
    """An evaluation of `models:/x@champion` recorded only the alias: once champion moved, no
    run said which version it had evaluated, and no version led to its evaluations."""
    model_uri, tracking = private_registry
    _, test = breast_cancer_files
    client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    name = model_uri.removeprefix("models:/").split("@")[0]
    trained = client.get_model_version_by_alias(name, "champion")

    result = run_cli("calibrate", model_uri, test, "--strategy", "recall>=0.9", "--promote",
                     "--tracking-uri", tracking)  # fmt: skip
    assert result.exit_code == 0, result.output
    calibrated = client.get_model_version_by_alias(name, "champion")
    calibration = client.get_run(calibrated.run_id)
    assert calibration.info.run_name == f"calibrate {name}/{trained.version} on {test.name}"
    assert calibration.data.tags["model_version"] == f"{name}/{trained.version}"
    assert calibration.data.tags["mlflow.parentRunId"] == trained.run_id

    result = run_cli("evaluate", model_uri, test, "--tracking-uri", tracking)
    assert result.exit_code == 0, result.output
    evaluation = client.get_run(result.stderr.strip().split()[-1])
    assert evaluation.info.run_name == f"evaluate {name}/{calibrated.version} on {test.name}"
    assert evaluation.data.tags["model_uri"] == model_uri
    assert evaluation.data.tags["model_version"] == f"{name}/{calibrated.version}"
    # The test.* metrics at the threshold of that version, chosen by the strategy calibrate used.
    assert evaluation.data.tags["calibration.strategy"] == "recall>=0.9"
    # With the counts they were measured on.
    labelled = pd.read_parquet(test)["label"].astype(bool)
    recall = evaluation.data.metrics["test.recall"]
    assert evaluation.data.metrics["test.rows"] == len(labelled)
    assert evaluation.data.metrics["test.anomalies"] == labelled.sum()
    assert evaluation.data.metrics["test.flagged"] >= round(recall * labelled.sum())
    # Nested beneath the calibration run that logged the version it read, in the MLflow UI.
    assert evaluation.data.tags["mlflow.parentRunId"] == calibrated.run_id
    # From the registered version to the runs that evaluated it: its logged model's metrics.
    model_id = calibrated.source.removeprefix("models:/")
    assert [m.model_id for m in evaluation.inputs.model_inputs] == [model_id]
    logged = client.get_logged_model(model_id).metrics
    assert {(m.key, m.run_id) for m in logged} >= {("test.auroc", evaluation.info.run_id)}
    found = client.search_runs(
        [evaluation.info.experiment_id],
        filter_string=f"tags.model_version = '{name}/{calibrated.version}'",
        order_by=["metrics.`test.auroc` DESC"],
    )
    assert [r.info.run_id for r in found] == [evaluation.info.run_id]

    # `anomaly-vae runs` shows the version each run registered, else the one it read.
    experiment = client.get_experiment(evaluation.info.experiment_id).name
    table = list_runs(experiment, tracking)
    models = dict(zip(table["run_id"], table["model"], strict=True))
    assert models[trained.run_id] == f"{name}/{trained.version}"
    assert models[calibrated.run_id] == f"{name}/{calibrated.version}"
    assert models[evaluation.info.run_id] == f"{name}/{calibrated.version}"
    listed = run_cli("runs", "--experiment", experiment, "--tracking-uri", tracking)
    assert listed.stdout.splitlines()[0].split()[:6] == [
        "run_id", "started", "status", "name", "model", "validation.auroc"
    ]  # fmt: skip


def test_a_data_folder_is_named_with_its_parent_in_run_names(tmp_path: Path) -> None:
    """Image folders are often named alike: runs on digits/train and tiles/train were both
    'train train', evaluations of tex/test and mv/test both '... on test'."""
    from anomaly_vae.tracking import data_title

    (tmp_path / "digits" / "train").mkdir(parents=True)
    (tmp_path / "day.parquet").touch()
    assert data_title(tmp_path / "digits" / "train") == "digits/train"
    assert data_title(str(tmp_path / "day.parquet")) == "day.parquet"


def test_a_long_list_in_the_config_is_a_whole_param(tracking_uri: str) -> None:
    """A wide table's column lists were cut at 500 characters: two runs dropping different
    late columns showed the same `data.drop`."""
    from anomaly_vae.config import Config
    from anomaly_vae.tracking import configure_tracking, flatten_params, use_experiment

    columns = [f"sensor_{i:03d}_reading" for i in range(60)]
    config = Config.model_validate({"data": {"path": "x.parquet", "drop": columns}})
    configure_tracking(tracking_uri)
    use_experiment("wide")  # not the experiment an earlier test left active, in another store
    with mlflow.start_run() as run:
        mlflow.log_params(flatten_params(config.model_dump()))
    logged = mlflow.MlflowClient().get_run(run.info.run_id).data.params["data.drop"]
    assert len(logged) > 1000 and logged == str(columns)


def test_training_runs_are_named_by_their_overrides_and_keep_their_config_file(
    breast_cancer_files, tracking_uri, tmp_path
) -> None:
    """Every training of one config was named 'train <data file>': runs that differed by their
    --set overrides looked alike in `mlflow ui` and `anomaly-vae runs`, and the run did not
    say which config file it came from."""
    from pipelines.tracked_training import training_run_name

    config = tmp_path / "cancer.yaml"
    config.write_text(f"# the demo\ndata: {{path: {breast_cancer_files[0]}}}\n")
    run_ids = []
    data = breast_cancer_files[0].name
    for overrides in ([], ["model.latent=4", f"data.path={data}", "training.seed=0"]):
        sets = [arg for override in overrides for arg in ("--set", override)]
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(breast_cancer_files[0].parent)  # data.path relative, as users type it
            result = run_cli("train", config, "--set", "training.epochs=1", *sets)
        assert result.exit_code == 0, result.output
        run_ids.append(result.stderr.strip().split()[-4])  # "...; run <id> in 1.2 s"
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    plain, changed = (client.get_run(run_id) for run_id in run_ids)
    assert plain.info.run_name == f"train {data} training.epochs=1"
    # The data file's override is in the name already, as its title.
    assert changed.info.run_name == f"train {data} training.epochs=1 model.latent=4 training.seed=0"
    assert changed.data.tags["overrides"] == (
        f"--set training.epochs=1 --set model.latent=4 --set data.path={data} --set training.seed=0"
    )
    assert training_run_name("2024/october.parquet", ("data.path=2024/october.parquet",)) == (
        "train 2024/october.parquet"  # the folder tells runs apart
    )
    # The rest of a long path is in the overrides tag; it filled the runs table. The name is
    # the path the config read, not the override's YAML text.
    overrides = ("data.path='/data/tabular/my sample.parquet'", "training.epochs=3")
    assert training_run_name("/data/tabular/my sample.parquet", overrides) == (
        "train tabular/my sample.parquet training.epochs=3"
    )
    assert changed.data.tags["config_file"] == str(config.resolve())
    # A config that shares another's experiment says its name: runs of cancer.yaml and of a
    # variant of it read alike there.
    variant = tmp_path / "cancer_small.yaml"
    variant.write_text(config.read_text() + "mlflow: {experiment: cancer}\nmodel: {latent: 2}\n")
    result = run_cli("train", variant, "--set", "training.epochs=1")
    assert result.exit_code == 0, result.output
    shared = client.get_run(result.stderr.strip().split()[-4])
    assert shared.info.run_name == f"cancer_small: train {data} training.epochs=1"
    assert shared.info.experiment_id == plain.info.experiment_id
    assert "cancer.yaml" in [a.path for a in client.list_artifacts(changed.info.run_id)]
    local = client.download_artifacts(changed.info.run_id, "cancer.yaml", str(tmp_path / "dl"))
    assert Path(local).read_text() == config.read_text()


@pytest.mark.parametrize("name", ["config.json", "figures"])
def test_a_config_file_named_as_a_run_artifact_is_kept_beside_it(
    name, breast_cancer_files, tracking_uri, tmp_path
) -> None:
    """The run logs the resolved config as config.json, its figures under figures/, and the
    user's file under its own name: a config file called config.json (JSON is YAML) overwrote
    the resolved config, and one called figures ended training in a NotADirectoryError."""
    config = tmp_path / name
    config.write_text(json.dumps({"data": {"path": str(breast_cancer_files[0])}}, indent=2))
    result = run_cli("train", config, "--set", "training.epochs=1")
    assert result.exit_code == 0, result.output
    run_id = result.stderr.strip().split()[-4]  # "...; run <id> in 1.2 s"
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    folder = str(tmp_path / "downloaded")
    resolved = json.loads(
        Path(client.download_artifacts(run_id, "config.json", folder)).read_text()
    )
    assert resolved["data"]["path"] == str(breast_cancer_files[0])
    assert resolved["training"]["epochs"] == 1  # every key, the override and defaults included
    written = client.download_artifacts(run_id, f"config_file/{name}", folder)
    assert Path(written).read_text() == config.read_text()
    figures = client.list_artifacts(run_id, "figures")
    assert [a.path for a in figures] == ["figures/validation_scores.png"]


def test_a_training_run_logs_the_validation_loss_of_the_weights_it_kept(
    breast_cancer_model,
) -> None:
    """The model keeps its best epoch's weights, but the run's `val_loss` is the last epoch's:
    sorting runs by it ranked them by weights none of them kept."""
    model_uri, tracking = breast_cancer_model
    client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    name = model_uri.removeprefix("models:/").split("@")[0]
    run = client.get_run(client.get_model_version_by_alias(name, "champion").run_id)
    history = client.get_metric_history(run.info.run_id, "val_loss")
    best = min(history, key=lambda m: m.value)
    assert run.data.metrics["best_val_loss"] == pytest.approx(best.value, rel=1e-6)  # float32
    assert run.data.metrics["best_epoch"] == best.step


def test_runs_on_different_data_are_told_apart_by_their_dataset_digest(
    breast_cancer_files, tracking_uri, tmp_path
) -> None:
    """A run recorded its data only as `data.path` as typed: the same path holding a new file,
    or two files of the same name, left runs on different data alike."""
    train, test = breast_cancer_files
    changed = tmp_path / "changed" / train.name
    changed.parent.mkdir()
    pd.read_parquet(train).iloc[:-1].to_parquet(changed)
    config = tmp_path / "cancer.yaml"
    config.write_text("data: {path: " + str(train) + ", label: label, id_columns: [id]}\n")
    inputs = []
    for path in (train, changed, train):
        result = run_cli(
            "train", config, "--set", "training.epochs=1", "--set", f"data.path={path}"
        )
        assert result.exit_code == 0, result.output
        run_id = result.stderr.strip().split()[-4]
        (dataset,) = mlflow.MlflowClient().get_run(run_id).inputs.dataset_inputs
        assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "training"
        assert json.loads(dataset.dataset.source) == {"uri": str(path.resolve())}
        inputs.append(dataset.dataset)
    assert inputs[0].name == inputs[1].name == train.name
    assert inputs[0].digest == inputs[2].digest != inputs[1].digest

    result = run_cli("evaluate", "models:/cancer@champion", test)
    assert result.exit_code == 0, result.output
    run_id = result.stderr.strip().split()[-1]
    (dataset,) = mlflow.MlflowClient().get_run(run_id).inputs.dataset_inputs
    assert dataset.dataset.name == test.name
    found = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"datasets.digest = '{inputs[0].digest}'",
    )
    assert len(found) == 2


def test_a_folder_digest_follows_its_files_and_skips_hidden_ones(tmp_path) -> None:
    folder = tmp_path / "images"
    (folder / "good").mkdir(parents=True)
    (folder / "good" / "a.png").write_bytes(b"a")
    (folder / "good" / "loop").symlink_to(folder)  # read once, not forever
    before = data_digest(folder)
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".ipynb_checkpoints" / "a.png").write_bytes(b"x")
    assert data_digest(folder) == before
    (folder / "good" / "a.png").write_bytes(b"b")
    changed = data_digest(folder)
    assert changed != before
    (folder / "good" / "a.png").rename(folder / "good" / "c.png")  # a file's name counts
    assert data_digest(folder) not in (changed, data_digest(folder / "good" / "c.png"))


def test_runs_name_the_code_that_made_them(breast_cancer_model) -> None:
    """Started as the `anomaly-vae` command, from a virtual environment's bin/, a run had no
    git commit: MLflow looks for the repository beside the started script."""
    from importlib.metadata import version

    model_uri, tracking = breast_cancer_model
    client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    name = model_uri.removeprefix("models:/").split("@")[0]
    tags = client.get_run(client.get_model_version_by_alias(name, "champion").run_id).data.tags
    assert tags["anomaly_vae.version"] == version("anomaly-vae")
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode != 0:
        pytest.skip("the source is not a git checkout here")
    assert tags["mlflow.source.git.commit"] == head.stdout.strip()


def test_a_training_run_draws_its_threshold_among_the_validation_scores(
    breast_cancer_model, breast_cancer_files, tracking_uri, tmp_path
) -> None:
    """A table's training run held no figure: where the threshold fell among the validation
    scores showed only in an evaluation's report."""
    model_uri, tracking = breast_cancer_model
    client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    name = model_uri.removeprefix("models:/").split("@")[0]
    run_id = client.get_model_version_by_alias(name, "champion").run_id
    assert "figures/validation_scores.png" in [
        a.path for a in client.list_artifacts(run_id, "figures")
    ]
    # Without labels every validation row is normal; the figure is drawn all the same.
    config = tmp_path / "unlabelled.yaml"
    config.write_text(f"data: {{path: {breast_cancer_files[0]}, drop: [label]}}\n")
    result = run_cli("train", config, "--set", "training.epochs=1")
    assert result.exit_code == 0, result.output
    run_id = result.stderr.strip().split()[-4]
    figures = mlflow.MlflowClient().list_artifacts(run_id, "figures")
    assert [a.path for a in figures] == ["figures/validation_scores.png"]


def test_runs_on_a_tracking_server_leave_stdout_to_the_command(
    monkeypatch, capsys, tracking_uri
) -> None:
    """As each run on a tracking server ended, MLflow wrote "🏃 View run ... at: <url>" and
    "🧪 View experiment at: <url>" to stdout: `anomaly-vae train` printed them before the
    model URI that `uri=$(anomaly-vae train ...)` takes. A stand-in server answers the one
    request MLflow makes to write them."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from anomaly_vae.tracking import configure_tracking

    class TrackingServer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            info = {
                "run_id": "r1",
                "experiment_id": "1",
                "run_name": "train t",
                "status": "FINISHED",
            }
            body = json.dumps({"run": {"info": info, "data": {}}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    configure_tracking(tracking_uri)  # as every command does
    with ThreadingHTTPServer(("127.0.0.1", 0), TrackingServer) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        client = mlflow.MlflowClient(tracking_uri=f"http://127.0.0.1:{server.server_port}")
        client._tracking_client._log_url("r1")  # what ending a run calls
        server.shutdown()
    assert capsys.readouterr().out == ""


def test_a_version_registered_without_a_run_is_evaluated_all_the_same(
    private_registry, breast_cancer_files, tmp_path
) -> None:
    """A model copied from another server is registered from its files, with no run: the
    evaluation, computed whole, ended in a TypeError traceback looking for the run's lineage."""
    model_uri, tracking = private_registry
    _, test = breast_cancer_files
    client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    name = model_uri.removeprefix("models:/").split("@")[0]
    champion = client.get_model_version_by_alias(name, "champion")
    files = mlflow.artifacts.download_artifacts(
        artifact_uri=client.get_model_version_download_uri(name, champion.version),
        dst_path=str(tmp_path / "model"),
    )
    version = client.create_model_version(name, source=files)
    assert version.run_id is None

    result = run_cli("evaluate", f"models:/{name}/{version.version}", test,
                     "--tracking-uri", tracking)  # fmt: skip
    assert result.exit_code == 0, result.output
    evaluation = client.get_run(result.stderr.strip().split()[-1])
    assert evaluation.data.tags["model_version"] == f"{name}/{version.version}"
    assert "mlflow.parentRunId" not in evaluation.data.tags


def test_a_run_from_a_source_tree_that_pip_did_not_install_is_tracked(
    breast_cancer_files, tracking_uri, tmp_path, monkeypatch
) -> None:
    """A checkout on sys.path (a notebook beside the repository, `python -m pipelines.cli`)
    has no installed metadata: asking it for the version raised PackageNotFoundError, and
    every tracked command stopped in a traceback once its run had started."""
    import importlib.metadata

    import anomaly_vae

    installed = importlib.metadata.version

    def not_installed(name: str) -> str:
        if name.replace("_", "-") == "anomaly-vae":
            raise importlib.metadata.PackageNotFoundError(name)
        return installed(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    config = tmp_path / "cancer.yaml"
    config.write_text(f"data: {{path: {breast_cancer_files[0]}}}\n")
    result = run_cli("train", config, "--set", "training.epochs=1")
    assert result.exit_code == 0, result.output
    run = mlflow.MlflowClient().get_run(result.stderr.strip().split()[-4])
    assert run.data.tags["anomaly_vae.version"] == anomaly_vae.__version__


def test_a_table_folder_digest_is_of_the_parts_the_reader_reads(tmp_path) -> None:
    """Spark's and Databricks' markers (_SUCCESS, _committed_<job>) and a failed job's
    _temporary/ folder are no data, and the reader skips them: the digest counted them, so the
    same table written twice, by two jobs, looked like two data sets."""
    table = tmp_path / "table"
    table.mkdir()
    pd.DataFrame({"x": [1.0, 2.0]}).to_parquet(table / "part-00000.parquet")
    before = data_digest(table)
    (table / "_SUCCESS").write_text("")
    (table / "_committed_8431").write_text('{"added": ["part-00000.parquet"]}')
    (table / "_temporary" / "0").mkdir(parents=True)
    pd.DataFrame({"x": [3.0]}).to_parquet(table / "_temporary" / "0" / "part-00001.parquet")
    assert data_digest(table) == before
    pd.DataFrame({"x": [3.0]}).to_parquet(table / "part-00001.parquet")
    assert data_digest(table) != before


def test_a_deleted_experiment_is_named_in_one_line(tracking_uri: str) -> None:
    # MLflow keeps a deleted experiment's name: `train`, `evaluate` and `calibrate` ended in
    # its "Cannot set a deleted experiment" traceback, `runs --experiment` said "no runs yet".
    from anomaly_vae.errors import InputError
    from anomaly_vae.tracking import configure_tracking, use_experiment

    configure_tracking(tracking_uri)
    experiment_id = use_experiment("fraud")
    mlflow.MlflowClient().delete_experiment(experiment_id)
    expected = (
        f"experiment 'fraud' is deleted: restore it (mlflow experiments restore --experiment-id "
        f"{experiment_id}) or purge it (mlflow gc)"
    )
    with pytest.raises(InputError) as info:
        use_experiment("fraud")
    assert str(info.value) == expected
    result = run_cli("runs", "--experiment", "fraud")
    assert result.exit_code == 1 and result.stderr.strip() == f"Error: {expected}"


def test_a_model_read_after_its_experiment_was_renamed_logs_beside_its_parent_run(
    private_registry, breast_cancer_files
) -> None:
    # The run went to a new experiment of the old name, nested beneath a run in the other one.
    model_uri, tracking = private_registry
    client, trained = champion_training_run(model_uri, tracking)
    client.rename_experiment(trained.info.experiment_id, "renamed")
    result = run_cli("evaluate", model_uri, breast_cancer_files[1], "--tracking-uri", tracking)
    assert result.exit_code == 0, result.output
    evaluation = client.get_run(result.stderr.strip().split()[-1])
    assert evaluation.data.tags["mlflow.parentRunId"] == trained.info.run_id
    assert evaluation.info.experiment_id == trained.info.experiment_id
    assert [e.name for e in client.search_experiments()] == ["renamed", "Default"]


def test_a_model_read_after_its_experiment_was_deleted_is_one_line(
    private_registry, breast_cancer_files
) -> None:
    # MLflow deletes the experiment's runs with it: no parent run to log beside, and the
    # experiment of the model's name is the deleted one, refused as `train` refuses it.
    model_uri, tracking = private_registry
    client, trained = champion_training_run(model_uri, tracking)
    client.delete_experiment(trained.info.experiment_id)
    result = run_cli("evaluate", model_uri, breast_cancer_files[1], "--tracking-uri", tracking)
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("Error: experiment '") and "is deleted" in result.stderr


def champion_training_run(model_uri: str, tracking: str) -> tuple[mlflow.MlflowClient, Run]:
    """A client of the store and the run that trained the model's @champion version."""
    client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    name = model_uri.removeprefix("models:/").split("@")[0]
    return client, client.get_run(client.get_model_version_by_alias(name, "champion").run_id)


@pytest.fixture
def callers_mlflow(tmp_path: Path) -> Iterator[str]:
    """A notebook's own MLflow store and experiment, set as a user sets them; the experiment
    is unset after the test (conftest's `fresh_mlflow_settings` unsets the store)."""
    import mlflow.tracking.fluent

    uri = f"sqlite:///{tmp_path / 'notebook.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("my analysis")
    yield uri
    mlflow.tracking.fluent._active_experiment_id = None
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)  # which set_experiment sets beside it


def test_a_library_call_leaves_the_callers_mlflow_store_and_experiment(
    private_registry: tuple[str, str], breast_cancer_files, callers_mlflow: str, tmp_path: Path
) -> None:
    """`train(config, tracking_uri)`, `evaluate_file` and `load_model` pointed MLflow at their
    store for good: a notebook's own later runs went to that store, in the model's experiment."""
    from anomaly_vae.config import Config
    from pipelines.evaluate import evaluate_file
    from pipelines.runs import list_runs
    from pipelines.score import load_model
    from pipelines.train import train

    model_uri, tracking = private_registry
    train_path, test_path = breast_cancer_files
    load_model(model_uri, tracking)
    evaluate_file(model_uri, test_path, "label", tracking_uri=tracking)
    data = {"path": str(train_path), "label": "label", "id_columns": ["id"]}
    train(Config.model_validate({"data": data, "training": {"epochs": 1}}), tracking, str)
    assert mlflow.get_tracking_uri() == callers_mlflow
    assert not list_runs(tracking_uri=tracking).empty
    assert mlflow.get_tracking_uri() == callers_mlflow
    with mlflow.start_run() as run:
        pass
    assert mlflow.get_experiment(run.info.experiment_id).name == "my analysis"
    assert mlflow.MlflowClient(callers_mlflow).get_run(run.info.run_id)


def test_a_library_call_leaves_the_callers_mlflow_logging_and_environment(
    private_registry: tuple[str, str],
    breast_cancer_files,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """`load_model` (as scoring calls it) and `train` left MLflow's logger at WARNING and
    three MLFLOW_ variables set in the caller's environment: a notebook's own MLflow INFO
    lines went missing, and every process it started later inherited the variables."""
    import logging

    from anomaly_vae.config import Config
    from pipelines.score import load_model
    from pipelines.train import train

    quiet = [
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
        "MLFLOW_LOGGING_LEVEL",
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT",
    ]
    for name in quiet:
        monkeypatch.delenv(name, raising=False)
    logger = logging.getLogger("mlflow")
    request.addfinalizer(functools.partial(logger.setLevel, logger.level))
    logger.setLevel(logging.INFO)
    model_uri, tracking = private_registry
    train_path, test_path = breast_cancer_files
    load_model(model_uri, tracking).score_frame(pd.read_parquet(test_path).drop(columns="label"))
    assert logger.level == logging.INFO
    assert [name for name in quiet if name in os.environ] == []
    data = {"path": str(train_path), "label": "label", "id_columns": ["id"]}
    train(Config.model_validate({"data": data, "training": {"epochs": 1}}), tracking, str)
    assert logger.level == logging.INFO
    assert [name for name in quiet if name in os.environ] == []


def test_a_library_call_inside_the_callers_run_says_to_end_it(
    private_registry: tuple[str, str], breast_cancer_files, callers_mlflow: str
) -> None:
    """Inside a notebook's `with mlflow.start_run()`, evaluate_file stopped with MLflow's
    "already active ... call start_run with nested=True", an option its caller cannot pass."""
    from pipelines.evaluate import evaluate_file

    model_uri, tracking = private_registry
    with mlflow.start_run() as mine:
        with pytest.raises(InputError, match=f"run {mine.info.run_id} is active.*mlflow.end_run"):
            evaluate_file(model_uri, breast_cancer_files[1], "label", tracking_uri=tracking)
        assert mlflow.active_run().info.run_id == mine.info.run_id
