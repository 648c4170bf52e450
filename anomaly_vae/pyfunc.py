"""The MLflow pyfunc wrapper around a detector directory.

`mlflow.pyfunc.load_model`, `mlflow models serve` and Spark UDFs all go through this class;
it only reads the detector artifact, so they score exactly as `anomaly-vae score` does.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd

from anomaly_vae.errors import InputError


class DetectorModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from anomaly_vae.detector import load_detector

        self.detector = load_detector(context.artifacts["detector"])

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import BAD_REQUEST

        try:
            return self.detector.score_frame(model_input, source="request")
        except InputError as exc:
            # A bad request, not a server failure: the scoring server answers 400.
            raise MlflowException(str(exc), error_code=BAD_REQUEST) from None
