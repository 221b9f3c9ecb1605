"""Quality: accuracy against baselines, recipes, checkpoint selection, calibration, label audit, long texts."""
