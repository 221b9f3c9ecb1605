"""Test-only callbacks that stop or fault `bertclf train` at exact moments, chosen by environment variables.

    BERTCLF_TEST_PAUSE_AT=NAME:STEP  print "bertclf-test: paused at NAME:STEP" on stderr and sleep for good,
    BERTCLF_TEST_PAUSE_AT=NAME:#N    so a crash test can SIGKILL the run exactly there; NAME:#N pauses at the
                                     N-th time the run reaches NAME (which step improves the best is not known
                                     in advance, so "best-write:#2" is the second best write). NAME is one of:
      step              after optimizer step STEP, before its logging, validation and checkpoint
      eval              during the validation at STEP: scored, best checkpoint not yet written
      best-write        inside the temporary folder of checkpoints/best, weights written, no manifest yet
      best-swap         between the two renames that replace checkpoints/best: the old best moved aside to
                        checkpoints/.best.*.old/d, the new one not yet in place (no checkpoints/best at all)
      checkpoint-write  inside the temporary folder of checkpoints/step-STEP, weights and optimizer written,
                        no manifest yet
      checkpoint-saved  right after checkpoints/step-STEP is complete and older ones are pruned
      final             during the final model write (STEP: the run's last step): the card removed, the first
                        file moved into the output folder, the rest still in checkpoints/final
      final-write       inside the temporary folder of the final model (STEP: the run's last step), weights
                        written, tokenizer and card not yet
    BERTCLF_TEST_OOM_AT=RANK:STEP    process RANK raises torch.OutOfMemoryError once, after the backward pass of
                                     the first micro-batch of optimizer step STEP (so that rank holds gradients
                                     the retry must drop), as a CUDA allocation would.
    BERTCLF_TEST_SIGNAL_AT=RANK:STEP:SIGNAL  process RANK (the RANK variable torchrun sets; 0 without it) sends
                                     itself SIGNAL (SIGTERM, SIGUSR1) right after optimizer step STEP, as a
                                     cluster that takes the machine away would.
    BERTCLF_TEST_DISK_FULL_AT=NAME:STEP  raise OSError(ENOSPC) at that moment of a write, as a full disk would
                                     (NAME: checkpoint-write, best-write or final-write, as above): for machines
                                     where the tests cannot mount a small tmpfs (not root).
    BERTCLF_TEST_ROWS_READ=DIR        each process writes DIR/rows-RANK.json when training ends: the training row
                                     indices it read to build its batches, in order, the type of its training
                                     token ids and, for a token store, the file its ids are memory-mapped from,
                                     and the process's peak RSS (benchmarks/scale.py reads it per rank).

tests/support/hooked_train.py installs them; the package itself never reads these variables.
"""
from __future__ import annotations

import os
import sys
import time

from bertclf.train.callbacks import TrainCallback

PAUSE_ENV = "BERTCLF_TEST_PAUSE_AT"
PAUSE_MARK = "bertclf-test: paused at"
OOM_ENV = "BERTCLF_TEST_OOM_AT"
SIGNAL_ENV = "BERTCLF_TEST_SIGNAL_AT"
DISK_FULL_ENV = "BERTCLF_TEST_DISK_FULL_AT"
ROWS_READ_ENV = "BERTCLF_TEST_ROWS_READ"


class CrashAfter(TrainCallback):
    """In-process: crash the run (a RuntimeError, as a bug or a lost node would) right after optimizer step `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, step):
        if step == self.step:
            raise RuntimeError(f"crash after step {step}")


class PauseAt(TrainCallback):
    KINDS = {"step": "checkpoint-write", "best": "best-write", "best-swap": "best-swap", "final": "final",
             "final-write": "final-write"}

    def __init__(self, point: str):
        self.point, self.reached = point, {}

    def _maybe_pause(self, name: str, step) -> None:
        self.reached[name] = n = self.reached.get(name, 0) + 1
        if self.point in (f"{name}:{step}", f"{name}:#{n}"):
            print(f"{PAUSE_MARK} {self.point} (step {step})", file=sys.stderr, flush=True)
            while True:
                time.sleep(3600)

    def on_step_end(self, step):
        self._maybe_pause("step", step)

    def on_evaluate(self, step, report):
        self._maybe_pause("eval", step)

    def on_checkpoint_write(self, kind, step, folder):
        self._maybe_pause(self.KINDS[kind], step)

    def on_checkpoint_saved(self, step):
        self._maybe_pause("checkpoint-saved", step)


class OutOfMemoryAt(TrainCallback):
    def __init__(self, where: str):
        self.where, self.done = where, False

    def on_backward(self, step, micro_batch, rank):
        import torch

        if not self.done and f"{rank}:{step}" == self.where:
            self.done = True
            raise torch.OutOfMemoryError(f"bertclf-test: simulated CUDA out of memory on process {rank} at step {step}")


class SignalAt(TrainCallback):
    def __init__(self, where: str):
        rank, step, self.signal = where.split(":")
        self.rank, self.step = int(rank), int(step)

    def on_step_end(self, step):
        import signal

        if step == self.step and int(os.environ.get("RANK", "0")) == self.rank:
            os.kill(os.getpid(), getattr(signal, self.signal))


class DiskFullAt(TrainCallback):
    def __init__(self, point: str):
        self.point = point

    def on_checkpoint_write(self, kind, step, folder):
        import errno

        if f"{PauseAt.KINDS[kind]}:{step}" == self.point:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))


def from_env() -> list[TrainCallback]:
    hooks = []
    if os.environ.get(PAUSE_ENV):
        hooks.append(PauseAt(os.environ[PAUSE_ENV]))
    if os.environ.get(OOM_ENV):
        hooks.append(OutOfMemoryAt(os.environ[OOM_ENV]))
    if os.environ.get(SIGNAL_ENV):
        hooks.append(SignalAt(os.environ[SIGNAL_ENV]))
    if os.environ.get(DISK_FULL_ENV):
        hooks.append(DiskFullAt(os.environ[DISK_FULL_ENV]))
    if os.environ.get(ROWS_READ_ENV):
        hooks.append(RowsRead(os.environ[ROWS_READ_ENV]))
    return hooks


class ForwardPreHook(TrainCallback):
    """Registers `hook` (torch's forward pre-hook, with kwargs) on the model once the run is set up: a test sees
    exactly what the model is fed in training and validation."""

    def __init__(self, hook):
        self.hook = hook

    def on_train_begin(self, run):
        run.unwrapped().register_forward_pre_hook(self.hook, with_kwargs=True)


class _Recording:
    """The training token ids as the loop sees them, noting each row index read."""

    def __init__(self, ids, read: list):
        self.ids, self.read = ids, read

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        self.read.append(int(i))
        return self.ids[i]


class RowsRead(TrainCallback):
    """Records the training rows this process reads (the stepper is built after on_train_begin, from run.data)."""

    def __init__(self, folder: str):
        self.folder, self.read, self.kind, self.mapped = folder, [], None, None

    def on_train_begin(self, run):
        ids = run.data.train_ids
        mapped = getattr(getattr(ids, "flat", None), "filename", None)
        self.kind, self.mapped = type(ids).__name__, mapped and str(mapped)
        run.data.train_ids = _Recording(ids, self.read)

    def on_train_end(self, run, card):
        import json

        import resource

        rank = run.accelerator.process_index
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB
        with open(os.path.join(self.folder, f"rows-{rank}.json"), "w") as f:
            json.dump({"rows": self.read, "kind": self.kind, "mapped": self.mapped, "n_train": len(run.data.train_len),
                       "peak_rss_mb": round(peak_mb)}, f)
