"""TF-IDF + LR vs `bertclf train` with its defaults, on five real Korean tasks (NLI: sentence pairs): one table for
RESULTS.md, the lead as the training rows grow, and a linear probe of the frozen builtin model.

    python -m benchmarks.quality.datasets --work /tmp/ds baselines                   # TF-IDF + LR alone
    python -m benchmarks.quality.datasets --work /tmp/ds run hate bias kote nsmc     # long: real fine-tunes
    python -m benchmarks.quality.datasets --work /tmp/dt --nsmc-texts 12000 run nsmc  # NSMC 4k + train --texts
    python -m benchmarks.quality.datasets --work /tmp/ds table [--write]             # the table (into RESULTS.md)
    python -m benchmarks.quality.datasets --work /tmp/curve curve nsmc --rows 2000 4000 8000 16000
    python -m benchmarks.quality.datasets --work /tmp/ds probe nsmc [--prefix "query: "]

Tasks (held-out splits are seeded and made here from the shared files, written under --work, never into the repo):
  nsmc  4,000 reviews sampled from ratings_train.txt (stratified, seed 42), scored on a seeded stratified
        --nsmc-test-frac share of ratings_test.txt; metric accuracy
  hate  korean-hate-speech/train.tsv split 80/20 (stratified on `hate`, seed 42), label `hate`; weighted F1
  bias  the same split, label `bias`; weighted F1
  kote  kote/val.tsv split 80/20 (seed 42), multi-label over labels.txt; macro F1
  nli   kornli/xnli.test.ko.tsv (sentence pairs: premise sentence1, hypothesis sentence2, gold_label) split by
        premise, 80/20 of the 1,670 premises (StratifiedGroupKFold, seed 42: no premise on both sides); both sides
        read pairs (--text-pair-col), bertclf groups its validation split by premise too (--group-col); accuracy

Each side trains on exactly the same rows (bertclf carves its own 5% validation split out of them; the baseline
tunes nothing for single-label and its multi-label thresholds on a 20% split of the same training rows).
bertclf's defaults include the n-gram partner (`--ngram auto`, bertclf/models/ngram.py): the table shows its model (the
blend when kept) beside each side alone: the encoder and the partner (the baseline's model fitted on bertclf's
training split, i.e. without the validation rows), from `eval --json`'s components, or refitted here when the
partner was not kept.
Training time is the whole `bertclf train` process (tokenizer, model load, training, validation, saving).
Each finished task leaves WORK/NAME.json, so a long run can be done one task at a time.

curve (nsmc, hate): both sides trained on N rows for each --rows N, scored on the same held-out rows. NSMC: a
stratified seeded sample of N reviews of ratings_train.txt (N = 4,000 is `run`'s own sample); hate: a stratified
seeded sample of N of the 6,317 training comments (all of them at N = 6,317). Defaults only; one Markdown row per
point as it finishes, the table at the end; WORK/curve_TASK_N.json keeps each point.

probe (nsmc, hate, bias): how much pooling and e5's "query: " prefix matter before fine-tuning. Logistic
regression (scikit-learn, C by 5-fold CV) on the frozen builtin model's [CLS] state, tanh([CLS]) (what the pooler
feeds the head at the start) and the mean of the token states (what e5 was trained with), fitted on the task's
training split and scored on its held-out rows.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, RESULTS, SHARED, machine, nsmc, run

# targets: issue 30 (defaults only, held-out rows, against TF-IDF + LR on the same rows); NLI: issue 31
TASKS = {
    "nsmc": {"metric": "accuracy", "text": "document", "label": "label", "target": 0.025},
    "hate": {"metric": "weighted_f1", "text": "comments", "label": "hate", "target": 0.03},
    "bias": {"metric": "weighted_f1", "text": "comments", "label": "bias", "target": 0.03},
    "kote": {"metric": "macro_f1", "text": "text", "label": "labels", "target": 0.04, "multi_label": True},
    "nli": {"metric": "accuracy", "text": "sentence1", "pair": "sentence2", "label": "gold_label", "target": 0.10,
            "group": "sentence1"},
}
MARK_BEGIN, MARK_END = "<!-- datasets.py table begin -->", "<!-- datasets.py table end -->"
CURVE_HEAD = ["| task | metric | training rows | held-out rows | TF-IDF + LR | n-gram partner alone | encoder alone | "
              "bertclf defaults | gain | vs the better component | bertclf train (whole process) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]


def write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    from bertclf.io.files import atomic_file

    with atomic_file(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def split_paths(work: Path, task: str) -> tuple[Path, Path]:
    """The task's training and held-out files under `work` (make_splits writes them; bias shares hate's split)."""
    stem = "hate" if task == "bias" else task
    return work / f"{stem}_train.tsv", work / f"{stem}_test.tsv"


def make_splits(work: Path, nsmc_test_frac: float, seed: int = 42, nsmc_texts: int = 0) -> dict[str, tuple]:
    """Seeded held-out splits of the shared files, as TSV files with a header, under `work`. nsmc_texts: also
    WORK/nsmc_texts.tsv, that many other ratings_train.txt reviews, labels dropped (splits["nsmc_texts"])."""
    from bertclf.data import dataset as D

    work.mkdir(parents=True, exist_ok=True)
    out = {}
    # hate speech: one split for both the `hate` and the `bias` task
    from bertclf.io.rows import iter_rows

    rows = [r for _, r in iter_rows(SHARED / "korean-hate-speech" / "train.tsv", ["comments", "bias", "hate"])]
    test_idx, train_idx = D.stratified_indices([r["hate"] for r in rows], 0.2, seed)
    header = ["comments", "bias", "hate"]
    for name, idx in (("hate_train", train_idx), ("hate_test", test_idx)):
        write_tsv(work / f"{name}.tsv", header, [[rows[i][c] for c in header] for i in idx])
    out["hate"] = out["bias"] = split_paths(work, "hate")
    # KOTE: header-less in the original; a header is added here (id, text, labels)
    text = (SHARED / "kote" / "val.tsv").read_text(encoding="utf-8")
    kote = [ln.split("\t") for ln in text.splitlines() if ln.strip()]
    test_idx, train_idx = D.stratified_indices([0] * len(kote), 0.2, seed)  # one stratum: a seeded random split
    for name, idx in (("kote_train", train_idx), ("kote_test", test_idx)):
        write_tsv(work / f"{name}.tsv", ["id", "text", "labels"], [kote[i] for i in idx])
    out["kote"] = split_paths(work, "kote")
    # NSMC: 4,000 training reviews, a share of the test file
    train = nsmc("train", SHARED / "nsmc")
    take, _ = D.stratified_indices(train.labels, 4000 / len(train), seed)
    test = D.sample(nsmc("test", SHARED / "nsmc"), nsmc_test_frac, seed)
    inv = {v: k for k, v in D.NSMC_LABELS.items()}
    write_tsv(work / "nsmc_train.tsv", ["document", "label"], [[train.texts[i], inv[train.labels[i]]] for i in take])
    write_tsv(work / "nsmc_test.tsv", ["document", "label"], [[t, inv[lab]] for t, lab in zip(test.texts, test.labels)])
    out["nsmc"] = split_paths(work, "nsmc")
    if nsmc_texts:  # unlabelled reviews for `train --texts`: never a training or test row
        rest = np.setdiff1d(np.arange(len(train)), take)
        more = np.random.default_rng(seed).choice(rest, min(nsmc_texts, len(rest)), replace=False)
        write_tsv(work / "nsmc_texts.tsv", ["document"], [[train.texts[i]] for i in sorted(more)])
        out["nsmc_texts"] = work / "nsmc_texts.tsv"
    # KorNLI: whole premises on each side (each premise has three hypotheses, one per label)
    nli = D.read_labelled(SHARED / "kornli" / "xnli.test.ko.tsv", "sentence1", "gold_label", pair_col="sentence2",
                          group_col="sentence1")
    test_idx, train_idx = D.grouped_indices(nli.groups, nli.labels, 0.2, seed)
    for name, idx in (("nli_train", train_idx), ("nli_test", test_idx)):
        write_tsv(work / f"{name}.tsv", ["sentence1", "sentence2", "gold_label"],
                  [[nli.texts[i], nli.pairs[i], nli.labels[i]] for i in idx])
    out["nli"] = split_paths(work, "nli")
    return out


def bertclf(*args: str, log: Path) -> tuple[str, float]:
    """Run `python -m bertclf ARGS` from this checkout; (stdout, seconds)."""
    env = os.environ | {"PYTHONPATH": str(REPO), "BERTCLF_NO_PROGRESS": "1"}
    t0 = time.time()
    with open(log, "a", encoding="utf-8") as err:
        err.write(f"\n$ bertclf {' '.join(args)}\n")
        err.flush()
        p = subprocess.run([sys.executable, "-m", "bertclf", *args], stdout=subprocess.PIPE, stderr=err, text=True,
                           env=env, cwd=REPO)
    if p.returncode:
        raise SystemExit(f"bertclf {args[0]} failed (exit {p.returncode}); see {log}")
    return p.stdout, time.time() - t0


def task_flags(name: str, train: bool = False) -> list[str]:
    """The task's column flags (train: also its --group-col, for the validation split)."""
    t = TASKS[name]
    flags = ["--text-col", t["text"], "--label-col", t["label"]]
    if t.get("pair"):
        flags += ["--text-pair-col", t["pair"]]
    if train and t.get("group"):
        flags += ["--group-col", t["group"]]
    if t.get("multi_label"):
        flags += ["--multi-label", "--label-names", str(SHARED / "kote" / "labels.txt")]
    return flags


def run_baseline(name: str, train: Path, test: Path, work: Path) -> dict:
    """TF-IDF + LR alone (seconds to minutes): WORK/NAME.baseline.json."""
    out, _ = bertclf("baseline", "--train", str(train), "--test", str(test), *task_flags(name), "--json",
                     log=work / f"{name}.log")
    base = json.loads(out)
    (work / f"{name}.baseline.json").write_text(json.dumps(base, indent=2, ensure_ascii=False))
    return base


def run_task(name: str, train: Path, test: Path, work: Path, extra: list[str], tag: str | None = None) -> dict:
    """Baseline and `bertclf train` with `extra` flags on the task's split: WORK/TAG.json (TAG: the task's name,
    or NAME.texts for a run with --texts, so both can sit in one table)."""
    tag = tag or name
    log = work / f"{tag}.log"
    base = run_baseline(name, train, test, work)
    run_dir = work / "runs" / tag
    train_out, train_s = bertclf("train", "--train", str(train), *task_flags(name, train=True), "--out", str(run_dir),
                                 "--overwrite", *extra, log=log)
    with open(log, "a", encoding="utf-8") as f:  # its lines (the n-gram partner's weight...) beside its stderr
        f.write(train_out)
    ev, sides, card = score_run(run_dir, test, log)
    ng = card.get("ngram") or {}
    keys = ("accuracy", "macro_f1", "weighted_f1", "micro_f1")
    res = {"task": name, "metric": TASKS[name]["metric"], "n_train": base["n_train"], "n_test": ev["n"],
           "baseline": {k: base["report"].get(k) for k in keys},
           "baseline_seconds": base["seconds"],
           "bertclf": {k: ev.get(k) for k in keys},
           "encoder": sides["encoder"], "ngram": sides["ngram"],
           "ngram_partner": ng and {k: ng.get(k) for k in ("kept", "weight", "valid", "lowest_loss_weight")},
           "bertclf_train_seconds": train_s, "extra_flags": extra, "args": card["args"],
           "texts": card.get("texts"),  # train --texts: both passes' scores, which was kept
           "valid": card["metrics"]["valid"] and {k: card["metrics"]["valid"].get(k) for k in keys},
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                    text=True).stdout.strip(),
           "date": time.strftime("%Y-%m-%d"), "device": card["training"]["device"]}
    (work / f"{tag}.json").write_text(json.dumps(res, indent=2, ensure_ascii=False))
    return res


def score_run(run_dir: Path, test: Path, log: Path) -> tuple[dict, dict, dict]:
    """(eval --json, each side alone: {"encoder": report, "ngram": report or None}, the card) of a trained run."""
    ev = json.loads(bertclf("eval", str(run_dir), "--test", str(test), "--json", log=log)[0])
    card = json.loads((run_dir / "bertclf.json").read_text(encoding="utf-8"))
    keys = ("accuracy", "macro_f1", "weighted_f1", "micro_f1")
    if "components" in ev:  # the partner was kept: each side alone, scored by the same eval
        return ev, {side: {k: rep.get(k) for k in keys} for side, rep in ev["components"].items()}, card
    # not kept (or --ngram off): the encoder is the model; the partner refitted as training fitted it
    pairs = card["data"].get("text_pair_col")  # no partner is fitted for pairs (bertclf/train/finish.py)
    partner = ngram_alone(card, test) if card.get("ngram") and not pairs else None
    return ev, {"encoder": {k: ev.get(k) for k in keys}, "ngram": partner}, card


def ngram_alone(card: dict, test: Path) -> dict:
    """The n-gram partner of a run whose partner was not kept (so not saved): fitted again as training fitted it
    (bertclf.models.ngram.fit on the run's training split, rebuilt from its card), scored on the test file."""
    from bertclf.data import dataset as D
    from bertclf.models import ngram
    from bertclf.train.config import config_from_dict
    from bertclf.data.metrics import classification_report, multilabel_report
    from bertclf.data.task import task_from_card

    cfg = config_from_dict(card["args"])
    train_ds, _, _ = D.load_training_data(cfg, log=lambda s: None)
    task = task_from_card(card, card["labels"])
    multi = task.kind == "multi_label"
    partner = ngram.fit(train_ds.texts, task.encode(train_ds.labels, train_ds.source), len(card["labels"]), multi,
                        cfg.seed)
    test_ds = D.read_labelled(test, cfg.text_col, cfg.label_col, allow_empty_label=multi)
    y, probs = task.encode(test_ds.labels, test_ds.source), partner.probs(test_ds.texts)
    if multi:
        task = ngram.component_task(task, "ngram", card["ngram"])
        rep = multilabel_report(y, task.decide(probs), task.labels.names, task.thresholds)
    else:
        rep = classification_report(y, probs.argmax(1), task.labels.names)
    return {k: rep.get(k) for k in ("accuracy", "macro_f1", "weighted_f1", "micro_f1")}


def _cell(side: dict | None, metric: str) -> str:
    return f"{side[metric]:.4f}" if side and side.get(metric) is not None else ""


def below_better(r: dict) -> str:
    """The model's score minus the better of its two components' (issue 30: never more than 0.3 pt below)."""
    sides = [r[s][r["metric"]] for s in ("encoder", "ngram") if r.get(s) and r[s].get(r["metric"]) is not None]
    if not sides:
        return ""
    d = (r["bertclf"][r["metric"]] - max(sides)) * 100
    return f"{d:+.1f} pt{' (more than 0.3 below)' if d < -0.3 else ''}"


def table_row(name: str, r: dict) -> str:
    t = TASKS[name]
    b, m = r["baseline"][r["metric"]], r["bertclf"][r["metric"]]
    ok = "met" if m - b >= t["target"] - 1e-9 else "short"
    flags = f" ({' '.join(_short_flags(r['extra_flags']))})" if r["extra_flags"] else ""
    ng = r.get("ngram_partner") or {}
    weight = (f"{ng['weight']:.2f} ({'kept' if ng['kept'] else 'not kept'})" if ng.get("weight") is not None
              else "(no partner)")
    tx = r.get("texts")
    if tx:
        weight += f"; --texts: {tx.get('kept')} kept"
    return (f"| {name} | {r['metric']} | {r['n_train']:,} | {r['n_test']:,} | {b:.4f} | "
            f"{_cell(r.get('ngram'), r['metric'])} | {_cell(r.get('encoder'), r['metric'])} | "
            f"{m:.4f}{flags} | {weight} | {(m - b) * 100:+.1f} pt | +{t['target'] * 100:g} pt ({ok}) | "
            f"{below_better(r)} | {r['bertclf_train_seconds'] / 60:.1f} min | {r['commit']} |")


def _short_flags(flags: list[str]) -> list[str]:
    """--texts PATH -> --texts (N rows): the path is a temporary file."""
    out = list(flags)
    if "--texts" in out:
        i = out.index("--texts")
        path = Path(out[i + 1])
        n = sum(1 for _ in open(path, encoding="utf-8")) - 1 if path.is_file() else None
        out[i + 1] = f"({n:,} unlabelled reviews)" if n is not None else "(unlabelled reviews)"
    return out


def table(work: Path) -> str:
    lines = ["| task | metric | train rows | test rows | TF-IDF + LR | n-gram partner alone | encoder alone | "
             "bertclf defaults (blend when kept) | weight on the encoder | gain | target | "
             "vs the better component | bertclf train time (whole process) | commit |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, t in TASKS.items():
        f, fb = work / f"{name}.json", work / f"{name}.baseline.json"
        if not f.is_file():
            b = json.loads(fb.read_text(encoding="utf-8")) if fb.is_file() else None
            lines.append(f"| {name} | {t['metric']} | {b['n_train']:,} | {b['n_test']:,} | {b['report'][t['metric']]:.4f} | "
                         if b else f"| {name} | {t['metric']} | | | not run | ")
            lines[-1] += f" | | not run | | | +{t['target'] * 100:g} pt | | | |"
        else:
            lines.append(table_row(name, json.loads(f.read_text(encoding="utf-8"))))
        ft = work / f"{name}.texts.json"
        if ft.is_file():
            lines.append(table_row(name, json.loads(ft.read_text(encoding="utf-8"))))
    return "\n".join(lines)


def training_rows(task: str, n: int, work: Path, train_split: Path, seed: int = 42) -> Path:
    """A TSV of n training rows for `task` (see the module docstring: curve)."""
    from bertclf.data import dataset as D

    out = work / f"curve_{task}_train_{n}.tsv"
    if task == "nsmc":
        train = nsmc("train", SHARED / "nsmc")
        take, _ = D.stratified_indices(train.labels, n / len(train), seed)
        inv = {v: k for k, v in D.NSMC_LABELS.items()}
        write_tsv(out, ["document", "label"], [[train.texts[i], inv[train.labels[i]]] for i in take])
        return out
    from bertclf.io.rows import iter_rows

    header = ["comments", "bias", "hate"]
    rows = [r for _, r in iter_rows(train_split, header)]
    take = range(len(rows)) if n >= len(rows) else D.stratified_indices([r["hate"] for r in rows], n / len(rows), seed)[0]
    write_tsv(out, header, [[rows[i][c] for c in header] for i in take])
    return out


def curve_point(task: str, n: int, work: Path, splits: dict) -> dict:
    """One point of the curve: baseline and defaults on n rows, scored on the held-out rows."""
    train_split, test = splits[task]
    train = training_rows(task, n, work, train_split)
    metric = TASKS[task]["metric"]
    log = work / f"curve_{task}_{n}.log"
    base = json.loads(bertclf("baseline", "--train", str(train), "--test", str(test), *task_flags(task),
                              "--json", log=log)[0])
    run_dir = work / "runs" / f"curve_{task}_{n}"
    _, seconds = bertclf("train", "--train", str(train), *task_flags(task), "--out", str(run_dir),
                         "--overwrite", log=log)
    ev, sides, _ = score_run(run_dir, test, log)
    res = {"task": task, "rows": base["n_train"], "test_rows": ev["n"], "metric": metric,
           "baseline": base["report"][metric], "bertclf": ev[metric], "train_seconds": seconds,
           "encoder": sides["encoder"] and sides["encoder"][metric], "ngram": sides["ngram"] and sides["ngram"][metric],
           "load_average": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (work / f"curve_{task}_{n}.json").write_text(json.dumps(res, indent=2))
    return res


def curve_row(r: dict) -> str:
    sides = {s: r.get(s) for s in ("ngram", "encoder")}  # absent in points measured before the partner existed
    vs = below_better({"metric": "m", "bertclf": {"m": r["bertclf"]},
                       **{s: {"m": v} for s, v in sides.items() if v is not None}})
    cells = " | ".join(f"{v:.4f}" if v is not None else "" for v in sides.values())
    return (f"| {r['task']} | {r['metric']} | {r['rows']:,} | {r['test_rows']:,} | {r['baseline']:.4f} | {cells} | "
            f"{r['bertclf']:.4f} | {(r['bertclf'] - r['baseline']) * 100:+.1f} pt | {vs} | "
            f"{r['train_seconds'] / 60:.1f} min |")


def curve(task: str, rows: list[int], work: Path, splits: dict) -> None:
    print(machine())
    done = []
    for n in rows:
        done.append(curve_point(task, n, work, splits))
        print(curve_row(done[-1]), flush=True)
    print("\n".join(CURVE_HEAD + [curve_row(r) for r in done]))


def features(texts: list[str], tok, model, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """([CLS] states, mean token states) of `texts`, bf16 autocast, max 128 tokens."""
    import torch

    cls, mean = [], []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for i in range(0, len(texts), batch):
            b = tok(texts[i:i + batch], padding=True, truncation=True, max_length=128, return_tensors="pt")
            h = model(**b).last_hidden_state.float()
            mask = b["attention_mask"].unsqueeze(-1).float()
            cls.append(h[:, 0].numpy())
            mean.append(((h * mask).sum(1) / mask.sum(1)).numpy())
    return np.concatenate(cls), np.concatenate(mean)


def probe(task: str, splits: dict, prefix: str) -> None:
    """The linear probe of the frozen builtin model (see the module docstring)."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import AutoModel, AutoTokenizer

    from bertclf.data import dataset as D
    from bertclf.models.resolve import resolve

    t = TASKS[task]
    train_file, test_file = splits[task]
    train = D.read_labelled(str(train_file), t["text"], t["label"])
    test = D.read_labelled(str(test_file), t["text"], t["label"])
    path = resolve("me5-small")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    t0 = time.time()
    tr = features([prefix + x for x in train.texts], tok, model)
    te = features([prefix + x for x in test.texts], tok, model)
    print(f"{machine()}; {task}: {len(train):,} training, {len(test):,} held-out rows; prefix {prefix!r}; "
          f"features in {time.time() - t0:.0f} s")
    for name, f_tr, f_te in (("cls", tr[0], te[0]), ("tanh-cls", np.tanh(tr[0]), np.tanh(te[0])),
                             ("mean", tr[1], te[1])):
        pred = LogisticRegressionCV(Cs=8, max_iter=3000).fit(f_tr, train.labels).predict(f_te)
        print(f"{name:9s} accuracy {accuracy_score(test.labels, pred):.4f}  "
              f"weighted F1 {f1_score(test.labels, pred, average='weighted'):.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="folder for the splits, runs and per-task results")
    ap.add_argument("--nsmc-test-frac", type=float, default=0.1, help="share of NSMC test to score on")
    ap.add_argument("--train-flags", default="", help="extra `bertclf train` flags (a recipe other than the defaults)")
    ap.add_argument("--nsmc-texts", type=int, default=0, metavar="N",
                    help="run nsmc: also train with --texts: N other reviews of ratings_train.txt, labels dropped")
    ap.add_argument("--write", action="store_true", help="table: also write it into benchmarks/RESULTS.md")
    ap.add_argument("--rows", type=int, nargs="+", help="curve: training rows of each point")
    ap.add_argument("--prefix", default="", help='probe: prepended to every text, e.g. "query: "')
    ap.add_argument("action", choices=["splits", "baselines", "run", "table", "curve", "probe"])
    ap.add_argument("tasks", nargs="*", default=list(TASKS))
    a = ap.parse_args()
    if a.action in ("curve", "probe"):
        allowed = ("nsmc", "hate") if a.action == "curve" else ("nsmc", "hate", "bias")
        if len(a.tasks) != 1 or a.tasks[0] not in allowed:
            ap.error(f"{a.action} takes one task of {', '.join(allowed)}")
        if a.action == "curve" and not a.rows:
            ap.error("curve needs --rows N [N ...]")
    splits = make_splits(a.work, a.nsmc_test_frac, nsmc_texts=a.nsmc_texts) if a.action != "table" else {}
    if a.action == "baselines":
        for name in a.tasks:
            print(name, json.dumps(run_baseline(name, *splits[name], a.work) | {"report": None}), flush=True)
    if a.action == "run":
        for name in a.tasks:
            texts = ["--texts", str(splits["nsmc_texts"])] if name == "nsmc" and a.nsmc_texts else []
            res = run_task(name, *splits[name], a.work, a.train_flags.split() + texts,
                           tag=f"{name}.texts" if texts else name)
            print(json.dumps(res | {"args": None}), flush=True)
    if a.action == "curve":
        curve(a.tasks[0], a.rows, a.work, splits)
    if a.action == "probe":
        probe(a.tasks[0], splits, a.prefix)
    if a.action == "table":
        tab = table(a.work)
        print(tab)
        if a.write:
            text = RESULTS.read_text(encoding="utf-8")
            start, end = text.index(MARK_BEGIN) + len(MARK_BEGIN), text.index(MARK_END)
            RESULTS.write_text(text[:start] + "\n" + tab + "\n" + text[end:], encoding="utf-8")


if __name__ == "__main__":
    run(main)
