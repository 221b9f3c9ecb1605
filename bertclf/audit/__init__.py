"""Label audit: out-of-fold scores and the rows most likely mislabelled."""
