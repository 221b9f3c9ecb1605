"""Temperature scaling on a trained model (issue 17 item 2): what `bertclf train` does when it finishes, measured.

From a model directory trained without calibration (or before it existed): rebuild its validation and test rows
from bertclf.json, fit the temperature on the validation logits (bertclf/train/calibration.py), and print validation
NLL and ECE and test accuracy and ECE before and after, with the CPU. `--out DIR2` also writes the calibrated copy
(T folded into the classifier, as `bertclf train` saves it).

It also prints what bounds temperature scaling on this model: the temperature a fit on the TEST rows would pick
(the best any T can do), a bootstrap interval of the validation fit, isotonic regression fitted on the same validation rows (a monotone step map that no
weights can hold, for comparison), and the test reliability table (confidence vs accuracy per bin).

    python benchmarks/calibration.py runs/nsmc-cpu-uncalibrated [--out /tmp/calibrated]
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from scipy.special import softmax

from bertclf.data import dataset as D
from bertclf.train.calibration import fit_temperature, fold_temperature, nll, uncalibrated_probs
from bertclf.train.config import config_from_dict
from bertclf.cpu import describe
from bertclf.data.metrics import expected_calibration_error
from bertclf.inference.classifier import Classifier
from bertclf.report.numbers import reliability


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("--precision", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", help="write the calibrated model here")
    a = p.parse_args()
    clf = Classifier.load(a.model_dir, precision=a.precision)
    if (clf.card.get("calibration") or {}).get("temperature"):
        raise SystemExit(f"{a.model_dir} is calibrated already (bertclf.json 'calibration'); give a raw model")
    _, valid, test = D.load_training_data(config_from_dict(clf.card["args"]), log=lambda s: None)
    assert valid.sha256 == clf.card["data"]["valid"]["sha256"] and len(valid) == clf.card["data"]["valid"]["rows"]
    y_valid, y_test = clf.task.encode(valid.labels, "valid"), clf.task.encode(test.labels, "test")
    z_valid, z_test = clf.logits(valid.texts, a.batch_size), clf.logits(test.texts, a.batch_size)
    t = fit_temperature(z_valid, y_valid)
    ece = expected_calibration_error
    res = {"model": a.model_dir, "cpu": describe(), "precision": clf.precision, "temperature": t,
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
                               "rows": len(valid), "by": "benchmarks/calibration.py"}
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


if __name__ == "__main__":
    main()
