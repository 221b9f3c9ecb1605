"""What `bertclf tune` searches: the recipe settings a user would try by hand, each range fitted to the data.

A setting given to tune on the command line (or in its --config) is pinned and not searched. The defaults of
`bertclf train` always lie inside the space, so that they can run as a trial of it (trial 0)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from bertclf.train.config import TrainConfig
from bertclf.train.prepare import default_epochs, default_lr
from bertclf.tune.cli_flags import SEARCHED

LR_RANGE = (1e-5, 5e-4)  # log scale; the default 1e-4 (2e-4 at batch >= 128) is inside
WARMUP_RANGE = (0.0, 0.2)
WEIGHT_DECAY_RANGE = (0.0, 0.1)
BATCH_SIZES = (8, 16, 32, 64, 128, 256)
MIN_STEPS_PER_EPOCH = 20  # a batch size that leaves fewer optimizer steps per epoch is not tried
MAX_LENGTHS = (64, 128, 256, 512)
CUT_SHARE = 0.05  # a length is worth trying when at least this share of the texts is longer than the one below
LENGTH_SAMPLE = 2000  # texts tokenized to measure the lengths


@dataclass
class Space:
    """The choices for one data set (the same in every process of a shared study: they depend on the data only,
    and on the default batch of the device, which is always among the batch sizes)."""
    searched: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    max_epochs: int
    max_lengths: tuple[int, ...]
    defaults: dict = field(default_factory=dict)  # what `bertclf train` uses for each searched setting here

    def suggest(self, trial) -> dict:
        """A trial's values of the searched settings (an enqueued trial's own values come back as given)."""
        s = set(self.searched)
        p = {}
        if "lr" in s:
            p["lr"] = trial.suggest_float("lr", *LR_RANGE, log=True)
        if "batch_size" in s and len(self.batch_sizes) > 1:
            p["batch_size"] = trial.suggest_categorical("batch_size", self.batch_sizes)
        if "epochs" in s:
            p["epochs"] = trial.suggest_int("epochs", 1, self.max_epochs)
        if "warmup" in s:
            p["warmup"] = trial.suggest_float("warmup", *WARMUP_RANGE)
        if "weight_decay" in s:
            p["weight_decay"] = trial.suggest_float("weight_decay", *WEIGHT_DECAY_RANGE)
        if "class_weights" in s:
            p["class_weights"] = trial.suggest_categorical("class_weights", ("none", "auto"))
        if "ngram" in s:  # on when it helps on validation (auto), or never
            p["ngram"] = trial.suggest_categorical("ngram", ("auto", "off"))
        if "max_length" in s and len(self.max_lengths) > 1:
            p["max_length"] = trial.suggest_categorical("max_length", self.max_lengths)
        return p

    def default_params(self) -> dict:
        """The defaults' values of the settings suggest() draws (enqueued as trial 0)."""
        drawn = {"batch_size": len(self.batch_sizes) > 1, "max_length": len(self.max_lengths) > 1}
        return {k: v for k, v in self.defaults.items() if k in self.searched and drawn.get(k, True)}

    def describe(self) -> str:
        parts = {"lr": f"lr {LR_RANGE[0]:g}-{LR_RANGE[1]:g} (log)", "epochs": f"epochs 1-{self.max_epochs}",
                 "batch_size": f"batch size {'/'.join(map(str, self.batch_sizes))}",
                 "warmup": f"warmup {WARMUP_RANGE[0]:g}-{WARMUP_RANGE[1]:g}",
                 "weight_decay": f"weight decay {WEIGHT_DECAY_RANGE[0]:g}-{WEIGHT_DECAY_RANGE[1]:g}",
                 "class_weights": "class weights none/auto", "ngram": "n-gram partner auto/off",
                 "max_length": f"max length {'/'.join(map(str, self.max_lengths))}"}
        shown = [parts[k] for k in self.searched if k in self.default_params()]
        return "; ".join(shown) if shown else "nothing (every searched setting is pinned)"


def make_space(fixed: dict, n_train: int, token_lengths: np.ndarray, multi_label: bool, on_gpu: bool,
               position_limit: int | None, pairs: bool = False) -> Space:
    """fixed: the settings given to tune ({name: value}, None where searched); pairs: sentence-pair rows."""
    searched = tuple(k for k in SEARCHED if fixed.get(k) is None)
    default_batch = fixed.get("batch_size") or (256 if on_gpu else 32)
    batch_sizes = tuple(sorted({b for b in BATCH_SIZES if n_train / b >= MIN_STEPS_PER_EPOCH} | {default_batch}))
    steps_per_epoch = math.ceil(n_train / default_batch)
    default_ep = default_epochs(steps_per_epoch, multi_label, pairs)
    # small data takes more passes; each pass over big data is already many steps
    max_epochs = max(default_ep, 10 if n_train < 1000 else 6 if n_train < 10_000 else 4 if n_train < 100_000 else 3)
    defaults = {"lr": default_lr(default_batch), "epochs": default_ep, "batch_size": default_batch,
                "warmup": TrainConfig.warmup, "weight_decay": TrainConfig.weight_decay,
                "class_weights": TrainConfig.class_weights, "ngram": TrainConfig.ngram,
                "max_length": TrainConfig.max_length}
    return Space(searched, batch_sizes, max_epochs, worth_trying_lengths(token_lengths, position_limit), defaults)


def worth_trying_lengths(token_lengths: np.ndarray, position_limit: int | None) -> tuple[int, ...]:
    """The default 128, and each other length that changes what the model reads for enough texts: 64 when
    enough texts are longer than 64 tokens, 256 when enough are longer than 128, ... (within the model's
    positions). Short texts (all under 64 tokens) leave only 128: the length is then not searched."""
    default = TrainConfig.max_length
    n = max(len(token_lengths), 1)
    keep = {default}
    for below, length in zip(MAX_LENGTHS, MAX_LENGTHS[1:]):
        if position_limit is not None and length > position_limit:
            break
        if (token_lengths > below).sum() / n >= CUT_SHARE:
            keep |= {below, length}
    return tuple(sorted(k for k in keep if position_limit is None or k <= position_limit))


def token_lengths(tokenizer, texts: list[str], pairs: list[str] | None, seed: int) -> np.ndarray:
    """Tokens per row (up to 1024) of a seeded sample of the training rows."""
    from bertclf.data.long_text import encode_rows
    from bertclf.data.tokens import lengths

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(texts), size=min(LENGTH_SAMPLE, len(texts)), replace=False)
    ids, _ = encode_rows(tokenizer, [texts[i] for i in idx], None if pairs is None else [pairs[i] for i in idx],
                         1024)
    return lengths(ids)
