"""Test-only callbacks that stop or fault `bertclf train` at exact moments, chosen by environment variables.

    BERTCLF_TEST_PAUSE_AT=NAME:STEP  print "bertclf-test: paused at NAME:STEP" on stderr and sleep for good,
                                     so a crash test can SIGKILL the run exactly there. NAME is one of:
      step              after optimizer step STEP, before its logging, validation and checkpoint
      eval              during the validation at STEP: scored, best checkpoint not yet written
      best-write        inside the temporary folder of checkpoints/best, weights written, no manifest yet
      checkpoint-write  inside the temporary folder of checkpoints/step-STEP, weights and optimizer written,
                        no manifest yet
      checkpoint-saved  right after checkpoints/step-STEP is complete and older ones are pruned
    BERTCLF_TEST_OOM_AT=RANK:STEP    process RANK raises torch.OutOfMemoryError once, after the backward pass of
                                     the first micro-batch of optimizer step STEP (so that rank holds gradients
                                     the retry must drop), as a CUDA allocation would.
    BERTCLF_TEST_SIGNAL_AT=RANK:STEP:SIGNAL  process RANK (the RANK variable torchrun sets; 0 without it) sends
                                     itself SIGNAL (SIGTERM, SIGUSR1) right after optimizer step STEP, as a
                                     cluster that takes the machine away would.

tests/hooked_train.py installs them; the package itself never reads these variables.
"""
from __future__ import annotations

import os
import sys
import time

from bertclf.callbacks import TrainCallback

PAUSE_ENV = "BERTCLF_TEST_PAUSE_AT"
PAUSE_MARK = "bertclf-test: paused at"
OOM_ENV = "BERTCLF_TEST_OOM_AT"
SIGNAL_ENV = "BERTCLF_TEST_SIGNAL_AT"


class PauseAt(TrainCallback):
    def __init__(self, point: str):
        self.point = point

    def _maybe_pause(self, name: str, step) -> None:
        if f"{name}:{step}" == self.point:
            print(f"{PAUSE_MARK} {self.point}", file=sys.stderr, flush=True)
            while True:
                time.sleep(3600)

    def on_step_end(self, step):
        self._maybe_pause("step", step)

    def on_evaluate(self, step, report):
        self._maybe_pause("eval", step)

    def on_checkpoint_write(self, kind, step, folder):
        self._maybe_pause({"step": "checkpoint-write", "best": "best-write"}[kind], step)

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


def from_env() -> list[TrainCallback]:
    hooks = []
    if os.environ.get(PAUSE_ENV):
        hooks.append(PauseAt(os.environ[PAUSE_ENV]))
    if os.environ.get(OOM_ENV):
        hooks.append(OutOfMemoryAt(os.environ[OOM_ENV]))
    if os.environ.get(SIGNAL_ENV):
        hooks.append(SignalAt(os.environ[SIGNAL_ENV]))
    return hooks
