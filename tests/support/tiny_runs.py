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
