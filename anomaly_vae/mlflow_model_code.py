"""Model code that MLflow stores with each logged detector ("models from code").

MLflow runs this file to build the pyfunc model instead of unpickling an object, so loading
a registered model never deserialises code.
"""

from mlflow.models import set_model

from anomaly_vae.pyfunc import DetectorModel

set_model(DetectorModel())
