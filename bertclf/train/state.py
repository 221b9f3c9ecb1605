"""TrainState: where a run stands; saved in every checkpoint (trainer_state.json) and restored on resume."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields


def selection_tolerance(score: float, n_rows: int) -> float:
    """One standard error of a validation score (binomial: sqrt(s(1-s)/n)). Scores closer than this are a tie
    that goes to the later, more trained weights: on 200 NSMC validation rows an earlier checkpoint won by one
    row and scored 2.5 pt lower on 5,000 test reviews (benchmarks/RESULTS.md, "Checkpoint selection")."""
    s = min(max(score, 0.0), 1.0)
    return math.sqrt(s * (1 - s) / max(n_rows, 1))


@dataclass
class TrainState:
    step: int = 0                        # optimizer steps done
    epoch: int = 0                       # current epoch (0-based)
    batch_in_epoch: int = 0              # batches of the current epoch done
    best_score: float | None = None      # validation score of the kept ("best") weights
    best_step: int | None = None         # their step
    top_score: float | None = None       # the highest validation score so far (differs from best_score on a tie)
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

    @property
    def top(self) -> float | None:
        """The highest validation score so far (a checkpoint from before top_score: its best was the top)."""
        return self.top_score if self.top_score is not None else self.best_score

    def record_score(self, score: float, step: int, tolerance: float | None = None) -> bool:
        """Note a validation score; True if these weights are to be kept. tolerance None: only a new highest score
        (the first of equal ones); a number: also a later score within it of the highest (a tie within the
        validation noise). Only a new highest score resets early stopping's count."""
        top = self.top
        if top is None or score > top:
            self.top_score, self.evals_without_improvement = score, 0
        else:
            self.top_score = top
            self.evals_without_improvement += 1
            if tolerance is None or score < top - tolerance:
                return False
        self.best_score, self.best_step = score, step
        return True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
