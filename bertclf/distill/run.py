"""bertclf distill TEACHER --layers N --out DIR: a smaller, faster copy of a trained classifier.

The student (bertclf/distill/student.py) is the teacher with N of its layers, evenly spaced. It is trained by the normal
training loop (bertclf/train/loop.py) with another objective: the teacher's own training rows, rebuilt from the
provenance in the teacher's bertclf.json by the same data.py calls `bertclf train` made (so its validation rows,
which the int8 export checks itself on, are rebuilt the same way from the student's card), plus unlabelled texts
from --texts; targets are the true labels and the teacher's logits, computed once up front and cached in
DIR/checkpoints/distill/ (a resumed run reuses them); the loss is bertclf/distill/objective.py's.
The result is a normal model directory whose card has a `distilled_from` block. A run that fails before the
student is saved takes back what it wrote in DIR (all of DIR if it made it), unless it wrote a checkpoint that
--resume continues from: the same command, mended, then runs without --overwrite.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np

from bertclf.rundir import layout as rundir
from bertclf.errors import UserError
from bertclf.io.files import atomic_file, sha256_file, write_json

# the TrainConfig fields a student run may set; unset, the teacher's card gives them (max_steps never inherited)
RECIPE_FLAGS = ("epochs", "lr", "batch_size", "max_steps")
DEFAULT_TEMPERATURE = 2.0
DEFAULT_ALPHA = 0.5
LOGITS_FILE, SETTINGS_FILE = "teacher_logits.npz", "settings.json"


class DistillObjective:
    """What prepare() asks of an objective (bertclf/train/prepare.py): setup() and card_fields()."""

    def __init__(self, teacher_dir: Path, teacher_card: dict, layers: int, temperature: float, alpha: float,
                 texts: str | None, read: dict, precision: str, batch_size: int):
        self.teacher_dir, self.teacher_card, self.layers = teacher_dir, teacher_card, layers
        self.temperature, self.alpha, self.texts, self.read = temperature, alpha, texts, read
        self.precision, self.batch_size = precision, batch_size
        self.chosen: list[int] = []
        self.teacher_precision = precision
        self.n_unlabelled = 0
        self.teacher_sha256 = sha256_file(weights_file(teacher_dir))

    def settings(self) -> dict:
        """What a resumed run must repeat (the loop checks its own settings: epochs, lr, batch size...)."""
        return {"teacher": str(self.teacher_dir.resolve()), "teacher_sha256": self.teacher_sha256,
                "layers": self.layers, "temperature": self.temperature, "alpha": self.alpha,
                "texts": str(Path(self.texts).resolve()) if self.texts else None,
                "texts_sha256": sha256_file(self.texts) if self.texts else None}

    def setup(self, out: Path, train_ds, y_train, task, accelerator, say, resuming: bool):
        """Called by prepare() with the teacher's training rows rebuilt: writes the student to start from (the
        model the run's config names), adds the unlabelled texts, and returns (rows, targets, task)."""
        from bertclf.distill.objective import Distillation
        from bertclf.distill.student import evenly_spaced, make_student

        check_same_rows(train_ds, self.teacher_card, self.teacher_dir)
        settings = self.settings()
        if accelerator.is_main_process:
            check_same_settings(out, settings, resuming)
            write_json(rundir.distill_dir(out) / SETTINGS_FILE, settings)
            if not (resuming and (rundir.base_model_dir(out) / "config.json").is_file()):
                make_student(self.teacher_dir, self.layers, rundir.base_model_dir(out))
        accelerator.wait_for_everyone()
        n_teacher = json.loads((self.teacher_dir / "config.json").read_text())["num_hidden_layers"]
        self.chosen = evenly_spaced(n_teacher, self.layers)
        say(f"student: {self.layers} of the teacher's {n_teacher} layers ({', '.join(map(str, self.chosen))}; "
            f"0 = the lowest), its embeddings and classifier head")
        train_ds, n_labelled, logits = self.rows_and_teacher_logits(out, train_ds, accelerator, say)
        distill_task = Distillation(task, self.temperature, self.alpha)
        say(f"distilling on {n_labelled} labelled + {self.n_unlabelled} unlabelled rows: loss {self.alpha:g} x T^2 "
            f"KL(teacher || student) + {1 - self.alpha:g} x {'cross-entropy' if task.kind == 'single_label' else 'BCE'}"
            f" at T = {self.temperature:g}; 'acc' in the training lines is agreement with the teacher")
        return train_ds, distill_task.targets(y_train, logits), distill_task

    def rows_and_teacher_logits(self, out: Path, train_ds, accelerator, say):
        """(the labelled rows and then --texts' unlabelled ones, how many are labelled, the teacher's logits of all)."""
        n_labelled = len(train_ds)
        if self.texts:
            train_ds = with_unlabelled(train_ds, read_unlabelled(self.texts, self.read), self.texts)
            self.n_unlabelled = len(train_ds) - n_labelled
        return train_ds, n_labelled, self.teacher_logits(out, train_ds.texts, accelerator, say)

    def teacher_logits(self, out: Path, texts: list[str], accelerator, say) -> np.ndarray:
        """The teacher's logits for `texts`, computed once (main process) and kept in the work folder."""
        max_length = self.teacher_card.get("max_length") or 128
        digest = hashlib.sha256()
        for part in (self.teacher_sha256, str(max_length), self.precision, *texts):
            digest.update(part.encode("utf-8") + b"\0")
        key, path = digest.hexdigest(), rundir.distill_dir(out) / LOGITS_FILE
        if accelerator.is_main_process and cached_key(path) != key:
            from bertclf.inference.classifier import Classifier

            t0 = time.time()
            teacher = Classifier.load(str(self.teacher_dir), device="cpu" if accelerator.device.type == "cpu"
                                      else None, precision=self.precision)
            logits = teacher.logits(texts, self.batch_size)
            with atomic_file(path, "wb") as f:
                np.savez(f, logits=logits, key=np.array(key), precision=np.array(teacher.precision))
            say(f"teacher: scored {len(texts)} texts in {teacher.precision} in {time.time() - t0:.0f}s "
                f"(kept in {path} for a resumed run)")
        elif accelerator.is_main_process:
            say(f"teacher: logits of the {len(texts)} texts reused from {path}")
        accelerator.wait_for_everyone()
        with np.load(path, allow_pickle=False) as f:
            if "precision" in f.files:  # what "auto" became: bf16 or fp32
                self.teacher_precision = str(f["precision"])
            return f["logits"]

    def card_fields(self) -> dict:
        teacher_test = ((self.teacher_card.get("metrics") or {}).get("test") or {})
        return {"base_model": self.teacher_card.get("base_model"),
                "distilled_from": self.settings() | {
                    "teacher_layers": json.loads((self.teacher_dir / "config.json").read_text())["num_hidden_layers"],
                    "initial_layers": self.chosen, "unlabelled_rows": self.n_unlabelled,
                    "teacher_precision": self.teacher_precision, "teacher_test_accuracy": teacher_test.get("accuracy")}}


def weights_file(model_dir: Path) -> Path:
    return model_dir / "model.safetensors"


def cached_key(path: Path) -> str | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            return str(f["key"])
    except (OSError, ValueError, KeyError):
        return None


def check_same_settings(out: Path, settings: dict, resuming: bool) -> None:
    """--resume with other distillation settings than the run being resumed: one line naming them."""
    path = rundir.distill_dir(out) / SETTINGS_FILE
    if not resuming or not path.is_file():
        return
    saved = json.loads(path.read_text())
    names = {"teacher": "TEACHER_DIR", "teacher_sha256": "the teacher's weights", "texts_sha256": "the --texts file"}
    changed = [names.get(k, "--" + k) for k in settings if saved.get(k) != settings[k]]
    if changed:
        raise UserError(f"--resume: {', '.join(dict.fromkeys(changed))} differ from the distillation in {out}; "
                        f"repeat its settings (see {path}) or start again with --overwrite")


def check_same_rows(train_ds, teacher_card: dict, teacher_dir: Path) -> None:
    """The rebuilt training rows are the teacher's (same file, same count), else one line."""
    kept = (teacher_card.get("data") or {}).get("train") or {}
    # a teacher that is itself a student of --texts also trained on unlabelled rows: only its labelled ones rebuild
    unlabelled = kept.get("unlabelled_rows", (kept.get("label_counts") or {}).get("null", 0))
    labelled = kept["rows"] - unlabelled if "rows" in kept else None
    if (kept.get("sha256") and kept["sha256"] != train_ds.sha256) or labelled != len(train_ds):
        raise UserError(f"{teacher_dir}: its training rows cannot be rebuilt ({train_ds.source.split(' (')[0]} "
                        f"changed since it was trained: {len(train_ds)} rows now, {labelled} then, or another "
                        f"sha256); distill needs the teacher's training data as it was")


def read_unlabelled(path: str, read: dict) -> list[str]:
    """The non-empty texts of --texts: a file with a text column, or one text per line (bertclf/io/rows.py)."""
    from bertclf.data.dataset import is_empty_text
    from bertclf.inference.records import iter_texts

    texts = [t for t in iter_texts(path, **read) if not is_empty_text(t)]
    if not texts:
        raise UserError(f"--texts {path}: no texts in it; give a file with a text column or one text per line")
    return texts


def with_unlabelled(train_ds, texts: list[str], path: str):
    """The training rows and then the unlabelled texts (label None)."""
    from bertclf.data.dataset import Dataset

    return Dataset(train_ds.texts + texts, train_ds.labels + [None] * len(texts),
                   source=f"{train_ds.source} + {len(texts)} unlabelled texts of {path}", sha256=train_ds.sha256,
                   dropped_empty=train_ds.dropped_empty, rows_read=train_ds.rows_read)


def check_flags(teacher_dir: str, layers, temperature: float, alpha: float, texts: str | None) -> tuple[Path, dict]:
    """Every check that needs no training: the teacher, its provenance, --layers, --temperature, --alpha, --texts.
    Returns (teacher directory, its card)."""
    from bertclf.models.resolve import check_model_dir
    from bertclf.distill.student import check_layers

    if not Path(teacher_dir).exists():
        raise UserError(f"{teacher_dir}: teacher model directory not found; give a directory made by 'bertclf train'")
    teacher = check_model_dir(Path(teacher_dir))
    if not weights_file(teacher).is_file():
        raise UserError(f"{teacher}: no model.safetensors; distill needs a trained torch model, not an export")
    card = rundir.read_card(teacher)
    if not (card.get("args") or {}).get("data") and not (card.get("args") or {}).get("train"):
        raise UserError(f"{teacher}: its bertclf.json names no training data; distill needs a teacher trained "
                        f"by 'bertclf train' (its training rows are rebuilt from that card)")
    n_teacher = json.loads((teacher / "config.json").read_text()).get("num_hidden_layers")
    if not isinstance(n_teacher, int):
        raise UserError(f"{teacher}/config.json: no num_hidden_layers; distill supports BERT-like teachers")
    check_layers(layers, n_teacher, str(teacher))
    if not (temperature > 0 and math.isfinite(temperature)):
        raise UserError(f"--temperature: must be a number > 0, got {temperature}")
    if not 0 <= alpha <= 1:
        raise UserError(f"--alpha: must be in [0, 1] (the soft labels' share of the loss), got {alpha}")
    if texts and not Path(texts).is_file():
        raise UserError(f"--texts {texts}: file not found; give a file with a text column or one text per line")
    return teacher, card


def distill(teacher_dir: str, layers: int, out: str, texts: str | None = None, text_col: str | None = None,
            fmt: str | None = None, encoding: str = "utf-8", columns: list[str] | None = None,
            epochs: float | None = None, lr: float | None = None, batch_size: int | None = None,
            temperature: float = DEFAULT_TEMPERATURE, alpha: float = DEFAULT_ALPHA, precision: str = "auto",
            max_steps: int | None = None, checkpoint_every: int | None = None, resume: bool | str = False,
            overwrite: bool = False, echo=print, callbacks=()) -> dict:
    """Train a `layers`-layer student of `teacher_dir` into `out`; returns its model card. Unset recipe flags
    (epochs, lr, batch size) are the teacher's, as its card records them; --max-steps is never inherited.
    callbacks: bertclf.train.callbacks.TrainCallback instances, as for train(). A run that fails before the student is
    saved and before any checkpoint of its own takes back what it added to `out` (see undo_partial_run)."""
    from bertclf.train.loop import train

    cfg, objective = distill_setup(teacher_dir, layers, out, texts=texts, text_col=text_col, fmt=fmt,
                                   encoding=encoding, columns=columns, epochs=epochs, lr=lr, batch_size=batch_size,
                                   temperature=temperature, alpha=alpha, precision=precision, max_steps=max_steps,
                                   checkpoint_every=checkpoint_every, resume=resume, overwrite=overwrite)
    before = snapshot(Path(out))
    try:
        return train(cfg, echo=echo, objective=objective, callbacks=callbacks)
    except BaseException:  # a bad --texts, a crash, Ctrl-C: the same command must work again without --overwrite
        undo_partial_run(Path(out), before)
        raise


def distill_setup(teacher_dir: str, layers: int, out: str, texts=None, text_col=None, fmt=None, encoding="utf-8",
                  columns=None, epochs=None, lr=None, batch_size=None, temperature=DEFAULT_TEMPERATURE,
                  alpha=DEFAULT_ALPHA, precision="auto", max_steps=None, checkpoint_every=None, resume=False,
                  overwrite=False):
    """(training config, DistillObjective) of a distill() call, after every check that needs no training:
    what bertclf.train.loop.train (and bertclf.train.prepare.prepare, which tests call to see the targets) are given."""
    from bertclf.train.config import config_from_dict

    teacher, card = check_flags(teacher_dir, layers, temperature, alpha, texts)
    if (card.get("data") or {}).get("text_pair_col"):
        raise UserError(f"distill: {teacher_dir} is a sentence-pair model; distilling pair models is not supported "
                        f"yet")
    args = dict(card["args"])
    recipe = {"epochs": epochs, "lr": lr, "batch_size": batch_size}  # unset: the teacher's
    cfg = config_from_dict(args | {k: v for k, v in recipe.items() if v is not None} | {
        "out": out, "model": str(rundir.base_model_dir(out)), "trim_vocab": False, "precision": precision,
        "max_steps": max_steps, "checkpoint_every": checkpoint_every,  # never the teacher's: other rows, other run
        "resume": resume, "overwrite": overwrite,
        "texts": None})  # a teacher trained with train --texts: the student's texts are distill's own --texts
    data = card.get("data") or {}
    read = {"text_col": text_col or data.get("text_col") or "text", "fmt": fmt, "encoding": encoding,
            "columns": columns}
    return cfg, DistillObjective(teacher, card, layers, temperature, alpha, texts, read, precision,
                                 cfg.eval_batch_size)


def snapshot(out: Path) -> dict:
    """What `out` holds before the run: its entries and those of its checkpoints folder, the card's inode and
    mtime (a card written by the run is a new file: the writes are atomic renames), and the folders the run
    would create."""
    entries = {p for folder in (out, rundir.checkpoints_dir(out)) if folder.is_dir() for p in folder.iterdir()}
    card = out / rundir.CARD_FILE
    return {"existed": out.is_dir(), "entries": entries,
            "card": (card.stat().st_ino, card.stat().st_mtime_ns) if card.is_file() else None,
            "created": [p for p in (out, *out.parents) if not p.exists()]}  # deepest first


def undo_partial_run(out: Path, before: dict) -> None:
    """After a failed run: remove what it added to `out` (all of `out` if it made it), unless the run got far
    enough to keep: its student saved (a new card) or a checkpoint of its own written (a preempted or crashed
    run continues from it with --resume, which needs the work folder too). Entries that were there before
    stay; only the main process cleans, holding the folder's lock (it is not touched while another run holds it)."""
    import contextlib
    import os
    import shutil

    if os.environ.get("RANK", "0") != "0" or not out.is_dir():
        return
    now = snapshot(out)
    if now["card"] is not None and now["card"] != before["card"]:
        return  # the student is saved
    new = [p for p in now["entries"] - before["entries"] if p.name != rundir.LOCK_FILE]
    if any(p.parent == rundir.checkpoints_dir(out) and p.name.startswith("step-") for p in new):
        return  # resumable
    try:
        with rundir.lock(out):
            for p in sorted(new, key=lambda p: len(p.parts), reverse=True):  # checkpoints/x before checkpoints
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
    except Exception:  # noqa: BLE001 (another run took the folder, or it cannot be written: leave it)
        return
    if not before["existed"]:
        for p in before["created"]:  # deepest first; a folder someone else filled meanwhile stays
            with contextlib.suppress(OSError):
                p.rmdir()
