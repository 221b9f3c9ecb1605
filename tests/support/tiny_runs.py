"""The settings of a short run of the tiny random-weight model on the NSMC slices (fixtures in tests/conftest.py)."""
from __future__ import annotations

from bertclf.train.loop import TrainConfig


def tiny_cfg(out, slices, model, **kw) -> TrainConfig:
    base = dict(out=str(out), train=str(slices["train"]), test=str(slices["test"]), text_col="document",
                model=str(model), epochs=1, batch_size=16, lr=2e-3, seed=0)
    return TrainConfig(**(base | kw))


def encodes_in_cp949(text: str) -> bool:
    """Whether a text survives a cp949 file (the header-less Korean files of the task matrix)."""
    try:
        text.encode("cp949")
        return True
    except UnicodeEncodeError:
        return False


def without_dropout(model_dir, out):
    """A copy of a model directory with every dropout at 0: only such a model gives the same losses on paths
    that draw dropout masks differently (compiled: inductor's own generator; bf16 weights: other tensors)."""
    import json
    import shutil

    shutil.copytree(model_dir, out)
    config = json.loads((out / "config.json").read_text())
    config |= {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout": 0.0}
    (out / "config.json").write_text(json.dumps(config))
    return out
