"""Streaming prediction over files: read rows in chunks, classify, write, in bounded memory.

Input: texts given directly, a TSV/CSV/JSONL file with a text column, a plain file with one text per line,
or stdin (one text per line, or a format named with `fmt`), all read by bertclf.io.rows; a file's text column,
column names and encoding default to the model's training data (bertclf.io.data_spec). Output: JSONL (or CSV
by extension), one record per non-empty input row in input order, written to a temporary file and renamed at
the end (no half-written output). `shard=(i, n)` keeps rows whose index modulo n is i, so n workers can split
one file deterministically.

A sentence-pair model reads two columns (the card's text and text_pair columns, or --text-col/--text-pair-col;
a JSONL file may use the Inference API's field names, "text" and "text_pair") and classifies (text, text_pair)
tuples; its records carry both texts. A row with either text empty is skipped, as an empty text is.

Every engine runs the same record pipeline: select_rows (shard, empty texts) -> classify -> write_records.
The local engine classifies in chunks here, the Ray engine (predict_ray) on its actors, explain one text at a
time; so row numbers, skipped rows and output columns cannot differ between them.
"""
from __future__ import annotations

import csv
import itertools
import json
import sys
from pathlib import Path
from typing import Iterable, Iterator

from bertclf.data.batches import SCORING_BLOCK, check_batch_size
from bertclf.data.dataset import is_empty_text
from bertclf.io.data_spec import data_spec
from bertclf.errors import UserError
from bertclf.io.files import atomic_file, check_writable
from bertclf.io.rows import check_encoding, iter_rows

CHUNK_ROWS = SCORING_BLOCK  # Classifier's scoring blocks: eval and predict batch each text alike


def iter_texts(path: str, text_col: str | None, fmt: str | None = None, encoding: str = "utf-8",
               columns: list[str] | None = None, pair_col: str | None = None) -> Iterator[str | tuple[str, str]]:
    """Texts of a file (or '-' for stdin), one per data row, streamed by the shared row reader; with pair_col,
    (text, text_pair) tuples.

    stdin is one text per line unless `fmt` says otherwise; a .txt file whose first line is a single column
    other than the text column is one text per line too (its first line included).
    """
    col = text_col or "text"
    if pair_col:
        for _line, row in iter_rows(path, [col, pair_col], fmt=fmt, encoding=encoding, columns=columns,
                                    col_flags="--text-col/--text-pair-col (this model reads sentence pairs)",
                                    text_cols=[col, pair_col]):
            yield row[col], row[pair_col]
        return
    if not columns and _is_text_list(path, col, fmt, encoding):
        fmt = "lines"
    for _line, row in iter_rows(path, [col], fmt=fmt, encoding=encoding, columns=columns,
                                col_flags="--text-col"):
        yield row[col]


def _jsonl_fields(path: str, fmt: str | None, encoding: str) -> set[str]:
    """The fields of the first object of a JSONL file (empty for other formats, stdin and unreadable files)."""
    if path == "-" or (fmt or "") not in ("", "jsonl") or Path(path).suffix.lower() not in (".jsonl", ".ndjson",
                                                                                             ".json"):
        return set()
    try:
        with open(path, encoding=check_encoding(encoding)) as f:
            first = next((line for line in f if line.strip()), "")
        obj = json.loads(first) if first else {}
    except (OSError, UnicodeDecodeError, ValueError):
        return set()  # the reader reports it, naming the line
    return set(obj) if isinstance(obj, dict) else set()


def _is_text_list(path: str, col: str, fmt: str | None, encoding: str) -> bool:
    """Whether `path` is a .txt file of one text per line: no format named, first line not a header `col`."""
    return fmt is None and path != "-" and Path(path).suffix.lower() == ".txt" \
        and _single_other_column(Path(path), col, encoding)


def _single_other_column(path: Path, col: str, encoding: str) -> bool:
    """Whether the first line of `path` is one tab-free cell that is not `col` (a plain list of texts)."""
    try:
        with open(path, encoding=check_encoding(encoding), newline="\n") as f:
            first = f.readline().rstrip("\n").rstrip("\r")
    except (OSError, UnicodeDecodeError):
        return False  # the reader reports it, naming the line
    return "\t" not in first and first.strip() != col


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    if not spec:
        return None
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise UserError(f"--shard {spec}: expected i/n, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {spec}: need 0 <= i < n")
    return i, n


def check_output(output_path: str | None, input_path: str | None) -> None:
    """Before any work: the output can be written (its folder is created if needed) and is not the input."""
    if not output_path:
        return
    if input_path and input_path != "-" and Path(input_path).exists() and (
            Path(output_path).resolve() == Path(input_path).resolve()):
        raise UserError(f"--output {output_path}: is the --input file; writing it would destroy the input, "
                        f"choose another file name")
    if Path(output_path).is_dir():
        raise UserError(f"--output {output_path}: is a folder; give a file name")
    check_writable(output_path)


class SelectedRows:
    """The rows to classify, as (row index, text or (text, text_pair)): a row's index is its position in the input
    (texts: the argument's index), kept when rows are left out. Iterate once; `skipped` then counts the empty texts
    (data.is_empty_text; a pair with either side empty) of the shard, which get no record."""

    def __init__(self, texts: Iterable[str], shard: tuple[int, int] | None = None):
        self._texts, self._shard, self.skipped = texts, shard, 0

    def __iter__(self) -> Iterator[tuple[int, str]]:
        for i, text in enumerate(self._texts):
            if self._shard and i % self._shard[1] != self._shard[0]:
                continue
            if any(is_empty_text(t) for t in (text if isinstance(text, tuple) else (text,))):
                self.skipped += 1
                continue
            yield i, text

    def report(self, log=None) -> None:
        """Say how many empty texts were skipped (default: on stderr); silent when none were."""
        if self.skipped:
            log = log or (lambda msg: print(msg, file=sys.stderr))
            log(f"bertclf: {self.skipped} empty text(s) skipped (not classified, no record; their row numbers "
                f"are unused)")


def select_rows(card: dict | None, texts: list[str] | None = None, input_path: str | None = None,
                text_col: str | None = None, shard: tuple[int, int] | None = None, fmt: str | None = None,
                encoding: str | None = None, columns: list[str] | None = None,
                text_pair_col: str | None = None) -> SelectedRows:
    """The rows of `texts`, else of `input_path`, that predict classifies. A file is read with the given text
    column (and a pair model's second column), column names and encoding, each defaulting to the model's (its
    `card`) as the training read it."""
    if texts is not None:
        return SelectedRows(texts, shard)
    spec = data_spec(card, text_col=text_col, columns=columns, encoding=encoding, text_pair_col=text_pair_col)
    if spec.text_pair_col:
        first, second = spec.text_col, spec.text_pair_col
        fields = _jsonl_fields(input_path, fmt, spec.encoding)
        if not (text_col or text_pair_col) and {"text", "text_pair"} <= fields and not {first, second} <= fields:
            first, second = "text", "text_pair"  # the Inference API's names, in a JSONL of pairs
        return SelectedRows(iter_texts(input_path, first, fmt, spec.encoding, spec.columns, pair_col=second), shard)
    if columns is None and _is_text_list(input_path, spec.text_col, fmt, spec.encoding):
        # the training's column names describe its table files, not a .txt list of texts
        return SelectedRows(iter_texts(input_path, spec.text_col, "lines", spec.encoding), shard)
    return SelectedRows(iter_texts(input_path, spec.text_col, fmt, spec.encoding, spec.columns), shard)


def write_records(clf, records: Iterable[tuple[int, str, dict]], output_path: str | None = None,
                  progress: bool = False) -> int:
    """Write (row, text, prediction) records in their order: JSONL {"row", "text", **prediction}, or CSV when
    `output_path` ends in .csv (row, text, label, score, [labels,] p_<label>...; `clf` gives the labels). To a
    temporary file renamed at the end, or to stdout without `output_path`. Returns the records written."""
    is_csv = bool(output_path) and Path(output_path).suffix.lower() == ".csv"
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(unit="rows", disable=None, file=sys.stderr, leave=False)
    written = 0

    def write_all(f):
        nonlocal written
        write = _csv_writer(clf, f) if is_csv else _jsonl_writer(f)
        for row, text, pred in records:
            write(row, text, pred)
            written += 1
            if bar is not None:
                bar.update()

    try:
        if output_path:
            with atomic_file(output_path, "w", encoding="utf-8", newline="") as f:
                write_all(f)
        else:
            write_all(sys.stdout)
            sys.stdout.flush()
    except OSError as e:
        if isinstance(e, BrokenPipeError):
            raise
        raise UserError(f"--output {output_path}: cannot write ({e.strerror})") from None
    finally:
        if bar is not None:
            bar.close()
    return written


def _jsonl_writer(f):
    def write(row: int, text, pred: dict):
        texts = {"text": text[0], "text_pair": text[1]} if isinstance(text, tuple) else {"text": text}
        f.write(json.dumps({"row": row, **texts, **pred}, ensure_ascii=False) + "\n")
    return write


def _csv_writer(clf, f):
    """Write the CSV header to `f`; return the function that writes a record's line."""
    w = csv.writer(f)
    multi = clf.multi_label  # a "labels" column: the labels over their thresholds, joined by the label separator
    pairs = clf.pair_col is not None
    w.writerow(["row", "text"] + (["text_pair"] if pairs else []) + ["label", "score"] + (["labels"] if multi else [])
               + [f"p_{lab}" for lab in clf.labels])

    def write(row: int, text, pred: dict):
        w.writerow([row, *(text if isinstance(text, tuple) else (text,)), pred["label"], f"{pred['score']:.6f}"]
                   + ([clf.task.sep.join(pred["labels"])] if multi else [])
                   + [f"{pred['probabilities'][lab]:.6f}" for lab in clf.labels])
    return write


def predict_to(clf, texts: list[str] | None = None, input_path: str | None = None, output_path: str | None = None,
               text_col: str | None = None, batch_size: int = 64, shard: tuple[int, int] | None = None,
               progress: bool = True, fmt: str | None = None, encoding: str | None = None,
               columns: list[str] | None = None, log=None, text_pair_col: str | None = None) -> int:
    """Classify and write records; returns the number of rows written.

    `row` is the index of the input row (texts: the argument's index). Empty texts (whitespace only) are not
    classified: they get no record, and their number is reported through `log` (default: stderr). text_col,
    columns and encoding default (None) to the model's training data."""
    check_batch_size(batch_size)
    check_output(output_path, input_path)
    if texts is not None:
        clf.split_inputs(texts)  # a pair for a single-text model, or the other way round: one line, before work
    if text_pair_col and clf.pair_col is None:
        raise UserError(f"--text-pair-col {text_pair_col}: {clf.path} reads single texts (trained without "
                        f"--text-pair-col); drop the flag or use a model trained on pairs")
    rows = select_rows(clf.card, texts, input_path, text_col, shard, fmt, encoding, columns,
                       text_pair_col=text_pair_col)
    written = write_records(clf, _classified(clf, rows, batch_size), output_path,
                            progress=progress and bool(input_path))
    rows.report(log)
    return written


def _classified(clf, rows: Iterable[tuple[int, str]], batch_size: int) -> Iterator[tuple[int, str, dict]]:
    """(row, text, prediction), classified CHUNK_ROWS rows at a time: memory stays bounded on any input."""
    rows = iter(rows)
    while chunk := list(itertools.islice(rows, CHUNK_ROWS)):
        preds = clf.predict([text for _, text in chunk], batch_size)
        yield from ((row, text, pred) for (row, text), pred in zip(chunk, preds))
