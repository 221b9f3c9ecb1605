"""How many validation rows a temperature needs (bertclf/train/calibration.py MIN_ROWS), by simulation.

    python benchmarks/calibration_rows.py [--repeats 300] [--seed 0]

A binary model whose logits are `true T` times too large (T 1: calibrated; 1.4: over-confident, as the `make nsmc`
model's 1.41; 0.7: under-confident). For each number of validation rows, fit T on that many rows drawn from the
model (bertclf.train.calibration.fit_temperature, the function training uses) and score it on 50,000 fresh rows: how
often the fitted T leaves the test NLL worse than no scaling, and the mean change of test NLL (positive: better).
Seconds on any CPU.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.special import softmax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bertclf.train.calibration import MIN_ROWS, fit_temperature, nll  # noqa: E402


def draw(rng, n: int, true_t: float) -> tuple[np.ndarray, np.ndarray]:
    """n rows of logits `true_t` times too large, and labels drawn from the calibrated probabilities."""
    z = rng.normal(0, 2.2, (n, 1))  # margins of a ~85%-accurate model
    logits = np.hstack([-z, z])
    y = (rng.random(n) < softmax(logits, axis=1)[:, 1]).astype(int)
    return logits * true_t, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
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


if __name__ == "__main__":
    main()
