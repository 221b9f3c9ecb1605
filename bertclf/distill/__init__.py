"""Distillation into a smaller student."""
