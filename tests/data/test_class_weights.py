"""Imbalanced multi-class: --class-weights auto, --metric, weighted F1 (checked against scikit-learn), the
multi-label metrics and threshold tuning, and a tiny-model run on a real hate-speech slice."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bertclf.errors import UserError
from bertclf.data.labels import LabelMap
from bertclf.train.loop import TrainConfig, train
from bertclf.data.metrics import classification_report, multilabel_report, tune_thresholds
from bertclf.data.task import MultiLabel, SingleLabel, positive_weights, smoothed_inverse_frequency

HATE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "korean-hate-speech" / "train.tsv"


def test_smoothed_inverse_frequency():
    counts = np.array([900, 90, 10])
    w = smoothed_inverse_frequency(counts)
    assert (w * counts).sum() == pytest.approx(counts.sum(), rel=1e-5)  # the average row weight stays 1
    assert w[2] / w[0] == pytest.approx(np.sqrt(90), rel=1e-5)  # sqrt of the frequency ratio, not the ratio
    assert smoothed_inverse_frequency([5, 5]) == pytest.approx([1, 1])
    assert positive_weights(np.array([50, 5, 100]), 100) == pytest.approx([1.0, np.sqrt(19), 1.0])


def test_weighted_loss_weighs_rare_rows_up():
    task = SingleLabel(LabelMap(["a", "b", "c"]))
    y = np.array([0] * 8 + [1, 2])
    logits = torch.zeros(10, 3)
    logits[:, 0] = 2.0  # predicts the common class everywhere: wrong on the two rare rows
    plain = task.loss(logits, torch.from_numpy(y)).item()
    task.set_class_weights(y)
    weighted = task.loss(logits, torch.from_numpy(y)).item()
    assert weighted > plain
    ref = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y), weight=torch.from_numpy(task.weights))
    assert weighted == pytest.approx(ref.item())
    assert task.card()["class_weights"]["c"] > task.card()["class_weights"]["a"]


def test_reports_agree_with_sklearn():
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    rep = classification_report(y, p, ["a", "b", "c"])
    assert rep["weighted_f1"] == pytest.approx(f1_score(y, p, average="weighted"))
    assert rep["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    Y, P = rng.random((100, 5)) < 0.3, rng.random((100, 5)) < 0.3
    ml = multilabel_report(Y, P, list("vwxyz"))
    assert ml["micro_f1"] == pytest.approx(f1_score(Y, P, average="micro"))
    assert ml["macro_f1"] == pytest.approx(f1_score(Y, P, average="macro"))
    assert ml["subset_accuracy"] == pytest.approx(accuracy_score(Y, P)) == ml["accuracy"]
    assert set(ml["per_label"]) == set("vwxyz") and ml["n"] == 100


def test_tune_thresholds_finds_the_separating_cut():
    y = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
    probs = np.array([[0.30, 0.9], [0.25, 0.8], [0.10, 0.7], [0.05, 0.6]])
    th = tune_thresholds(y, probs)
    assert 0.10 < th[0] <= 0.25  # 0.5 would miss both positives
    assert th[1] == 0.5  # no positive row: left at 0.5
    task = MultiLabel(LabelMap(["p", "q"]))
    rep = task.validation_report(y.astype(np.float32), np.log(probs / (1 - probs)))
    assert rep["per_label"]["p"]["f1"] == 1.0 and task.thresholds[0] == th[0]


@pytest.fixture(scope="module")
def hate_slice(tmp_path_factory):
    if not HATE.is_file():
        pytest.skip("korean-hate-speech not in ../shared/data")
    d = tmp_path_factory.mktemp("hate")
    lines = list(csv.reader(open(HATE, encoding="utf-8"), delimiter="\t"))
    header, rows = lines[0], lines[1:]
    for name, part in (("train.tsv", rows[:400]), ("test.tsv", rows[400:500])):
        with open(d / name, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(header)
            w.writerows(part)
    return d


def test_class_weights_auto_and_metric_on_hate_slice(hate_slice, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    card = train(TrainConfig(out=str(out), train=str(hate_slice / "train.tsv"), test=str(hate_slice / "test.tsv"),
                             text_col="comments", label_col="hate", class_weights="auto", metric="weighted_f1",
                             model=str(tiny_model_dir), epochs=2, batch_size=16, lr=2e-3, seed=0, eval_every=5,
                             valid_frac=0.2, select="best",  # the strict best: the weighted F1 picks it
                             ngram="off"),  # the card's validation scores are then the encoder's, as logged
                 echo=lambda s: None)
    assert card["labels"] == ["hate", "none", "offensive"]
    weights = card["classification"]["class_weights"]
    counts = card["data"]["train"]["label_counts"]
    rarest, commonest = min(counts, key=counts.get), max(counts, key=counts.get)
    assert weights[rarest] > weights[commonest]
    assert card["args"]["class_weights"] == "auto" and card["classification"]["metric"] == "weighted_f1"
    assert "weighted_f1" in card["metrics"]["test"]
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    evals = [r for r in log if "valid_score" in r]
    assert len(evals) >= 3
    best = max(r["valid_score"] for r in evals)
    chosen = [r for r in evals if r["best"]][-1]
    assert chosen["valid_score"] == best  # selection by weighted F1
    assert card["metrics"]["valid"]["weighted_f1"] == pytest.approx(best)
    assert json.loads((out / "config.json").read_text())["problem_type"] == "single_label_classification"


def test_bad_flags_are_one_line(tmp_path, tiny_model_dir):
    for kw, pattern in [({"class_weights": "inverse"}, "--class-weights"), ({"metric": "f1"}, "--metric"),
                        ({"label_sep": ""}, "--label-sep")]:
        with pytest.raises(UserError, match=pattern):
            train(TrainConfig(out=str(tmp_path / "o"), train=str(HATE), model=str(tiny_model_dir), **kw),
                  echo=lambda s: None)
