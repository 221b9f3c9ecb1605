"""Inference: engines and precisions side by side, int8 fidelity, distilled students, Ray."""
