"""The lent GPU machine: carry the inputs there, measure everything in one call."""
