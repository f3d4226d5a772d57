"""TensorRT engine builds from the bundle's ONNX graphs (apclip-build-engine)."""
