"""`bertclf tune` against `bertclf train`'s defaults, on held-out rows neither of them chose anything on.

    python -m benchmarks.quality.tune_vs_defaults --work /tmp/tvd hate nsmc --trials 8 [--reproduce]

For each task the held-out split of benchmarks/quality/datasets.py (hate speech: 80/20 stratified on `hate`,
seed 42, weighted F1; nsmc: 4,000 stratified training reviews, 10% of ratings_test.txt, accuracy) is written
under --work; `bertclf tune --trials N` runs on the training rows with --test on the held-out ones (every trial
scores them, none is picked by them: tune picks by the validation split carved from the training rows). Trial 0
of every study is the defaults, so "defaults" and "best" below are trials of one search on one validation split.
--reproduce reruns the printed best command and compares its validation score with the trial's.
Prints one table row per task (and the machine); the full log of each search is in WORK/TASK-tune/.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO, machine
from benchmarks.quality.datasets import TASKS, make_splits

HEAD = ["| task | metric | trials (pruned) | wall | defaults: valid / held-out | best: valid / held-out | "
        "held-out gain | best trial's recipe |", "|" + "---|" * 8]
COLUMNS = {"nsmc": ("document", "label"), "hate": ("comments", "hate")}


def tune(task: str, train: Path, test: Path, out: Path, trials: int) -> tuple[dict, float]:
    text, label = COLUMNS[task]
    cmd = [sys.executable, "-m", "bertclf", "tune", "--train", str(train), "--test", str(test), "--text-col", text,
           "--label-col", label, "--metric", TASKS[task]["metric"], "--trials", str(trials), "--out", str(out)]
    print("$", shlex.join(cmd[2:]), flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=REPO, check=True)
    return json.loads((out / "best.json").read_text()), time.time() - t0


def reproduce(info: dict, out: Path) -> float:
    """The best trial's `bertclf train` command run again: its final validation score."""
    words = shlex.split(info["command"])
    words[words.index("--out") + 1] = str(out)
    subprocess.run([sys.executable, "-m", "bertclf"] + words[1:] + ["--overwrite"], cwd=REPO, check=True)
    card = json.loads((out / "bertclf.json").read_text())
    return card["metrics"]["valid"][info["metric"]]


def row(task: str, info: dict, wall: float) -> str:
    d, st = info["defaults"] or {}, info["study"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    gain = (None if info["test_score"] is None or d.get("test_score") is None
            else info["test_score"] - d["test_score"])
    params = ", ".join(f"{k} {v:.2g}" if isinstance(v, float) else f"{k} {v}" for k, v in info["params"].items())
    return (f"| {task} | {info['metric']} | {st['finished']} ({st['pruned']}) | {wall / 60:.0f} min | "
            f"{fmt(d.get('score'))} / {fmt(d.get('test_score'))} | {fmt(info['score'])} / {fmt(info['test_score'])} | "
            f"{'-' if gain is None else f'{gain * 100:+.1f} pt'} | trial {info['trial']}: {params} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tasks", nargs="+", choices=sorted(COLUMNS))
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--reproduce", action="store_true", help="rerun each best command and compare validation")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    splits = make_splits(a.work, 0.1)
    rows, notes = [], []
    for task in a.tasks:
        train, test = splits[task]
        info, wall = tune(task, train, test, a.work / f"{task}-tune", a.trials)
        rows.append(row(task, info, wall))
        if a.reproduce:
            again = reproduce(info, a.work / f"{task}-rerun")
            notes.append(f"{task}: the best command rerun scores validation {info['metric']} {again:.4f} "
                         f"(trial {info['trial']}: {info['score']:.4f}, difference {again - info['score']:+.4f})")
        notes.append(f"{task}: rerun with {re.sub(r' --out .*$', '', info['command'])}")
    print(machine())
    print("\n".join(HEAD + rows))
    print("\n".join(notes))


if __name__ == "__main__":
    main()
