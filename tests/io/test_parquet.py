"""Parquet and Arrow inputs (bertclf/io/columnar.py): the NSMC slice written as TSV, as Parquet (one file, a folder
of two parts, a glob of them) and as a `datasets.save_to_disk` folder reads to the same rows; train, eval, predict
and baseline give the same results on either; each bad input is one line naming the file and column (and row).

The Arrow folder is written with pyarrow as `datasets.save_to_disk` writes it (the `datasets` package is no
dependency): data-00000-of-00001.arrow, an Arrow IPC *stream*, with state.json listing it and dataset_info.json.
"""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertclf.cli import main
from bertclf.data.dataset import read_labelled
from bertclf.io.rows import iter_rows


def _table(tsv) -> pa.Table:
    """The TSV's rows as the reader gives them, typed as a user's Parquet would be: id and label int64, an empty
    document null."""
    rows = [r for _n, r in iter_rows(tsv, ["id", "document", "label"])]
    return pa.table({"id": pa.array([int(r["id"]) for r in rows], pa.int64()),
                     "document": pa.array([r["document"] or None for r in rows], pa.string()),
                     "label": pa.array([int(r["label"]) for r in rows], pa.int64())})


def _save_to_disk_layout(table: pa.Table, folder) -> None:
    folder.mkdir()
    name = "data-00000-of-00001.arrow"
    with pa.ipc.new_stream(folder / name, table.schema) as w:
        for batch in table.to_batches(max_chunksize=1000):
            w.write_batch(batch)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": name}], "_fingerprint": "0",
                                                   "_format_columns": None, "_split": None}))
    (folder / "dataset_info.json").write_text(json.dumps({"features": {}}))


def _with_empty_texts(tsv, out):
    """The slice with two reviews emptied (one blank, one of spaces), as real data has: the Parquet gets a null
    and a string of spaces there, which must be dropped and counted like the TSV's."""
    lines = tsv.read_text(encoding="utf-8").splitlines(keepends=True)
    for n, blank in ((5, ""), (17, "   ")):
        rid, _doc, label = lines[n].split("\t")
        lines[n] = f"{rid}\t{blank}\t{label}"
    out.write_text("".join(lines), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def sources(nsmc_slices, tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("columnar")
    tsv = _with_empty_texts(nsmc_slices["train"], d / "train.tsv")
    train, test = _table(tsv), _table(nsmc_slices["test"])
    pq.write_table(train, d / "train.parquet", row_group_size=700)  # several row groups: read batch by batch
    pq.write_table(test, d / "test.parquet")
    (d / "parts").mkdir()
    pq.write_table(train.slice(0, 1200), d / "parts" / "part-00000.parquet")
    pq.write_table(train.slice(1200), d / "parts" / "part-00001.parquet")
    (d / "parts" / "_SUCCESS").write_text("")  # Spark's marker file: not data
    _save_to_disk_layout(train, d / "hf")
    return {"dir": d, "tsv": tsv, "test_tsv": nsmc_slices["test"], "parquet": d / "train.parquet",
            "test": d / "test.parquet", "folder": d / "parts", "glob": f"{d}/parts/*.parquet", "hf": d / "hf",
            "table": train}


def test_every_columnar_source_reads_as_the_tsv(sources):
    tsv = read_labelled(sources["tsv"], "document", "label")
    assert tsv.dropped_empty == 2  # the slice has empty reviews: nulls in the Parquet must be dropped alike
    sha = {}
    for kind in ("parquet", "folder", "glob", "hf"):
        ds = read_labelled(sources[kind], "document", "label")
        assert (ds.texts, ds.labels) == (tsv.texts, tsv.labels), kind
        assert (ds.rows_read, ds.dropped_empty) == (tsv.rows_read, tsv.dropped_empty), kind
        sha[kind] = ds.sha256
    assert sha["folder"] == sha["glob"] != sha["parquet"]  # a folder and its glob: the same files hashed together


def test_a_changed_or_added_part_changes_the_hash(sources, tmp_path):
    """What --resume compares: any part rewritten, or one more part, is other data."""
    from bertclf.io.rows import sha256_data

    parts = tmp_path / "parts"
    parts.mkdir()
    table = sources["table"]
    pq.write_table(table.slice(0, 10), parts / "a.parquet")
    first = sha256_data(parts)
    pq.write_table(table.slice(0, 10).set_column(2, "label", pa.array([1] * 10)), parts / "a.parquet")
    second = sha256_data(parts)
    pq.write_table(table.slice(10, 5), parts / "b.parquet")
    assert len({first, second, sha256_data(parts)}) == 3


def test_rows_stream_a_batch_at_a_time(sources, tmp_path, monkeypatch):
    """predict's path: the first row comes before the file is read; Arrow holds a batch, not the file."""
    import bertclf.io.columnar as columnar

    monkeypatch.setattr(columnar, "BATCH_ROWS", 1000)  # a 30th of the file (8192 in use: a few MB of text)
    big = pa.concat_tables([sources["table"]] * 10)  # 30,000 rows in 30 row groups
    pq.write_table(big, tmp_path / "big.parquet", row_group_size=1000)
    before = pa.total_allocated_bytes()
    rows = iter_rows(tmp_path / "big.parquet", ["document"])
    assert next(rows)[0] == 1
    held = pa.total_allocated_bytes() - before
    assert held < big.nbytes / 5, (held, big.nbytes)
    assert sum(1 for _ in rows) + 1 == big.num_rows  # rows numbered over all row groups


@pytest.fixture(scope="module")
def runs(sources, tiny_model_dir, tmp_path_factory) -> dict:
    """The same short training (2 steps) from the TSV and from the Parquet files."""
    d = tmp_path_factory.mktemp("runs")
    out = {}
    for kind, train, test in (("tsv", sources["tsv"], sources["test_tsv"]),
                              ("parquet", sources["parquet"], sources["test"])):
        out[kind] = d / kind
        rc = main(["train", "--train", str(train), "--test", str(test), "--text-col", "document", "--model",
                   str(tiny_model_dir), "--batch-size", "16", "--max-steps", "2", "--seed", "0", "--out", str(out[kind])])
        assert rc == 0
    return out


def test_train_on_parquet_has_the_tsv_label_map_and_counts(runs):
    cards = {k: json.loads((d / "bertclf.json").read_text()) for k, d in runs.items()}
    assert cards["parquet"]["labels"] == cards["tsv"]["labels"] == ["0", "1"]  # int64 labels read as the TSV's
    assert cards["parquet"]["classification"] == cards["tsv"]["classification"]
    for split in ("train", "valid", "test"):
        a, b = cards["tsv"]["data"][split], cards["parquet"]["data"][split]
        assert {k: v for k, v in b.items() if k not in ("source", "sha256")} == \
            {k: v for k, v in a.items() if k not in ("source", "sha256")}, split
    assert cards["parquet"]["data"]["train"]["file_dropped_empty"] == 2


def test_predict_and_eval_on_parquet_equal_tsv(runs, sources, tmp_path, capsys):
    model = str(runs["parquet"])
    for kind, path in (("tsv", sources["test_tsv"]), ("parquet", sources["test"])):
        assert main(["predict", model, "--input", str(path), "--output", str(tmp_path / f"{kind}.jsonl")]) == 0
        assert main(["eval", model, "--test", str(path), "--json", "--errors", str(tmp_path / f"{kind}.err.tsv")]) == 0
    assert (tmp_path / "parquet.jsonl").read_text() == (tmp_path / "tsv.jsonl").read_text()
    err = {k: (tmp_path / f"{k}.err.tsv").read_text().splitlines() for k in ("tsv", "parquet")}
    assert len(err["parquet"]) == len(err["tsv"]) > 1
    # the "line" column: the file line in a TSV (1 + the header), the 1-based row number in Parquet
    row_tsv, line_tsv = err["tsv"][1].split("\t")[:2]
    row_pq, line_pq = err["parquet"][1].split("\t")[:2]
    assert row_tsv == row_pq and int(line_tsv) == int(line_pq) + 1 == int(row_pq) + 2


def test_baseline_on_a_parquet_folder_equals_tsv(sources, capsys):
    scores = {}
    for kind in ("tsv", "folder"):
        capsys.readouterr()
        assert main(["baseline", "--train", str(sources[kind]), "--text-col", "document", "--json"]) == 0
        res = json.loads(capsys.readouterr().out)
        scores[kind] = {k: v for k, v in res.items() if isinstance(v, (int, float)) and k != "seconds"}
    assert scores["folder"] == scores["tsv"] and scores["tsv"]


def _one_line_error(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("case", ["null-label", "missing-column", "int-text", "float-label", "not-parquet",
                                  "empty-glob", "dataset-dict"])
def test_bad_columnar_input_is_one_line(case, tmp_path, capsys):
    texts = pa.array(["좋다", "별로", "최고", "싫다"])
    path, words = tmp_path / "bad.parquet", ["bad.parquet"]
    if case == "null-label":
        pq.write_table(pa.table({"text": texts, "label": pa.array([1, 0, None, 0])}), path)
        words += ["row 3", "empty label", "'label'"]
    elif case == "missing-column":
        pq.write_table(pa.table({"text": texts, "stars": pa.array([1, 0, 1, 0])}), path)
        words += ["'label'", "columns: text, stars", "--label-col"]
    elif case == "int-text":
        pq.write_table(pa.table({"text": pa.array([1, 2, 3, 4]), "label": pa.array([1, 0, 1, 0])}), path)
        words += ["'text'", "int64", "strings"]
    elif case == "float-label":
        pq.write_table(pa.table({"text": texts, "label": pa.array([1.0, 0.0, None, 0.0])}), path)
        words += ["'label'", "double", "integers"]
    elif case == "not-parquet":
        path.write_text("text\tlabel\n좋다\t1\n")
        words += ["not a Parquet file"]
    elif case == "empty-glob":
        path, words = tmp_path / "none" / "*.parquet", ["*.parquet", "matches no file"]
    elif case == "dataset-dict":
        path, words = tmp_path / "dd", ["dd", "DatasetDict", "train"]
        (path / "train").mkdir(parents=True)
        (path / "dataset_dict.json").write_text('{"splits": ["train"]}')
    err = _one_line_error(capsys, ["baseline", "--train", str(path)])
    assert all(w in err for w in words), err
