"""Which of `bertclf train`'s flags `bertclf tune` takes, and which of them it searches when they are not given
(light: read when the command line is parsed)."""
from __future__ import annotations

from dataclasses import fields

from bertclf.errors import UserError
from bertclf.train.config import TrainConfig

# the TrainConfig fields tune may search (bertclf/tune/space.py); tune's flags for them default to None: searched
SEARCHED = ("lr", "epochs", "batch_size", "warmup", "weight_decay", "class_weights", "ngram", "max_length")
# train's flags that mean nothing for a search: each trial is a fresh run in its own folder under DIR
NOT_TUNE = ("out", "resume", "overwrite", "checkpoint_every", "keep_checkpoints", "register",
            "texts")  # --texts: a second fine-tune per trial; tune the recipe, then train once with --texts
TUNE_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.name not in NOT_TUNE)


def tune_defaults(config: dict | None) -> dict:
    """The searched settings unset (None), beneath the values of tune's --config FILE (which pin them)."""
    config = dict(config or {})
    config.pop("out", None)  # tune's own --out
    wrong = sorted(set(config) - set(TUNE_FIELDS))
    if wrong:
        raise UserError(f"tune --config: {', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} not for a search "
                        f"(each trial is a fresh run in its own folder); leave {'it' if len(wrong) == 1 else 'them'} "
                        f"out")
    return {name: None for name in SEARCHED} | config


def searched_helps() -> dict:
    by_name = {f.name: f for f in fields(TrainConfig)}
    return {name: by_name[name].metadata["help"] + "; unset: searched" for name in SEARCHED}
