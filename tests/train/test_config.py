"""One source per training flag: each TrainConfig field's declaration makes its flag on every command that
takes it, its checks (choices, range) in the parser and in validate_config, and its place in RESUME_KEYS."""
import re
from dataclasses import fields

import pytest

from bertclf.cli import build_parser
from bertclf.errors import UserError
from bertclf.train.config import RESUME_KEYS, RESUME_NOTE, TrainConfig, validate_config

FIELDS = {f.name: f for f in fields(TrainConfig)}
RANGED = sorted(name for name, f in FIELDS.items() if f.metadata["range"] is not None)
CHOICES = sorted(name for name, f in FIELDS.items() if f.metadata.get("choices"))


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def subcommand(name: str):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices[name]


def outside_and_edge(name: str) -> tuple[float, float]:
    """A value just outside the field's range and one on its edge (or inside, for an open edge)."""
    rng = FIELDS[name].metadata["range"]
    whole = FIELDS[name].type in ("int", "int | None")
    step = 1 if whole else 1e-3
    if rng.high is not None:
        return (rng.high + step if not rng.high_open else rng.high,
                rng.high if not rng.high_open else rng.high - step)
    return (rng.low - step if not rng.low_open else rng.low, rng.low if not rng.low_open else rng.low + step)


def test_train_help_marks_exactly_the_resume_settings():
    help_ = re.sub(r"\s+", " ", subcommand("train").format_help())
    marked = {a.dest for a in subcommand("train")._actions if a.help and a.help.endswith(RESUME_NOTE)}
    assert marked == set(RESUME_KEYS) and len(RESUME_KEYS) >= 30
    assert RESUME_NOTE.strip() in help_


@pytest.mark.parametrize("name", RANGED)
def test_a_range_is_checked_the_same_by_the_parser_and_by_validate_config(name, tmp_path):
    bad, edge = outside_and_edge(name)
    base = {"out": str(tmp_path / "o"), "train": "x.tsv", "model": str(tmp_path)}  # no config.json: no position limit
    with pytest.raises(UserError, match=rf"^{flag(name)}: must be .*got {bad}"):
        validate_config(TrainConfig(**base, **{name: bad}))
    validate_config(TrainConfig(**base, **{name: edge}))  # the edge itself (or just inside an open one) is fine
    parser = subcommand("train")
    with pytest.raises(UserError, match=rf"argument {flag(name)}: must be .*got {bad}"):
        parser.parse_args(["--out", "o", "--train", "x.tsv", flag(name), str(bad)])
    assert getattr(parser.parse_args(["--out", "o", flag(name), str(edge)]), name) == edge


@pytest.mark.parametrize("name", CHOICES)
def test_choices_are_checked_by_validate_config(name, tmp_path):
    with pytest.raises(UserError, match=rf"^{flag(name)}: must be .*got 'nonsense'"):
        validate_config(TrainConfig(out=str(tmp_path / "o"), train="x.tsv", **{name: "nonsense"}))


@pytest.mark.parametrize("command, names", [
    ("baseline", ("sample", "seed", "multi_label", "label_sep", "label_names", "text_col", "data")),
    ("audit", ("seed", "multi_label", "label_sep", "label_names")),
    ("distill", ("epochs", "lr", "batch_size", "max_steps", "precision", "checkpoint_every", "resume", "overwrite")),
])
def test_other_commands_take_the_same_flags_from_the_same_fields(command, names):
    """Type, choices and range come from the field: baseline --sample 0 is refused as train's is."""
    actions = {a.dest: a for a in subcommand(command)._actions}
    train = {a.dest: a for a in subcommand("train")._actions}
    for name in names:
        assert actions[name].option_strings == train[name].option_strings
        assert actions[name].choices == train[name].choices and actions[name].nargs == train[name].nargs
        assert type(actions[name]) is type(train[name])
    if "sample" in names:
        with pytest.raises(UserError, match=r"argument --sample: must be in \(0, 1\], got 0;"):
            subcommand(command).parse_args(["--sample", "0"])


def test_a_resume_setting_changed_is_refused_by_its_declaration_alone(tmp_path):
    """The newest resume setting, --label-smoothing, has no case of its own in tests/rundir/test_resume.py: its
    declaration (range [0, 1)) gives the changed value there. Here: its consumer, the training loss, sees it."""
    import torch

    from bertclf.data.task import make_task

    cfg = TrainConfig(out="o", train="x.tsv", label_smoothing=0.2)
    task = make_task(cfg, ["a", "b", "a"], "x.tsv")
    logits, y = torch.tensor([[4.0, -4.0]]), torch.tensor([0])
    plain = torch.nn.functional.cross_entropy(logits, y)
    assert task.loss(logits, y) > plain + 0.5  # a confident right answer still pays for the smoothed share
    assert "label_smoothing" in RESUME_KEYS
