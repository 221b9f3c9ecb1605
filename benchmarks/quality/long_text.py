"""Long documents: truncate vs head-tail vs window accuracy of a trained model on documents built from NSMC test
reviews.

Each document joins `--per-doc` (21) reviews drawn without replacement (seeded) and is labelled by the majority of
their labels, so its label depends on every part of it, not only the start. The documents are written as a TSV
(text, label) that `bertclf eval DIR --test FILE --long-text window` reads too.

    python -m benchmarks.quality.long_text runs/nsmc-cpu --docs 300 --out /tmp/long.tsv
"""
from __future__ import annotations

import argparse
import csv
import time

import numpy as np

from benchmarks.common import machine, nsmc, run
from bertclf.data.long_text import encode_long
from bertclf.inference.classifier import Classifier


def build_documents(data_dir: str | None, n_docs: int, per_doc: int, seed: int) -> tuple[list[str], list[str]]:
    ds = nsmc("test", data_dir)
    order = np.random.default_rng(seed).permutation(len(ds))[:n_docs * per_doc].reshape(n_docs, per_doc)
    texts = [" ".join(ds.texts[i] for i in rows) for rows in order]
    positive = np.array([lab == "positive" for lab in ds.labels])
    labels = [str(int(positive[rows].mean() > 0.5)) for rows in order]  # NSMC's raw 0/1; odd per_doc: no tie
    return texts, labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("--data-dir", help="NSMC folder (default: ../shared/data/nsmc)")
    p.add_argument("--docs", type=int, default=300)
    p.add_argument("--per-doc", type=int, default=21)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default="auto")
    p.add_argument("--out", default="/tmp/nsmc-long.tsv", help="where to write the documents (TSV)")
    a = p.parse_args()
    texts, labels = build_documents(a.data_dir, a.docs, a.per_doc, a.seed)
    with open(a.out, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["text", "label"])
        w.writerows(zip(texts, labels))
    y = np.array([int(x) for x in labels])  # 1: positive
    print(f"{len(texts)} documents of {a.per_doc} NSMC test reviews ({np.mean([len(t) for t in texts]):.0f} "
          f"characters on average, {y.mean():.1%} positive) written to {a.out}")
    print(f"model {a.model_dir}; CPU: {machine()}")
    print("| --long-text | accuracy | rows longer than max-length | model inputs | seconds |")
    print("| --- | --- | --- | --- | --- |")
    for mode in ("truncate", "head-tail", "window"):
        clf = Classifier.load(a.model_dir, precision=a.precision, long_text=mode)
        n_inputs = len(encode_long(clf.tokenizer, texts, clf.max_length, mode, clf.stride).ids)
        t0 = time.perf_counter()
        logits, cut = clf.logits_and_cut(texts, a.batch_size)
        seconds = time.perf_counter() - t0
        truth = clf.task.encode(labels, a.out)  # "0"/"1" -> the model's label ids (NSMC's raw values)
        acc = float((logits.argmax(1) == truth).mean())
        mode_text = f"{mode} (stride {clf.stride})" if mode == "window" else mode
        print(f"| {mode_text} | {acc:.4f} | {cut} of {len(texts)} | {n_inputs} | {seconds:.1f} |")
    print(f"(max-length {clf.max_length}; the machine's other work disturbs the seconds)")


if __name__ == "__main__":
    run(main)
