"""The run directory's files: its layout and log, checkpoints, the bertclf card."""
