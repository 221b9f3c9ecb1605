"""One point of the default-recipe sweep: fine-tune on part of a task's TRAINING rows, score on another part.

    python -m benchmarks.quality.recipe_sweep --work /tmp/ds kote --rows 2000 --dev 500 --base-lr 1e-4 --head-lr 1e-3

The held-out test rows of benchmarks/quality/datasets.py are never read: the training file it writes (WORK/NAME_train.tsv)
is shuffled (seed 42) and split into a dev share (the first --dev rows) and training rows (the next --rows).
The recipe knobs are bertclf.train.prepare's default-recipe constants, set here before training, so a point measures
exactly the code path a default run takes (no flag exposes them). Each point appends one JSON line to --log
(results in recipe_sweep.md, beside this file).
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from benchmarks.common import run
from benchmarks.quality import datasets as DS


def dev_split(work: Path, name: str, rows: int, dev: int) -> tuple[Path, Path]:
    """(train, dev) TSV files cut from the task's training split (seeded shuffle)."""
    train_file = DS.make_splits(work, 0.1)[name][0]
    lines = train_file.read_text(encoding="utf-8").splitlines()
    header, body = lines[0], lines[1:]
    random.Random(42).shuffle(body)
    out = {}
    for part, chunk in (("dev", body[:dev]), ("tr", body[dev:dev + rows])):
        out[part] = work / f"sweep_{name}_{part}_{rows}_{dev}.tsv"
        out[part].write_text("\n".join([header, *chunk]) + "\n", encoding="utf-8")
    return out["tr"], out["dev"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=list(DS.TASKS))
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--dev", type=int, default=500)
    ap.add_argument("--base-lr", type=float)
    ap.add_argument("--head-lr", type=float)
    ap.add_argument("--min-steps", type=int)
    ap.add_argument("--epochs", type=float, help="fixed epochs instead of the MIN_STEPS rule")
    ap.add_argument("--no-prior-bias", action="store_true", help="multi-label: keep the random head bias")
    ap.add_argument("--class-weights", default="none")
    ap.add_argument("--valid-frac", type=float, help="validation share (default: bertclf's rule)")
    ap.add_argument("--baseline", action="store_true", help="score TF-IDF + LR on the same rows instead")
    ap.add_argument("--log", type=Path, default=Path(__file__).with_name("recipe_sweep.jsonl"))
    a = ap.parse_args()

    from bertclf.train import prepare
    from bertclf.data import task as T
    from bertclf.train.loop import TrainConfig, train

    for knob, value in (("BASE_LR", a.base_lr), ("HEAD_LR", a.head_lr), ("MIN_STEPS", a.min_steps)):
        if value is not None:
            setattr(prepare, knob, value)
    if a.no_prior_bias:
        T.MultiLabel.init_head = T.SingleLabel.init_head
    tr, dev = dev_split(a.work, a.task, a.rows, a.dev)
    t = DS.TASKS[a.task]
    if a.baseline:
        out, _ = DS.bertclf("baseline", "--train", str(tr), "--test", str(dev), *DS.task_flags(a.task), "--json",
                            log=a.work / "sweep_baseline.log")
        rep = json.loads(out)["report"]
        point = {"task": a.task, "rows": a.rows, "dev": a.dev, "recipe": "TF-IDF + LR", "metric": t["metric"],
                 "dev_score": round(rep[t["metric"]], 4), "date": time.strftime("%Y-%m-%d %H:%M")}
        with open(a.log, "a", encoding="utf-8") as f:
            f.write(json.dumps(point) + "\n")
        print(json.dumps(point), flush=True)
        return
    kw = dict(multi_label=True, label_names=str(DS.SHARED / "kote" / "labels.txt")) if t.get("multi_label") else {}
    t0 = time.time()
    card = train(TrainConfig(out=str(a.work / f"sweep_run_{a.task}"), train=str(tr), test=str(dev), overwrite=True,
                             text_col=t["text"], label_col=t["label"], epochs=a.epochs,
                             class_weights=a.class_weights, valid_frac=a.valid_frac, **kw), echo=lambda *x, **k: None)
    test = card["metrics"]["test"]
    point = {"task": a.task, "rows": a.rows, "dev": a.dev, "base_lr": prepare.BASE_LR,
             "head_lr": prepare.HEAD_LR, "min_steps": prepare.MIN_STEPS, "epochs": a.epochs,
             "steps": card["training"]["steps"], "prior_bias": not a.no_prior_bias, "class_weights": a.class_weights,
             "valid_rows": card["data"]["valid"]["rows"],
             "metric": t["metric"], "dev_score": round(test[t["metric"]], 4),
             **{k: round(test[k], 4) for k in ("accuracy", "macro_f1", "micro_f1", "weighted_f1") if k in test},
             "seconds": round(time.time() - t0), "date": time.strftime("%Y-%m-%d %H:%M")}
    with open(a.log, "a", encoding="utf-8") as f:
        f.write(json.dumps(point) + "\n")
    print(json.dumps(point), flush=True)


if __name__ == "__main__":
    run(main)
