"""Re-choosing thresholds: cost and quantile strategies, `calibrate`, probabilities, `runs`."""

from __future__ import annotations

import os
import shutil
import signal

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_cli
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from anomaly_vae.calibration import (
    Costs,
    choose_threshold,
    estimated_f1_threshold,
    threshold_metrics,
)
from anomaly_vae.detector import WEIGHTS_FILE, load_detector
from anomaly_vae.errors import InputError
from anomaly_vae.probability import ProbabilityMap
from anomaly_vae.tracking import resolve_detector_dir
from pipelines.runs import list_runs


@pytest.fixture
def scored() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    scores = np.round(np.concatenate([rng.normal(0, 1, 1500), rng.normal(2, 1, 80)]), 2)
    return scores, np.r_[np.zeros(1500, bool), np.ones(80, bool)]


@pytest.mark.parametrize("fn, fp", [(1, 1), (20, 1), (200, 1), (1, 50)])
def test_cost_strategy_agrees_with_brute_force(scored, fn: float, fp: float) -> None:
    scores, labels = scored
    chosen = choose_threshold(scores, labels, "cost", Costs(fn=fn, fp=fp))

    def cost(threshold: float) -> float:
        flagged = scores >= threshold
        return (fn * np.sum(~flagged & labels) + fp * np.sum(flagged & ~labels)) / len(scores)

    candidates = [*np.unique(scores), np.inf]  # every distinct flagging, and flagging nothing
    assert chosen.metrics["expected_cost"] == pytest.approx(cost(chosen.value))
    assert cost(chosen.value) == pytest.approx(min(cost(t) for t in candidates))
    assert chosen.costs == {"fn": fn, "fp": fp}


def test_dearer_misses_lower_the_threshold(scored) -> None:
    scores, labels = scored
    cheap = choose_threshold(scores, labels, "cost", Costs(fn=1, fp=1))
    dear = choose_threshold(scores, labels, "cost", Costs(fn=100, fp=1))
    assert dear.value < cheap.value and dear.metrics["recall"] > cheap.metrics["recall"]


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_quantile_is_an_alert_budget_without_labels(scored, q: float) -> None:
    scores, _ = scored
    chosen = choose_threshold(scores, None, f"quantile={q}")
    allowed = int(np.floor(round((1 - q) * len(scores), 9)))
    assert np.sum(scores >= chosen.value) <= allowed
    # The lowest such threshold: the next lower score would flag more than allowed.
    assert np.sum(scores >= np.max(scores[scores < chosen.value])) > allowed


def test_cost_needs_costs_and_labels(scored) -> None:
    scores, labels = scored
    with pytest.raises(InputError, match="--cost-fn"):
        choose_threshold(scores, labels, "cost")
    with pytest.raises(InputError, match="--cost-fn"):
        choose_threshold(scores, labels, "f1", Costs(fn=1, fp=1))
    with pytest.raises(InputError, match="needs labelled normals and anomalies"):
        choose_threshold(scores, None, "cost", Costs(fn=1, fp=1))
    with pytest.raises(InputError, match="positive"):
        Costs(fn=0, fp=1)


@pytest.mark.parametrize("method", ["isotonic", "logistic"])
def test_probability_matches_scikit_learn_and_survives_json(scored, method: str) -> None:
    scores, labels = scored
    fitted = ProbabilityMap.from_dict(ProbabilityMap.fit(scores, labels, method).to_dict())
    grid = np.linspace(scores.min() - 1, scores.max() + 1, 301)
    if method == "isotonic":
        reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(scores, labels)
        expected = reference.predict(grid)
    else:
        center, scale = scores.mean(), scores.std()
        reference = LogisticRegression().fit(((scores - center) / scale)[:, None], labels)
        expected = reference.predict_proba(((grid - center) / scale)[:, None])[:, 1]
    assert fitted.predict(grid) == pytest.approx(expected, abs=1e-9)


def test_probability_column_is_in_unit_range_and_monotone(
    breast_cancer_model, breast_cancer_files, tmp_path
) -> None:
    model_uri, tracking = breast_cancer_model
    _, test = breast_cancer_files
    out = tmp_path / "scored.parquet"
    result = run_cli("score", model_uri, test, "-o", out, "--allow-extra-columns",
                     "--tracking-uri", tracking)  # fmt: skip
    assert result.exit_code == 0, result.output
    scored = pd.read_parquet(out).sort_values("score")
    probability = scored["probability"].to_numpy()
    assert ((probability >= 0) & (probability <= 1)).all()
    assert (np.diff(probability) >= 0).all()
    assert probability[-10:].mean() > probability[:10].mean()  # it separates, not a constant


def test_calibrate_registers_a_new_version_and_promotes_only_when_asked(
    private_registry, breast_cancer_files, tmp_path
) -> None:
    model_uri, tracking = private_registry
    _, test = breast_cancer_files
    client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    name = model_uri.removeprefix("models:/").split("@")[0]
    champion = int(client.get_model_version_by_alias(name, "champion").version)
    before = load_detector(resolve_detector_dir(model_uri, tracking))

    result = run_cli("calibrate", model_uri, test, "--strategy", "cost", "--cost-fn", 20,
                     "--cost-fp", 1, "--tracking-uri", tracking)  # fmt: skip
    assert result.exit_code == 0, result.output
    new_uri = result.stdout.strip().splitlines()[-1]
    assert new_uri == f"models:/{name}/{champion + 1}"
    # Our lines only: MLflow printed "Registered model '...' already exists..." among them.
    ours = ("threshold ", "calibrated probability: ", f"registered {new_uri}; champion unchanged")
    assert all(line.startswith(ours) for line in result.stderr.strip().splitlines())
    assert int(client.get_model_version_by_alias(name, "champion").version) == champion
    old_dir, new_dir = (resolve_detector_dir(u, tracking) for u in (model_uri, new_uri))
    assert (old_dir / WEIGHTS_FILE).read_bytes() == (new_dir / WEIGHTS_FILE).read_bytes()
    after = load_detector(new_dir)
    assert after.threshold.strategy == "cost" and after.threshold.costs == {"fn": 20, "fp": 1}
    assert after.threshold.value != before.threshold.value
    assert client.get_model_version(name, str(champion + 1)).description == (
        # The version the alias pointed at, which stays true once the alias moves.
        f"A tabular anomaly-vae detector recalibrated on {test} from models:/{name}/{champion}; "
        f"threshold {after.threshold.value:.6g} by cost."
    )
    # The run holds the costs and probability method, under the training run's param names.
    run_id = result.stderr.strip().split(" run ")[-1]
    params = client.get_run(run_id).data.params
    named = ("calibration.cost_fn", "calibration.cost_fp", "calibration.probability")
    assert [params[name] for name in named] == ["20.0", "1.0", "isotonic"]
    # The threshold is the cost-optimal one on the file it was calibrated on.
    frame = pd.read_parquet(test)
    scores = after.score_frame(frame.drop(columns="label"))["score"].to_numpy()
    labels = frame["label"].to_numpy() == 1
    assert after.threshold.value == choose_threshold(scores, labels, "cost", Costs(20, 1)).value

    # Without labels (the file lacks the label column) quantile still works; --promote moves
    # the alias, and the probability fitted before is kept.
    unlabelled = tmp_path / "unlabelled.parquet"
    frame.drop(columns="label").to_parquet(unlabelled)
    result = run_cli("calibrate", model_uri, unlabelled, "--strategy", "quantile=0.9",
                     "--promote", "--tracking-uri", tracking)  # fmt: skip
    assert result.exit_code == 0, result.output
    promoted = result.stdout.strip().splitlines()[-1]
    assert promoted == f"models:/{name}/{champion + 2}"
    assert int(client.get_model_version_by_alias(name, "champion").version) == champion + 2
    latest = load_detector(resolve_detector_dir(model_uri, tracking))
    assert threshold_metrics(scores, None, latest.threshold.value)["alert_rate"] <= 0.1
    assert latest.probability is not None
    assert latest.probability.to_dict() == before.probability.to_dict()


def test_a_calibrated_version_keeps_the_source_versions_signature(
    private_registry, breast_cancer_files, tmp_path
) -> None:
    # Built from the calibration file, a file without ids gave a version whose REST and Spark
    # answers carried no ids.
    model_uri, tracking = private_registry
    frame = pd.read_parquet(breast_cancer_files[1])
    without_ids = tmp_path / "without_ids.parquet"
    frame.drop(columns="id").to_parquet(without_ids)
    result = run_cli("calibrate", model_uri, without_ids, "--strategy", "f1",
                     "--tracking-uri", tracking)  # fmt: skip
    assert result.exit_code == 0, result.output
    new_uri = result.stdout.strip().splitlines()[-1]
    mlflow.set_tracking_uri(tracking)
    signatures = [mlflow.models.get_model_info(u).signature for u in (model_uri, new_uri)]
    assert signatures[1] == signatures[0]
    assert "id" in signatures[1].inputs.input_names()
    answer = mlflow.pyfunc.load_model(new_uri).predict(frame.drop(columns="label").head(3))
    assert answer["id"].tolist() == frame["id"].head(3).tolist()


def test_calibrating_a_detector_folder_takes_its_example_as_training_does(
    private_registry, breast_cancer_files, tmp_path
) -> None:
    # A detector folder has no logged example, so the file's first rows are the new version's;
    # an id missing in one (pandas' Int64) failed MLflow's check of them: a traceback once the
    # file had scored, as training's did before.
    model_uri, tracking = private_registry
    folder = tmp_path / "detector"
    shutil.copytree(resolve_detector_dir(model_uri, tracking), folder)
    frame = pd.read_parquet(breast_cancer_files[1]).astype({"id": "Int64"})
    frame.loc[0, "id"] = pd.NA
    gapped = tmp_path / "gapped_ids.parquet"
    frame.to_parquet(gapped)
    result = run_cli("calibrate", folder, gapped, "--strategy", "f1", "--tracking-uri", tracking)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1].startswith("models:/")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--strategy", "best"], "calibration strategy 'best'"),
        (["--strategy", "f1", "--label", "nolabel"], "missing label column 'nolabel'"),
        (["--strategy", "cost"], "the cost strategy needs"),
        (["--strategy", "cost", "--cost-fn", "-1", "--cost-fp", "1"], "positive"),
    ],
)
def test_calibrate_refuses_bad_options(
    args, message, private_registry, breast_cancer_files
) -> None:
    model_uri, tracking = private_registry
    _, test = breast_cancer_files
    result = run_cli("calibrate", model_uri, test, *args, "--tracking-uri", tracking)
    assert result.exit_code != 0 and message in result.output
    client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    name = model_uri.removeprefix("models:/").split("@")[0]
    assert len(client.search_model_versions(f"name='{name}'")) == 1


def test_runs_lists_the_training_run_with_its_metrics(breast_cancer_model, monkeypatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)  # piped: one line a run
    model_uri, tracking = breast_cancer_model
    client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    name = model_uri.removeprefix("models:/").split("@")[0]
    run_id = client.get_model_version_by_alias(name, "champion").run_id
    auroc = client.get_run(run_id).data.metrics["validation.auroc"]
    experiment = client.get_experiment(client.get_run(run_id).info.experiment_id).name

    result = run_cli("runs", "--experiment", experiment, "--tracking-uri", tracking)
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert "validation.auroc" in header.split()
    row = next(r for r in rows if r.startswith(run_id))
    assert f"{auroc:.4g}" in row.split()
    assert header.split()[:4] == ["run_id", "started", "status", "name"]
    assert row.split()[3] == "FINISHED"  # after the date and time

    missing = run_cli("runs", "--experiment", "nope", "--tracking-uri", tracking)
    assert missing.exit_code != 0 and "experiment 'nope' not found" in missing.output

    # Within a terminal's width (COLUMNS), the columns wrap in blocks led by the run ids: a
    # line of 350 characters or more was broken mid-column.
    monkeypatch.setenv("COLUMNS", "100")
    result = run_cli("runs", "--experiment", experiment, "--tracking-uri", tracking)
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 100 < len(header)
    blocks = [line for line in lines if line.startswith(run_id)]
    assert len(blocks) > 1 and f"{auroc:.4g}" in " ".join(blocks).split()


@pytest.mark.parametrize(
    "stop, status",
    [(InputError("training diverged"), "FAILED"), (KeyboardInterrupt(), "KILLED")],
)
def test_runs_shows_a_training_that_failed_or_was_stopped_as_such(
    breast_cancer_files, tracking_uri, tmp_path, monkeypatch, stop: BaseException, status: str
) -> None:
    """A training that raised after its run began, or that Ctrl-C stopped, was listed like a
    finished one: '-' for every metric and no status."""

    def fit_vae(*args: object, **kwargs: object) -> None:
        raise stop

    monkeypatch.setattr("anomaly_vae.training.fit_vae", fit_vae)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data": {"path": str(breast_cancer_files[0])}}))
    assert run_cli("train", config).exit_code == (130 if status == "KILLED" else 1)

    monkeypatch.delenv("COLUMNS", raising=False)  # piped: one line a run
    result = run_cli("runs", "--experiment", "config")
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()
    assert header.split()[:4] == ["run_id", "started", "status", "name"]
    assert row.split()[3:6] == [status, "train", breast_cancer_files[0].name]


@pytest.mark.parametrize(
    "signum, after_call",
    [(signal.SIGINT, "create_model_version"), (signal.SIGTERM, "set_registered_model_alias")],
)
def test_a_signal_once_calibrate_registers_finishes_it_and_names_the_version(
    private_registry, breast_cancer_files, monkeypatch, signum: int, after_call: str
) -> None:
    """Ctrl-C just after the version was made left champion where it was despite --promote
    ("Aborted!"); SIGTERM just after champion moved exited 143 without a word: either way
    the user could not tell what the registry now held."""
    model_uri, tracking = private_registry
    client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    name = model_uri.removeprefix("models:/").split("@")[0]
    version = int(client.get_model_version_by_alias(name, "champion").version) + 1
    call = getattr(mlflow.MlflowClient, after_call)

    def then_signalled(*args: object, **kwargs: object) -> object:
        answer = call(*args, **kwargs)
        os.kill(os.getpid(), signum)
        return answer

    monkeypatch.setattr(mlflow.MlflowClient, after_call, then_signalled)
    result = run_cli("calibrate", model_uri, breast_cancer_files[1], "--promote",
                     "--tracking-uri", tracking)  # fmt: skip

    assert result.exit_code == 128 + signum
    *lines, last = result.stderr.strip().splitlines()
    assert f"registered models:/{name}/{version}; champion now points to it; run " in lines[-1]
    assert last == (
        f"stopped by {signal.Signals(signum).name} after the version above was registered; "
        "it stands"
    )
    assert result.stdout == f"models:/{name}/{version}\n"
    assert int(client.get_model_version_by_alias(name, "champion").version) == version
    run_id = lines[-1].rsplit(" ", 1)[-1]
    assert client.get_run(run_id).info.status == "FINISHED"  # its work is done


def test_calibrate_without_labels_estimates_f1_against_the_kept_normal_scores(
    private_registry, breast_cancer_files, tmp_path
) -> None:
    model_uri, tracking = private_registry
    _, test = breast_cancer_files
    before = load_detector(resolve_detector_dir(model_uri, tracking))
    assert before.normal is not None  # training keeps its normal validation scores
    assert before.threshold.value > before.normal.quantiles[0]
    frame = pd.read_parquet(test)
    unlabelled = tmp_path / "unlabelled.parquet"
    frame.drop(columns="label").to_parquet(unlabelled)

    result = run_cli("calibrate", model_uri, unlabelled, "--tracking-uri", tracking)

    assert result.exit_code == 0, result.output
    after = load_detector(resolve_detector_dir(result.stdout.strip().splitlines()[-1], tracking))
    assert after.threshold.strategy == "estimated-f1"
    scores = after.score_frame(frame.drop(columns="label"))["score"].to_numpy()
    expected, estimates = estimated_f1_threshold(scores, before.normal)
    assert after.threshold.value == expected
    labels = frame["label"].to_numpy() == 1
    share = after.threshold.metrics["estimated_anomaly_share"]
    assert share == estimates["estimated_anomaly_share"]
    assert abs(share - labels.mean()) < 0.15  # the demo test set's malignant share, unlabelled
    assert after.normal.to_list() == before.normal.to_list()
    # `runs` shows what the threshold was chosen on: the estimate, as there were no labels.
    runs = list_runs(tracking_uri=tracking).set_index("run_id")
    estimate = runs.loc[after.info["calibration_run_id"], "calibration.estimated_f1"]
    assert estimate == after.threshold.metrics["estimated_f1"]


def test_calibrate_on_anomalies_alone_names_the_labels_not_a_strategy_never_given(
    breast_cancer_model, breast_cancer_files, tmp_path
) -> None:
    """Without --strategy the refusal read "calibration 'f1' needs labelled normals...", as if
    the user had chosen f1; it names the file and says f1 is the default for labelled data."""
    model_uri, tracking = breast_cancer_model
    _, test = breast_cancer_files
    frame = pd.read_parquet(test)
    anomalies = tmp_path / "anomalies.parquet"
    frame[frame["label"] == 1].to_parquet(anomalies)

    result = run_cli(
        "calibrate", model_uri, anomalies, "--label", "label", "--tracking-uri", tracking
    )

    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {anomalies}: every label marks an anomaly; calibrating labelled data without "
        "--strategy chooses by f1, which needs labelled normals too: add some, or pass "
        "--strategy estimated-f1 or quantile=Q\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anomalies.parquet"]


def test_calibrate_names_images_given_to_a_table_model_as_score_does(
    private_registry, tmp_path
) -> None:
    """An IDX file was refused for its '.gz' extension, as if it were a misnamed table."""
    from anomaly_vae.data.images import write_idx

    model_uri, tracking = private_registry
    images = tmp_path / "t-images-idx3-ubyte.gz"
    write_idx(images, np.zeros((3, 4, 4), np.uint8))
    result = run_cli("calibrate", model_uri, images, "--tracking-uri", tracking)
    assert result.exit_code != 0
    assert result.stderr == (
        f"Error: {images}: an IDX file of images, but model '{model_uri}' was trained on a "
        "table: give a CSV or Parquet file, or a folder of Parquet files\n"
    )
    client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    name = model_uri.removeprefix("models:/").split("@")[0]
    assert len(client.search_model_versions(f"name='{name}'")) == 1
