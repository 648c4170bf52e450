"""The report's sections for any detector kind, and the tabular one's top anomalies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from anomaly_vae.calibration import Costs
from anomaly_vae.data.schema import OUTPUT_COLUMNS
from anomaly_vae.evaluation import figures
from anomaly_vae.evaluation.metrics import recall_at_fprs, threshold_sweep, top_feature_counts
from anomaly_vae.evaluation.report import Section

TOP_ROWS_SHOWN = 20
WORST_IMAGES = 8
# The longer side of each image in the report's figure, in pixels.
SHOWN_SIDE = 256


def common_sections(
    scores: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    confusion: np.ndarray,
    costs: Costs | None = None,
    unit: str = "rows",
) -> list[Section]:
    """Curves, score histograms, metrics by threshold, confusion matrix, recall at fixed FPR;
    `unit` names what was scored ("images": the captions spoke of rows)."""
    sections = [
        Section(
            "roc_pr",
            "ROC and precision-recall curves",
            "How well the scores rank anomalies above normals at every threshold; the dot is "
            "the model's threshold. The ROC's false-positive axis is logarithmic so small "
            "alert budgets stay visible; the dotted line of the PR curve is the anomaly rate, "
            "what flagging at random achieves.",
            figures.roc_pr_figure(scores, labels, threshold),
        ),
        Section(
            "score_histogram",
            "Scores of normals and anomalies",
            "Each class's score distribution (densities, so the rare class stays visible); "
            "everything right of the dashed line is flagged. Overlap is where mistakes happen.",
            figures.score_histogram_figure(scores, labels, threshold),
        ),
        Section(
            "threshold_sweep",
            "Precision, recall, F1 and alert rate by threshold",
            "What moving the threshold would do, without retraining: `anomaly-vae calibrate` "
            "stores a new threshold as a new model version.",
            figures.threshold_sweep_figure(threshold_sweep(scores, labels), threshold),
        ),
        Section(
            "confusion_matrix",
            "Confusion matrix at the threshold",
            f"Counts of {unit} by actual and predicted class, with each actual class's share.",
            figures.confusion_figure(confusion),
        ),
        Section(
            "recall_at_fpr",
            "Recall at fixed false-positive rates",
            "The share of anomalies caught if the threshold were set to raise false alarms "
            f"on at most 0.1%, 1% or 5% of normal {unit}.",
            figures.recall_at_fpr_figure(recall_at_fprs(scores, labels)),
        ),
    ]
    if costs is not None:
        sections.append(
            Section(
                "cost_curve",
                "Expected cost by threshold",
                f"Cost per {unit.removesuffix('s')} when a missed anomaly costs {costs.fn:g} and "
                f"a false alarm {costs.fp:g}; `calibrate --strategy cost` picks the green point.",
                figures.cost_curve_figure(scores, labels, threshold, costs, unit.removesuffix("s")),
            )
        )
    return sections


def top_anomaly_sections(top_rows: pd.DataFrame) -> list[Section]:
    """The tabular detector's top-scored rows and the features their scores came from.

    `top_rows` are scored rows (with `score` and `top_features`) sorted by falling score.
    """
    counts = top_feature_counts(top_rows["top_features"])
    return [
        Section(
            "top_features",
            "Features driving the top anomalies",
            f"For the {len(top_rows)} top-scored rows, how often each feature is among a row's "
            "top features: those whose reconstruction terms lie furthest above what is typical "
            "for them (their median on the normal validation rows), whatever their direction.",
            figures.top_features_figure(counts, len(top_rows)),
        ),
        Section(
            "top_rows",
            f"The {min(TOP_ROWS_SHOWN, len(top_rows))} top-scored rows",
            "The rows an analyst would look at first, with their label and top features; a "
            "number's (high) or (low) says whether its value lay above or below what the model "
            "expected of it.",
            table=_shown(top_rows.head(TOP_ROWS_SHOWN)),
        ),
    ]


def _shown(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows as the report prints them: scores to 4 significant digits, the input's columns
    (ids, label) whole. Rounded alike, a float id such as the credit-card sample's 214612.0
    read 2.146e+05, which finds no transaction."""
    shown = rows.astype(object)
    for name in OUTPUT_COLUMNS:
        if name in rows.columns and pd.api.types.is_float_dtype(rows[name]):
            shown[name] = rows[name].map("{:.4g}".format)
    return shown


class WorstImages:
    """The highest-scored images seen so far with their anomaly maps, in bounded memory.

    Fed batch by batch while a folder is scored, it keeps `n` images, not the folder.
    """

    def __init__(
        self, map_scale: float, n: int = WORST_IMAGES, root: str | Path | None = None
    ) -> None:
        self.map_scale = map_scale
        self.root = root  # the folder evaluated, which the images' titles are relative to
        self.n = n
        self.pixels = self.maps = self.scores = self.labels = None
        self.names: list[str] = []

    def add(
        self,
        pixels: np.ndarray,
        maps: np.ndarray,
        names: list[str],
        scores: np.ndarray,
        labels: np.ndarray,
    ) -> None:
        if self.scores is not None:
            pixels = np.concatenate([self.pixels, pixels])
            maps = np.concatenate([self.maps, maps])
            names = [*self.names, *names]
            scores = np.concatenate([self.scores, scores])
            labels = np.concatenate([self.labels, labels])
        keep = np.argsort(-scores, kind="stable")[: self.n]
        self.pixels, self.maps, self.scores = pixels[keep], maps[keep], scores[keep]
        self.labels = np.asarray(labels, dtype=bool)[keep]
        self.names = [names[i] for i in keep]

    def section(self) -> Section:
        from anomaly_vae.data.images import as_shown  # Pillow: not for tables' reports

        # Each image read again as viewers show it, as `score --maps` draws it: on the model's
        # square a tile or a product photo was squeezed.
        shown = [
            as_shown(name, pixels, heat, SHOWN_SIDE)
            for name, pixels, heat in zip(self.names, self.pixels, self.maps, strict=True)
        ]
        return Section(
            "worst_images",
            f"The {len(self.names)} top-scored images and where they look wrong",
            "Each image above its anomaly map (per-pixel reconstruction terms above their best "
            "value, smoothed; red is worse), titled with its score and label.",
            figures.worst_images_figure(
                [image for image, _ in shown],
                [heat for _, heat in shown],
                self.names,
                self.scores,
                self.labels,
                self.map_scale,
                self.root,
            ),
        )
