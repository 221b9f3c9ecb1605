"""eval: its --errors rows can be found in the file, and it scores exactly as predict does by default."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from bertclf.cli import main
from bertclf.metrics import expected_calibration_error


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
