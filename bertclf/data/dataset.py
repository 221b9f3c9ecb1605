"""Stage 1, data: read labelled text from NSMC or any TSV/CSV/JSONL file, check it, sample and split it.

Every problem with a file becomes a one-line UserError naming the file, line or column and what to do.
"""
from __future__ import annotations

import os
import random
import unicodedata
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertclf.errors import UserError
from bertclf.io.files import atomic_file, cache_dir, sha256_file
from bertclf.data.labels import LabelMap, label_order  # noqa: F401 (labels.py; re-exported)
from bertclf.io.rows import at_row, file_format, iter_rows, sha256_data  # noqa: F401 (file_format: re-exported)

# --- NSMC ---------------------------------------------------------------------------------------------------

NSMC_FILES = {
    "train": ("ratings_train.txt", "e03b7d14e9e41be8d464a28057cd25d7396c53e67aa7fd5f7e552c59b0ee2940"),
    "test": ("ratings_test.txt", "8ac9f64052f11dbf6ae0acb5e038f03d90a76f0eda7820cfb3a92d02edfcebda"),
}
NSMC_URL = "https://raw.githubusercontent.com/e9t/nsmc/master/{}"
NSMC_LABELS = {"0": "negative", "1": "positive"}
NSMC_TEXT_COL, NSMC_LABEL_COL = "document", "label"


CHECKOUT_NSMC = Path(__file__).resolve().parents[3] / "shared" / "data" / "nsmc"  # beside a source checkout


def nsmc_search_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where NSMC is looked for, in order -- the one lookup every command, test and benchmark uses: --data-dir,
    $BERTCLF_DATA_DIR, the bertclf cache, and a source checkout's sibling shared/data/nsmc (the project layout)."""
    dirs = []
    if data_dir:
        dirs.append(Path(data_dir))
    if os.environ.get("BERTCLF_DATA_DIR"):
        dirs.append(Path(os.environ["BERTCLF_DATA_DIR"]))
    dirs.append(cache_dir() / "data" / "nsmc")
    if CHECKOUT_NSMC.is_dir():
        dirs.append(CHECKOUT_NSMC)
    return dirs


def nsmc_path(split: str, data_dir: str | os.PathLike | None = None, download: bool = True, log=print) -> Path:
    """Find ratings_{split}.txt, verify its SHA-256, download it into the cache if it is nowhere (and online)."""
    name, sha = NSMC_FILES[split]
    dirs = nsmc_search_dirs(data_dir)
    for d in dirs:
        p = d / name
        if p.is_file():
            if sha256_file(p) != sha:
                raise UserError(f"{p}: SHA-256 differs from the published NSMC {name}; replace it with the original file")
            return p
    target = cache_dir() / "data" / "nsmc" / name
    if download:
        url = NSMC_URL.format(name)
        log(f"NSMC {name} not found locally; downloading {url}")
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                payload = r.read()
        except (urllib.error.URLError, OSError, TimeoutError):
            payload = None
        if payload is not None:
            import hashlib

            if hashlib.sha256(payload).hexdigest() != sha:
                raise UserError(f"downloaded {url} but its SHA-256 differs from the published file; try again later")
            with atomic_file(target, "wb") as f:
                f.write(payload)
            return target
    where = ", ".join(str(d) for d in dirs)
    raise UserError(
        f"NSMC file {name} not found (looked in {where}) and it could not be downloaded; "
        f"put ratings_train.txt and ratings_test.txt in one of those folders or pass --data-dir DIR"
    )


# --- any labelled file --------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """Texts with (string) labels; empty texts already dropped and counted. A sentence-pair file also has each
    row's second text (`pairs`); a file read with a group column has each row's group (`groups`)."""

    texts: list[str]
    labels: list[str | None]
    source: str = ""
    sha256: str = ""
    dropped_empty: int = 0
    rows_read: int = 0
    is_part: bool = False  # a sample or split of the file (rows_read / dropped_empty are the whole file's)
    pairs: list[str] | None = None
    groups: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: list[int], source_note: str = "") -> "Dataset":
        """Selected rows; the file's provenance (rows read, empty rows dropped) stays with them."""
        return Dataset(
            [self.texts[i] for i in idx],
            [self.labels[i] for i in idx],
            source=self.source + source_note,
            sha256=self.sha256,
            dropped_empty=self.dropped_empty,
            rows_read=self.rows_read,
            is_part=True,
            pairs=None if self.pairs is None else [self.pairs[i] for i in idx],
            groups=None if self.groups is None else [self.groups[i] for i in idx],
        )

    def inputs(self) -> list[str] | list[tuple[str, str]]:
        """What the model reads per row: the text, or (text, second text) for a sentence pair."""
        return self.texts if self.pairs is None else list(zip(self.texts, self.pairs))

    def all_texts(self) -> list[str]:
        """Every text the model reads (both sides of a pair): what the vocabulary must cover."""
        return self.texts + (self.pairs or [])

    def summary(self) -> dict:
        counts = Counter(self.labels)
        unlabelled = counts.pop(None, 0)  # distill --texts: rows trained on the teacher's soft labels alone
        # a sample or split of a file: its own rows (none dropped in it); the file's counts under file_*
        read = {"rows_read": len(self), "dropped_empty": 0, "file_rows_read": self.rows_read,
                "file_dropped_empty": self.dropped_empty} if self.is_part else {
                "rows_read": self.rows_read, "dropped_empty": self.dropped_empty}
        return {
            "source": self.source,
            "sha256": self.sha256,
            **read,
            "rows": len(self),
            **({"unlabelled_rows": unlabelled} if unlabelled else {}),
            "label_counts": dict(sorted(counts.items(), key=lambda kv: str(kv[0]))),
            **({"groups": len(set(self.groups))} if self.groups is not None else {}),
        }


def texts_in(ds: "Dataset", train: "Dataset") -> int:
    """How many of ds's rows have a text that is also a training text (exactly, after NFC): a score on them is
    partly a score on the training rows (a split of one file with repeated short texts has some too)."""
    def keys(d: "Dataset"):  # a pair repeats only when both of its texts do
        return [unicodedata.normalize("NFC", t if d.pairs is None else t + "\t" + p)
                for t, p in zip(d.texts, d.pairs or d.texts)]

    seen = set(keys(train))
    return sum(k in seen for k in keys(ds))


def read_labelled(path: str | os.PathLike, text_col: str = "text", label_col: str | None = "label",
                  label_names: dict[str, str] | None = None, encoding: str = "utf-8",
                  columns: list[str] | None = None, fmt: str | None = None,
                  allow_empty_label: bool = False, pair_col: str | None = None,
                  group_col: str | None = None) -> Dataset:
    """Read a labelled (or, with label_col=None, unlabelled) file; drop and count empty texts.

    Labels are the cells' raw strings, stripped and NFC-normalised (an NFD and an NFC 긍정 are one class).
    An empty label cell is an error, unless allow_empty_label (a multi-label file: a row with no labels, read
    as the label "", as a cell of separators only is). pair_col: the second text of a sentence pair (a row with
    either text empty is dropped, as an empty text is); group_col: rows of one group (its stripped, NFC cell) are
    kept on one side of a split.
    """
    path = Path(path)
    check_columns(text_col, label_col, pair_col, where=str(path))
    need = list(dict.fromkeys(c for c in (text_col, pair_col, label_col, group_col) if c))
    flags = "--text-col/--text-pair-col/--label-col" if pair_col else "--text-col/--label-col"
    if group_col:
        flags += "/--group-col"
    texts, labels, pairs, groups, dropped, rows = [], [], [], [], 0, 0
    for n, row in iter_rows(path, need, fmt=fmt, encoding=encoding, columns=columns, col_flags=flags,
                            text_cols=[c for c in (text_col, pair_col) if c]):
        rows += 1
        t = row[text_col]
        if is_empty_text(t) or (pair_col and is_empty_text(row[pair_col])):
            dropped += 1
            continue
        if pair_col:
            pairs.append(row[pair_col])
        if group_col:
            groups.append(unicodedata.normalize("NFC", row[group_col].strip()))
        lab = None
        if label_col:
            lab = unicodedata.normalize("NFC", row[label_col].strip())
            if lab == "" and not allow_empty_label:
                raise UserError(f"{at_row(path, n, fmt)}: empty label in column '{label_col}'; fill it in or remove the row")
            if label_names and lab != "":
                if lab not in label_names:
                    raise UserError(f"{at_row(path, n, fmt)}: label '{lab}' is not one of {', '.join(label_names)}")
                lab = label_names[lab]
        texts.append(t)
        labels.append(lab)
    if not texts:
        both = f"columns '{text_col}' and '{pair_col}'" if pair_col else f"column '{text_col}'"
        raise UserError(f"{path}: no rows with text in {both}")
    return Dataset(texts, labels, source=str(path), sha256=sha256_data(path, fmt), dropped_empty=dropped, rows_read=rows,
                   pairs=pairs if pair_col else None, groups=groups if group_col else None)


def check_columns(text_col: str, label_col: str | None, pair_col: str | None = None, where: str = "") -> None:
    """The text, second text and label columns must differ: one line naming the two flags that collide."""
    named = [("--text-col", text_col), ("--text-pair-col", pair_col), ("--label-col", label_col)]
    named = [(flag, col) for flag, col in named if col]
    for i, (flag_a, a) in enumerate(named):
        for flag_b, b in named[i + 1:]:
            if a == b:
                why = ("the model would read the answer in its input; give the column with the texts and the one "
                       "with the labels" if "--label-col" in (flag_a, flag_b) else
                       "a pair needs two different columns: the first text and the second")
                raise UserError(f"{where + ': ' if where else ''}{flag_a} and {flag_b} are both '{a}': {why}")


def is_empty_text(text: str) -> bool:
    """The one rule for an empty text (nothing but whitespace): eval and training drop it, predict skips it,
    serve answers 422."""
    return not text.strip()


def read_nsmc(split: str, data_dir=None, log=print) -> Dataset:
    return read_labelled(nsmc_path(split, data_dir, log=log), NSMC_TEXT_COL, NSMC_LABEL_COL, NSMC_LABELS)


# --- labels, sampling, splitting ----------------------------------------------------------------------------


def stratified_indices(labels, frac: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices per label into (taken, rest) with `frac` of each class taken; deterministic by seed."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        by_label[lab].append(i)
    rng = random.Random(seed)
    taken, rest = [], []
    for lab in sorted(by_label, key=str):
        idx = by_label[lab]
        rng.shuffle(idx)
        k = round(len(idx) * frac)
        taken += idx[:k]
        rest += idx[k:]
    return sorted(taken), sorted(rest)


def strata(ds: Dataset, multi_label: bool = False) -> list[str]:
    """What sampling and splitting stratify by: the label, or nothing for multi-label rows (most label sets are
    unique, so a cell is no stratum: a seeded random share)."""
    return ["" for _ in ds.labels] if multi_label else ds.labels


def sample(ds: Dataset, frac: float, seed: int, flag: str = "--sample/--test-sample",
           multi_label: bool = False) -> Dataset:
    """A stratified, seeded `frac` of the rows; a share that leaves no row is an error now, not after training."""
    if frac >= 1.0:
        return ds
    taken, _ = stratified_indices(strata(ds, multi_label), frac, seed)
    if not taken:
        raise UserError(f"{flag} {frac:g}: leaves none of the {len(ds)} rows of {ds.source}; raise it "
                        f"or use a larger file")
    return ds.subset(taken)


def split_valid(ds: Dataset, frac: float, seed: int, other: str = "pass --valid FILE",
                multi_label: bool = False) -> tuple[Dataset, Dataset]:
    """Carve a stratified split (validation, or baseline's test) from train; `other` says how to give one. Rows
    read with a group column are split by group: no group has rows on both sides (grouped_indices)."""
    if ds.groups is not None:
        valid_idx, train_idx = grouped_indices(ds.groups, strata(ds, multi_label), frac, seed + 1)
    else:
        valid_idx, train_idx = stratified_indices(strata(ds, multi_label), frac, seed + 1)
    if not valid_idx or not train_idx:
        raise UserError(f"{ds.source}: too few rows ({len(ds)}) to carve a {'validation' if 'valid' in other else 'test'}"
                        f" split; add rows or {other}")
    return ds.subset(train_idx), ds.subset(valid_idx, " (validation split)")


def grouped_indices(groups: list[str], labels, frac: float, seed: int) -> tuple[list[int], list[int]]:
    """(taken, rest) with whole groups on each side and about `frac` of the rows taken, stratified by label as far
    as whole groups allow: the first fold of scikit-learn's StratifiedGroupKFold with round(1 / frac) folds."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(set(groups))
    n_splits = max(2, round(1 / frac))
    if n_groups < n_splits:
        raise UserError(f"--group-col: {n_groups} groups are too few to hold out {frac:g} of them whole; "
                        f"use a column with more groups or a larger --valid-frac")
    y = [str(lab) for lab in labels]
    if len(set(y)) == 1 or min(Counter(y).values()) < n_splits:
        y = ["" for _ in y]  # a class rarer than the folds cannot be stratified: whole groups, at random
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    rest, taken = next(folds.split(np.zeros(len(y)), y, groups))
    return sorted(taken.tolist()), sorted(rest.tolist())


def repeated_text_share(ds: Dataset) -> float:
    """The share of rows whose (first) text another row also has: rows that a row-wise split scatters over both
    sides, so that validation partly scores texts seen in training (a premise with several hypotheses)."""
    counts = Counter(ds.texts)
    return sum(c for c in counts.values() if c > 1) / max(1, len(ds.texts))


REPEAT_HINT_SHARE = 0.05  # NSMC's 150k reviews: 3.2% repeat (short ones: "굿", "최고"); a premise file: 100%


def default_columns(cfg) -> None:
    """Fill in cfg.text_col / cfg.label_col as training reads them (NSMC: document/label; a file: text/label)."""
    nsmc = cfg.data == "nsmc"
    cfg.text_col = cfg.text_col or (NSMC_TEXT_COL if nsmc else "text")
    cfg.label_col = cfg.label_col or (NSMC_LABEL_COL if nsmc else "label")


def load_training_data(cfg, log=print) -> tuple[Dataset, Dataset, Dataset | None]:
    """(train, valid, test or None) as a TrainConfig asks; fills in cfg.text_col / cfg.label_col defaults.

    Every check that needs the data (a sample or test sample that leaves no row) fails here, before training.
    """
    multi = bool(getattr(cfg, "multi_label", False))
    # a multi-label row may have no labels (an empty cell); a single-label row must have its class
    pair_col = getattr(cfg, "text_pair_col", None)
    read = dict(encoding=getattr(cfg, "encoding", "utf-8"), columns=getattr(cfg, "columns", None),
                allow_empty_label=multi, pair_col=pair_col)
    default_columns(cfg)
    if cfg.data == "nsmc":
        train = read_nsmc("train", cfg.data_dir, log=log)
        test = read_nsmc("test", cfg.data_dir, log=log)
    else:
        train = read_labelled(cfg.train, cfg.text_col, cfg.label_col, **read,
                              group_col=None if cfg.valid else getattr(cfg, "group_col", None))
        test = read_labelled(cfg.test, cfg.text_col, cfg.label_col, **read) if cfg.test else None
    train = sample(train, cfg.sample, cfg.seed, "--sample", multi)
    if test is not None:  # a quick look at the test score: torch on a CPU scores ~75 reviews/s
        test = sample(test, cfg.test_sample, cfg.seed, "--test-sample", multi)
    if cfg.valid:
        valid = read_labelled(cfg.valid, cfg.text_col, cfg.label_col, **read)
    else:
        frac = cfg.valid_frac or default_valid_frac(len(train), multi)
        if train.groups is None and repeated_text_share(train) >= REPEAT_HINT_SHARE:
            log(f"hint: {repeated_text_share(train):.0%} of the rows of {train.source} share their '{cfg.text_col}' "
                f"text with another row, and the validation split is by row: such rows land on both sides; pass "
                f"--group-col {cfg.text_col} to keep each text's rows together")
        train, valid = split_valid(train, frac, cfg.seed, multi_label=multi)
    return train, valid, test


def default_valid_frac(n_rows: int, multi_label: bool) -> float:
    """--valid-frac unset: 5%; multi-label ~1,000 rows (5-20%): its per-label thresholds are tuned on the
    validation rows, and a rare label needs positives there (on 50 rows most of KOTE's 44 labels have none)."""
    return min(0.2, max(0.05, 1000 / max(n_rows, 1))) if multi_label else 0.05
