"""Loader: builds a warmed-up session from a model file. Knows nothing of serving.

`sidecar.loader.onnx` is the only module of the package that imports onnxruntime.
"""
