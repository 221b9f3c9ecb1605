"""Commands that read a model's data default to the training's reading spec (bertclf/io/data_spec.py READ_KEYS):
for every key, a run without its flag equals a run with it. A key added to READ_KEYS without a case here fails
test_every_read_key_has_a_case.

One tiny model covers every key: trained on a header-less cp949 file (--columns id,review,stars) with
--text-col review --label-col stars --long-text head-tail at --max-length 24."""
from __future__ import annotations

import json

import pytest

from bertclf.cli import main
from bertclf.io.data_spec import READ_KEYS

from tiny_runs import encodes_in_cp949

COLUMNS = "id,review,stars"
FLAGS = {"text_col": ["--text-col", "review"], "label_col": ["--label-col", "stars"],
         "columns": ["--columns", COLUMNS], "encoding": ["--encoding", "cp949"],
         "long_text": ["--long-text", "head-tail"]}
# the commands that read a model's data, and the keys each has a flag for
COMMANDS = {"eval": ["text_col", "label_col", "columns", "encoding", "long_text"],
            "predict": ["text_col", "columns", "encoding", "long_text"]}


def _headerless_cp949(src, out, start: int, n: int):
    lines = src.read_text(encoding="utf-8").splitlines()[1 + start:1 + start + n]
    rows = [ln.split("\t") for ln in lines]
    # keep cp949-encodable texts only (the slice is Korean; a few emoji would not encode)
    body = [f"{i}\t{t}\t{'good' if lab == '1' else 'bad'}" for i, t, lab in rows if encodes_in_cp949(t)]
    out.write_bytes(("\n".join(body) + "\n").encode("cp949"))
    return out


@pytest.fixture(scope="module")
def headerless_run(tiny_model_dir, nsmc_slices, tmp_path_factory):
    from bertclf.train.loop import TrainConfig, train

    d = tmp_path_factory.mktemp("headerless")
    tr = _headerless_cp949(nsmc_slices["train"], d / "train.tsv", 0, 600)
    te = _headerless_cp949(nsmc_slices["test"], d / "test.tsv", 0, 120)
    out = d / "run"
    train(TrainConfig(out=str(out), train=str(tr), model=str(tiny_model_dir), columns=COLUMNS, text_col="review",
                      label_col="stars", encoding="cp949", long_text="head-tail", max_length=24, epochs=1,
                      batch_size=16, lr=2e-3, seed=0, precision="fp32"), echo=lambda s: None)
    return out, te


# keys of another kind of model, whose case lives with that model
ELSEWHERE = {"text_pair_col": "tests/test_pairs.py::test_eval_and_predict_default_to_the_cards_pair_columns"}


def test_every_read_key_has_a_case():
    assert set(FLAGS) | set(ELSEWHERE) == set(READ_KEYS), "give each READ_KEYS key a flag (and a command) here"
    assert set().union(*COMMANDS.values()) | set(ELSEWHERE) == set(READ_KEYS)


def _run(capsys, *args) -> str:
    capsys.readouterr()
    assert main([str(a) for a in args]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def _eval(capsys, run, test, flags):
    rep = json.loads(_run(capsys, "eval", run, "--test", test, "--json", "--precision", "fp32", *flags))
    rep.pop("seconds")
    return rep


@pytest.mark.parametrize("command,key", [(c, k) for c, keys in COMMANDS.items() for k in keys])
def test_without_the_flag_equals_with_it(headerless_run, capsys, tmp_path, command, key):
    run, test = headerless_run
    every = [x for k in COMMANDS[command] for x in FLAGS[k]]
    without = [x for k in COMMANDS[command] if k != key for x in FLAGS[k]]
    if key == "columns":  # explicit header columns would mean a file with a header: drop them with --columns
        without = [x for k in COMMANDS[command] if k not in ("columns", "text_col", "label_col") for x in FLAGS[k]]
    if command == "eval":
        assert _eval(capsys, run, test, without) == _eval(capsys, run, test, every)
    else:
        outs = []
        for flags in (without, every):
            out = tmp_path / f"p{len(outs)}.jsonl"
            _run(capsys, "predict", run, "--input", test, "--output", out, "--precision", "fp32", *flags)
            outs.append(out.read_text(encoding="utf-8"))
        assert outs[0] == outs[1] and outs[0].count("\n") >= 100


def test_no_flags_at_all(headerless_run, capsys):
    """The training's own format needs no flag at all, and scores as with every flag given."""
    run, test = headerless_run
    every = [x for k in COMMANDS["eval"] for x in FLAGS[k]]
    rep = _eval(capsys, run, test, [])
    assert rep == _eval(capsys, run, test, every) and rep["n"] >= 100 and rep["long_text"]["mode"] == "head-tail"
