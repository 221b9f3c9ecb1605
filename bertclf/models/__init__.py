"""Encoders and their partners: resolving a name, the builtin model, vocabulary trimming, precision, the forward pass over token rows, the TF-IDF baseline and the n-gram partner."""
