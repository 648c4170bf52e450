"""The benchmark's protocol split and its results table, on a tiny real run (no PyOD needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from benchmarks.detectors import OURS
from benchmarks.protocol import Table, protocol_split
from benchmarks.report import TABLE_COLUMNS, code_version, tabular_targets, write_results
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
    # The commit the benchmarked code is at, read here by git itself.
    head = subprocess.run(
        ["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
    )
    code = next(line for line in text.splitlines() if line.startswith("- code: "))
    assert code.startswith(
        f"- code: {head.stdout.strip()}" if head.returncode == 0 else "- code: not a git checkout"
    )
    assert section in text


def test_fit_time_and_the_auroc_it_is_judged_at_are_two_target_lines() -> None:
    """Fitting fast on every table but short of PyOD VAE's AUROC on one read as one MISSED
    fit-time line; the line now says which of the two failed, and by how much where."""
    import pandas as pd

    summary = pd.DataFrame(
        {
            "table": ["a", "b"] * 2,
            "detector": [OURS, OURS, "PyOD VAE", "PyOD VAE"],
            "auroc": [0.95, 0.915, 0.90, 0.920],
            "ap": [0.8, 0.7, 0.6, 0.6],
            "f1_ratio": [0.9, 0.9, 0.7, 0.7],
            "f1_ratio_trained": [0.7, 0.7, 0.7, 0.7],
            "fit_seconds": [1.0, 1.65, 10.0, 11.0],
            "rows_per_second": [1e6, 1e6, 4e4, 4e4],
        }
    )
    lines = tabular_targets(summary)
    assert "- met: fit time / PyOD VAE's: worst 0.15 on b" in "\n".join(lines)
    assert lines[-2] == (
        "- MISSED: AUROC at least PyOD VAE's, the fit-time target's condition: on 1 of 2 "
        "tables; b -0.005"
    )
    summary.loc[1, "auroc"] = 0.93
    assert tabular_targets(summary)[-2].startswith("- met: AUROC at least PyOD VAE's")


def test_the_code_line_says_when_tracked_files_differ_from_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run on uncommitted changes named the commit alone, as if its figures were that
    commit's. The results files, which a run rewrites itself after each part, do not count."""
    from anomaly_vae import tracking

    def git(*args: str) -> str:
        who = ["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
        command = ["git", "-C", str(tmp_path), *who, *args]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    package, results = tmp_path / "anomaly_vae", tmp_path / "benchmarks" / "results"
    package.mkdir()
    results.mkdir(parents=True)
    (package / "tracking.py").write_text("# tracked\n")
    (results / "today.md").write_text("# results\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "one commit")
    head = git("rev-parse", "HEAD")
    monkeypatch.setattr(tracking, "__file__", str(package / "tracking.py"))
    tracking.source_commit.cache_clear()
    try:
        assert code_version() == head
        (results / "today.md").write_text("# rewritten by the run\n")
        (package / "new.py").write_text("# untracked\n")
        assert code_version() == head
        (package / "tracking.py").write_text("# changed\n")
        assert code_version() == f"{head} with uncommitted changes"
    finally:
        tracking.source_commit.cache_clear()


def test_image_peers_train_on_the_images_our_model_trains_on_and_fill_the_table(
    tmp_path: Path,
) -> None:
    from anomaly_vae.config import Config
    from anomaly_vae.data.images import is_held_out, list_images
    from benchmarks.detectors import peers_available
    from benchmarks.image_peers import pixel_split, run_peers
    from benchmarks.images import results_table
    from pipelines.demo import write_digits

    train_dir, _ = write_digits(tmp_path)  # train/good: zeros; test/: zeros and other digits
    config = Config.model_validate(
        {"data": {"path": str(train_dir)}, "image": {"size": 8, "holdout_fraction": 0.3}}
    )
    split = pixel_split(config, str(tmp_path), size=4, held_out_only=True, echo=print)

    zeros = list_images(train_dir, config.image).items
    held = sum(is_held_out(item, 0.3, config.training.seed) for item in zeros)
    assert split.train.shape == (len(zeros) - held, 16)  # train and validation normals
    everything = list_images(tmp_path, config.image).items
    kept = [i for i in everything if i.label or is_held_out(i, 0.3, config.training.seed)]
    assert split.test.shape == (len(kept), 16) and split.labels.sum() == 9 * 20
    assert np.array_equal(split.labels, [item.label for item in kept])

    peers = [p for p in peers_available() if p != "PyOD VAE"]  # PyOD's VAE: ~10 s here
    rows = run_peers(split, peers, seed=0)
    assert [name for name, _ in rows] == peers
    metrics = dict(rows)
    assert metrics["IsolationForest"]["auroc"] > 0.9  # zeros against other digits
    for m in metrics.values():
        assert m["pixel_auroc"] is None and m["images_scored"] == len(kept)
        assert 0 <= m["average_precision"] <= 1 and m["train_s"] > 0

    # Without held-out normals (MNIST: a separate test file), every test image counts.
    whole = pixel_split(config, str(tmp_path), size=4, held_out_only=False, echo=print)
    assert whole.test.shape == (len(everything), 16) and not whole.labels.all()

    lines = results_table([(case, n, m) for case in ("a", "b") for n, m in rows])
    assert lines[0].startswith("| case | detector | auroc | average_precision | pixel_auroc |")
    assert lines[2].startswith("| a | IsolationForest | ") and " | - | " in lines[2]
    a = f"{metrics['IsolationForest']['auroc']:.4f}"  # the same in both cases
    assert f"mean AUROC over 2 cases, IsolationForest: {a} (lowest {a}, highest {a})" in lines
    assert not any(line.startswith("mean pixel AUROC") for line in lines)  # the peers make none


def test_the_tiles_run_once_per_split_seed_and_the_table_sums_up_pixel_auroc_too() -> None:
    from benchmarks.detectors import OURS
    from benchmarks.images import cases, results_table

    tiles = cases("magnetic_tile", [], ["training.epochs=5"], seeds=3)
    assert [case[0] for case in tiles] == [f"magnetic tile, seed {s}" for s in range(3)]
    assert [case[2] for case in tiles] == [
        ["training.epochs=5", f"training.seed={s}"] for s in range(3)
    ]
    assert all(case[4] for case in tiles)  # evaluated on the held-out normals and the defects

    rows = [
        (f"seed {s}", OURS, {"auroc": auroc, "pixel_auroc": pixel})
        for s, (auroc, pixel) in enumerate([(0.8, 0.7), (0.9, 0.75), (0.85, 0.8)])
    ]
    lines = results_table(rows)
    assert f"mean AUROC over 3 cases, {OURS}: 0.8500 (lowest 0.8000, highest 0.9000)" in lines
    assert f"mean pixel AUROC over 3 cases, {OURS}: 0.7500 (lowest 0.7000, highest 0.8000)" in lines


def test_detectors_take_turns_at_scoring_and_keep_their_fastest_call(monkeypatch) -> None:
    """Every detector gets at least one call and its share of seconds in each round; a slow
    spell of the machine cannot fall on one detector's whole window."""
    from itertools import cycle, groupby

    from benchmarks import detectors
    from benchmarks.detectors import Outcome, time_scoring

    clock, calls = [0.0], []

    def scorer(name: str, seconds: list[float]):
        durations = cycle(seconds)

        def score() -> None:
            calls.append(name)
            clock[0] += next(durations)

        return score

    monkeypatch.setattr(detectors.time, "perf_counter", lambda: clock[0])
    empty = np.zeros(0)
    quick = Outcome(empty, empty, 0.0, scorer("quick", [0.3, 0.1, 0.2]))
    slow = Outcome(empty, empty, 0.0, scorer("slow", [1.5, 0.9]))
    time_scoring([quick, slow])
    turns = [name for name, _ in groupby(calls)]
    assert turns == ["quick", "slow"] * detectors.SCORING_ROUNDS
    assert calls.count("slow") == detectors.SCORING_ROUNDS  # one call fills its window
    assert quick.score_seconds == pytest.approx(0.1) and slow.score_seconds == pytest.approx(0.9)
