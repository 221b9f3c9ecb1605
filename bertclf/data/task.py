"""The task: single-label (softmax, cross-entropy, argmax) or multi-label (sigmoid, BCE, tuned thresholds).

The training loop and the inference code ask the task for everything that differs between the two: label
encoding, the loss (with optional class weights), probabilities, decisions, metrics and the selection score.
What inference needs again (kind, label values, thresholds, weights) is `card()`, stored in bertclf.json as "classification".
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from bertclf.errors import UserError
from bertclf.data.labels import LabelMap, better_id_order, split_cell
from bertclf.data.metrics import classification_report, expected_calibration_error, multilabel_report, tune_thresholds



def smoothed_inverse_frequency(counts: np.ndarray) -> np.ndarray:
    """Class weights 1/sqrt(n_c), scaled so the average row weight is 1.

    The square root damps plain inverse frequency: with 3 skewed classes it lifts the rare class without
    letting a handful of its rows dominate the gradient.
    """
    counts = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    w = 1.0 / np.sqrt(counts)
    return (w * counts.sum() / (w * counts).sum()).astype(np.float32)


def positive_weights(pos: np.ndarray, n_rows: int) -> np.ndarray:
    """Multi-label BCE pos_weight per label: sqrt(negatives / positives), at least 1."""
    pos = np.maximum(np.asarray(pos, dtype=np.float64), 1.0)
    return np.maximum(np.sqrt((n_rows - pos) / pos), 1.0).astype(np.float32)


class SingleLabel:
    kind = "single_label"
    problem_type = "single_label_classification"

    def __init__(self, labels: LabelMap, metric: str | None = None, weights=None):
        self.labels, self.metric = labels, metric or "accuracy"
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float32)
        self._weights_t = None
        self.label_smoothing = 0.0  # training only (--label-smoothing); a loaded model's task never trains

    def encode(self, cells, where: str, log=None, train_counts: dict | None = None) -> np.ndarray:
        """The cells as targets (class ids). log / train_counts: see `check_ids` (a file scored by a trained model)."""
        y = np.array(self.labels.encode(cells, where), dtype=np.int64)
        self.check_ids(cells, where, log, train_counts)
        return y

    def cell_labels(self, cell: str) -> list[str]:
        """The labels one cell holds (multi-label: split on the separator)."""
        return [cell]

    def check_ids(self, cells, where: str, log=None, train_counts: dict | None = None) -> dict[int, str]:
        """The label ids among `cells` (read as ids: neither a name nor a raw training value) -> the names read.

        log: when some cell was read as an id, one line saying how ("labels read as ids: 0=hate, 1=none"), since a
        file numbering its classes in another order would be scored wrong in silence. train_counts: the model's
        training label counts (bertclf.json data.train.label_counts, keyed by training cells); when every label of
        the file is an id and another numbering fits those counts much better (labels.better_id_order), a
        one-line UserError naming it."""
        if log is None and not train_counts:
            return {}
        per_id: Counter = Counter()
        other = 0
        for cell in cells:
            ids = set()
            for lab in self.cell_labels(cell):
                k = self.labels.as_id(lab)
                if k is None:
                    other += 1
                else:
                    ids.add(k)
            per_id.update(ids)
        if not per_id:
            return {}
        counts = self.training_counts(train_counts) if train_counts and not other else None
        found = counts and better_id_order(per_id, counts[0], counts[1], self.kind == "multi_label")
        if found:
            best, tv_best, tv_own = found
            names = self.labels.names
            other_note = ", ".join(f"{k}={names[j]}" for k, j in sorted(best.items())[:12])
            raise UserError(
                f"{where}: the labels are read as ids ({self.labels.ids_note(per_id)}) but their counts contradict "
                f"the model's training labels: so read, the label shares are {tv_own:.0%} off the training shares "
                f"(total variation), while read as {other_note}{', ...' if len(best) > 12 else ''} they are "
                f"{tv_best:.0%} off; the file likely numbers its classes in another order: write the label names "
                f"instead of ids")
        if log is not None:  # after the check: a refused file gets its one error line only
            log(f"{where}: labels read as ids: {self.labels.ids_note(per_id)} (the model's id order; write the "
                f"label names if the file numbers its classes otherwise)")
        return {k: self.labels.names[k] for k in sorted(per_id)}

    def training_counts(self, label_counts: dict) -> tuple[np.ndarray, int] | None:
        """(rows per label in id order, rows) from a card's label_counts, keyed by training cells (names or raw
        values; multi-label: whole cells); None when a key is neither, so the training shares are unknown."""
        counts, rows = np.zeros(len(self.labels.names)), 0
        for key, n in label_counts.items():
            names = [self.labels.resolve(lab, ids=False) for lab in self.cell_labels(str(key))]
            if None in names:
                if key == "null":  # distill's unlabelled rows, in cards written before data.train.unlabelled_rows
                    continue
                return None
            for name in names:
                counts[self.labels.index[name]] += n
            rows += n
        return counts, rows

    def set_class_weights(self, y: np.ndarray) -> None:
        self.weights = smoothed_inverse_frequency(np.bincount(y, minlength=len(self.labels.names)))

    def loss(self, logits, y):
        import torch.nn.functional as F

        return F.cross_entropy(logits.float(), y, weight=self._weight_tensor(logits.device),
                               label_smoothing=self.label_smoothing)

    def _weight_tensor(self, device):
        import torch

        if self.weights is None:
            return None
        if self._weights_t is None or self._weights_t.device != device:
            self._weights_t = torch.from_numpy(self.weights).to(device)
        return self._weights_t

    def init_head(self, model, y: np.ndarray) -> None:
        """Single-label: the head stays as the model initialised it (a softmax over few classes starts near
        the priors' scale anyway)."""

    def correct(self, logits, y):
        """Rows right (a tensor, no host sync): the running training accuracy."""
        return (logits.argmax(-1) == y).sum()

    def soft_loss(self, logits, teacher_logits, temperature: float):
        """Per row: T^2 * KL(softmax(teacher/T) || softmax(student/T)), the loss against a teacher's soft labels
        (bertclf distill; T^2 keeps the gradient's size independent of T, as in Hinton et al. 2015)."""
        import torch.nn.functional as F

        t = float(temperature)
        return F.kl_div(F.log_softmax(logits.float() / t, -1), F.log_softmax(teacher_logits.float() / t, -1),
                        reduction="none", log_target=True).sum(-1) * (t * t)

    @staticmethod
    def teacher_decisions(teacher_logits):
        """The teacher's labels, shaped as this task's targets (class ids)."""
        return teacher_logits.argmax(-1)

    @staticmethod
    def probs(logits: np.ndarray) -> np.ndarray:
        z = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def decide(self, probs: np.ndarray) -> np.ndarray:
        return probs.argmax(1)

    def report(self, y: np.ndarray, logits: np.ndarray) -> dict:
        probs = self.probs(logits)
        return classification_report(y, self.decide(probs), self.labels.names) | {
            "ece": expected_calibration_error(y, probs)}

    def validation_report(self, y: np.ndarray, logits: np.ndarray) -> dict:
        """The report used to pick the best checkpoint (multi-label: thresholds tuned on these rows first)."""
        return self.report(y, logits)

    def score(self, rep: dict) -> float:
        return float(rep[self.metric])

    def card(self) -> dict:
        return {"type": self.kind, "metric": self.metric, "label_values": self.labels.raw,
                "class_weights": None if self.weights is None else
                dict(zip(self.labels.names, map(float, self.weights)))}

    def configure(self, config) -> None:
        """config.json: label names and the problem type, so transformers.pipeline scores as we do."""
        config.id2label = self.labels.id2label
        config.label2id = {v: k for k, v in config.id2label.items()}
        config.problem_type = self.problem_type


class MultiLabel(SingleLabel):
    kind = "multi_label"
    problem_type = "multi_label_classification"

    def __init__(self, labels: LabelMap, metric: str | None = None, weights=None, sep: str = ",",
                 thresholds=None):
        super().__init__(labels, metric or "macro_f1", weights)
        self.sep = sep
        k = len(labels.names)
        self.thresholds = np.full(k, 0.5, np.float32) if thresholds is None else np.asarray(thresholds, np.float32)

    def encode(self, cells, where: str, log=None, train_counts: dict | None = None) -> np.ndarray:
        """Multi-hot rows; an empty cell (or one of separators only) is a row with no labels: all zeros."""
        y = np.zeros((len(cells), len(self.labels.names)), dtype=np.float32)
        for r, cell in enumerate(cells):
            y[r, self.labels.encode(split_cell(cell, self.sep), where)] = 1.0
        self.check_ids(cells, where, log, train_counts)
        return y

    def cell_labels(self, cell: str) -> list[str]:
        return split_cell(cell, self.sep)

    def set_class_weights(self, y: np.ndarray) -> None:
        self.weights = positive_weights(y.sum(0), len(y))

    def init_head(self, model, y: np.ndarray) -> None:
        """Start each label's output bias at the log-odds of its training prior, so the first steps are not
        spent learning that most labels are rare (the encoder's features then only explain the deviations)."""
        import torch

        out = output_layer(model, len(self.labels.names))
        if out is None or out.bias is None:
            return
        prior = np.clip(y.mean(0), 1.0 / (len(y) + 2), 1 - 1.0 / (len(y) + 2))  # no infinite log-odds
        with torch.no_grad():
            out.bias.copy_(torch.from_numpy(np.log(prior / (1 - prior)).astype(np.float32)))

    def loss(self, logits, y):
        import torch.nn.functional as F

        target = y.float() * (1 - self.label_smoothing) + self.label_smoothing / 2  # each label's 0/1 pulled in
        return F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=self._weight_tensor(logits.device))

    def correct(self, logits, y):
        """Rows with every label right at threshold 0.5 (subset accuracy)."""
        return ((logits > 0) == (y > 0.5)).all(-1).sum()

    def soft_loss(self, logits, teacher_logits, temperature: float):
        """Per row: T^2 * the mean over labels of KL(Bernoulli(sigmoid(teacher/T)) || Bernoulli(sigmoid(student/T))):
        BCE against the teacher's probabilities less their own entropy (same gradient; 0 when they match)."""
        import torch
        import torch.nn.functional as F

        t = float(temperature)
        s, q = logits.float() / t, teacher_logits.float() / t
        p = torch.sigmoid(q)
        kl = (F.binary_cross_entropy_with_logits(s, p, reduction="none")
              - F.binary_cross_entropy_with_logits(q, p, reduction="none"))
        return kl.mean(-1) * (t * t)

    @staticmethod
    def teacher_decisions(teacher_logits):
        """The teacher's label sets at threshold 0.5, shaped as this task's targets (multi-hot rows)."""
        return (teacher_logits > 0).float()

    @staticmethod
    def probs(logits: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-logits))

    def decide(self, probs: np.ndarray) -> np.ndarray:
        return probs >= self.thresholds[None, :]

    def report(self, y: np.ndarray, logits: np.ndarray) -> dict:
        return multilabel_report(y, self.decide(self.probs(logits)), self.labels.names, self.thresholds)

    def validation_report(self, y: np.ndarray, logits: np.ndarray) -> dict:
        self.thresholds = tune_thresholds(y, self.probs(logits))
        return self.report(y, logits)

    def score(self, rep: dict) -> float:
        return float(rep["subset_accuracy" if self.metric == "accuracy" else self.metric])

    def card(self) -> dict:
        return super().card() | {"label_sep": self.sep,
                                 "thresholds": dict(zip(self.labels.names, map(float, self.thresholds)))}


def output_layer(model, n_labels: int):
    """The classification head's last linear layer (the one producing the logits), or None if not found."""
    import torch

    prefix = getattr(model, "base_model_prefix", "") + "."
    found = None
    for name, module in model.named_modules():
        if (isinstance(module, torch.nn.Linear) and module.out_features == n_labels
                and not name.startswith(prefix)):
            found = module
    return found


def make_task(cfg, train_labels: list[str], where: str, raw: dict[str, str] | None = None):
    """The task a training config asks for, its labels taken from --label-names or the training labels."""
    if cfg.label_names:
        labels = LabelMap.from_names_file(cfg.label_names)
    elif cfg.multi_label:
        cells = [lab for cell in train_labels for lab in split_cell(cell, cfg.label_sep)]
        if not cells:
            raise UserError(f"{where}: no labels in column '{cfg.label_col}' after splitting on "
                            f"--label-sep {cfg.label_sep!r}")
        labels = LabelMap.from_labels(cells, where, raw)
    else:
        labels = LabelMap.from_labels(train_labels, where, raw)
    cls = MultiLabel if cfg.multi_label else SingleLabel
    kwargs = {"sep": cfg.label_sep} if cfg.multi_label else {}
    task = cls(labels, cfg.metric, **kwargs)
    task.label_smoothing = getattr(cfg, "label_smoothing", 0.0)  # the baseline's label-only config has none
    return task


def task_from_card(card: dict, names: list[str]):
    """The task of a trained model (a model from before tasks were recorded is single-label)."""
    t = card.get("classification") or {}
    labels = LabelMap(list(names), dict(t.get("label_values") or {}))
    weights = t.get("class_weights")
    weights = [weights[n] for n in labels.names] if weights else None
    if t.get("type") == "multi_label":
        th = t.get("thresholds") or {}
        return MultiLabel(labels, t.get("metric"), weights, t.get("label_sep", ","),
                          [th.get(n, 0.5) for n in labels.names])
    return SingleLabel(labels, t.get("metric"), weights)
