"""Threshold strategies: validation scores (and labels, where known) in, a threshold out.

A strategy is a short string stored with the model, so a threshold can be re-chosen on new
data without retraining:

- `f1`: the threshold of maximum F1 on the precision-recall curve (needs anomalies);
- `recall>=R`: the highest threshold whose recall reaches R (best precision at that recall);
- `precision>=P`: the lowest threshold whose precision reaches P (best recall at it);
- `fpr<=F`: flags at most a fraction F of normal validation rows (normals suffice);
- `quantile=Q`: flags at most a fraction 1 - Q of all rows, an alert budget (no labels needed);
  F and Q lie strictly between 0 and 1, where R and P may be 1 (every anomaly caught, no
  false alarm): a budget of 0 or 1 flags no row or every row, whatever the model;
- `estimated-f1`: the threshold of highest F1 estimated on unlabelled rows, against the scores
  of the normal validation rows the detector keeps (`NormalScores`);
- `cost` with the cost of a missed anomaly and of a false alarm: the threshold of least
  expected cost per row.

A sample is anomalous when `score >= threshold`, the convention of scikit-learn's curves.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from anomaly_vae.errors import InputError

DEFAULT_FPR = 0.01
ESTIMATED_F1 = "estimated-f1"
# Normal validation scores are kept as at most this many quantiles: the tail resolution of
# 10,000 rows, in a detector file of a few hundred kilobytes whatever the validation size.
REFERENCE_QUANTILES = 10_001
# The quantile of the normal scores below which `NormalScores.anomaly_share` counts rows normal.
SHARE_LAMBDA = 0.85
# Standard errors an excess of rows over the normal reference must clear before it counts as
# anomalies. The share bound takes the largest excess over every threshold, the maximum of
# thousands of noisy differences, so it needs a wider band than the single comparison behind
# each threshold's caught count. On the nine benchmark tables' saved scores every pair from
# 2.5 to 4 (share) and 2 to 3 (caught) gave a mean F1 ratio of 0.855-0.902 on both sets of
# three split seeds, against 0.829 and 0.859 with neither (benchmarks/results/
# calibration-tuning.md). Storey's share must clear the same band before a batch shows any
# anomalies at all (`NormalScores.anomaly_share`).
SHARE_Z = 3.0
CAUGHT_Z = 2.0
# How far (relative) a threshold keeps from the calibration scores it falls between: a row's
# score moves with the rows batched with it (float32 sums; up to 4.6e-7 on 6_cardio, scored
# alone or among 360), which flipped the decision on a row whose score the threshold sat on.
SCORE_NOISE = 1e-5
_BOUND = re.compile(r"^(recall>=|precision>=|fpr<=|quantile=)([0-9]*\.?[0-9]+)$")


@dataclass(frozen=True)
class Costs:
    """What one missed anomaly (`fn`) and one false alarm (`fp`) cost, in any one unit."""

    fn: float
    fp: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.fn) and np.isfinite(self.fp) and self.fn > 0 and self.fp > 0):
            raise InputError(f"costs must be positive numbers, got fn={self.fn}, fp={self.fp}")


@dataclass(frozen=True)
class NormalScores:
    """Scores of held-out normal rows: what the detector's scores look like without anomalies.

    Labels are what users rarely have, and a fixed false-positive budget fits no single anomaly
    rate: 1% of normals flagged buries 0.1% of frauds in false alarms and misses most of a
    batch that is 30% defects. Against this reference an unlabelled batch tells how many
    anomalies it holds and where they start (`estimated_f1_threshold`).
    """

    quantiles: np.ndarray  # ascending

    @classmethod
    def from_scores(cls, scores: np.ndarray) -> NormalScores:
        ranked = np.sort(np.asarray(scores, dtype=np.float64))
        if not len(ranked):
            raise InputError("normal reference scores: no normal validation rows")
        if len(ranked) > REFERENCE_QUANTILES:
            ranked = np.quantile(ranked, np.linspace(0, 1, REFERENCE_QUANTILES))
        return cls(ranked)

    def exceedance(self, thresholds: np.ndarray) -> np.ndarray:
        """The share of normal rows scoring at or above each threshold: the false-positive rate."""
        below = np.searchsorted(self.quantiles, thresholds, side="left")
        return (len(self.quantiles) - below) / len(self.quantiles)

    def anomaly_share(self, scores: np.ndarray) -> tuple[float, bool]:
        """Storey's estimate of the share of anomalies among `scores`, at lambda = 0.85, and
        whether the batch shows more anomalies than chance gives a batch of normal rows.

        A share lambda of normal rows scores below the normals' lambda-quantile and anomalies
        seldom do, so the rows below it, over lambda, estimate the normal rows. New normal rows
        score a little above the validation normals, which also chose the training epoch: of
        6_cardio's test normals 40% fell below the reference median, not 50%, and Storey's usual
        lambda = 1/2 read the difference as anomalies (share 0.40 for 0.26). Below the 85th
        percentile fell 81%, close to 85%. A higher lambda counts more faint anomalies as
        normal instead, which the caught count in `estimated_f1_threshold` makes up for. Over
        the nine benchmark tables and six split seeds the F1 of the chosen threshold over the
        best was 0.836 at 1/2 and 0.850-0.862 at every lambda from 0.6 to 0.9.

        Batch normals that sit a little below the reference in the bulk fill its lower 85%
        beyond their share and hide a few per cent of anomalies in the tail (creditcard: an
        estimate of 0 for 2%), so the estimate is at least `excess_share`'s bound.

        The estimate is a plain one: on a clean batch of 200 rows its standard error is 0.03,
        so it often reads a few per cent, and some threshold's excess of flagged rows over the
        expected false alarms then clears its own band by chance (the largest of hundreds of
        them): estimated F1 chose such a threshold on 15% of simulated clean 200-row batches
        and flagged more than 5% of their rows. The batch shows anomalies where Storey's
        estimate clears `SHARE_Z` standard errors or the tail bound, which has its band
        already, is above 0: 3-5% of clean batches of 100 to 5,000 rows do.

        Rows that tie with the cut count half below it, in the batch and in the reference,
        whose share below it then stands for lambda: counted strictly, a batch and reference
        whose scores all tie had no row below the cut, read as all anomalies, and every row
        was flagged. Without ties the reference's share is lambda within 1 / len(quantiles).
        """
        cut = np.quantile(self.quantiles, SHARE_LAMBDA)
        below = _share_below(scores, cut)
        normals_below = _share_below(self.quantiles, cut)  # at least half a row: never 0
        storey = float(1.0 - below / normals_below)
        spread = normals_below * (1 - normals_below) * (1 / len(scores) + 1 / len(self.quantiles))
        excess = self.excess_share(scores)
        shown = storey > SHARE_Z * np.sqrt(spread) / normals_below or excess > 0
        return max(storey, excess, 0.0), shown

    def excess_share(self, scores: np.ndarray) -> float:
        """A lower bound on the share of anomalies among `scores` from their tail.

        At any threshold t the rows above it are the normals' share (1 - pi) R(t) plus at most
        all the anomalies, pi, so pi >= (U(t) - R(t)) / (1 - R(t)), with U the batch's
        exceedance and R the normals' (Meinshausen and Rice, "Estimating the proportion of
        false null hypotheses among a large number of independently tested hypotheses", Annals
        of Statistics 2006). Less `SHARE_Z` standard errors of U - R, the largest over all
        thresholds. The reference counts as `len(quantiles)` rows: where it summarises more,
        the band is a little wider than it need be. The batch's own term is at least what normal
        rows would give at R: its plug-in U (1 - U) is 0 where every row is flagged (U = 1),
        and at the lowest thresholds, where 1 - R is small, a clean batch of 50 normal rows
        read as 76% anomalies.
        """
        thresholds, flagged = _flagged_at_each_score(scores)
        # A row tied with the threshold counts half above it, as in `anomaly_share`'s Storey
        # estimate: counted whole, a batch of identical normal rows (a stuck sensor, a file of
        # duplicates) exceeded the normals' half at its own score and read as 80% anomalies.
        ties = flagged - np.append(flagged[1:], 0)
        batch = (flagged - ties / 2) / len(scores)
        normal = self.exceedance(thresholds)
        spread = np.maximum(batch * (1 - batch), normal * (1 - normal))
        error = np.sqrt(normal * (1 - normal) / len(self.quantiles) + spread / len(scores))
        tail = normal < 1
        excess = (batch - normal - SHARE_Z * error)[tail] / (1 - normal[tail])
        return float(excess.max(initial=0.0))

    def to_list(self) -> list[float]:
        return self.quantiles.tolist()

    @classmethod
    def from_list(cls, values: list[float]) -> NormalScores:
        return cls(np.asarray(values, dtype=np.float64))


@dataclass
class Threshold:
    value: float
    strategy: str
    metrics: dict[str, float] = field(default_factory=dict)
    # The costs the `cost` strategy weighed, kept so the choice can be redone and explained.
    costs: dict[str, float] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def parse_strategy(strategy: str) -> tuple[str, float | None]:
    """Split 'recall>=0.9' into ('recall>=', 0.9); errors name the accepted forms."""
    strategy = strategy.replace(" ", "")
    if strategy in ("f1", "cost", ESTIMATED_F1):
        return strategy, None
    match = _BOUND.match(strategy)
    if match and _within_range(match.group(1), float(match.group(2))):
        return match.group(1), float(match.group(2))
    raise InputError(
        f"calibration strategy '{strategy}': expected f1, recall>=R or precision>=P with R, P "
        "in (0, 1], fpr<=F or quantile=Q with F, Q in (0, 1) (a 1% budget is fpr<=0.01), "
        f"cost or {ESTIMATED_F1}"
    )


def _within_range(kind: str, bound: float) -> bool:
    """`fpr<=1` put the threshold at the lowest normal score, flagging every row (a user
    more likely meant 1%), and `quantile=1` above the highest, flagging none."""
    return 0 < bound < 1 if kind in ("fpr<=", "quantile=") else 0 < bound <= 1


def check_strategy(strategy: str, costs: Costs | None = None) -> tuple[str, float | None]:
    """`parse_strategy`, and costs given exactly when the strategy is `cost`."""
    kind, bound = parse_strategy(strategy)
    if (kind == "cost") != (costs is not None):
        raise InputError(
            "the cost strategy needs the costs of a missed anomaly and a false alarm "
            "(--cost-fn, --cost-fp), and only it uses them"
        )
    return kind, bound


def default_strategy(has_anomalies: bool) -> str:
    """At training, when every validation row is normal, only a false-positive budget applies."""
    return "f1" if has_anomalies else f"fpr<={DEFAULT_FPR}"


def recalibration_strategy(labels: np.ndarray | None, normal: NormalScores | None) -> str:
    """On new data an unlabelled batch shows its anomalies against the normal reference."""
    if labels is not None or normal is None:
        return default_strategy(labels is not None and bool(np.any(labels)))
    return ESTIMATED_F1


def choose_threshold(
    scores: np.ndarray,
    labels: np.ndarray | None,
    strategy: str,
    costs: Costs | None = None,
    normal: NormalScores | None = None,
    anomaly_weight: float = 1.0,
) -> Threshold:
    """Apply `strategy` to validation scores; labels are boolean anomaly flags or None.

    `costs` are required by, and only accepted with, the `cost` strategy; `estimated-f1`
    needs the `normal` reference and uses no labels. Each labelled anomaly counts as
    `anomaly_weight` rows: training's validation set holds every anomaly of the file but a
    fifth of its normals, and judged at that share of anomalies, `f1` chose a threshold, and
    reported a precision, for data five times richer in anomalies than the file's.
    """
    kind, bound = check_strategy(strategy, costs)
    labels = None if labels is None else np.asarray(labels, dtype=bool)
    estimates: dict[str, float] = {}
    if kind == ESTIMATED_F1:
        if normal is None:
            raise InputError(
                f"calibration '{ESTIMATED_F1}' needs the normal validation scores a detector "
                "keeps since this version; retrain the model, or use fpr<=F or quantile=Q"
            )
        value, estimates = estimated_f1_threshold(scores, normal)
    elif kind == "fpr<=":
        normals = scores if labels is None else scores[~labels]
        if not len(normals):
            raise InputError(f"calibration '{strategy}' needs normal validation rows")
        value = _fpr_threshold(normals, bound)
    elif kind == "quantile=":
        weights = None if labels is None else row_weights(labels, anomaly_weight)
        value = _fpr_threshold(scores, 1 - bound, weights)
    else:
        if labels is None or not labels.any() or labels.all():
            raise InputError(
                f"calibration '{strategy}' needs labelled normals and anomalies in the "
                "validation data (a label column: data.label to train, --label to calibrate; "
                f"or, without labels, calibrate with {ESTIMATED_F1}, fpr<=F or quantile=Q)"
            )
        if kind == "cost":
            value = _cost_threshold(scores, labels, costs, anomaly_weight)
        else:
            value = _curve_threshold(scores, labels, kind, bound, anomaly_weight)
    if kind != ESTIMATED_F1:  # it places its own threshold, against the normal reference too
        value = _clear_of_scores(scores, value)
    metrics = {**threshold_metrics(scores, labels, value, anomaly_weight), **estimates}
    if costs is not None:
        metrics["expected_cost"] = expected_cost(scores, labels, value, costs, anomaly_weight)
    return Threshold(
        value=value,
        strategy=strategy,
        metrics=metrics,
        costs=None if costs is None else {"fn": costs.fn, "fp": costs.fp},
    )


def estimated_f1_threshold(
    scores: np.ndarray, normal: NormalScores
) -> tuple[float, dict[str, float]]:
    """The threshold of highest F1 estimated without labels, and the estimates behind it.

    At a threshold t the rows flagged are counted; the false alarms among them are expected
    to be the normal rows (1 - share of anomalies) times the normal exceedance at t; the rest
    are caught anomalies. F1 = 2 caught / (flagged + anomalies). This is the F1 a labelled
    batch would give, up to the noise of the two estimates, so it adapts to batches where
    anomalies are one in a thousand as well as one in three.

    The choice maximises F1 with the caught count less `CAUGHT_Z` standard errors of the false
    alarms (the batch's normals above t vary like a count, the reference's exceedance with its
    size): in the far tail a handful of rows decide, and one extreme reference normal or a few
    stray batch rows there would otherwise choose the threshold. The estimates returned are
    the plain ones at that threshold.
    """
    n = len(scores)
    share, shown = normal.anomaly_share(scores)
    candidates, flagged = _flagged_at_each_score(scores)
    exceedance = normal.exceedance(candidates)
    false_alarms = (1.0 - share) * n * exceedance
    error = np.sqrt(false_alarms + n**2 * exceedance * (1 - exceedance) / len(normal.quantiles))

    def f1_at(caught: np.ndarray) -> np.ndarray:
        # A threshold cannot catch more anomalies than there are: where the share was
        # underestimated (rare anomalies), the caught count is the better estimate.
        anomalies = np.maximum(caught, max(share * n, 1.0))
        return 2.0 * caught / (flagged + anomalies)

    cautious = f1_at(np.clip(flagged - false_alarms - CAUGHT_Z * error, 0.0, None))
    if not (shown and cautious.any()):
        # The batch shows no anomalies, or no threshold catches more than the normal rows'
        # noise (where argmax over zeros picked the lowest score, flagging every row of a
        # clean batch). Flag only what scores above every normal the detector kept.
        clean = _clear_of_scores(scores, float(np.nextafter(normal.quantiles[-1], np.inf)))
        return clean, {"estimated_anomaly_share": share}
    best = int(np.argmax(cautious))
    caught = np.clip(flagged - false_alarms, 0.0, None)
    return _clear_of_scores(scores, float(candidates[best])), {
        "estimated_anomaly_share": share,
        "estimated_f1": float(f1_at(caught)[best]),
        "estimated_precision": float(caught[best] / flagged[best]),
    }


def _clear_of_scores(scores: np.ndarray, threshold: float) -> float:
    """A threshold that flags the same `scores` as `threshold`, kept `SCORE_NOISE` (relative)
    away from the nearest of them where the gap between them allows, else halfway.

    Placed on a calibration row's score (or one float step above one), the threshold sat
    where that row's own float32 noise decided: a row scores a few 1e-7 apart (relative)
    depending on the rows it is batched with, so the anomaly that `recall>=1` had to catch
    scored alone as normal. Where every or no score is flagged there is no gap to halve, but
    the outermost row is kept as far: `fpr<=0.001` on 100 normals put the threshold one float
    step above the highest of them, and `recall>=1` on the lowest score when an anomaly
    scored lowest, so that row's decision still hung on its batch.
    """
    flagged = scores >= threshold
    if not flagged.any():
        top = float(np.max(scores))
        return max(threshold, top + SCORE_NOISE * max(abs(top), 1.0))
    if flagged.all():
        bottom = float(np.min(scores))
        return min(threshold, bottom - SCORE_NOISE * max(abs(bottom), 1.0))
    below, above = float(np.max(scores[~flagged])), float(np.min(scores[flagged]))
    margin = min(SCORE_NOISE * max(abs(below), abs(above), 1.0), (above - below) / 2)
    moved = min(max(threshold, below + margin), above - margin)
    return moved if below < moved <= above else above  # adjacent floats: the flagged one


def _share_below(scores: np.ndarray, cut: float) -> float:
    """The share of `scores` below `cut`, a score equal to it counting half (its mid-rank)."""
    return float(np.mean(scores < cut) + np.mean(scores == cut) / 2)


def _flagged_at_each_score(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The batch's distinct scores, ascending, as thresholds, and the rows each one flags."""
    thresholds, counts = np.unique(scores, return_counts=True)
    below = np.cumsum(counts) - counts  # rows under each threshold
    return thresholds, len(scores) - below


def expected_cost(
    scores: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    costs: Costs,
    anomaly_weight: float = 1.0,
) -> float:
    """Cost per row of flagging `score >= threshold`: missed anomalies (each counting as
    `anomaly_weight` rows, as in `choose_threshold`) and false alarms."""
    flagged = scores >= threshold
    missed = anomaly_weight * int(np.sum(~flagged & labels))
    false_alarms = int(np.sum(flagged & ~labels))
    rows = row_weights(labels, anomaly_weight).sum()
    return float(_cost_per_row(missed, false_alarms, rows, costs))


def cost_curve(
    scores: np.ndarray, labels: np.ndarray, costs: Costs, anomaly_weight: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Expected cost per row at every threshold that changes the flags, ascending.

    The candidates are the distinct scores and one step above the highest (flag nothing);
    any other threshold flags the same rows as one of them.
    """
    distinct = np.unique(scores)
    thresholds = np.append(distinct, np.nextafter(distinct[-1], np.inf))
    anomalous, normal = np.sort(scores[labels]), np.sort(scores[~labels])
    missed = anomaly_weight * np.searchsorted(anomalous, thresholds, side="left")
    false_alarms = len(normal) - np.searchsorted(normal, thresholds, side="left")
    rows = row_weights(labels, anomaly_weight).sum()
    return thresholds, _cost_per_row(missed, false_alarms, rows, costs)


def _cost_per_row(
    missed: np.ndarray | float, false_alarms: np.ndarray | int, rows: float, costs: Costs
) -> np.ndarray | float:
    """What `missed` anomalies and `false_alarms` cost per row of `rows`.

    The costs are divided by a power of two near the larger one before they weigh the counts:
    costs near the largest float (1e308 each) overflowed the sums to inf, every threshold cost
    the same and the one that flags nothing was chosen. Dividing and multiplying back by a
    power of two is exact, so costs that never overflowed give the same figures, ties included.
    """
    scale = 2.0 ** (math.frexp(max(costs.fn, costs.fp))[1] - 1)
    return (costs.fn / scale * missed + costs.fp / scale * false_alarms) / rows * scale


def threshold_metrics(
    scores: np.ndarray, labels: np.ndarray | None, threshold: float, anomaly_weight: float = 1.0
) -> dict[str, float]:
    """What a threshold achieves on the data it was chosen on, each labelled anomaly counting
    as `anomaly_weight` rows (`choose_threshold`): the alert rate and precision are those of
    data with that share of anomalies; recall and false-positive rate do not depend on it.

    A class the labels lack leaves its rates out: written as 0, an all-normal file's recall
    read as every anomaly missed (in `calibrate`'s line, its run and `runs`), and an
    all-anomalous file's false-positive rate as no false alarm.
    """
    flagged = scores >= threshold
    if labels is None:
        return {"alert_rate": float(flagged.mean())}
    weights = row_weights(labels, anomaly_weight)
    metrics = {"alert_rate": float(weights[flagged].sum() / weights.sum())}
    fp = int(np.sum(flagged & ~labels))
    if labels.any():
        caught = int(np.sum(flagged & labels))
        tp = anomaly_weight * caught
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = caught / int(np.sum(labels))
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        metrics.update(precision=precision, recall=recall, f1=f1)
    if not labels.all():
        metrics["fpr"] = fp / int(np.sum(~labels))
    return metrics


def _fpr_threshold(
    normal_scores: np.ndarray, fpr: float, weights: np.ndarray | None = None
) -> float:
    """The lowest threshold that flags at most floor(fpr * n) of the normal scores (of
    their total weight, where rows are weighed).

    The product is rounded before the floor: in binary, 0.29 * 100 is 28.999999999999996 and
    1 - 0.9 is 0.0999..., so `fpr<=0.29` on 100 normals flagged 28 and `quantile=0.9` on 10
    rows none, a row fewer than the budget allows.
    """
    if weights is None:
        ranked = np.sort(normal_scores)[::-1]
        allowed = int(np.floor(round(fpr * len(ranked), 9)))
    else:
        order = np.argsort(normal_scores)[::-1]
        ranked = normal_scores[order]
        spent = np.round(np.cumsum(weights[order]), 9)
        allowed = int(np.searchsorted(spent, round(fpr * float(weights.sum()), 9), side="right"))
    if allowed >= len(ranked):
        return float(ranked[-1])
    # Strictly above the first score that must stay unflagged.
    return float(np.nextafter(ranked[allowed], np.inf))


def row_weights(labels: np.ndarray, anomaly_weight: float) -> np.ndarray:
    """What each row counts for: `anomaly_weight` for a labelled anomaly, 1 for a normal."""
    return np.where(labels, anomaly_weight, 1.0)


def _cost_threshold(
    scores: np.ndarray, labels: np.ndarray, costs: Costs, anomaly_weight: float
) -> float:
    thresholds, cost = cost_curve(scores, labels, costs, anomaly_weight)
    # Of equally cheap thresholds, the highest: the same cost with the fewest alerts.
    return float(thresholds[len(cost) - 1 - int(np.argmin(cost[::-1]))])


def _curve_threshold(
    scores: np.ndarray, labels: np.ndarray, kind: str, bound: float | None, anomaly_weight: float
) -> float:
    from sklearn.metrics import precision_recall_curve  # scoring never pays for it

    weights = None if anomaly_weight == 1 else row_weights(labels, anomaly_weight)
    precision, recall, thresholds = precision_recall_curve(labels, scores, sample_weight=weights)
    # The curve's last point (precision 1, recall 0) has no threshold.
    precision, recall = precision[:-1], recall[:-1]
    if kind == "f1":
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
        return float(thresholds[int(np.argmax(f1))])
    if kind == "recall>=":
        ok = np.flatnonzero(recall >= bound)
        return float(thresholds[ok[-1]])  # thresholds ascend: the last is the highest
    ok = np.flatnonzero(precision >= bound)
    if not len(ok):
        # At training, a precision reached on validation's many anomalies may be out of reach
        # at the file's few.
        weighed = " at the training file's share of anomalies" if anomaly_weight != 1 else ""
        raise InputError(
            f"calibration 'precision>={bound}': no threshold reaches that precision{weighed}"
        )
    return float(thresholds[ok[0]])
