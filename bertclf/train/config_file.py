"""`--config FILE`: training flags from a YAML or JSON file, beneath the command line (a flag given there wins).

The keys are TrainConfig's field names (max_length, or max-length as the flag spells it). A finished run's
DIR/bertclf.json is such a file too: its recorded settings ("args") rerun the run, in a new --out."""
from __future__ import annotations

import difflib
import json
import typing
from dataclasses import fields
from pathlib import Path

from bertclf.errors import UserError
from bertclf.train.config import TrainConfig, _hints, check_field

# a model card's "args" beyond the settings: how many processes trained it (read by --resume, not a flag)
CARD_ONLY_KEYS = ("processes",)
# a rerun is a new run: never into the recorded folder, never replacing or resuming anything by itself
NOT_RERUN = ("out", "resume", "overwrite")


def read_config_file(path: str) -> dict:
    """{field name: value} from the file, each value checked as its flag's would be; one line naming the file
    and the key for anything wrong."""
    raw = _load(path)
    if is_card(raw):
        raw = {k: v for k, v in raw["args"].items() if k not in CARD_ONLY_KEYS + NOT_RERUN}
    by_name = {f.name: f for f in fields(TrainConfig)}
    values = {}
    for key, value in raw.items():
        name = str(key).removeprefix("--").replace("-", "_")
        if name not in by_name:
            close = difflib.get_close_matches(name, list(by_name), n=1)
            raise UserError(f"--config {path}: unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close
                            else "") + "; the keys are bertclf train's flags, see 'bertclf train -h'")
        values[name] = _checked(by_name[name], value, f"--config {path}: {key}")
    return values


def is_card(raw: dict) -> bool:
    return isinstance(raw.get("args"), dict) and "bertclf_version" in raw


def _load(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config {path}: no such file")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except ValueError as e:
            raise UserError(f"--config {path}: not valid JSON ({e})") from None
    else:  # YAML (a superset of JSON)
        import yaml

        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            raise UserError(f"--config {path}: not valid YAML" + (f" (line {where.line + 1}: {e.problem})"
                                                                  if where else "")) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"--config {path}: must hold a mapping of flag names to values (e.g. 'lr: 2.0e-4'), "
                        f"not a {type(raw).__name__}")
    return raw


def _checked(f, value, where: str):
    """The value as the field takes it (a YAML '1e-4' is a string: read as the number it spells), or one line."""
    kinds = typing.get_args(_hints()[f.name]) or (_hints()[f.name],)
    if value is None:
        if type(None) in kinds:
            return None
        raise UserError(f"{where}: must not be empty (null); leave the key out for the default")
    if float in kinds and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if f.metadata.get("parse") == "columns" and isinstance(value, list):
        value = ",".join(map(str, value))
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str)}
    accepted = [k for k in kinds if k in ok]
    if f.metadata.get("parse") == "columns":
        accepted = [str]
    if not any(ok[k](value) for k in accepted):
        names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
        raise UserError(f"{where}: must be {' or '.join(names[k] for k in accepted)}, got {value!r}")
    if f.metadata.get("optional_choice") and isinstance(value, str) and value != f.metadata["optional_choice"]:
        raise UserError(f"{where}: must be true, false or {f.metadata['optional_choice']}, got {value!r}")
    if float in kinds and isinstance(value, int):
        value = float(value)
    problem = check_field(f, value)
    if problem:
        raise UserError(f"{where}: {problem}")
    return value


def _sha_or_none(file: str, sha256_data) -> str | None:
    """The data's SHA-256 (a file, or a Parquet folder or glob), or None where it is gone (the read says so)."""
    try:
        return sha256_data(file)
    except (UserError, OSError):
        return None


def rerun_notes(path: str, cfg: TrainConfig) -> list[str]:
    """A rerun from a finished run's bertclf.json: what differs from that run (its data, the bertclf and library
    versions, settings overridden on the command line); [] for a plain config file."""
    raw = _load(path)
    if not is_card(raw):
        return []
    from bertclf import __version__
    from bertclf.io.rows import sha256_data
    from bertclf.rundir.card import versions

    notes = []
    recorded = raw.get("data") or {}
    for split, file in (("train", cfg.train), ("valid", cfg.valid)):
        sha = (recorded.get(split) or {}).get("sha256")
        now_sha = _sha_or_none(file, sha256_data) if sha and file else None
        if now_sha and now_sha != sha:
            notes.append(f"the {split} data differs: {file} has SHA-256 {now_sha[:12]}, the run's had {sha[:12]}")
    then = raw.get("versions") or {"bertclf": raw.get("bertclf_version")}
    now = versions() | {"bertclf": __version__}
    notes += [f"{lib} {then[lib]} -> {now[lib]}" for lib in ("bertclf", "torch", "transformers")
              if then.get(lib) and then[lib] != now.get(lib)]
    args = raw["args"]
    for f in fields(TrainConfig):
        if f.name in args and f.name not in NOT_RERUN and not _same_value(args[f.name], getattr(cfg, f.name)):
            notes.append(f"{'--' + f.name.replace('_', '-')} {args[f.name]} -> {getattr(cfg, f.name)} "
                         f"(given on the command line)")
    return notes


def _same_value(recorded, now) -> bool:
    if isinstance(recorded, list):  # --columns: recorded parsed, given as A,B,...
        recorded = ",".join(map(str, recorded))
    if isinstance(now, list):
        now = ",".join(map(str, now))
    return recorded == now
