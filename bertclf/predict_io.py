"""Streaming prediction over files: read rows in chunks, classify, write, in bounded memory.

Input: texts given directly, a TSV/CSV/JSONL file with a text column, a plain file with one text per line,
or stdin (one text per line, or a format named with `fmt`), all read by bertclf.rows. Output: JSONL (or CSV
by extension), one record per non-empty input row in input order, written to a temporary file and renamed at
the end (no half-written output). `shard=(i, n)` keeps rows whose index
modulo n is i, so n workers can split one file deterministically.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Iterator

from bertclf.config import check_batch_size
from bertclf.data import is_empty_text
from bertclf.errors import UserError
from bertclf.files import atomic_file, check_writable
from bertclf.rows import check_encoding, iter_rows

CHUNK_ROWS = 4096


def iter_texts(path: str, text_col: str | None, fmt: str | None = None, encoding: str = "utf-8",
               columns: list[str] | None = None) -> Iterator[str]:
    """Texts of a file (or '-' for stdin), one per data row, streamed by the shared row reader.

    stdin is one text per line unless `fmt` says otherwise; a .txt file whose first line is a single column
    other than the text column is one text per line too (its first line included).
    """
    col = text_col or "text"
    if fmt is None and path != "-" and not columns and Path(path).suffix.lower() == ".txt" \
            and _single_other_column(Path(path), col, encoding):
        fmt = "lines"
    for _line, row in iter_rows(path, [col], fmt=fmt, encoding=encoding, columns=columns,
                                col_flags="--text-col"):
        yield row[col]


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


def predict_to(clf, texts: list[str] | None = None, input_path: str | None = None, output_path: str | None = None,
               text_col: str | None = None, batch_size: int = 64, shard: tuple[int, int] | None = None,
               progress: bool = True, fmt: str | None = None, encoding: str = "utf-8",
               columns: list[str] | None = None, log=None) -> int:
    """Classify and write records; returns the number of rows written.

    `row` is the index of the input row (texts: the argument's index). Empty texts (whitespace only) are not
    classified: they get no record, and their number is reported through `log` (default: stderr).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    check_batch_size(batch_size)
    check_output(output_path, input_path)
    card_col = (clf.card.get("data") or {}).get("text_col")
    source = iter(texts) if texts is not None else iter_texts(input_path, text_col or card_col, fmt, encoding,
                                                                columns)
    is_csv = bool(output_path) and Path(output_path).suffix.lower() == ".csv"
    skipped = 0
    bar = None
    if progress and input_path:
        from tqdm.auto import tqdm

        bar = tqdm(unit="rows", disable=None, file=sys.stderr, leave=False)
    written = 0

    def chunks():
        nonlocal skipped
        rows, texts_ = [], []
        for i, t in enumerate(source):
            if shard and i % shard[1] != shard[0]:
                continue
            if is_empty_text(t):
                skipped += 1
                continue
            rows.append(i)
            texts_.append(t)
            if len(rows) == CHUNK_ROWS:
                yield rows, texts_
                rows, texts_ = [], []
        if rows:
            yield rows, texts_

    def write_all(f):
        nonlocal written
        w = None
        if is_csv:
            w = csv.writer(f)
            multi = getattr(clf, "multi_label", False)  # multi-label: a "labels" column, joined by the label separator
            w.writerow(["row", "text", "label", "score"] + (["labels"] if multi else [])
                       + [f"p_{lab}" for lab in clf.labels])
        for rows, chunk in chunks():
            for row, text, pred in zip(rows, chunk, clf.predict(chunk, batch_size)):
                if w:
                    w.writerow([row, text, pred["label"], f"{pred['score']:.6f}"]
                               + ([clf.task.sep.join(pred["labels"])] if multi else [])
                               + [f"{pred['probabilities'][lab]:.6f}" for lab in clf.labels])
                else:
                    f.write(json.dumps({"row": row, "text": text, **pred}, ensure_ascii=False) + "\n")
            written += len(rows)
            if bar is not None:
                bar.update(len(rows))

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
    if skipped:
        log(f"bertclf: {skipped} empty text(s) skipped (not classified, no record; their row numbers are unused)")
    return written
