"""Which training labels look wrong: out-of-fold probabilities for every row, then confident learning.

    bertclf audit --train FILE --out AUDIT.tsv [--folds 5] [--model baseline|NAME|DIR]

Every row gets probabilities from a model that never saw it: by default the TF-IDF + logistic regression
baseline (bertclf.models.baseline.tfidf_lr) fitted on the other folds (scikit-learn's cross_val_predict, stratified
folds), minutes on a CPU; with --model NAME|DIR a transformer fine-tuned per fold by `bertclf train`'s own loop
and defaults (the same stratified folds), which fits the texts better and costs `folds` fine-tunes.
cleanlab then flags the rows whose given label the probabilities contradict (cleanlab.filter.find_label_issues,
confident learning) and estimates the noise rate (cleanlab.count.estimate_joint: 1 - trace of the joint
distribution of given and true labels).

AUDIT.tsv: the flagged rows, most suspect first (lowest label-quality score, cleanlab.rank self-confidence:
the out-of-fold probability of the given label), columns row (0-based data row of the file, header not
counted), line (the 1-based file line the row starts on, for an editor), text, given_label, suggested_label (the
out-of-fold argmax), score. AUDIT.html beside it: the summary
and the most suspect rows, rendered from the report templates. Both are written atomically.
"""
from __future__ import annotations

import csv
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertclf.data import dataset as D
from bertclf.errors import UserError
from bertclf.io.files import atomic_file, check_writable

PAGE_ROWS = 200  # most suspect rows shown on the HTML page (the TSV has them all)


@dataclass
class Audit:
    rows: np.ndarray          # data row in the file of each audited text
    texts: list[str]
    labels: np.ndarray        # given label ids
    names: list[str]          # label id -> name
    probs: np.ndarray         # out-of-fold probabilities (n, k)
    scores: np.ndarray        # label quality, 0..1, low = suspect
    ranked: np.ndarray        # indices of the flagged rows, most suspect first
    joint: np.ndarray         # cleanlab's estimate of P(given label = i, true label = j)
    lines: np.ndarray | None = None  # the file line each row starts on (1-based; blank lines are no rows)
    pairs: list[str] | None = None   # sentence pairs: each row's second text

    @property
    def noise_rate(self) -> float:
        return float(1.0 - np.trace(self.joint))

    def summary(self) -> dict:
        """JSON-ready: rows, out-of-fold accuracy, flagged rows, the estimated noise rate, per class figures."""
        n = len(self.labels)
        flagged = Counter(self.labels[self.ranked].tolist())
        given = np.bincount(self.labels, minlength=len(self.names))
        per_class = []
        for i, name in enumerate(self.names):
            row_mass = self.joint[i].sum()
            per_class.append({"label": name, "rows": int(given[i]), "suspected": int(flagged.get(i, 0)),
                              "noise_rate": float(1 - self.joint[i, i] / row_mass) if row_mass > 0 else 0.0})
        accuracy = float((self.probs.argmax(1) == self.labels).mean())
        return {"rows": n, "oof_accuracy": accuracy, "oof_name": "out-of-fold accuracy", "oof_score": accuracy,
                "suspected": int(len(self.ranked)), "suspected_share": len(self.ranked) / n if n else 0.0,
                "noise_rate": self.noise_rate, "per_class": per_class}

    def records(self, limit: int | None = None) -> list[dict]:
        """The flagged rows, most suspect first, as the TSV writes them."""
        idx = self.ranked if limit is None else self.ranked[:limit]
        sugg = self.probs.argmax(1)
        return [{"row": int(self.rows[i]), **({"line": int(self.lines[i])} if self.lines is not None else {}),
                 "text": self.texts[i], **({"text_pair": self.pairs[i]} if self.pairs is not None else {}),
                 "given_label": self.names[self.labels[i]],
                 "suggested_label": self.names[sugg[i]], "score": float(self.scores[i])} for i in idx]


def data_rows(path, text_col: str, ds: D.Dataset, encoding: str = "utf-8",
              columns=None, pair_col: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(0-based data row, 1-based file line) of each of ds's texts (bertclf.io.rows.row_positions)."""
    from bertclf.io.rows import row_positions

    rows, lines = row_positions(path, text_col, lambda t: not D.is_empty_text(t), encoding=encoding, columns=columns,
                                pair_col=pair_col)
    assert len(rows) == len(ds)
    return np.array(rows, dtype=np.int64), np.array(lines, dtype=np.int64)


def out_of_fold_probs(texts: list, y: np.ndarray, n_classes: int, folds: int, seed: int,
                      groups: list[str] | None = None) -> np.ndarray:
    """Probabilities for every row from the baseline fitted on the other folds (stratified, seeded); texts may be
    (text, text_pair) tuples; with groups, each group's rows are in one fold (StratifiedGroupKFold)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict

    from bertclf.models.baseline import is_pairs, tfidf_lr

    cv = (StratifiedGroupKFold if groups is not None else StratifiedKFold)(n_splits=folds, shuffle=True,
                                                                           random_state=seed)
    return cross_val_predict(tfidf_lr(n_classes, seed, pairs=is_pairs(texts)), np.asarray(texts, dtype=object), y,
                             cv=cv, groups=groups, method="predict_proba")


def out_of_fold_probs_finetuned(texts: list[str], y: np.ndarray, names: list[str], folds: int, seed: int,
                                model: str, log=lambda s: None) -> np.ndarray:
    """Probabilities for every row from a transformer fine-tuned (bertclf train, default recipe) on the other
    folds; each fold's model lives in a temporary folder only while it predicts its held-out rows."""
    import tempfile

    from sklearn.model_selection import StratifiedKFold

    from bertclf.train.loop import TrainConfig, train
    from bertclf.inference.classifier import Classifier

    probs = np.zeros((len(texts), len(names)))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (fit, held) in enumerate(cv.split(np.zeros(len(y)), y), 1):
        with tempfile.TemporaryDirectory(prefix="bertclf-audit-") as tmp:
            rows = Path(tmp) / "train.tsv"
            with open(rows, "w", encoding="utf-8", newline="") as f:
                w = csv.writer(f, delimiter="\t", lineterminator="\n")
                w.writerow(["text", "label"])
                w.writerows([texts[i], names[y[i]]] for i in fit)
            log(f"audit: fold {k}/{folds}: fine-tuning {model} on {len(fit):,} rows, scoring {len(held):,}")
            train(TrainConfig(out=str(Path(tmp) / "model"), train=str(rows), text_col="text", label_col="label",
                              model=model, seed=seed), echo=lambda s: None)
            clf = Classifier.load(str(Path(tmp) / "model"))
            fold_probs = clf.predict_proba([texts[i] for i in held])
            order = [clf.labels.index(name) for name in names]  # the fold model's label order -> ours
            probs[held] = fold_probs[:, order]
    return probs


def find_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label quality scores, flagged indices most suspect first, estimated joint) from cleanlab."""
    from cleanlab.count import estimate_joint
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    scores = get_label_quality_scores(labels, probs, method="self_confidence")
    ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    return scores, np.asarray(ranked, dtype=np.int64), estimate_joint(labels, probs)


def encode_labels(ds: D.Dataset, folds: int) -> tuple[list[str], np.ndarray]:
    """(label names, label ids); UserError when a label has fewer rows than folds (stratified folds need one each)."""
    labels = D.LabelMap.from_labels(ds.labels, ds.source)
    y = np.asarray(labels.encode(ds.labels, ds.source), dtype=np.int64)
    counts = np.bincount(y, minlength=len(labels.names))
    if counts.min() < folds:
        small = labels.names[int(counts.argmin())]
        raise UserError(f"{ds.source}: label '{small}' has only {counts.min()} row(s), fewer than --folds {folds}; "
                        f"add rows of it, remove it, or lower --folds")
    return labels.names, y


def audit_dataset(ds: D.Dataset, rows: np.ndarray, folds: int = 5, seed: int = 42, log=lambda s: None,
                  model: str = "baseline") -> Audit:
    names, y = encode_labels(ds, folds)
    if model == "baseline":
        log(f"audit: {len(ds):,} rows of {ds.source}; {folds}-fold TF-IDF + logistic regression, then cleanlab")
        probs = out_of_fold_probs(ds.inputs(), y, len(names), folds, seed, ds.groups)
    else:
        log(f"audit: {len(ds):,} rows of {ds.source}; {folds} fine-tunes of {model}, then cleanlab")
        probs = out_of_fold_probs_finetuned(ds.texts, y, names, folds, seed, model, log)
    scores, ranked, joint = find_issues(y, probs)
    return Audit(rows, ds.texts, y, names, probs, scores, ranked, joint, pairs=ds.pairs)


def html_path_for(out: Path) -> Path:
    """AUDIT.tsv -> AUDIT.html beside it."""
    return out.with_suffix(".html") if out.suffix.lower() != ".html" else out.with_name(out.name + ".html")


def write_tsv(path: Path, audit: Audit) -> None:
    with atomic_file(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        # a MultiLabelAudit holds single texts only (run_audit refuses pairs with --multi-label)
        pairs = getattr(audit, "pairs", None) is not None
        w.writerow(["row", "line", "text"] + (["text_pair"] if pairs else []) + ["given_label", "suggested_label",
                                                                                  "score"])
        for r in audit.records():
            w.writerow([r["row"], r.get("line", ""), r["text"]] + ([r["text_pair"]] if pairs else [])
                       + [r["given_label"], r["suggested_label"], f"{r['score']:.6f}"])


def write_html(path: Path, audit: Audit, info: dict) -> None:
    from bertclf.report.page import render

    summary = audit.summary()
    data = {"bertclf_audit": 1, **info, "summary": summary, "top": audit.records(PAGE_ROWS)}
    page = render("audit.html", f"bertclf label audit: {Path(info['train']).name}", data, tool="audit",
                  summary=summary, info=info, top=data["top"], tsv_name=Path(info["out"]).name)
    with atomic_file(path, "w", encoding="utf-8") as f:
        f.write(page)


def format_summary(s: dict) -> str:
    w = max(10, *(len(c["label"]) for c in s["per_class"]))
    lines = [f"{s['rows']:,} rows; {s['oof_name']} {s['oof_score']:.4f}",
             f"suspected label issues (cleanlab): {s['suspected']:,} ({s['suspected_share']:.1%}); "
             f"estimated noise rate {s['noise_rate']:.1%}",
             f"{'label':<{w}}  {'rows':>9}  {'suspected':>9}  est. noise"]
    for c in s["per_class"]:
        lines.append(f"{c['label']:<{w}}  {c['rows']:>9,}  {c['suspected']:>9,}  {c['noise_rate']:>10.1%}")
    return "\n".join(lines)


def run_audit(train: str, out: str, text_col: str | None = None, label_col: str | None = None, folds: int = 5,
              seed: int = 42, log=print, model: str = "baseline", encoding: str = "utf-8",
              columns: list[str] | None = None, multi_label: bool = False, label_sep: str = ",",
              label_names: str | None = None, text_pair_col: str | None = None, group_col: str | None = None) -> dict:
    """Audit the labels of `train`; write `out` (TSV) and its HTML page; return the summary (with the paths)."""
    if folds < 2:
        raise UserError(f"--folds: must be at least 2, got {folds}")
    try:
        import cleanlab  # noqa: F401
    except ImportError:
        raise UserError("audit: the cleanlab package is not installed; pip install 'bertclf[audit]'") from None
    text_col, label_col = text_col or "text", label_col or "label"
    out_path = Path(out).expanduser()
    if out_path.suffix.lower() == ".html":
        raise UserError(f"--out {out}: give the TSV file (the HTML page is written beside it)")
    html_path = html_path_for(out_path)
    check_writable(out_path)  # now, not after minutes of cross-validation
    if (multi_label or label_names) and model != "baseline":
        raise UserError(f"--model {model}: a --multi-label or --label-names audit has the baseline out-of-fold model "
                        f"only; leave --model out")
    if (text_pair_col or group_col) and (multi_label or model != "baseline"):
        raise UserError(f"{'--text-pair-col' if text_pair_col else '--group-col'}: audited with the baseline "
                        f"(TF-IDF + LR) single-label model only for now; drop --multi-label / --model")
    if label_names and not multi_label:
        raise UserError("--label-names: an audit reads label ids through it with --multi-label only; add "
                        "--multi-label, or give the labels by name")
    if model != "baseline":
        from bertclf.models.resolve import resolve

        resolve(model, log=log)  # a missing or broken folder: one line now, not after reading the data
    t0 = time.time()
    ds = D.read_labelled(train, text_col, label_col, encoding=encoding, columns=columns,
                         allow_empty_label=multi_label, pair_col=text_pair_col, group_col=group_col)
    if ds.dropped_empty:
        log(f"{ds.source}: {ds.dropped_empty} row(s) with an empty text dropped; auditing {len(ds)} rows")
    rows, lines = data_rows(train, text_col, ds, encoding=encoding, columns=columns, pair_col=text_pair_col)
    if multi_label:
        from bertclf.audit.multilabel import audit_multilabel

        audit = audit_multilabel(ds, rows, folds, seed, log, label_col, label_sep, label_names)
    else:
        audit = audit_dataset(ds, rows, folds, seed, log, model)
    audit.lines = lines
    info = {"train": str(train), "out": str(out_path), "html": str(html_path), "text_col": text_col,
            "label_col": label_col, "columns": columns, "folds": folds, "seed": seed,
            "text_pair_col": text_pair_col, "group_col": group_col,
            "multi_label": multi_label, "label_sep": label_sep if multi_label else None,
            "model": "tfidf-char-1-4gram + one-vs-rest logistic-regression" if multi_label else
            "tfidf-char-1-4gram + logistic-regression" if model == "baseline" else
            f"{model}, fine-tuned per fold (bertclf train defaults)",
            "dropped_empty": ds.dropped_empty, "seconds": round(time.time() - t0, 1)}
    write_tsv(out_path, audit)
    write_html(html_path, audit, info)
    return {**info, **audit.summary()}
