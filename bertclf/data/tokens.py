"""Stage 2, tokens: turn texts (or sentence pairs) into token ids once, up front, with the fast tokenizer in large
batches.

No padding here: batches pad dynamically to their own longest row (see batches.py). A sentence pair goes through
the tokenizer's own pair template ([CLS] a [SEP] b [SEP], <s> a </s></s> b </s>, ...) and is cut longest-first,
the tokenizer's `truncation="longest_first"`; its token type ids (segment ids) are kept where the tokenizer gives
them, so training, inference, the ONNX export and transformers.pipeline feed the model the same inputs.
"""
from __future__ import annotations

import numpy as np


def encode(tokenizer, texts: list[str], max_length: int, chunk: int = 4096) -> list[np.ndarray]:
    """Token ids per text (with special tokens), truncated to max_length, as int32 arrays (other ways to fit a
    long text: bertclf/data/long_text.py)."""
    out: list[np.ndarray] = []
    for start in range(0, len(texts), chunk):
        enc = tokenizer(texts[start:start + chunk], truncation=True, max_length=max_length,
                        padding=False, return_attention_mask=False, return_token_type_ids=False)
        out.extend(np.asarray(ids, dtype=np.int32) for ids in enc["input_ids"])
    return out


def uses_token_types(tokenizer) -> bool:
    """Whether the tokenizer gives token type ids (BERT's segment ids; XLM-R's, me5-small's, give none): what
    transformers.pipeline passes the model, so what bertclf passes it too."""
    return "token_type_ids" in getattr(tokenizer, "model_input_names", ())


def encode_pairs(tokenizer, texts: list[str], pairs: list[str], max_length: int, chunk: int = 4096
                 ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """(token ids, token type ids or None) per pair, int32: the pair template, cut longest-first to max_length
    (tokens come off the longer side until the pair fits). Type ids are None where the tokenizer gives none."""
    if len(texts) != len(pairs):
        raise ValueError(f"{len(texts)} first texts but {len(pairs)} second texts")
    types = uses_token_types(tokenizer)
    ids_out: list[np.ndarray] = []
    types_out: list[np.ndarray] = []
    for start in range(0, len(texts), chunk):
        enc = tokenizer(texts[start:start + chunk], pairs[start:start + chunk], truncation="longest_first",
                        max_length=max_length, padding=False, return_attention_mask=False,
                        return_token_type_ids=types)
        ids_out.extend(np.asarray(x, dtype=np.int32) for x in enc["input_ids"])
        if types:
            types_out.extend(np.asarray(x, dtype=np.int32) for x in enc["token_type_ids"])
    return ids_out, (types_out if types else None)


def pair_cut(tokenizer, texts: list[str], pairs: list[str], ids: list[np.ndarray], max_length: int
             ) -> tuple[int, int, int]:
    """(pairs longer than max_length, first texts shortened, second texts shortened): of the pairs kept at
    max_length tokens, each side's kept tokens (the fast tokenizer's sequence ids) against its whole length."""
    full = np.flatnonzero(lengths(ids) >= max_length).tolist()
    if not full:
        return 0, 0, 0
    a = [texts[i] for i in full]
    b = [pairs[i] for i in full]
    kept = tokenizer(a, b, truncation="longest_first", max_length=max_length, return_attention_mask=False)
    whole_a = tokenizer(a, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    whole_b = tokenizer(b, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    either = cut_a = cut_b = 0
    for k in range(len(full)):
        sides = kept.sequence_ids(k)
        short_a, short_b = sides.count(0) < len(whole_a[k]), sides.count(1) < len(whole_b[k])
        either, cut_a, cut_b = either + (short_a or short_b), cut_a + short_a, cut_b + short_b
    return either, cut_a, cut_b


def lengths(ids) -> np.ndarray:
    """Tokens per row of a list of arrays, or of a token store's rows (token_store.TokenRows: from its offsets)."""
    if hasattr(ids, "offsets"):
        return np.diff(ids.offsets).astype(np.int64)
    return np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
