"""Run reports: plots and one self-contained HTML page per training run, or a page comparing runs.

    bertclf report DIR              -> DIR/report.html, with its PNGs and plotted numbers in DIR/report/
    bertclf report A B              -> A/compare-<B's folder name>.html (+ A/compare-<B>/), A and B side by side
    bertclf report A B --out F.html -> F.html (+ F/ beside it)

The page holds, for one run: training loss and accuracy by step; the validation metrics at each evaluation with
the best checkpoint marked; the confusion matrix (test set if the run had one, else validation); the score
histograms per true class; a reliability (calibration) curve with its expected calibration error (ECE, 15
equal-width confidence bins); accuracy by text length in tokens; and a summary table (data with SHA-256
checksums, model, recipe, device, wall time, throughput, metrics, the TF-IDF baseline when one is known).

What it reads from a run directory (all written by `bertclf train`): bertclf.json (the model card),
train_log.jsonl (every logged training window and validation), eval_predictions.npz (the final model's
validation/test probabilities) and, when `bertclf baseline --out DIR` stored one, baseline.json. A run that
stopped early (log only, no card yet) still gets the sections its files allow; a missing part is named on
the page, never an error. A directory with neither bertclf.json nor train_log.jsonl raises UserError.

Everything is written atomically: the asset folder (PNGs + data.json, the exact series each plot draws) via
files.atomic_dir, then the HTML via files.atomic_file. The HTML embeds the PNGs as base64 data URIs, its CSS
inline and the same numbers as data.json in a <script type="application/json" id="report-data"> element: it
loads nothing from anywhere and can be mailed or archived as one file.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertclf.errors import UserError
from bertclf.files import atomic_dir, atomic_file, check_writable

CARD_FILE = "bertclf.json"           # as written by checkpoint.save_model_dir
LOG_FILE = "train_log.jsonl"         # as written by loop.Logger
PREDICTIONS_FILE = "eval_predictions.npz"  # as written by loop.save_predictions
BASELINE_FILE = "baseline.json"      # as written by baseline.run_baseline(out=DIR)
REPORT_FILE = "report.html"
DATA_FILE = "data.json"
REPORT_FORMAT = 1                    # data.json["bertclf_report"]: bump when its layout changes

N_CALIBRATION_BINS = 15
N_SCORE_BINS = 20
MAX_COMPARE = 8
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


# ---- reading a run ----------------------------------------------------------------------------------------

@dataclass
class Run:
    dir: Path
    card: dict | None
    train_log: list[dict]                  # training windows: step, epoch, loss, acc, lr, samples_per_s, ...
    valid_log: list[dict]                  # validations: step, epoch, valid_accuracy, valid_macro_f1, best
    preds: dict[str, np.ndarray] | None    # eval_predictions.npz
    baseline: dict | None
    baseline_source: str | None = None
    notes: list[str] = field(default_factory=list)  # what is missing or was skipped, shown on the page

    @property
    def name(self) -> str:
        return self.dir.name or str(self.dir)


def load_run(run_dir: str | Path) -> Run:
    """Read what a run directory holds; UserError (one line) when it is not a bertclf run."""
    d = Path(run_dir).expanduser()
    hint = "give a directory written by 'bertclf train --out DIR'"
    if not d.exists():
        raise UserError(f"{d}: no such directory; {hint}")
    if not d.is_dir():
        raise UserError(f"{d}: not a directory; {hint}")
    card_path, log_path = d / CARD_FILE, d / LOG_FILE
    if not card_path.is_file() and not log_path.is_file():
        raise UserError(f"{d}: not a bertclf run (no {CARD_FILE} or {LOG_FILE}); {hint}")
    d = d.resolve()
    notes: list[str] = []

    card = None
    if card_path.is_file():
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{card_path}: cannot read the model card ({e}); it is damaged, train again") from None
        if not isinstance(card, dict):
            raise UserError(f"{card_path}: not a bertclf model card (not a JSON object); {hint}")
    else:
        notes.append(f"no {CARD_FILE} (the run has not finished): summary and metrics are incomplete")

    train_log, valid_log = read_log(log_path, notes)

    preds = None
    p = d / PREDICTIONS_FILE
    if p.is_file():
        try:
            with np.load(p, allow_pickle=False) as z:
                preds = {k: z[k] for k in z.files}
        except Exception as e:  # noqa: BLE001 - a damaged file only costs its plots
            notes.append(f"{PREDICTIONS_FILE} unreadable ({type(e).__name__}): no score, calibration or length plots")
    else:
        notes.append(f"no {PREDICTIONS_FILE}: no score, calibration or length plots")

    baseline, baseline_source = None, None
    if card and isinstance(card.get("baseline"), dict):
        baseline, baseline_source = card["baseline"], f"{CARD_FILE}"
    elif (d / BASELINE_FILE).is_file():
        try:
            b = json.loads((d / BASELINE_FILE).read_text(encoding="utf-8"))
            if isinstance(b, dict) and "accuracy" in b:
                baseline, baseline_source = b, BASELINE_FILE
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            notes.append(f"{BASELINE_FILE} unreadable: baseline not shown")
    return Run(d, card, train_log, valid_log, preds, baseline, baseline_source, notes)


def read_log(path: Path, notes: list[str]) -> tuple[list[dict], list[dict]]:
    """(training records, validation records) of train_log.jsonl, each sorted by step, one per step (the last
    written wins); unreadable lines (a crash mid-write) are skipped and counted in `notes`."""
    if not path.is_file():
        notes.append(f"no {LOG_FILE}: no training curves")
        return [], []
    train, valid, bad = {}, {}, 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                step = int(rec["step"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                bad += 1
                continue
            if _finite(rec.get("loss")):
                train[step] = rec
            elif _finite(rec.get("valid_accuracy")):
                valid[step] = rec
    if bad:
        notes.append(f"{LOG_FILE}: skipped {bad} unreadable line(s)")
    return [train[s] for s in sorted(train)], [valid[s] for s in sorted(valid)]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ---- the numbers each plot draws (pure functions, JSON-ready results) --------------------------------------

def reliability(y, probs, n_bins: int = N_CALIBRATION_BINS) -> dict:
    """Top-label calibration: rows binned by confidence (max probability) into n_bins equal-width bins
    [k/n, (k+1)/n) (the last one closed); per bin the row count, mean confidence and accuracy (None if empty);
    ece = sum over bins of count/N * |accuracy - confidence|."""
    y = np.asarray(y)
    probs = np.asarray(probs, dtype=np.float64)
    conf, correct = probs.max(1), (probs.argmax(1) == y).astype(np.float64)
    idx = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    nz = count > 0
    mean_conf = np.divide(conf_sum, count, out=np.zeros(n_bins), where=nz)
    acc = np.divide(acc_sum, count, out=np.zeros(n_bins), where=nz)
    n = int(len(y))
    ece = float(np.sum(count[nz] / n * np.abs(acc[nz] - mean_conf[nz]))) if n else 0.0
    return {"n": n, "n_bins": n_bins, "edges": np.linspace(0, 1, n_bins + 1).tolist(), "count": count.tolist(),
            "confidence": [float(c) if k else None for c, k in zip(mean_conf, nz)],
            "accuracy": [float(a) if k else None for a, k in zip(acc, nz)],
            "accuracy_overall": float(correct.mean()) if n else 0.0,
            "mean_confidence": float(conf.mean()) if n else 0.0,
            "ece": ece}


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


def prediction_split(run: Run) -> str | None:
    """The split the prediction plots use: test when the run scored one, else validation (none for multi-label:
    the score, calibration and length plots are single-label plots)."""
    if is_multi_label(run):
        return None
    p = run.preds or {}
    for split in ("test", "valid"):
        if _split_arrays(p, split) is not None:
            return split
    return None


def _split_arrays(p: dict, split: str):
    y, probs, tokens = p.get(f"{split}_y"), p.get(f"{split}_probs"), p.get(f"{split}_tokens")
    if y is None or probs is None or probs.ndim != 2 or len(y) != len(probs) or len(y) == 0:
        return None
    if tokens is not None and len(tokens) != len(y):
        tokens = None
    return y.astype(np.int64), probs, tokens


def confusion(run: Run) -> dict | None:
    """The confusion matrix of the test report in the card (else validation); from the saved predictions only
    when the card has none."""
    if is_multi_label(run):  # no confusion matrix: the per-label table shows its scores
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
    y, probs, _ = _split_arrays(run.preds, split)
    k = probs.shape[1]
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, probs.argmax(1)), 1)
    return {"split": split, "labels": _labels(run, k), "matrix": cm.tolist(), "source": PREDICTIONS_FILE}


def is_multi_label(run: Run) -> bool:
    return ((run.card or {}).get("classification") or {}).get("type") == "multi_label"


def _labels(run: Run, k: int) -> list[str]:
    names = (run.preds or {}).get("labels")
    if names is not None and len(names) == k:
        return [str(x) for x in names]
    names = (run.card or {}).get("labels")
    return [str(x) for x in names] if names and len(names) == k else [str(i) for i in range(k)]


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
    split = prediction_split(run)
    data["prediction_split"] = split
    if split:
        y, probs, tokens = _split_arrays(run.preds, split)
        names = _labels(run, probs.shape[1])
        section("histograms", lambda: score_histograms(y, probs, names))
        section("reliability", lambda: reliability(y, probs))
        section("length", lambda: length_buckets(y, probs, tokens, card.get("max_length") or
                                                 (card.get("args") or {}).get("max_length"))
                if tokens is not None else None)

    def eces():
        out = {}
        for s in ("valid", "test") if not is_multi_label(run) else ():  # top-label calibration: single-label
            arrays = _split_arrays(run.preds or {}, s)
            if arrays is not None:
                out[s] = reliability(arrays[0], arrays[1])["ece"]
        return out

    section("ece", eces)
    section("summary", lambda: summary(run, data.get("ece") or {}))
    return data


# ---- summary table -----------------------------------------------------------------------------------------

def summary(run: Run, ece: dict) -> list[dict]:
    """Rows {group, key, value} of the summary table (values already formatted as text)."""
    card = run.card or {}
    args = card.get("args") or {}
    tr = card.get("training") or {}
    metrics = card.get("metrics") or {}
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
        add("data", f"{split} rows", f"{_int(s.get('rows'))}"
            + (f" ({', '.join(f'{k}: {_int(v)}' for k, v in counts.items())})" if counts else "")
            + (f"; {_int(s['dropped_empty'])} empty dropped" if s.get("dropped_empty") else ""))
        add("data", f"{split} source", s.get("source"))
        add("data", f"{split} sha256", s.get("sha256"), mono=True)
    add("data", "text / label column", " / ".join(str(x) for x in (data.get("text_col"), data.get("label_col")) if x))

    add("model", "base model", card.get("base_model") or args.get("model"))
    add("model", "labels", ", ".join(map(str, card.get("labels") or [])))
    add("model", "max length", card.get("max_length") or args.get("max_length"))
    if args.get("trim_vocab"):
        add("model", "vocabulary", "trimmed to the training texts")

    recipe = [("epochs", "epochs"), ("batch_size", "batch size (micro)"), ("grad_accum", "gradient accumulation"),
              ("lr", "peak learning rate"), ("warmup", "warmup share"), ("weight_decay", "weight decay"),
              ("max_grad_norm", "max grad norm"), ("sample", "train sample"), ("valid_frac", "validation share"),
              ("eval_every", "eval every (steps)"), ("patience", "patience"), ("seed", "seed")]
    for k, label in recipe:
        if args.get(k) is not None:
            add("recipe", label, _num(args[k]))
    add("recipe", "global batch", _int(tr.get("global_batch")))

    add("training", "device", tr.get("device"))
    if tr.get("processes") and tr["processes"] > 1:
        add("training", "processes", tr["processes"])
    add("training", "precision", tr.get("precision"))
    if tr.get("steps") is not None:
        add("training", "steps", f"{_int(tr['steps'])} ({_num(tr.get('epochs'))} epochs); best checkpoint at step "
            f"{_int(tr.get('best_step'))}")
    add("training", "stopped", tr.get("stop_reason"))
    if tr.get("wall_time_s") is not None:
        add("training", "wall time", _secs(tr["wall_time_s"])
            + (f" (training {_secs(tr['train_seconds'])})" if tr.get("train_seconds") is not None else ""))
    if tr.get("samples_per_s") is not None:
        add("training", "throughput",
            f"{tr['samples_per_s']:,.0f} samples/s, {tr.get('tokens_per_s') or 0:,.0f} tokens/s")
    if not card and run.train_log:
        last = run.train_log[-1]
        add("training", "logged so far", f"step {_int(last['step'])}, {_secs(last.get('elapsed_s'))}")

    for split, label in (("valid", "validation"), ("test", "test")):
        rep = metrics.get(split)
        if isinstance(rep, dict) and "accuracy" in rep:
            add("metrics", f"{label} accuracy", f"{rep['accuracy']:.4f} (macro-F1 {rep.get('macro_f1', 0):.4f}, "
                f"{_int(rep.get('n'))} rows)")
        if split in ece:
            add("metrics", f"{label} ECE", f"{ece[split]:.4f} ({N_CALIBRATION_BINS} bins)")
    b = run.baseline
    if b:
        test = metrics.get("test") or metrics.get("valid") or {}
        delta = (f"; the transformer: {(test['accuracy'] - b['accuracy']) * 100:+.1f} points"
                 if isinstance(test, dict) and _finite(test.get("accuracy")) and _finite(b.get("accuracy")) else "")
        add("metrics", "TF-IDF baseline",
            f"accuracy {_num(b.get('accuracy'), 4)}, macro-F1 {_num(b.get('macro_f1'), 4)}"
            + (f" in {_secs(b['seconds'])}" if _finite(b.get("seconds")) else "")
            + (f" on {_int(b['n_test'])} rows" if b.get("n_test") else "") + delta
            + f" (from {run.baseline_source})")
    for k, v in (card.get("versions") or {}).items():
        add("versions", k, v)
    return rows


def _int(x) -> str:
    return f"{x:,}" if isinstance(x, int) and not isinstance(x, bool) else ("-" if x is None else str(x))


def _num(x, digits: int = 4) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "-" if x is None else str(x)
    if isinstance(x, int) or float(x).is_integer():
        return f"{int(x):,}"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}" if abs(x) < 1e-3 else f"{x:.{digits}f}".rstrip("0").rstrip(".")


def _num_signed(x) -> str:
    return ("+" if x > 0 else "-") + _num(abs(x), 4)


def _secs(s) -> str:
    if not _finite(s):
        return "-"
    if s < 90:
        return f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


# ---- plots (matplotlib, Agg canvas, never pyplot's global state) ---------------------------------------------

def _figure(w: float = 6.4, h: float = 3.6, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a label's glyphs missing from the font
        fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def plot_training(c: dict):
    """Training loss and accuracy by step (one point per logged window), best checkpoint dashed."""
    fig, (ax_loss, ax_acc) = _figure(9.6, 3.4, ncols=2)
    t = c["train"]
    ax_loss.plot(t["step"], t["loss"], marker="o", ms=2.5, lw=1.3, color=COLORS[0], label="training loss")
    ax_loss.set(title="training loss", xlabel="step", ylabel="cross-entropy")
    ax_acc.plot(t["step"], t["acc"], marker="o", ms=2.5, lw=1.3, color=COLORS[0], label="training (logged window)")
    v = c["valid"]
    if v["step"]:
        ax_acc.plot(v["step"], v["accuracy"], marker="s", ms=4, lw=1.3, color=COLORS[1], label="validation")
    ax_acc.set(title="accuracy", xlabel="step", ylabel="accuracy")
    ax_acc.legend(loc="lower right", fontsize=8)
    if c.get("best_step") is not None:
        for ax in (ax_loss, ax_acc):
            ax.axvline(c["best_step"], ls="--", lw=1, color="0.4")
    return fig


def plot_validation(c: dict):
    """Validation accuracy and macro-F1 at each evaluation; the best checkpoint starred."""
    fig, (ax,) = _figure()
    v = c["valid"]
    ax.plot(v["step"], v["accuracy"], marker="o", lw=1.5, color=COLORS[0], label="accuracy")
    if any(x is not None for x in v["macro_f1"]):
        ax.plot(v["step"], [x if x is not None else np.nan for x in v["macro_f1"]], marker="o", lw=1.2, ls=":",
                color=COLORS[2], label="macro-F1")
    best = c.get("best_step")
    if best in v["step"]:
        i = v["step"].index(best)
        ax.plot([best], [v["accuracy"][i]], marker="*", ms=16, color=COLORS[3], ls="none",
                label=f"best checkpoint (step {best}: {v['accuracy'][i]:.4f})")
    vals = [x for x in v["accuracy"] + v["macro_f1"] if x is not None]
    lo, hi = min(vals), max(vals)
    pad = max(0.05, (0.1 - (hi - lo)) / 2)
    ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad) + 0.01)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set(title="validation by evaluation", xlabel="step", ylabel="score")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_confusion(cm: dict):
    m = np.asarray(cm["matrix"], dtype=np.int64)
    k = len(m)
    size = min(7.5, 3.2 + 0.45 * k)
    fig, (ax,) = _figure(size + 1.2, size)
    ax.grid(False)
    row = m.sum(1, keepdims=True)
    share = np.divide(m, row, out=np.zeros(m.shape), where=row > 0)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the true class")
    names = [_plot_text(n, f"class {i}") for i, n in enumerate(cm["labels"])]
    names = [n if len(n) <= 16 else n[:15] + "…" for n in names]
    ax.set_xticks(range(k), names, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
    ax.set_yticks(range(k), names)
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion matrix ({_split_name(cm['split'])}, {m.sum():,} rows)")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{m[i, j]:,}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=8 if k < 8 else 6,
                        color="white" if share[i, j] > 0.6 else "black")
    return fig


def plot_histograms(h: dict, split: str):
    fig, (ax,) = _figure()
    edges = np.asarray(h["edges"])
    for i, (lab, counts) in enumerate(h["counts"].items()):
        ax.stairs(counts, edges, lw=1.6, color=COLORS[i % len(COLORS)], label=f"true {_plot_text(lab, f'class {i}')}",
                  fill=len(h["counts"]) <= 3, alpha=0.35 if len(h["counts"]) <= 3 else 1)
        ax.stairs(counts, edges, lw=1.6, color=COLORS[i % len(COLORS)])
    ax.set(title=f"scores by true class ({_split_name(split)})", xlabel=h["score"], ylabel="rows", xlim=(0, 1))
    ax.legend(fontsize=8, ncols=1 if len(h["counts"]) <= 6 else 2)
    return fig


def plot_reliability(items: list[tuple[str, dict]], title: str):
    """Reliability curves: accuracy against mean confidence per non-empty bin, the diagonal is perfect."""
    fig, (ax,) = _figure(5.0, 4.2)
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.5", label="perfectly calibrated")
    for i, (label, r) in enumerate(items):
        pts = [(c, a) for c, a in zip(r["confidence"], r["accuracy"]) if c is not None]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, marker="o", ms=4, lw=1.5, color=COLORS[i % len(COLORS)], label=f"{label} ECE {r['ece']:.4f}")
    if len(items) == 1:  # rows per bin, for a sense of how much each point weighs
        r = items[0][1]
        lo = np.asarray(r["edges"][:-1])
        w = 1 / r["n_bins"]
        share = np.asarray(r["count"]) / max(r["n"], 1)
        ax.bar(lo + w / 2, share, width=w * 0.9, color="0.85", zorder=0, label="share of rows per bin")
    ax.set(title=title, xlabel="confidence (max probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="upper left", fontsize=8)
    return fig


def plot_length(lb: dict, split: str):
    fig, (ax,) = _figure()
    b = lb["buckets"]
    x = np.arange(len(b))
    bars = ax.bar(x, [v["accuracy"] for v in b], color=COLORS[0], alpha=0.8)
    for rect, v in zip(bars, b):
        ax.annotate(f"{v['accuracy']:.3f}\nn={v['n']:,}", (rect.get_x() + rect.get_width() / 2, 0), ha="center",
                    va="bottom", fontsize=7, color="white", xytext=(0, 3), textcoords="offset points")
    ax.axhline(lb["accuracy_overall"], ls="--", lw=1, color="0.4", label=f"overall {lb['accuracy_overall']:.4f}")
    ax.set_xticks(x, [v["label"] for v in b])
    ax.set(title=f"accuracy by length ({_split_name(split)})", xlabel="tokens per text", ylabel="accuracy",
           ylim=(0, 1.1))
    ax.legend(loc="upper right", fontsize=8)
    return fig


def plot_compare_training(items: list[tuple[str, dict]]):
    """Training loss, training accuracy and validation accuracy of several runs, by epoch (comparable across
    batch sizes, unlike steps)."""
    fig, axes = _figure(12.0, 3.4, ncols=3)
    for i, (name, c) in enumerate(items):
        col = COLORS[i % len(COLORS)]
        t, v = c["train"], c["valid"]
        axes[0].plot(t["epoch"], t["loss"], lw=1.3, marker="o", ms=2, color=col, label=name)
        axes[1].plot(t["epoch"], t["acc"], lw=1.3, marker="o", ms=2, color=col, label=name)
        axes[2].plot(v["epoch"], v["accuracy"], lw=1.3, marker="s", ms=4, color=col, label=name)
        if c.get("best_step") in v["step"]:
            j = v["step"].index(c["best_step"])
            axes[2].plot([v["epoch"][j]], [v["accuracy"][j]], marker="*", ms=14, color=col, ls="none")
    for ax, title in zip(axes, ("training loss", "training accuracy", "validation accuracy (best starred)")):
        ax.set(title=title, xlabel="epoch")
        ax.legend(fontsize=8)
    return fig


def plot_compare_length(items: list[tuple[str, dict]]):
    """Accuracy by length bucket, one bar per run in each bucket."""
    fig, (ax,) = _figure()
    order: list[str] = []
    for _, lb in items:
        order += [b["label"] for b in lb["buckets"] if b["label"] not in order]
    order.sort(key=lambda lab: (lab.endswith("(cut)"), int(re.match(r"\d+", lab).group())))
    x = np.arange(len(order))
    w = 0.8 / len(items)
    for i, (name, lb) in enumerate(items):
        by = {b["label"]: b["accuracy"] for b in lb["buckets"]}
        col = COLORS[i % len(COLORS)]
        ax.bar(x - 0.4 + w * (i + 0.5), [by.get(lab, np.nan) for lab in order], width=w * 0.95, color=col,
               alpha=0.85, label=name)
        ax.axhline(lb["accuracy_overall"], ls="--", lw=1, color=col)
    ax.set_xticks(x, order)
    ax.set(title="accuracy by length", xlabel="tokens per text", ylabel="accuracy", ylim=(0, 1.1))
    ax.legend(loc="upper right", fontsize=8, ncols=min(len(items), 3))
    return fig


_FONTS: tuple | None = None


def _fonts() -> tuple[list[str], list]:
    """(font families for the plots: DejaVu Sans, then an installed CJK font if any, e.g. from the Debian
    package fonts-noto-cjk or fonts-nanum; their FT2Font objects, to test which characters they can draw)."""
    global _FONTS
    if _FONTS is None:
        from matplotlib import font_manager

        installed = sorted({f.name for f in font_manager.fontManager.ttflist})
        extra = [n for n in installed if re.search(r"CJK|Nanum|Noto Sans (KR|JP|SC|TC)|Malgun|Unifont", n)][:2]
        families = ["DejaVu Sans", *extra]
        fonts = []
        for fam in families:
            try:
                fonts.append(font_manager.get_font(font_manager.findfont(
                    font_manager.FontProperties(family=fam), fallback_to_default=True)))
            except Exception:  # noqa: BLE001
                pass
        _FONTS = (families, fonts)
    return _FONTS


def _plot_text(text: str, fallback: str) -> str:
    """`text` if the plot fonts can draw every character of it, else `fallback` (the page's tables show the
    real names; Agg would draw boxes)."""
    _, fonts = _fonts()
    try:
        ok = all(c.isspace() or any(f.get_char_index(ord(c)) for f in fonts) for c in str(text))
    except Exception:  # noqa: BLE001
        ok = True
    return str(text) if ok else fallback


def plot_style():
    """The rc settings every report plot is drawn under (font fallback for non-Latin labels)."""
    import matplotlib

    return matplotlib.rc_context({"font.family": _fonts()[0]})


def _split_name(split: str | None) -> str:
    return {"valid": "validation", "test": "test"}.get(split, str(split))


def _matplotlib_ok():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("report: matplotlib is not installed; pip install matplotlib") from None


# ---- pages -------------------------------------------------------------------------------------------------

@dataclass
class Plot:
    file: str       # PNG name in the asset folder
    title: str
    caption: str
    png: bytes


def run_figures(data: dict) -> list[Plot]:
    """The single-run plots, drawn from `data` (run_data's dict) only."""
    figs: list[Plot] = []

    def add(file, title, caption, make):
        try:
            fig = make()
        except Exception as e:  # noqa: BLE001
            data["errors"][file] = f"{type(e).__name__}: {e}"
            return
        figs.append(Plot(file, title, caption, png_bytes(fig)))

    c, split = data.get("curves"), data.get("prediction_split")
    if c and c["train"]["step"]:
        add("training.png", "Training", f"Loss and accuracy of each logged window ({len(c['train']['step'])} points, "
            "as in train_log.jsonl); validation accuracy in orange; dashed: the best checkpoint.",
            lambda: plot_training(c))
    if c and c["valid"]["step"]:
        add("validation.png", "Validation", f"{len(c['valid']['step'])} evaluation(s); the star marks the "
            f"checkpoint kept as the final model (step {c.get('best_step')}).", lambda: plot_validation(c))
    cm = data.get("confusion")
    if cm:
        add("confusion.png", f"Confusion matrix ({_split_name(cm['split'])})", "Rows: true class; columns: "
            "predicted; each cell: rows and share of its true class.", lambda: plot_confusion(cm))
    if data.get("histograms"):
        add("scores.png", f"Scores by true class ({_split_name(split)})", "How far apart the classes' scores lie: "
            "overlap is where errors come from.", lambda: plot_histograms(data["histograms"], split))
    r = data.get("reliability")
    if r:
        add("calibration.png", f"Calibration ({_split_name(split)}): ECE {r['ece']:.4f}",
            f"Accuracy against confidence in {r['n_bins']} equal-width bins; on the diagonal the model's confidence "
            f"is its accuracy. ECE (expected calibration error) = {r['ece']:.4f}: the row-weighted mean gap.",
            lambda: plot_reliability([(_split_name(split), r)], f"reliability ({_split_name(split)})"))
    lb = data.get("length")
    if lb and lb["buckets"]:
        add("length.png", f"Accuracy by length ({_split_name(split)})", "Texts bucketed by tokens (special tokens "
            "included); n: rows per bucket.", lambda: plot_length(lb, split))
    return figs


CSS = """
:root{--fg:#1d2430;--muted:#5d6778;--line:#dde2ea;--bg:#f6f7f9;--card:#fff;--accent:#1f77b4}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 -apple-system,"Segoe UI",Roboto,"Noto Sans",
"Noto Sans KR","Apple SD Gothic Neo","Malgun Gothic","DejaVu Sans",sans-serif}
main{max-width:1180px;margin:0 auto;padding:24px 20px 48px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 10px}h3{font-size:15px;margin:0 0 6px}
.sub{color:var(--muted);margin:0}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:12px;margin-top:18px}
.tile{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 14px}
.tile .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.tile .v{font-size:24px;font-weight:600;margin-top:2px}.tile .d{color:var(--muted);font-size:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:14px}
figure{margin:0;background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px}
figure.wide{grid-column:1/-1}
figure img{display:block;max-width:100%;height:auto;margin:0 auto}
figcaption{color:var(--muted);font-size:12.5px;margin-top:6px}
table{border-collapse:collapse;background:var(--card);width:100%;font-size:13px}
th,td{border:1px solid var(--line);padding:5px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.group{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em;white-space:nowrap}
.mono{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
.notes{background:#fff8e1;border:1px solid #f3d98b;border-radius:8px;padding:8px 14px;margin-top:16px}
.notes li{margin:2px 0}.diff{background:#fff1f0}
.pos{color:#1a7f37}.neg{color:#c62828}
footer{color:var(--muted);font-size:12px;margin-top:32px}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _img(fig: Plot) -> str:
    b64 = base64.b64encode(fig.png).decode("ascii")
    return f'<img src="data:image/png;base64,{b64}" alt="{_e(fig.title)}" data-file="{_e(fig.file)}">'


def _figure_html(fig: Plot, wide: bool = False) -> str:
    return (f'<figure id="fig-{_e(Path(fig.file).stem)}"{" class=wide" if wide else ""}><h3>{_e(fig.title)}</h3>'
            f"{_img(fig)}<figcaption>{_e(fig.caption)}</figcaption></figure>")


def _json_script(data: dict) -> str:
    text = json.dumps(data, ensure_ascii=False, default=str, allow_nan=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")  # safe inside <script>
    return f'<script type="application/json" id="report-data">{text}</script>'


def _page(title: str, subtitle: str, body: str, data: dict) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body><main>"
            f"<h1>{_e(title)}</h1><p class=sub>{subtitle}</p>\n{body}\n"
            f"<footer>Written by bertclf report on {_e(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}; the plotted numbers "
            f"are in the report-data element of this page.</footer></main>\n{_json_script(data)}\n</body></html>\n")


def _notes_html(notes: list[str], errors: dict) -> str:
    items = [_e(n) for n in notes] + [f"section {_e(k)} failed: {_e(v)}" for k, v in errors.items()]
    return f'<ul class="notes">{"".join(f"<li>{i}</li>" for i in items)}</ul>' if items else ""


def _tile(k: str, v: str, d: str = "") -> str:
    return f'<div class="tile"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div><div class="d">{d}</div></div>'


def confusion_table_html(cm: dict, table_id: str = "confusion-matrix") -> str:
    labels = cm["labels"]
    head = "".join(f'<th class="num">{_e(lab)}</th>' for lab in labels)
    rows = "".join(f"<tr><th>{_e(lab)}</th>" + "".join(f'<td class="num">{int(v)}</td>' for v in row) + "</tr>"
                   for lab, row in zip(labels, cm["matrix"]))
    return (f'<table id="{_e(table_id)}" data-split="{_e(cm["split"])}"><thead><tr><th>true \\ predicted</th>{head}'
            f"</tr></thead><tbody>{rows}</tbody></table>")


def per_class_table_html(rep: dict) -> str:
    rows = "".join(f"<tr><td>{_e(n)}</td>"
                   + "".join(f'<td class="num">{c[k]:.4f}</td>' for k in ("precision", "recall", "f1"))
                   + f'<td class="num">{int(c["support"]):,}</td></tr>' for n, c in rep["per_class"].items())
    return ('<table id="per-class"><thead><tr><th>class</th><th class="num">precision</th><th class="num">recall</th>'
            f'<th class="num">F1</th><th class="num">support</th></tr></thead><tbody>{rows}</tbody></table>')


def per_label_table_html(rep: dict) -> str:
    """Multi-label: each label's precision, recall, F1, support and its threshold tuned on validation."""
    rows = "".join(f"<tr><td>{_e(n)}</td>"
                   + "".join(f'<td class="num">{c[k]:.4f}</td>' for k in ("precision", "recall", "f1"))
                   + f'<td class="num">{int(c["support"]):,}</td><td class="num">{c.get("threshold", 0.5):.2f}</td></tr>'
                   for n, c in rep["per_label"].items())
    return ('<table id="per-label"><thead><tr><th>label</th><th class="num">precision</th><th class="num">recall</th>'
            '<th class="num">F1</th><th class="num">support</th><th class="num">threshold</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>")


def summary_table_html(rows: list[dict]) -> str:
    out, last = [], None
    for r in rows:
        g = r["group"] if r["group"] != last else ""
        last = r["group"]
        cls = ' class="mono"' if r.get("mono") else ""
        out.append(f'<tr><td class="group">{_e(g)}</td><th>{_e(r["key"])}</th><td{cls}>{_e(r["value"])}</td></tr>')
    return f'<table id="summary"><tbody>{"".join(out)}</tbody></table>'


def run_page(run: Run, data: dict, figs: list[Plot]) -> str:
    card = run.card or {}
    metrics = card.get("metrics") or {}
    tr = card.get("training") or {}
    tiles = []
    for split in ("test", "valid"):
        rep = metrics.get(split)
        if isinstance(rep, dict) and _finite(rep.get("accuracy")):
            tiles.append(_tile(f"{_split_name(split)} accuracy", f"{rep['accuracy']:.4f}",
                               _e(f"macro-F1 {_num(rep.get('macro_f1'), 4)} · {_int(rep.get('n'))} rows")))
    if run.baseline and _finite(run.baseline.get("accuracy")):
        tiles.append(_tile("TF-IDF baseline", f"{run.baseline['accuracy']:.4f}",
                           f"macro-F1 {_num(run.baseline.get('macro_f1'), 4)}"))
    r = data.get("reliability")
    if r:
        tiles.append(_tile(f"ECE ({_split_name(data['prediction_split'])})", f"{r['ece']:.4f}",
                           f"{r['n_bins']} bins · mean confidence {r['mean_confidence']:.3f}"))
    if _finite(tr.get("wall_time_s")):
        sps = f"{tr['samples_per_s']:,.0f} samples/s · " if _finite(tr.get("samples_per_s")) else ""
        tiles.append(_tile("wall time", _secs(tr["wall_time_s"]), _e(f"{sps}{tr.get('device', '')}")))
    by_file = {f.file: f for f in figs}
    body = [f'<div class="tiles">{"".join(tiles)}</div>' if tiles else "", _notes_html(data["notes"], data["errors"])]
    if "training.png" in by_file:
        body.append('<h2>Training</h2><div class="grid">' + _figure_html(by_file["training.png"], wide=True) + "</div>")
    evals = [by_file[f] for f in ("validation.png", "confusion.png") if f in by_file]
    if evals:
        body.append('<h2>Evaluation</h2><div class="grid">' + "".join(_figure_html(f) for f in evals) + "</div>")
    cm = data.get("confusion")
    if cm:
        rep = metrics.get(cm["split"]) if isinstance(metrics.get(cm["split"]), dict) else None
        body.append(f'<h2>Confusion matrix and per-class scores ({_split_name(cm["split"])})</h2><div class="grid">'
                    f"<div>{confusion_table_html(cm)}</div>"
                    + (f"<div>{per_class_table_html(rep)}</div>" if rep and rep.get("per_class") else "") + "</div>")
    ml = next((metrics[s] for s in ("test", "valid") if isinstance(metrics.get(s), dict) and metrics[s].get("per_label")),
              None)
    if ml:
        split = "test" if ml is metrics.get("test") else "valid"
        body.append(f"<h2>Per-label scores ({_split_name(split)}): micro-F1 {ml['micro_f1']:.4f}, macro-F1 "
                    f"{ml['macro_f1']:.4f}, subset accuracy {ml['subset_accuracy']:.4f}</h2>"
                    + per_label_table_html(ml))
    preds = [by_file[f] for f in ("scores.png", "calibration.png", "length.png") if f in by_file]
    if preds:
        ece = f": ECE {r['ece']:.4f}" if r else ""
        body.append(f"<h2>Scores, calibration{_e(ece)} and length</h2><div class=\"grid\">"
                    + "".join(_figure_html(f) for f in preds) + "</div>")
    if data.get("summary"):
        body.append("<h2>Summary</h2>" + summary_table_html(data["summary"]))
    sub = f'<span class="mono">{_e(run.dir)}</span>'
    return _page(f"bertclf run report: {run.name}", sub, "\n".join(b for b in body if b), data)


# ---- comparing runs ----------------------------------------------------------------------------------------

COMPARE_ROWS = [  # (group, key, getter on (run, data)), the side-by-side table
    ("metrics", "test accuracy", lambda r, d: _metric(r, "test", "accuracy")),
    ("metrics", "test macro-F1", lambda r, d: _metric(r, "test", "macro_f1")),
    ("metrics", "validation accuracy", lambda r, d: _metric(r, "valid", "accuracy")),
    ("metrics", "validation macro-F1", lambda r, d: _metric(r, "valid", "macro_f1")),
    ("metrics", "test ECE", lambda r, d: (d.get("ece") or {}).get("test")),
    ("metrics", "validation ECE", lambda r, d: (d.get("ece") or {}).get("valid")),
    ("metrics", "TF-IDF baseline accuracy", lambda r, d: (r.baseline or {}).get("accuracy")),
    ("training", "steps", lambda r, d: _get(r.card, "training", "steps")),
    ("training", "best step", lambda r, d: _get(r.card, "training", "best_step")),
    ("training", "epochs", lambda r, d: _get(r.card, "training", "epochs")),
    ("training", "wall time (s)", lambda r, d: _get(r.card, "training", "wall_time_s")),
    ("training", "samples/s", lambda r, d: _get(r.card, "training", "samples_per_s")),
    ("training", "tokens/s", lambda r, d: _get(r.card, "training", "tokens_per_s")),
    ("training", "device", lambda r, d: _get(r.card, "training", "device")),
    ("training", "precision", lambda r, d: _get(r.card, "training", "precision")),
    ("training", "stopped", lambda r, d: _get(r.card, "training", "stop_reason")),
    ("recipe", "base model", lambda r, d: _get(r.card, "base_model")),
    ("recipe", "max length", lambda r, d: _get(r.card, "args", "max_length")),
    ("recipe", "epochs asked", lambda r, d: _get(r.card, "args", "epochs")),
    ("recipe", "batch size (micro)", lambda r, d: _get(r.card, "args", "batch_size")),
    ("recipe", "global batch", lambda r, d: _get(r.card, "training", "global_batch")),
    ("recipe", "peak learning rate", lambda r, d: _get(r.card, "args", "lr")),
    ("recipe", "warmup share", lambda r, d: _get(r.card, "args", "warmup")),
    ("recipe", "weight decay", lambda r, d: _get(r.card, "args", "weight_decay")),
    ("recipe", "train sample", lambda r, d: _get(r.card, "args", "sample")),
    ("recipe", "seed", lambda r, d: _get(r.card, "args", "seed")),
    ("data", "train rows", lambda r, d: _get(r.card, "data", "train", "rows")),
    ("data", "train sha256", lambda r, d: _get(r.card, "data", "train", "sha256")),
    ("data", "validation rows", lambda r, d: _get(r.card, "data", "valid", "rows")),
    ("data", "test rows", lambda r, d: _get(r.card, "data", "test", "rows")),
    ("data", "test sha256", lambda r, d: _get(r.card, "data", "test", "sha256")),
]
HIGHER_IS_BETTER = {"test accuracy", "test macro-F1", "validation accuracy", "validation macro-F1", "samples/s",
                    "tokens/s"}
LOWER_IS_BETTER = {"test ECE", "validation ECE", "wall time (s)"}


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _metric(run: Run, split: str, key: str):
    return _get(run.card, "metrics", split, key)


def compare_data(runs: list[Run]) -> dict:
    """Everything a comparison page shows: each run's run_data, and the side-by-side table rows
    {group, key, values: [one per run], delta: last minus first or None}."""
    per_run = [run_data(r) for r in runs]
    rows = []
    for group, key, get in COMPARE_ROWS:
        values = []
        for r, d in zip(runs, per_run):
            try:
                values.append(get(r, d))
            except Exception:  # noqa: BLE001
                values.append(None)
        if all(v is None for v in values):
            continue
        delta = (values[-1] - values[0] if len(values) == 2 and group in ("metrics", "training")
                 and all(_finite(v) for v in values) else None)
        rows.append({"group": group, "key": key, "values": values, "delta": delta,
                     "differ": len({json.dumps(v, default=str) for v in values}) > 1})
    notes = []
    for key in ("train sha256", "test sha256"):
        row = next((r for r in rows if r["key"] == key), None)
        if row and row["differ"] and all(v for v in row["values"]):
            notes.append(f"the runs used different {key.split()[0]} data ({key} differs): compare with care")
    return {"bertclf_report": REPORT_FORMAT, "kind": "compare", "runs": [str(r.dir) for r in runs],
            "names": _display_names(runs), "per_run": per_run, "table": rows, "notes": notes, "errors": {}}


def _display_names(runs: list[Run]) -> list[str]:
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # same folder names: add the parent
        names = [f"{r.dir.parent.name}/{r.name}" for r in runs]
    if len(set(names)) < len(names):
        names = [f"{i + 1}: {n}" for i, n in enumerate(names)]
    return names


def compare_figures(data: dict) -> list[Plot]:
    figs: list[Plot] = []
    names = [_plot_text(n, f"run {i + 1}") for i, n in enumerate(data["names"])]
    per = data["per_run"]

    def add(file, title, caption, make):
        try:
            figs.append(Plot(file, title, caption, png_bytes(make())))
        except Exception as e:  # noqa: BLE001
            data["errors"][file] = f"{type(e).__name__}: {e}"

    cs = [(n, d["curves"]) for n, d in zip(names, per) if d.get("curves") and d["curves"]["train"]["step"]]
    if cs:
        add("training.png", "Training curves", "By epoch, so runs with different batch sizes line up; "
            "stars: each run's best checkpoint.", lambda: plot_compare_training(cs))
    rs = [(f"{n} ({_split_name(d['prediction_split'])})", d["reliability"]) for n, d in zip(names, per)
          if d.get("reliability")]
    if rs:
        add("calibration.png", "Calibration", f"Accuracy against confidence, {N_CALIBRATION_BINS} bins; ECE per "
            "run in the legend.", lambda: plot_reliability(rs, "reliability"))
    ls = [(f"{n} ({_split_name(d['prediction_split'])})", d["length"]) for n, d in zip(names, per)
          if d.get("length") and d["length"]["buckets"]]
    if ls:
        add("length.png", "Accuracy by length", "Rows bucketed by tokens (special tokens included); the dashed "
            "lines: each run's overall accuracy.", lambda: plot_compare_length(ls))
    return figs


def _cell(v) -> str:
    if isinstance(v, float):
        return _num(v, 4)
    if isinstance(v, int) and not isinstance(v, bool):
        return _int(v)
    return "-" if v is None else str(v)


def compare_page(runs: list[Run], data: dict, figs: list[Plot]) -> str:
    names = data["names"]
    head = "".join(f"<th>{_e(n)}</th>" for n in names)
    head += '<th class="num">Δ (2nd − 1st)</th>' if len(runs) == 2 else ""
    trs, last = [], None
    for row in data["table"]:
        g = row["group"] if row["group"] != last else ""
        last = row["group"]
        mono = ' mono' if "sha256" in row["key"] else ""
        diff = " diff" if row["differ"] and row["group"] in ("recipe", "data") else ""
        cells = "".join(f'<td class="num{mono}{diff}">{_e(_cell(v))}</td>' for v in row["values"])
        if len(runs) == 2:
            dl = row["delta"]
            cls = ""
            if dl is not None and dl != 0 and row["key"] in HIGHER_IS_BETTER | LOWER_IS_BETTER:
                cls = "pos" if (dl > 0) == (row["key"] in HIGHER_IS_BETTER) else "neg"
            cells += f'<td class="num {cls}">{_e(_num_signed(dl) if dl else "")}</td>'
        trs.append(f'<tr><td class="group">{_e(g)}</td><th>{_e(row["key"])}</th>{cells}</tr>')
    table = f'<table id="compare"><thead><tr><th></th><th></th>{head}</tr></thead><tbody>{"".join(trs)}</tbody></table>'
    notes = list(data["notes"])
    for n, d in zip(names, data["per_run"]):
        notes += [f"{n}: {x}" for x in d["notes"]] + [f"{n}: section {k} failed: {v}" for k, v in d["errors"].items()]
    by_file = {f.file: f for f in figs}
    body = [_notes_html(notes, data["errors"]), "<h2>Side by side</h2>" + table]
    if "training.png" in by_file:
        body.append('<h2>Training</h2><div class="grid">' + _figure_html(by_file["training.png"], wide=True) + "</div>")
    rest = [f for f in figs if f.file != "training.png"]
    if rest:
        body.append('<h2>Calibration and length</h2><div class="grid">' + "".join(_figure_html(f) for f in rest)
                    + "</div>")
    cms = [(n, d["confusion"]) for n, d in zip(names, data["per_run"]) if d.get("confusion")]
    if cms:
        body.append('<h2>Confusion matrices</h2><div class="grid">' + "".join(
            f"<div><h3>{_e(n)} ({_split_name(cm['split'])})</h3>"
            f"{confusion_table_html(cm, table_id=f'confusion-{i + 1}')}</div>"
            for i, (n, cm) in enumerate(cms)) + "</div>")
    sub = " vs ".join(f'<span class="mono">{_e(r.dir)}</span>' for r in runs)
    return _page(f"bertclf comparison: {' vs '.join(names)}", sub, "\n".join(b for b in body if b), data)


# ---- writing -----------------------------------------------------------------------------------------------

def default_out(runs: list[Run]) -> Path:
    """DIR/report.html for one run; A/compare-<B>.html (A/compare-<B>-<C>.html, ...) for several."""
    if len(runs) == 1:
        return runs[0].dir / REPORT_FILE
    return runs[0].dir / ("compare-" + "-".join(_safe(r.name) for r in runs[1:]) + ".html")


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "run"


def assets_dir(html_path: Path) -> Path:
    """Where the PNGs and data.json go: the HTML path without its suffix (DIR/report.html -> DIR/report/)."""
    if html_path.suffix.lower() in (".html", ".htm"):
        return html_path.with_suffix("")
    return html_path.with_name(html_path.name + "_files")


def _plain(x):
    """JSON-ready: numpy scalars to Python, NaN/inf to None (JSON has neither)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _ours(d: Path) -> bool:
    """May the asset folder `d` be replaced: absent, empty, or one an earlier report wrote."""
    if not d.exists():
        return True
    if not d.is_dir():
        return False
    if not any(d.iterdir()):
        return True
    try:
        return "bertclf_report" in json.loads((d / DATA_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError):
        return False


def write_report(run_dirs: list[str], out: str | None = None) -> str:
    """Write the report page for one run directory, or a comparison page for several; return the HTML's path.

    One run: DIR/report.html, its PNGs and data.json (the plotted series) in DIR/report/.
    Several runs (A B ...): A/compare-<B>.html (A/compare-<B>-<C>.html for three) and A/compare-<B>/.
    out: the HTML file instead (an existing directory: the default file name inside it); the asset folder is
    its path without the .html suffix. An existing asset folder is replaced only when an earlier report wrote it.
    Raises UserError (one line) for a directory that is not a bertclf run, or where nothing can be written.
    A plot that fails is named on the page instead of failing the report.
    """
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    if not run_dirs:
        raise UserError("report: give one run directory, or several to compare")
    if len(run_dirs) > MAX_COMPARE:
        raise UserError(f"report: at most {MAX_COMPARE} runs on one page, got {len(run_dirs)}")
    runs = [load_run(d) for d in run_dirs]
    if out:
        html_path = Path(out).expanduser()
        if html_path.is_dir():
            html_path = html_path / default_out(runs).name
    else:
        html_path = default_out(runs)
    html_path = html_path.resolve()
    check_writable(html_path)  # now, not after the plots
    assets = assets_dir(html_path)
    if not _ours(assets):
        raise UserError(f"{assets}: exists and is not a bertclf report folder (the report's PNGs go there); "
                        f"choose another --out")
    _matplotlib_ok()

    if len(runs) == 1:
        data = run_data(runs[0])
        with plot_style():
            figs = run_figures(data)
    else:
        data = compare_data(runs)
        with plot_style():
            figs = compare_figures(data)
    data["figures"] = [f.file for f in figs]
    data = _plain(data)
    try:
        page = run_page(runs[0], data, figs) if len(runs) == 1 else compare_page(runs, data, figs)
    except Exception as e:  # noqa: BLE001 - odd values in a card: still a page with every plot
        data["errors"]["page"] = f"{type(e).__name__}: {e}"
        body = _notes_html(data["notes"], data["errors"]) + '<div class="grid">' + "".join(map(_figure_html, figs))
        page = _page(f"bertclf report: {', '.join(r.name for r in runs)}", "", body + "</div>", data)
    try:
        with atomic_dir(assets) as tmp:
            for f in figs:
                (tmp / f.file).write_bytes(f.png)
            (tmp / DATA_FILE).write_text(json.dumps(data, indent=1, ensure_ascii=False, default=str) + "\n",
                                         encoding="utf-8")
        with atomic_file(html_path, "w", encoding="utf-8") as fh:
            fh.write(page)
    except OSError as e:
        raise UserError(f"{html_path}: cannot write the report ({e.strerror or e}); give --out FILE in a writable "
                        f"place") from None
    return str(html_path)
