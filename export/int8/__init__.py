"""CPU int8: quantization of the exported ONNX graphs and its parity check."""
