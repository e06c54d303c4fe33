"""A gRPC model-serving sidecar: ONNX model versions served over the Open
Inference Protocol, with the previous version kept warm and an atomic swap.

Importing the package does nothing: `sidecar.app` is the one composition root.
"""

__version__ = "0.1.0"
