"""ONNX export, int8 quantization and its agreement check."""
