"""Meter: the logging window (loss, accuracy, throughput since the last log line) and the log itself.

The sums stay on the device: a number leaves the GPU only when a line is logged, never per step.
"""
from __future__ import annotations

import time

import torch

from bertclf.errors import UserError
from bertclf.rundir import layout as rundir


class Logger:
    """Prints the tutorial-style line and appends every logged value to DIR/train_log.jsonl (main process)."""

    def __init__(self, run_dir, main_process: bool, echo=print):
        self.run_dir, self.main, self.echo = run_dir, main_process, echo

    def __call__(self, line: str = "", **record):
        if not self.main:
            return
        if line:
            self.echo(line)
        if record:
            rundir.append_log(self.run_dir, record)


class Meter:
    def __init__(self, accelerator, world: int, window: list | None = None):
        self.acc, self.world = accelerator, world
        device = accelerator.device
        self.loss = torch.zeros((), device=device)   # summed over rows
        self.correct = torch.zeros((), device=device)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)  # any non-finite loss since the start
        self.rows = 0                                 # on this process
        self.samples = self.tokens = 0                # over all processes
        self.start = time.time()
        if window:  # resumed mid-window: continue its sums (saved reduced over processes)
            self.loss += window[0] / world
            self.correct += window[1] / world
            self.rows = window[2]

    def add(self, loss_sum, correct, nonfinite, rows: int, tokens: int) -> None:
        self.loss += loss_sum
        self.correct += correct
        self.nonfinite |= nonfinite
        self.rows += rows
        self.samples += rows * self.world
        self.tokens += tokens * self.world

    def any_nonfinite(self, model) -> bool:
        """True on every process if any process saw a non-finite loss, or the weights hold NaN/inf (a collective)."""
        bad = self.nonfinite | ~torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()
        return bool(self.acc.reduce(bad.float(), "sum") > 0)

    def window(self) -> list:
        """The open window's sums, reduced over processes (a collective): kept in checkpoints."""
        return [self.acc.reduce(self.loss, "sum").item(), self.acc.reduce(self.correct, "sum").item(), self.rows]

    def flush(self) -> dict:
        """Close the window: its mean loss and accuracy over all processes, and throughput; start a new one."""
        elapsed = time.time() - self.start
        n = self.rows * self.world
        out = {"loss": self.acc.reduce(self.loss, "sum").item() / n,
               "acc": self.acc.reduce(self.correct, "sum").item() / n,
               "samples_per_s": self.samples / max(elapsed, 1e-9), "tokens_per_s": self.tokens / max(elapsed, 1e-9),
               "seconds": elapsed}
        self.loss.zero_(), self.correct.zero_()
        self.rows, self.samples, self.tokens, self.start = 0, 0, 0, time.time()
        return out

    def exclude(self, seconds: float) -> None:
        """Time spent on something else (validation) is not training throughput."""
        self.start += seconds


def check_finite(run, meter: Meter) -> None:
    """Stop with one line if a loss since the start or a weight is NaN/inf: called before anything is logged
    as a result or written to disk, so no checkpoint, best model or final model ever holds a diverged model."""
    if meter.any_nonfinite(run.learner.model):
        raise UserError(f"training diverged: the loss or the weights became NaN/inf before step {run.state.step}; "
                        f"lower --lr (now {run.plan.lr:g}) or use --precision fp32; the last checkpoint is intact")
