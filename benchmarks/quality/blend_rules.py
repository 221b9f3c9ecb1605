"""Which rule for the n-gram partner's weight generalises to held-out rows (issue 30 item 1): each candidate rule
chooses its weight (and whether to keep the partner) on a trained run's own validation rows; the table shows what
that choice scores on the task's held-out rows, beside the encoder and the partner alone.

    python -m benchmarks.quality.datasets --work /tmp/ds run nsmc hate bias kote    # the trained runs (long)
    python -m benchmarks.quality.blend_rules --work /tmp/ds collect nsmc hate bias kote  # score both sides once
    python -m benchmarks.quality.blend_rules --work /tmp/ds table                   # the rules, held out
    python -m benchmarks.quality.blend_rules --work /tmp/ds scan                    # held out at every weight
    python -m benchmarks.quality.blend_rules --work /tmp/ds calibration --weight 0.7  # can a temperature reach it?
    python -m benchmarks.quality.blend_rules --work /tmp/ds calibrators --weight 0.7  # can a richer shape?

collect rebuilds each run's validation split from its card (bertclf.data.dataset.load_training_data: the same seed,
the same rows), scores the validation and the held-out rows with the encoder and the partner separately
(Classifier.logits_and_cut's `parts`) and keeps the arrays in WORK/blend_NAME.npz; table needs no model.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.quality.datasets import TASKS, split_paths

PRIORS = (0.5, 0.6, 0.7, 0.8)  # candidate priors of bertclf.models.ngram.choose_weight (the rule: ngram.RULE)


def collect(work: Path, name: str) -> None:
    """Both sides' probabilities on the run's validation rows (rebuilt from its card) and the held-out rows."""
    from bertclf.data import dataset as D
    from bertclf.inference.classifier import Classifier
    from bertclf.train.config import config_from_dict

    run_dir = work / "runs" / name
    card = json.loads((run_dir / "bertclf.json").read_text(encoding="utf-8"))
    cfg = config_from_dict(card["args"])
    _, valid_ds, _ = D.load_training_data(cfg, log=lambda s: None)
    test_ds = D.read_labelled(split_paths(work, name)[1], cfg.text_col, cfg.label_col, allow_empty_label=bool(cfg.multi_label))
    clf = Classifier.load(str(run_dir))
    if clf.partner is None:
        raise SystemExit(f"{run_dir}: no n-gram partner saved (not kept); rerun it with --ngram on")
    out = {}
    for split, ds in (("valid", valid_ds), ("test", test_ds)):
        parts: dict = {}
        clf.logits_and_cut(list(ds.texts), parts=parts)
        out[f"{split}_y"] = clf.task.encode(ds.labels, ds.source)
        out[f"{split}_encoder"] = clf.task.probs(np.asarray(parts["encoder"], dtype=np.float64))
        out[f"{split}_ngram"] = clf.task.probs(np.asarray(parts["ngram"], dtype=np.float64))
    np.savez(work / f"blend_{name}.npz", **out)
    print(f"{name}: {len(out['valid_y'])} validation rows, {len(out['test_y'])} held-out rows -> blend_{name}.npz")


def task_of(work: Path, name: str):
    """The run's task as training built it (metric, kind, labels), from its card."""
    from bertclf.data.task import task_from_card

    card = json.loads((work / "runs" / name / "bertclf.json").read_text(encoding="utf-8"))
    return task_from_card(card, card["labels"])


def held_out(name: str, task, y, logits) -> float:
    """The datasets table's metric on the held-out rows (multi-label at the task's current thresholds)."""
    return float(task.report(y, logits)[TASKS[name]["metric"]])


def judged(work: Path, name: str, d: dict, prior: float) -> dict:
    """bertclf.models.ngram.judge with `prior` on the validation rows (weight and keep, as training decides), then
    the held-out score of what it kept and the held-out ECE after a temperature fitted on the validation rows
    (single-label; training calibrates the kept model the same way)."""
    from bertclf.data.metrics import expected_calibration_error
    from bertclf.models import ngram as NG
    from bertclf.train.calibration import kept_temperature
    from scipy.special import softmax

    task = task_of(work, name)
    multi = task.kind == "multi_label"
    kept, record, _, _ = NG.judge(task, d["valid_y"], NG.link(d["valid_encoder"], multi), d["valid_ngram"], "auto",
                                  prior=prior)
    w = record["weight"] if kept else 1.0
    valid_z = NG.blended_logits(task, NG.link(d["valid_encoder"], multi), d["valid_ngram"], w).astype(np.float64)
    test_z = NG.blended_logits(task, NG.link(d["test_encoder"], multi), d["test_ngram"], w).astype(np.float64)
    out = {"weight": record["weight"], "kept": kept, "score": held_out(name, task, d["test_y"], test_z)}
    if not multi:
        t = kept_temperature(valid_z, d["valid_y"])["temperature"]
        out["ece"] = float(expected_calibration_error(d["test_y"], softmax(test_z / t, axis=1)))
    return out


def table(work: Path) -> str:
    from bertclf.models import ngram as NG

    names = [n for n in TASKS if (work / f"blend_{n}.npz").exists()]
    if not names:
        raise SystemExit(f"{work}: no blend_TASK.npz; run `collect` first")
    data = {n: dict(np.load(work / f"blend_{n}.npz")) for n in names}
    sides = {}
    for n, d in data.items():
        task = task_of(work, n)
        multi = task.kind == "multi_label"
        enc = held_out(n, task, d["test_y"], _valid_tuned(task, d, NG.link(d["valid_encoder"], multi),
                                                           NG.link(d["test_encoder"], multi)))
        gram = held_out(n, task, d["test_y"], _valid_tuned(task, d, NG.link(d["valid_ngram"], multi),
                                                            NG.link(d["test_ngram"], multi)))
        sides[n] = (enc, gram)
    lines = ["| rule (weight on the encoder chosen on validation) | "
             + " | ".join(f"{n}: weight (kept?), held-out {TASKS[n]['metric']}, vs better side"
                          + ("" if TASKS[n].get("multi_label") else ", ECE") for n in names)
             + " | worst vs better side |", "|---|" + "---|" * (len(names) + 1),
             "| encoder alone | " + " | ".join(f"1.00, {sides[n][0]:.4f}" for n in names) + " | |",
             "| partner alone | " + " | ".join(f"0.00, {sides[n][1]:.4f}" for n in names) + " | |"]
    for prior in PRIORS:
        cells, worst = [], np.inf
        for n, d in data.items():
            r = judged(work, n, d, prior)
            gap = r["score"] - max(sides[n])
            worst = min(worst, gap)
            ece = f", {r['ece']:.3f}" if "ece" in r else ""
            cells.append(f"{r['weight']:.2f} ({'kept' if r['kept'] else 'not kept'}), {r['score']:.4f}, "
                         f"{100 * gap:+.1f} pt{ece}")
        lines.append(f"| nearest {prior} within 1 SE of the lowest log-loss | " + " | ".join(cells)
                     + f" | {100 * worst:+.1f} pt |")
    return "\n".join(lines)


def _valid_tuned(task, d: dict, valid_z, test_z):
    """test_z, after tuning a multi-label task's thresholds on valid_z (what training does for each side)."""
    if task.kind == "multi_label":
        task.validation_report(d["valid_y"], valid_z)
    return test_z


def scan(work: Path) -> str:
    """Held-out score at every other weight of the grid: what no rule may look at, shown to judge the rules."""
    from bertclf.models import ngram as NG

    out = []
    for n in TASKS:
        if not (work / f"blend_{n}.npz").exists():
            continue
        d, task = dict(np.load(work / f"blend_{n}.npz")), task_of(work, n)
        multi = task.kind == "multi_label"
        row = []
        for w in NG.GRID[::2]:
            vz = NG.blended_logits(task, NG.link(d["valid_encoder"], multi), d["valid_ngram"], w)
            tz = NG.blended_logits(task, NG.link(d["test_encoder"], multi), d["test_ngram"], w)
            row.append(f"{w:.1f}:{held_out(n, task, d['test_y'], _valid_tuned(task, d, vz, tz)):.4f}")
        out.append(f"{n}: " + " ".join(row))
    return "\n".join(out)


def calibration(work: Path, weight: float) -> str:
    """Held-out ECE of the blend at `weight` (weight 1: the encoder alone; single-label tasks): uncalibrated, with
    the temperature fitted on the validation rows, with that temperature kept only beyond one standard error
    (bertclf.train.calibration.kept_temperature: what training does), with the temperature fitted on the held-out
    rows themselves (the best any temperature can do), and the ECE that a perfectly calibrated model with these
    probabilities would show on this many rows (labels drawn from its own probabilities, 20 draws): the
    measurement's noise floor."""
    from bertclf.data.metrics import expected_calibration_error as ece
    from bertclf.models import ngram as NG
    from bertclf.train.calibration import fit_temperature, kept_temperature
    from scipy.special import softmax

    lines = ["| task | held-out rows | ECE at T = 1 | T fitted on validation: T, ECE | the 1-SE rule: NLL gain / SE, "
             "T, ECE | T fitted on the held-out rows: T, ECE | a perfectly calibrated model's ECE on as many rows |",
             "|---|---|---|---|---|---|---|"]
    rng = np.random.default_rng(0)
    for n in TASKS:
        if TASKS[n].get("multi_label") or not (work / f"blend_{n}.npz").exists():
            continue
        d, task = dict(np.load(work / f"blend_{n}.npz")), task_of(work, n)
        zv = NG.blended_logits(task, np.log(d["valid_encoder"]), d["valid_ngram"], weight).astype(np.float64)
        zt = NG.blended_logits(task, np.log(d["test_encoder"]), d["test_ngram"], weight).astype(np.float64)
        tv, tt = fit_temperature(zv, d["valid_y"]), fit_temperature(zt, d["test_y"])
        rule = kept_temperature(zv, d["valid_y"])
        p = softmax(zt, axis=1)
        floor = np.mean([ece((rng.random((len(p), 1)) > p.cumsum(1)).sum(1).clip(max=p.shape[1] - 1), p)
                         for _ in range(20)])
        lines.append(f"| {n} | {len(zt):,} | {ece(d['test_y'], p):.3f} | {tv:.3f}, "
                     f"{ece(d['test_y'], softmax(zt / tv, axis=1)):.3f} | {rule['nll_gain'] / rule['se']:.2f}, "
                     f"{rule['temperature']:.3f}, {ece(d['test_y'], softmax(zt / rule['temperature'], axis=1)):.3f} | "
                     f"{tt:.3f}, {ece(d['test_y'], softmax(zt / tt, axis=1)):.3f} | {floor:.3f} |")
    return "\n".join(lines)


def calibrators(work: Path, weight: float) -> str:
    """Held-out ECE (and accuracy) of richer calibrators than one temperature, each fitted on the validation rows
    (and, for the best any can do, on the held-out rows themselves): matrix scaling (multinomial logistic regression
    on the blend's log-probabilities), a stacker (the same on both sides' log-probabilities: it re-weighs them too)
    and isotonic regression of the top-label confidence (the other classes share the rest in proportion). The
    question: can any shape fitted on a few hundred validation rows reach ECE <= 0.03 held out?"""
    from bertclf.data.metrics import expected_calibration_error as ece
    from bertclf.models import ngram as NG
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    def isotonic(fit_p, fit_y, p):
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1)
        iso.fit(fit_p.max(1), (fit_p.argmax(1) == fit_y).astype(float))
        top, conf = p.argmax(1), iso.predict(p.max(1))
        rest = p.copy()
        rest[np.arange(len(p)), top] = 0
        rest *= ((1 - conf) / np.maximum(rest.sum(1), 1e-12))[:, None]
        rest[np.arange(len(p)), top] = conf
        return rest

    def logistic(fit_x, fit_y, x):
        return LogisticRegression(C=1e4, max_iter=5000).fit(fit_x, fit_y).predict_proba(x)

    lines = ["| task | validation rows | calibrator | fitted on validation: held-out ECE, accuracy | fitted on the held-out "
             "rows: ECE |", "|---|---|---|---|---|"]
    for n in TASKS:
        if TASKS[n].get("multi_label") or not (work / f"blend_{n}.npz").exists():
            continue
        d = dict(np.load(work / f"blend_{n}.npz"))
        yv, yt = d["valid_y"], d["test_y"]
        blend = {s: NG.blend_probs(d[f"{s}_encoder"], d[f"{s}_ngram"], weight) for s in ("valid", "test")}
        log = {s: np.log(np.clip(blend[s], 1e-12, 1)) for s in blend}
        both = {s: np.log(np.clip(np.hstack([d[f"{s}_encoder"], d[f"{s}_ngram"]]), 1e-12, 1)) for s in blend}
        for name, make in (("matrix scaling", lambda s, y: logistic(log[s], y, log["test"])),
                           ("stacker of both sides", lambda s, y: logistic(both[s], y, both["test"])),
                           ("isotonic, top label", lambda s, y: isotonic(blend[s], y, blend["test"]))):
            p, oracle = make("valid", yv), make("test", yt)
            lines.append(f"| {n} | {len(yv)} | {name} | {ece(yt, p):.3f}, {np.mean(p.argmax(1) == yt):.4f} | "
                         f"{ece(yt, oracle):.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("tasks", nargs="+", choices=[n for n in TASKS if not TASKS[n].get("pair")])
    sub.add_parser("table")
    sub.add_parser("scan")
    cal = sub.add_parser("calibration")
    cal.add_argument("--weight", type=float, default=0.7)
    richer = sub.add_parser("calibrators")
    richer.add_argument("--weight", type=float, default=0.7)
    args = ap.parse_args()
    if args.cmd == "collect":
        for name in args.tasks:
            collect(args.work, name)
    elif args.cmd == "table":
        print(table(args.work))
    elif args.cmd == "calibration":
        print(calibration(args.work, args.weight))
    elif args.cmd == "calibrators":
        print(calibrators(args.work, args.weight))
    else:
        print(scan(args.work))


if __name__ == "__main__":
    main()
