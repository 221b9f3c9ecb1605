"""eval: its --errors rows can be found in the file, and it scores exactly as predict does by default."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from bertclf.cli import main
from bertclf.data.metrics import expected_calibration_error

from _cli import bertclf


def _run(capsys, *args) -> str:
    capsys.readouterr()
    assert main([str(a) for a in args]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_errors_name_row_and_line(trained_tiny_dir, nsmc_slices, tmp_path, capsys):
    """A blank line, an empty text and repeated texts part the scored rows from the file's rows and lines: each
    error's row and line point at its own row."""
    lines = nsmc_slices["test"].read_text(encoding="utf-8").splitlines()
    header, body = lines[0], lines[1:81]
    body = body[:10] + ["", "x\t \t1"] + body[10:40] + body[:20] + ["\t\t0"] + body[40:]  # blank, empty, repeats
    f = tmp_path / "test.tsv"
    f.write_text("\n".join([header] + body) + "\n", encoding="utf-8")
    errors = tmp_path / "errors.tsv"
    _run(capsys, "eval", trained_tiny_dir, "--test", f, "--errors", errors, "--precision", "fp32")
    file_lines = f.read_text(encoding="utf-8").splitlines()
    data_rows = [ln for ln in file_lines[1:] if ln.strip()]  # the reader's data rows: blank lines are no rows
    with open(errors, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    assert rows[0][:6] == ["row", "line", "text", "label", "predicted", "score"]
    assert len(rows) > 5
    seen_after_repeat = False
    for r in rows[1:]:
        row, line, text, label = int(r[0]), int(r[1]), r[2], r[3]
        assert file_lines[line - 1].split("\t")[1:] == [text, label]
        assert data_rows[row] == file_lines[line - 1]
        seen_after_repeat |= row > 33
    assert seen_after_repeat  # rows after the blank line, the empty text and the repeats were checked


def test_eval_and_predict_score_alike_in_bf16(trained_tiny_dir, nsmc_slices, tmp_path, capsys):
    """With their default batch sizes eval and predict put each text in the same batch, so bf16 gives the same
    probabilities: eval's ECE equals the ECE of predict's records (bf16 rounding depends on the batch)."""
    out = tmp_path / "p.jsonl"
    _run(capsys, "predict", trained_tiny_dir, "--input", nsmc_slices["test"], "--output", out, "--precision", "bf16")
    recs = [json.loads(ln) for ln in out.read_text(encoding="utf-8").splitlines()]
    rep = json.loads(_run(capsys, "eval", trained_tiny_dir, "--test", nsmc_slices["test"], "--json",
                          "--precision", "bf16"))
    labels = rep["labels"]
    probs = np.array([[r["probabilities"][lab] for lab in labels] for r in recs])
    lines = nsmc_slices["test"].read_text(encoding="utf-8").splitlines()[1:]
    y = np.array([labels.index(ln.split("\t")[2]) for ln in lines])
    assert len(recs) == rep["n"] == len(y)
    assert rep["ece"] == pytest.approx(expected_calibration_error(y, probs), abs=1e-12)


@pytest.fixture(scope="module")
def skewed_named_run(tiny_model_dir, nsmc_slices, tmp_path_factory):
    """A tiny model whose labels are names (neg 80% / pos 20% of its training rows), and the rows it was not
    trained on."""
    from bertclf.train.loop import TrainConfig, train

    d = tmp_path_factory.mktemp("named")
    rows = [ln.split("\t") for ln in nsmc_slices["train"].read_text(encoding="utf-8").splitlines()[1:]]
    neg = [r for r in rows if r[2] == "0"]
    pos = [r for r in rows if r[2] == "1"]
    train_rows = neg[:240] + pos[:60]
    held = neg[240:480] + pos[60:120]  # the same 80/20 shares
    f = d / "train.tsv"
    f.write_text("text\tlabel\n" + "".join(f"{t}\t{'neg' if y == '0' else 'pos'}\n" for _, t, y in train_rows),
                 encoding="utf-8")
    run = d / "run"
    train(TrainConfig(out=str(run), train=str(f), model=str(tiny_model_dir), max_steps=4, batch_size=16, seed=0,
                      precision="fp32"), echo=lambda s: None)
    return run, held


def test_integer_labels_read_as_ids_are_said_and_a_contradicting_order_refused(skewed_named_run, tmp_path, capsys):
    from bertclf.cli import main as cli

    run, held = skewed_named_run
    right, swapped = tmp_path / "ids.tsv", tmp_path / "swapped.tsv"
    right.write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for _, t, y in held), encoding="utf-8")  # 0=neg
    swapped.write_text("text\tlabel\n" + "".join(f"{t}\t{1 - int(y)}\n" for _, t, y in held), encoding="utf-8")
    _run(capsys, "eval", run, "--test", right, "--json")
    capsys.readouterr()
    assert cli(["eval", str(run), "--test", str(right), "--json"]) == 0
    assert f"{right}: labels read as ids: 0=neg, 1=pos" in capsys.readouterr().err
    assert cli(["eval", str(run), "--test", str(swapped), "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"bertclf: error: {swapped}") and "names" in err[0], err


def test_eval_table_json_and_errors_file(trained_tiny_dir, nsmc_slices, tmp_path):
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    from bertclf.data.dataset import read_labelled
    from bertclf.inference.classifier import Classifier

    ds = read_labelled(nsmc_slices["test"], "document", "label")
    # fp32 on both sides: bf16 autocast (the default on AMX CPUs) gives scores that depend on the batch's padding
    clf = Classifier.load(str(trained_tiny_dir), precision="fp32")
    probs = clf.predict_proba(ds.texts)
    y = np.array([clf.labels.index(lab) for lab in ds.labels])
    pred = probs.argmax(1)
    acc, macro = accuracy_score(y, pred), f1_score(y, pred, average="macro")
    cm = confusion_matrix(y, pred)

    errors = tmp_path / "errors.tsv"
    r = bertclf("eval", trained_tiny_dir, "--test", nsmc_slices["test"], "--text-col", "document",
                "--errors", errors, "--precision", "fp32")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    weighted = f1_score(y, pred, average="weighted")
    ece = expected_calibration_error(y, probs)
    assert f"accuracy {acc:.4f}, weighted-F1 {weighted:.4f} on {len(ds)} rows, ECE {ece:.4f} (15 bins)" in lines
    macro_line = next(ln for ln in lines if ln.startswith("macro"))
    assert re.fullmatch(rf"macro\s+\d\.\d{{4}}\s+\d\.\d{{4}}\s+{macro:.4f}\s+{len(ds)}", macro_line), macro_line
    at = lines.index("confusion matrix (rows: true, columns: predicted)")
    for i, lab in enumerate(clf.labels):
        assert lines[at + 2 + i].split() == [lab, *map(str, cm[i])]
    assert lines[-1] == f"misclassified rows written to {errors}"

    with open(errors, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["row", "line", "text", "label", "predicted", "score"] + [f"p_{lab}" for lab in clf.labels]
    wrong = np.flatnonzero(pred != y)
    assert len(rows) - 1 == len(wrong) == cm.sum() - np.trace(cm)
    file_lines = Path(nsmc_slices["test"]).read_text(encoding="utf-8").splitlines()
    for row, i in zip(rows[1:], wrong):
        assert row[2:5] == [ds.texts[i], ds.labels[i], clf.labels[pred[i]]]
        # the row and line find the text in the file (the slice has a header and no blank line or empty text)
        cells = next(csv.reader([file_lines[int(row[1]) - 1]], delimiter="\t"))  # a wholly quoted cell unquoted
        assert int(row[0]) == i and cells[1] == ds.texts[i]
        np.testing.assert_allclose([float(v) for v in row[6:]], probs[i], atol=1e-6)
        assert float(row[5]) == pytest.approx(probs[i].max(), abs=1e-6)

    r = bertclf("eval", trained_tiny_dir, "--test", nsmc_slices["test"], "--text-col", "document", "--json",
                "--precision", "fp32")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["n"] == len(ds) and rep["labels"] == clf.labels
    assert rep["accuracy"] == pytest.approx(acc, abs=1e-12) and rep["macro_f1"] == pytest.approx(macro, abs=1e-12)
    assert rep["confusion_matrix"] == cm.tolist()
