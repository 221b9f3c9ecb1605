"""Defaults that are decided per run: the vocabulary is trimmed for the builtin models unless told otherwise."""
from bertclf.cli import build_parser
from bertclf.config import TrainConfig, trims_vocab


def test_trim_vocab_default_is_on_for_builtin_models_only(tiny_model_dir):
    assert trims_vocab(TrainConfig(out="x", model="me5-small"))
    assert not trims_vocab(TrainConfig(out="x", model="me5-small", trim_vocab=False))
    assert not trims_vocab(TrainConfig(out="x", model=str(tiny_model_dir)))
    assert trims_vocab(TrainConfig(out="x", model=str(tiny_model_dir), trim_vocab=True))


def test_trim_vocab_flags():
    parse = build_parser().parse_args
    assert parse(["train", "--out", "o"]).trim_vocab is None
    assert parse(["train", "--out", "o", "--trim-vocab"]).trim_vocab is True
    assert parse(["train", "--out", "o", "--no-trim-vocab"]).trim_vocab is False
