"""The run directory (`bertclf train --out DIR`): the one place that names its files and reads/writes them.

    DIR/bertclf.json            the model card; written last, it marks a finished model
    DIR/train_log.jsonl         one JSON record per logged training window and per validation
    DIR/eval_predictions.npz    the final model's validation/test probabilities (for reports)
    DIR/baseline.json           `bertclf baseline --out DIR`
    DIR/checkpoints/step-N/     periodic checkpoints (bertclf/rundir/checkpoint.py writes their contents)
    DIR/checkpoints/best/       the best validation score's weights so far
    DIR/checkpoints/base-model/ the --trim-vocab base model (bertclf distill: the student's start), kept for --resume
    DIR/checkpoints/distill/    bertclf distill: the teacher's logits and the distillation settings, for --resume
    DIR/checkpoints/texts/      train --texts: its settings and the two passes' run directories (pass-1, pass-2,
                                each laid out as DIR is); the kept pass's files become DIR's at the end
    DIR/.bertclf.lock           held (OS file lock) while a run trains in DIR
    DIR/tracking/               --report-to: TensorBoard event files, W&B offline runs, and runs.json (the
                                tracked runs' ids, which --resume reopens); never part of the model
plus the standard Hugging Face files (config.json, model.safetensors, tokenizer files) of the final model.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from pathlib import Path

import numpy as np

from bertclf.errors import UserError
from bertclf.io.files import atomic_file, write_json

CARD_FILE = "bertclf.json"
LOG_FILE = "train_log.jsonl"
PREDICTIONS_FILE = "eval_predictions.npz"
BASELINE_FILE = "baseline.json"
CHECKPOINTS = "checkpoints"
BEST = "best"
BASE_MODEL = "base-model"
DISTILL = "distill"
TEXTS = "texts"
FINAL_STAGING = "final"  # checkpoints/final: the final model's files before they move up into DIR
TRACKING = "tracking"
TRACKED_RUNS = "runs.json"


def checkpoints_dir(run_dir) -> Path:
    return Path(run_dir) / CHECKPOINTS


def step_dir(run_dir, step: int) -> Path:
    return checkpoints_dir(run_dir) / f"step-{step:08d}"


def step_of(checkpoint: Path) -> int:
    return int(Path(checkpoint).name.split("-")[1])


def step_checkpoints(run_dir) -> list[Path]:
    """The step checkpoints (complete or not), oldest first."""
    root = checkpoints_dir(run_dir)
    return sorted(root.glob("step-[0-9]*")) if root.is_dir() else []


def best_dir(run_dir) -> Path:
    return checkpoints_dir(run_dir) / BEST


def base_model_dir(run_dir) -> Path:
    return checkpoints_dir(run_dir) / BASE_MODEL


def distill_dir(run_dir) -> Path:
    return checkpoints_dir(run_dir) / DISTILL


def texts_dir(run_dir) -> Path:
    return checkpoints_dir(run_dir) / TEXTS


def pass_dir(run_dir, n: int) -> Path:
    """train --texts: the run directory of pass n (1: the labelled rows; 2: with the unlabelled texts)."""
    return texts_dir(run_dir) / f"pass-{n}"


def is_resumable(run_dir) -> bool:
    """A step checkpoint, a checkpoint being written, or a --texts run under way."""
    return bool(step_checkpoints(run_dir) or (checkpoints_dir(run_dir) / "config.json").is_file()
                or texts_dir(run_dir).is_dir())


def adopt_model_dir(run_dir, src, card: dict) -> None:
    """Make the finished model directory `src` (a --texts pass under DIR/checkpoints/texts) the model in DIR: its
    files hard-linked (copied where links fail) beside their final names and renamed into place, its card
    replaced by `card`, written last (it marks DIR complete). `src` stays whole until then: a crash in between
    leaves DIR without a card and the pass to adopt again on --resume."""
    import shutil

    run_dir, src = Path(run_dir), Path(src)
    remove_card(run_dir)
    for p in sorted(src.iterdir()):
        if not p.is_file() or p.name in (CARD_FILE, LOCK_FILE):
            continue
        staged = run_dir / f".{p.name}.adopt.tmp"
        staged.unlink(missing_ok=True)
        try:
            os.link(p, staged)
        except OSError:  # another file system, or no hard links there
            shutil.copy2(p, staged)
        staged.replace(run_dir / p.name)
    write_card(run_dir, card)


def tracking_dir(run_dir) -> Path:
    return Path(run_dir) / TRACKING


def read_tracked_runs(run_dir) -> dict:
    """DIR/tracking/runs.json: each tracker's run id (and what it needs to reopen it), {} when there is none."""
    f = tracking_dir(run_dir) / TRACKED_RUNS
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):  # none yet, or torn: the trackers start new runs
        return {}


def write_tracked_runs(run_dir, runs: dict) -> None:
    write_json(tracking_dir(run_dir) / TRACKED_RUNS, runs)


def has_card(run_dir) -> bool:
    return (Path(run_dir) / CARD_FILE).is_file()


def read_card(run_dir) -> dict:
    """The model card, {} when there is none (a plain Hugging Face directory)."""
    f = Path(run_dir) / CARD_FILE
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except ValueError:
        raise UserError(f"{f}: not valid JSON; the model directory is damaged, re-train or re-export it") from None


def write_card(run_dir, card: dict) -> None:
    write_json(Path(run_dir) / CARD_FILE, card)


def remove_card(run_dir) -> None:
    (Path(run_dir) / CARD_FILE).unlink(missing_ok=True)


def log_path(run_dir) -> Path:
    return Path(run_dir) / LOG_FILE


def append_log(run_dir, record: dict) -> None:
    path = log_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def truncate_log(run_dir, step: int) -> None:
    """On resume: forget what was logged after the checkpoint we continue from (and lines torn by a crash)."""
    path = log_path(run_dir)
    if not path.exists():
        return
    keep = []
    for ln in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(ln).get("step", 0) <= step:
                keep.append(ln)
        except (ValueError, AttributeError):  # blank, or torn by the crash (power loss, full disk)
            continue
    with atomic_file(path) as f:
        f.write("".join(k + "\n" for k in keep))


def remove_log(run_dir) -> None:
    log_path(run_dir).unlink(missing_ok=True)


def predictions_path(run_dir) -> Path:
    return Path(run_dir) / PREDICTIONS_FILE


def save_predictions(run_dir, arrays: dict) -> None:
    with atomic_file(predictions_path(run_dir), "wb") as f:
        np.savez_compressed(f, **arrays)


def prepare(out, resume: bool, overwrite: bool) -> Path:
    """Check that `out` may hold this run (refusing, with what to do, when it may not) and that it is writable.

    Only the main process calls it. Folders it had to create for the check are removed again: a run that fails
    on its input leaves no empty folder behind."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory; choose another path")
    has_run = out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir())
    if resume:
        if not is_resumable(out):
            if has_card(out):
                raise UserError(f"--resume: {out} holds a finished model, there is nothing to resume; choose a new "
                                f"directory or --overwrite to train it again")
            if has_run:
                raise UserError(f"--resume: {out} holds no checkpoint to resume from (the run stopped before its "
                                f"first checkpoint); start it again with --overwrite instead of --resume")
            raise UserError(f"--resume: {out} holds no checkpoint to resume from; start without --resume")
    elif has_run and not overwrite:
        if has_card(out):  # finished: --resume has nothing to continue
            raise UserError(f"--out {out}: already holds a finished model; choose a new directory, or --overwrite "
                            f"to replace it")
        resumable = is_resumable(out)
        raise UserError(f"--out {out}: already holds files of another run; choose a new directory"
                        + (", add --resume to continue it," if resumable else "") + " or --overwrite to replace it")
    created = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
        for p in created:
            p.rmdir()
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror}); choose a writable directory") from None
    return out


def clear_previous_run(out) -> None:
    """--overwrite: the old run's log, card (the "finished" mark), checkpoints and tracker files go, so that none
    can pass for this run's: retention keeps the highest step numbers, --resume would pick the old run's newest,
    and TensorBoard would draw the old run's curves under the new one."""
    import shutil

    remove_log(out)
    remove_card(out)
    for old in step_checkpoints(out) + [best_dir(out), tracking_dir(out), texts_dir(out)]:
        shutil.rmtree(old, ignore_errors=True)


LOCK_FILE = ".bertclf.lock"


@contextlib.contextmanager
def lock(out):
    """One run per folder: an OS lock (flock) on DIR/.bertclf.lock, held by the main process for the whole run.
    A second run on the folder is refused with one line naming the holder; the OS drops the lock of a process
    that dies, so a stale file never blocks. Folders created only to hold the lock are removed again."""
    out = Path(out)
    created = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
    out.mkdir(parents=True, exist_ok=True)  # prepare() has checked that it can
    fd = _locked_fd(out / LOCK_FILE)
    try:
        yield
    finally:
        (out / LOCK_FILE).unlink(missing_ok=True)  # before unlocking: a waiting run retries on a fresh file
        os.close(fd)
        for p in created:  # a run that failed on its input leaves no empty folder behind
            with contextlib.suppress(OSError):
                p.rmdir()


def _locked_fd(path: Path) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"--out {path.parent}: another 'bertclf train' ({holder}) is running in this folder; "
                            f"wait for it to end or choose another --out") from None
        if path.exists() and os.stat(path).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)  # the holder removed the file between our open and lock: lock the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
    return fd
