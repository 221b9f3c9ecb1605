"""A token store: a dataset's rows tokenized once into flat arrays on disk, memory-mapped by every run and every
process that trains on the same rows with the same tokenizer.

    store = open_or_build(tokenizer, texts, pairs, max_length, long_text, log=print)
    store.ids[i]        # row i's token ids (a view into the memory map), as encode_rows gives them
    store.lengths       # tokens per row

Why: a Python list of one small array per row costs ~400 bytes per short review in every process, and every
process of a distributed run tokenized everything again. Here a row costs its tokens (int32) plus a 8-byte
offset, a 4-byte length and an 8-byte text hash, paged in by the OS and shared by the processes of a node.

Layout (one folder per key under <bertclf cache>/token-store/): ids.bin (int32, the rows' token ids one after
another), offsets.bin (int64, n + 1: row i is ids[offsets[i]:offsets[i + 1]]), lengths.bin (int32), hashes.bin
(uint64, the NFC text's hash per row: repeated-text checks without a set of strings), types.bin / type_offsets
(sentence pairs whose tokenizer gives token type ids), meta.json (counts, what the build measured). A file's
store (bertclf/data/file_store.py) also has labels.bin (int32 label codes), for sentence pairs first_hashes.bin
(uint64, the first text's hash: the repeated-text hint) and for --group-col groups.bin (uint64, the group's).

The key is (rows' content, tokenizer, max length, long-text mode, pairs or not, FORMAT): another file, another
tokenizer (a trimmed vocabulary is another tokenizer) or another --max-length is another store. The folder is
written by atomic_dir: an interrupted build leaves a hidden .tmp folder, never a store that opens; the next build
removes such folders once nothing in them has changed for a day (STALE_BUILD_S).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from bertclf.data.long_text import encode_rows
from bertclf.data.tokens import uses_token_types
from bertclf.errors import UserError
from bertclf.io.files import atomic_dir, cache_dir, write_json

FORMAT = 1            # bump when the layout or what a row holds changes: old stores are then never opened
BUILD_ROWS = 65_536   # rows tokenized per step of a build: bounded memory for the per-row arrays in flight
HASH_ROWS = 65_536
STALE_BUILD_S = 86_400  # a build folder untouched this long was left by a killed build: the next build removes it


@dataclass
class TokenRows:
    """Ragged rows over flat arrays: row i is flat[offsets[i]:offsets[i + 1]]. Indexing gives a numpy array, so
    collate and scoring read it as they read a list of arrays.

    A store's rows (files given) are read with pread, not through the memory maps: a page fault on a map brings
    in the pages around it too (the kernel's fault-around and readahead), and a process's RSS counts every
    mapped page, so random batches grew a 3M-row run's RSS by ~30 MB a step. pread goes through the same page
    cache, shared by the node's processes, and leaves nothing mapped."""
    flat: np.ndarray
    offsets: np.ndarray
    files: tuple[Path, Path] | None = None  # (flat, offsets) files: rows read with pread
    _fds: tuple[int, int] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i) -> np.ndarray:
        if self.files is None:
            return self.flat[self.offsets[i]:self.offsets[i + 1]]
        if self._fds is None:
            self._fds = tuple(os.open(f, os.O_RDONLY) for f in self.files)
        flat_fd, offsets_fd = self._fds
        lo, hi = np.frombuffer(os.pread(offsets_fd, 16, 8 * int(i)), np.int64).tolist()
        size = self.flat.dtype.itemsize
        return np.frombuffer(os.pread(flat_fd, size * (hi - lo), size * lo), self.flat.dtype)

    def __del__(self):
        for fd in self._fds or ():
            try:
                os.close(fd)
            except OSError:
                pass


@dataclass
class TokenStore:
    path: Path
    meta: dict
    ids: TokenRows
    types: TokenRows | None
    lengths: np.ndarray   # int32 memory map
    hashes: np.ndarray    # uint64 memory map: text_hashes of the rows
    reused: bool
    labels: np.ndarray | None = None  # a file's store (open_or_build_file): int32 per row, into meta["label_values"]
    first_hashes: np.ndarray | None = None  # a file's pairs: uint64 per row, text_hashes of the first texts alone
    groups: np.ndarray | None = None  # a file read with --group-col: uint64 per row, text_hashes of the group values

    def __len__(self) -> int:
        return len(self.lengths)

    def drop_pages(self, *arrays: np.ndarray) -> None:
        """Let the OS take back the pages a pass over these memory maps brought in (a process's RSS counts them:
        24 MB of hashes at 3M rows); they stay readable, a later access reads them from the page cache again."""
        import mmap

        for a in arrays:
            m = getattr(a, "_mmap", None)
            if m is not None and hasattr(m, "madvise"):
                m.madvise(mmap.MADV_DONTNEED)


def store_root() -> Path:
    return cache_dir() / "token-store"


def content_hash(texts: list[str], pairs: list[str] | None) -> str:
    """BLAKE2b of the rows' texts (and second texts) with their lengths, so that no two row lists collide by
    where one text ends."""
    h = hashlib.blake2b(digest_size=20)
    for side in (texts, pairs) if pairs is not None else (texts,):
        for start in range(0, len(side), HASH_ROWS):
            part = side[start:start + HASH_ROWS]
            h.update(np.fromiter(map(len, part), dtype=np.int64, count=len(part)).tobytes())
            h.update("".join(part).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """The tokenizer's definition (its tokenizer.json without the truncation and padding a call last set) and
    the inputs it gives: two tokenizers with one fingerprint give the same ids."""
    known = getattr(tokenizer, "_bertclf_fingerprint", None)
    if known:  # a 250,000-piece tokenizer.json takes a second to serialise and parse
        return known
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec.pop("truncation", None)
    spec.pop("padding", None)
    extra = [type(tokenizer).__name__, list(getattr(tokenizer, "model_input_names", ()))]
    tokenizer._bertclf_fingerprint = hashlib.sha256(json.dumps([spec, extra], sort_keys=True).encode()).hexdigest()
    return tokenizer._bertclf_fingerprint


def text_hashes(texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
    """uint64 per row: the hash of its NFC text (a pair: both texts), the key of bertclf's repeated-text checks
    (dataset.texts_in compares the strings themselves; 64 bits make a false repeat among 10^8 rows a 1 in 3,000
    chance)."""
    out = np.empty(len(texts), dtype=np.uint64)
    for i, (t, p) in enumerate(zip(texts, pairs if pairs is not None else texts)):
        key = unicodedata.normalize("NFC", t if pairs is None else t + "\t" + p)
        out[i] = int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                                "little")
    return out


def store_key(tokenizer, texts, pairs, max_length: int, long_text: str) -> str:
    parts = {"format": FORMAT, "content": content_hash(texts, pairs), "tokenizer": tokenizer_fingerprint(tokenizer),
             "max_length": max_length, "long_text": long_text, "pairs": pairs is not None}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def open_or_build(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int, long_text: str,
                  log: Callable[[str], None] = print, root: Path | None = None, builds: bool = True,
                  key: str | None = None) -> TokenStore:
    """The store of these rows: opened if a complete one exists under the key, else built (builds=False: a
    process that waited for another to build it; a missing store is then an error, not a second build)."""
    key = key or store_key(tokenizer, texts, pairs, max_length, long_text)
    write = lambda tmp: write_arrays(tmp, tokenizer, texts, pairs, max_length, long_text)  # noqa: E731
    return open_or_write(key, write, log, root, builds)


def open_or_write(key: str, write: Callable[[Path], dict], log: Callable[[str], None] = print,
                  root: Path | None = None, builds: bool = True) -> TokenStore:
    """The store under `key`: opened if complete, else written by write(folder) -> meta into a temporary folder
    that becomes the store only once complete."""
    path = (root or store_root()) / key
    if (path / "meta.json").is_file():
        store = open_store(path)
        log(f"token store: {len(store):,} rows, {store.meta['bytes'] / 1e6:.1f} MB, reused ({path})")
        return store
    if not builds:
        raise UserError(f"token store {path}: missing after the main process built it; is the bertclf cache "
                        f"(BERTCLF_CACHE) on a disk every process sees?")
    t0 = time.time()
    remove_stale_builds(path.parent)
    try:
        with atomic_dir(path, replace=False) as tmp:
            meta = write(tmp)
            meta["build_seconds"] = round(time.time() - t0, 2)
            write_json(tmp / "meta.json", meta)  # last: a folder with meta.json is complete
    except FileExistsError:  # another node's process (a shared cache) finished the same store first
        return open_or_write(key, write, log, root, builds)
    store = open_store(path, reused=False)
    log(f"token store: {len(store):,} rows, {meta['bytes'] / 1e6:.1f} MB, built in {meta['build_seconds']:.1f} s "
        f"({len(store) / max(meta['build_seconds'], 1e-9):,.0f} rows/s; {path})")
    return store


def remove_stale_builds(root: Path, max_age_s: float = STALE_BUILD_S) -> list[Path]:
    """Remove the hidden .KEY.*.tmp folders of builds that were killed (nothing in them written for max_age_s:
    a live build appends to its files all along); returns what was removed."""
    import shutil

    now, removed = time.time(), []
    for tmp in root.glob(".*.tmp") if root.is_dir() else ():
        try:
            newest = max([tmp.stat().st_mtime] + [f.stat().st_mtime for f in tmp.iterdir()])
        except OSError:  # another process removed it (or it finished) meanwhile
            continue
        if now - newest > max_age_s:
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def write_arrays(folder: Path, tokenizer, texts, pairs, max_length: int, long_text: str) -> dict:
    """Tokenize the rows BUILD_ROWS at a time (encode_rows, so the ids are the in-memory path's) and append them
    to the flat files; returns the meta of what was written."""
    n = len(texts)
    with_types = pairs is not None and uses_token_types(tokenizer)
    names = ["ids", "offsets", "lengths", "hashes"] + (["types"] if with_types else [])
    outs = {name: open(folder / f"{name}.bin", "wb") for name in names}
    try:
        outs["offsets"].write(np.zeros(1, np.int64).tobytes())
        total = 0
        for start in range(0, n, BUILD_ROWS):
            part_pairs = pairs[start:start + BUILD_ROWS] if pairs is not None else None
            ids, types = encode_rows(tokenizer, texts[start:start + BUILD_ROWS], part_pairs, max_length, long_text)
            lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            outs["ids"].write(np.concatenate(ids).astype(np.int32, copy=False).tobytes())
            outs["offsets"].write((total + np.cumsum(lens)).astype(np.int64).tobytes())
            outs["lengths"].write(lens.astype(np.int32).tobytes())
            outs["hashes"].write(text_hashes(texts[start:start + BUILD_ROWS], part_pairs).tobytes())
            if with_types:
                outs["types"].write(np.concatenate(types).astype(np.int32, copy=False).tobytes())
            total += int(lens.sum())
    finally:
        for f in outs.values():
            f.close()
    return {"format": FORMAT, "rows": n, "tokens": total, "types": with_types, "max_length": max_length,
            "long_text": long_text, "bytes": sum((folder / f"{name}.bin").stat().st_size for name in names)}


def open_store(path: Path, reused: bool = True) -> TokenStore:
    """Memory-map a complete store; a folder whose files do not match its meta.json is refused, not read."""
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    n, total = meta["rows"], meta["tokens"]
    sizes = {"ids": (np.int32, total), "offsets": (np.int64, n + 1), "lengths": (np.int32, n),
             "hashes": (np.uint64, n)} | ({"types": (np.int32, total)} if meta["types"] else {}) | (
             {"labels": (np.int32, n)} if "label_values" in meta else {}) | (
             {"first_hashes": (np.uint64, n)} if meta.get("pair_col") else {}) | (
             {"groups": (np.uint64, n)} if meta.get("group_col") else {})
    arrays = {}
    for name, (dtype, count) in sizes.items():
        f = path / f"{name}.bin"
        if meta.get("format") != FORMAT or not f.is_file() or f.stat().st_size != count * np.dtype(dtype).itemsize:
            raise UserError(f"token store {path}: {f.name} does not match meta.json (damaged); delete the folder "
                            f"and run again")
        arrays[name] = np.memmap(f, dtype=dtype, mode="r", shape=(count,)) if count else np.zeros(0, dtype)
    read = lambda name: (path / f"{name}.bin", path / "offsets.bin") if n and total else None  # noqa: E731
    ids = TokenRows(arrays["ids"], arrays["offsets"], read("ids"))
    types = TokenRows(arrays["types"], arrays["offsets"], read("types")) if meta["types"] else None
    return TokenStore(path, meta, ids, types, arrays["lengths"], arrays["hashes"], reused, arrays.get("labels"),
                      arrays.get("first_hashes"), arrays.get("groups"))


def repeats_in(hashes: np.ndarray, train_hashes: np.ndarray) -> int:
    """How many of `hashes` are also among the training rows' (dataset.texts_in, by hash)."""
    return int(np.isin(hashes, train_hashes).sum())
