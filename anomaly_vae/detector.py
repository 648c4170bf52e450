"""The detector artifact: one directory that scoring, MLflow and serving all load.

`detector.json` holds everything that is not a tensor (the config, the feature schema and
preprocessing statistics, the threshold and how it was chosen, library versions) and
`weights.safetensors` holds the weights. Loading reads JSON and tensors only: no pickle, so
a model file cannot run code on the machine that loads it.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from anomaly_vae import __version__
from anomaly_vae.calibration import NormalScores, Threshold
from anomaly_vae.data.images import (
    ImageItem,
    ImageListing,
    held_out_only,
    iter_image_batches,
    list_images,
    unread_format,
)
from anomaly_vae.data.preprocessing import TabularPreprocessor
from anomaly_vae.data.schema import (
    MODEL_ANOMALY_VALUE,
    HeldLabels,
    anomaly_labels,
    check_columns,
    check_kept_columns,
)
from anomaly_vae.errors import InputError
from anomaly_vae.models.conv_vae import ConvVAE
from anomaly_vae.models.tabular_vae import TabularVAE
from anomaly_vae.probability import ProbabilityMap
from anomaly_vae.scoring import SampleScores, score_images, score_tabular

if TYPE_CHECKING:
    # Loaded where an image detector is built: scoring tables does not pay for pydantic.
    from anomaly_vae.config import ImageConfig

ARTIFACT_FILE = "detector.json"
WEIGHTS_FILE = "weights.safetensors"
FORMAT_VERSION = 1


@dataclass
class ColumnRoles:
    """Non-feature columns a scoring file may carry, from the training config."""

    id_columns: list[str] = field(default_factory=list)
    label: str | None = None
    drop: list[str] = field(default_factory=list)
    anomaly_value: str | None = None

    @property
    def known(self) -> list[str]:
        return [*self.id_columns, *([self.label] if self.label else []), *self.drop]

    def labels(
        self,
        series: pd.Series,
        source: str,
        row_offset: int = 0,
        anomaly_value: str | None = None,
    ) -> np.ndarray:
        """Anomaly flags from a label column, read as the trained model reads them, or with
        `anomaly_value` (evaluate's and calibrate's --anomaly-value) marking an anomaly."""
        if anomaly_value is not None:
            return anomaly_labels(
                series, anomaly_value, source, row_offset, value_key="--anomaly-value"
            )
        return anomaly_labels(
            series, self.anomaly_value, source, row_offset, remedy=MODEL_ANOMALY_VALUE
        )

    def held_labels(self, label: str, anomaly_value: str | None = None) -> HeldLabels:
        """`HeldLabels` of the label column `label`, for the value `labels` reads as an
        anomaly."""
        if anomaly_value is not None:
            return HeldLabels(label, anomaly_value, "--anomaly-value")
        return HeldLabels(label, self.anomaly_value)


class TabularDetector:
    """A trained TabularVAE with its preprocessing and threshold."""

    kind = "tabular"

    def __init__(
        self,
        model: TabularVAE,
        preprocessor: TabularPreprocessor,
        roles: ColumnRoles,
        model_params: dict[str, Any],
        threshold: Threshold | None = None,
        samples: int = 0,
        top_features: int = 3,
        info: dict[str, Any] | None = None,
        probability: ProbabilityMap | None = None,
        normal: NormalScores | None = None,
        typical_terms: np.ndarray | None = None,
    ) -> None:
        self.model = model.eval()
        self.preprocessor = preprocessor
        self.roles = roles
        self.model_params = model_params
        self.threshold = threshold
        self.samples = samples
        self.top_features = top_features
        self.info = info or {}
        self.probability = probability
        # Normal validation scores, the reference for re-calibrating on unlabelled data.
        self.normal = normal
        # Each feature's median reconstruction term above its best on the normal validation
        # rows, what top features are ranked above (`score_tabular`'s `typical`); detectors
        # saved before it rank the terms above their best.
        self.typical_terms = typical_terms

    @property
    def feature_names(self) -> list[str]:
        return self.preprocessor.feature_names

    def check_columns(self, columns: list[str], source: str, allow_extra: bool = False) -> None:
        check_columns(columns, self.feature_names, self.roles.known, source, allow_extra)

    def check_label(self, label: str) -> None:
        """Refuse a label column that the model reads as a feature: the columns were checked
        without the label, so the feature was reported missing from a file that held it."""
        if label in self.feature_names:
            raise InputError(f"--label {label!r} is one of the model's features, not a label")

    def score_samples(
        self, frame: pd.DataFrame, source: str, row_offset: int = 0, top_k: int = 0
    ) -> SampleScores:
        """Scores of the rows; `top_k` ranks that many features of each, which costs time
        that callers wanting only scores should not pay."""
        return score_tabular(
            self.model,
            self.preprocessor.check(frame, source, row_offset),
            samples=self.samples,
            top_k=top_k,
            typical=self.typical_terms,
        )

    def score_frame(
        self,
        frame: pd.DataFrame,
        source: str = "input",
        row_offset: int = 0,
        keep_columns: bool = False,
        allow_extra: bool = False,
        top_rows: int | None = None,
    ) -> pd.DataFrame:
        """Score rows: the id columns (or all input columns) plus the score columns, on the
        input's index, so that `frame["score"] = scored["score"]`, or a join of the columns
        `frame` lacks, pairs each row with its own scores (a filtered frame's index has gaps:
        renumbered, those assignments paired rows with other rows' scores).

        `top_rows` names the top features of only that many highest-scored rows (those
        `nlargest` picks), leaving the others' empty, for callers that read a few: evaluate's
        report shows those of its top rows, calibrate none. Named on every row, they cost
        evaluate a fifth of its scoring time and calibrate a quarter."""
        _check_frame(frame, source)
        self.check_columns(list(frame.columns), source, allow_extra)
        scores = self.score_samples(
            frame, source, row_offset, 0 if top_rows == 0 else self.top_features
        )
        kept = (
            list(frame.columns)
            if keep_columns
            else [c for c in self.roles.id_columns if c in frame.columns]
        )
        check_kept_columns(kept, source)
        out = frame[kept].assign(**score_columns(scores, self.threshold, self.probability))
        out["top_features"] = self._top_features(scores, top_rows)
        return out

    def is_anomaly(self, score: np.ndarray) -> np.ndarray:
        return flag_anomalies(score, self.threshold)

    def _top_features(
        self, scores: SampleScores, top_rows: int | None
    ) -> np.ndarray | pd.api.extensions.ExtensionArray:
        """Comma-joined names of each row's top features, each number's with its direction
        (`DIRECTION_SUFFIXES`), of every row or of the `top_rows` highest-scored (the others
        empty). Joined in Arrow and kept there: Python strings, one
        a row, cost as much again to make and to write back."""
        if scores.top_features is None:
            return np.full(len(scores.score), "", dtype=object)
        names = pa.array(_named_directions(self.feature_names))
        labels = _direction_labels(scores.top_features, scores.top_directions)
        if top_rows is None:
            return _joined(names, labels).to_pandas().array
        rows = pd.Series(scores.score).nlargest(top_rows).index.to_numpy()
        named = np.full(len(scores.score), "", dtype=object)
        named[rows] = _joined(names, labels[rows]).to_numpy(zero_copy_only=False)
        return named

    def to_state(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "model": self.model_params,
            "preprocessor": self.preprocessor.to_dict(),
            "columns": asdict(self.roles),
            **_decision_state(self),
            "scoring": {
                "samples": self.samples,
                "top_features": self.top_features,
                **(
                    {"typical_terms": self.typical_terms.tolist()}
                    if self.typical_terms is not None
                    else {}
                ),
            },
            "info": self.info,
            "versions": library_versions(),
        }

    def save(self, path: str | Path) -> Path:
        return write_artifact(path, self.to_state(), self.model)

    @classmethod
    def from_state(cls, state: dict[str, Any], weights: dict[str, torch.Tensor]) -> TabularDetector:
        preprocessor = TabularPreprocessor.from_dict(state["preprocessor"])
        model = build_tabular_model(preprocessor, state["model"])
        model.load_state_dict(weights)
        return cls(
            model=model,
            preprocessor=preprocessor,
            roles=ColumnRoles(**state["columns"]),
            model_params=state["model"],
            samples=state["scoring"]["samples"],
            top_features=state["scoring"]["top_features"],
            typical_terms=_typical_terms(state["scoring"], preprocessor),
            info=state.get("info", {}),
            **_decision_from_state(state),
        )


def _typical_terms(scoring: dict[str, Any], preprocessor: TabularPreprocessor) -> np.ndarray | None:
    """The saved typical terms, one a feature, as float32 for the scoring threads' tensors."""
    typical = scoring.get("typical_terms")
    if typical is None:
        return None
    values = np.asarray(typical, dtype=np.float32)
    if values.shape != (len(preprocessor.feature_names),):
        raise InputError(
            f"detector.json: scoring.typical_terms holds {values.size} values for "
            f"{len(preprocessor.feature_names)} features"
        )
    return values


def build_tabular_model(preprocessor: TabularPreprocessor, params: dict[str, Any]) -> TabularVAE:
    """The network for a fitted preprocessor and the model section of a config."""
    return TabularVAE(
        n_numeric=len(preprocessor.numeric),
        n_indicators=len(preprocessor.missing_columns),
        indicator_columns=preprocessor.missing_columns,
        category_sizes=preprocessor.category_sizes,
        unseen_nll=preprocessor.unseen_nll,
        hidden=params["hidden"],
        latent=params["latent"],
        learn_scale=params["likelihood"] == "gaussian",
        dropout=params["dropout"],
        # Detectors saved before the option existed were built with SiLU.
        activation=params.get("activation", "silu"),
    )


class ImageDetector:
    """A trained ConvVAE with the image settings it was trained with and its threshold.

    Scores one row per image (its `path` plus the score columns) and a per-pixel anomaly map
    at the model's resolution, in batches so a folder of any size scores in bounded memory.
    """

    kind = "image"

    def __init__(
        self,
        model: ConvVAE,
        image: ImageConfig,
        model_params: dict[str, Any],
        threshold: Threshold | None = None,
        samples: int = 0,
        seed: int = 0,
        map_scale: float = 1.0,
        info: dict[str, Any] | None = None,
        probability: ProbabilityMap | None = None,
        normal: NormalScores | None = None,
    ) -> None:
        self.model = model.eval()
        self.image = image
        # The anomaly-map value drawn at full heat: one scale for every image, so heatmaps
        # of different images compare (the 99.9th percentile of normal validation pixels).
        self.map_scale = map_scale
        self.model_params = model_params
        self.threshold = threshold
        self.samples = samples
        self.seed = seed  # with image.holdout_fraction, names the images kept out of training
        self.info = info or {}
        self.probability = probability
        # Normal validation scores, the reference for re-calibrating on unlabelled data.
        self.normal = normal

    def list_images(self, source: str | Path) -> ImageListing:
        return list_images(source, self.image)

    def held_out_only(self, items: list[ImageItem]) -> list[ImageItem]:
        return held_out_only(items, self.image.holdout_fraction, self.seed)

    def scored_batches(
        self, items: list[ImageItem], batch_size: int = 256
    ) -> Iterator[tuple[list[ImageItem], np.ndarray, SampleScores]]:
        """(items, pixels, scores) per batch; pixels at the model's size, in [0, 1]."""
        size, channels = self.image.size, self.image.channels
        for batch, pixels in iter_image_batches(items, size, channels, batch_size):
            scores = score_images(
                self.model, pixels, self.samples, complexity_weight=self.image.complexity_weight
            )
            yield batch, pixels, scores

    def frame(self, items: list[ImageItem], scores: SampleScores) -> pd.DataFrame:
        out = pd.DataFrame({"path": [item.path for item in items]})
        return out.assign(**score_columns(scores, self.threshold, self.probability))

    def score_frame(
        self,
        frame: pd.DataFrame,
        source: str = "input",
        row_offset: int = 0,
        keep_columns: bool = False,
        allow_extra: bool = False,
    ) -> pd.DataFrame:
        """Score the image files named in a `path` column (the pyfunc's input), on the input's
        index as tables are (it was renumbered from 0)."""
        _check_frame(frame, source)
        # The column first: MLflow drops the columns its signature lacks, so a request without
        # 'path' reached here with none, and was told it held no image paths.
        if "path" not in frame.columns:
            raise InputError(f"{source}: an image model needs a 'path' column of image files")
        if frame.empty:
            raise InputError(f"{source}: no image paths to score")
        extra = [c for c in frame.columns if c != "path"]
        if extra and not (allow_extra or keep_columns):
            raise InputError(
                f"{source}: unexpected column '{extra[0]}' (an image model reads 'path')"
            )
        if keep_columns:
            check_kept_columns(extra, source)
        items = [ImageItem(path) for path in _image_paths(frame["path"], source, row_offset)]
        batches = [self.frame(batch, scores) for batch, _, scores in self.scored_batches(items)]
        scored = pd.concat(batches, ignore_index=True)
        if keep_columns:
            scored = pd.concat([frame[extra].reset_index(drop=True), scored], axis=1)
        return scored.set_axis(frame.index)

    def to_state(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "model": self.model_params,
            "image": self.image.model_dump(),
            **_decision_state(self),
            "scoring": {"samples": self.samples, "seed": self.seed, "map_scale": self.map_scale},
            "info": self.info,
            "versions": library_versions(),
        }

    def save(self, path: str | Path) -> Path:
        return write_artifact(path, self.to_state(), self.model)

    @classmethod
    def from_state(cls, state: dict[str, Any], weights: dict[str, torch.Tensor]) -> ImageDetector:
        from anomaly_vae.config import ImageConfig

        # Detectors saved before the complexity credit existed were calibrated without it.
        image = ImageConfig(**{"complexity_weight": 0.0, **state["image"]})
        model = build_image_model(image, state["model"])
        model.load_state_dict(weights)
        return cls(
            model=model,
            image=image,
            model_params=state["model"],
            samples=state["scoring"]["samples"],
            seed=state["scoring"]["seed"],
            map_scale=state["scoring"]["map_scale"],
            info=state.get("info", {}),
            **_decision_from_state(state),
        )


# How a top feature's direction (`SampleScores.top_directions`: 0, 1 above, -1 below what
# the model expected) follows its name, in the order of `_named_directions`.
DIRECTION_SUFFIXES = ("", " (high)", " (low)")


def without_direction(named: str) -> str:
    """The column of one of `top_features`' names: `amount (high)` is `amount`."""
    for suffix in DIRECTION_SUFFIXES[1:]:
        if named.endswith(suffix):
            return named.removesuffix(suffix)
    return named


def _named_directions(feature_names: list[str]) -> list[str]:
    """Every feature's name with each of the `DIRECTION_SUFFIXES`: feature i with direction d
    is entry 3 * i + (0, 1, 2)[d], so that the names join as Arrow takes them."""
    return [name + suffix for name in feature_names for suffix in DIRECTION_SUFFIXES]


def _direction_labels(ranked: np.ndarray, directions: np.ndarray | None) -> np.ndarray:
    """Indices into `_named_directions` of ranked features (directions: -1 is the third)."""
    labels = ranked * len(DIRECTION_SUFFIXES)
    return labels if directions is None else labels + (directions % len(DIRECTION_SUFFIXES))


def _joined(names: pa.Array, ranked: np.ndarray) -> pa.Array:
    """Each row's ranked feature columns as "name,name,name"."""
    return pc.binary_join_element_wise(
        *(names.take(ranked[:, j]) for j in range(ranked.shape[1])), ","
    )


def _check_frame(frame: object, source: str) -> None:
    """A pandas DataFrame with text column names, else one line: a Series or an array failed
    on `.columns`, and a frame of an array (`pd.DataFrame(X)`, columns 0, 1, ...) on the
    check of its names, an AttributeError where the model's '0', '1', ... were missing."""
    if not isinstance(frame, pd.DataFrame):
        raise InputError(
            f"{source}: score_frame takes a pandas DataFrame, not {type(frame).__name__}"
        )
    if frame.columns.inferred_type == "string":  # cached by pandas: no pass on each batch
        return
    name = next((c for c in frame.columns if not isinstance(c, str)), None)
    if name is not None:
        raise InputError(
            f"{source}: column names are text, as the model's are; {name!r} is of type "
            f"{type(name).__name__} (frame.columns = frame.columns.astype(str))"
        )


def _image_paths(paths: pd.Series, source: str, row_offset: int) -> list[str]:
    """The paths of a `path` column, each there: a missing one (None, NaN, "") was read as a
    file named "nan" or "", and refused as an image that does not exist."""
    missing = paths.isna().to_numpy() | (paths.astype(str) == "").to_numpy()
    if missing.any():
        row = row_offset + int(missing.argmax()) + 1
        raise InputError(f"{source}: column 'path', row {row}: no image path")
    listed = [str(path) for path in paths]
    # As `score` refuses them in a folder: over REST a GIF was scored, where `score` said no.
    for row, path in enumerate(listed, row_offset + 1):
        if unread_format(path):
            raise InputError(
                f"{source}: column 'path', row {row}: {path} is a {Path(path).suffix} file, "
                "which is not read as an image (PNG, JPEG, BMP, TIFF or WebP)"
            )
    return listed


def _decision_state(detector: TabularDetector | ImageDetector) -> dict[str, Any]:
    """What turns scores into decisions, the same for every kind of detector: the threshold,
    the probability map and the normal reference that `calibrate` may replace."""
    return {
        "threshold": detector.threshold.to_dict() if detector.threshold else None,
        "probability": detector.probability.to_dict() if detector.probability else None,
        "normal_scores": detector.normal.to_list() if detector.normal else None,
    }


def _decision_from_state(state: dict[str, Any]) -> dict[str, Any]:
    """`_decision_state`'s parts as constructor arguments; files saved before a part existed
    (the probability, the normal reference) have none."""
    threshold, probability = state["threshold"], state.get("probability")
    normal = state.get("normal_scores")
    return {
        "threshold": Threshold(**threshold) if threshold else None,
        "probability": ProbabilityMap.from_dict(probability) if probability else None,
        "normal": NormalScores.from_list(normal) if normal else None,
    }


def build_image_model(image: ImageConfig, params: dict[str, Any]) -> ConvVAE:
    """The network for the image section and the model section of a config."""
    return ConvVAE(
        channels=image.channels,
        size=image.size,
        conv_channels=params["conv_channels"],
        latent=params["latent"],
        likelihood=params["likelihood"],
    )


def score_columns(
    scores: SampleScores, threshold: Threshold | None, probability: ProbabilityMap | None
) -> dict[str, np.ndarray]:
    """The score columns every detector writes, in order; `probability` only when fitted."""
    columns = {
        "recon_score": scores.recon,
        "kl_score": scores.kl,
        "score": scores.score,
        "is_anomaly": flag_anomalies(scores.score, threshold),
    }
    if probability is not None:
        columns["probability"] = probability.predict(scores.score)
    return columns


def flag_anomalies(score: np.ndarray, threshold: Threshold | None) -> np.ndarray:
    if threshold is None:
        return np.zeros(len(score), dtype=bool)
    return score >= threshold.value


def write_artifact(path: str | Path, state: dict[str, Any], model: torch.nn.Module) -> Path:
    """Write `detector.json` and `weights.safetensors` into the directory `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / ARTIFACT_FILE).write_text(json.dumps(state, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / WEIGHTS_FILE))
    return path


_DETECTOR_KINDS: dict[str, type] = {
    TabularDetector.kind: TabularDetector,
    ImageDetector.kind: ImageDetector,
}


def load_detector(path: str | Path) -> TabularDetector | ImageDetector:
    """Load a detector directory written by `save`."""
    path = Path(path)
    # Looked for before reading: safetensors' FileNotFoundError has no filename, and naming
    # it from the exception ended a deleted weights file in a TypeError traceback.
    for name in (ARTIFACT_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise InputError(f"{path}: not a detector directory ({name} missing)")
    try:
        state = json.loads((path / ARTIFACT_FILE).read_text())
        weights = load_file(str(path / WEIGHTS_FILE))
    # SafetensorError: weights cut short by a copy or download that stopped, a traceback.
    except (json.JSONDecodeError, OSError, SafetensorError) as exc:
        raise InputError(f"{path}: corrupt detector artifact ({exc})") from None
    # A detector.json edited by hand or by another tool: a list, or an object without "kind"
    # or "model", ended in a traceback (the one for "kind" raised by its own error message).
    if not isinstance(state, dict):
        raise InputError(f"{path}: corrupt detector artifact ({ARTIFACT_FILE} is no JSON object)")
    if state.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: detector format {state.get('format_version')} is not supported")
    if (kind := state.get("kind")) not in _DETECTOR_KINDS:
        raise InputError(f"{path}: unknown detector kind {kind!r}")
    try:
        return _DETECTOR_KINDS[kind].from_state(state, weights)
    except KeyError as exc:
        raise InputError(
            f"{path}: corrupt detector artifact (no {exc} in {ARTIFACT_FILE})"
        ) from None
    except RuntimeError:  # load_state_dict's, in a traceback: another model's weights
        raise InputError(
            f"{path}: {WEIGHTS_FILE} does not fit the network {ARTIFACT_FILE} describes (the "
            "two files of different models?)"
        ) from None


def library_versions() -> dict[str, str]:
    return {
        "anomaly_vae": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "python": platform.python_version(),
    }
