"""Labels: their order, names, ids and raw values, and multi-label cells.

A model knows its labels by name (config.json id2label). A file may give a label as that name, as the raw
value the training file used (NSMC's 0/1 became negative/positive; KOTE's 24 became 없음 via --label-names) or
as the model's label id; `LabelMap.resolve` accepts all three, in that order. Names are NFC-normalised, so a
Hangul label typed on one system matches the same label saved on another.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from bertclf.errors import UserError


def nfc(s: str) -> str:
    return unicodedata.normalize("NFC", s.strip())


def label_order(labels) -> list[str]:
    """Sorted label names: numerically when every label is an integer, else alphabetically."""
    uniq = set(labels)
    try:
        return sorted(uniq, key=lambda s: (0, int(s)))
    except (TypeError, ValueError):
        return sorted(uniq)


def read_label_names(path: str | Path) -> list[str]:
    """--label-names FILE: line i (from 0) names label id i; blank lines at the end are ignored."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--label-names {p}: file not found; give a text file with one label name per line")
    try:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"--label-names {p}: not UTF-8 text; re-save the file as UTF-8") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = [nfc(ln) for ln in lines]
    seen: dict[str, int] = {}
    for n, name in enumerate(names, 1):
        if not name:
            raise UserError(f"--label-names {p}, line {n}: empty name; every line names one label id")
        if name in seen:
            raise UserError(f"--label-names {p}, line {n}: '{name}' repeats line {seen[name]}; names must be unique")
        seen[name] = n
    if len(names) < 2:
        raise UserError(f"--label-names {p}: {len(names)} name(s); a classifier needs at least two")
    return names


def split_cell(cell: str, sep: str) -> list[str]:
    """A multi-label cell ("0,6,10") as its labels, stripped, without empties or repeats, in order."""
    out: list[str] = []
    for part in cell.split(sep):
        part = nfc(part)
        if part and part not in out:
            out.append(part)
    return out


@dataclass
class LabelMap:
    """The model's label names in id order, plus the raw values (file cells) that stand for them."""

    names: list[str]
    raw: dict[str, str] = field(default_factory=dict)  # raw value in the training file -> name
    index: dict[str, int] = field(init=False)

    def __post_init__(self):
        self.names = [nfc(n) for n in self.names]
        self.index = {n: i for i, n in enumerate(self.names)}
        # Ids are read only when no name is an integer: with names 1, 2, 10 a cell "1" must mean the name.
        self.ids_readable = not any(n.lstrip("-").isdigit() for n in self.names)

    @classmethod
    def from_labels(cls, labels, where: str, raw: dict[str, str] | None = None) -> "LabelMap":
        names = label_order(nfc(lab) for lab in labels)
        if len(names) < 2:
            raise UserError(f"{where}: only one class ({names[0]!r}) in the labels; a classifier needs at least two")
        return cls(names, dict(raw or {}))

    @classmethod
    def from_names_file(cls, path: str | Path) -> "LabelMap":
        """--label-names: ids 0..n-1 in the file are the raw values, the lines their names."""
        names = read_label_names(path)
        return cls(names, {str(i): n for i, n in enumerate(names)})

    def resolve(self, label: str) -> str | None:
        """The name a cell stands for: a name, a raw training value, or a label id; None if none of them."""
        lab = nfc(label)
        if lab in self.index:
            return lab
        if lab in self.raw:
            return self.raw[lab]
        if self.ids_readable and lab.isdigit() and int(lab) < len(self.names):
            return self.names[int(lab)]
        return None

    def encode(self, labels, where: str) -> list[int]:
        resolved = [self.resolve(lab) for lab in labels]
        unseen = sorted({lab for lab, r in zip(labels, resolved) if r is None})
        if unseen:
            known = ", ".join(self.names[:10]) + (", ..." if len(self.names) > 10 else "")
            ids = f", or ids 0-{len(self.names) - 1}" if self.ids_readable else ""
            raise UserError(f"{where}: label(s) {', '.join(map(repr, unseen[:5]))} unknown to the model, never seen "
                            f"in training (it knows {known}{ids}); fix the labels or the --label-col")
        return [self.index[r] for r in resolved]

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))
