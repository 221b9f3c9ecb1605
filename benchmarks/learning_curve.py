"""TF-IDF + LR vs `bertclf train` defaults as the training rows grow: where the fine-tune's lead opens.

    python benchmarks/learning_curve.py --work /tmp/curve nsmc --rows 2000 4000 8000 16000
    python benchmarks/learning_curve.py --work /tmp/curve hate --rows 1579 3158 6317

The held-out rows are benchmarks/datasets.py's (made under --work by its make_splits, seed 42): NSMC's 5,000 test
reviews, hate speech's 1,579 held-out comments. Training rows: NSMC, a stratified seeded sample of N reviews of
ratings_train.txt (N = 4,000 is datasets.py's own sample); hate, a stratified seeded sample of N of datasets.py's
6,317 training comments (all of them at N = 6,317). Both sides train on exactly those rows, with defaults only.
Prints one Markdown row per point as it finishes and the table at the end; WORK/curve_TASK_N.json keeps each point.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import datasets as DS  # noqa: E402

from bertclf.data import dataset as D  # noqa: E402
from bertclf.cpu import describe  # noqa: E402


def training_rows(task: str, n: int, work: Path, train_split: Path, seed: int = 42) -> Path:
    """A TSV of n training rows for `task` (see the module docstring)."""
    out = work / f"curve_{task}_train_{n}.tsv"
    if task == "nsmc":
        train = D.read_nsmc("train", DS.SHARED / "nsmc")
        take, _ = D.stratified_indices(train.labels, n / len(train), seed)
        inv = {v: k for k, v in D.NSMC_LABELS.items()}
        DS.write_tsv(out, ["document", "label"], [[train.texts[i], inv[train.labels[i]]] for i in take])
        return out
    from bertclf.io.rows import iter_rows

    header = ["comments", "bias", "hate"]
    rows = [r for _, r in iter_rows(train_split, header)]
    take = range(len(rows)) if n >= len(rows) else D.stratified_indices([r["hate"] for r in rows], n / len(rows), seed)[0]
    DS.write_tsv(out, header, [[rows[i][c] for c in header] for i in take])
    return out


def point(task: str, n: int, work: Path, splits: dict) -> dict:
    train_split, test = splits[task]
    train = training_rows(task, n, work, train_split)
    metric = DS.TASKS[task]["metric"]
    log = work / f"curve_{task}_{n}.log"
    base = json.loads(DS.bertclf("baseline", "--train", str(train), "--test", str(test), *DS.task_flags(task),
                                 "--json", log=log)[0])
    run_dir = work / "runs" / f"curve_{task}_{n}"
    _, seconds = DS.bertclf("train", "--train", str(train), *DS.task_flags(task), "--out", str(run_dir),
                            "--overwrite", log=log)
    ev = json.loads(DS.bertclf("eval", str(run_dir), "--test", str(test), "--json", log=log)[0])
    res = {"task": task, "rows": base["n_train"], "test_rows": ev["n"], "metric": metric,
           "baseline": base["report"][metric], "bertclf": ev[metric], "train_seconds": seconds,
           "load_average": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (work / f"curve_{task}_{n}.json").write_text(json.dumps(res, indent=2))
    return res


def row(r: dict) -> str:
    return (f"| {r['task']} | {r['metric']} | {r['rows']:,} | {r['test_rows']:,} | {r['baseline']:.4f} | "
            f"{r['bertclf']:.4f} | {(r['bertclf'] - r['baseline']) * 100:+.1f} pt | {r['train_seconds'] / 60:.1f} min |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--rows", type=int, nargs="+", required=True)
    ap.add_argument("task", choices=["nsmc", "hate"])
    a = ap.parse_args()
    splits = DS.make_splits(a.work, 0.1)
    print(describe())
    head = ["| task | metric | training rows | held-out rows | TF-IDF + LR | bertclf defaults | gain | "
            "bertclf train (whole process) |", "|---|---|---|---|---|---|---|---|"]
    done = []
    for n in a.rows:
        done.append(point(a.task, n, a.work, splits))
        print(row(done[-1]), flush=True)
    print("\n".join(head + [row(r) for r in done]))


if __name__ == "__main__":
    main()
