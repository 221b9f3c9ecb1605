"""Multi-label on a real KOTE slice with the tiny model: training, thresholds, config.json problem_type (so the
transformers pipeline applies sigmoid), eval metrics, predict (Python, CLI, --shard, CSV), serve and ONNX."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from _cli import run_cli  # tests/support/_cli.py

from bertclf.errors import UserError
from bertclf.train.loop import TrainConfig, train

KOTE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "kote"


def kote_rows(start: int, n: int) -> list[list[str]]:
    lines = (KOTE / "val.tsv").read_text(encoding="utf-8").splitlines()[start:start + n]
    return [ln.split("\t") for ln in lines]


def write_kote(path: Path, rows, header=True) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        if header:
            w.writerow(["id", "text", "labels"])
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def kote_files(tmp_path_factory):
    if not (KOTE / "val.tsv").is_file():
        pytest.skip("KOTE not in ../shared/data/kote")
    d = tmp_path_factory.mktemp("kote")
    return {"train": write_kote(d / "train.tsv", kote_rows(0, 400)), "test": write_kote(d / "test.tsv", kote_rows(400, 100)),
            "names": KOTE / "labels.txt"}


@pytest.fixture(scope="module")
def ml_dir(kote_files, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ml") / "run"
    train(TrainConfig(out=str(out), train=str(kote_files["train"]), test=str(kote_files["test"]), text_col="text",
                      label_col="labels", multi_label=True, label_names=str(kote_files["names"]),
                      model=str(tiny_model_dir), epochs=2, batch_size=16, lr=3e-3, seed=0, class_weights="auto"),
          echo=lambda s: None)
    return out


def test_multilabel_run_records_task_and_problem_type(ml_dir, kote_files):
    names = kote_files["names"].read_text(encoding="utf-8").splitlines()
    config = json.loads((ml_dir / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert [config["id2label"][str(i)] for i in range(44)] == names  # line i names id i, all 44 kept
    card = json.loads((ml_dir / "bertclf.json").read_text())
    task = card["classification"]
    assert task["type"] == "multi_label" and task["label_sep"] == "," and task["metric"] == "macro_f1"
    assert set(task["thresholds"]) == set(names) and all(0 < t < 1 for t in task["thresholds"].values())
    assert len(set(task["thresholds"].values())) > 1  # tuned per label, not one constant
    assert task["label_values"]["24"] == "없음"
    assert min(task["class_weights"].values()) >= 1.0 and max(task["class_weights"].values()) > 2  # pos_weight
    test = card["metrics"]["test"]
    assert test["n"] == 100 and set(test) >= {"micro_f1", "macro_f1", "per_label", "subset_accuracy"}
    assert test["micro_f1"] > 0.3  # learnt at least which emotions are common; predicting nothing scores 0


def test_pipeline_applies_sigmoid_like_predict(ml_dir):
    from transformers import pipeline

    from bertclf.inference.classifier import Classifier

    texts = ["정말 감동적이에요 최고", "이게 말이 되냐 진짜 화난다"]
    pipe = pipeline("text-classification", model=str(ml_dir), device="cpu", top_k=None)
    # fp32: what transformers.pipeline computes in; ngram=False: the pipeline runs the encoder alone, without the
    # n-gram partner `train --ngram auto` may have kept
    clf = Classifier.load(str(ml_dir), precision="fp32", ngram=False)
    ours = clf.predict(texts)
    for got, mine in zip(pipe(texts), ours):
        scores = {d["label"]: d["score"] for d in got}
        assert sum(scores.values()) > 1.5  # sigmoid per label, not a softmax over 44
        for lab, p in mine["probabilities"].items():
            assert scores[lab] == pytest.approx(p, abs=1e-4)


def test_predict_returns_labels_over_their_thresholds(ml_dir):
    from bertclf.inference.classifier import Classifier

    clf = Classifier.load(str(ml_dir))
    th = clf.card["classification"]["thresholds"]
    out = clf.predict(["정말 감동적이에요 최고", "이게 말이 되냐 진짜 화난다", "ㅋㅋㅋ"])
    for rec in out:
        over = {lab for lab, p in rec["probabilities"].items() if p >= th[lab]}
        assert set(rec["labels"]) == over
        ps = [rec["probabilities"][lab] for lab in rec["labels"]]
        assert ps == sorted(ps, reverse=True)


def test_eval_json_multilabel_and_label_names_or_ids(ml_dir, kote_files, tmp_path):
    r = run_cli("eval", ml_dir, "--test", kote_files["test"], "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    card = json.loads((ml_dir / "bertclf.json").read_text())
    assert rep["micro_f1"] == pytest.approx(card["metrics"]["test"]["micro_f1"], abs=1e-6)
    assert rep["n"] == 100 and rep["per_label"]["없음"]["threshold"] == card["classification"]["thresholds"]["없음"]
    # the same rows with label names instead of ids score the same
    names = kote_files["names"].read_text(encoding="utf-8").splitlines()
    rows = [[i, t, ",".join(names[int(x)] for x in labs.split(","))] for i, t, labs in kote_rows(400, 100)]
    r2 = run_cli("eval", ml_dir, "--test", write_kote(tmp_path / "named.tsv", rows), "--json")
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r2.stdout)["micro_f1"] == pytest.approx(rep["micro_f1"])
    # an unknown label: one line, exit 2
    bad = write_kote(tmp_path / "bad.tsv", [["1", "어쩌라고", "3,99"]])
    r3 = run_cli("eval", ml_dir, "--test", bad)
    assert r3.returncode == 2 and "'99'" in r3.stderr and "bad.tsv" in r3.stderr
    assert len(r3.stderr.strip().splitlines()) == 1


def test_predict_cli_shard_and_csv(ml_dir, kote_files, tmp_path):
    out = tmp_path / "p.jsonl"
    r = run_cli("predict", ml_dir, "--input", kote_files["test"], "--output", out, "--shard", "1/3")
    assert r.returncode == 0, r.stderr
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["row"] for x in recs] == list(range(1, 100, 3))
    assert all(isinstance(x["labels"], list) and len(x["probabilities"]) == 44 for x in recs)
    out_csv = tmp_path / "p.csv"
    r = run_cli("predict", ml_dir, "--input", kote_files["test"], "--output", out_csv)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out_csv, encoding="utf-8")))
    assert len(rows) == 100 and "labels" in rows[0]
    assert rows[1]["labels"] == ",".join(recs[0]["labels"])  # row 1 of the file, as in the shard above


def test_serve_scores_with_sigmoid(ml_dir, tmp_path):
    from test_serve import Server

    from bertclf.inference.classifier import Classifier

    server = Server(ml_dir, tmp_path)  # a real `bertclf serve` on localhost
    try:
        got = server.client.post("/predict", json={"inputs": ["정말 감동적이에요 최고"]}).json()[0]
    finally:
        server.stop()
    want = Classifier.load(str(ml_dir)).predict("정말 감동적이에요 최고")["probabilities"]
    assert {d["label"]: d["score"] for d in got} == pytest.approx(want, abs=1e-5)


def test_onnx_export_keeps_multilabel(ml_dir, tmp_path):
    from bertclf.export.onnx_export import export_onnx
    from bertclf.inference.classifier import Classifier

    export_onnx(str(ml_dir), str(tmp_path / "onnx"), log=lambda s: None)
    onnx_clf, torch_clf = Classifier.load(str(tmp_path / "onnx")), Classifier.load(str(ml_dir), precision="fp32")
    assert onnx_clf.backend == "onnx" and onnx_clf.multi_label
    texts = ["정말 감동적이에요 최고", "이게 말이 되냐 진짜 화난다"]
    a, b = onnx_clf.predict(texts), torch_clf.predict(texts)
    for x, y in zip(a, b):
        assert x["labels"] == y["labels"]
        np.testing.assert_allclose(list(x["probabilities"].values()), list(y["probabilities"].values()), atol=1e-4)


def test_multilabel_bad_inputs(kote_files, tiny_model_dir, tmp_path):
    cfg = dict(train=str(kote_files["train"]), text_col="text", label_col="labels", multi_label=True,
               model=str(tiny_model_dir), epochs=1, batch_size=16, max_steps=1)
    with pytest.raises(UserError, match="unknown to the model") as e:  # ids past labels.txt
        short = tmp_path / "short.txt"
        short.write_text("a\nb\n", encoding="utf-8")
        train(TrainConfig(out=str(tmp_path / "o1"), label_names=str(short), **cfg), echo=lambda s: None)
    assert "train.tsv" in str(e.value)
    with pytest.raises(UserError, match="--label-names .*line 2.*repeats"):
        dup = tmp_path / "dup.txt"
        dup.write_text("a\na\n", encoding="utf-8")
        train(TrainConfig(out=str(tmp_path / "o2"), label_names=str(dup), **cfg), echo=lambda s: None)
    with pytest.raises(UserError, match="--metric"):
        train(TrainConfig(out=str(tmp_path / "o3"), train=cfg["train"], model=cfg["model"], metric="micro_f1"),
              echo=lambda s: None)


def test_report_shows_per_label_scores(ml_dir):
    from bertclf.report import write_report

    html = Path(write_report([str(ml_dir)])).read_text(encoding="utf-8")  # as `bertclf train` writes it
    assert 'id="per-label"' in html and "없음" in html and "subset accuracy" in html
    data = json.loads((ml_dir / "report" / "data.json").read_text(encoding="utf-8"))
    assert data["errors"] == {}  # no single-label section tripped over multi-hot labels


def test_rows_without_labels_train_and_score_as_all_zero_rows(kote_files, tiny_model_dir, tmp_path):
    """A multi-label row may have no labels: an empty cell (as well as a cell of separators only, ",") reads as
    none. A tiny run on KOTE rows, every 5th train row and every 4th test row emptied: the run trains, its card
    counts the empty rows, the class weights and the test metrics count them as rows with every label negative."""
    from bertclf.data.task import task_from_card

    def emptied(rows, every, cell):
        return [[i, t, cell if n % every == 0 else labs] for n, (i, t, labs) in enumerate(rows)]

    tr = write_kote(tmp_path / "train.tsv", emptied(kote_rows(0, 200), 5, ""))
    te_rows = emptied(kote_rows(400, 40), 4, "")
    te_rows[1][2] = ","  # separators only: no labels either
    te = write_kote(tmp_path / "test.tsv", te_rows)
    out = tmp_path / "run"
    card = train(TrainConfig(out=str(out), train=str(tr), test=str(te), text_col="text", label_col="labels",
                             multi_label=True, label_names=str(kote_files["names"]), model=str(tiny_model_dir),
                             epochs=1, batch_size=16, max_steps=2, seed=0, class_weights="auto"),
                 echo=lambda s: None)
    data = card["data"]
    assert data["train"]["label_counts"][""] + data["valid"]["label_counts"].get("", 0) == 40
    assert data["test"]["label_counts"] == {**data["test"]["label_counts"], "": 10, ",": 1}
    names = kote_files["names"].read_text(encoding="utf-8").splitlines()
    task = task_from_card(card, names)
    y = task.encode([r[2] for r in te_rows], "test.tsv")
    assert y.shape == (40, 44) and (y.sum(1) == 0).sum() == 11  # 10 empty cells and the ","
    truth = [len(set(r[2].split(","))) if r[2] not in ("", ",") else 0 for r in te_rows]
    assert card["metrics"]["test"]["n"] == 40
    assert card["metrics"]["test"]["labels_per_row"]["true"] == pytest.approx(np.mean(truth))
    # pos_weight sqrt(negatives / positives) over all training rows, the empty ones negatives for every label
    counts = data["train"]["label_counts"]
    rows = sum(counts.values())
    pos = np.zeros(44)
    for cell, n in counts.items():
        for lab in {x for x in cell.split(",") if x}:
            pos[int(lab)] += n
    want = np.maximum(np.sqrt((rows - np.maximum(pos, 1)) / np.maximum(pos, 1)), 1.0)
    got = [card["classification"]["class_weights"][name] for name in names]
    np.testing.assert_allclose(got, want, rtol=1e-5)
