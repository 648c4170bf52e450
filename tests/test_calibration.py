"""Threshold strategies against brute force over every candidate threshold."""

import numpy as np
import pytest

from anomaly_vae.calibration import (
    REFERENCE_QUANTILES,
    Costs,
    NormalScores,
    choose_threshold,
    parse_strategy,
    threshold_metrics,
)
from anomaly_vae.errors import InputError
from anomaly_vae.probability import METHODS, ProbabilityMap


@pytest.fixture
def scored() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    normal = rng.normal(0, 1, 900)
    anomalous = rng.normal(2.5, 1, 100)
    return np.concatenate([normal, anomalous]), np.r_[np.zeros(900, bool), np.ones(100, bool)]


def _brute_force(scores: np.ndarray, labels: np.ndarray) -> list[dict]:
    return [dict(threshold=t, **threshold_metrics(scores, labels, t)) for t in np.unique(scores)]


def test_f1_picks_the_best_f1_threshold(scored) -> None:
    scores, labels = scored
    chosen = choose_threshold(scores, labels, "f1")
    best = max(_brute_force(scores, labels), key=lambda m: m["f1"])
    assert chosen.metrics["f1"] == pytest.approx(best["f1"])


def test_recall_bound_is_met_with_best_precision(scored) -> None:
    scores, labels = scored
    chosen = choose_threshold(scores, labels, "recall>=0.9")
    feasible = [m for m in _brute_force(scores, labels) if m["recall"] >= 0.9]
    assert chosen.metrics["recall"] >= 0.9
    assert chosen.metrics["precision"] == pytest.approx(max(m["precision"] for m in feasible))


def test_precision_bound_is_met_with_best_recall(scored) -> None:
    scores, labels = scored
    chosen = choose_threshold(scores, labels, "precision>=0.8")
    feasible = [m for m in _brute_force(scores, labels) if m["precision"] >= 0.8]
    assert chosen.metrics["precision"] >= 0.8
    assert chosen.metrics["recall"] == pytest.approx(max(m["recall"] for m in feasible))


@pytest.mark.parametrize("fpr", [0.001, 0.01, 0.05, 0.2])
def test_fpr_budget_on_normals_only(scored, fpr: float) -> None:
    scores, labels = scored
    normals = scores[~labels]
    chosen = choose_threshold(normals, None, f"fpr<={fpr}")
    flagged = int(np.sum(normals >= chosen.value))
    assert flagged <= fpr * len(normals)
    # The lowest such threshold: one step down would flag one row more than allowed.
    assert int(np.sum(normals >= np.max(normals[normals < chosen.value]))) > fpr * len(normals)


@pytest.mark.parametrize("strategy", ["fpr<=0.29", "fpr<=0.57", "quantile=0.71", "quantile=0.9"])
def test_a_budget_that_is_a_whole_number_of_rows_flags_all_of_them(strategy: str) -> None:
    """0.29 * 100 is 28.999... in binary: the budget of 29 rows flagged 28."""
    scores = np.arange(100.0)
    kind, bound = parse_strategy(strategy)
    share = bound if kind == "fpr<=" else 1 - bound
    chosen = choose_threshold(scores, None, strategy)
    assert np.sum(scores >= chosen.value) == round(share * 100)


@pytest.mark.parametrize(
    "strategy", ["f1", "recall>=1", "recall>=0.9", "precision>=0.8", "fpr<=0.05", "quantile=0.9"]
)
def test_float_noise_does_not_flip_the_rows_beside_the_threshold(scored, strategy: str) -> None:
    """Scores move by a few 1e-7 (relative) with the rows batched with them: a threshold on a
    row's own score let the anomaly recall>=1 caught score alone as normal."""
    scores, labels = scored
    scores = scores + 50.0  # a VAE's scale, where float32 noise is a few 1e-6 absolute
    chosen = choose_threshold(scores, labels, strategy)
    flagged = scores >= chosen.value
    lowest, highest = np.min(scores[flagged]), np.max(scores[~flagged])
    assert lowest * (1 - 5e-7) >= chosen.value > highest * (1 + 5e-7)


@pytest.mark.parametrize("scores", [np.full(60, 50.2139), np.linspace(40.0, 50.0, 60)])
def test_a_threshold_above_every_score_keeps_clear_of_the_highest(scores) -> None:
    """With no validation row flagged (fewer than 100 normals, or normals that tie, as a
    constant column's do) the threshold sat one float step above the highest score, and a
    normal row scored alone, a few 1e-7 higher, was flagged."""
    chosen = choose_threshold(scores, None, "fpr<=0.01")
    assert chosen.value > scores.max() * (1 + 5e-7)
    assert chosen.metrics["alert_rate"] == 0.0


@pytest.mark.parametrize("strategy", ["fpr<=0.001", "quantile=0.999", "recall>=1"])
def test_float_noise_does_not_flip_the_outermost_row_when_all_or_none_are_flagged(
    strategy: str,
) -> None:
    """With no row on the threshold's other side the threshold sat one float step above the
    highest normal (no row flagged) or on the lowest score (every row flagged), where that
    row's batch decided."""
    scores = np.random.default_rng(0).normal(50, 1, 100)
    labels = np.zeros(100, bool)
    labels[np.argmin(scores)] = True  # recall>=1 must flag every row, down to this anomaly
    chosen = choose_threshold(scores, labels, strategy)
    flagged = scores >= chosen.value
    if flagged.any():
        assert flagged.all() and np.min(scores) * (1 - 5e-7) >= chosen.value
    else:
        assert chosen.value > np.max(scores) * (1 + 5e-7)


def test_a_clean_batch_threshold_clears_its_highest_row() -> None:
    """The clean-day threshold, one float step above the highest reference normal, sat on a
    batch row of that score: the normal validation rows calibrated again unlabelled."""
    normals = np.random.default_rng(0).normal(50, 1, 500)
    chosen = choose_threshold(
        normals, None, "estimated-f1", normal=NormalScores.from_scores(normals)
    )
    assert chosen.value > np.max(normals) * (1 + 5e-7)


def test_the_estimated_f1_threshold_clears_the_row_it_was_chosen_at() -> None:
    rng = np.random.default_rng(0)
    normal = NormalScores.from_scores(rng.normal(50, 1, 2000))
    batch = np.r_[rng.normal(50, 1, 900), rng.normal(56, 1, 100)]
    chosen = choose_threshold(batch, None, "estimated-f1", normal=normal)
    assert np.min(batch[batch >= chosen.value]) * (1 - 5e-7) >= chosen.value


@pytest.mark.parametrize(
    "bad", ["F1", "recall>0.9", "fpr<=1.5", "precision>=", "cost=1", "quantile=1.5"]
)
def test_unknown_strategies_are_rejected(bad: str) -> None:
    with pytest.raises(InputError, match="calibration strategy"):
        parse_strategy(bad)


@pytest.mark.parametrize("budget", ["fpr<=1", "fpr<=0", "quantile=1", "quantile=1.0", "fpr<=0.0"])
def test_a_budget_of_none_or_every_row_is_refused(budget: str) -> None:
    # `fpr<=1` flagged every normal validation row and `quantile=1` none, whatever the scores.
    with pytest.raises(InputError) as refused:
        parse_strategy(budget)
    assert str(refused.value).startswith(f"calibration strategy '{budget}': expected f1, ")
    assert "fpr<=F or quantile=Q with F, Q in (0, 1) (a 1% budget is fpr<=0.01)" in str(
        refused.value
    )
    # Every anomaly caught, or no false alarm, are bounds a model can meet.
    assert parse_strategy("recall>=1") == ("recall>=", 1.0)
    assert parse_strategy("precision>=1") == ("precision>=", 1.0)


def test_label_strategies_need_both_classes(scored) -> None:
    scores, labels = scored
    with pytest.raises(InputError, match="needs labelled normals and anomalies") as refused:
        choose_threshold(scores[~labels], labels[~labels], "f1")
    # Without labels, it names the strategy that estimates F1 instead.
    assert "without labels, calibrate with estimated-f1" in str(refused.value)


# Faint anomalies, N(1.5, 1) against N(0, 1), score below the normals' 85th percentile one
# time in three and count as normal in the share estimate: it comes out near 0.19, not 0.3.
@pytest.mark.parametrize(
    "share, shift, share_error", [(0.002, 4.0, 0.05), (0.05, 3.0, 0.05), (0.3, 1.5, 0.13)]
)
def test_estimated_f1_nears_the_best_f1_without_labels(
    share: float, shift: float, share_error: float
) -> None:
    """One stored reference serves batches with one anomaly in 500 and one in three.

    A fixed false-positive budget cannot: it buries rare anomalies in false alarms and misses
    most of a batch full of faint ones.
    """
    ratios, reached, budgeted = [], [], []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        normal = NormalScores.from_scores(rng.normal(0, 1, 20_000))
        normals = rng.normal(0, 1, round((1 - share) * 30_000))
        scores = np.concatenate([normals, rng.normal(shift, 1, 30_000 - len(normals))])
        labels = np.arange(len(scores)) >= len(normals)

        chosen = choose_threshold(scores, None, "estimated-f1", normal=normal)

        estimated = chosen.metrics["estimated_anomaly_share"]
        assert estimated == pytest.approx(share, abs=share_error)
        reached.append(threshold_metrics(scores, labels, chosen.value)["f1"])
        ratios.append(reached[-1] / choose_threshold(scores, labels, "f1").metrics["f1"])
        budget = choose_threshold(normal.quantiles, None, "fpr<=0.01").value
        budgeted.append(threshold_metrics(scores, labels, budget)["f1"])
    # With 60 anomalies in 30,000 rows the estimates are rough; on average still close.
    assert np.mean(ratios) >= (0.8 if share < 0.01 else 0.95)
    if share != 0.05:
        assert np.mean(budgeted) < 0.6 * np.mean(reached)


def test_a_clean_batch_flags_almost_nothing() -> None:
    """A batch of normal rows only: the share bound divided the batch's excess by 1 - R with
    an error of 0 where every row is flagged (50 rows read as 76% anomalies), and where no
    threshold showed anomalies the argmax over zeros took the lowest score: every row of a
    clean batch was flagged."""
    normal = NormalScores.from_scores(np.random.default_rng(0).normal(0, 1, 5_000))
    flagged = []
    for seed in range(20):
        batch = np.random.default_rng(seed + 1).normal(0, 1, 1_000)
        assert normal.excess_share(batch[:50]) == 0.0
        chosen = choose_threshold(batch, None, "estimated-f1", normal=normal)
        flagged.append(np.mean(batch >= chosen.value))
    assert np.mean(flagged) < 0.02 and max(flagged) < 0.2
    # Where nothing stands out, what scores above every kept normal is flagged, and no
    # F1 is claimed.
    quiet = choose_threshold(normal.quantiles[::7], None, "estimated-f1", normal=normal)
    assert quiet.value > normal.quantiles[-1]
    assert set(quiet.metrics) == {"alert_rate", "estimated_anomaly_share"}


def test_a_small_clean_batch_seldom_reads_as_anomalous() -> None:
    """On 200 normal rows Storey's share often reads a few per cent and one of hundreds of
    thresholds clears its own band by chance: 17 of these 100 clean batches flagged more than
    5% of their rows. A batch of the same size with 10 clear anomalies still has them found."""
    normal = NormalScores.from_scores(np.random.default_rng(0).normal(0, 1, 5_000))
    batches = [np.random.default_rng(seed + 100).normal(0, 1, 200) for seed in range(100)]
    flagged = [
        np.mean(batch >= choose_threshold(batch, None, "estimated-f1", normal=normal).value)
        for batch in batches
    ]
    assert np.mean(np.array(flagged) > 0.05) < 0.08
    assert not any(normal.anomaly_share(batch)[1] for batch in batches[:5])
    rng = np.random.default_rng(5)
    scores = np.r_[rng.normal(0, 1, 190), rng.normal(4, 1, 10)]
    assert normal.anomaly_share(scores)[1]
    chosen = choose_threshold(scores, None, "estimated-f1", normal=normal)
    assert not np.any(scores[:190] >= chosen.value)
    assert np.sum(scores[190:] >= chosen.value) >= 7
    assert chosen.metrics["estimated_f1"] > 0.9


def test_anomalies_in_the_tail_count_where_the_bulk_sits_below_the_reference() -> None:
    """Batch normals a little below the reference fill its lower 85% more than they should,
    and Storey's estimate reads a share of 0; the tail still shows the 2% of anomalies."""
    rng = np.random.default_rng(0)
    normal = NormalScores.from_scores(rng.normal(0, 1, 5_000))
    scores = np.concatenate([rng.normal(-0.1, 1, 19_600), rng.normal(8, 1, 400)])
    storey = 1 - np.mean(scores < np.quantile(normal.quantiles, 0.85)) / 0.85
    assert storey <= 0
    share, shown = normal.anomaly_share(scores)
    assert 0.015 < share <= 0.02 and shown
    # A batch of normals alone has no tail to speak of.
    assert normal.excess_share(rng.normal(0, 1, 20_000)) < 0.002


def test_tied_scores_are_not_read_as_anomalies() -> None:
    """Storey's count took only the rows strictly below the normals' 85th percentile: where
    batch and reference scores all tie (a table of one category per column, say) no row is
    below it, the share read 1 and every row of the batch was flagged. A batch of the same
    few values as the reference, in the same proportions, read 18% anomalies."""
    tied = NormalScores.from_scores(np.full(1_000, 3.5))
    chosen = choose_threshold(np.full(400, 3.5), None, "estimated-f1", normal=tied)
    assert chosen.metrics == {"alert_rate": 0.0, "estimated_anomaly_share": 0.0}
    assert chosen.value > 3.5  # above every normal, as for any clean batch
    rng = np.random.default_rng(3)
    normal = NormalScores.from_scores(rng.choice([1.0, 2.0], 5_000, p=[0.7, 0.3]))
    batch = rng.choice([1.0, 2.0], 2_000, p=[0.7, 0.3])
    assert normal.anomaly_share(batch) == (pytest.approx(0.0, abs=0.03), False)
    assert not np.any(batch >= choose_threshold(batch, None, "estimated-f1", normal=normal).value)
    # Rows above the tie are still seen: a tenth of the batch, scoring 9 against the normals' 3.5.
    scores = np.r_[np.full(360, 3.5), np.full(40, 9.0)]
    chosen = choose_threshold(scores, None, "estimated-f1", normal=tied)
    assert chosen.metrics["estimated_anomaly_share"] == pytest.approx(0.1)
    assert np.array_equal(scores >= chosen.value, scores == 9.0)


def test_a_batch_of_identical_normal_rows_is_not_read_as_anomalies() -> None:
    """A stuck sensor or a file of duplicates, each row at the normals' median: the excess
    bound counted the rows tied with its threshold as above it, the batch exceeded the
    normals' half at its own score, read as 80% anomalies and had every row flagged."""
    normal = NormalScores.from_scores(np.random.default_rng(0).normal(50, 1, 2_000))
    same = np.full(200, np.median(normal.quantiles))
    assert normal.excess_share(same) == 0.0
    chosen = choose_threshold(same, None, "estimated-f1", normal=normal)
    assert chosen.metrics == {"alert_rate": 0.0, "estimated_anomaly_share": 0.0}


def test_one_extreme_reference_normal_does_not_choose_the_threshold() -> None:
    """Validation normals of 1,000 rows with one far outlier: past the anomalies, where the
    plain estimate sees the outlier's exceedance, a handful of batch rows would decide."""
    rng = np.random.default_rng(1)
    normal = NormalScores.from_scores(np.r_[rng.normal(0, 1, 999), 40.0])
    scores = np.concatenate([rng.normal(0, 1, 20_000), rng.normal(6, 1, 300)])
    labels = np.arange(len(scores)) >= 20_000
    chosen = choose_threshold(scores, None, "estimated-f1", normal=normal)
    best = choose_threshold(scores, labels, "f1").metrics["f1"]
    assert threshold_metrics(scores, labels, chosen.value)["f1"] >= 0.9 * best


def test_estimated_f1_needs_the_normal_reference(scored) -> None:
    scores, _ = scored
    with pytest.raises(InputError, match="normal validation scores"):
        choose_threshold(scores, None, "estimated-f1")


def test_normal_scores_keep_the_tail_in_bounded_size() -> None:
    scores = np.random.default_rng(3).lognormal(0, 1, 50_000)
    normal = NormalScores.from_list(NormalScores.from_scores(scores).to_list())
    assert len(normal.quantiles) == REFERENCE_QUANTILES
    thresholds = np.quantile(scores, [0.5, 0.9, 0.99, 0.999])
    expected = [(scores >= t).mean() for t in thresholds]
    assert normal.exceedance(thresholds) == pytest.approx(expected, abs=2e-4)


def test_huge_equal_costs_choose_the_threshold_of_unit_costs(scored) -> None:
    # 1e308 each overflowed every expected cost to inf: the threshold flagged nothing.
    from anomaly_vae.calibration import Costs

    scores, labels = scored
    unit = choose_threshold(scores, labels, "cost", Costs(fn=1, fp=1))
    huge = choose_threshold(scores, labels, "cost", Costs(fn=1e308, fp=1e308))
    assert huge.value == unit.value and huge.metrics["alert_rate"] > 0
    assert huge.metrics["expected_cost"] == pytest.approx(unit.metrics["expected_cost"] * 1e308)


def test_a_labelled_strategy_without_labels_names_both_ways_to_give_them() -> None:
    with pytest.raises(InputError, match="data.label to train, --label to calibrate"):
        choose_threshold(np.arange(10.0), None, "f1")


def test_metrics_leave_out_the_rates_of_a_class_the_labels_lack() -> None:
    """Calibrating on normals only printed and logged recall 0.0, as if every anomaly missed."""
    scores = np.arange(10.0)
    normals = choose_threshold(scores, np.zeros(10, bool), "fpr<=0.2")
    assert normals.metrics == {"alert_rate": 0.2, "fpr": 0.2}
    anomalies = threshold_metrics(scores, np.ones(10, bool), 5.0)
    assert anomalies == {"alert_rate": 0.5, "precision": 1.0, "recall": 0.5, "f1": 2 / 3}


def test_calibrate_says_when_it_read_a_batch_as_clean() -> None:
    """`calibrate` on such a batch printed only the threshold, far above the others, with
    `{"alert_rate": 0.0003, "estimated_anomaly_share": 0.0004}`: nothing said that it had
    found no anomalies beyond chance and placed the threshold above every kept normal."""
    from pipelines.calibrate import Calibration

    normal = NormalScores.from_scores(np.random.default_rng(0).normal(0, 1, 5_000))
    quiet = choose_threshold(normal.quantiles[::7], None, "estimated-f1", normal=normal)
    lines = Calibration(quiet, 715, "models:/m/2", False, None, "run").lines()
    share = quiet.metrics["estimated_anomaly_share"]
    within = f" (the estimated {share:.2%} is within chance)" if share else ""
    assert lines[1] == (
        f"no more anomalies than chance among these 715 rows{within}, a clean batch: the "
        "threshold lies just above the highest normal validation score the model kept; with a "
        "label column (--label), or --strategy fpr<=F, it is chosen otherwise"
    )
    batch = np.concatenate([normal.quantiles[::7], np.full(40, 6.0)])
    found = choose_threshold(batch, None, "estimated-f1", normal=normal)
    assert "estimated_f1" in found.metrics
    assert not any(
        "clean batch" in line for line in Calibration(found, 755, "m", False, None, "r").lines()
    )


@pytest.mark.parametrize(
    ("strategy", "costs"),
    [("f1", None), ("precision>=0.6", None), ("recall>=0.8", None), ("quantile=0.9", None),
     ("fpr<=0.05", None), ("cost", Costs(fn=20, fp=1))],
)  # fmt: skip
def test_a_weighted_anomaly_counts_as_that_many_copies_of_it(scored, strategy, costs) -> None:
    """Training's validation set holds every anomaly of the file but a fifth of its normals:
    each anomaly counts as a fraction of a row there, so that thresholds and metrics are
    those of the file's share of anomalies. A weight of 3 must read as three copies."""
    scores, labels = scored
    copies = np.concatenate([scores, np.repeat(scores[labels], 2)])
    copied = np.concatenate([labels, np.ones(2 * labels.sum(), bool)])
    weighted = choose_threshold(scores, labels, strategy, costs, anomaly_weight=3.0)
    repeated = choose_threshold(copies, copied, strategy, costs)
    assert weighted.value == repeated.value
    assert weighted.metrics == pytest.approx(repeated.metrics)
    unweighted = choose_threshold(scores, labels, strategy, costs)
    if strategy not in ("fpr<=0.05", "recall>=0.8"):  # those do not depend on the share
        assert weighted.metrics != pytest.approx(unweighted.metrics)


def test_a_weighted_probability_counts_anomalies_as_copies(scored) -> None:
    scores, labels = scored
    copies = np.concatenate([scores, np.repeat(scores[labels], 2)])
    copied = np.concatenate([labels, np.ones(2 * labels.sum(), bool)])
    for method in METHODS:
        weighted = ProbabilityMap.fit(scores, labels, method, anomaly_weight=3.0)
        repeated = ProbabilityMap.fit(copies, copied, method)
        grid = np.linspace(-3, 6, 50)
        np.testing.assert_allclose(weighted.predict(grid), repeated.predict(grid), atol=1e-6)
