"""anomaly-vae: variational autoencoders that flag anomalous rows and images.

Train on normal data, score new data by how badly it is reconstructed (and how far its code
lies from the prior), and calibrate a threshold from validation data. Importing this package
is cheap on purpose: torch, MLflow and Lightning are imported by the modules that need them.
"""

__version__ = "0.1.0"
