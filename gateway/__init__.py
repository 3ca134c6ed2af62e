"""Online model-serving gateway for ONNX models."""

__version__ = "0.1.0"
