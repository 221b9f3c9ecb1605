"""One record pipeline for every way `bertclf predict` runs (predict_io: select_rows -> classify ->
write_records): the rows a model reads from a file follow its training's column spec (a header-less file needs
no --columns again), for plain predict and for --explain alike.

The model: the tiny model fine-tuned for a few seconds on 200 header-less KOTE rows (--columns id,text,labels,
multi-label), which tests/inference/test_ray_predict.py trains too (train_headerless_kote)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from bertclf.cli import main

KOTE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "kote"
COLUMNS = "id,text,labels"


def kote_lines(start: int, n: int) -> list[str]:
    """Lines of KOTE's val.tsv: header-less id<TAB>text<TAB>labels rows."""
    if not (KOTE / "val.tsv").is_file():
        pytest.skip("KOTE not in ../shared/data/kote")
    return (KOTE / "val.tsv").read_text(encoding="utf-8").splitlines()[start:start + n]


def train_headerless_kote(tiny_model_dir: Path, out: Path) -> Path:
    from bertclf.train.loop import TrainConfig, train

    data = out.parent / "kote_train.tsv"
    data.write_text("\n".join(kote_lines(0, 200)) + "\n", encoding="utf-8")
    train(TrainConfig(out=str(out), train=str(data), columns=COLUMNS, label_col="labels", multi_label=True,
                      label_names=str(KOTE / "labels.txt"), model=str(tiny_model_dir), epochs=1, batch_size=16,
                      lr=3e-3, seed=0), echo=lambda s: None)
    return out


@pytest.fixture(scope="module")
def headerless_ml(tiny_model_dir, tmp_path_factory) -> Path:
    return train_headerless_kote(tiny_model_dir, tmp_path_factory.mktemp("headerless") / "run")


@pytest.fixture(scope="module")
def headerless_input(tmp_path_factory) -> tuple[Path, list[str]]:
    """(header-less file of 30 KOTE rows the model did not train on, their texts)."""
    lines = kote_lines(400, 30)
    path = tmp_path_factory.mktemp("input") / "in.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, [row[1] for row in csv.reader(lines, delimiter="\t")]  # two are quoted, CSV-style


@pytest.mark.parametrize("ext", ["jsonl", "csv"])
def test_predict_reads_a_headerless_file_with_the_models_columns(headerless_ml, headerless_input, tmp_path, ext):
    path, texts = headerless_input
    given, default = tmp_path / f"given.{ext}", tmp_path / f"default.{ext}"
    assert main(["predict", str(headerless_ml), "--input", str(path), "--output", str(given),
                 "--columns", COLUMNS]) == 0
    # before: the first row was read as a header without a 'text' column, and predict stopped
    assert main(["predict", str(headerless_ml), "--input", str(path), "--output", str(default)]) == 0
    assert default.read_text(encoding="utf-8") == given.read_text(encoding="utf-8")
    if ext == "jsonl":
        recs = [json.loads(x) for x in default.read_text(encoding="utf-8").splitlines()]
        assert [(r["row"], r["text"]) for r in recs] == list(enumerate(texts))  # the first line is a row


def test_explain_reads_a_headerless_file_with_the_models_columns(headerless_ml, headerless_input, tmp_path):
    pytest.importorskip("captum")
    from bertclf.inference.explain import explain_to
    from bertclf.inference.classifier import Classifier

    path, texts = headerless_input
    clf = Classifier.load(str(headerless_ml), precision="fp32")  # fp32: 4x faster than bf16 on a CPU here
    given, default = tmp_path / "given.jsonl", tmp_path / "default.jsonl"
    few = {"shard": (0, 15), "steps": 4}  # 2 rows: enough to see which rows and columns were read
    assert explain_to(clf, input_path=str(path), output_path=str(given), columns=COLUMNS.split(","), **few) == 2
    assert explain_to(clf, input_path=str(path), output_path=str(default), **few) == 2
    recs = [json.loads(x) for x in default.read_text(encoding="utf-8").splitlines()]
    assert [(r["row"], r["text"]) for r in recs] == [(0, texts[0]), (15, texts[15])]
    assert default.read_text(encoding="utf-8") == given.read_text(encoding="utf-8")


def test_a_text_list_is_not_read_with_the_models_columns(headerless_ml, headerless_input, tmp_path):
    """The training's column names describe its table files: a .txt of one text per line stays a text list."""
    _, texts = headerless_input
    inp, out = tmp_path / "texts.txt", tmp_path / "out.jsonl"
    inp.write_text("\n".join(texts[:5]) + "\n", encoding="utf-8")
    assert main(["predict", str(headerless_ml), "--input", str(inp), "--output", str(out)]) == 0
    assert [json.loads(x)["text"] for x in out.read_text(encoding="utf-8").splitlines()] == texts[:5]
