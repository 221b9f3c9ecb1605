"""Stage 1, data: read labelled text from NSMC or any TSV/CSV/JSONL file, check it, sample and split it.

Every problem with a file becomes a one-line UserError naming the file, line or column and what to do.
"""
from __future__ import annotations

import csv
import io
import json
import os
import random
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from bertclf.errors import UserError
from bertclf.files import atomic_file, cache_dir, sha256_file
from bertclf.labels import LabelMap, label_order  # noqa: F401 (moved to labels.py; re-exported)

# --- NSMC ---------------------------------------------------------------------------------------------------

NSMC_FILES = {
    "train": ("ratings_train.txt", "e03b7d14e9e41be8d464a28057cd25d7396c53e67aa7fd5f7e552c59b0ee2940"),
    "test": ("ratings_test.txt", "8ac9f64052f11dbf6ae0acb5e038f03d90a76f0eda7820cfb3a92d02edfcebda"),
}
NSMC_URL = "https://raw.githubusercontent.com/e9t/nsmc/master/{}"
NSMC_LABELS = {"0": "negative", "1": "positive"}
NSMC_TEXT_COL, NSMC_LABEL_COL = "document", "label"


def nsmc_search_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    dirs = []
    if data_dir:
        dirs.append(Path(data_dir))
    if os.environ.get("BERTCLF_DATA_DIR"):
        dirs.append(Path(os.environ["BERTCLF_DATA_DIR"]))
    dirs.append(cache_dir() / "data" / "nsmc")
    return dirs


def nsmc_path(split: str, data_dir: str | os.PathLike | None = None, download: bool = True, log=print) -> Path:
    """Find ratings_{split}.txt, verify its SHA-256, download it into the cache if it is nowhere (and online)."""
    name, sha = NSMC_FILES[split]
    dirs = nsmc_search_dirs(data_dir)
    for d in dirs:
        p = d / name
        if p.is_file():
            if sha256_file(p) != sha:
                raise UserError(f"{p}: SHA-256 differs from the published NSMC {name}; replace it with the original file")
            return p
    target = cache_dir() / "data" / "nsmc" / name
    if download:
        url = NSMC_URL.format(name)
        log(f"NSMC {name} not found locally; downloading {url}")
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                payload = r.read()
        except (urllib.error.URLError, OSError, TimeoutError):
            payload = None
        if payload is not None:
            import hashlib

            if hashlib.sha256(payload).hexdigest() != sha:
                raise UserError(f"downloaded {url} but its SHA-256 differs from the published file; try again later")
            with atomic_file(target, "wb") as f:
                f.write(payload)
            return target
    where = ", ".join(str(d) for d in dirs)
    raise UserError(
        f"NSMC file {name} not found (looked in {where}) and it could not be downloaded; "
        f"put ratings_train.txt and ratings_test.txt in one of those folders or pass --data-dir DIR"
    )


# --- any labelled file --------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """Texts with (string) labels; empty texts already dropped and counted."""

    texts: list[str]
    labels: list[str | None]
    source: str = ""
    sha256: str = ""
    dropped_empty: int = 0
    rows_read: int = 0

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: list[int], source_note: str = "") -> "Dataset":
        """Selected rows; the file's provenance (rows read, empty rows dropped) stays with them."""
        return Dataset(
            [self.texts[i] for i in idx],
            [self.labels[i] for i in idx],
            source=self.source + source_note,
            sha256=self.sha256,
            dropped_empty=self.dropped_empty,
            rows_read=self.rows_read,
        )

    def summary(self) -> dict:
        return {
            "source": self.source,
            "sha256": self.sha256,
            "rows_read": self.rows_read,
            "dropped_empty": self.dropped_empty,
            "rows": len(self),
            "label_counts": dict(sorted(Counter(self.labels).items(), key=lambda kv: str(kv[0]))),
        }


def file_format(path: Path) -> str:
    ext = path.suffix.lower()
    if ext in (".tsv", ".txt", ".tab"):
        return "tsv"
    if ext == ".csv":
        return "csv"
    if ext in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise UserError(f"{path}: unknown file type {ext or '(none)'}; use .tsv/.txt (tab), .csv or .jsonl")


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"{path}, line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); re-save the file as UTF-8") from None


def read_rows(path: str | os.PathLike, need: list[str], fmt: str | None = None) -> tuple[list[dict], list[int]]:
    """Read a TSV/CSV/JSONL file with a header (or JSON objects); return rows holding the `need` columns and line numbers."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found; check the path")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a TSV/CSV/JSONL file")
    fmt = fmt or file_format(path)
    text = _decode(path)
    if not text.strip():
        raise UserError(f"{path}: file is empty; it needs a header line and at least one row")
    rows: list[dict] = []
    lines: list[int] = []
    if fmt == "jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}, line {n}: invalid JSON ({e.msg}); each line must be one JSON object") from None
            if not isinstance(obj, dict):
                raise UserError(f"{path}, line {n}: expected a JSON object with fields {', '.join(need)}")
            for col in need:
                if col not in obj:
                    raise UserError(f"{path}, line {n}: field '{col}' missing (fields: {', '.join(obj)}); "
                                    f"choose the field with --text-col/--label-col")
            rows.append({c: ("" if obj[c] is None else str(obj[c])) for c in need})
            lines.append(n)
        return rows, lines
    delim = "\t" if fmt == "tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
    try:
        header = next(reader)
    except csv.Error as e:
        raise UserError(f"{path}, line 1: cannot parse header ({e})") from None
    header = [h.strip() for h in header]
    other = "," if delim == "\t" else "\t"
    if len(header) == 1 and other in header[0]:
        kind = "comma" if other == "," else "tab"
        raise UserError(f"{path}, line 1: header has one column but contains {kind}s; the file seems {kind}-separated, "
                        f"rename it to {'.csv' if other == ',' else '.tsv'}")
    missing = [c for c in need if c not in header]
    if missing:
        raise UserError(f"{path}, line 1: column '{missing[0]}' not in header ({', '.join(header)}); "
                        f"choose columns with --text-col/--label-col")
    pos = [header.index(c) for c in need]
    try:
        for rec in reader:
            n = reader.line_num
            if not rec or (len(rec) == 1 and not rec[0].strip()):
                continue
            if len(rec) != len(header):
                raise UserError(f"{path}, line {n}: {len(rec)} fields but the header has {len(header)}; "
                                f"fix the row (unescaped delimiter or quote?)")
            rows.append({c: rec[p] for c, p in zip(need, pos)})
            lines.append(n)
    except csv.Error as e:
        raise UserError(f"{path}, line {reader.line_num}: {e}; fix the quoting") from None
    return rows, lines


def read_labelled(path: str | os.PathLike, text_col: str = "text", label_col: str | None = "label",
                  label_names: dict[str, str] | None = None) -> Dataset:
    """Read a labelled (or, with label_col=None, unlabelled) file; drop and count empty texts."""
    path = Path(path)
    need = [text_col] + ([label_col] if label_col else [])
    rows, lines = read_rows(path, need)
    texts, labels, dropped = [], [], 0
    for row, n in zip(rows, lines):
        t = row[text_col]
        if not t.strip():
            dropped += 1
            continue
        lab = None
        if label_col:
            lab = row[label_col].strip()
            if lab == "":
                raise UserError(f"{path}, line {n}: empty label in column '{label_col}'; fill it in or remove the row")
            if label_names:
                if lab not in label_names:
                    raise UserError(f"{path}, line {n}: label '{lab}' is not one of {', '.join(label_names)}")
                lab = label_names[lab]
        texts.append(t)
        labels.append(lab)
    if not texts:
        raise UserError(f"{path}: no rows with text in column '{text_col}'")
    return Dataset(texts, labels, source=str(path), sha256=sha256_file(path), dropped_empty=dropped, rows_read=len(rows))


def read_nsmc(split: str, data_dir=None, log=print) -> Dataset:
    return read_labelled(nsmc_path(split, data_dir, log=log), NSMC_TEXT_COL, NSMC_LABEL_COL, NSMC_LABELS)


# --- labels, sampling, splitting ----------------------------------------------------------------------------


def stratified_indices(labels, frac: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices per label into (taken, rest) with `frac` of each class taken; deterministic by seed."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        by_label[lab].append(i)
    rng = random.Random(seed)
    taken, rest = [], []
    for lab in sorted(by_label, key=str):
        idx = by_label[lab]
        rng.shuffle(idx)
        k = round(len(idx) * frac)
        taken += idx[:k]
        rest += idx[k:]
    return sorted(taken), sorted(rest)


def sample(ds: Dataset, frac: float, seed: int) -> Dataset:
    if frac >= 1.0:
        return ds
    taken, _ = stratified_indices(ds.labels, frac, seed)
    return ds.subset(taken)


def split_valid(ds: Dataset, frac: float, seed: int) -> tuple[Dataset, Dataset]:
    """Carve a stratified validation split from train."""
    valid_idx, train_idx = stratified_indices(ds.labels, frac, seed + 1)
    if not valid_idx or not train_idx:
        raise UserError(f"{ds.source}: too few rows ({len(ds)}) to carve a validation split; add rows or pass --valid FILE")
    return ds.subset(train_idx), ds.subset(valid_idx, " (validation split)")
