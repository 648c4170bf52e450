"""Evaluate on labelled images: image AUROC and AP, the threshold's metrics, pixel AUROC.

Labels come from folder names (the model's `image.normal`), from an IDX labels file and the
model's normal digits, or from a `path,label` CSV. Pixel AUROC pools the anomaly-map values of
every image with a mask (normal images without one count as all-normal pixels), compared at
the model's resolution. `held_out_only` keeps the anomalies and only those normal images the
model's `image.holdout_fraction` kept out of training.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from anomaly_vae.errors import InputError
from pipelines.evaluate import Evaluation

if TYPE_CHECKING:
    from anomaly_vae.calibration import Costs
    from anomaly_vae.data.images import ImageItem


def evaluate_images(
    model_uri: str,
    input_path: str | Path,
    label_from: str | None = None,
    held_out_only: bool = False,
    tracking_uri: str | None = None,
    report_path: str | Path | None = None,
    costs: Costs | None = None,
) -> Evaluation:
    import mlflow
    from sklearn.metrics import roc_auc_score

    from anomaly_vae.data.images import read_mask
    from anomaly_vae.evaluation.report import check_report_path
    from anomaly_vae.evaluation.sections import WorstImages, common_sections
    from pipelines.evaluate import evaluate_at_threshold, evaluation_run, publish
    from pipelines.score_images import image_detector, kept_out_of_training, scored_image_batches

    if report_path is not None:
        check_report_path(report_path)
    detector = image_detector(model_uri, input_path, tracking_uri)
    listing = detector.list_images(input_path)
    label_from = label_from or detector.image.labels_csv or "folder"
    items = listing.labelled(None if label_from == "folder" else label_from, input_path)
    unlabelled = next((item for item in items if item.label is None), None)
    if unlabelled is not None:
        raise InputError(
            f"{unlabelled.path}: no label (an IDX file needs its labels file beside it)"
        )
    held_note = None
    if held_out_only:
        items, held_note = kept_out_of_training(detector, items, model_uri, input_path)
    if label_from == "folder" and all(item.label for item in items):
        # Evaluated, it said "the labels mark 20 of 20 as anomalies" of a folder of good images
        # that had no labels at all.
        raise InputError(
            f"{input_path}: no images under a folder named {', '.join(detector.image.normal)}, "
            "so none labelled normal to evaluate against; put the normal ones in such a "
            "folder, or give --label-from a path,label CSV"
        )
    with_masks = any(item.mask for item in items)
    size = detector.image.size
    scores, labels, pixel_scores, pixel_labels = [], [], [], []
    worst = WorstImages(detector.map_scale, root=input_path)
    for batch, pixels, batch_scores in scored_image_batches(detector, items):
        scores.append(batch_scores.score)
        labels.append([item.label for item in batch])
        worst.add(pixels, batch_scores.maps, [item.path for item in batch], batch_scores.score,
                  np.array([item.label for item in batch]))  # fmt: skip
        for item, heat in zip(batch, batch_scores.maps, strict=True):
            if with_masks and (item.mask or not item.label):
                mask = (
                    read_mask(item.mask, size, item.path)
                    if item.mask
                    else np.zeros((size, size), bool)
                )
                pixel_scores.append(heat.ravel())
                pixel_labels.append(mask.ravel())
    scores, labels = np.concatenate(scores), np.concatenate(labels).astype(bool)
    evaluation, threshold, costs = evaluate_at_threshold(
        detector.threshold, scores, labels, costs, str(input_path)
    )
    sections = common_sections(scores, labels, threshold, evaluation.confusion, costs, "images")
    sections.append(worst.section())
    pixel_note = None
    if with_masks:
        pixel_truth = np.concatenate(pixel_labels)
        if pixel_truth.any() and not pixel_truth.all():
            evaluation.metrics["pixel_auroc"] = float(
                roc_auc_score(pixel_truth, np.concatenate(pixel_scores))
            )
        else:
            pixel_note = no_pixel_auroc(pixel_truth, size)
    source = str(input_path)
    with evaluation_run(model_uri, detector, source, tracking_uri, evaluation, costs) as run:
        mlflow.log_params({"images": len(items), "held_out_only": held_out_only})
        publish(evaluation, sections, report_path, model_uri, source, detector.threshold, "images")
    evaluation.run_id = run.info.run_id
    notes = (
        held_note,
        listing.masks_note(),
        pixel_note,
        _unmasked_note(items, listing.mask_rule),
    )
    evaluation.note = "\n".join(n for n in notes if n) or None
    return evaluation


def _unmasked_note(items: list[ImageItem], mask_rule: str) -> str | None:
    """How many anomalous images the pixel AUROC leaves out for want of a mask: an image
    without one cannot count, and a mistyped or partial set of masks left most of them out
    without a word."""
    anomalous = [item for item in items if item.label]
    unmasked = [item for item in anomalous if not item.mask]
    if not unmasked or len(unmasked) == len(anomalous):
        return None
    return (
        f"pixel AUROC over the masks of {len(anomalous) - len(unmasked):,} of {len(anomalous):,} "
        f"anomalous images; image.mask_rule '{mask_rule}' found none for the others (the "
        f"first: {unmasked[0].path})"
    )


def no_pixel_auroc(pixel_truth: np.ndarray, size: int) -> str:
    """Why there is no pixel AUROC though masks exist. Masks are compared at the model's
    resolution, where a defect smaller than half a pixel vanishes: small blowholes on a 16x16
    model left every pixel normal, and pixel AUROC went missing without a word."""
    marked = "every pixel" if pixel_truth.all() else "no pixel"
    return (
        f"no pixel AUROC: at the model's {size}x{size} resolution the masks mark {marked} "
        "as a defect"
    )
