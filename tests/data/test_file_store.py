"""A Parquet training file streamed into a token store (bertclf/data/file_store.py): the rows read_labelled reads,
token for token; a key that follows the file's bytes (hashed once per file version); splits drawn from arrays."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bertclf.data import file_store as FS
from bertclf.data.dataset import read_labelled
from bertclf.data.long_text import encode_rows
from bertclf.errors import UserError
from bertclf.io.rows import sha256_data, sha256_data_cached
from bertclf.models.resolve import load_tokenizer

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402


def write_parquet(path, texts, labels, row_group: int = 300):
    pq.write_table(pa.table({"text": texts, "label": labels}), path, row_group_size=row_group)
    return path


@pytest.fixture
def corpus(nsmc_slices, tmp_path):
    ds = read_labelled(nsmc_slices["train"], "document", "label")
    texts, labels = ds.texts[:1000], [int(x) for x in ds.labels[:1000]]
    texts[7], texts[8] = "   ", None  # an empty text and a null: dropped and counted, as read_labelled does
    return write_parquet(tmp_path / "c.parquet", texts, labels), tmp_path


def test_the_streamed_store_holds_the_rows_read_labelled_reads(tiny_model_dir, corpus, monkeypatch):
    monkeypatch.setattr(FS, "CHUNK_ROWS", 256)  # several chunks, the last one short
    path, tmp = corpus
    tok = load_tokenizer(str(tiny_model_dir))
    rows = FS.FileRows(str(path), "text", "label")
    store = FS.open_or_build_file(tok, rows, 24, "truncate", log=lambda s: None, root=tmp / "stores")
    ds = read_labelled(path, "text", "label")
    want, _ = encode_rows(tok, ds.texts, None, 24)
    assert len(store) == len(ds) == 998 and store.meta["dropped_empty"] == 2 and store.meta["rows_read"] == 1000
    assert all(np.array_equal(store.ids[i], w) for i, w in enumerate(want))
    assert [store.meta["label_values"][c] for c in store.labels] == ds.labels
    stored = FS.StoredDataset.of(store, rows)
    assert stored.summary()["label_counts"] == ds.summary()["label_counts"] and stored.sha256 == ds.sha256
    picked = np.array([0, 5, 7, 500, 997])
    assert stored.texts_at(picked) == [ds.texts[i] for i in picked]
    again = FS.open_or_build_file(tok, rows, 24, "truncate", log=lambda s: None, root=tmp / "stores")
    assert again.reused and again.path == store.path


def test_a_changed_file_is_another_store_and_its_hash_is_computed_once(tiny_model_dir, corpus, monkeypatch):
    path, tmp = corpus
    monkeypatch.setenv("BERTCLF_CACHE", str(tmp / "cache"))
    tok = load_tokenizer(str(tiny_model_dir))
    first = FS.FileRows(str(path), "text", "label")
    key = FS.file_store_key(tok, first, 24, "truncate")
    assert first.sha256 == sha256_data(path)
    [kept] = (tmp / "cache" / "sha256").iterdir()
    # the cached hash is what a second run reads (a planted value proves the file was not read again) ...
    kept.write_text(json.dumps(json.loads(kept.read_text()) | {"sha256": "planted"}))
    assert sha256_data_cached(path) == "planted"
    # ... until the file changes: new bytes, a new modification time, hashed again, another store key
    table = pq.read_table(path)
    write_parquet(path, [t + " 다시" if t else t for t in table["text"].to_pylist()], table["label"].to_pylist())
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 1_000_000))
    changed = FS.FileRows(str(path), "text", "label")
    assert changed.sha256 == sha256_data(path) != "planted"
    assert FS.file_store_key(tok, changed, 24, "truncate") != key
    assert FS.file_store_key(tok, FS.FileRows(str(path), "text", "label"), 32, "truncate") != \
        FS.file_store_key(tok, changed, 24, "truncate")


def test_an_empty_label_is_one_line_naming_its_row(tiny_model_dir, tmp_path):
    path = write_parquet(tmp_path / "bad.parquet", ["좋다", "싫다", "그냥"], ["1", None, "0"])
    tok = load_tokenizer(str(tiny_model_dir))
    with pytest.raises(UserError, match=r"bad.parquet, row 2: empty label in column 'label'"):
        FS.open_or_build_file(tok, FS.FileRows(str(path), "text", "label"), 24, "truncate", log=lambda s: None,
                              root=tmp_path / "stores")
    assert not any(p.name.startswith(".") for p in (tmp_path / "stores").iterdir())  # no half store left


def test_the_split_and_sample_are_stratified_disjoint_and_seeded():
    codes = np.array([0] * 900 + [1] * 80 + [2] * 20, dtype=np.int32)
    np.random.default_rng(0).shuffle(codes)
    taken, rest = FS.stratified_positions(codes, ["a", "b", "c"], 0.05, seed=3)
    assert sorted(np.concatenate([taken, rest]).tolist()) == list(range(1000))
    assert np.bincount(codes[taken]).tolist() == [45, 4, 1]  # round(k * 0.05) of each class
    again, _ = FS.stratified_positions(codes, ["a", "b", "c"], 0.05, seed=3)
    other, _ = FS.stratified_positions(codes, ["a", "b", "c"], 0.05, seed=4)
    assert np.array_equal(taken, again) and not np.array_equal(taken, other)
