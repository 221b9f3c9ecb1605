"""Reading labelled files and NSMC: formats, counts, sampling, splits, and one-line errors for bad input."""
import json

import pytest

from bertclf.data import dataset as D
from bertclf.errors import UserError
from bertclf.io.rows import iter_rows, parse_columns


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
    monkeypatch.setattr(D, "CHECKOUT_NSMC", tmp_path / "no-checkout")  # not the shared copy beside this checkout
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


# ---- the shared row reader (bertclf/io/rows.py) ---------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test"])
def test_nsmc_reads_exactly_as_the_csv_module_reads_it(nsmc_dir, split):
    """NSMC is written by pandas (quoted fields, doubled quotes inside): the line-based TSV rule must give the
    same rows and texts, byte for byte, as Python's csv module, which the readers used before."""
    import csv

    path = nsmc_dir / f"ratings_{split}.txt"
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader)
        expected = [(rec[header.index("document")], rec[header.index("label")]) for rec in reader if rec]
    warnings = []
    got = [(r["document"], r["label"]) for _n, r in iter_rows(path, ["document", "label"], warn=warnings.append)]
    assert got == expected and not warnings
    assert sum(bool(t.strip()) for t, _ in got) == {"train": 149_995, "test": 49_997}[split]
    assert sum('"' in t for t, _ in got) > 100  # the quoted reviews are in there


def test_tsv_unclosed_quote_is_literal_and_loses_no_row(tmp_path):
    """A 120-line file whose row 5 opens a quote it never closes: 119 rows, not 115; the line is warned about."""
    rows = [f"리뷰 {i}\t{'pos' if i % 2 else 'neg'}" for i in range(119)]
    rows[4] = '"따옴표로 시작하는 리뷰\tpos'
    rows[9] = '"균형" 잡힌 따옴표\tneg'
    p = tmp_path / "q.tsv"
    p.write_text("text\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    warnings = []
    got = list(iter_rows(p, ["text", "label"], warn=warnings.append))
    assert len(got) == 119 and [n for n, _ in got] == list(range(2, 121))
    assert got[4][1] == {"text": '"따옴표로 시작하는 리뷰', "label": "pos"}
    assert got[9][1]["text"] == '"균형" 잡힌 따옴표'  # quotes inside a field are kept, not dropped
    assert len(warnings) == 2 and "q.tsv, line 6" in warnings[0] and "line 11" in warnings[1]
    ds = D.read_labelled(p)
    assert len(ds) == 119 and ds.labels[5:7] == ["pos", "neg"]


def test_csv_unclosed_quote_is_an_error_naming_its_line(tmp_path):
    p = tmp_path / "q.csv"
    p.write_text('text,label\n좋아요,pos\n"닫히지 않은,neg\n별로,neg\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"q.csv, line 3: .*quote"):
        D.read_labelled(p)
    p.write_text('text,label\n"여러 줄\n리뷰",pos\n별로,neg\n', encoding="utf-8")  # RFC 4180: allowed
    assert D.read_labelled(p).texts == ["여러 줄\n리뷰", "별로"]


def test_jsonl_splits_on_newline_only(tmp_path):
    p = tmp_path / "sep.jsonl"
    body = [{"text": "첫 줄\u2028둘째 줄", "label": "a"}, {"text": "x\u2029y\x85z\x0bw", "label": "b"}]
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in body), encoding="utf-8")
    ds = D.read_labelled(p)
    assert ds.texts == [r["text"] for r in body]


def test_header_names_are_stripped_everywhere(tmp_path):
    from bertclf.inference.records import iter_texts
    from bertclf.models.vocab_trim import read_texts

    p = tmp_path / "spaces.csv"
    p.write_text("label, text\npos,좋아요\nneg,별로\n", encoding="utf-8")
    assert D.read_labelled(p).texts == ["좋아요", "별로"]
    assert list(iter_texts(str(p), "text")) == ["좋아요", "별로"] == read_texts(p, "text")


def test_encoding_cp949(tmp_path):
    p = tmp_path / "cp949.tsv"
    p.write_bytes("text\tlabel\n정말 재밌어요\t긍정\n시간 아깝다\t부정\n".encode("cp949"))
    with pytest.raises(UserError, match=r"cp949.tsv, line 2: not UTF-8 .*--encoding"):
        D.read_labelled(p)
    ds = D.read_labelled(p, encoding="cp949")
    assert ds.texts == ["정말 재밌어요", "시간 아깝다"] and ds.labels == ["긍정", "부정"]
    with pytest.raises(UserError, match="--encoding klingon: unknown encoding"):
        D.read_labelled(p, encoding="klingon")


def test_label_names_are_nfc_normalised(tmp_path):
    import unicodedata

    nfc, nfd = unicodedata.normalize("NFC", "긍정"), unicodedata.normalize("NFD", "긍정")
    assert nfc != nfd
    p = tmp_path / "nfd.tsv"
    p.write_text(f"text\tlabel\n좋아요\t{nfc}\n최고\t{nfd}\n별로\t부정\n", encoding="utf-8")
    ds = D.read_labelled(p)
    assert ds.labels == [nfc, nfc, "부정"]


def test_headerless_file_with_columns(tmp_path):
    p = tmp_path / "kote.tsv"
    p.write_text("1\t정말 좋다\t3,17,40\n2\t별로다\t2\n", encoding="utf-8")
    ds = D.read_labelled(p, "text", "labels", columns=["id", "text", "labels"])
    assert ds.texts == ["정말 좋다", "별로다"] and ds.labels == ["3,17,40", "2"]  # raw label cells
    with pytest.raises(UserError, match=r"--columns id,text: no column 'labels'"):
        D.read_labelled(p, "text", "labels", columns=["id", "text"])
    with pytest.raises(UserError, match=r"kote.tsv, line 1: 3 fields but --columns names 2"):
        D.read_labelled(p, "text", None, columns=["id", "text"])


def test_parse_columns():
    assert parse_columns(" id, text ,labels") == ["id", "text", "labels"]
    for bad in ("id,,text", "a,a", ""):
        with pytest.raises(UserError, match="--columns"):
            parse_columns(bad)


def test_a_sample_that_leaves_no_rows_is_an_error(tmp_path):
    ds = D.Dataset([f"t{i}" for i in range(40)], ["a", "b"] * 20, source="test.tsv")
    with pytest.raises(UserError, match=r"--test-sample 0.01: leaves none of the 40 rows of test.tsv"):
        D.sample(ds, 0.01, 0, "--test-sample")


def test_training_data_reads_columns_and_encoding(tmp_path):
    from bertclf.train.config import TrainConfig

    p = tmp_path / "train.tsv"
    p.write_bytes("".join(f"{i}\t리뷰 {i}\t{'pos' if i % 2 else 'neg'}\n" for i in range(60)).encode("euc-kr"))
    t = tmp_path / "test.tsv"
    t.write_bytes(b"0\tx\tpos\n1\ty\tneg\n")
    cfg = TrainConfig(out=str(tmp_path / "o"), train=str(p), test=str(t), columns=["id", "text", "label"],
                      encoding="euc-kr")
    train, valid, test = D.load_training_data(cfg, log=lambda s: None)
    assert len(train) + len(valid) == 60 and len(test) == 2 and train.texts[0].startswith("리뷰")
    cfg.test_sample = 0.1
    with pytest.raises(UserError, match="--test-sample 0.1: leaves none of the 2 rows"):
        D.load_training_data(cfg, log=lambda s: None)


def test_a_line_of_spaces_in_a_one_column_file_is_an_empty_row_not_a_blank_line(tmp_path):
    """predict's row numbers: in a one-column file a whitespace-only line is a row with an empty text (skipped and
    said), so the rows after it keep their numbers; a truly blank line is no row; in a file of several columns a
    line of spaces is still a blank line (not a one-field ragged row)."""
    from bertclf.io.rows import iter_rows

    one = tmp_path / "one.tsv"
    one.write_text("text\n좋다\n   \n\n싫다\n", encoding="utf-8")
    assert [(n, r["text"]) for n, r in iter_rows(one, ["text"])] == [(2, "좋다"), (3, "   "), (5, "싫다")]
    two = tmp_path / "two.tsv"
    two.write_text("id\ttext\n1\t좋다\n   \n2\t싫다\n", encoding="utf-8")
    assert [(n, r["text"]) for n, r in iter_rows(two, ["text"])] == [(2, "좋다"), (4, "싫다")]


def test_empty_label_cells_are_no_labels_for_multi_label_files_only(tmp_path):
    """A multi-label row may have no labels: an empty cell reads as "" (as a cell of separators only, ","
    does), with allow_empty_label; a single-label file (the default) still refuses it, naming the line."""
    p = tmp_path / "ml.tsv"
    p.write_text("text\tlabels\n좋다\t0,2\n그냥 그래\t\n음\t  \n별로\t,\n", encoding="utf-8")
    ds = D.read_labelled(p, "text", "labels", allow_empty_label=True)
    assert ds.labels == ["0,2", "", "", ","] and len(ds) == 4
    assert ds.summary()["label_counts"] == {"": 2, ",": 1, "0,2": 1}
    with pytest.raises(UserError, match=r"ml.tsv, line 3: empty label in column 'labels'; fill it in"):
        D.read_labelled(p, "text", "labels")
    nsmc_like = tmp_path / "n.tsv"  # label_names (NSMC's 0/1 -> names) leaves an empty cell empty
    nsmc_like.write_text("document\tlabel\n좋다\t1\n음\t\n", encoding="utf-8")
    assert D.read_labelled(nsmc_like, "document", "label", D.NSMC_LABELS, allow_empty_label=True).labels == [
        "positive", ""]


def test_training_data_keeps_multi_label_rows_without_labels(tmp_path):
    """load_training_data reads the train, --valid and --test files of a --multi-label run with empty cells
    allowed; a single-label run still refuses them."""
    from bertclf.train.config import TrainConfig

    body = "text\tlabels\n" + "".join(f"리뷰 {i}\t{'' if i % 3 == 0 else 'a,b' if i % 3 == 1 else 'b'}\n"
                                      for i in range(60))
    for name in ("train.tsv", "valid.tsv", "test.tsv"):
        (tmp_path / name).write_text(body, encoding="utf-8")
    cfg = TrainConfig(out=str(tmp_path / "o"), train=str(tmp_path / "train.tsv"), valid=str(tmp_path / "valid.tsv"),
                      test=str(tmp_path / "test.tsv"), label_col="labels", multi_label=True)
    train, valid, test = D.load_training_data(cfg, log=lambda s: None)
    assert train.labels.count("") == valid.labels.count("") == test.labels.count("") == 20
    cfg.multi_label = False
    with pytest.raises(UserError, match=r"train.tsv, line 2: empty label in column 'labels'"):
        D.load_training_data(cfg, log=lambda s: None)


def test_a_split_of_one_file_counts_its_own_rows(tmp_path):
    """data.valid.rows_read / dropped_empty of a split are the split's; the file's go under file_*."""
    from bertclf.data.dataset import read_labelled, split_valid

    f = tmp_path / "t.tsv"
    f.write_text("text\tlabel\n" + "".join(f"text {i}\t{i % 2}\n" for i in range(40)) + " \t0\n\t1\n",
                 encoding="utf-8")
    ds = read_labelled(f, "text", "label")
    train, valid = split_valid(ds, 0.25, seed=0)
    whole = ds.summary()
    assert (whole["rows_read"], whole["dropped_empty"], whole["rows"]) == (42, 2, 40)
    for part in (train, valid):
        s = part.summary()
        assert (s["rows_read"], s["dropped_empty"], s["rows"]) == (len(part), 0, len(part))
        assert (s["file_rows_read"], s["file_dropped_empty"]) == (42, 2)
    assert len(train) + len(valid) == 40 and train.dropped_empty == 2  # the attribute stays the file's
