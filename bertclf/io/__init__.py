"""Files and rows: atomic writes, the row readers of every input format, disk space, a model's reading spec."""
