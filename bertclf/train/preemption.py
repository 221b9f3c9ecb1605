"""Preemption: SIGTERM (spot instances, Kubernetes, Slurm) or SIGUSR1 (Slurm `--signal=USR1@N`) during training
finishes the current optimizer step, writes a checkpoint on every rank's behalf and stops with one line and
exit code 75 (EX_TEMPFAIL: try again), so that the same command with `--resume auto` continues the run."""
from __future__ import annotations

import contextlib
import signal
import threading

import torch

from bertclf.errors import UserError

PREEMPTED_EXIT = 75
SIGNALS = ("SIGTERM", "SIGUSR1")


class Preempted(UserError):
    exit_code = PREEMPTED_EXIT
    prefix = ""  # a stop on request is no error: "bertclf: stopped by SIGTERM after step ..."


class StopSignal(Exception):
    """A stop signal during work that gives way to it (Preemption.interrupting)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class Preemption:
    """Notes a stop signal (a second one changes nothing: the checkpoint being written stays whole); the loop
    asks after every step. Installed only in the main thread (Python delivers signals there)."""

    def __init__(self):
        self.received: str | None = None
        self._previous = {}
        self._interrupt = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for name in SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def _note(self, signum, frame):
        self.received = self.received or signal.Signals(signum).name
        previous = self._previous.get(signum)
        if callable(previous):  # a caller that runs several trainings (tune) hears of the signal too
            previous(signum, frame)
        if self._interrupt:
            self._interrupt = False  # once: the handler that catches it must not be interrupted in turn
            raise StopSignal(self.received)

    @contextlib.contextmanager
    def interrupting(self):
        """Inside, a stop signal (or one received before) raises StopSignal at once: for work after the last
        step that can be skipped (scoring the test rows), so that a preempted run's model is saved in seconds,
        not after minutes of scoring. Main process only: nothing collective may run inside."""
        if self.received:
            raise StopSignal(self.received)
        self._interrupt = True
        try:
            yield
        finally:
            self._interrupt = False

    def requested(self, accelerator) -> bool:
        """True on every process if any process received a stop signal (with several, a collective per step:
        every rank then knows the signal)."""
        if accelerator.num_processes > 1:
            signum = torch.tensor(signal.Signals[self.received].value if self.received else 0,
                                  device=accelerator.device)
            torch.distributed.all_reduce(signum, op=torch.distributed.ReduceOp.MAX)
            self.received = signal.Signals(int(signum.item())).name if signum.item() else None
        return self.received is not None

    def stop(self, step: int, checkpoint) -> Preempted:
        return Preempted(f"stopped by {self.received} after step {step}: checkpoint {checkpoint} written; run the "
                         f"same command with --resume auto (or --resume) to continue")
