"""Reading labelled files and NSMC: formats, counts, sampling, splits, and one-line errors for bad input."""
import json

import pytest

from bertclf import data as D
from bertclf.errors import UserError


def test_nsmc_counts_and_checksums(nsmc_dir):
    train = D.read_nsmc("train", nsmc_dir)
    test = D.read_nsmc("test", nsmc_dir)
    assert (train.rows_read, train.dropped_empty, len(train)) == (150_000, 5, 149_995)
    assert (test.rows_read, test.dropped_empty, len(test)) == (50_000, 3, 49_997)
    assert set(train.labels) == {"negative", "positive"}
    assert train.sha256 == D.NSMC_FILES["train"][1]


def test_nsmc_wrong_checksum_and_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("BERTCLF_DATA_DIR", raising=False)
    monkeypatch.setenv("BERTCLF_CACHE", str(tmp_path / "cache"))
    (tmp_path / "ratings_train.txt").write_text("id\tdocument\tlabel\n1\tx\t0\n")
    with pytest.raises(UserError, match="SHA-256 differs"):
        D.nsmc_path("train", tmp_path, download=False)
    with pytest.raises(UserError, match="ratings_test.txt not found.*--data-dir"):
        D.nsmc_path("test", tmp_path, download=False)


@pytest.mark.parametrize("ext,body", [
    (".tsv", "text\tlabel\n좋아요\tpos\n별로\tneg\n\"따옴표 \"\"인용\"\"\"\tpos\n"),
    (".csv", "label,text\npos,좋아요\nneg,별로\npos,\"쉼표, 포함\"\n"),
    (".jsonl", '{"text": "좋아요", "label": "pos"}\n{"text": "별로", "label": "neg"}\n\n{"text": "x", "label": "pos"}\n'),
])
def test_formats(tmp_path, ext, body):
    p = tmp_path / f"f{ext}"
    p.write_text(body, encoding="utf-8")
    ds = D.read_labelled(p)
    assert len(ds) == 3 and ds.labels == ["pos", "neg", "pos"]
    assert ds.texts[0] == "좋아요"


def test_empty_texts_dropped_and_counted(tmp_path):
    p = tmp_path / "f.tsv"
    p.write_text("text\tlabel\n\t1\n  \t0\nok\t1\n", encoding="utf-8")
    ds = D.read_labelled(p)
    assert (len(ds), ds.dropped_empty, ds.rows_read) == (1, 2, 3)


@pytest.mark.parametrize("name,content,pattern", [
    ("missing.tsv", None, r"missing.tsv: file not found"),
    ("empty.tsv", "", r"empty.tsv: file is empty"),
    ("comma.tsv", "text,label\na,1\n", r"comma.tsv, line 1: .*comma-separated"),
    ("cols.tsv", "txt\tlabel\na\t1\n", r"cols.tsv, line 1: column 'text' not in header \(txt, label\)"),
    ("ragged.tsv", "text\tlabel\na\t1\nb\t0\textra\n", r"ragged.tsv, line 3: 3 fields but the header has 2"),
    ("latin.tsv", b"text\tlabel\nok\t1\ncaf\xe9\t0\n", r"latin.tsv, line 3: not UTF-8"),
    ("badjson.jsonl", '{"text": "a", "label": 1}\n{"text": \n', r"badjson.jsonl, line 2: invalid JSON"),
    ("nolabel.jsonl", '{"text": "a"}\n', r"nolabel.jsonl, line 1: field 'label' missing"),
    ("emptylabel.csv", "text,label\na,\n", r"emptylabel.csv, line 2: empty label"),
    ("weird.xlsx", "x", r"unknown file type .xlsx"),
])
def test_bad_files_one_line(tmp_path, name, content, pattern):
    p = tmp_path / name
    if content is not None:
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError, match=pattern) as e:
        D.read_labelled(p)
    assert "\n" not in str(e.value)


def test_label_map_orders_and_rejects():
    lm = D.LabelMap.from_labels(["10", "2", "2", "1"], "f")
    assert lm.names == ["1", "2", "10"]  # numeric order when all labels are integers
    assert lm.encode(["2", "10"], "f") == [1, 2]
    with pytest.raises(UserError, match="never seen in training"):
        lm.encode(["3"], "test.tsv")
    with pytest.raises(UserError, match="only one class"):
        D.LabelMap.from_labels(["a", "a"], "train.tsv")


def test_sample_and_split_are_stratified_and_seeded():
    ds = D.Dataset([f"t{i}" for i in range(1000)], ["a"] * 800 + ["b"] * 200)
    s1, s2, s3 = D.sample(ds, 0.4, 1), D.sample(ds, 0.4, 1), D.sample(ds, 0.4, 2)
    assert s1.texts == s2.texts and s1.texts != s3.texts
    assert (s1.labels.count("a"), s1.labels.count("b")) == (320, 80)
    tr, va = D.split_valid(ds, 0.05, 7)
    assert len(va) == 50 and va.labels.count("b") == 10
    assert not set(tr.texts) & set(va.texts) and len(tr) + len(va) == 1000
