"""The one row reader: TSV / CSV / JSONL / plain-lines files (or stdin), streamed row by row, for training data,
predict input and trim-vocab corpora alike.

    for line, row in iter_rows("train.tsv", ["text", "label"]):   # row: {"text": ..., "label": ...} raw strings

Rules (docs/guarantees.md, "Reading files"):
  * TSV: one record per line. A field that is wholly a quoted string ("..." with inner quotes doubled, as
    pandas and Excel write) is unquoted; a quote anywhere else -- one that does not close on its own line, or
    text after the closing quote -- is taken literally, with a warning naming the line. So a stray quote can
    never merge rows.
  * CSV: RFC 4180 (quoted fields may span lines); a quote that never closes is an error naming its line.
  * JSONL: one JSON object per "\\n"-terminated line (U+2028 and other Unicode separators are text).
  * lines: every line is one text (header-less, one column; a blank line is an empty text).
  * A header line names the columns, unless `columns` names them (header-less files); names are stripped.
  * Blank lines are skipped (in "lines" a blank line is an empty text); a row with another number of fields
    than the header is an error naming its line.
  * Text is decoded with `encoding` (default UTF-8, a BOM is skipped); a byte that does not decode is an error
    naming its line.
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

from bertclf.errors import UserError

FORMATS = ("tsv", "csv", "jsonl", "lines", "parquet", "arrow")
COLUMNAR = ("parquet", "arrow")  # read by bertclf.io.columnar (pyarrow, record batches); rows are numbered, not lines
MAX_WARNINGS = 5  # literal-quote warnings shown per file; the rest are counted in one closing line

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a review may be long; the default limit is 128 KiB


def file_format(path: Path) -> str:
    """The format a file's extension stands for."""
    ext = path.suffix.lower()
    if ext in (".tsv", ".txt", ".tab"):
        return "tsv"
    if ext == ".csv":
        return "csv"
    if ext in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if ext in (".parquet", ".pq"):
        return "parquet"
    if ext == ".arrow":
        return "arrow"
    raise UserError(f"{path}: unknown file type {ext or '(none)'}; use .tsv/.txt (tab), .csv, .jsonl, .parquet "
                    f"or .arrow, or name the format with --format")


def is_columnar_source(path, fmt: str | None = None) -> bool:
    """Whether iter_rows reads `path` with pyarrow: a Parquet/Arrow file, a folder or a glob of them."""
    from bertclf.io.columnar import is_columnar

    return fmt in COLUMNAR or (fmt is None and is_columnar(path))


def at_row(path, n: int, fmt: str | None = None) -> str:
    """Where a row is, for a message: "FILE, line N" in a text file, "FILE, row N" in a Parquet/Arrow source."""
    return f"{path}, {'row' if is_columnar_source(path, fmt) else 'line'} {n}"


def sha256_data(path, fmt: str | None = None) -> str:
    """SHA-256 of a data file, or of a Parquet/Arrow folder's or glob's files together (columnar.sha256_source)."""
    from bertclf.io.columnar import sha256_source
    from bertclf.io.files import sha256_file

    return sha256_source(path) if is_columnar_source(path, fmt) else sha256_file(path)


def check_encoding(encoding: str) -> str:
    """The codec's canonical name, or a one-line error for --encoding."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise UserError(f"--encoding {encoding}: unknown encoding; try utf-8, cp949 or euc-kr") from None
    return "utf-8-sig" if name == "utf-8" else name  # a UTF-8 BOM is not text


def parse_columns(spec: str | list[str] | None) -> list[str] | None:
    """'id,text,labels' -> ['id', 'text', 'labels'] (the --columns flag of a header-less file)."""
    if spec is None:
        return None
    names = [c.strip() for c in (spec.split(",") if isinstance(spec, str) else spec)]
    if not names or any(not c for c in names) or len(set(names)) != len(names):
        raise UserError(f"--columns {','.join(names) if not isinstance(spec, str) else spec}: give distinct column "
                        f"names separated by commas, e.g. id,text,label")
    return names


def iter_rows(path: str | os.PathLike, need: list[str], fmt: str | None = None, encoding: str = "utf-8",
              columns: list[str] | None = None, warn: Callable[[str], None] | None = None,
              col_flags: str = "--text-col/--label-col",
              text_cols: list[str] | None = None) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, {column: raw string}) for every non-blank row, streamed; `need` are the columns returned.

    `path` "-" is stdin (format "lines" unless `fmt` says otherwise). Errors are one-line UserErrors naming
    the file and line; `col_flags` names the flags that choose columns, for the message of a missing one.
    A Parquet/Arrow source (file, folder or glob; bertclf.io.columnar) yields its 1-based row numbers instead
    of lines; `text_cols` (default: need[0]) are the columns that must hold strings there.
    """
    if str(path) != "-" and is_columnar_source(path, fmt):
        from bertclf.io.columnar import iter_table_rows

        yield from iter_table_rows(path, need, text_cols or need[:1], col_flags, fmt)
        return
    if fmt in COLUMNAR:
        raise UserError(f"--format {fmt}: stdin is read as text; give the {fmt} file's path instead of '-'")
    stdin = str(path) == "-"
    where = "stdin" if stdin else str(path)
    if not stdin:
        path = Path(path)
        if not path.exists():
            raise UserError(f"{path}: file not found; check the path")
        if path.is_dir():
            raise UserError(f"{path}: is a directory, expected a TSV/CSV/JSONL file")
    fmt = fmt or ("lines" if stdin else file_format(path))
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: must be one of {', '.join(FORMATS)}")
    codec = check_encoding(encoding)
    warn = warn or (lambda msg: print(f"bertclf: warning: {msg}", file=sys.stderr))
    newline = "" if fmt == "csv" else "\n"  # csv handles its own line ends; the others split on "\n" only
    if stdin:
        f = io.TextIOWrapper(sys.stdin.buffer, encoding=codec, newline=newline)
    else:
        f = open(path, encoding=codec, newline=newline)
    lines = _decoded_lines(f, where, None if stdin else path, codec)
    try:
        if fmt == "jsonl":
            yield from _jsonl_rows(lines, where, need, col_flags)
        elif fmt == "lines":
            if len(need) != 1:
                raise UserError(f"{where}: a plain-lines file holds only texts; it has no column "
                                f"'{need[-1]}'")
            for n, line in enumerate(lines, 1):  # a blank line is a row with an empty text here
                yield n, {need[0]: line.rstrip("\n").rstrip("\r")}
        else:
            yield from _table_rows(lines, where, need, fmt, columns, warn, col_flags)
    finally:
        if stdin:
            f.detach()  # leave sys.stdin open
        else:
            f.close()


def _decoded_lines(f, where: str, path: Path | None, codec: str) -> Iterator[str]:
    n = 0
    while True:
        try:
            line = f.readline()
        except UnicodeDecodeError as e:
            # the decoder reads ahead, so the line we are on is not where the bad byte is: find it in the file
            line_no, byte = (_bad_byte(path, codec) if path else None) or (n + 1, e.object[e.start])
            hint = "re-save the file as UTF-8 or name its encoding with --encoding (e.g. cp949)" \
                if codec == "utf-8-sig" else "check --encoding"
            raise UserError(f"{where}, line {line_no}: not {_label(codec)} text (byte 0x{byte:02x}); {hint}") from None
        if not line:
            return
        n += 1
        yield line


def _label(codec: str) -> str:
    return "UTF-8" if codec == "utf-8-sig" else codec


def _bad_byte(path: Path, codec: str) -> tuple[int, int] | None:
    """(line number, byte) of the first byte of `path` that does not decode, read in bounded memory."""
    decoder, line = codecs.getincrementaldecoder(codec)(), 1
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as e:
                return line + e.object[:e.start].count(b"\n"), e.object[e.start]
            line += block.count(b"\n")
    return None


def _jsonl_rows(lines, where: str, need: list[str], col_flags: str):
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}, line {n}: invalid JSON ({e.msg}); each line must be one JSON object") from None
        if not isinstance(obj, dict):
            raise UserError(f"{where}, line {n}: expected a JSON object with fields {', '.join(need)}")
        for col in need:
            if col not in obj:
                raise UserError(f"{where}, line {n}: field '{col}' missing (fields: {', '.join(obj)}); "
                                f"choose the field with {col_flags}")
        yield n, {c: ("" if obj[c] is None else str(obj[c])) for c in need}


def _table_rows(lines, where: str, need: list[str], fmt: str, columns: list[str] | None, warn, col_flags: str):
    delim = "\t" if fmt == "tsv" else ","
    records = _tsv_records(lines, where, warn) if fmt == "tsv" else _csv_records(lines, where)
    if columns:
        header = list(columns)
    else:
        first = next(records, None)
        if first is None:
            raise UserError(f"{where}: file is empty; it needs a header line and at least one row")
        header = [h.strip() for h in first[1]]
        other = "," if delim == "\t" else "\t"
        if len(header) == 1 and other in header[0]:
            kind = "comma" if other == "," else "tab"
            raise UserError(f"{where}, line 1: header has one column but contains {kind}s; the file seems "
                            f"{kind}-separated, rename it to {'.csv' if other == ',' else '.tsv'}")
    missing = [c for c in need if c not in header]
    if missing:
        if columns:
            raise UserError(f"--columns {','.join(columns)}: no column '{missing[0]}'; name it there or choose "
                            f"another with {col_flags}")
        raise UserError(f"{where}, line 1: column '{missing[0]}' not in header ({', '.join(header)}); "
                        f"choose columns with {col_flags}" + (" (or --columns for a file without a header)"
                                                              if "--text-col" in col_flags else ""))
    twice = [c for c in need if header.count(c) > 1]
    if twice:
        where_named = f"--columns {','.join(columns)}" if columns else f"{where}, line 1"
        raise UserError(f"{where_named}: column '{twice[0]}' is named {header.count(twice[0])} times; which one is "
                        f"meant is unclear: rename the others")
    pos = [header.index(c) for c in need]
    for n, rec in records:
        # a blank line is no row; in a one-column file a line of spaces is a row with an empty text (said and
        # skipped as such downstream), so that the rows after it keep their numbers
        if not rec or (len(rec) == 1 and (rec[0] == "" or (len(header) > 1 and not rec[0].strip()))):
            continue
        if len(rec) != len(header):
            what = "--columns names" if columns else "the header has"
            raise UserError(f"{where}, line {n}: {len(rec)} fields but {what} {len(header)}; "
                            f"fix the row (unescaped delimiter or quote?)")
        yield n, {c: rec[p] for c, p in zip(need, pos)}


def _tsv_records(lines, where: str, warn):
    """(line number, fields) per line. A wholly quoted field is unquoted; any other quote is literal (warned)."""
    literal = 0
    for n, line in enumerate(lines, 1):
        line = line.rstrip("\n").rstrip("\r")
        if '"' not in line:
            yield n, line.split("\t")
            continue
        try:
            yield n, next(csv.reader([line], delimiter="\t", strict=True))
        except csv.Error:
            literal += 1
            if literal <= MAX_WARNINGS:
                warn(f"{where}, line {n}: a quote that does not close its field on this line; the line is read "
                     f"literally (quotes kept)")
            yield n, line.split("\t")
    if literal > MAX_WARNINGS:
        warn(f"{where}: {literal} lines in all were read literally because of unbalanced quotes")


def _csv_records(lines, where: str):
    """(first line number, fields) per record; quoted fields may span lines."""
    reader = csv.reader(lines, strict=True)
    start = 1
    try:
        for rec in reader:
            yield start, rec
            start = reader.line_num + 1
    except csv.Error as e:
        raise UserError(f"{where}, line {start}: {e} (a quote that does not close?); fix the quoting") from None


def row_positions(path, text_col: str, keep: Callable[[str], bool], encoding: str = "utf-8",
                  columns: list[str] | None = None, fmt: str | None = None,
                  pair_col: str | None = None) -> tuple[list[int], list[int]]:
    """(0-based data rows, 1-based file lines) of the rows whose text `keep` accepts, in order: the readers of
    labelled data drop empty texts and keep no positions, and a blank line or a quoted multi-line cell parts
    rows from lines. Rereads the file (a second pass costs less than carrying positions through every reader)."""
    rows, lines = [], []
    need = [text_col] + ([pair_col] if pair_col else [])  # a pair's row is kept when both of its texts are
    for i, (n, r) in enumerate(iter_rows(path, need, fmt=fmt, encoding=encoding, columns=columns, text_cols=need)):
        if all(keep(r[c]) for c in need):
            rows.append(i)
            lines.append(n)
    return rows, lines


def iter_row_chunks(path, need: list[str], rows: int, fmt: str | None = None, encoding: str = "utf-8",
                    columns: list[str] | None = None, col_flags: str = "--text-col/--label-col",
                    text_cols: list[str] | None = None) -> Iterator[tuple[list[int], dict[str, list[str]]]]:
    """iter_rows in chunks of about `rows` rows: (the rows' line or row numbers, {column: cells}), so that a
    caller streaming millions of rows holds one chunk of Python strings at a time."""
    numbers: list[int] = []
    cols: dict[str, list[str]] = {c: [] for c in need}

    def add(first_numbers, part):
        numbers.extend(first_numbers)
        for c in need:
            cols[c].extend(part[c])

    if str(path) != "-" and is_columnar_source(path, fmt):
        from bertclf.io.columnar import iter_table_chunks

        parts = ((range(first, first + len(part[need[0]])), part)
                 for first, part in iter_table_chunks(path, need, text_cols or need[:1], col_flags, fmt))
    else:
        parts = (([n], {c: [row[c]] for c in need})
                 for n, row in iter_rows(path, need, fmt, encoding, columns, col_flags=col_flags, text_cols=text_cols))
    for first_numbers, part in parts:
        add(first_numbers, part)
        if len(numbers) >= rows:
            yield numbers, cols
            numbers, cols = [], {c: [] for c in need}
    if numbers:
        yield numbers, cols


def sha256_data_cached(path, fmt: str | None = None) -> str:
    """sha256_data, computed once per file version: kept in the bertclf cache under the files' (path, size,
    modification time), so a second run or a resumed run on a 10 GB corpus does not read it all again. A file
    rewritten in place changes its modification time, so it is hashed again."""
    import hashlib

    from bertclf.io.columnar import source_files
    from bertclf.io.files import cache_dir, write_json

    files = source_files(path, fmt)[1] if is_columnar_source(path, fmt) else [Path(path)]
    try:
        stats = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    except OSError:
        return sha256_data(path, fmt)  # the reader names the missing file
    key = hashlib.sha256(json.dumps([fmt, stats]).encode()).hexdigest()[:32]
    known = cache_dir() / "sha256" / f"{key}.json"
    try:
        return json.loads(known.read_text(encoding="utf-8"))["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    digest = sha256_data(path, fmt)
    try:
        write_json(known, {"files": stats, "sha256": digest})
    except OSError:  # a read-only cache: the hash is still right, only not kept
        pass
    return digest
