"""A saved model at work: the Classifier (torch or ONNX), prediction records, the Ray engine, eval and explain."""
