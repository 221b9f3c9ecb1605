"""The n-gram partner: `bertclf baseline`'s model (TF-IDF character 1-4-grams + logistic regression; multi-label:
one-vs-rest) fitted on a run's training rows and blended with the fine-tuned encoder.

Why: on a few thousand short texts the two err on different rows. Measured on 4,000 NSMC reviews: encoder 0.8235,
n-grams 0.8090, their probabilities averaged 0.8415; on hate speech and KOTE the average is level with the encoder,
so the weight is chosen on the validation rows and the partner may be dropped (`choose_weight`, `judge`).

The blend: p = w * p_encoder + (1 - w) * p_ngram (per class; multi-label per label), handed on as logits in the
task's link space (single-label: log p, divided by the blend's temperature when calibrated; multi-label: logit p),
so task.probs, eval, predict and serve use it unchanged (bertclf/inference/classifier.py).

Saved in the model directory with no pickle, nothing that runs code on load: ngram.json (the vectorizer's
parameters, its vocabulary in column order, the classes or kept labels, the arrays file's SHA-256) and
ngram.safetensors (idf, coefficients, intercepts, multi-label priors). Loading rebuilds a TfidfVectorizer with
that vocabulary and idf (the same transform as the fitted one) and computes the probabilities with numpy.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

from bertclf.errors import UserError
from bertclf.io.files import atomic_file, sha256_file

JSON_FILE, ARRAYS_FILE = "ngram.json", "ngram.safetensors"
FORMAT = "bertclf-ngram/1"
GRID = np.round(np.linspace(0.0, 1.0, 21), 2)  # candidate weights on the encoder
EPS = 1e-12  # probabilities are clipped to [EPS, 1 - EPS] before a log
# The weight the rule starts from: the encoder's side. Held out, the partner scored below the encoder on every task
# measured (0.5-3.9 pt), and at 0.5 a validation split that overrated it (bias: 315 rows) cost 1.5 pt held out;
# 0.7 kept every task within 0.3 pt of its better side (benchmarks/quality/blend_rules.py, RESULTS.md "Datasets").
PRIOR_WEIGHT = 0.7
RULE = ("weight on the encoder: of 0, 0.05, ..., 1, the one nearest {prior} whose validation log-loss is within one "
        "standard error (of the per-row differences) of the lowest; --ngram auto keeps the partner when that weight "
        "is below 1 and the blend's validation {metric} is not below the encoder's")
DTYPES = {"float32": np.float32, "float64": np.float64}


class NgramPartner:
    """texts -> probabilities (n, n_labels) of a fitted TF-IDF + logistic-regression model, computed with numpy.

    Single-label: `classes` are the label ids the model saw (a label no training row has gets 0); one coefficient
    row means binary (sigmoid), several mean multinomial (softmax). Multi-label: per label in `keep` a sigmoid,
    the others (always on or always off in training) their training prior."""

    def __init__(self, vectorizer, coef, intercept, n_labels: int, multi_label: bool, classes=None, keep=None,
                 prior=None):
        self.vectorizer, self.n_labels, self.multi_label = vectorizer, int(n_labels), bool(multi_label)
        # stored as float32 (half the size; probabilities move < 1e-6), computed in float64 as scikit-learn does
        self.coef = np.asarray(coef, dtype=np.float32)
        self._coef64 = self.coef.astype(np.float64)
        self.intercept = np.asarray(intercept, dtype=np.float64)
        self.classes = None if classes is None else np.asarray(classes, dtype=np.int64)
        self.keep = None if keep is None else np.asarray(keep, dtype=bool)
        self.prior = None if prior is None else np.asarray(prior, dtype=np.float64)

    @property
    def n_features(self) -> int:
        return int(self.coef.shape[1])

    def nbytes(self) -> int:
        return self.coef.nbytes + self.n_features * 40  # coefficients, idf and the vocabulary's text (estimate)

    def probs(self, texts) -> np.ndarray:
        from scipy.special import expit, softmax

        texts = [t if isinstance(t, str) else str(t) for t in texts]
        z = np.asarray(self.vectorizer.transform(texts) @ self._coef64.T) + self.intercept
        if self.multi_label:
            p = np.tile(self.prior, (len(texts), 1))
            p[:, self.keep] = expit(z)
            return p
        seen = softmax(z, axis=1) if z.shape[1] > 1 else np.column_stack([1 - expit(z[:, 0]), expit(z[:, 0])])
        p = np.zeros((len(texts), self.n_labels))
        p[:, self.classes] = seen
        return p

    def save(self, folder) -> None:
        """ngram.safetensors, then ngram.json (which names the arrays file's SHA-256), each written atomically."""
        from safetensors.numpy import save

        folder = Path(folder)
        arrays = {"idf": np.ascontiguousarray(self.vectorizer.idf_), "coef": np.ascontiguousarray(self.coef),
                  "intercept": self.intercept}
        if self.multi_label:
            arrays["prior"] = self.prior
        with atomic_file(folder / ARRAYS_FILE, "wb") as f:
            f.write(save(arrays, metadata={"format": FORMAT}))
        meta = {"format": FORMAT, "kind": "multi_label" if self.multi_label else "single_label",
                "n_labels": self.n_labels, "arrays": ARRAYS_FILE, "arrays_sha256": sha256_file(folder / ARRAYS_FILE),
                "vectorizer": vectorizer_params(self.vectorizer),
                "vocabulary": [str(t) for t in self.vectorizer.get_feature_names_out()]}
        if self.multi_label:
            meta["keep"] = self.keep.tolist()
        else:
            meta["classes"] = self.classes.tolist()
        with atomic_file(folder / JSON_FILE, "w", encoding="utf-8") as f:
            json.dump(meta, f, ensure_ascii=False)

    @classmethod
    def load(cls, folder) -> "NgramPartner":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
        from sklearn.feature_extraction.text import TfidfVectorizer

        folder = Path(folder)
        where = folder / JSON_FILE

        def damaged(why: str) -> UserError:
            return UserError(f"{where}: {why}; the model directory is damaged: train it again, or load the encoder "
                             f"alone (Classifier.load(DIR, ngram=False))")
        try:
            meta = json.loads(where.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise damaged(f"unreadable ({type(e).__name__})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise damaged(f"not an n-gram partner of format {FORMAT}")
        arrays_path = folder / meta.get("arrays", ARRAYS_FILE)
        if not arrays_path.is_file() or sha256_file(arrays_path) != meta.get("arrays_sha256"):
            raise damaged(f"{arrays_path.name} is missing or is not the file this one was written with")
        try:
            arrays = load_file(arrays_path)
            params = dict(meta["vectorizer"])
            params["dtype"] = DTYPES[params["dtype"]]
            params["ngram_range"] = tuple(params["ngram_range"])
            vec = TfidfVectorizer(**params, vocabulary=meta["vocabulary"])
            vec.idf_ = arrays["idf"]  # also builds vocabulary_ from the list: the fitted column order
            multi = meta["kind"] == "multi_label"
            partner = cls(vec, arrays["coef"], arrays["intercept"], meta["n_labels"], multi,
                          classes=None if multi else meta["classes"], keep=meta["keep"] if multi else None,
                          prior=arrays["prior"] if multi else None)
        except (KeyError, TypeError, ValueError, SafetensorError) as e:
            raise damaged(f"inconsistent ({type(e).__name__}: {e})") from None
        if partner.coef.shape[1] != len(meta["vocabulary"]):
            raise damaged("coefficients and vocabulary differ in size")
        return partner


def vectorizer_params(vec) -> dict:
    """The vectorizer's constructor parameters as JSON: a callable (code) cannot be saved safely, so it is refused."""
    params = {k: v for k, v in vec.get_params().items() if k != "vocabulary"}
    params["dtype"] = np.dtype(params["dtype"]).name
    params["ngram_range"] = list(params["ngram_range"])
    code = [k for k, v in params.items() if callable(v)]
    if code:
        raise ValueError(f"the vectorizer's {', '.join(code)} is code, which ngram.json cannot hold")
    return params


# The partner is fitted on at most this many training rows (bertclf/train/finish.py: a seeded random sample
# beyond). Measured with char 1-4 gram TF-IDF on joined NSMC review pairs (/usr/bin/time peak, 2 cores): 50k rows
# 0.53 GB and 23 s, 200k rows 1.33 GB and 94 s: ~6.6 KB and ~0.5 ms per row, so 3M rows would need ~20 GB. 150k
# keeps every corpus up to NSMC's size as it was, and the partner matters most where the encoder has few rows.
FIT_ROWS = 150_000
FIT_WHY = "its TF-IDF fit takes ~6.6 KB per row; beyond 150k rows it would outgrow the encoder's training"


def fit(texts, y: np.ndarray, n_labels: int, multi_label: bool, seed: int = 42) -> NgramPartner:
    """`bertclf baseline`'s model (bertclf/models/baseline.py: tfidf_lr, fit_multilabel_model) fitted on texts / y (label
    ids, or multi-hot rows). scikit-learn's ValueError (one class, an empty vocabulary) passes up."""
    from bertclf.models import baseline

    texts = list(texts)
    if multi_label:
        vec, clf, keep, prior = baseline.fit_multilabel_model(texts, np.asarray(y), seed)
        coef = np.vstack([e.coef_ for e in clf.estimators_])
        intercept = np.concatenate([e.intercept_ for e in clf.estimators_])
        return NgramPartner(vec, coef, intercept, n_labels, True, keep=keep, prior=prior)
    model = baseline.tfidf_lr(len(set(np.asarray(y).tolist())), seed)
    model.fit(texts, y)
    lr = model[-1]
    return NgramPartner(model[0], lr.coef_, lr.intercept_, n_labels, False, classes=lr.classes_)


def find(folder) -> bool:
    return (Path(folder) / JSON_FILE).is_file()


def remove(folder) -> None:
    """Drop a partner's files (an earlier run's, in a folder trained again without one)."""
    for name in (JSON_FILE, ARRAYS_FILE):
        (Path(folder) / name).unlink(missing_ok=True)


def load_for(folder, card: dict, required: bool = True) -> NgramPartner | None:
    """The partner the model card says was kept, or None. required=False: a directory without its files (an ONNX
    export, which holds the encoder alone) gives None instead of an error."""
    if not ((card or {}).get("ngram") or {}).get("kept"):
        return None
    if not find(folder):
        if not required:
            return None
        raise UserError(f"{Path(folder) / JSON_FILE}: missing, but bertclf.json says the model has an n-gram "
                        f"partner; copy the whole model directory, or load the encoder alone "
                        f"(Classifier.load(DIR, ngram=False))")
    return NgramPartner.load(folder)


# --- the blend ------------------------------------------------------------------------------------------------


def link(probs: np.ndarray, multi_label: bool) -> np.ndarray:
    """Probabilities as logits the task turns back into them: log p (softmax(log p) = p when rows sum to 1),
    multi-label logit p (sigmoid(logit p) = p)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p)) if multi_label else np.log(p)


def blend_probs(p_encoder: np.ndarray, p_ngram: np.ndarray, weight: float) -> np.ndarray:
    return weight * np.asarray(p_encoder, dtype=np.float64) + (1 - weight) * np.asarray(p_ngram, dtype=np.float64)


def blended_logits(task, encoder_logits: np.ndarray, ngram_probs: np.ndarray, weight: float,
                   temperature: float | None = None) -> np.ndarray:
    """The blend as logits of `task`'s link (single-label: log p / temperature)."""
    z = link(blend_probs(task.probs(np.asarray(encoder_logits, dtype=np.float64)), ngram_probs, weight),
             task.kind == "multi_label")
    return (z / temperature if temperature else z).astype(np.float32)


def row_losses(y: np.ndarray, probs: np.ndarray, multi_label: bool) -> np.ndarray:
    """Each row's log-loss: -log p(true class); multi-label the mean binary cross-entropy over the labels."""
    p = np.clip(probs, EPS, 1 - EPS)
    if multi_label:
        return -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(1)
    return -np.log(p[np.arange(len(y)), np.asarray(y)])


def choose_weight(y: np.ndarray, p_encoder: np.ndarray, p_ngram: np.ndarray, multi_label: bool,
                  grid: np.ndarray = GRID, prior: float = PRIOR_WEIGHT) -> dict:
    """The weight on the encoder: of `grid`, the one nearest `prior` whose mean validation log-loss is within one
    standard error of the lowest (the standard error of the per-row loss differences to the lowest's, paired on
    the same rows). The lowest-loss weight itself overfits a few hundred rows; the prior is what held-out rows
    favoured with no look at this task's, and the rule leaves it only as far as the rows show a difference."""
    y = np.asarray(y)
    losses = np.stack([row_losses(y, blend_probs(p_encoder, p_ngram, w), multi_label) for w in grid])
    mean = losses.mean(1)
    best = int(np.argmin(mean))
    n = losses.shape[1]
    se = (losses - losses[best]).std(1, ddof=1) / np.sqrt(n) if n > 1 else np.full(len(grid), np.inf)
    within = np.flatnonzero(mean - mean[best] <= se)
    i = min(within, key=lambda j: (abs(grid[j] - prior), abs(grid[j] - grid[best])))
    return {"weight": float(grid[i]), "lowest_loss_weight": float(grid[best]), "standard_error": float(se[i]),
            "log_loss": {"chosen": float(mean[i]), "lowest": float(mean[best]),
                         "encoder": float(mean[np.argmax(grid)]), "ngram": float(mean[np.argmin(grid)])}}


def judge(task, y: np.ndarray, encoder_logits: np.ndarray, ngram_probs: np.ndarray, mode: str,
          prior: float = PRIOR_WEIGHT) -> tuple[bool, dict, np.ndarray, dict]:
    """Choose the weight on the validation rows and score encoder, n-gram and blend there with the task's metric
    (multi-label: each with thresholds tuned on these rows, as the encoder's are). mode "on" keeps the partner,
    "auto" keeps it when the weight is below 1 and the blend's score is not below the encoder's.
    (kept, the record for bertclf.json, the blend's validation logits, the blend's validation report). Leaves
    task.thresholds (multi-label) at the kept model's: the blend's, or the encoder's."""
    multi = task.kind == "multi_label"
    choice = choose_weight(y, task.probs(np.asarray(encoder_logits, dtype=np.float64)), ngram_probs, multi,
                           prior=prior)
    blend = blended_logits(task, encoder_logits, ngram_probs, choice["weight"])
    scores, reports, thresholds = {}, {}, {}
    for name, z in (("encoder", encoder_logits), ("ngram", link(ngram_probs, multi)), ("blend", blend)):
        reports[name] = task.validation_report(y, z)  # multi-label: tunes task.thresholds on these rows
        scores[name] = task.score(reports[name])
        if multi:
            thresholds[name] = task.thresholds.copy()
    kept = mode == "on" or (choice["weight"] < 1 and scores["blend"] >= scores["encoder"])
    if multi:
        task.thresholds = thresholds["blend" if kept else "encoder"]
    record = {"mode": mode, "kept": bool(kept), "weight": choice["weight"], "metric": task.metric,
              "valid": scores, "rows": int(len(y)), "rule": RULE.format(metric=task.metric, prior=prior),
              "lowest_loss_weight": choice["lowest_loss_weight"], "standard_error": choice["standard_error"],
              "valid_log_loss": choice["log_loss"], "files": [JSON_FILE, ARRAYS_FILE] if kept else []}
    if multi:  # each side alone is scored at its own thresholds (eval's components; the encoder alone)
        record["thresholds"] = {name: dict(zip(task.labels.names, map(float, thresholds[name])))
                                for name in ("encoder", "ngram")}
    return kept, record, blend, reports["blend"]


def component_task(task, name: str, record: dict | None):
    """`task` for one side of the blend alone: multi-label with that side's own validation thresholds."""
    th = ((record or {}).get("thresholds") or {}).get(name)
    if task.kind != "multi_label" or not th:
        return task
    alone = copy.copy(task)
    alone.thresholds = np.array([th.get(n, 0.5) for n in task.labels.names], dtype=np.float32)
    return alone


def describe(record: dict) -> str:
    """The one line training prints."""
    v = record["valid"]
    return (f"n-gram partner: weight {record['weight']:.2f} on the encoder; validation {record['metric']} encoder "
            f"{v['encoder']:.4f}, n-gram {v['ngram']:.4f}, blend {v['blend']:.4f} "
            f"({'kept' if record['kept'] else 'not kept'})")
