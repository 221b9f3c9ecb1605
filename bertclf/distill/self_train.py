"""bertclf train --texts FILE: self-training on unlabelled texts, with bertclf distill's machinery.

Pass 1 is the normal run (encoder, n-gram partner, calibration) on the labelled rows. Pass 2 is a fresh fine-tune
of the same --model with the same recipe and the same validation rows, on the labelled rows plus the texts, with
distill's objective (bertclf/distill/objective.py): the true labels where there are labels, pass 1's logits (its
blend's, calibrated; computed once through Classifier and cached) as soft targets on every row; it gets its own
partner and calibration in the normal finish. Soft targets need no confidence threshold, so there is none to
choose. The kept model: pass 2 when its validation score (the task's --metric, the blend's when kept) is not below
pass 1's, else pass 1.

Both passes are run directories of their own under DIR/checkpoints/texts/ (bertclf/rundir/layout.py), so a stop
in pass 2 never costs pass 1, and --resume continues: a finished pass is reused, an unfinished one resumes from
its checkpoints (or starts again when it has none). The kept pass's files become DIR's, its card with a `texts`
block; then the work folder goes.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

from bertclf.distill.objective import Distillation
from bertclf.distill.run import (DEFAULT_ALPHA, DEFAULT_TEMPERATURE, SETTINGS_FILE, DistillObjective,
                                 check_same_settings, read_unlabelled)
from bertclf.errors import UserError
from bertclf.io.files import sha256_file, write_json
from bertclf.rundir import layout as rundir
from bertclf.train.config import RESUME_KEYS, TrainConfig, validate_config

RULE = ("pass 2 (a fresh fine-tune on the labelled rows plus the texts, taught by pass 1's soft labels) is kept "
        "when its validation score is not below pass 1's")


def train(cfg: TrainConfig, echo=print, callbacks=()) -> dict:
    """bertclf.train: fine-tune as `cfg` says (bertclf/train/loop.py), in two passes when cfg.texts is set;
    returns the model card written to DIR/bertclf.json. callbacks: as for bertclf.train.loop.train, handed each
    pass's run (its `out` is the pass's folder)."""
    from bertclf.train.loop import train as train_once

    if not cfg.texts:
        return train_once(cfg, echo=echo, callbacks=callbacks)
    return train_with_texts(cfg, echo, callbacks)


class SoftTargets(Distillation):
    """Distillation into a fresh model: its new head starts as the task starts one, from the labelled rows."""

    def init_head(self, model, packed) -> None:
        self.task.init_head(model, self.true_labels(packed))

    def true_labels(self, packed: np.ndarray) -> np.ndarray:
        """The labels of the labelled rows of `packed` (class ids or multi-hot rows)."""
        y = np.asarray(packed)[:, :self.width]
        y = y[~np.isnan(y[:, 0])]
        return y[:, 0].astype(np.int64) if self.task.kind == "single_label" else y


class TeacherIsPassOne(DistillObjective):
    """Pass 2's objective (bertclf/train/prepare.py calls setup): the labelled rows plus the texts, pass 1's logits
    as soft targets; the model is cfg.model itself, fresh (no student is made)."""

    def __init__(self, teacher_dir: Path, teacher_card: dict, texts: str, read: dict, precision: str,
                 batch_size: int):
        super().__init__(teacher_dir, teacher_card, None, DEFAULT_TEMPERATURE, DEFAULT_ALPHA, texts, read,
                         precision, batch_size)

    def setup(self, out: Path, train_ds, y_train, task, accelerator, say, resuming: bool):
        settings = self.settings()
        if accelerator.is_main_process:
            check_same_settings(out, settings, resuming)
            write_json(rundir.distill_dir(out) / SETTINGS_FILE, settings)
        accelerator.wait_for_everyone()
        train_ds, n_labelled, logits = self.rows_and_teacher_logits(out, train_ds, accelerator, say)
        soft = SoftTargets(task, self.temperature, self.alpha)
        say(f"pass 2: {n_labelled} labelled + {self.n_unlabelled} unlabelled rows; loss {self.alpha:g} x T^2 "
            f"KL(pass 1 || model) + {1 - self.alpha:g} x the task's loss on labelled rows, KL alone on the others, "
            f"at T = {self.temperature:g}; 'acc' in the training lines is agreement with pass 1")
        return train_ds, soft.targets(y_train, logits), soft

    def card_fields(self) -> dict:
        return {}  # the `texts` block is the final card's (train_with_texts)


def reading(cfg: TrainConfig) -> dict:
    """How --texts is read: the training text column, or one text per line (bertclf/io/rows.py)."""
    return {"text_col": cfg.text_col or "text", "fmt": None, "encoding": cfg.encoding, "columns": None}


def outer_settings(cfg: TrainConfig) -> dict:
    """What --resume of a --texts run must repeat: the settings of both passes and the texts file's content."""
    return {k: getattr(cfg, k) for k in RESUME_KEYS} | {"texts_sha256": sha256_file(cfg.texts)}


def check_same_outer_settings(out: Path, settings: dict) -> None:
    path = rundir.texts_dir(out) / SETTINGS_FILE
    if not path.is_file():
        raise UserError(f"--resume: --texts differs from the run in {out} (it was started without --texts); repeat "
                        f"its settings, or start again with --overwrite")
    saved = json.loads(path.read_text())
    changed = [("the --texts file's content" if k == "texts_sha256" else "--" + k.replace("_", "-"))
               for k in settings if k in saved and saved[k] != settings[k]]
    if changed:
        raise UserError(f"--resume: {', '.join(changed)} differ from the --texts run in {out}; repeat its settings "
                        f"(see {path}) or start again with --overwrite")


def resume_or_start(cfg: TrainConfig) -> tuple[bool, bool]:
    """(resume?, overwrite?) of the whole run; --resume auto continues a --texts run under way."""
    if cfg.resume != "auto":
        return bool(cfg.resume), cfg.overwrite
    if (rundir.texts_dir(cfg.out) / SETTINGS_FILE).is_file():
        return True, cfg.overwrite
    if rundir.has_card(cfg.out) and not cfg.overwrite:
        raise UserError(f"--resume auto: {cfg.out} holds a finished model and no run under way; there is nothing "
                        f"to resume: choose a new directory or --overwrite to train it again")
    return False, True


def train_with_texts(cfg: TrainConfig, echo, callbacks) -> dict:
    validate_config(cfg)
    texts = read_unlabelled(cfg.texts, reading(cfg))  # a bad or empty file fails here, before any training
    resuming, overwrite = resume_or_start(cfg)
    out = rundir.prepare(cfg.out, resuming, overwrite) if is_main() else Path(cfg.out)
    settings = outer_settings(cfg)
    if resuming and is_main():
        check_same_outer_settings(out, settings)
    with rundir.lock(out) if is_main() else _nothing():
        if is_main():
            if not resuming:
                rundir.clear_previous_run(out)
            write_json(rundir.texts_dir(out) / SETTINGS_FILE, settings)
        echo(f"--texts {cfg.texts}: {len(texts)} unlabelled texts; pass 1 trains on the labelled rows, pass 2 on "
             f"them and the texts with pass 1's soft labels; {RULE}")
        card_1 = run_pass(cfg, out, 1, echo, callbacks, resuming)
        teacher = rundir.pass_dir(out, 1)
        objective = TeacherIsPassOne(teacher, card_1, cfg.texts, reading(cfg), cfg.precision, cfg.eval_batch_size)
        card_2 = run_pass(cfg, out, 2, echo, callbacks, resuming, objective)
        if not is_main():
            return {}
        return keep_one(cfg, out, card_1, card_2, len(texts), settings["texts_sha256"], echo)


def run_pass(cfg: TrainConfig, out: Path, n: int, echo, callbacks, resuming: bool, objective=None) -> dict:
    """Pass n in its own folder: its card when it finished before (a resumed run), else it trains (continuing
    from its checkpoints when resuming)."""
    from bertclf.train.loop import train as train_once

    folder = rundir.pass_dir(out, n)
    if resuming and rundir.has_card(folder):
        echo(f"pass {n}: finished before, reused ({folder})")
        return rundir.read_card(folder)
    echo(f"pass {n}: training in {folder}")
    pass_cfg = dataclasses.replace(cfg, out=str(folder), texts=None, resume="auto" if resuming else False,
                                   overwrite=True)
    card = train_once(pass_cfg, echo=echo, callbacks=callbacks, objective=objective)
    return card or rundir.read_card(folder)  # other processes get {} from train


def keep_pass_2(score_1: float | None, score_2: float | None) -> bool:
    """The keep rule: pass 2 when its validation score is not below pass 1's (None: not scored, pass 1 stays)."""
    return score_1 is not None and score_2 is not None and score_2 >= score_1


def score_of(card: dict, split: str) -> float | None:
    """The card's score on `split` (valid, test) by its task's --metric; None when not scored."""
    from bertclf.data.task import task_from_card

    report = (card.get("metrics") or {}).get(split)
    return task_from_card(card, card["labels"]).score(report) if report else None


def keep_one(cfg: TrainConfig, out: Path, card_1: dict, card_2: dict, n_texts: int, sha256: str, echo) -> dict:
    """The keep rule applied: the kept pass's files become OUT's, its card with the `texts` block; the work folder
    goes. Returns the card."""
    from bertclf.models import ngram

    scores = {n: score_of(c, "valid") for n, c in ((1, card_1), (2, card_2))}
    kept = 2 if keep_pass_2(scores[1], scores[2]) else 1
    metric = ((card_1.get("classification") or {}).get("metric")) or "accuracy"
    seconds = {n: float((c.get("training") or {}).get("wall_time_s") or 0) for n, c in ((1, card_1), (2, card_2))}
    block = {"file": str(cfg.texts), "sha256": sha256, "rows": n_texts, "rule": RULE, "metric": metric,
             "temperature": DEFAULT_TEMPERATURE, "alpha": DEFAULT_ALPHA,
             "pass_1": {"valid": scores[1], "test": score_of(card_1, "test"), "seconds": round(seconds[1], 1)},
             "pass_2": {"valid": scores[2], "test": score_of(card_2, "test"), "seconds": round(seconds[2], 1)},
             "kept": f"pass-{kept}", "seconds": round(seconds[1] + seconds[2], 1)}
    card = dict(card_2 if kept == 2 else card_1)
    card["args"] = dict(card["args"]) | {"out": cfg.out, "texts": cfg.texts, "resume": cfg.resume,
                                         "overwrite": cfg.overwrite}
    card["texts"] = block
    winner = rundir.pass_dir(out, kept)
    if not ngram.find(winner):
        ngram.remove(out)  # an earlier run's partner in OUT must not pass for this model's
    rundir.adopt_model_dir(out, winner, card)
    shutil.rmtree(rundir.checkpoints_dir(out), ignore_errors=True)
    fmt = lambda s: "none" if s is None else f"{s:.4f}"  # noqa: E731
    echo(f"--texts: kept pass {kept}: validation {metric} pass 2 {fmt(scores[2])} "
         f"{'>=' if kept == 2 else '<' if scores[1] is not None and scores[2] is not None else 'vs'} pass 1 "
         f"{fmt(scores[1])}; {n_texts} texts, {block['seconds'] / 60:.1f} min for both passes "
         f"(pass 2 {seconds[2] / 60:.1f}); model in {out}")
    return card


def is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _nothing():
    import contextlib

    return contextlib.nullcontext()
