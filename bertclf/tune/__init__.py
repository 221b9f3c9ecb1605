"""`bertclf tune`: search the training recipe with Optuna (bertclf/tune/run.py)."""
