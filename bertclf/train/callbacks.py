"""Events of a training run that code outside the loop may act on (tests pause or inject faults through them).

Subclass TrainCallback, override what you need, and pass instances to `train(cfg, callbacks=[...])`. Every
method is called, in the order the callbacks were given, on each process that reaches that moment (checkpoint
writes: the main process only); the defaults do nothing.
"""
from __future__ import annotations


class TrainCallback:
    def on_train_begin(self, run) -> None:
        """Once the run is set up (bertclf.train.prepare.Run: model, tokenizer, task, plan; every setting, file and
        resume check passed), before the first step (of a resumed run too: run.state.step is where it resumes).
        For reading: a callback that measures the weights as they train (research tools score held-out rows at
        each validation); replacing the run's parts is not supported."""

    def on_backward(self, step: int, micro_batch: int, rank: int) -> None:
        """After the backward pass of micro-batch `micro_batch` of optimizer step `step` (counting from 1),
        inside the step's out-of-memory guard: raising torch.OutOfMemoryError here is handled as a real one."""

    def on_step_end(self, step: int) -> None:
        """After optimizer step `step`, before its logging, validation and checkpoint."""

    def on_log(self, step: int, metrics: dict) -> None:
        """A log window closed at `step` (main process only): its mean loss and accuracy, lr, samples/s,
        tokens/s and epoch, the numbers of its train_log.jsonl record."""

    def on_evaluate(self, step: int, report: dict) -> None:
        """After the validation at `step` is scored, before the best checkpoint is written."""

    def on_checkpoint_write(self, kind: str, step: int, folder) -> None:
        """A moment inside a write that a kill must not spoil. kind:
        "step", "best"  inside the checkpoint's temporary folder, weights written, no manifest yet;
        "best-swap"     between the renames that replace checkpoints/best: the old best moved aside, the new one
                        not yet in place (folder: checkpoints/best, missing at that moment);
        "final-write"   inside the final model's temporary folder (checkpoints/final), weights written, tokenizer
                        and card not yet (step: the run's last step);
        "final"         during the final model write: the card removed, the first file moved into the output
                        folder, the others still staged (step: the run's last step; folder: the output folder).
        An OSError raised here is handled as one raised by the write itself (a full disk: one line, exit 74)."""

    def on_checkpoint_saved(self, step: int) -> None:
        """After checkpoints/step-N is complete and older ones are pruned."""

    def on_train_end(self, run, card: dict) -> None:
        """The run finished: the final model is written to run.out with its card (the main process's `card`: the
        bertclf.json written, with the test metrics and calibration; {} on the other processes)."""


class Events:
    """Calls the same method on each callback."""

    def __init__(self, callbacks=()):
        self.callbacks = list(callbacks or ())

    def __getattr__(self, name):
        if not name.startswith("on_"):
            raise AttributeError(name)

        def call(*args, **kwargs):
            for cb in self.callbacks:
                getattr(cb, name)(*args, **kwargs)
        return call
