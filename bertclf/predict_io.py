"""Streaming prediction over files: read rows in chunks, classify, write, in bounded memory.

Input: texts given directly, a TSV/CSV/JSONL file with a text column, a plain file with one text per line,
or stdin. Output: JSONL (or CSV by extension), one record per input row in input order, written to a
temporary file and renamed at the end (no half-written output). `shard=(i, n)` keeps rows whose index
modulo n is i, so n workers can split one file deterministically.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Iterator

from bertclf.data import file_format
from bertclf.errors import UserError
from bertclf.files import atomic_file

CHUNK_ROWS = 4096


def _lines(f, path: str) -> Iterator[str]:
    n = 0
    while True:
        try:
            line = f.readline()
        except UnicodeDecodeError as e:
            # the decoder reads ahead, so the line we are on is not where the bad byte is: find it in the file
            where = _bad_utf8(path) if path != "-" else None
            line_no, byte = where or (n + 1, e.object[e.start])
            raise UserError(f"{path}, line {line_no}: not UTF-8 text (byte 0x{byte:02x}); re-save the file as "
                            f"UTF-8") from None
        if not line:
            return
        n += 1
        yield line


def _bad_utf8(path: str) -> tuple[int, int] | None:
    """(line number, byte) of the first byte of `path` that is not UTF-8, read in bounded memory."""
    import codecs

    decoder, line = codecs.getincrementaldecoder("utf-8")(), 1
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as e:
                return line + e.object[:e.start].count(b"\n"), e.object[e.start]
            line += block.count(b"\n")
    return None


def iter_texts(path: str, text_col: str | None) -> Iterator[str]:
    """Texts of a file (or '-' for stdin), one per data row, streamed."""
    stdin = path == "-"
    if not stdin:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{path}: file not found; check the path")
    f = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig") if stdin else open(path, encoding="utf-8-sig", newline="")
    try:
        lines = _lines(f, path)
        ext = "" if stdin else Path(path).suffix.lower()
        if ext in (".jsonl", ".ndjson", ".json"):
            col = text_col or "text"
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}, line {n}: invalid JSON ({e.msg})") from None
                if not isinstance(obj, dict) or col not in obj:
                    raise UserError(f"{path}, line {n}: no field '{col}'; choose it with --text-col")
                yield "" if obj[col] is None else str(obj[col])
            return
        if ext in (".csv", ".tsv", ".tab", ".txt"):
            first = next(lines, None)
            if first is None:
                raise UserError(f"{path}: file is empty; nothing to classify")
            delim = "," if ext == ".csv" else "\t"
            header = next(csv.reader([first], delimiter=delim))
            col = text_col or "text"
            if ext == ".txt" and col not in header and len(header) == 1:
                # a plain file: one text per line, the first line included
                yield first.rstrip("\r\n")
                yield from (ln.rstrip("\r\n") for ln in lines)
                return
            if col not in header:
                raise UserError(f"{path}, line 1: column '{col}' not in header ({', '.join(header)}); "
                                f"choose it with --text-col")
            pos = header.index(col)
            reader = csv.reader(lines, delimiter=delim)
            for rec in reader:
                if not rec:
                    continue
                if len(rec) != len(header):
                    raise UserError(f"{path}, line {reader.line_num + 1}: {len(rec)} fields but the header has "
                                    f"{len(header)}; fix the row")
                yield rec[pos]
            return
        if not stdin:
            file_format(Path(path))  # raises the one-line "unknown file type" error
        yield from (ln.rstrip("\r\n") for ln in lines)  # stdin: plain lines
    finally:
        if not stdin:
            f.close()


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


def predict_to(clf, texts: list[str] | None = None, input_path: str | None = None, output_path: str | None = None,
               text_col: str | None = None, batch_size: int = 64, shard: tuple[int, int] | None = None,
               progress: bool = True) -> int:
    """Classify and write records; returns the number of rows written."""
    card_col = (clf.card.get("data") or {}).get("text_col")
    source = iter(texts) if texts is not None else iter_texts(input_path, text_col or card_col)
    is_csv = bool(output_path) and Path(output_path).suffix.lower() == ".csv"
    if output_path and Path(output_path).parent and not Path(output_path).parent.exists():
        raise UserError(f"--output {output_path}: folder {Path(output_path).parent} does not exist")
    bar = None
    if progress and input_path:
        from tqdm.auto import tqdm

        bar = tqdm(unit="rows", disable=None, file=sys.stderr, leave=False)
    written = 0

    def chunks():
        rows, texts_ = [], []
        for i, t in enumerate(source):
            if shard and i % shard[1] != shard[0]:
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
    return written
