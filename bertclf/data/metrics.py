"""Classification metrics: single-label from true and predicted label ids, multi-label from multi-hot rows."""
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


ECE_BINS = 15


def expected_calibration_error(y_true, probs, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE: rows binned by confidence (max probability) into n_bins equal-width bins (k/n, (k+1)/n]
    (the first closed, as sklearn's calibration_curve bins); the row-weighted mean |accuracy - confidence| over
    the bins. Hand-written: scikit-learn has no ECE function (calibration_curve gives the per-bin points only)."""
    probs = np.asarray(probs, dtype=np.float64)
    if not len(probs):
        return 0.0
    conf = np.clip(probs.max(1), 0.0, 1.0)  # float32 softmax may give 1 + 1e-7
    correct = probs.argmax(1) == np.asarray(y_true)
    bins = np.searchsorted(np.linspace(0, 1, n_bins + 1)[1:-1], conf)
    # count/N * |accuracy - mean confidence| per bin = |sum of correct - sum of confidence| / N
    gap = np.abs(np.bincount(bins, correct, n_bins) - np.bincount(bins, conf, n_bins))
    return float(gap.sum() / len(probs))


def format_report(rep: dict) -> str:
    """A plain-text table of a classification_report (or of a multilabel_report)."""
    if rep.get("multi_label"):
        return format_multilabel_report(rep)
    names = rep["labels"]
    w = max(10, *(len(n) for n in names))
    lines = [f"{'class':<{w}}  precision  recall     f1  support"]
    for n in names:
        c = rep["per_class"][n]
        lines.append(f"{n:<{w}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:.4f}  {c['support']:7d}")
    lines.append(f"{'macro':<{w}}  {rep['macro_precision']:9.4f}  {rep['macro_recall']:6.4f}  {rep['macro_f1']:.4f}  {rep['n']:7d}")
    lines.append(f"accuracy {rep['accuracy']:.4f}, weighted-F1 {rep['weighted_f1']:.4f} on {rep['n']} rows"
                 + (f", ECE {rep['ece']:.4f} ({ECE_BINS} bins)" if rep.get("ece") is not None else ""))
    lines.append("confusion matrix (rows: true, columns: predicted)")
    lines.append(" " * (w + 2) + "  ".join(f"{n[:10]:>10}" for n in names))
    for n, row in zip(names, rep["confusion_matrix"]):
        lines.append(f"{n:<{w}}  " + "  ".join(f"{v:>10d}" for v in row))
    return "\n".join(lines)


# --- multi-label --------------------------------------------------------------------------------------------

THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


def tune_thresholds(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per label, the grid threshold with the best F1 on these rows (0.5 for a label with no positive row).

    A coarse grid, not every distinct score (sklearn's precision_recall_curve): a few hundred validation rows
    would otherwise pick thresholds that fit their noise.
    """
    y = np.asarray(y) > 0.5
    pred = probs[:, :, None] >= THRESHOLD_GRID[None, None, :]          # rows x labels x grid
    tp = (pred & y[:, :, None]).sum(0)
    fp = (pred & ~y[:, :, None]).sum(0)
    fn = (~pred & y[:, :, None]).sum(0)
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    best = THRESHOLD_GRID[f1.argmax(1)]                                 # first (lowest) of equal F1s
    return np.where(y.any(0), best, 0.5).astype(np.float32)


def multilabel_report(y, pred, names: list[str], thresholds=None) -> dict:
    """micro/macro/weighted F1, subset accuracy and per-label figures for multi-hot truth and decisions.

    Macro F1 averages over the labels that occur in y (as the single-label report does).
    """
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    y, pred = (np.asarray(y) > 0.5).astype(int), np.asarray(pred).astype(int)
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, average=None, zero_division=0,
                                                                     labels=list(range(len(names))))
    present = support > 0
    subset = float(accuracy_score(y, pred)) if len(y) else 0.0
    return {
        "n": int(len(y)),
        "micro_f1": float(f1_score(y, pred, average="micro", zero_division=0)) if len(y) else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "weighted_f1": float((f1 * support).sum() / support.sum()) if support.sum() else 0.0,
        "subset_accuracy": subset,
        "accuracy": subset,  # = subset accuracy: the key every report has
        "labels_per_row": {"true": float(y.sum(1).mean()) if len(y) else 0.0,
                           "predicted": float(pred.sum(1).mean()) if len(y) else 0.0},
        "per_label": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            | ({"threshold": float(thresholds[i])} if thresholds is not None else {})
            for i, name in enumerate(names)
        },
        "labels": list(names),
        "multi_label": True,
    }


def format_multilabel_report(rep: dict) -> str:
    names = rep["labels"]
    w = max(10, *(len(n) for n in names))
    lines = [f"{'label':<{w}}  precision  recall     f1  support  threshold"]
    for n in names:
        c = rep["per_label"][n]
        lines.append(f"{n:<{w}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:.4f}  {c['support']:7d}"
                     f"  {c.get('threshold', 0.5):9.2f}")
    lines.append(f"micro-F1 {rep['micro_f1']:.4f}, macro-F1 {rep['macro_f1']:.4f}, weighted-F1 "
                 f"{rep['weighted_f1']:.4f}, subset accuracy {rep['subset_accuracy']:.4f} on {rep['n']} rows "
                 f"({rep['labels_per_row']['true']:.1f} labels per row, {rep['labels_per_row']['predicted']:.1f} "
                 f"predicted)")
    return "\n".join(lines)
