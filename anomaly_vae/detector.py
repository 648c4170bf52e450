"""The detector artifact: one directory that scoring, MLflow and serving all load.

`detector.json` holds everything that is not a tensor (the config, the feature schema and
preprocessing statistics, the threshold and how it was chosen, library versions) and
`weights.safetensors` holds the weights. Loading reads JSON and tensors only: no pickle, so
a model file cannot run code on the machine that loads it.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from anomaly_vae import __version__
from anomaly_vae.calibration import Threshold
from anomaly_vae.data.preprocessing import TabularPreprocessor
from anomaly_vae.data.schema import check_columns
from anomaly_vae.errors import InputError
from anomaly_vae.models.tabular_vae import TabularVAE
from anomaly_vae.scoring import SampleScores, score_tabular

ARTIFACT_FILE = "detector.json"
WEIGHTS_FILE = "weights.safetensors"
FORMAT_VERSION = 1
OUTPUT_COLUMNS = ("recon_score", "kl_score", "score", "is_anomaly", "top_features")


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
    ) -> None:
        self.model = model.eval()
        self.preprocessor = preprocessor
        self.roles = roles
        self.model_params = model_params
        self.threshold = threshold
        self.samples = samples
        self.top_features = top_features
        self.info = info or {}

    @property
    def feature_names(self) -> list[str]:
        return self.preprocessor.feature_names

    def check_columns(self, columns: list[str], source: str, allow_extra: bool = False) -> None:
        check_columns(columns, self.feature_names, self.roles.known, source, allow_extra)

    def score_samples(self, frame: pd.DataFrame, source: str, row_offset: int = 0) -> SampleScores:
        encoded = self.preprocessor.transform(frame, source, row_offset)
        return score_tabular(
            self.model, encoded.numeric, encoded.observed, encoded.codes, samples=self.samples
        )

    def score_frame(
        self,
        frame: pd.DataFrame,
        source: str = "input",
        row_offset: int = 0,
        keep_columns: bool = False,
        allow_extra: bool = False,
    ) -> pd.DataFrame:
        """Score rows: the id columns (or all input columns) plus the score columns."""
        self.check_columns(list(frame.columns), source, allow_extra)
        scores = self.score_samples(frame, source, row_offset)
        kept = list(frame.columns) if keep_columns else [
            c for c in self.roles.id_columns if c in frame.columns
        ]
        out = frame[kept].reset_index(drop=True)
        out["recon_score"] = scores.recon
        out["kl_score"] = scores.kl
        out["score"] = scores.score
        out["is_anomaly"] = self.is_anomaly(scores.score)
        out["top_features"] = self._top_features(scores.contributions)
        return out

    def is_anomaly(self, score: np.ndarray) -> np.ndarray:
        if self.threshold is None:
            return np.zeros(len(score), dtype=bool)
        return score >= self.threshold.value

    def _top_features(self, contributions: np.ndarray) -> np.ndarray:
        """Comma-joined names of the features with the largest reconstruction terms."""
        k = min(self.top_features, contributions.shape[1])
        names = np.asarray(self.feature_names, dtype=object)
        if k == 0:
            return np.full(len(contributions), "", dtype=object)
        order = np.argsort(-contributions, axis=1, kind="stable")[:, :k]
        joined = names[order[:, 0]]
        for j in range(1, k):
            joined = joined + "," + names[order[:, j]]
        return joined

    def to_state(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "model": self.model_params,
            "preprocessor": self.preprocessor.to_dict(),
            "columns": asdict(self.roles),
            "threshold": self.threshold.to_dict() if self.threshold else None,
            "scoring": {"samples": self.samples, "top_features": self.top_features},
            "info": self.info,
            "versions": library_versions(),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / ARTIFACT_FILE).write_text(json.dumps(self.to_state(), indent=2))
        save_file(
            {k: v.contiguous() for k, v in self.model.state_dict().items()},
            str(path / WEIGHTS_FILE),
        )
        return path

    @classmethod
    def from_state(cls, state: dict[str, Any], weights: dict[str, torch.Tensor]) -> TabularDetector:
        preprocessor = TabularPreprocessor.from_dict(state["preprocessor"])
        model = build_tabular_model(preprocessor, state["model"])
        model.load_state_dict(weights)
        threshold = Threshold(**state["threshold"]) if state["threshold"] else None
        return cls(
            model=model,
            preprocessor=preprocessor,
            roles=ColumnRoles(**state["columns"]),
            model_params=state["model"],
            threshold=threshold,
            samples=state["scoring"]["samples"],
            top_features=state["scoring"]["top_features"],
            info=state.get("info", {}),
        )


def build_tabular_model(preprocessor: TabularPreprocessor, params: dict[str, Any]) -> TabularVAE:
    """The network for a fitted preprocessor and the model section of a config."""
    return TabularVAE(
        n_numeric=len(preprocessor.numeric),
        n_indicators=len(preprocessor.missing_columns),
        indicator_columns=preprocessor.missing_columns,
        category_sizes=preprocessor.category_sizes,
        hidden=params["hidden"],
        latent=params["latent"],
        learn_scale=params["likelihood"] == "gaussian",
        dropout=params["dropout"],
    )


_DETECTOR_KINDS: dict[str, type] = {TabularDetector.kind: TabularDetector}


def load_detector(path: str | Path) -> TabularDetector:
    """Load a detector directory written by `save`."""
    path = Path(path)
    try:
        state = json.loads((path / ARTIFACT_FILE).read_text())
        weights = load_file(str(path / WEIGHTS_FILE))
    except FileNotFoundError as exc:
        raise InputError(f"{path}: not a detector directory ({Path(exc.filename).name} missing)") from None
    except (json.JSONDecodeError, OSError) as exc:
        raise InputError(f"{path}: corrupt detector artifact ({exc})") from None
    if state.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: detector format {state.get('format_version')} is not supported")
    try:
        detector_class = _DETECTOR_KINDS[state["kind"]]
    except KeyError:
        raise InputError(f"{path}: unknown detector kind {state['kind']!r}") from None
    return detector_class.from_state(state, weights)


def library_versions() -> dict[str, str]:
    return {
        "anomaly_vae": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "python": platform.python_version(),
    }
