"""From rows to batches: datasets, labels and tasks, metrics, tokens, long texts, batches."""
