"""Labels: names, raw training values and ids all read back (bertclf/labels.py), --label-names files, multi-label
cells, NFC; eval of a model trained on named labels with a file holding its label ids (issue 14, item 1)."""
import json
import shutil
import subprocess
import sys
import unicodedata

import numpy as np
import pytest

from bertclf.errors import UserError
from bertclf.labels import LabelMap, read_label_names, split_cell
from bertclf.task import MultiLabel, SingleLabel, task_from_card


def test_resolve_names_raw_values_and_ids():
    lm = LabelMap(["negative", "positive"], {"0": "negative", "1": "positive"})
    assert lm.encode(["positive", "0", "1", "negative"], "f") == [1, 0, 1, 0]
    old = LabelMap(["negative", "positive"])  # a model from before raw values were recorded: ids still read
    assert old.encode(["1", "0"], "f") == [1, 0]
    with pytest.raises(UserError, match=r"f: label\(s\) '2' unknown to the model.*ids 0-1"):
        old.encode(["2"], "f")


def test_integer_names_are_never_read_as_ids():
    lm = LabelMap.from_labels(["10", "2", "2", "1"], "f")
    assert lm.names == ["1", "2", "10"]
    assert lm.encode(["1", "10"], "f") == [0, 2]  # "1" is the name 1, not id 1
    with pytest.raises(UserError, match="'0'") as e:
        lm.encode(["0"], "test.tsv")
    assert "ids" not in str(e.value)


def test_names_are_nfc_normalised():
    nfd = unicodedata.normalize("NFD", "없음")
    assert nfd != "없음"
    lm = LabelMap.from_labels(["없음", "화남"], "f")
    assert lm.encode([nfd], "f") == [0]
    assert LabelMap([nfd, "화남"]).names[0] == "없음"


def test_label_names_file(tmp_path):
    f = tmp_path / "names.txt"
    f.write_text("\ufeff불평/불만\n환영/호의\n\n", encoding="utf-8")  # BOM and trailing blank lines are fine
    assert read_label_names(f) == ["불평/불만", "환영/호의"]
    lm = LabelMap.from_names_file(f)
    assert lm.encode(["1", "불평/불만"], "f") == [1, 0]
    for text, pattern in [("a\n\nb\n", "line 2: empty name"), ("a\nb\na\n", "line 3: 'a' repeats line 1"),
                          ("a\n", "at least two")]:
        f.write_text(text, encoding="utf-8")
        with pytest.raises(UserError, match=pattern):
            read_label_names(f)
    with pytest.raises(UserError, match="--label-names .*not found"):
        read_label_names(tmp_path / "missing.txt")


def test_split_cell():
    assert split_cell(" 0, 6,,10 ,6", ",") == ["0", "6", "10"]
    assert split_cell("a|b", "|") == ["a", "b"]
    assert split_cell("", ",") == []


def test_task_from_card_defaults_to_single_label():
    t = task_from_card({}, ["negative", "positive"])
    assert isinstance(t, SingleLabel) and t.metric == "accuracy" and t.weights is None
    card = {"classification": {"type": "multi_label", "label_sep": "|", "thresholds": {"a": 0.3, "b": 0.7},
                     "label_values": {"0": "a", "1": "b"}}}
    m = task_from_card(card, ["a", "b"])
    assert isinstance(m, MultiLabel) and m.sep == "|"
    np.testing.assert_array_equal(m.encode(["0|b", "a"], "f"), [[1, 1], [1, 0]])
    np.testing.assert_array_equal(m.decide(np.array([[0.35, 0.65], [0.2, 0.9]])), [[True, False], [False, True]])


def test_eval_reads_label_ids_of_a_model_with_named_labels(trained_tiny_dir, nsmc_slices, tmp_path):
    """The issue's case: a model that knows negative/positive, scored on an NSMC-format file (0/1)."""
    d = tmp_path / "named"
    shutil.copytree(trained_tiny_dir, d)
    config = json.loads((d / "config.json").read_text())
    config["id2label"] = {"0": "negative", "1": "positive"}
    config["label2id"] = {"negative": 0, "positive": 1}
    (d / "config.json").write_text(json.dumps(config))
    card = json.loads((d / "bertclf.json").read_text())
    card["labels"] = ["negative", "positive"]
    card.pop("classification", None)  # as a model trained before label values were recorded
    (d / "bertclf.json").write_text(json.dumps(card))

    def run(*args):
        return subprocess.run([sys.executable, "-m", "bertclf", *map(str, args)], capture_output=True, text=True,
                              timeout=300)

    named = run("eval", d, "--test", nsmc_slices["test"], "--text-col", "document", "--json")
    assert named.returncode == 0, named.stderr
    plain = run("eval", trained_tiny_dir, "--test", nsmc_slices["test"], "--text-col", "document", "--json")
    a, b = json.loads(named.stdout), json.loads(plain.stdout)
    assert a["n"] == b["n"] == 500 and a["accuracy"] == b["accuracy"] and "weighted_f1" in a
    bad = tmp_path / "bad.tsv"
    bad.write_text("document\tlabel\n좋아요\t7\n", encoding="utf-8")
    r = run("eval", d, "--test", bad, "--text-col", "document")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "bad.tsv" in r.stderr and "'7'" in r.stderr


def test_baseline_with_a_named_label_no_training_row_has(nsmc_slices, tmp_path):
    """--label-names with a label the training rows never use: scikit-learn's probability columns are only the
    classes it saw, and reading them as label ids shifted every prediction by one (accuracy 0.62 -> 0.16)."""
    from bertclf.baseline import run_baseline
    from bertclf.data import read_labelled

    ids = {}
    for part in ("train", "test"):
        ds = read_labelled(nsmc_slices[part], "document", "label")
        ids[part] = tmp_path / f"{part}.tsv"
        ids[part].write_text("text\tlabel\n" + "".join(f"{t}\t{int(y) + 1}\n" for t, y in zip(ds.texts, ds.labels)),
                             encoding="utf-8")
    names = tmp_path / "names.txt"
    names.write_text("never\nnegative\npositive\n", encoding="utf-8")
    quiet = dict(log=lambda s: None)
    plain = run_baseline(train=str(nsmc_slices["train"]), test=str(nsmc_slices["test"]), text_col="document", **quiet)
    named = run_baseline(train=str(ids["train"]), test=str(ids["test"]), label_names=str(names), **quiet)
    assert named["accuracy"] == plain["accuracy"] > 0.6
    cm = np.array(named["report"]["confusion_matrix"])
    assert cm.shape == (3, 3) and cm[:, 0].sum() == 0 and cm[0].sum() == 0  # nothing predicted as the unused label
    assert cm[1:, 1:].tolist() == plain["report"]["confusion_matrix"]


def test_eval_data_nsmc_scores_a_model_trained_on_the_nsmc_file(trained_tiny_dir, nsmc_dir, nsmc_slices):
    """A model trained with --train on NSMC's own file knows the cells 0/1, not the names --data nsmc gives them
    (negative/positive): eval --data nsmc reads the cells then, and scores what --test on the file scores."""
    from bertclf.evaluate import evaluate

    quiet = dict(log=lambda s: None, precision="fp32")
    rep = evaluate(str(trained_tiny_dir), data="nsmc", data_dir=str(nsmc_dir), **quiet)
    same = evaluate(str(trained_tiny_dir), test=str(nsmc_dir / "ratings_test.txt"), text_col="document", **quiet)
    assert rep["labels"] == ["0", "1"] and rep["n"] == same["n"] == 49_997
    assert rep["accuracy"] == same["accuracy"] and rep["confusion_matrix"] == same["confusion_matrix"]
