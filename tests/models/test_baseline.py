"""`bertclf baseline`: TF-IDF + logistic regression on the same rows, the yardstick every accuracy claim is set
against."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from _cli import bertclf


def test_baseline_learns_and_stores_its_result(nsmc_slices, tmp_path):
    from bertclf.data.dataset import read_labelled

    test_labels = read_labelled(nsmc_slices["test"], "document", "label").labels
    majority = max(test_labels.count(lab) for lab in set(test_labels)) / len(test_labels)
    r = bertclf("baseline", "--train", nsmc_slices["train"], "--test", nsmc_slices["test"], "--text-col",
                "document", "--out", tmp_path, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res == json.loads((tmp_path / "baseline.json").read_text())
    assert res["n_train"] == 3000 and res["n_test"] == 500
    cm = np.array(res["report"]["confusion_matrix"])
    assert res["accuracy"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-12) and cm.sum() == 500
    # the promise of a yardstick: it beats always answering the majority class (TF-IDF on 3,000 reviews does)
    assert res["accuracy"] > majority + 0.1, (res["accuracy"], majority)

    r = bertclf("baseline", "--train", nsmc_slices["train"], "--test", nsmc_slices["test"], "--text-col", "document")
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(rf"TF-IDF \+ logistic regression: accuracy {res['accuracy']:.4f}, macro-F1 "
                        rf"{res['macro_f1']:.4f}, weighted-F1 {res['weighted_f1']:.4f} on 500 test rows "
                        rf"\(trained on 3000 rows in \d+\.\ds\)\n", r.stdout)
