"""`bertclf train --config FILE`: flags from a YAML or JSON file beneath the command line, unknown keys and bad
values refused in one line naming the file and the key, and a finished run's bertclf.json rerunning that run."""
import json
import shlex

import pytest

from bertclf.cli import main, parse
from bertclf.train.config import TrainConfig
from bertclf.train.config_file import rerun_notes


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_the_command_line_wins_over_the_file_and_the_file_over_the_defaults(tmp_path):
    f = write(tmp_path / "recipe.yaml", "out: runs/a\ntrain: t.tsv\nlr: 1e-4\nmax-length: 64\nclass_weights: auto\n"
                                        "columns: [id, text, label]\nngram: 'off'\n")
    a = parse(["train", "--config", str(f), "--lr", "3e-4", "--seed", "7"])
    assert (a.out, a.train, a.max_length, a.class_weights, a.columns, a.ngram) == (
        "runs/a", "t.tsv", 64, "auto", "id,text,label", "off")
    assert (a.lr, a.seed) == (3e-4, 7)  # given on the command line
    assert parse(["train", "--config", str(f)]).lr == 1e-4  # YAML reads 1e-4 as a string: taken as the number
    assert a.epochs is None and a.warmup == TrainConfig.warmup  # neither place: the default
    j = write(tmp_path / "recipe.json", json.dumps({"train": "t.tsv", "multi_label": True, "calibrate": False}))
    b = parse(["train", "--config", str(j), "--out", "o"])
    assert (b.multi_label, b.calibrate, b.out) == (True, False, "o")


@pytest.mark.parametrize("text, message", [
    ("train: t.tsv\nlearning_rate: 0.001\n", r"unknown key 'learning_rate'"),
    ("train: t.tsv\nmax_lenght: 64\n", r"unknown key 'max_lenght' \(did you mean 'max_length'\?\)"),
    ("max_length: 4\n", r"max_length: must be in \[8, 8192\], got 4"),
    ("max_length: 64.5\n", r"max_length: must be a whole number, got 64.5"),
    ("ngram: sometimes\n", r"ngram: must be auto, on or off, got 'sometimes'"),
    ("multi_label: 'yes'\n", r"multi_label: must be true or false, got 'yes'"),
    ("encoding: null\n", r"encoding: must not be empty"),
    ("- lr\n- 0.1\n", r"must hold a mapping of flag names to values"),
    ("lr: [1\n", r"not valid YAML \(line 2"),
])
def test_a_bad_file_is_refused_in_one_line_naming_the_file_and_the_key(tmp_path, capsys, text, message):
    f = write(tmp_path / "bad.yaml", text)
    assert main(["train", "--config", str(f), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"bertclf: error: --config {f}: ")
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "o").exists()


def test_a_missing_file_and_a_missing_out_are_named(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.yaml"), "--out", "o"]) == 2
    assert f"--config {tmp_path / 'nope.yaml'}: no such file" in capsys.readouterr().err
    f = write(tmp_path / "r.yaml", "train: t.tsv\n")
    assert main(["train", "--config", str(f)]) == 2
    assert "required: --out" in capsys.readouterr().err


def small_run(tiny_model_dir, nsmc_slices, out, *extra) -> list[str]:
    """A few seconds of training: 300 NSMC rows, 6 steps (with a held-out split: the same one on a rerun)."""
    return ["train", "--train", str(nsmc_slices["train"]), "--text-col", "document", "--model", str(tiny_model_dir),
            "--sample", "0.1", "--max-steps", "6", "--batch-size", "16", "--lr", "2e-3", "--seed", "3",
            "--out", str(out), *extra]


def test_a_finished_runs_card_reruns_it_exactly(tiny_model_dir, nsmc_slices, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BERTCLF_NO_PROGRESS", "1")
    assert main(small_run(tiny_model_dir, nsmc_slices, tmp_path / "first", "--class-weights", "auto")) == 0
    card = json.loads((tmp_path / "first" / "bertclf.json").read_text())
    capsys.readouterr()
    # the recorded folder is not reused: --out is required again
    assert main(["train", "--config", str(tmp_path / "first" / "bertclf.json")]) == 2
    assert "required: --out" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "first" / "bertclf.json"), "--out", str(tmp_path / "again")]) == 0
    err = capsys.readouterr().err
    assert "rerun of" not in err  # same data, same versions, nothing overridden: nothing to say
    again = json.loads((tmp_path / "again" / "bertclf.json").read_text())
    assert again["classification"]["class_weights"] == card["classification"]["class_weights"]
    assert again["metrics"]["valid"]["accuracy"] == card["metrics"]["valid"]["accuracy"]
    assert again["metrics"]["valid"]["macro_f1"] == card["metrics"]["valid"]["macro_f1"]
    assert {k: v for k, v in again["args"].items() if k != "out"} == {k: v for k, v in card["args"].items()
                                                                       if k != "out"}


def test_a_rerun_says_what_differs_from_the_recorded_run(tmp_path):
    data = write(tmp_path / "t.tsv", "text\tlabel\na\t0\nb\t1\n")
    card = {"bertclf_version": "0.0.1", "versions": {"bertclf": "0.0.1", "torch": "1.0"},
            "args": {"out": "runs/x", "train": str(data), "lr": 1e-4, "columns": None, "processes": 1},
            "data": {"train": {"sha256": "0" * 64}}}
    f = write(tmp_path / "bertclf.json", json.dumps(card))
    cfg = TrainConfig(out="o", train=str(data), lr=2e-4)
    notes = rerun_notes(str(f), cfg)
    assert any(n.startswith(f"the train data differs: {data} has SHA-256 ") for n in notes)
    assert any(n.startswith("bertclf 0.0.1 -> ") for n in notes) and any(n.startswith("torch 1.0 -> ") for n in notes)
    assert "--lr 0.0001 -> 0.0002 (given on the command line)" in notes
    assert rerun_notes(str(write(tmp_path / "plain.yaml", "lr: 1e-4\n")), cfg) == []


def test_a_config_file_reproduces_the_command_it_came_from(tmp_path):
    """Every flag a user can give round-trips through a file: a recipe file is a command written down."""
    cmd = ("train --train t.tsv --out o --columns id,text,label --multi-label --label-sep ; --no-calibrate "
           "--resume auto --trim-vocab --epochs 1.5 --max-length 96 --precision fp32")
    direct = vars(parse(shlex.split(cmd)))
    as_file = {k: v for k, v in direct.items() if k not in ("command", "config")}
    f = write(tmp_path / "all.json", json.dumps(as_file))
    assert {k: v for k, v in vars(parse(["train", "--config", str(f)])).items() if k != "config"} == \
        {k: v for k, v in direct.items() if k != "config"}
