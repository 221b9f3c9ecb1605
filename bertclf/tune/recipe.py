"""A trial's settings written down two ways: the `bertclf train` command that reruns it, and a --config file."""
from __future__ import annotations

import shlex
from dataclasses import MISSING, fields
from pathlib import Path

from bertclf.io.files import atomic_file
from bertclf.train.config import TrainConfig, flag_of

NOT_RECIPE = ("out", "resume", "overwrite")  # where and how a run is written, not what it trains


def recipe(values: dict) -> dict:
    """The settings that differ from `bertclf train`'s defaults, in TrainConfig's order."""
    out = {}
    for f in fields(TrainConfig):
        if f.name in NOT_RECIPE or f.name not in values:
            continue
        default = None if f.default is MISSING else f.default
        if values[f.name] != default:
            out[f.name] = values[f.name]
    return out


def train_command(values: dict, out: str) -> str:
    """`bertclf train ...` with exactly these settings (defaults left out) and --out `out`."""
    words, r = ["bertclf", "train"], recipe(values)
    for f in fields(TrainConfig):
        if f.name not in r:
            continue
        v, name = r[f.name], flag_of(f.name)
        if isinstance(v, bool):  # a switch: --flag, or --no-flag for a negatable one that is on by default
            words.append(name if v else "--no-" + name.removeprefix("--"))
        elif isinstance(v, list):  # --columns
            words += [name, ",".join(v)]
        else:
            words += [name, repr(v) if isinstance(v, float) else str(v)]
    words += ["--out", out]
    return shlex.join(words)


def write_config(path: Path, values: dict) -> None:
    """The recipe as a YAML file for `bertclf train --config FILE` (the keys are the flags' names)."""
    import yaml

    with atomic_file(path) as f:
        f.write("# bertclf train --config " + str(path) + " --out DIR   (flags given there win over these)\n")
        yaml.safe_dump(recipe(values), f, sort_keys=False, allow_unicode=True)
