"""A training file too large for Python lists: its rows streamed once into a token store, and a dataset that
is the store's arrays (issue 32).

    rows = FileRows("corpus.parquet", "text", "label")
    store = open_or_build_file(tokenizer, rows, max_length=128, long_text="truncate")
    ds = StoredDataset.of(store, rows)            # len(ds), ds.codes(), ds.ids(), ds.lengths(), ds.summary()
    train, valid = ds.split(0.05, seed=42)        # stratified by label, numpy: no list per row

Why: Dataset (bertclf/data/dataset.py) holds every text and label as a Python object, ~0.8 KB per row in every
process (3M rows: 2.4 GB before a step). Here the build reads the file a chunk of CHUNK_ROWS rows at a time
(bertclf.io.rows.iter_row_chunks; Parquet in record batches), and what training keeps per row is the store's
memory maps (token ids, lengths, text hashes, label codes) plus an int64 row index per split.

The store's key is the file's SHA-256 (computed once per file version and cached, bertclf.io.rows
.sha256_data_cached), the columns and reading options, the tokenizer, --max-length and --long-text: a changed
file is another store, and --resume compares the same SHA-256. Rows are read as read_labelled reads them: an
empty text is dropped and counted, a label is its stripped NFC cell, an empty label is an error naming its row
(allowed for multi-label rows).
"""
from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from bertclf.data.long_text import encode_rows
from bertclf.data.token_store import FORMAT, TokenStore, open_or_write, text_hashes, tokenizer_fingerprint
from bertclf.errors import UserError
from bertclf.io.rows import at_row, iter_row_chunks, sha256_data_cached

CHUNK_ROWS = 65_536  # rows read, tokenized and written per step of a build: bounded memory on any file size


@dataclass
class FileRows:
    """A labelled file and how to read it (read_labelled's options); streamed, never held."""
    path: str
    text_col: str
    label_col: str
    fmt: str | None = None
    encoding: str = "utf-8"
    columns: list[str] | None = None
    allow_empty_label: bool = False
    _sha256: str = field(default="", repr=False)

    @property
    def sha256(self) -> str:
        if not self._sha256:
            self._sha256 = sha256_data_cached(self.path, self.fmt)
        return self._sha256

    def raw_chunks(self) -> Iterator[tuple[list[int], dict[str, list[str]]]]:
        return iter_row_chunks(self.path, [self.text_col, self.label_col], CHUNK_ROWS, self.fmt, self.encoding,
                               self.columns, text_cols=[self.text_col])

    def chunks(self) -> Iterator[tuple[list[str], list[str], list[int], int]]:
        """(texts, label cells as read_labelled keeps them, their row numbers, empty texts dropped) per chunk."""
        from bertclf.data.dataset import is_empty_text

        for numbers, cols in self.raw_chunks():
            texts, labels, kept = [], [], []
            for n, t, cell in zip(numbers, cols[self.text_col], cols[self.label_col]):
                if is_empty_text(t):
                    continue
                lab = unicodedata.normalize("NFC", cell.strip())
                if lab == "" and not self.allow_empty_label:
                    raise UserError(f"{at_row(self.path, n, self.fmt)}: empty label in column '{self.label_col}'; "
                                    f"fill it in or remove the row")
                texts.append(t)
                labels.append(lab)
                kept.append(n)
            yield texts, labels, kept, len(numbers) - len(kept)

    def text_chunks(self) -> Iterator[list[str]]:
        """The rows' texts (empty ones dropped), a chunk at a time: what a vocabulary trim reads."""
        from bertclf.data.dataset import is_empty_text

        for _numbers, cols in self.raw_chunks():
            yield [t for t in cols[self.text_col] if not is_empty_text(t)]

    def texts_at(self, rows: np.ndarray) -> list[str]:
        """The texts of stored rows `rows` (ascending; numbered as the store numbers them: empty texts skipped),
        read by one pass over the file."""
        out, seen, want = [], 0, np.asarray(rows, dtype=np.int64)
        for texts in self.text_chunks():
            lo, hi = np.searchsorted(want, [seen, seen + len(texts)])
            out += [texts[i - seen] for i in want[lo:hi].tolist()]
            seen += len(texts)
        return out

    def key_parts(self) -> dict:
        return {"file": self.sha256, "text_col": self.text_col, "label_col": self.label_col, "fmt": self.fmt,
                "encoding": self.encoding, "columns": self.columns, "allow_empty_label": self.allow_empty_label}


def file_store_key(tokenizer, rows: FileRows, max_length: int, long_text: str) -> str:
    parts = {"format": FORMAT, "kind": "file", **rows.key_parts(), "tokenizer": tokenizer_fingerprint(tokenizer),
             "max_length": max_length, "long_text": long_text}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def open_or_build_file(tokenizer, rows: FileRows, max_length: int, long_text: str,
                       log: Callable[[str], None] = print, root: Path | None = None,
                       builds: bool = True) -> TokenStore:
    """The store of a file's rows (built by streaming it, or opened); see token_store.open_or_write."""
    write = lambda tmp: write_file_arrays(tmp, tokenizer, rows, max_length, long_text)  # noqa: E731
    return open_or_write(file_store_key(tokenizer, rows, max_length, long_text), write, log, root, builds)


def write_file_arrays(folder: Path, tokenizer, rows: FileRows, max_length: int, long_text: str) -> dict:
    """Stream the file: per chunk, tokenize (encode_rows: the in-memory path's ids), hash and code the labels,
    and append to the flat files; returns the meta, with the file's counts and the label values."""
    names = ["ids", "offsets", "lengths", "hashes", "labels"]
    outs = {name: open(folder / f"{name}.bin", "wb") for name in names}
    codes: dict[str, int] = {}  # label value -> code: a handful of classes, not a row each
    n = total = dropped = cut = 0
    try:
        outs["offsets"].write(np.zeros(1, np.int64).tobytes())
        for texts, labels, _numbers, empty in rows.chunks():
            dropped += empty
            if not texts:
                continue
            ids, _types = encode_rows(tokenizer, texts, None, max_length, long_text)
            lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            outs["ids"].write(np.concatenate(ids).astype(np.int32, copy=False).tobytes())
            outs["offsets"].write((total + np.cumsum(lens)).astype(np.int64).tobytes())
            outs["lengths"].write(lens.astype(np.int32).tobytes())
            outs["hashes"].write(text_hashes(texts).tobytes())
            outs["labels"].write(np.array([codes.setdefault(lab, len(codes)) for lab in labels], np.int32).tobytes())
            cut += count_cut(tokenizer, texts, lens, max_length)
            total += int(lens.sum())
            n += len(texts)
    finally:
        for f in outs.values():
            f.close()
    if not n:
        raise UserError(f"{rows.path}: no rows with text in column '{rows.text_col}'")
    return {"format": FORMAT, "rows": n, "tokens": total, "types": False, "max_length": max_length,
            "long_text": long_text, "bytes": sum((folder / f"{name}.bin").stat().st_size for name in names),
            "label_values": list(codes), "rows_read": n + dropped, "dropped_empty": dropped, "cut": cut,
            "source": str(rows.path), "sha256": rows.sha256}


def count_cut(tokenizer, texts: list[str], kept_lengths: np.ndarray, max_length: int) -> int:
    """How many texts were longer than max_length: of those kept at exactly max_length tokens, the ones whose
    whole tokenization is longer (a text of exactly max_length tokens is not cut)."""
    full = np.flatnonzero(np.asarray(kept_lengths) >= max_length).tolist()
    if not full:
        return 0
    ids = tokenizer([texts[i] for i in full], truncation=False, return_attention_mask=False, verbose=False)
    return sum(len(x) > max_length for x in ids["input_ids"])


class SubsetRows:
    """Rows `rows` of a store's TokenRows, indexed 0..len-1 (a split's ids, without copying a row)."""

    def __init__(self, base, rows: np.ndarray):
        self.base, self.rows = base, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i) -> np.ndarray:
        return self.base[int(self.rows[i])]


@dataclass
class StoredDataset:
    """Dataset's role for a file in a token store: rows are store rows (int64, ascending; None: all of them, no
    8-byte index per row), the texts stay in the file. pairs and groups are None (a file store holds single
    texts; --group-col reads in memory)."""
    store: TokenStore
    file: FileRows
    rows: np.ndarray | None
    source: str
    is_part: bool = False
    pairs: None = None
    groups: None = None

    @classmethod
    def of(cls, store: TokenStore, file: FileRows) -> "StoredDataset":
        return cls(store, file, None, str(file.path))

    def __len__(self) -> int:
        return len(self.store) if self.rows is None else len(self.rows)

    @property
    def sha256(self) -> str:
        return self.store.meta["sha256"]

    @property
    def rows_read(self) -> int:
        return self.store.meta["rows_read"]

    @property
    def dropped_empty(self) -> int:
        return self.store.meta["dropped_empty"]

    @property
    def label_values(self) -> list[str]:
        return self.store.meta["label_values"]

    def whole(self) -> bool:
        return self.rows is None

    def codes(self) -> np.ndarray:
        """Per row: its label's index in label_values."""
        return np.asarray(self.store.labels if self.whole() else self.store.labels[self.rows])

    def ids(self):
        return self.store.ids if self.whole() else SubsetRows(self.store.ids, self.rows)

    def lengths(self) -> np.ndarray:
        return np.asarray(self.store.lengths if self.whole() else self.store.lengths[self.rows])

    def hashes(self) -> np.ndarray:
        return self.store.hashes if self.whole() else self.store.hashes[self.rows]

    def texts_at(self, idx: np.ndarray) -> list[str]:
        idx = np.sort(np.asarray(idx, dtype=np.int64))
        return self.file.texts_at(idx if self.whole() else self.rows[idx])

    def subset(self, idx: np.ndarray, source_note: str = "") -> "StoredDataset":
        idx = np.asarray(idx, dtype=np.int64)
        return replace(self, rows=idx if self.whole() else self.rows[idx], source=self.source + source_note,
                       is_part=True)

    def split(self, frac: float, seed: int, multi_label: bool = False) -> tuple["StoredDataset", "StoredDataset"]:
        """(train, validation): dataset.split_valid's stratified split, drawn with numpy."""
        valid_idx, train_idx = stratified_positions(self.strata(multi_label), self.label_values, frac, seed + 1)
        if not len(valid_idx) or not len(train_idx):
            raise UserError(f"{self.source}: too few rows ({len(self)}) to carve a validation split; add rows or "
                            f"pass --valid FILE")
        return self.subset(train_idx), self.subset(valid_idx, " (validation split)")

    def sample(self, frac: float, seed: int, multi_label: bool = False) -> "StoredDataset":
        if frac >= 1.0:
            return self
        taken, _ = stratified_positions(self.strata(multi_label), self.label_values, frac, seed)
        if not len(taken):
            raise UserError(f"--sample {frac:g}: leaves none of the {len(self)} rows of {self.source}; raise it "
                            f"or use a larger file")
        return self.subset(taken)

    def strata(self, multi_label: bool) -> np.ndarray:
        return np.zeros(len(self), np.int32) if multi_label else self.codes()

    def repeated_text_share(self) -> float:
        """dataset.repeated_text_share from the text hashes (NFC texts)."""
        _, counts = np.unique(self.hashes(), return_counts=True)
        return float(counts[counts > 1].sum()) / max(1, len(self))

    def summary(self) -> dict:
        counts = np.bincount(self.codes(), minlength=len(self.label_values))
        read = {"rows_read": len(self), "dropped_empty": 0, "file_rows_read": self.rows_read,
                "file_dropped_empty": self.dropped_empty} if self.is_part else {
                "rows_read": self.rows_read, "dropped_empty": self.dropped_empty}
        return {"source": self.source, "sha256": self.sha256, **read, "rows": len(self),
                "label_counts": dict(sorted(((v, int(c)) for v, c in zip(self.label_values, counts) if c),
                                            key=lambda kv: str(kv[0])))}


def stratified_positions(strata: np.ndarray, names: list[str], frac: float, seed: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(taken, rest) positions, ascending, with round(frac * k) of each stratum's k rows taken at random (a
    seeded numpy generator): dataset.stratified_indices without a Python list per class."""
    rng = np.random.default_rng(seed)
    taken, rest = [], []
    present = np.unique(strata)
    for code in sorted(present.tolist(), key=lambda c: str(names[c]) if c < len(names) else ""):
        idx = np.flatnonzero(strata == code)
        rng.shuffle(idx)
        k = round(len(idx) * frac)
        taken.append(idx[:k])
        rest.append(idx[k:])
    return np.sort(np.concatenate(taken)), np.sort(np.concatenate(rest))
