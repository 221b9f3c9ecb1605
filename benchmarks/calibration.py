"""Temperature scaling on a trained model (issue 17 item 2): what `bertclf train` does when it finishes, measured.

From a model directory trained without calibration (or before it existed): rebuild its validation and test rows
from bertclf.json, fit the temperature on the validation logits (bertclf/calibration.py), and print validation
NLL and ECE and test accuracy and ECE before and after, with the CPU. `--out DIR2` also writes the calibrated copy
(T folded into the classifier, as `bertclf train` saves it).

    python benchmarks/calibration.py runs/nsmc-cpu-uncalibrated [--out /tmp/calibrated]
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from scipy.special import softmax

from bertclf import data as D
from bertclf.calibration import fit_temperature, fold_temperature, nll, uncalibrated_probs
from bertclf.config import config_from_dict
from bertclf.cpu import describe
from bertclf.metrics import expected_calibration_error
from bertclf.predict import Classifier


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
