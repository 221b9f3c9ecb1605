"""The numbers each report section shows, as JSON-ready dicts (pure functions; the plots draw only these)."""
from __future__ import annotations

import numpy as np

from bertclf.data.metrics import ECE_BINS, classification_report, expected_calibration_error
from bertclf.report.data import (CARD_FILE, PREDICTIONS_FILE, Run, finite, is_multi_label, label_names,
                                 prediction_split, split_arrays)
from bertclf.report.formatting import fmt_int, fmt_num, fmt_secs

REPORT_FORMAT = 1                    # data.json["bertclf_report"]: bump when its layout changes
N_CALIBRATION_BINS = ECE_BINS       # the same bins as eval's ECE, so the report and eval --json agree
N_SCORE_BINS = 20


def reliability(y, probs, n_bins: int = N_CALIBRATION_BINS) -> dict:
    """Top-label calibration: rows binned by confidence (max probability) into n_bins equal-width bins, with
    scikit-learn's calibration_curve (bins (k/n, (k+1)/n], the first one closed); per bin the row count, mean
    confidence and accuracy (None if empty); ece: bertclf.data.metrics.expected_calibration_error on the same bins."""
    from sklearn.calibration import calibration_curve

    y = np.asarray(y)
    probs = np.asarray(probs, dtype=np.float64)
    conf = np.clip(probs.max(1), 0.0, 1.0)  # float32 softmax may give 1 + 1e-7
    correct = (probs.argmax(1) == y).astype(np.float64)
    n = int(len(y))
    edges = np.linspace(0, 1, n_bins + 1)
    # calibration_curve returns non-empty bins only; the counts (for the ECE weights) use its binning rule
    count = np.bincount(np.searchsorted(edges[1:-1], conf), minlength=n_bins)
    nz = count > 0
    acc, mean_conf = np.zeros(n_bins), np.zeros(n_bins)
    if n:
        acc[nz], mean_conf[nz] = calibration_curve(correct, conf, n_bins=n_bins, strategy="uniform", pos_label=1)
    return {"n": n, "n_bins": n_bins, "edges": edges.tolist(), "count": count.tolist(),
            "confidence": [float(c) if k else None for c, k in zip(mean_conf, nz)],
            "accuracy": [float(a) if k else None for a, k in zip(acc, nz)],
            "accuracy_overall": float(correct.mean()) if n else 0.0,
            "mean_confidence": float(conf.mean()) if n else 0.0,
            "ece": expected_calibration_error(y, probs, n_bins)}


def temperature(run: Run) -> float | None:
    """The temperature folded into a calibrated single-label model (bertclf/train/calibration.py), else None."""
    t = ((run.card or {}).get("calibration") or {}).get("temperature")
    return float(t) if finite(t) and not is_multi_label(run) else None


def raw_reliability(run: Run, y, probs) -> dict | None:
    """The reliability of the model before calibration (its saved probabilities are calibrated): the
    probabilities softmax(T * log p) = softmax(raw logits); None for a model not calibrated."""
    from bertclf.train.calibration import uncalibrated_probs

    t = temperature(run)
    return None if t is None else reliability(y, uncalibrated_probs(probs, t)) | {"temperature": t}


def score_histograms(y, probs, labels: list[str], n_bins: int = N_SCORE_BINS) -> dict:
    """Histograms of the model's score, one per true class. Two classes: the probability of the second label
    (so the classes separate left/right); more: the probability given to the true class."""
    y = np.asarray(y)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[1] == 2:
        score, what = probs[:, 1], f"P({labels[1]})"
    else:
        score, what = probs[np.arange(len(y)), y], "P(true class)"
    edges = np.linspace(0, 1, n_bins + 1)
    counts = {str(lab): np.histogram(score[y == c], edges)[0].tolist() for c, lab in enumerate(labels)}
    return {"score": what, "edges": edges.tolist(), "counts": counts}


def length_buckets(y, probs, tokens, max_length: int | None = None) -> dict:
    """Accuracy by text length in tokens (special tokens included): buckets 1-8, 9-16, 17-32, ... doubling,
    plus one bucket for rows cut at max_length when any were; empty buckets are left out."""
    y, tokens = np.asarray(y), np.asarray(tokens)
    correct = np.asarray(probs).argmax(1) == y
    cut = (tokens >= max_length) if max_length else np.zeros(len(y), bool)
    rest = tokens[~cut]
    top = int(rest.max()) if len(rest) else 8
    edges = [0, 8]
    while edges[-1] < top:
        edges.append(edges[-1] * 2)
    buckets = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = ~cut & (tokens > lo) & (tokens <= hi)
        if m.any():
            hi = min(hi, max_length - 1) if max_length else hi
            buckets.append({"label": f"{lo + 1}-{hi}", "lo": lo + 1, "hi": hi, "n": int(m.sum()),
                            "accuracy": float(correct[m].mean())})
    if cut.any():
        buckets.append({"label": f"{max_length} (cut)", "lo": max_length, "hi": max_length, "n": int(cut.sum()),
                        "accuracy": float(correct[cut].mean())})
    return {"buckets": buckets, "accuracy_overall": float(correct.mean()) if len(y) else 0.0, "n": int(len(y))}


def curves(run: Run) -> dict:
    """The logged series, exactly as in train_log.jsonl (one point per logged training window / validation)."""
    tr, va = run.train_log, run.valid_log
    best = (run.card or {}).get("training", {}).get("best_step")
    if best is None:
        flagged = [r["step"] for r in va if r.get("best")]
        best = flagged[-1] if flagged else (max(va, key=lambda r: r["valid_accuracy"])["step"] if va else None)
    return {
        "train": {k: [r.get(k) for r in tr] for k in ("step", "epoch", "loss", "acc", "lr", "samples_per_s",
                                                       "tokens_per_s", "elapsed_s")},
        "valid": {"step": [r["step"] for r in va], "epoch": [r.get("epoch") for r in va],
                  "accuracy": [r["valid_accuracy"] for r in va], "macro_f1": [r.get("valid_macro_f1") for r in va],
                  "best": [bool(r.get("best")) for r in va]},
        "best_step": best,
    }


def confusion(run: Run) -> dict | None:
    """The confusion matrix of the test report in the card (else validation); from the saved predictions
    (bertclf.data.metrics) only when the card has none. None for multi-label: the per-label table shows its scores."""
    if is_multi_label(run):
        return None
    metrics = (run.card or {}).get("metrics") or {}
    for split in ("test", "valid"):
        rep = metrics.get(split)
        if isinstance(rep, dict) and rep.get("confusion_matrix") is not None:
            return {"split": split, "labels": [str(x) for x in rep.get("labels") or run.card.get("labels")],
                    "matrix": rep["confusion_matrix"], "source": CARD_FILE}
    split = prediction_split(run)
    if split is None:
        return None
    y, probs, _ = split_arrays(run.preds, split)
    names = label_names(run, probs.shape[1])
    rep = classification_report(y, probs.argmax(1), names)
    return {"split": split, "labels": names, "matrix": rep["confusion_matrix"], "source": PREDICTIONS_FILE}


def per_label(run: Run) -> dict | None:
    """Multi-label: the test report's (else validation's) per-label precision, recall, F1, support and tuned
    threshold, with its micro/macro-F1 and subset accuracy; None for single-label runs."""
    metrics = (run.card or {}).get("metrics") or {}
    for split in ("test", "valid"):
        rep = metrics.get(split)
        if isinstance(rep, dict) and rep.get("per_label"):
            return {"split": split, "micro_f1": rep.get("micro_f1"), "macro_f1": rep.get("macro_f1"),
                    "subset_accuracy": rep.get("subset_accuracy"), "labels": rep["per_label"]}
    return None


def run_data(run: Run) -> dict:
    """Everything a single-run report shows, as one JSON-ready dict (also written to report/data.json)."""
    card = run.card or {}
    data: dict = {"bertclf_report": REPORT_FORMAT, "kind": "run", "run": str(run.dir), "name": run.name,
                  "notes": list(run.notes), "errors": {}}

    def section(name, fn):
        try:
            data[name] = fn()
        except Exception as e:  # noqa: BLE001 - one broken section must not cost the whole report
            data[name] = None
            data["errors"][name] = f"{type(e).__name__}: {e}"

    section("curves", lambda: curves(run))
    section("confusion", lambda: confusion(run))
    section("per_label", lambda: per_label(run))
    split = prediction_split(run)
    data["prediction_split"] = split
    if split:
        y, probs, tokens = split_arrays(run.preds, split)
        names = label_names(run, probs.shape[1])
        max_length = card.get("max_length") or (card.get("args") or {}).get("max_length")
        section("histograms", lambda: score_histograms(y, probs, names))
        section("reliability", lambda: reliability(y, probs))
        section("reliability_raw", lambda: raw_reliability(run, y, probs))
        section("length", lambda: length_buckets(y, probs, tokens, max_length) if tokens is not None else None)

    def eces(raw=False):
        splits = () if is_multi_label(run) else ("valid", "test")  # top-label calibration: single-label only
        arrays = {s: split_arrays(run.preds, s) for s in splits}
        if raw:  # before calibration
            return {s: r["ece"] for s, a in arrays.items() if a is not None
                    and (r := raw_reliability(run, a[0], a[1])) is not None}
        return {s: reliability(a[0], a[1])["ece"] for s, a in arrays.items() if a is not None}

    section("ece", eces)
    section("ece_raw", lambda: eces(raw=True))
    section("summary", lambda: summary(run, data.get("ece") or {}, data.get("ece_raw") or {}))
    return data


RECIPE_KEYS = [("epochs", "epochs"), ("batch_size", "batch size (micro)"), ("grad_accum", "gradient accumulation"),
               ("lr", "peak learning rate"), ("warmup", "warmup share"), ("weight_decay", "weight decay"),
               ("max_grad_norm", "max grad norm"), ("sample", "train sample"), ("valid_frac", "validation share"),
               ("eval_every", "eval every (steps)"), ("patience", "patience"), ("seed", "seed")]


def summary(run: Run, ece: dict, ece_raw: dict | None = None) -> list[dict]:
    """Rows {group, key, value, mono} of the summary table (values already formatted as text)."""
    card = run.card or {}
    args = card.get("args") or {}
    rows: list[dict] = []

    def add(group, key, value, mono=False):
        if value is not None and value != "":
            rows.append({"group": group, "key": key, "value": str(value), "mono": mono})

    data = card.get("data") or {}
    for split in ("train", "valid", "test"):
        s = data.get(split)
        if not isinstance(s, dict):
            continue
        counts = s.get("label_counts") or {}
        add("data", f"{split} rows", f"{fmt_int(s.get('rows'))}"
            + (f" ({', '.join(f'{k}: {fmt_int(v)}' for k, v in counts.items())})" if counts else "")
            + (f"; {fmt_int(s.get('file_dropped_empty', s.get('dropped_empty')))} empty dropped from the file"
               if s.get("file_dropped_empty", s.get("dropped_empty")) else ""))
        add("data", f"{split} source", s.get("source"))
        add("data", f"{split} sha256", s.get("sha256"), mono=True)
    if data.get("text_pair_col"):  # a sentence-pair model reads two text columns
        add("data", "text / second text / label column", " / ".join(
            str(x) for x in (data.get("text_col"), data.get("text_pair_col"), data.get("label_col")) if x))
    else:
        add("data", "text / label column", " / ".join(str(x) for x in (data.get("text_col"), data.get("label_col"))
                                                     if x))
    if data.get("group_col"):
        add("data", "validation split grouped by", str(data["group_col"]))

    add("model", "base model", card.get("base_model") or args.get("model"))
    add("model", "labels", ", ".join(map(str, card.get("labels") or [])))
    add("model", "max length", card.get("max_length") or args.get("max_length"))
    if args.get("trim_vocab"):
        add("model", "vocabulary", "trimmed to the training texts")

    for k, label in RECIPE_KEYS:
        if args.get(k) is not None:
            add("recipe", label, fmt_num(args[k]))
    add("recipe", "global batch", fmt_int((card.get("training") or {}).get("global_batch")))
    _training_rows(run, add)
    _metric_rows(run, ece, add, ece_raw or {})
    for k, v in (card.get("versions") or {}).items():
        add("versions", k, v)
    return rows


def _training_rows(run: Run, add) -> None:
    card = run.card or {}
    tr = card.get("training") or {}
    add("training", "device", tr.get("device"))
    if tr.get("processes") and tr["processes"] > 1:
        add("training", "processes", tr["processes"])
    add("training", "precision", tr.get("precision"))
    if tr.get("steps") is not None:
        add("training", "steps", f"{fmt_int(tr['steps'])} ({fmt_num(tr.get('epochs'))} epochs); best checkpoint at "
            f"step {fmt_int(tr.get('best_step'))}")
    add("training", "stopped", tr.get("stop_reason"))
    if tr.get("wall_time_s") is not None:
        add("training", "wall time", fmt_secs(tr["wall_time_s"])
            + (f" (training {fmt_secs(tr['train_seconds'])})" if tr.get("train_seconds") is not None else ""))
    if tr.get("samples_per_s") is not None:
        add("training", "throughput",
            f"{tr['samples_per_s']:,.0f} samples/s, {tr.get('tokens_per_s') or 0:,.0f} tokens/s")
    if not card and run.train_log:
        last = run.train_log[-1]
        add("training", "logged so far", f"step {fmt_int(last['step'])}, {fmt_secs(last.get('elapsed_s'))}")


def _metric_rows(run: Run, ece: dict, add, ece_raw: dict) -> None:
    metrics = (run.card or {}).get("metrics") or {}
    for split, label in (("valid", "validation"), ("test", "test")):
        rep = metrics.get(split)
        if isinstance(rep, dict) and "accuracy" in rep:
            add("metrics", f"{label} accuracy", f"{rep['accuracy']:.4f} (macro-F1 {rep.get('macro_f1', 0):.4f}, "
                f"{fmt_int(rep.get('n'))} rows)")
        if split in ece:
            add("metrics", f"{label} ECE", f"{ece[split]:.4f} ({N_CALIBRATION_BINS} bins)" + (
                f"; before calibration {ece_raw[split]:.4f} (temperature {temperature(run):.3f})"
                if split in ece_raw else ""))
    b = run.baseline
    if b:
        test = metrics.get("test") or metrics.get("valid") or {}
        delta = (f"; the transformer: {(test['accuracy'] - b['accuracy']) * 100:+.1f} points"
                 if isinstance(test, dict) and finite(test.get("accuracy")) and finite(b.get("accuracy")) else "")
        add("metrics", "TF-IDF baseline",
            f"accuracy {fmt_num(b.get('accuracy'), 4)}, macro-F1 {fmt_num(b.get('macro_f1'), 4)}"
            + (f" in {fmt_secs(b['seconds'])}" if finite(b.get("seconds")) else "")
            + (f" on {fmt_int(b['n_test'])} rows" if b.get("n_test") else "") + delta
            + f" (from {run.baseline_source})")
