"""Scoring: scorers (numpy, ONNX, Triton kernel) and the class matrix at run time."""
