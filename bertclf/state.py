"""TrainState: where a run stands; saved in every checkpoint (trainer_state.json) and restored on resume."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class TrainState:
    step: int = 0                        # optimizer steps done
    epoch: int = 0                       # current epoch (0-based)
    batch_in_epoch: int = 0              # batches of the current epoch done
    best_score: float | None = None      # best validation accuracy so far
    best_step: int | None = None
    evals_without_improvement: int = 0
    n_micro: int = 1                     # micro-batches per step (doubles on each out-of-memory back-off)
    samples_seen: int = 0                # over all processes
    tokens_seen: int = 0
    train_seconds: float = 0.0           # time in logged training windows (validation excluded)
    window: list | None = None           # the open logging window's [loss sum, correct, rows], reduced over ranks

    def advance(self, rows: int, tokens: int, world: int, batches_in_epoch: int) -> bool:
        """Count one optimizer step over `rows` rows per process; True when it ended the epoch."""
        self.step += 1
        self.batch_in_epoch += 1
        self.samples_seen += rows * world
        self.tokens_seen += tokens * world
        if self.batch_in_epoch < batches_in_epoch:
            return False
        self.epoch += 1
        self.batch_in_epoch = 0
        return True

    def record_score(self, score: float, step: int) -> bool:
        """Note a validation score; True if it is the best so far."""
        improved = self.best_score is None or score > self.best_score
        if improved:
            self.best_score, self.best_step, self.evals_without_improvement = score, step, 0
        else:
            self.evals_without_improvement += 1
        return improved

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
