"""R-Drop (Liang et al., NeurIPS 2021, arXiv 2106.14448): each training row goes through the model twice in one
batch, under two dropout masks; the loss is the task's own on both copies plus alpha times the symmetric KL
divergence between the two predictions, which pulls the model toward predictions that do not hang on which units
dropped out. It costs a second forward and backward per row (the batch is twice as tall)."""
from __future__ import annotations

import numpy as np


def twice(rows: np.ndarray) -> np.ndarray:
    """The micro-batch's rows, then the same rows again: one forward gives both dropout samples."""
    return np.concatenate([rows, rows])


def loss(task, logits, y, alpha: float):
    """logits, y: a twice() batch's outputs and targets. The task's loss (its class weights, BCE, distillation
    target) over both copies, plus alpha * (KL(p1 || p2) + KL(p2 || p1)) / 2 per row, averaged (the task's
    soft_loss at temperature 1: softmax KL for single-label, the mean of per-label Bernoulli KLs for multi-label)."""
    n = len(logits) // 2
    first, second = logits[:n], logits[n:]
    agreement = (task.soft_loss(first, second, 1.0) + task.soft_loss(second, first, 1.0)).mean() / 2
    return task.loss(logits, y) + alpha * agreement
