"""Temperature scaling: what `bertclf train` does when it finishes, measured on a model, and how many validation
rows a temperature needs.

    python -m benchmarks.quality.calibration fit runs/nsmc-cpu-uncalibrated [--out /tmp/calibrated]
    python -m benchmarks.quality.calibration rows [--repeats 300] [--seed 0]

fit: from a model directory trained without calibration (or before it existed): rebuild its validation and test rows
from bertclf.json, fit the temperature on the validation logits (bertclf/train/calibration.py), and print validation
NLL and ECE and test accuracy and ECE before and after, with the CPU. `--out DIR2` also writes the calibrated copy
(T folded into the classifier, as `bertclf train` saves it).

It also prints what bounds temperature scaling on this model: the temperature a fit on the TEST rows would pick
(the best any T can do), a bootstrap interval of the validation fit, isotonic regression fitted on the same validation rows (a monotone step map that no
weights can hold, for comparison), and the test reliability table (confidence vs accuracy per bin).

rows: the simulation behind bertclf/train/calibration.py's MIN_ROWS. A binary model whose logits are `true T`
times too large (T 1: calibrated; 1.4: over-confident, as the `make nsmc` model's 1.41; 0.7: under-confident).
For each number of validation rows, fit T on that many rows drawn from the model (fit_temperature, the function
training uses) and score it on 50,000 fresh rows: how often the fitted T leaves the test NLL worse than no
scaling, and the mean change of test NLL (positive: better). Seconds on any CPU.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from scipy.special import softmax

from benchmarks.common import machine, run
from bertclf.data import dataset as D
from bertclf.data.metrics import expected_calibration_error
from bertclf.inference.classifier import Classifier
from bertclf.report.numbers import reliability
from bertclf.train.calibration import MIN_ROWS, fit_temperature, fold_temperature, nll, uncalibrated_probs
from bertclf.train.config import config_from_dict


def bounds(z_valid, y_valid, z_test, y_test) -> dict:
    """What limits a temperature here: the test-optimal T, isotonic on validation, the test reliability bins."""
    from sklearn.isotonic import IsotonicRegression

    ece = expected_calibration_error
    t_test = fit_temperature(z_test, y_test)
    rng = np.random.default_rng(0)  # how noisy the validation fit is: T refitted on 200 bootstrap resamples
    boot = [fit_temperature(z_valid[i], y_valid[i]) for i in rng.integers(0, len(y_valid), (200, len(y_valid)))]
    out = {"valid_temperature_bootstrap_90pct": [float(np.percentile(boot, 5)), float(np.percentile(boot, 95))],
           "test_optimal_temperature": t_test, "test_ece_at_test_optimal_t": ece(y_test, softmax(z_test / t_test, 1))}
    if z_valid.shape[1] == 2:  # isotonic on p(class 1): binary only
        iso = IsotonicRegression(out_of_bounds="clip").fit(softmax(z_valid, 1)[:, 1], y_valid)
        q = iso.predict(softmax(z_test, 1)[:, 1])
        out["test_ece_isotonic_on_validation"] = ece(y_test, np.c_[1 - q, q])
    r = reliability(y_test, softmax(z_test, 1), n_bins=20)  # the report's bins, 0.05 wide
    out["test_reliability"] = [
        {"confidence": f"{lo:.2f}-{hi:.2f}", "rows": n, "mean_confidence": round(c, 3), "accuracy": round(a, 3)}
        for lo, hi, n, c, a in zip(r["edges"][:-1], r["edges"][1:], r["count"], r["confidence"], r["accuracy"]) if n]
    return out


def fit(a) -> None:
    """The temperature fitted on a raw model's validation rows, and what it does to its test rows."""
    clf = Classifier.load(a.model_dir, precision=a.precision)
    if (clf.card.get("calibration") or {}).get("temperature"):
        raise SystemExit(f"{a.model_dir} is calibrated already (bertclf.json 'calibration'); give a raw model")
    _, valid, test = D.load_training_data(config_from_dict(clf.card["args"]), log=lambda s: None)
    assert valid.sha256 == clf.card["data"]["valid"]["sha256"] and len(valid) == clf.card["data"]["valid"]["rows"]
    y_valid, y_test = clf.task.encode(valid.labels, "valid"), clf.task.encode(test.labels, "test")
    z_valid, z_test = clf.logits(valid.texts, a.batch_size), clf.logits(test.texts, a.batch_size)
    t = fit_temperature(z_valid, y_valid)
    ece = expected_calibration_error
    res = {"model": a.model_dir, "cpu": machine(), "precision": clf.precision, "temperature": t,
           "valid_rows": len(valid), "test_rows": len(test),
           "valid_nll": [nll(z_valid, y_valid), nll(z_valid, y_valid, t)],
           "valid_ece": [ece(y_valid, softmax(z_valid, 1)), ece(y_valid, softmax(z_valid / t, 1))],
           "test_accuracy": [float((z_test.argmax(1) == y_test).mean()), float(((z_test / t).argmax(1) == y_test).mean())],
           "test_nll": [nll(z_test, y_test), nll(z_test, y_test, t)],
           "test_ece": [ece(y_test, softmax(z_test, 1)), ece(y_test, softmax(z_test / t, 1))]}
    res |= bounds(z_valid, y_valid, z_test, y_test)
    if a.out:  # the folded model, scored again: the saved model's own probabilities
        shutil.copytree(a.model_dir, a.out, dirs_exist_ok=False)
        model = clf.model.float()
        fold_temperature(model, t)
        model.save_pretrained(a.out, safe_serialization=True)
        card = json.loads((Path(a.out) / "bertclf.json").read_text())
        card["calibration"] = {"method": "temperature", "temperature": t, "fitted_on": "validation",
                               "rows": len(valid), "by": "benchmarks/quality/calibration.py"}
        (Path(a.out) / "bertclf.json").write_text(json.dumps(card, indent=2, ensure_ascii=False))
        npz = Path(a.out) / "eval_predictions.npz"
        if npz.is_file():  # the saved probabilities become the calibrated model's, as `bertclf train` saves them
            with np.load(npz, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
            for k in ("valid_probs", "test_probs"):
                if k in arrays:  # softmax(log p / T) = softmax(logits / T)
                    arrays[k] = uncalibrated_probs(arrays[k], 1.0 / t).astype(np.float32)
            np.savez(npz, **arrays)
        folded = Classifier.load(a.out, precision=a.precision).predict_proba(test.texts, a.batch_size)
        res["folded_model_test_ece"] = ece(y_test, folded)
        res["folded_model_test_accuracy"] = float((folded.argmax(1) == y_test).mean())
    print(json.dumps(res, indent=2))


def draw(rng, n: int, true_t: float) -> tuple[np.ndarray, np.ndarray]:
    """n rows of logits `true_t` times too large, and labels drawn from the calibrated probabilities."""
    z = rng.normal(0, 2.2, (n, 1))  # margins of a ~85%-accurate model
    logits = np.hstack([-z, z])
    y = (rng.random(n) < softmax(logits, axis=1)[:, 1]).astype(int)
    return logits * true_t, y


def rows(a) -> None:
    """The MIN_ROWS simulation (see the module docstring)."""
    rng = np.random.default_rng(a.seed)
    print(f"MIN_ROWS = {MIN_ROWS}; {a.repeats} fits per cell, each scored on 50,000 fresh rows\n")
    print("| true T | validation rows | fitted T, 5-95% | test NLL worse than no scaling | mean test NLL gain |")
    print("|---|---|---|---|---|")
    for true_t in (1.0, 1.4, 0.7):
        test_logits, test_y = draw(rng, 50_000, true_t)
        base = nll(test_logits, test_y)
        for n in (20, 50, 100, 200, 900):
            fits = [fit_temperature(*draw(rng, n, true_t)) for _ in range(a.repeats)]
            gains = np.array([base - nll(test_logits, test_y, t) for t in fits])
            lo, hi = np.percentile(fits, [5, 95])
            print(f"| {true_t} | {n} | {lo:.2f}-{hi:.2f} | {np.mean(gains < -1e-12):.0%} | {gains.mean():+.4f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit a temperature on a raw model; before and after")
    f.add_argument("model_dir")
    f.add_argument("--precision", default="auto")
    f.add_argument("--batch-size", type=int, default=64)
    f.add_argument("--out", help="write the calibrated model here")
    r = sub.add_parser("rows", help="how many validation rows a temperature needs (simulation)")
    r.add_argument("--repeats", type=int, default=300)
    r.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    fit(a) if a.command == "fit" else rows(a)


if __name__ == "__main__":
    run(main)
