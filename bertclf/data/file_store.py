"""A training file too large for Python lists: its rows streamed once into a token store, and a dataset that
is the store's arrays (issue 32).

    rows = FileRows("corpus.parquet", "text", "label")   # pair_col="text2": sentence pairs; group_col="g"
    store = open_or_build_file(tokenizer, rows, max_length=128, long_text="truncate")
    ds = StoredDataset.of(store, rows)            # len(ds), ds.codes(), ds.ids(), ds.lengths(), ds.summary()
    train, valid = ds.split(0.05, seed=42)        # stratified by label (or by whole groups), numpy: no list per row

Why: Dataset (bertclf/data/dataset.py) holds every text and label as a Python object, ~0.8 KB per row in every
process (3M rows: 2.4 GB before a step). Here the build reads the file a chunk of CHUNK_ROWS rows at a time
(bertclf.io.rows.iter_row_chunks; Parquet in record batches), and what training keeps per row is the store's
memory maps (token ids, lengths, text hashes, label codes; for sentence pairs token type ids where the tokenizer
has them and the first texts' hashes; for --group-col the group values' hashes) plus an int64 row index per split.

The store's key is the file's SHA-256 (computed once per file version and cached, bertclf.io.rows
.sha256_data_cached), the columns (text, second text, label, group) and reading options, the tokenizer,
--max-length and --long-text: a changed file is another store, and --resume compares the same SHA-256. Rows are
read as read_labelled reads them: a row with an empty text (either text of a pair) is dropped and counted, a
label (a group) is its stripped NFC cell, an empty label is an error naming its row (allowed for multi-label rows).
"""
from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np

from bertclf.data.long_text import encode_rows
from bertclf.data.token_store import FORMAT, TokenStore, open_or_write, text_hashes, tokenizer_fingerprint
from bertclf.data.tokens import pair_cut, uses_token_types
from bertclf.errors import UserError
from bertclf.io.rows import at_row, iter_row_chunks, sha256_data_cached

CHUNK_ROWS = 65_536  # rows read, tokenized and written per step of a build: bounded memory on any file size
GROUP_LOOKUP_ROWS = 1 << 22  # rows looked up at a time in a grouped split: a bounded int64 array in flight


class Chunk(NamedTuple):
    """A chunk's kept rows as read_labelled keeps them (a row with an empty text, either text of a pair, dropped)."""
    texts: list[str]
    pairs: list[str] | None   # sentence pairs: the second texts
    labels: list[str]         # the stripped NFC label cells
    groups: list[str] | None  # --group-col: the stripped NFC group cells
    numbers: list[int]        # the kept rows' row numbers in the file
    dropped: int              # rows of the chunk dropped for an empty text


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
    pair_col: str | None = None   # sentence pairs: the second text's column
    group_col: str | None = None  # --group-col: rows sharing its value stay on one side of a split
    _sha256: str = field(default="", repr=False)

    @property
    def sha256(self) -> str:
        if not self._sha256:
            self._sha256 = sha256_data_cached(self.path, self.fmt)
        return self._sha256

    def raw_chunks(self) -> Iterator[tuple[list[int], dict[str, list[str]]]]:
        need = list(dict.fromkeys(c for c in (self.text_col, self.pair_col, self.label_col, self.group_col) if c))
        flags = "--text-col/--text-pair-col/--label-col" if self.pair_col else "--text-col/--label-col"
        return iter_row_chunks(self.path, need, CHUNK_ROWS, self.fmt, self.encoding, self.columns,
                               col_flags=flags + ("/--group-col" if self.group_col else ""),
                               text_cols=[c for c in (self.text_col, self.pair_col) if c])

    def kept(self, cols: dict[str, list[str]]) -> list[int]:
        """Positions in a chunk of the rows read_labelled keeps: a text (and a pair's second text) not empty."""
        from bertclf.data.dataset import is_empty_text

        if not self.pair_col:
            return [i for i, t in enumerate(cols[self.text_col]) if not is_empty_text(t)]
        return [i for i, (t, p) in enumerate(zip(cols[self.text_col], cols[self.pair_col]))
                if not (is_empty_text(t) or is_empty_text(p))]

    def chunks(self) -> Iterator[Chunk]:
        """The kept rows, a chunk at a time; an empty label is an error naming its row (unless allowed)."""
        nfc = lambda cells: [unicodedata.normalize("NFC", c.strip()) for c in cells]  # noqa: E731
        for numbers, cols in self.raw_chunks():
            kept = self.kept(cols)
            pick = lambda col: [cols[col][i] for i in kept] if col else None  # noqa: E731
            labels = nfc(pick(self.label_col))
            if not self.allow_empty_label and "" in labels:
                n = numbers[kept[labels.index("")]]
                raise UserError(f"{at_row(self.path, n, self.fmt)}: empty label in column '{self.label_col}'; "
                                f"fill it in or remove the row")
            yield Chunk(pick(self.text_col), pick(self.pair_col), labels,
                        nfc(pick(self.group_col)) if self.group_col else None, [numbers[i] for i in kept],
                        len(numbers) - len(kept))

    def sides(self) -> Iterator[tuple[list[str], list[str] | None]]:
        """(texts, second texts or None) of the kept rows, a chunk at a time."""
        for _numbers, cols in self.raw_chunks():
            kept = self.kept(cols)
            yield ([cols[self.text_col][i] for i in kept],
                   [cols[self.pair_col][i] for i in kept] if self.pair_col else None)

    def text_chunks(self) -> Iterator[list[str]]:
        """Every text the model reads (both sides of a pair), a chunk at a time: what a vocabulary trim reads."""
        for texts, pairs in self.sides():
            yield texts + (pairs or [])

    def sides_at(self, rows: np.ndarray) -> tuple[list[str], list[str] | None]:
        """(texts, second texts or None) of stored rows `rows` (ascending; numbered as the store numbers them:
        dropped rows skipped), read by one pass over the file."""
        out, out_pairs, seen, want = [], [], 0, np.asarray(rows, dtype=np.int64)
        for texts, pairs in self.sides():
            lo, hi = np.searchsorted(want, [seen, seen + len(texts)])
            at = (want[lo:hi] - seen).tolist()
            out += [texts[i] for i in at]
            out_pairs += [pairs[i] for i in at] if pairs is not None else []
            seen += len(texts)
        return out, (out_pairs if self.pair_col else None)

    def texts_at(self, rows: np.ndarray) -> list[str]:
        """The (first) texts of stored rows `rows`: sides_at's."""
        return self.sides_at(rows)[0]

    def key_parts(self) -> dict:
        """What the stored rows depend on; the pair and group columns only where given (a single-text file's key
        is what it was before they were)."""
        return {"file": self.sha256, "text_col": self.text_col, "label_col": self.label_col, "fmt": self.fmt,
                "encoding": self.encoding, "columns": self.columns, "allow_empty_label": self.allow_empty_label,
                **({"pair_col": self.pair_col} if self.pair_col else {}),
                **({"group_col": self.group_col} if self.group_col else {})}

    def texts_key(self) -> dict:
        """What the rows' texts depend on (a vocabulary trim's key): key_parts less the group column."""
        return {k: v for k, v in self.key_parts().items() if k != "group_col"}


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
    """Stream the file: per chunk, tokenize (encode_rows: the in-memory path's ids, and token type ids for pairs
    where the tokenizer has them), hash the texts (and groups), code the labels, and append to the flat files;
    returns the meta, with the file's counts and the label values."""
    with_types = rows.pair_col is not None and uses_token_types(tokenizer)
    names = (["ids", "offsets", "lengths", "hashes", "labels"] + (["first_hashes"] if rows.pair_col else [])
             + (["types"] if with_types else []) + (["groups"] if rows.group_col else []))
    outs = {name: open(folder / f"{name}.bin", "wb") for name in names}
    codes: dict[str, int] = {}  # label value -> code: a handful of classes, not a row each
    counts = dict.fromkeys(("rows", "tokens", "dropped", "cut", "cut_first", "cut_second"), 0)
    try:
        outs["offsets"].write(np.zeros(1, np.int64).tobytes())
        for chunk in rows.chunks():
            counts["dropped"] += chunk.dropped
            if chunk.texts:
                write_chunk(outs, tokenizer, chunk, codes, counts, max_length, long_text)
    finally:
        for f in outs.values():
            f.close()
    if not counts["rows"]:
        both = f"columns '{rows.text_col}' and '{rows.pair_col}'" if rows.pair_col else f"column '{rows.text_col}'"
        raise UserError(f"{rows.path}: no rows with text in {both}")
    n = counts["rows"]
    return {"format": FORMAT, "rows": n, "tokens": counts["tokens"], "types": with_types, "max_length": max_length,
            "long_text": long_text, "bytes": sum((folder / f"{name}.bin").stat().st_size for name in names),
            "label_values": list(codes), "rows_read": n + counts["dropped"], "dropped_empty": counts["dropped"],
            "cut": counts["cut"], "source": str(rows.path), "sha256": rows.sha256, "pair_col": rows.pair_col,
            "group_col": rows.group_col,
            **({"cut_first": counts["cut_first"], "cut_second": counts["cut_second"]} if rows.pair_col else {})}


def write_chunk(outs: dict, tokenizer, chunk: Chunk, codes: dict[str, int], counts: dict, max_length: int,
                long_text: str) -> None:
    """Append one chunk's rows to the store's open files; add to the build's counts."""
    ids, types = encode_rows(tokenizer, chunk.texts, chunk.pairs, max_length, long_text)
    lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    outs["ids"].write(np.concatenate(ids).astype(np.int32, copy=False).tobytes())
    outs["offsets"].write((counts["tokens"] + np.cumsum(lens)).astype(np.int64).tobytes())
    outs["lengths"].write(lens.astype(np.int32).tobytes())
    outs["hashes"].write(text_hashes(chunk.texts, chunk.pairs).tobytes())
    outs["labels"].write(np.array([codes.setdefault(lab, len(codes)) for lab in chunk.labels], np.int32).tobytes())
    if "types" in outs:
        outs["types"].write(np.concatenate(types).astype(np.int32, copy=False).tobytes())
    if chunk.groups is not None:
        outs["groups"].write(text_hashes(chunk.groups).tobytes())
    if chunk.pairs is None:
        counts["cut"] += count_cut(tokenizer, chunk.texts, lens, max_length)
    else:
        outs["first_hashes"].write(text_hashes(chunk.texts).tobytes())
        either, first, second = pair_cut(tokenizer, chunk.texts, chunk.pairs, ids, max_length)
        counts["cut"], counts["cut_first"], counts["cut_second"] = (
            counts["cut"] + either, counts["cut_first"] + first, counts["cut_second"] + second)
    counts["tokens"] += int(lens.sum())
    counts["rows"] += len(ids)


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
class StoredPairs:
    """A stored split's second texts, left in the file: `ds.pairs is not None` says the split holds sentence
    pairs, as a Dataset's list does; at(idx) reads some (one pass over the file). Not iterable: no list per row."""
    ds: "StoredDataset"

    def __len__(self) -> int:
        return len(self.ds)

    def at(self, idx: np.ndarray) -> list[str]:
        return self.ds.sides_at(idx)[1]


@dataclass
class StoredDataset:
    """Dataset's role for a file in a token store: rows are store rows (int64, ascending; None: all of them, no
    8-byte index per row), the texts stay in the file. pairs: a StoredPairs for sentence pairs (else None);
    groups: the rows' group hashes (uint64) for --group-col (else None)."""
    store: TokenStore
    file: FileRows
    rows: np.ndarray | None
    source: str
    is_part: bool = False

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

    @property
    def pairs(self) -> StoredPairs | None:
        return StoredPairs(self) if self.file.pair_col else None

    @property
    def groups(self) -> np.ndarray | None:
        return self.of_rows(self.store.groups)

    def of_rows(self, per_row: np.ndarray | None) -> np.ndarray | None:
        """A store array's values for this split's rows (the array itself for the whole file)."""
        return per_row if per_row is None or self.whole() else per_row[self.rows]

    def ids(self):
        return self.store.ids if self.whole() else SubsetRows(self.store.ids, self.rows)

    def types(self):
        """The rows' token type ids (sentence pairs whose tokenizer has them), else None."""
        t = self.store.types
        return t if t is None or self.whole() else SubsetRows(t, self.rows)

    def lengths(self) -> np.ndarray:
        return np.asarray(self.store.lengths if self.whole() else self.store.lengths[self.rows])

    def hashes(self) -> np.ndarray:
        return self.store.hashes if self.whole() else self.store.hashes[self.rows]

    def sides_at(self, idx: np.ndarray) -> tuple[list[str], list[str] | None]:
        """(texts, second texts or None) of positions idx, in ascending order."""
        idx = np.sort(np.asarray(idx, dtype=np.int64))
        return self.file.sides_at(idx if self.whole() else self.rows[idx])

    def texts_at(self, idx: np.ndarray) -> list[str]:
        return self.sides_at(idx)[0]

    def subset(self, idx: np.ndarray, source_note: str = "") -> "StoredDataset":
        idx = np.asarray(idx, dtype=np.int64)
        return replace(self, rows=idx if self.whole() else self.rows[idx], source=self.source + source_note,
                       is_part=True)

    def split(self, frac: float, seed: int, multi_label: bool = False) -> tuple["StoredDataset", "StoredDataset"]:
        """(train, validation): dataset.split_valid's stratified split, drawn with numpy; with groups
        (--group-col), whole groups on each side (grouped_positions)."""
        groups = self.groups  # a split's: copied out of the store's array once
        if groups is not None:
            valid_idx, train_idx = grouped_positions(groups, frac, seed + 1)
        else:
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
        """dataset.repeated_text_share from the text hashes (NFC texts; of a pair, its first text's)."""
        first = self.store.first_hashes if self.store.first_hashes is not None else self.store.hashes
        _, counts = np.unique(self.of_rows(first), return_counts=True)
        return float(counts[counts > 1].sum()) / max(1, len(self))

    def summary(self) -> dict:
        counts = np.bincount(self.codes(), minlength=len(self.label_values))
        read = {"rows_read": len(self), "dropped_empty": 0, "file_rows_read": self.rows_read,
                "file_dropped_empty": self.dropped_empty} if self.is_part else {
                "rows_read": self.rows_read, "dropped_empty": self.dropped_empty}
        return {"source": self.source, "sha256": self.sha256, **read, "rows": len(self),
                "label_counts": dict(sorted(((v, int(c)) for v, c in zip(self.label_values, counts) if c),
                                            key=lambda kv: str(kv[0]))),
                **({"groups": len(np.unique(self.groups))} if self.store.groups is not None else {})}


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


def grouped_positions(groups: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(taken, rest) positions, ascending, with whole groups on each side: the distinct group hashes in a seeded
    random order, taken while the rows taken stay nearest frac of all (within half a group). numpy only: one
    unique over the hashes and a chunked lookup, no Python object per row or group.

    What differs from the in-memory split (dataset.grouped_indices, scikit-learn's StratifiedGroupKFold, which
    needs a Python object per row): the labels are not balanced across the sides (a random draw of many groups
    is near the labels' shares anyway), and the share is frac itself, not 1 / round(1 / frac) of a fold."""
    distinct, sizes = np.unique(groups, return_counts=True)
    n_splits = max(2, round(1 / frac))
    if len(distinct) < n_splits:
        raise UserError(f"--group-col: {len(distinct)} groups are too few to hold out {frac:g} of them whole; "
                        f"use a column with more groups or a larger --valid-frac")
    order = np.random.default_rng(seed).permutation(len(distinct))
    ends = np.cumsum(sizes[order])
    k = int(np.count_nonzero(ends - sizes[order] / 2 <= frac * len(groups)))  # groups whose middle is in
    chosen = np.sort(distinct[order[:min(max(k, 1), len(distinct) - 1)]])
    taken = np.zeros(len(groups), bool)
    for start in range(0, len(groups), GROUP_LOOKUP_ROWS):
        part = np.asarray(groups[start:start + GROUP_LOOKUP_ROWS])
        at = np.minimum(np.searchsorted(chosen, part), len(chosen) - 1)
        taken[start:start + len(part)] = chosen[at] == part
    return np.flatnonzero(taken), np.flatnonzero(~taken)
