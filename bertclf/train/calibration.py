"""Temperature scaling (Guo et al., 2017): one number T > 0, fitted after training on the validation rows' logits
by minimising their negative log-likelihood, so that softmax(logits / T) says how often the model is right.

T is folded into the classification head (with an n-gram partner it is not: see `calibrate`): the last Linear
layer's weight and bias are divided by T, so the saved model's logits ARE logits / T. Every consumer
(transformers.pipeline, bertclf predict / serve / eval, the ONNX export) then returns calibrated probabilities with
no code of its own; argmax is unchanged (T > 0 scales every logit of a row alike). The raw logits come back as
logits * T (T is in bertclf.json under "calibration").

Single-label (softmax) only: a multi-label model's sigmoid scores are compared with thresholds tuned on the same
validation rows, which already place its decisions; a temperature would move them.
"""
from __future__ import annotations

import numpy as np

from bertclf.data.metrics import expected_calibration_error

LOG_T_BOUNDS = (-4.0, 4.0)  # T in [0.018, 55]: beyond, a fit is noise (e.g. every validation row right)
# Fewer validation rows than this and the fitted T is noise: simulated, 50 rows made the test NLL worse on average
# however the model was miscalibrated, 100 rows improved it (benchmarks/quality/calibration.py rows).
MIN_ROWS = 100


def row_nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Each row's negative log-likelihood of its true class under softmax(logits / temperature)."""
    from scipy.special import log_softmax

    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return -logp[np.arange(len(y)), np.asarray(y)]


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes under softmax(logits / temperature)."""
    return float(row_nll(logits, y, temperature).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T minimising the validation NLL (scipy's bounded Brent search over log T: one variable, no gradient
    needed, and the bounds keep T finite and > 0)."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda log_t: nll(logits, y, float(np.exp(log_t))), bounds=LOG_T_BOUNDS,
                          method="bounded", options={"xatol": 1e-6})
    t = float(np.exp(res.x))
    return t if nll(logits, y, t) <= nll(logits, y, 1.0) else 1.0  # never worse than no scaling


def kept_temperature(logits: np.ndarray, y: np.ndarray) -> dict:
    """The fitted T, kept only where it lowers the validation NLL by more than one standard error of the per-row
    NLL differences (paired on the same rows); else T = 1. On a few hundred rows a blend that is nearly calibrated
    gets a T that is noise: NSMC 4k's blend fitted T 1.13 on 200 rows (gain 0.0026, SE 0.0047) and its held-out
    ECE rose from 0.039 to 0.049, while each encoder alone fitted T 1.18-1.52 above one SE and fell 0.017-0.033
    (benchmarks/quality/blend_rules.py calibration). Returns {"temperature", "fitted", "kept", "nll_gain", "se"}."""
    fitted = fit_temperature(logits, y)
    gain = row_nll(logits, y) - row_nll(logits, y, fitted)
    se = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else float("inf")
    kept = bool(fitted != 1.0 and gain.mean() > se)
    return {"temperature": fitted if kept else 1.0, "fitted": fitted, "kept": kept, "nll_gain": float(gain.mean()),
            "se": se}


def output_layer(model):
    """The Linear layer that produces the logits: the last torch Linear with num_labels outputs (BERT's
    `classifier`, RoBERTa's `classifier.out_proj`, ...)."""
    import torch

    n = model.config.num_labels
    found = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == n]
    if not found:
        raise ValueError(f"no Linear layer with {n} outputs in {type(model).__name__}")
    return found[-1]


def fold_temperature(model, temperature: float) -> None:
    """Divide the output layer's weight and bias by T in place: the model's logits become logits / T."""
    import torch

    layer = output_layer(model)
    with torch.no_grad():
        layer.weight.div_(temperature)
        if layer.bias is not None:
            layer.bias.div_(temperature)


def calibrate(model, valid_logits: np.ndarray, y_valid: np.ndarray) -> dict:
    """Fit T on the validation rows (kept where it beats T = 1 beyond noise: kept_temperature), fold it into
    `model`, and return the record for bertclf.json.

    model None: nothing is folded. A model with an n-gram partner (bertclf/models/ngram.py) is calibrated after the blend:
    `valid_logits` are the blend's log-probabilities, and T divides them at inference (bertclf/inference/classifier.py), so the
    encoder's head stays raw (transformers.pipeline and the ONNX export give the encoder alone, uncalibrated)."""
    from scipy.special import softmax

    choice = kept_temperature(valid_logits, y_valid)
    t = choice["temperature"]
    if model is not None:
        fold_temperature(model, t)
    where = ({"folded_into": "classifier weights (logits = raw logits / temperature)"} if model is not None else
             {"folded_into": None, "applied_to": "blend",
              "note": "the encoder + n-gram blend: logits = log(blended probabilities) / temperature"})
    return {"method": "temperature", "temperature": t, "fitted_on": "validation", "rows": int(len(y_valid)),
            **where, "fit": {k: choice[k] for k in ("fitted", "kept", "nll_gain", "se")},
            "valid": {"nll_before": nll(valid_logits, y_valid), "nll_after": nll(valid_logits, y_valid, t),
                      "ece_before": expected_calibration_error(y_valid, softmax(valid_logits, axis=1)),
                      "ece_after": expected_calibration_error(y_valid, softmax(valid_logits / t, axis=1))}}


def uncalibrated_probs(probs: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities before calibration, from the calibrated ones: softmax(T * log p) = softmax(raw logits)."""
    from scipy.special import softmax

    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-300, None))
    return softmax(temperature * logp, axis=1)


def test_calibration(y: np.ndarray, calibrated_probs: np.ndarray, temperature: float) -> dict:
    """Test ECE before and after, from the calibrated model's test probabilities."""
    return {"ece_before": expected_calibration_error(y, uncalibrated_probs(calibrated_probs, temperature)),
            "ece_after": expected_calibration_error(y, calibrated_probs)}
