"""Stage 2, tokens: turn texts into token ids once, up front, with the fast tokenizer in large batches.

No padding here: batches pad dynamically to their own longest row (see batches.py).
"""
from __future__ import annotations

import numpy as np


def encode(tokenizer, texts: list[str], max_length: int, chunk: int = 4096,
           long_text: str = "truncate") -> list[np.ndarray]:
    """Token ids per text (with special tokens), truncated to max_length, as int32 arrays (long_text "head-tail":
    the first and last tokens of a longer text, bertclf/data/long_text.py)."""
    if long_text == "head-tail":
        from bertclf.data.long_text import encode_long

        return encode_long(tokenizer, texts, max_length, "head-tail", chunk=chunk).ids
    out: list[np.ndarray] = []
    for start in range(0, len(texts), chunk):
        enc = tokenizer(texts[start:start + chunk], truncation=True, max_length=max_length,
                        padding=False, return_attention_mask=False, return_token_type_ids=False)
        out.extend(np.asarray(ids, dtype=np.int32) for ids in enc["input_ids"])
    return out


def lengths(ids: list[np.ndarray]) -> np.ndarray:
    return np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
