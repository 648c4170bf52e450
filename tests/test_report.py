"""The evaluation report: its figures, its numbers and the curves behind them."""

from __future__ import annotations

import re

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from anomaly_vae.calibration import threshold_metrics
from anomaly_vae.evaluation.metrics import recall_at_fprs, threshold_sweep, top_feature_counts
from anomaly_vae.evaluation.report import render_html
from anomaly_vae.evaluation.sections import TOP_ROWS_SHOWN, top_anomaly_sections
from pipelines.evaluate import evaluate_scores
from pipelines.score import load_model

FIGURES = {
    "roc_pr",
    "score_histogram",
    "threshold_sweep",
    "confusion_matrix",
    "recall_at_fpr",
    "cost_curve",
    "top_features",
}


@pytest.fixture
def scored() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    scores = np.round(np.concatenate([rng.normal(0, 1, 2000), rng.normal(2, 1, 60)]), 2)
    return scores, np.r_[np.zeros(2000, bool), np.ones(60, bool)]


def test_sweep_matches_threshold_metrics(scored) -> None:
    scores, labels = scored
    sweep = threshold_sweep(scores, labels)
    assert sweep["threshold"].is_monotonic_increasing
    for row in sweep.iloc[:: len(sweep) // 10].itertuples():
        expected = threshold_metrics(scores, labels, row.threshold)
        for name in ("precision", "recall", "f1", "fpr", "alert_rate"):
            assert getattr(row, name) == pytest.approx(expected[name]), (name, row.threshold)


def test_recall_at_fpr_is_the_best_recall_within_the_budget(scored) -> None:
    scores, labels = scored
    for fpr, recall in recall_at_fprs(scores, labels).items():
        candidates = [threshold_metrics(scores, labels, t) for t in np.unique(scores)]
        best = max(m["recall"] for m in candidates if m["fpr"] <= fpr)
        assert recall == pytest.approx(best), fpr


def test_top_feature_counts_rank_features_by_rows() -> None:
    counts = top_feature_counts(["a,b,c", "b,c,d", "c,a,b"])
    assert counts.to_dict() == {"b": 3, "c": 3, "a": 2, "d": 1}
    # A number's high and low values count for its one column.
    counts = top_feature_counts(["a (high),b,c (low)", "a (low),c (low)", "b,a (high)"])
    assert counts.to_dict() == {"a": 3, "b": 2, "c": 2}


def test_report_embeds_every_figure_and_the_metric_values(
    breast_cancer_model, breast_cancer_files, tmp_path
) -> None:
    model_uri, tracking = breast_cancer_model
    _, test = breast_cancer_files
    report = tmp_path / "report.html"
    result = run_cli(
        "evaluate", model_uri, test, "-o", report,
        "--cost-fn", 5, "--cost-fp", 1, "--tracking-uri", tracking,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    html = report.read_text()
    assert html.count('<img alt="') == html.count('src="data:image/png;base64,') == len(FIGURES)
    # The version the alias named then: it moves, and the report is kept.
    name, alias = model_uri.removeprefix("models:/").split("@")
    client = mlflow.MlflowClient(tracking_uri=tracking)
    version = client.get_model_version_by_alias(name, alias).version
    assert f"<h1>Evaluation of {model_uri} ({name}/{version})</h1>" in html
    assert "http://" not in html and "https://" not in html  # nothing to fetch: opens offline
    shown = {
        name: float(value)
        for name, value in re.findall(r'data-metric="([^"]+)" data-value="([^"]+)"', html)
    }

    # The same numbers, recomputed from the model's scores by the metric functions.
    detector = load_model(model_uri, tracking)
    frame = pd.read_parquet(test)
    scored = detector.score_frame(frame.drop(columns="label"))
    scores = scored["score"].to_numpy()
    labels = frame["label"].to_numpy() == 1
    expected = evaluate_scores(scores, labels, detector.threshold.value).metrics
    assert set(expected) <= set(shown)
    for name, value in expected.items():
        assert shown[name] == pytest.approx(value, rel=1e-9), name
    assert {"recall_at_fpr_0.001", "recall_at_fpr_0.01", "recall_at_fpr_0.05"} <= set(shown)
    fp_cost = np.sum((scores >= detector.threshold.value) & ~labels)
    fn_cost = 5 * np.sum((scores < detector.threshold.value) & labels)
    assert shown["expected_cost"] == pytest.approx((fp_cost + fn_cost) / len(scores))
    # The top rows, with the features that scoring names for each.
    top_features = scored.nlargest(TOP_ROWS_SHOWN, "score")["top_features"].tolist()
    assert [c for c in re.findall(r"<td>([^<]*)</td>", html) if "," in c] == top_features

    # The MLflow run holds the same figures and metrics.
    run_id = result.stderr.strip().split()[-1]
    client = mlflow.MlflowClient(tracking_uri=tracking)
    logged = {a.path for a in client.list_artifacts(run_id, "figures")}
    assert logged == {f"figures/{name}.png" for name in FIGURES}
    logged_run = client.get_run(run_id).data
    assert logged_run.metrics["test.recall_at_fpr_0.01"] == pytest.approx(
        shown["recall_at_fpr_0.01"]
    )
    # And the costs its expected cost was measured with.
    assert logged_run.metrics["test.expected_cost"] == pytest.approx(shown["expected_cost"])
    costs = {k: v for k, v in logged_run.params.items() if k.startswith("test.cost_")}
    assert costs == {"test.cost_fn": "5.0", "test.cost_fp": "1.0"}


def test_the_top_rows_show_ids_whole_and_scores_rounded() -> None:
    """A float id (the credit-card sample's 'Unnamed: 0') was printed as 2.146e+05."""
    rows = pd.DataFrame(
        {
            "label": [1, 0],
            "Unnamed: 0": [214612.0, 1234567.0],
            "recon_score": [3519.1234, 12.5],
            "kl_score": [205.34, 1.0],
            "score": [3724.4634, 13.5],
            "is_anomaly": [True, False],
            "probability": [1.0, 0.0123456],
            "top_features": ["V16,V9,V19", "V1,V2,V3"],
        }
    )
    html = render_html("report", {}, {}, top_anomaly_sections(rows))
    cells = re.findall(r"<td>([^<]*)</td>", html)
    assert cells[:8] == ["1", "214612.0", "3519", "205.3", "3724", "True", "1", "V16,V9,V19"]
    assert cells[8:] == ["0", "1234567.0", "12.5", "1", "13.5", "False", "0.01235", "V1,V2,V3"]


def test_a_bad_report_path_fails_and_writes_nothing(
    breast_cancer_model, breast_cancer_files, tmp_path
) -> None:
    model_uri, tracking = breast_cancer_model
    _, test = breast_cancer_files
    for target, message in (
        (tmp_path / "report.txt", "written as .html"),
        (tmp_path / "missing" / "report.html", "does not exist"),
    ):
        result = run_cli("evaluate", model_uri, test, "-o", target, "--tracking-uri", tracking)
        assert result.exit_code != 0 and message in result.output
        assert not target.exists()


def test_cost_options_must_come_in_pairs(breast_cancer_model, breast_cancer_files) -> None:
    model_uri, tracking = breast_cancer_model
    _, test = breast_cancer_files
    result = run_cli("evaluate", model_uri, test, "--cost-fn", 3, "--tracking-uri", tracking)
    assert result.exit_code != 0 and "--cost-fn and --cost-fp go together" in result.output


def test_the_top_features_figure_draws_column_names_with_dollar_signs_as_written() -> None:
    import io

    from anomaly_vae.evaluation.figures import top_features_figure

    figure = top_features_figure(pd.Series({"fee_$x^$": 3, "amount_$": 2, "plain": 1}), 10)
    figure.savefig(io.BytesIO(), format="png")  # parsed as TeX, the first raised ValueError
    drawn = [label._preprocess_math(label.get_text()) for label in figure.axes[0].get_yticklabels()]
    assert drawn == [("plain", False), ("amount_$", False), ("fee_$x^$", False)]
