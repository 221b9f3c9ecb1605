"""Labels: their order, names, ids and raw values, and multi-label cells.

A model knows its labels by name (config.json id2label). A file may give a label as that name, as the raw
value the training file used (NSMC's 0/1 became negative/positive; KOTE's 24 became 없음 via --label-names) or
as the model's label id; `LabelMap.resolve` accepts all three, in that order. Names are NFC-normalised, so a
Hangul label typed on one system matches the same label saved on another. A file read by ids is scored right
only if it numbers the classes as the model does: the task says how it read them (task.check_ids) and refuses a
file whose counts fit another numbering much better (`better_id_order`).
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


# A file whose labels are read as ids is refused only when another numbering of its ids fits the model's
# training label counts much better (better_id_order): CHANCE_NATS beyond what chance gives among all numberings,
# and within BEST_TV of the training shares while the model's own numbering is TV_GAP further off.
CHANCE_NATS = 20.0
BEST_TV, TV_GAP = 0.10, 0.15


def better_id_order(file_counts: dict[int, int], train_counts, n_train: int, multi_label: bool = False
                    ) -> tuple[dict[int, int], float, float] | None:
    """A numbering of a file's label ids that fits the training label counts much better than the model's own
    (id k = name k): (id -> name index, its total variation from the training shares, the own numbering's); or None.

    file_counts: rows (multi-label: rows holding the label) per label id read from the file; train_counts: training
    rows per label in id order, of n_train rows. A numbering's fit is the log-likelihood of the file's counts under
    the training shares (single-label: one categorical draw per row; multi-label: a Bernoulli per label), so the
    best one is a linear assignment. It is returned only when (a) it beats the own numbering by more than
    log(number of numberings) + CHANCE_NATS nats: were the own numbering right and the rows drawn like the training
    rows, some numbering would fit that much better by chance with probability under e^-20 (Markov's inequality on
    each likelihood ratio, a union over the numberings), so a small file is never refused on noise; and (b) its
    label shares are within BEST_TV of the training shares while the own numbering's are TV_GAP further off: a file
    whose classes genuinely shifted (balanced, or mostly one class) is not a permutation of the training shares.
    """
    import math

    import numpy as np
    from scipy.optimize import linear_sum_assignment

    ks = sorted(file_counts)
    t = np.asarray(train_counts, dtype=np.float64)
    n = len(t)
    if len(ks) < 2 or n_train <= 0 or t.sum() <= 0:
        return None  # one id only: any numbering names one class, the counts cannot tell which
    c = np.array([file_counts[k] for k in ks], dtype=np.float64)
    if multi_label:  # a row holding label j adds log p_j - log(1 - p_j) to what an empty row scores
        p = (t + 0.5) / (n_train + 1.0)
        fit = np.log(p) - np.log1p(-p)
    else:
        p = (t + 0.5) / (t.sum() + 0.5 * n)  # +0.5: a label no training row has is unlikely, not impossible
        fit = np.log(p)
    w = c[:, None] * fit[None, :]
    rows, cols = linear_sum_assignment(w, maximize=True)
    best = {ks[r]: int(j) for r, j in zip(rows, cols)}
    gain = w[rows, cols].sum() - w[np.arange(len(ks)), ks].sum()
    numberings = math.lgamma(n + 1) - math.lgamma(n - len(ks) + 1)
    if all(best[k] == k for k in ks) or gain < numberings + CHANCE_NATS:
        return None
    shares = t / t.sum()

    def tv(numbering: dict[int, int]) -> float:
        q = np.zeros(n)
        for k, cnt in zip(ks, c):
            q[numbering[k]] += cnt
        return float(0.5 * np.abs(q / q.sum() - shares).sum())

    tv_best, tv_own = tv(best), tv({k: k for k in ks})
    if tv_best > BEST_TV or tv_own - tv_best < TV_GAP:
        return None
    return best, tv_best, tv_own


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

    def resolve(self, label: str, ids: bool = True) -> str | None:
        """The name a cell stands for: a name, a raw training value, or (ids=True) a label id; None if none."""
        lab = nfc(label)
        if lab in self.index:
            return lab
        if lab in self.raw:
            return self.raw[lab]
        if ids and self.ids_readable and lab.isdigit() and int(lab) < len(self.names):
            return self.names[int(lab)]
        return None

    def as_id(self, label: str) -> int | None:
        """The label id a cell is read as when it is neither a name nor a raw training value, else None."""
        lab = nfc(label)
        if lab in self.index or lab in self.raw:
            return None
        if self.ids_readable and lab.isdigit() and int(lab) < len(self.names):
            return int(lab)
        return None

    def ids_note(self, ids) -> str:
        """'0=hate, 1=none, 2=offensive': how the label ids `ids` were read (the first 12, then a count)."""
        ids = sorted(set(ids))
        shown = ", ".join(f"{k}={self.names[k]}" for k in ids[:12])
        return shown + (f", ... ({len(ids)} ids)" if len(ids) > 12 else "")

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
