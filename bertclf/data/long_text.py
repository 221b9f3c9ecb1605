"""Texts longer than --max-length tokens: truncate (keep the start), head-tail (keep the first and the last
tokens), or window (score overlapping chunks and average their logits per text).

    truncate   the first max_length tokens (special tokens included); the default, as before.
    head-tail  128/510 of the room from the start and the rest from the end, the best split in Sun et al. 2019,
               "How to Fine-Tune BERT for Text Classification?" (128 head + 382 tail at 512 tokens), scaled to
               --max-length.
    window     chunks of max_length tokens, each starting `stride` tokens before the previous one ended (the fast
               tokenizer's return_overflowing_tokens + stride makes them); a text's logits are the mean of its
               chunks' logits. A text that fits is one chunk, scored exactly as truncate scores it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bertclf.data.tokens import encode, encode_pairs, pair_cut
from bertclf.errors import UserError

MODES = ("truncate", "head-tail", "window")
HEAD_SHARE = 128 / 510
HELP = ("texts longer than --max-length: truncate (keep the start), head-tail (keep the first and last tokens), "
        "window (overlapping chunks, logits averaged)")


@dataclass
class Encoded:
    """Model inputs for a list of texts: ids[i] belongs to text doc[i] (window: several inputs per text)."""

    ids: list[np.ndarray]
    doc: np.ndarray
    n_texts: int
    cut: int  # texts longer than max_length tokens (cut by truncate / head-tail, split by window)
    types: list[np.ndarray] | None = None  # sentence pairs: token type ids, where the tokenizer gives them


def default_stride(max_length: int) -> int:
    return max_length // 4


def check_long_text(mode: str, stride: int | None, max_length: int, tokenizer=None, flag: str = "--long-text") -> int:
    """The stride to use; one-line errors naming the flag."""
    if mode not in MODES:
        raise UserError(f"{flag}: must be truncate, head-tail or window, got {mode!r}")
    stride = default_stride(max_length) if stride is None else stride
    room = max_length - (tokenizer.num_special_tokens_to_add() if tokenizer is not None else 2)
    if isinstance(stride, bool) or not isinstance(stride, int) or not 0 <= stride < room:
        raise UserError(f"--stride: must be a whole number from 0 to {room - 1} (the tokens a --max-length "
                        f"{max_length} chunk holds besides special tokens, minus one), got {stride}")
    return stride


def encode_long(tokenizer, texts: list[str], max_length: int, mode: str = "truncate", stride: int | None = None,
                chunk: int = 4096, pairs: list[str] | None = None) -> Encoded:
    """Token ids (int32, with special tokens) per model input, by `mode`, and how many texts did not fit.
    pairs: each text's second text (a sentence pair model): cut longest-first; only `truncate` applies."""
    stride = check_long_text(mode, stride, max_length, tokenizer)
    if pairs is not None:
        return encode_pair_rows(tokenizer, texts, pairs, max_length, mode)
    ids, doc, cut = [], [], 0
    for start in range(0, len(texts), chunk):
        part = texts[start:start + chunk]
        if mode == "head-tail":
            rows = head_tail(tokenizer, part, max_length)
            cut += sum(long for _, long in rows)
            ids += [r for r, _ in rows]
            doc += range(start, start + len(part))
            continue
        enc = tokenizer(part, truncation=True, max_length=max_length, stride=stride if mode == "window" else 0,
                        return_overflowing_tokens=True, padding=False, return_attention_mask=False,
                        return_token_type_ids=False)
        owner = np.asarray(enc["overflow_to_sample_mapping"], dtype=np.int64)
        first = np.r_[True, owner[1:] != owner[:-1]]
        cut += len(np.unique(owner[~first]))  # texts with a second chunk: longer than max_length
        keep = np.ones(len(owner), bool) if mode == "window" else first
        ids += [np.asarray(x, dtype=np.int32) for x, k in zip(enc["input_ids"], keep) if k]
        doc += (owner[keep] + start).tolist()
    return Encoded(ids, np.asarray(doc, dtype=np.int64), len(texts), cut)


def encode_pair_rows(tokenizer, texts: list[str], pairs: list[str], max_length: int, mode: str) -> Encoded:
    """A pair model's inputs: one per pair, cut longest-first (head-tail and window chunks are defined for one
    text: which side would a chunk take from?)."""
    if mode != "truncate":
        raise UserError(f"--long-text {mode}: not supported for sentence pairs (a pair is cut longest-first at "
                        f"--max-length); drop --long-text or use truncate")
    ids, types = encode_pairs(tokenizer, texts, pairs, max_length)
    cut = pair_cut(tokenizer, texts, pairs, ids, max_length)[0]
    return Encoded(ids, np.arange(len(texts), dtype=np.int64), len(texts), cut, types)


def added_specials(tokenizer) -> tuple[int, int]:
    """(tokens the tokenizer puts before a text, after it): [CLS]..[SEP] and <s>..</s> give (1, 1). Found by
    encoding a probe with and without them; not from the special-tokens mask, which also marks an <unk> that a
    text's own first or last character became."""
    body = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for pre in range(len(full) - len(body) + 1):
        if full[pre:pre + len(body)] == body:
            return pre, len(full) - pre - len(body)
    raise ValueError(f"{type(tokenizer).__name__}: cannot find a text's tokens inside its special tokens")


def head_tail(tokenizer, texts: list[str], max_length: int) -> list[tuple[np.ndarray, bool]]:
    """(ids, was it longer than max_length) per text: the first HEAD_SHARE of the room and the last tokens, inside
    the text's own special tokens."""
    pre, suf = added_specials(tokenizer)
    room = max_length - pre - suf
    head = round(room * HEAD_SHARE)
    out = []
    for full in tokenizer(texts, truncation=False, return_attention_mask=False,
                          return_token_type_ids=False)["input_ids"]:
        long = len(full) > max_length
        if long:
            full = full[:pre + head] + full[len(full) - suf - (room - head):]
        out.append((np.asarray(full, dtype=np.int32), long))
    return out


def per_text(logits: np.ndarray, enc: Encoded) -> np.ndarray:
    """Logits per text: the mean over its inputs (one input per text unless window split it)."""
    if len(enc.ids) == enc.n_texts:
        return logits
    sums = np.zeros((enc.n_texts, logits.shape[1]), dtype=np.float64)
    np.add.at(sums, enc.doc, logits)
    return (sums / np.bincount(enc.doc, minlength=enc.n_texts)[:, None]).astype(np.float32)


def encode_rows(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int, long_text: str = "truncate"
                ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """(token ids, token type ids or None) of a dataset's rows: single texts (encode; long_text "head-tail": the
    first and last tokens of a longer text) or pairs (encode_pairs)."""
    if pairs is not None:
        return encode_pairs(tokenizer, texts, pairs, max_length)
    if long_text == "head-tail":
        return encode_long(tokenizer, texts, max_length, "head-tail").ids, None
    return encode(tokenizer, texts, max_length), None
