"""Columnar inputs for the row reader (bertclf.io.rows): Parquet and Arrow, read in record batches with pyarrow.

A source is one Parquet file (.parquet/.pq), a folder of them (Spark's part-*.parquet, searched recursively;
files starting with "_" or "." are skipped as Spark and pyarrow do), a glob (`corpus/*.parquet`), an Arrow IPC
file (.arrow), or a folder written by Hugging Face `datasets.save_to_disk` (state.json + *.arrow stream files,
read in state.json's order). The parts read as one table in order; rows are numbered 1, 2, ... across parts.

Cells become the raw strings the TSV reader gives: a text column must hold strings; a label or group column may
hold strings or integers (1 -> "1", as in a TSV, so the label map is the same); a null is an empty cell (an
empty text is dropped and counted, an empty label is an error naming the row). Other types are a one-line error.
"""
from __future__ import annotations

import glob
import hashlib
import json
from pathlib import Path
from typing import Iterator

from bertclf.errors import UserError

PARQUET_EXTS = (".parquet", ".pq")
ARROW_EXTS = (".arrow",)
BATCH_ROWS = 8192  # rows per record batch: bounded memory per step on any file size
GLOB_CHARS = "*?["


def is_columnar(path) -> bool:
    """Whether `path` names a Parquet/Arrow source (file, folder or glob) rather than a text file or stdin."""
    s = str(path)
    if s == "-":
        return False
    p = Path(s)
    return p.suffix.lower() in PARQUET_EXTS + ARROW_EXTS or p.is_dir() or (
        any(c in s for c in GLOB_CHARS) and not p.exists())


def _pyarrow():
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise UserError("reading Parquet/Arrow needs pyarrow: pip install 'bertclf[parquet]'") from None
    import pyarrow as pa

    return pa


def source_files(path, fmt: str | None = None) -> tuple[str, list[Path]]:
    """("parquet" | "arrow", the files of the source in reading order), or a one-line error. `fmt` names the
    kind of a single file whose extension does not (--format parquet)."""
    s = str(path)
    p = Path(s)
    if p.is_file():
        return fmt or ("arrow" if p.suffix.lower() in ARROW_EXTS else "parquet"), [p]
    if p.is_dir():
        return _folder_files(p)
    if any(c in s for c in GLOB_CHARS):
        files = sorted(Path(f) for f in glob.glob(s, recursive=True) if Path(f).is_file())
        if not files:
            raise UserError(f"{s}: the pattern matches no file; check the folder and the pattern")
        kinds = {("arrow" if f.suffix.lower() in ARROW_EXTS else "parquet" if f.suffix.lower() in PARQUET_EXTS
                  else None) for f in files}
        if len(kinds) != 1 or None in kinds:
            other = next(f for f in files if f.suffix.lower() not in PARQUET_EXTS + ARROW_EXTS) \
                if None in kinds else files[0]
            raise UserError(f"{s}: the pattern matches {other.name}; a pattern must match only .parquet (or only "
                            f".arrow) files, e.g. corpus/*.parquet")
        return kinds.pop(), files
    raise UserError(f"{s}: file not found; check the path")


def _folder_files(p: Path) -> tuple[str, list[Path]]:
    if (p / "dataset_dict.json").is_file():
        splits = sorted(d.name for d in p.iterdir() if d.is_dir())
        raise UserError(f"{p}: a Hugging Face DatasetDict of splits ({', '.join(splits)}); give one split's "
                        f"folder, e.g. {p / (splits[0] if splits else 'train')}")
    state = p / "state.json"
    if state.is_file():  # datasets.save_to_disk: the data files in state.json's order
        try:
            names = [f["filename"] for f in json.loads(state.read_text(encoding="utf-8"))["_data_files"]]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{state}: not a datasets.save_to_disk state file (no _data_files list); re-save "
                            f"the dataset with save_to_disk") from None
        return "arrow", [p / n for n in names]
    visible = lambda f: f.is_file() and not any(part.startswith(("_", ".")) for part in f.relative_to(p).parts)
    parquet = sorted(f for f in p.rglob("*") if visible(f) and f.suffix.lower() in PARQUET_EXTS)
    if parquet:
        return "parquet", parquet
    arrow = sorted(f for f in p.iterdir() if visible(f) and f.suffix.lower() in ARROW_EXTS)
    if arrow:
        return "arrow", arrow
    raise UserError(f"{p}: is a folder without .parquet or .arrow files; give a data file, a folder of Parquet "
                    f"files or one written by datasets.save_to_disk")


def sha256_source(path) -> str:
    """SHA-256 of a source's bytes: one file's own hash; the parts of a folder or glob hashed together in
    reading order (so --resume refuses a changed, added or removed part)."""
    _kind, files = source_files(path)
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def iter_table_rows(path, need: list[str], text_cols: list[str], col_flags: str, fmt: str | None = None
                    ) -> Iterator[tuple[int, dict[str, str]]]:
    """(1-based row number, {column: string}) for every row of the source, a record batch at a time."""
    for first, cols in iter_table_chunks(path, need, text_cols, col_flags, fmt):
        for k, cells in enumerate(zip(*(cols[c] for c in need))):
            yield first + k, dict(zip(need, cells))


def iter_table_chunks(path, need: list[str], text_cols: list[str], col_flags: str, fmt: str | None = None
                      ) -> Iterator[tuple[int, dict[str, list[str]]]]:
    """(1-based number of the chunk's first row, {column: its cells as strings}) per record batch: the rows
    as iter_table_rows gives them, without a dict per row (the token store's build streams millions)."""
    pa = _pyarrow()
    kind, files = source_files(path, fmt)
    n = 0
    for f in files:
        for batch in _batches(pa, kind, f, need, text_cols, col_flags):
            cols = {c: ["" if v is None else str(v) for v in batch.column(c).to_pylist()] for c in need}
            yield n + 1, cols
            n += batch.num_rows


def count_rows(path, fmt: str | None = None) -> int:
    """Rows in a source from its metadata (Parquet footers; Arrow record batch headers), without reading cells."""
    pa = _pyarrow()
    kind, files = source_files(path, fmt)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        return sum(batch.num_rows for f in files for batch in _arrow_reader(pa, f))
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{files[0]}: not a {kind} file or it is damaged ({str(e).splitlines()[0]}); "
                        f"re-write it") from None


def _batches(pa, kind: str, f: Path, need: list[str], text_cols: list[str], col_flags: str):
    what = "a Parquet" if kind == "parquet" else "an Arrow IPC"
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(f, pre_buffer=False)  # pre-buffering would read every row group's bytes first
            schema = pf.schema_arrow
            _check_schema(pa, f, schema, need, text_cols, col_flags)
            yield from pf.iter_batches(batch_size=BATCH_ROWS, columns=need)
        else:
            reader = _arrow_reader(pa, f)
            _check_schema(pa, f, reader.schema, need, text_cols, col_flags)
            for batch in reader:
                yield batch.select(need)
    except (pa.ArrowException, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise UserError(f"{f}: file not found; check the path") from None
        raise UserError(f"{f}: not {what} file or it is damaged ({str(e).splitlines()[0]}); re-write it") from None


def _arrow_reader(pa, f: Path):
    """An Arrow IPC stream (what datasets.save_to_disk writes) or an IPC file (Feather v2), memory-mapped."""
    import pyarrow.ipc as ipc

    try:
        return ipc.open_stream(pa.memory_map(str(f)))
    except pa.ArrowInvalid:
        return ipc.open_file(pa.memory_map(str(f)))


def _check_schema(pa, f: Path, schema, need: list[str], text_cols: list[str], col_flags: str) -> None:
    names = schema.names
    for col in need:
        if col not in names:
            raise UserError(f"{f}: column '{col}' not found (columns: {', '.join(names)}); choose columns with "
                            f"{col_flags}")
        if names.count(col) > 1:
            raise UserError(f"{f}: column '{col}' appears {names.count(col)} times; rename the others")
        typ = schema.field(col).type
        base = typ.value_type if pa.types.is_dictionary(typ) else typ
        is_str = pa.types.is_string(base) or pa.types.is_large_string(base) or (
            hasattr(pa.types, "is_string_view") and pa.types.is_string_view(base))
        if col in text_cols and not is_str:
            raise UserError(f"{f}: column '{col}' holds {typ} values, not text; a text column must hold strings "
                            f"(choose another with {col_flags} or cast it to string)")
        if col not in text_cols and not (is_str or pa.types.is_integer(base)):
            hint = " (pandas writes an integer column with missing values as float: fill them, then cast to int)" \
                if pa.types.is_floating(base) else ""
            raise UserError(f"{f}: column '{col}' holds {typ} values; labels and groups must be strings or "
                            f"integers{hint}")
