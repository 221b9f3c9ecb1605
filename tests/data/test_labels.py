"""Labels: names, raw training values and ids all read back (bertclf/data/labels.py), --label-names files, multi-label
cells, NFC; eval of a model trained on named labels with a file holding its label ids (issue 14, item 1)."""
import json
import shutil
import subprocess
import sys
import unicodedata

import numpy as np
import pytest

from bertclf.errors import UserError
from bertclf.data.labels import LabelMap, read_label_names, split_cell
from bertclf.data.task import MultiLabel, SingleLabel, task_from_card


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
    from bertclf.models.baseline import run_baseline
    from bertclf.data.dataset import read_labelled

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
    from bertclf.inference.evaluate import evaluate

    quiet = dict(log=lambda s: None, precision="fp32")
    rep = evaluate(str(trained_tiny_dir), data="nsmc", data_dir=str(nsmc_dir), **quiet)
    same = evaluate(str(trained_tiny_dir), test=str(nsmc_dir / "ratings_test.txt"), text_col="document", **quiet)
    assert rep["labels"] == ["0", "1"] and rep["n"] == same["n"] == 49_997
    assert rep["accuracy"] == same["accuracy"] and rep["confusion_matrix"] == same["confusion_matrix"]


# ---- label ids: said in one line, refused when another numbering fits the training counts much better --------

HATE_NAMES = ["hate", "none", "offensive"]  # a string-label model: ids in alphabetical order
HATE_TRAIN = {"hate": 1911, "none": 3486, "offensive": 2499}  # card data.train.label_counts of the hate data


def id_file(counts: dict[str, int]) -> list[str]:
    """Label cells, interleaved: counts["0"] cells "0", ... (the order does not matter to the check)."""
    cells = [c for c, n in counts.items() for _ in range(n)]
    return cells[::2] + cells[1::2]


def test_ids_read_are_said_in_one_line():
    task = SingleLabel(LabelMap(HATE_NAMES))
    said = []
    y = task.encode(["0", "1", "2", "none"], "eval.tsv", log=said.append)
    assert y.tolist() == [0, 1, 2, 1]
    assert said == ["eval.tsv: labels read as ids: 0=hate, 1=none, 2=offensive (the model's id order; write the "
                    "label names if the file numbers its classes otherwise)"]
    said.clear()
    task.encode(["none", "hate"], "eval.tsv", log=said.append)  # names: nothing to say
    nsmc = SingleLabel(LabelMap(["negative", "positive"], {"0": "negative", "1": "positive"}))
    nsmc.encode(["0", "1"], "eval.tsv", log=said.append)  # the raw training values, not ids
    assert said == []
    assert task.check_ids(["2", "2", "0"], "f") == {}  # nothing asked: no work
    assert task.check_ids(["2", "0"], "f", log=said.append) == {0: "hate", 2: "offensive"}
    assert said == ["f: labels read as ids: 0=hate, 2=offensive (the model's id order; write the label names if "
                    "the file numbers its classes otherwise)"]
    ml = MultiLabel(LabelMap(["anger", "joy", "sadness"]))
    said.clear()
    ml.encode(["0,2", "", "joy"], "kote.tsv", log=said.append)
    assert said == ["kote.tsv: labels read as ids: 0=anger, 2=sadness (the model's id order; write the label "
                    "names if the file numbers its classes otherwise)"]


def test_ids_numbered_in_another_order_are_refused():
    """The issue's case: a hate-speech file numbered by frequency (0=none, 1=offensive, 2=hate), read by the
    model's ids as 0=hate, 1=none, 2=offensive: its skewed counts fit only the other numbering."""
    task = SingleLabel(LabelMap(HATE_NAMES))
    cells = id_file({"0": 440, "1": 320, "2": 240})
    with pytest.raises(UserError) as e:
        task.encode(cells, "eval.tsv", log=lambda s: None, train_counts=HATE_TRAIN)
    msg = str(e.value)
    assert msg.startswith("eval.tsv: the labels are read as ids (0=hate, 1=none, 2=offensive)")
    assert "read as 0=none, 1=offensive, 2=hate they are" in msg and "write the label names" in msg
    assert "\n" not in msg
    named = [{"0": "none", "1": "offensive", "2": "hate"}[c] for c in cells]  # what the message asks for
    y = task.encode(named, "eval.tsv", log=lambda s: None, train_counts=HATE_TRAIN)
    assert np.bincount(y).tolist() == [240, 440, 320]
    # multi-label: label shares over rows, each label a Bernoulli; ids 0 and 1 swapped
    ml = MultiLabel(LabelMap(["anger", "joy", "sadness", "surprise"]))
    train = {"joy": 500, "anger": 100, "joy,surprise": 200, "sadness": 150, "": 50}
    rows = ["0"] * 70 + ["1"] * 10 + ["0,3"] * 28 + ["2"] * 22 + [""] * 10
    with pytest.raises(UserError, match=r"f: the labels are read as ids .* read as 0=joy, 1=anger, 2=sadness, "
                                        r"3=surprise they are"):
        ml.encode(rows, "f", train_counts=train)


def test_ids_in_the_model_order_small_or_shifted_files_are_accepted():
    task = SingleLabel(LabelMap(HATE_NAMES))
    ok = dict(log=lambda s: None, train_counts=HATE_TRAIN)
    cases = {
        "the model's order": {"0": 240, "1": 440, "2": 320},
        "another order, but 12 rows: chance could give that": {"0": 6, "1": 4, "2": 2},
        "balanced: genuinely shifted, no numbering fits better": {"0": 300, "1": 300, "2": 300},
        "hate-heavy: shifted further than any numbering explains": {"0": 600, "1": 250, "2": 150},
        "one class only (a file of hate examples)": {"0": 500},
        "two classes only, in order": {"0": 200, "2": 250},
    }
    for why, counts in cases.items():
        y = task.encode(id_file(counts), "eval.tsv", **ok)
        assert len(y) == sum(counts.values()), why
    # a file mixing names and ids: its ids are no numbering of the whole file; said, not refused
    mixed = id_file({"0": 440, "1": 320, "2": 240}) + ["none"]
    said = []
    task.encode(mixed, "eval.tsv", log=said.append, train_counts=HATE_TRAIN)
    assert len(said) == 1
    # training counts keyed by something the model cannot read (a card from a renamed model): not checked
    task.encode(id_file({"0": 440, "1": 320, "2": 240}), "eval.tsv", train_counts={"0": 1911, "1": 3486, "2": 2499})
    # integer names are never read as ids, so there is nothing to check
    ints = SingleLabel(LabelMap.from_labels(["0", "1", "2"], "f"))
    ints.encode(id_file({"0": 440, "1": 320, "2": 240}), "f", train_counts={"0": 1911, "1": 3486, "2": 2499})


def test_training_counts_read_names_raw_values_and_multi_label_cells():
    single = SingleLabel(LabelMap(["negative", "positive"], {"0": "negative", "1": "positive"}))
    counts, rows = single.training_counts({"negative": 30, "1": 70})
    assert counts.tolist() == [30, 70] and rows == 100
    assert single.training_counts({"negative": 30, "2": 70}) is None  # "2" is no training cell of this model
    ml = MultiLabel(LabelMap(["a", "b", "c"], {"0": "a", "1": "b", "2": "c"}))
    counts, rows = ml.training_counts({"0,1": 5, "2": 3, "": 2, "null": 4})
    assert counts.tolist() == [5, 5, 3] and rows == 10  # "" is a row with no labels; "null": unlabelled rows


def test_a_trained_models_card_counts_refuse_a_renumbered_file(tiny_model_dir, tmp_path):
    """End to end with the counts a training run records (bertclf.json data.train.label_counts, keyed by the
    training cells): a tiny model trained on korean-hate-speech rows (names hate/none/offensive) and a file of
    other rows whose labels are ids, once numbered by frequency (refused) and once in the model's order."""
    import csv
    from pathlib import Path

    from bertclf.train.loop import TrainConfig, train
    from bertclf.inference.classifier import Classifier

    hate = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "korean-hate-speech" / "train.tsv"
    if not hate.is_file():
        pytest.skip("korean-hate-speech not in ../shared/data")
    rows = list(csv.reader(open(hate, encoding="utf-8"), delimiter="\t"))[1:]

    def write(name, part, label):
        p = tmp_path / name
        with open(p, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(["comments", "hate"])
            w.writerows([r[0], label(r[3])] for r in part)
        return p

    tr = write("train.tsv", rows[::8], lambda lab: lab)  # 987 rows: hate 23%, none 43%, offensive 34%
    out = tmp_path / "run"
    card = train(TrainConfig(out=str(out), train=str(tr), text_col="comments", label_col="hate",
                             model=str(tiny_model_dir), epochs=1, batch_size=16, max_steps=1, seed=0),
                 echo=lambda s: None)
    assert card["labels"] == HATE_NAMES
    counts = card["data"]["train"]["label_counts"]
    assert set(counts) == set(HATE_NAMES)  # keyed by the training cells, here the names
    task = Classifier.load(str(out)).task  # what `bertclf eval` scores with
    by_freq = write("by_freq.tsv", rows[3::8], {"none": "0", "offensive": "1", "hate": "2"}.get)
    cells = hate_cells(by_freq)
    with pytest.raises(UserError, match=r"by_freq.tsv: the labels are read as ids \(0=hate, 1=none, 2=offensive\)"
                                        r".*read as 0=none, 1=offensive, 2=hate they are"):
        task.encode(cells, str(by_freq), log=lambda s: None, train_counts=counts)
    in_order = write("in_order.tsv", rows[3::8], {n: str(i) for i, n in enumerate(HATE_NAMES)}.get)
    said = []
    y = task.encode(hate_cells(in_order), str(in_order), log=said.append, train_counts=counts)
    assert len(y) == 987 and len(said) == 1 and "labels read as ids: 0=hate, 1=none, 2=offensive" in said[0]


def hate_cells(path) -> list[str]:
    from bertclf.data.dataset import read_labelled

    return read_labelled(path, "comments", "hate").labels
