"""The report's figures, each a function of scores, labels and the threshold.

Figures are built with `matplotlib.figure.Figure` rather than pyplot: no global state and no
display backend, so they render the same in a test, a server and a notebook, and
`mlflow.log_figure` and the HTML report save the very same objects.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from anomaly_vae.calibration import Costs, cost_curve, threshold_metrics

NORMAL_COLOR, ANOMALY_COLOR, THRESHOLD_COLOR = "tab:blue", "tab:red", "black"


def roc_pr_figure(scores: np.ndarray, labels: np.ndarray, threshold: float) -> Figure:
    """ROC and precision-recall curves, the model's threshold marked on both."""
    at = threshold_metrics(scores, labels, threshold)
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    roc_ax, pr_ax = fig.subplots(1, 2)
    fpr, tpr, _ = roc_curve(labels, scores)
    roc_ax.plot(fpr, tpr, color=ANOMALY_COLOR)
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    roc_ax.plot(at["fpr"], at["recall"], "o", color=THRESHOLD_COLOR, label="threshold")
    # Log scale: the alert budgets that matter (0.1%, 1%) are invisible on a linear axis.
    roc_ax.set_xscale("log")
    roc_ax.set_xlim(max(1 / max(int((~labels).sum()), 1), 1e-4) / 2, 1)
    roc_ax.set(xlabel="false-positive rate (log)", ylabel="recall", title="ROC curve")
    roc_ax.legend(loc="lower right")
    precision, recall, _ = precision_recall_curve(labels, scores)
    pr_ax.plot(recall, precision, color=ANOMALY_COLOR, drawstyle="steps-post")
    pr_ax.axhline(labels.mean(), color="grey", linestyle=":", linewidth=1, label="anomaly rate")
    pr_ax.plot(at["recall"], at["precision"], "o", color=THRESHOLD_COLOR, label="threshold")
    pr_ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curve", ylim=(0, 1.02))
    pr_ax.legend(loc="lower left")
    return fig


def score_histogram_figure(scores: np.ndarray, labels: np.ndarray, threshold: float) -> Figure:
    """How the scores of normals and anomalies separate, with the threshold line."""
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax = fig.subplots()
    bins = _score_bins(scores)
    for mask, name, color in (
        (~labels, "normal", NORMAL_COLOR),
        (labels, "anomaly", ANOMALY_COLOR),
    ):
        # Each class sums to 1, so the rare class stays visible, whatever the bins' widths.
        ax.hist(
            scores[mask],
            bins=bins,
            weights=np.full(int(mask.sum()), 1 / max(int(mask.sum()), 1)),
            alpha=0.55,
            color=color,
            label=f"{name} ({int(mask.sum()):,})",
        )
    ax.axvline(threshold, color=THRESHOLD_COLOR, linestyle="--", label=f"threshold {threshold:.4g}")
    _score_axis(ax, scores, threshold)
    ax.set_yscale("log")
    ax.set(
        xlabel="anomaly score",
        ylabel="share of the class (log)",
        title="Scores of normals and anomalies",
    )
    _legend_beside(ax)
    return fig


def threshold_sweep_figure(sweep: pd.DataFrame, threshold: float) -> Figure:
    """Precision, recall, F1 and alert rate as the threshold moves (from `threshold_sweep`)."""
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax = fig.subplots()
    for column in ("precision", "recall", "f1", "alert_rate"):
        ax.plot(sweep["threshold"], sweep[column], label=column.replace("_", " "))
    ax.axvline(threshold, color=THRESHOLD_COLOR, linestyle="--", label="threshold")
    _score_axis(ax, sweep["threshold"].to_numpy(), threshold)
    ax.set(xlabel="threshold", ylabel="fraction", ylim=(0, 1.02), title="Metrics by threshold")
    _legend_beside(ax)
    return fig


def confusion_figure(confusion: np.ndarray) -> Figure:
    """The 2 x 2 counts at the threshold ([[tn, fp], [fn, tp]]), coloured by row share."""
    fig = Figure(figsize=(4.6, 4), layout="constrained")
    ax = fig.subplots()
    share = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (row, col), count in np.ndenumerate(confusion):
        ax.text(
            col,
            row,
            f"{count:,}\n{share[row, col]:.1%}",
            ha="center",
            va="center",
            color="white" if share[row, col] > 0.5 else "black",
        )
    ax.set_xticks([0, 1], ["normal", "anomaly"])
    ax.set_yticks([0, 1], ["normal", "anomaly"])
    ax.set(xlabel="predicted", ylabel="actual", title="Confusion matrix at the threshold")
    return fig


def recall_at_fpr_figure(recalls: dict[float, float]) -> Figure:
    """Recall when the alert budget allows a fixed share of false alarms among normals."""
    fig = Figure(figsize=(4.6, 4), layout="constrained")
    ax = fig.subplots()
    names = [f"{fpr:.1%}" if fpr < 0.01 else f"{fpr:.0%}" for fpr in recalls]
    bars = ax.bar(names, list(recalls.values()), color=ANOMALY_COLOR)
    ax.bar_label(bars, labels=[f"{r:.3f}" for r in recalls.values()])
    ax.set(
        xlabel="false-positive rate",
        ylabel="recall",
        ylim=(0, 1.08),
        title="Recall at fixed false-positive rates",
    )
    return fig


def cost_curve_figure(
    scores: np.ndarray, labels: np.ndarray, threshold: float, costs: Costs, unit: str = "row"
) -> Figure:
    """Expected cost per `unit` by threshold, with the cheapest and the model's threshold."""
    thresholds, cost = cost_curve(scores, labels, costs)
    cheapest = len(cost) - 1 - int(np.argmin(cost[::-1]))
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.plot(thresholds, cost, color=ANOMALY_COLOR, drawstyle="steps-pre")
    ax.plot(
        thresholds[cheapest],
        cost[cheapest],
        "o",
        color="tab:green",
        label=f"least cost {cost[cheapest]:.4g} at {thresholds[cheapest]:.4g}",
    )
    ax.axvline(threshold, color=THRESHOLD_COLOR, linestyle="--", label="threshold")
    _score_axis(ax, scores, threshold)
    ax.set(
        xlabel="threshold",
        ylabel=f"expected cost per {unit}",
        title=f"Cost of a threshold (missed anomaly {costs.fn:g}, false alarm {costs.fp:g})",
    )
    _legend_beside(ax)
    return fig


def top_features_figure(counts: pd.Series, n_rows: int) -> Figure:
    """Which features the top-scored rows are most anomalous in (from `top_feature_counts`)."""
    shown = counts.head(15)[::-1]
    fig = Figure(figsize=(6.5, 0.3 * len(shown) + 1.4), layout="constrained")
    ax = fig.subplots()
    # A column name is text, not TeX: matplotlib parses what lies between two '$' as math,
    # and a name such as "fee_$x^$" ended `evaluate -o` in a ParseSyntaxException. An
    # escaped '$' draws as itself.
    names = shown.index.astype(str).str.replace("$", r"\$")
    ax.barh(names, shown.to_numpy(), color=ANOMALY_COLOR)
    ax.set(
        xlabel=f"rows among the {n_rows} top-scored naming the feature",
        title="Features driving the top anomalies",
    )
    return fig


def _score_scale(values: np.ndarray) -> str:
    """linear, or log (symlog if some are <= 0) when a heavy tail would squash the bulk.

    VAE scores of outliers often lie orders of magnitude beyond those of normal rows.
    """
    q05, q50, top = np.quantile(values, [0.05, 0.5, 1.0])
    if (top - q50) / max(q50 - q05, 1e-12) <= 50 or top - float(np.min(values)) <= 100:
        return "linear"
    return "log" if np.min(values) > 0 else "symlog"


def _score_bins(scores: np.ndarray, n: int = 60) -> np.ndarray:
    """Bins of equal width on the axis the scores are drawn on."""
    low, high = float(scores.min()), float(scores.max())
    if high <= low:
        return np.array([low - 0.5, high + 0.5])
    scale = _score_scale(scores)
    if scale == "log":
        return np.geomspace(low, high, n + 1)
    if scale == "symlog":
        return _symlog_inverse(np.linspace(_symlog(low), _symlog(high), n + 1))
    return np.linspace(low, high, n + 1)


def _score_axis(ax: Axes, values: np.ndarray, threshold: float) -> None:
    """The scale of `_score_scale`, limited to the values and the threshold."""
    scale = _score_scale(values)
    if scale == "symlog":
        ax.set_xscale("symlog", linthresh=1.0)
    elif scale == "log":
        ax.set_xscale("log")
    shown = [float(np.min(values)), float(np.max(values))]
    if np.isfinite(threshold):
        shown.append(threshold)
    if max(shown) > min(shown):
        ax.set_xlim(min(shown), max(shown))


def _symlog(x: float | np.ndarray) -> float | np.ndarray:
    return np.sign(x) * np.log10(1 + np.abs(x))


def _symlog_inverse(y: np.ndarray) -> np.ndarray:
    return np.sign(y) * (10 ** np.abs(y) - 1)


def worst_images_figure(
    pixels: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    names: list[str],
    scores: np.ndarray,
    labels: np.ndarray,
    map_scale: float,
    root: str | Path | None = None,
) -> Figure:
    """Each image above its anomaly-map overlay, worst first, titled with its folder below
    `root` (the folder evaluated), its name, score and label."""
    from anomaly_vae.figures import overlay

    n = len(scores)
    fig = Figure(figsize=(1.9 * n, 4.6), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for i, (folder, name) in enumerate(_places(names, root)):
        grey = pixels[i].mean(axis=0)
        axes[0, i].imshow(grey, cmap="gray", vmin=0, vmax=1)
        axes[0, i].set_title(
            f"{_tail(folder)}\n{_tail(name)}\n"
            f"{scores[i]:.4g} {'anomaly' if labels[i] else 'normal'}",
            fontsize=8,
            color=ANOMALY_COLOR if labels[i] else NORMAL_COLOR,
            # A file name is text, not TeX: two '$' in one ("$x^$.png") made matplotlib parse
            # what lay between as math, and `evaluate -o` ended in a ParseSyntaxException.
            parse_math=False,
        )
        axes[1, i].imshow(overlay(pixels[i], maps[i], map_scale))
        for ax in axes[:, i]:
            ax.axis("off")
    return fig


def _places(names: list[str], root: str | Path | None) -> list[tuple[str, str]]:
    """Each image's folder below `root` (its class, `MT_Break/Imgs`), else below the folder
    the images share, and its file name: the last two parts of the path alone titled a tile
    `Imgs/exp6.jpg`, which told neither its class nor where to find it. An image directly in
    that folder (or in an IDX file) is titled with the folder's (or file's) own name."""
    paths = [Path(name.rpartition("#")[0] or name) for name in names]
    base = Path(root) if root is not None else Path(os.path.commonpath([p.parent for p in paths]))
    places = []
    for name, path in zip(names, paths, strict=True):
        try:
            folder = path.parent.relative_to(base).as_posix()
        except ValueError:  # an image a labels CSV names outside the folder
            folder = path.parent.as_posix()
        places.append((base.name if folder == "." else folder, Path(name).name))
    return places


def _tail(text: str, width: int = 24) -> str:
    """`text` cut to its last `width` characters, where its end tells most."""
    return text if len(text) <= width else "…" + text[1 - width :]


def _legend_beside(ax: Axes) -> None:
    """The legend right of the plot. Placed "best", matplotlib searched a spot among every
    point of the curves (the threshold sweep has one per distinct score) and warned that it
    was slow: over a second per figure on a busy machine."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
