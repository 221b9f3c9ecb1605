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


@pytest.fixture
def pair_corpus(nsmc_slices, tmp_path):
    """600 pairs (a review, each first text in two rows as a premise is, and another review), a label and a
    group of 4 consecutive rows; three rows with an empty side (a blank second text, a null second text, an
    empty first text): dropped and counted."""
    ds = read_labelled(nsmc_slices["train"], "document", "label")
    texts, pairs = [ds.texts[i // 2] for i in range(600)], ds.texts[600:1200]
    labels = [int(x) for x in ds.labels[:600]]
    pairs[3], pairs[4], texts[9] = "  ", None, ""
    pq.write_table(pa.table({"text": texts, "text2": pairs, "label": labels, "g": [f"g{i // 4}" for i in range(600)]}),
                   tmp_path / "pairs.parquet", row_group_size=200)
    return tmp_path / "pairs.parquet", tmp_path


def test_a_pair_file_is_stored_as_read_labelled_reads_its_pairs_and_groups(tiny_model_dir, pair_corpus, monkeypatch):
    from bertclf.data.token_store import text_hashes
    from bertclf.data.tokens import pair_cut

    monkeypatch.setattr(FS, "CHUNK_ROWS", 256)  # several chunks, the last one short
    path, tmp = pair_corpus
    tok = load_tokenizer(str(tiny_model_dir))
    rows = FS.FileRows(str(path), "text", "label", pair_col="text2", group_col="g")
    store = FS.open_or_build_file(tok, rows, 24, "truncate", log=lambda s: None, root=tmp / "stores")
    mem = read_labelled(path, "text", "label", pair_col="text2", group_col="g")
    ids, _ = encode_rows(tok, mem.texts, mem.pairs, 24)
    assert len(store) == len(mem) == 597 and store.meta["dropped_empty"] == mem.dropped_empty == 3
    assert store.meta["rows_read"] == 600 and store.types is None  # me5's pair template has no token type ids
    assert all(np.array_equal(store.ids[i], w) for i, w in enumerate(ids))
    assert np.array_equal(store.hashes, text_hashes(mem.texts, mem.pairs))  # a pair repeats when both texts do
    assert np.array_equal(store.first_hashes, text_hashes(mem.texts))
    assert np.array_equal(store.groups, text_hashes(mem.groups))
    assert [store.meta[k] for k in ("cut", "cut_first", "cut_second")] == list(pair_cut(tok, mem.texts, mem.pairs,
                                                                                         ids, 24))
    stored = FS.StoredDataset.of(store, rows)
    assert stored.pairs is not None and len(stored.pairs) == 597 and stored.summary() == mem.summary()
    picked = np.array([0, 3, 8, 596])
    assert stored.sides_at(picked) == ([mem.texts[i] for i in picked], [mem.pairs[i] for i in picked])
    assert stored.pairs.at(picked) == [mem.pairs[i] for i in picked]
    with pytest.raises(TypeError):  # no list per row: a stored split's second texts are read by position
        list(stored.pairs)
    # the vocabulary trim reads both texts of each kept pair
    assert sorted(t for chunk in rows.text_chunks() for t in chunk) == sorted(mem.all_texts())


def test_a_grouped_split_of_a_stored_file_keeps_each_group_on_one_side(tiny_model_dir, pair_corpus):
    from bertclf.train.config import TrainConfig
    from bertclf.train.streamed import split

    path, tmp = pair_corpus
    tok = load_tokenizer(str(tiny_model_dir))
    whole = {}
    for group in ("g", None):
        rows = FS.FileRows(str(path), "text", "label", pair_col="text2", group_col=group)
        whole[group] = FS.StoredDataset.of(FS.open_or_build_file(tok, rows, 24, "truncate", log=lambda s: None,
                                                                 root=tmp / "stores"), rows)
    assert whole["g"].store.path != whole[None].store.path  # the group column is part of the key: no stale store
    train, valid = whole["g"].split(0.2, seed=0)
    assert np.intersect1d(train.groups, valid.groups).size == 0 and len(train) + len(valid) == 597
    assert abs(len(valid) - 0.2 * 597) <= 2  # within half a group (4 rows)
    assert train.summary()["groups"] + valid.summary()["groups"] == 150
    again, _ = whole["g"].split(0.2, seed=0)
    other, _ = whole["g"].split(0.2, seed=1)
    assert np.array_equal(train.rows, again.rows) and not np.array_equal(train.rows, other.rows)
    # the repeated-text hint reads the first texts (each in two rows, as a premise with several hypotheses; the
    # pairs themselves all differ) and is quiet with --group-col
    cfg = TrainConfig(out="unused", train=str(path), text_col="text", text_pair_col="text2", valid_frac=0.2)
    said = []
    split(cfg, whole[None], None, False, said.append)
    assert len([s for s in said if "--group-col text" in s]) == 1, said
    said.clear()
    split(cfg, whole["g"], None, False, said.append)
    assert not said


def test_grouped_positions_hold_whole_groups_and_about_the_asked_share():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 12, size=400)
    groups = np.repeat(rng.integers(0, 2**63, size=400, dtype=np.uint64), sizes)
    rng.shuffle(groups)
    for seed in range(3):
        for frac in (0.05, 0.2, 0.5):
            taken, rest = FS.grouped_positions(groups, frac, seed)
            assert np.intersect1d(groups[taken], groups[rest]).size == 0
            assert np.array_equal(np.sort(np.concatenate([taken, rest])), np.arange(len(groups)))
            assert abs(len(taken) - frac * len(groups)) <= sizes.max() / 2
    with pytest.raises(UserError, match=r"--group-col: 3 groups are too few to hold out 0.2 of them whole"):
        FS.grouped_positions(np.repeat(np.arange(3, dtype=np.uint64), 10), 0.2, 0)


def test_the_pair_and_group_columns_are_part_of_the_store_key(tiny_model_dir, pair_corpus):
    path, _ = pair_corpus
    tok = load_tokenizer(str(tiny_model_dir))

    def key(**columns):
        return FS.file_store_key(tok, FS.FileRows(str(path), "text", "label", **columns), 24, "truncate")

    keys = [key(), key(pair_col="text2"), key(pair_col="g"), key(group_col="g"), key(group_col="text2"),
            key(pair_col="text2", group_col="g")]
    assert len(set(keys)) == len(keys)
    # a single-text file's key has no pair or group part (its stores from before stay valid); the trim's texts
    # do not depend on the group column
    assert set(FS.FileRows(str(path), "text", "label").key_parts()) == {
        "file", "text_col", "label_col", "fmt", "encoding", "columns", "allow_empty_label"}
    rows = FS.FileRows(str(path), "text", "label", pair_col="text2", group_col="g")
    assert rows.texts_key() == FS.FileRows(str(path), "text", "label", pair_col="text2").key_parts()
