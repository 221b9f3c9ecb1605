"""Classification metrics from true and predicted label ids (numpy only, no side effects)."""
from __future__ import annotations

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """cm[i, j] = rows of true class i predicted as j."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def classification_report(y_true, y_pred, names: list[str]) -> dict:
    """accuracy, macro precision/recall/F1, per-class figures and the confusion matrix, JSON-ready."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    cm = confusion(y_true, y_pred, len(names))
    tp = np.diag(cm).astype(float)
    predicted, actual = cm.sum(0).astype(float), cm.sum(1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = actual > 0  # macro averages over the classes that occur in y_true
    weighted_f1 = float((f1 * actual).sum() / actual.sum()) if actual.sum() else 0.0
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "weighted_f1": weighted_f1,
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(actual[i])}
            for i, name in enumerate(names)
        },
        "labels": list(names),
        "confusion_matrix": cm.tolist(),
    }


def format_report(rep: dict) -> str:
    """A plain-text table of a classification_report."""
    names = rep["labels"]
    w = max(10, *(len(n) for n in names))
    lines = [f"{'class':<{w}}  precision  recall     f1  support"]
    for n in names:
        c = rep["per_class"][n]
        lines.append(f"{n:<{w}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:.4f}  {c['support']:7d}")
    lines.append(f"{'macro':<{w}}  {rep['macro_precision']:9.4f}  {rep['macro_recall']:6.4f}  {rep['macro_f1']:.4f}  {rep['n']:7d}")
    lines.append(f"accuracy {rep['accuracy']:.4f} on {rep['n']} rows")
    lines.append("confusion matrix (rows: true, columns: predicted)")
    lines.append(" " * (w + 2) + "  ".join(f"{n[:10]:>10}" for n in names))
    for n, row in zip(names, rep["confusion_matrix"]):
        lines.append(f"{n:<{w}}  " + "  ".join(f"{v:>10d}" for v in row))
    return "\n".join(lines)
