"""Label audit on NSMC: does `bertclf audit` find flipped labels, and what does it say about NSMC itself?

    python -m benchmarks.quality.audit_nsmc [--data-dir DIR] [--work DIR] [--seeds 0 1 2]
                                            [--model baseline|NAME|DIR] [--skip-full] [--write-results]

1. Planted noise: 4,000 training reviews drawn at random (seeded), the labels of 5% of them (200) flipped;
   the audit (5-fold TF-IDF + LR out-of-fold probabilities, cleanlab) ranks its suspects; precision of the
   top k, k = 200 = the number flipped (fewer flagged rows than k count as misses), once per seed.
2. All of NSMC train (150k reviews, star-rating labels): `bertclf audit` as a user runs it, through the CLI;
   the estimated noise rate, the suspected rows per class, and the 20 most suspect rows.
3. What part 1's precision can reach: the same samples and flips ranked by out-of-fold probabilities from
   TF-IDF + LR fitted on 120k reviews per fold (all of NSMC train, 5 folds; a far stronger out-of-fold model
   than 3,200 reviews train), and the share of part 1's top k that is a planted flip or a row the all-of-NSMC
   audit suspects (NSMC's own noise, which the planted-flip precision counts as a miss).

Prints a Markdown section; --write-results puts it into benchmarks/RESULTS.md between the audit markers.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, RESULTS, machine, nsmc_file, run
from bertclf.audit.label_issues import audit_dataset
from bertclf.data import dataset as D

BEGIN, END = "<!-- audit_nsmc: begin -->", "<!-- audit_nsmc: end -->"


def planted_sample(train: D.Dataset, seed: int, n: int = 4000, share: float = 0.05):
    """(rows of train drawn, positions in the sample whose label is flipped, the sample's labels after flipping)."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(train), size=n, replace=False)
    labels = [train.labels[i] for i in pick]
    flipped = set(rng.choice(n, size=int(n * share), replace=False).tolist())
    names = sorted(set(labels))
    for i in flipped:
        labels[i] = names[1 - names.index(labels[i])]
    return pick, flipped, labels


def planted_noise(train: D.Dataset, seed: int, n: int = 4000, share: float = 0.05, model: str = "baseline") -> dict:
    pick, flipped, labels = planted_sample(train, seed, n, share)
    ds = D.Dataset([train.texts[i] for i in pick], labels, source=f"NSMC train sample (seed {seed})")
    t0 = time.time()
    audit = audit_dataset(ds, np.arange(n), folds=5, seed=seed, model=model, log=print)
    k = len(flipped)
    top = audit.ranked[:k].tolist()
    by_score = np.argsort(audit.scores, kind="stable")[:k].tolist()
    return {"seed": seed, "model": model, "k": k, "flagged": int(len(audit.ranked)),
            "oof_accuracy": float((audit.probs.argmax(1) == audit.labels).mean()), "precision_at_k": len(set(top) & flipped) / k,
            "precision_at_k_by_score": len(set(by_score) & flipped) / k,
            "recall_flagged": len(set(audit.ranked.tolist()) & flipped) / k,
            "noise_rate": audit.noise_rate, "seconds": time.time() - t0, "top": top}


def ceiling(train: D.Dataset, planted: list[dict], seed: int = 42) -> dict:
    """Part 3: rank each seed's sample by out-of-fold probabilities of all of NSMC train (TF-IDF + LR, 5 folds of
    120k reviews, the original labels); and how much of part 1's top k is a flip or a row that audit suspects."""
    from bertclf.audit.label_issues import find_issues, out_of_fold_probs

    names = sorted(set(train.labels))
    y = np.array([names.index(label) for label in train.labels])
    t0 = time.time()
    probs = out_of_fold_probs(train.texts, y, len(names), 5, seed)
    suspects = set(find_issues(y, probs)[1].tolist())
    per_seed = []
    for r in planted:
        pick, flipped, labels = planted_sample(train, r["seed"])
        given = np.array([names.index(label) for label in labels])
        order = np.argsort(probs[pick, given], kind="stable")[: r["k"]]
        explained = [i for i in r["top"] if i in flipped or pick[i] in suspects]
        per_seed.append({"seed": r["seed"], "k": r["k"], "precision_at_k_full_oof": len(set(order.tolist()) & flipped) / r["k"],
                         "natural_suspects_in_sample": sum(int(p) in suspects for p in pick),
                         "top_k_flip_or_suspect": len(explained) / r["k"]})
    return {"oof_accuracy": float((probs.argmax(1) == y).mean()), "suspects": len(suspects), "fit_rows": len(y) * 4 // 5,
            "seconds": time.time() - t0, "per_seed": per_seed}


def full_audit(path: Path, work: Path) -> tuple[dict, list[dict], float, str]:
    out = work / "nsmc_audit.tsv"
    cmd = [sys.executable, "-m", "bertclf", "audit", "--train", str(path), "--text-col", "document",
           "--label-col", "label", "--out", str(out)]
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=True)
    seconds = time.time() - t0
    with open(out, encoding="utf-8", newline="") as f:
        top = [r for _, r in zip(range(20), csv.DictReader(f, delimiter="\t"))]
    html = (work / "nsmc_audit.html").read_text(encoding="utf-8")
    data = json.loads(html.split('id="report-data">', 1)[1].split("</script>", 1)[0])
    return data["summary"], top, seconds, res.stdout


def cell(text: str, width: int = 90) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def markdown(planted: list[dict], full: tuple | None, reach: dict | None = None) -> str:
    """The RESULTS.md section; full: full_audit's result, reach: ceiling's; None when skipped."""
    p = [r["precision_at_k"] for r in planted]
    lines = [BEGIN, f"## Label audit: [`python -m benchmarks.quality.audit_nsmc`](quality/audit_nsmc.py) (2-core CPU, "
             f"{time.strftime('%Y-%m-%d')})", "",
             "`bertclf audit`: 5-fold out-of-fold probabilities from the TF-IDF + logistic regression baseline, then "
             "cleanlab's `find_label_issues` (confident learning), ranked by self-confidence.", "",
             f"**Planted noise**: 4,000 random NSMC training reviews, 5% of the labels flipped (k = {planted[0]['k']}); "
             f"precision of the top k: **{min(p):.3f}–{max(p):.3f}** (mean {np.mean(p):.3f}, seeds "
             f"{', '.join(str(r['seed']) for r in planted)}; target ≥ 0.6).", "",
             "| seed | flagged | precision@k | precision@k, all rows by score | flipped rows flagged | "
             "estimated noise | seconds |", "|---|---|---|---|---|---|---|"]
    for r in planted:
        lines.append(f"| {r['seed']} | {r['flagged']} | {r['precision_at_k']:.3f} | {r['precision_at_k_by_score']:.3f} "
                     f"| {r['recall_flagged']:.3f} | {r['noise_rate']:.3f} | {r['seconds']:.0f} |")
    if min(p) < 0.6:
        lines += ["", "**Below the 0.6 target.** cleanlab estimates ~16% noise in a sample with 5% planted: a TF-IDF "
                  "model fitted on 3,200 reviews errs often, its confident errors (and NSMC's own star-rating noise) "
                  "take top ranks beside the flips. `--model NAME` fine-tunes a transformer per fold instead; on NSMC it did "
                  "not rank the flips higher (the section after this one). The last part below shows the target is "
                  "above what any detector of wrong labels scores on this benchmark."]
    if full is None:
        lines += ["", "**All of NSMC train**: not measured in this run (`--skip-full`); `python -m "
                  "benchmarks.quality.audit_nsmc --write-results` measures it (5 TF-IDF + LR fits on 120k reviews: ~10 CPU-minutes)."]
    else:
        lines += full_markdown(*full)
    if reach is not None:
        lines += reach_markdown(reach)
    load = os.getloadavg()[0]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines += ["", f"Python {platform.python_version()}, {machine()}, one run, {when}, "
              f"load average {load:.1f} at the end (the seconds move with the load; the precisions do not).", END]
    return "\n".join(lines) + "\n"


def full_markdown(summary: dict, top: list[dict], seconds: float, printed: str) -> list[str]:
    lines = ["", f"**All of NSMC train** ({summary['rows']:,} reviews; `bertclf audit --train ratings_train.txt "
             f"--text-col document --label-col label --out audit.tsv`, {seconds / 60:.1f} min wall): out-of-fold "
             f"accuracy {summary['oof_accuracy']:.4f}; cleanlab flags **{summary['suspected']:,}** rows "
             f"({summary['suspected_share']:.1%}); **estimated noise rate {summary['noise_rate']:.1%}**.", "",
             "```", printed.strip(), "```", "",
             "The 20 most suspect rows (labels: 0 negative, 1 positive; score: out-of-fold probability of the "
             "given label):", "", "| row | text | given | suggested | score |", "|---|---|---|---|---|"]
    for r in top:
        lines.append(f"| {r['row']} | {cell(r['text'])} | {r['given_label']} | {r['suggested_label']} | "
                     f"{float(r['score']):.4f} |")
    return lines


def reach_markdown(reach: dict) -> list[str]:
    rows = reach["per_seed"]
    best = max(r["precision_at_k_full_oof"] for r in rows)
    natural, k = float(np.mean([r["natural_suspects_in_sample"] for r in rows])), rows[0]["k"]
    lines = ["", f"**What the planted-flip precision can reach.** The same samples and flips, ranked instead by "
             f"out-of-fold probabilities from TF-IDF + LR fitted on all of NSMC train (5 folds of 120k reviews, "
             f"out-of-fold accuracy {reach['oof_accuracy']:.4f}, {reach['seconds'] / 60:.1f} min; the original labels, "
             f"so the flips are unseen): precision of the top k **{min(r['precision_at_k_full_oof'] for r in rows):.3f}"
             f"–{best:.3f}**, {'below' if best < 0.6 else 'at or above'} 0.6 with an out-of-fold model fed "
             f"{reach['fit_rows'] / 3200:.0f} times the 3,200 reviews a fold of the sample has. Each sample holds "
             f"~{natural:.0f} rows the all-of-NSMC audit suspects beside the {k} flips; a detector that finds wrong "
             f"labels cannot tell the planted from NSMC's own, and one that found exactly the wrong labels would "
             f"score about {k}/{k + natural:.0f} = {k / (k + natural):.2f}.", "",
             "| seed | precision@k, all-of-NSMC out-of-fold model | sample rows the all-of-NSMC audit suspects | "
             "top k of part 1 that is a flip or such a row |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['precision_at_k_full_oof']:.3f} | {r['natural_suspects_in_sample']} | "
                     f"{r['top_k_flip_or_suspect']:.3f} |")
    return lines


def write_results(section: str) -> None:
    path = RESULTS
    text = path.read_text(encoding="utf-8")
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", help="folder with ratings_train.txt (default: the usual NSMC lookup)")
    ap.add_argument("--work", help="where the full audit's TSV/HTML go (default: a temporary folder)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--skip-full", action="store_true", help="only the planted-noise part (parts 2 and 3 need all "
                    "of NSMC train)")
    ap.add_argument("--model", default="baseline", help="the out-of-fold model of the planted-noise part "
                    "(bertclf audit --model): baseline, or e.g. me5-small (5 fine-tunes per seed)")
    ap.add_argument("--write-results", action="store_true", help="update benchmarks/RESULTS.md")
    ap.add_argument("--planted-from", metavar="LOG", help="take part 1 from the JSON lines an earlier run printed")
    a = ap.parse_args()
    path = nsmc_file("train", a.data_dir)
    train = D.read_labelled(path, D.NSMC_TEXT_COL, D.NSMC_LABEL_COL)
    planted = []
    if a.planted_from:
        lines = Path(a.planted_from).read_text(encoding="utf-8").splitlines()
        planted = [json.loads(x) for x in lines if x.startswith('{"seed"')]
    for seed in [] if a.planted_from else a.seeds:
        planted.append(planted_noise(train, seed, model=a.model))
        print(json.dumps(planted[-1]), flush=True)
    full = reach = None
    if not a.skip_full:
        full = full_audit(path, Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="audit_nsmc.")))
        reach = ceiling(train, planted)
        print(json.dumps(reach), flush=True)
    section = markdown(planted, full, reach)
    print(section)
    if a.write_results:
        write_results(section)


if __name__ == "__main__":
    run(main)
