"""Real fine-tunes of the builtin me5-small on CPU, one per new task type: imbalanced 3-class hate speech with
class weights, and multi-label KOTE emotions with --label-names. Each a few minutes on 2 idle cores.

The floors sit well above what a constant answer scores (noted beside each) and below the TF-IDF + LR
baseline that benchmarks/quality/datasets.py compares against on the full splits."""
import csv
from pathlib import Path

import pytest

from bertclf.train.loop import TrainConfig, train

pytestmark = [pytest.mark.slow, pytest.mark.whole_cpu]
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TRAIN = dict(model="me5-small", epochs=1, batch_size=32, seed=0, max_length=96)


def write(path: Path, header, rows) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return path


def test_me5_hate_speech_with_class_weights(me5_dir, tmp_path):
    src = SHARED / "korean-hate-speech" / "train.tsv"
    if not src.is_file():
        pytest.skip("korean-hate-speech not in ../shared/data")
    lines = list(csv.reader(open(src, encoding="utf-8"), delimiter="\t"))
    header, rows = lines[0], lines[1:]
    tr, te = write(tmp_path / "tr.tsv", header, rows[:2000]), write(tmp_path / "te.tsv", header, rows[-500:])
    card = train(TrainConfig(out=str(tmp_path / "run"), train=str(tr), test=str(te), text_col="comments",
                             label_col="hate", class_weights="auto", metric="weighted_f1", **TRAIN), echo=print)
    test = card["metrics"]["test"]
    assert test["n"] == 500
    # always answering the commonest class ("none", ~45% of rows) scores weighted F1 ~0.28, macro F1 ~0.21
    assert test["weighted_f1"] >= 0.45 and test["macro_f1"] >= 0.40, test
    assert card["classification"]["class_weights"]["hate"] > card["classification"]["class_weights"]["none"]


def test_me5_kote_multi_label(me5_dir, tmp_path):
    kote = SHARED / "kote"
    if not (kote / "val.tsv").is_file():
        pytest.skip("KOTE not in ../shared/data")
    rows = [ln.split("\t") for ln in (kote / "val.tsv").read_text(encoding="utf-8").splitlines()]
    tr = write(tmp_path / "tr.tsv", ["id", "text", "labels"], rows[:1500])
    te = write(tmp_path / "te.tsv", ["id", "text", "labels"], rows[-500:])
    card = train(TrainConfig(out=str(tmp_path / "run"), train=str(tr), test=str(te), text_col="text",
                             label_col="labels", multi_label=True, label_names=str(kote / "labels.txt"),
                             **(TRAIN | {"epochs": 2})), echo=print)
    test = card["metrics"]["test"]
    assert test["n"] == 500 and len(test["per_label"]) == 44
    # The best constant answer (the labels whose training prior passes one threshold) scores macro-F1 0.286
    # (threshold 0.05) and micro-F1 0.403 (threshold 0.2) on these rows. The recipe before issue 14's defaults
    # (lr 5e-5, random head bias, 5% validation) stalled at the priors: 0.299 / 0.305. The defaults now
    # (head at lr 1e-3 starting from the priors, ~1,000-row validation for the thresholds): macro 0.376,
    # micro 0.404 on 2,000 training rows; on these 1,500 (to keep CI's time, 53 s instead of 71 s) macro 0.370,
    # micro 0.398 (AMX CPU, bf16, 2026-11-28). Macro-F1 is what the thresholds are tuned for; 2 epochs (76 steps)
    # keep this test short, the default epochs (~800 steps) score higher (benchmarks/quality/recipe_sweep.md).
    assert test["macro_f1"] > 0.33 and test["micro_f1"] > 0.37, {k: test[k] for k in ("micro_f1", "macro_f1")}
