"""The benchmark's protocol split and its results table, on a tiny real run (no PyOD needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from benchmarks.detectors import OURS
from benchmarks.protocol import Table, protocol_split
from benchmarks.report import TABLE_COLUMNS, write_results
from benchmarks.tabular import run_tables, tabular_section


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return np.random.default_rng(5).random(1000) < 0.1


def test_split_keeps_anomalies_out_of_training_and_tests_every_other_row(
    labels: np.ndarray,
) -> None:
    split = protocol_split(labels, seed=0)
    assert not labels[split.train].any()
    assert len(split.train) == round(0.7 * (~labels).sum())
    assert labels[split.test].sum() == labels.sum()
    assert np.intersect1d(split.train, split.test).size == 0
    assert len(split.train) + len(split.test) == len(labels)


def test_split_is_reproducible_by_seed_and_a_cap_leaves_the_test_set_alone(
    labels: np.ndarray,
) -> None:
    first, again, other = (protocol_split(labels, s) for s in (3, 3, 4))
    assert np.array_equal(first.train, again.train) and np.array_equal(first.test, again.test)
    assert not np.array_equal(np.sort(first.train), np.sort(other.train))
    capped = protocol_split(labels, 3, max_train_rows=100)
    assert np.array_equal(capped.train, first.train[:100])
    assert np.array_equal(capped.test, first.test)
    assert capped.train_rows_available == len(first.train)


def test_tiny_run_fills_the_table_and_the_results_file(tmp_path: Path) -> None:
    data = load_breast_cancer(as_frame=True)
    table = Table("breast_cancer", data.data, data.target.to_numpy() == 0)  # malignant
    runs, notes = run_tables(
        [table],
        seeds=2,
        max_train_rows=200,
        peers=("IsolationForest",),
        overrides={"training": {"epochs": 2}},
        echo=lambda line: None,
    )
    assert sorted(runs.detector.unique()) == sorted([OURS, "IsolationForest"])
    assert len(runs) == 4
    assert runs.auroc.between(0, 1).all() and runs.f1_ratio.between(0, 1).all()
    assert (runs.fit_seconds > 0).all() and (runs.rows_per_second > 0).all()
    assert notes == {"breast_cancer": "trained on 200 of 250 rows"}

    section = tabular_section(runs, notes, seeds=2)
    lines = section.splitlines()
    header = lines.index("| " + " | ".join(TABLE_COLUMNS) + " |")
    rows = [line.split(" | ") for line in lines[header + 2 : header + 4]]
    assert [r[1] for r in rows] == [f"**{OURS}**", "IsolationForest"]
    for row, (_, run) in zip(rows, runs.groupby("detector", sort=False), strict=True):
        assert row[2] == f"{run.auroc.mean():.3f} ± {run.auroc.std(ddof=0):.3f}"
    assert any(line.startswith(("- met: mean AUROC", "- MISSED: mean AUROC")) for line in lines)

    path = write_results([section], tmp_path / "results.md")
    text = path.read_text()
    assert "- command: `" in text and "- machine: " in text and "cores" in text
    assert section in text
