"""Vision and text encoder runners (ONNX Runtime, torch reference, torch-cuda, TensorRT) and the engine cache."""
