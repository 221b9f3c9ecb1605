"""benchmarks/quality/blend_rules.py: each prior's validation choice scored on held-out rows (issue 30's weight rule)."""
import json

import numpy as np

from benchmarks.quality import blend_rules as BR


def binary(rng, y, accuracy):
    right = rng.random(len(y)) < accuracy
    conf = 0.5 + 0.5 * rng.beta(2, 2, len(y))
    p_true = np.where(right, conf, 1 - conf)
    p = np.empty((len(y), 2))
    p[np.arange(len(y)), y], p[np.arange(len(y)), 1 - y] = p_true, 1 - p_true
    return p


def test_the_table_scores_each_priors_choice_held_out_and_the_worst_gap(tmp_path):
    """A partner far weaker than the encoder: every prior's blend is scored against the encoder alone, and the
    worst gap column is the row's lowest."""
    rng = np.random.default_rng(0)
    run = tmp_path / "runs" / "nsmc"
    run.mkdir(parents=True)
    (run / "bertclf.json").write_text(json.dumps({"classification": {"type": "single_label", "metric": "accuracy"},
                                                  "labels": ["0", "1"]}))
    yv, yt = rng.integers(0, 2, 300), rng.integers(0, 2, 3000)
    np.savez(tmp_path / "blend_nsmc.npz", valid_y=yv, test_y=yt, valid_encoder=binary(rng, yv, 0.9),
             valid_ngram=binary(rng, yv, 0.6), test_encoder=binary(rng, yt, 0.9), test_ngram=binary(rng, yt, 0.6))
    lines = BR.table(tmp_path).splitlines()
    rows = {line.split(" | ")[0].strip("| "): line for line in lines[2:]}
    assert set(rows) == {"encoder alone", "partner alone"} | {f"nearest {p} within 1 SE of the lowest log-loss"
                                                              for p in BR.PRIORS}
    encoder = float(rows["encoder alone"].split(" | ")[1].split(", ")[1])
    assert 0.85 < encoder < 0.95
    for prior in BR.PRIORS:
        cells = rows[f"nearest {prior} within 1 SE of the lowest log-loss"].strip("| ").split(" | ")
        weight, score = float(cells[1].split(" ")[0]), float(cells[1].split(", ")[1])
        gap = float(cells[-1].split(" ")[0])
        assert weight >= prior - 1e-9 or "not kept" in cells[1]  # the rows move it toward the better encoder
        assert abs(gap - 100 * (score - encoder)) < 0.051  # the encoder is the better side here
    assert "ECE" in lines[0] and "0.0" in BR.scan(tmp_path)
    ece_row = BR.calibration(tmp_path, 0.7).splitlines()[2].split(" | ")
    assert ece_row[0] == "| nsmc" and ece_row[1] == "3,000" and 0 <= float(ece_row[-1].strip(" |")) < 0.1
    richer = [line.split(" | ") for line in BR.calibrators(tmp_path, 0.7).splitlines()[2:]]
    assert [r[2] for r in richer] == ["matrix scaling", "stacker of both sides", "isotonic, top label"]
    assert all(0 <= float(r[3].split(", ")[0]) < 0.1 and 0.85 < float(r[3].split(", ")[1]) for r in richer)
