"""Training speed: whole runs side by side, one step's parts, a GPU profile."""
