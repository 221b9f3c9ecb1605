"""How a trained model reads its data: the training's column spec, kept in its card, as the default of every
command that reads files for a model (eval, predict, export --check, ...); flags override. (The label separator
and thresholds are the task's: bertclf/data/task.py reads them from the card.)

READ_KEYS is the one list of card keys that inference reads back; tests/io/test_card_defaults.py holds a case for
each, so adding a key without a case fails there.
"""
from __future__ import annotations

from dataclasses import dataclass

# key -> where the card keeps it: (section, field)
READ_KEYS = {
    "text_col": ("data", "text_col"),
    "text_pair_col": ("data", "text_pair_col"),
    "label_col": ("data", "label_col"),
    "columns": ("args", "columns"),
    "encoding": ("args", "encoding"),
    "long_text": ("args", "long_text"),
}

FALLBACK = {"text_col": "text", "text_pair_col": None, "label_col": "label", "columns": None, "encoding": "utf-8", "long_text": "truncate"}


@dataclass
class DataSpec:
    text_col: str
    text_pair_col: str | None  # a sentence-pair model's second text column; None: single texts
    label_col: str
    columns: list[str] | None
    encoding: str
    long_text: str

    def read_kwargs(self) -> dict:
        """The keyword arguments of the shared row reader (bertclf.io.rows / data.read_labelled)."""
        return {"encoding": self.encoding, "columns": self.columns}


def card_value(card: dict, key: str):
    section, name = READ_KEYS[key]
    return (card.get(section) or {}).get(name)


def data_spec(card: dict | None, **given) -> DataSpec:
    """The spec for reading a model's data: each key as given (not None), else the card's, else the fallback.

    A column spec from the card (`--columns` at training: a header-less file) is not applied to a file given
    with an explicit text or label column, since those name a header's columns."""
    card = card or {}
    unknown = set(given) - set(READ_KEYS)
    if unknown:
        raise TypeError(f"data_spec: unknown keys {sorted(unknown)}")
    values = {}
    for key in READ_KEYS:
        value = given.get(key)
        if value is None:
            value = card_value(card, key)
            if key == "columns" and (given.get("text_col") or given.get("label_col") or given.get("text_pair_col")):
                value = None  # the user named header columns for this file
        values[key] = FALLBACK[key] if value is None else value
    if isinstance(values["columns"], str):
        from bertclf.io.rows import parse_columns

        values["columns"] = parse_columns(values["columns"])
    return DataSpec(**values)
