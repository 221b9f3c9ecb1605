"""The distillation objective as a task (bertclf/data/task.py): the training loop runs unchanged, with this loss.

Per row: alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) * the task's own loss (cross-entropy,
or BCE for multi-label; class weights apply) for a labelled row; the soft part alone, at full weight, for an
unlabelled row (it has no other target). The batch loss is the mean over its rows.

The teacher's logits travel with the true labels: `targets()` packs both into the one float array the batches
carry as "labels" (bertclf/data/batches.py collate), label part first, NaN for an unlabelled row's label.
Everything else (label map, probabilities, metrics, thresholds, card) is the wrapped task's.
"""
from __future__ import annotations

import numpy as np


class Distillation:
    def __init__(self, task, temperature: float, alpha: float):
        self.task, self.temperature, self.alpha = task, float(temperature), float(alpha)
        self.width = 1 if task.kind == "single_label" else len(task.labels.names)  # label columns of a target row

    def __getattr__(self, name):  # labels, probs, report, validation_report, score, card, configure...: the task's
        if name == "task":  # not set yet (a copy or unpickling in progress): no endless recursion
            raise AttributeError(name)
        return getattr(self.task, name)

    def targets(self, y: np.ndarray, teacher_logits: np.ndarray) -> np.ndarray:
        """(rows, width + labels) float32: the labels of the first len(y) rows (class ids or multi-hot rows), NaN
        for the unlabelled rows after them, then every row's teacher logits."""
        n = len(teacher_logits)
        packed = np.full((n, self.width + teacher_logits.shape[1]), np.nan, dtype=np.float32)
        packed[:len(y), :self.width] = np.asarray(y, dtype=np.float32).reshape(len(y), self.width)
        packed[:, self.width:] = teacher_logits
        return packed

    def init_head(self, model, packed) -> None:
        """Nothing: the student's head is the teacher's trained one (bertclf/distill/student.py). The wrapped task's
        init_head would reset a multi-label head's biases to the label priors, and it read `packed` (labels and
        teacher logits side by side) as labels: 88 columns for KOTE's 44 labels crashed it."""

    def _split(self, packed):
        y, teacher = packed[:, :self.width], packed[:, self.width:]
        labelled = ~y[:, 0].isnan()
        return (y[:, 0].long() if self.task.kind == "single_label" else y), teacher, labelled

    def loss(self, logits, packed):
        import torch

        y, teacher, labelled = self._split(packed)
        soft = self.task.soft_loss(logits, teacher, self.temperature)
        total = (soft * torch.where(labelled, self.alpha, 1.0)).sum()
        n_labelled = int(labelled.sum())  # a host sync; distillation runs mostly on CPUs, where it is free
        if n_labelled and self.alpha < 1:
            total = total + (1 - self.alpha) * n_labelled * self.task.loss(logits[labelled], y[labelled])
        return total / len(logits)

    def correct(self, logits, packed):
        """Rows where the student decides as the teacher: the training lines' 'acc' is agreement with the teacher
        (unlabelled rows have nothing else to agree with)."""
        _, teacher, _ = self._split(packed)
        return self.task.correct(logits, self.task.teacher_decisions(teacher))
