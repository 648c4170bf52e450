"""Calibrated anomaly probability: the chance that a row with a given score is an anomaly.

Scores rank rows but their scale means nothing to an analyst; a probability fitted on
labelled validation scores does. Two maps, both fitted with scikit-learn and stored as plain
numbers in `detector.json` (never pickled):

- `isotonic`: a non-decreasing step-and-ramp function of the score (the fitted
  `X_thresholds_`/`y_thresholds_` of `IsotonicRegression`, applied with linear interpolation
  and clipped at both ends, exactly as scikit-learn predicts);
- `logistic`: `1 / (1 + exp(-(coef * score + intercept)))` (Platt scaling), smoother and
  better with few anomalies.

The probabilities reflect the anomaly rate of the data they were fitted on: at training, that
of the training file (`calibration.choose_threshold`'s `anomaly_weight`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from anomaly_vae.calibration import row_weights
from anomaly_vae.errors import InputError

METHODS = ("isotonic", "logistic")


@dataclass
class ProbabilityMap:
    method: str
    params: dict[str, list[float] | float]

    @classmethod
    def fit(
        cls,
        scores: np.ndarray,
        labels: np.ndarray,
        method: str = "isotonic",
        anomaly_weight: float = 1.0,
    ) -> ProbabilityMap:
        """Fit on validation scores and boolean anomaly labels holding both classes, each
        anomaly counting as `anomaly_weight` rows (`calibration.choose_threshold`)."""
        labels = np.asarray(labels, dtype=bool)
        if labels.all() or not labels.any():
            raise InputError("a calibrated probability needs labelled normals and anomalies")
        scores = np.asarray(scores, dtype=np.float64)
        weights = None if anomaly_weight == 1 else row_weights(labels, anomaly_weight)
        if method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
                scores, labels, sample_weight=weights
            )
            params = {"x": fitted.X_thresholds_.tolist(), "y": fitted.y_thresholds_.tolist()}
        elif method == "logistic":
            from sklearn.linear_model import LogisticRegression

            # Standardised for the solver, then folded back into a map of the raw score.
            # Weighed as the fit weighs the rows, the scaling is that of the rows it stands for.
            center = float(np.average(scores, weights=weights))
            scale = float(np.sqrt(np.average((scores - center) ** 2, weights=weights))) or 1.0
            fitted = LogisticRegression().fit(
                ((scores - center) / scale)[:, None], labels, sample_weight=weights
            )
            coef = float(fitted.coef_[0, 0]) / scale
            params = {"coef": coef, "intercept": float(fitted.intercept_[0]) - coef * center}
        else:
            raise InputError(f"probability method '{method}': expected one of {', '.join(METHODS)}")
        return cls(method=method, params=params)

    def predict(self, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64)
        if self.method == "isotonic":
            return np.interp(scores, self.params["x"], self.params["y"])
        # The logistic function written with tanh, which cannot overflow on extreme scores.
        return 0.5 * (1 + np.tanh((self.params["coef"] * scores + self.params["intercept"]) / 2))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **self.params}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> ProbabilityMap:
        state = dict(state)
        return cls(method=state.pop("method"), params=state)


def fit_probability(
    scores: np.ndarray, labels: np.ndarray | None, method: str, anomaly_weight: float = 1.0
) -> ProbabilityMap | None:
    """The map `method` fits on labelled validation scores; None for 'none' or one class only."""
    if method == "none" or labels is None:
        return None
    labels = np.asarray(labels, dtype=bool)
    if labels.all() or not labels.any():
        return None
    return ProbabilityMap.fit(scores, labels, method, anomaly_weight)
