"""Faithfulness of word attributions: deleting the top-scored word of a review the model gets right lowers
p(label) more than deleting a random word. Shared by the tiny-model explain tests and the me5-small fine-tune's."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bertclf.inference.explain import explain

FAITHFUL_REVIEWS = 40  # reviews the model gets right; the tiny model passes with a wide margin at this size


def _reviews_it_gets_right(clf, nsmc_dir: Path, n: int) -> list[tuple[str, int]]:
    """(text, label index) of NSMC test reviews of 3+ words the model classifies correctly, from rows the test
    fixtures do not train or score on (row 1,000 on)."""
    lines = (nsmc_dir / "ratings_test.txt").read_text(encoding="utf-8").splitlines()[1 + 1000:1 + 1000 + 20 * n]
    rows = [(text, label) for _, text, label in (ln.split("\t") for ln in lines) if len(text.split()) >= 3]
    pred = clf.predict_proba([t for t, _ in rows]).argmax(1)
    right = [(t, int(p)) for (t, label), p in zip(rows, pred) if clf.labels[int(p)] == label]
    assert len(right) >= n, f"only {len(right)} reviews classified right"
    return right[:n]


def _without(text: str, start: int, end: int) -> str:
    return " ".join((text[:start] + " " + text[end:]).split())


def check_faithfulness(clf, nsmc_dir: Path, n: int) -> dict:
    """Per review, the drop in p(predicted label) when the top-scored word is deleted, against the expected drop
    when a word chosen uniformly at random is deleted (the mean over all its words: no sampling noise)."""
    top_drop, random_drop, top_lowered, random_lowered = [], [], [], []
    for text, k in _reviews_it_gets_right(clf, nsmc_dir, n):
        ex = explain(clf, text)
        words = ex["tokens"]
        p = clf.predict_proba([text] + [_without(text, w["start"], w["end"]) for w in words])[:, k]
        drops = p[0] - p[1:]
        top = int(np.argmax([w["score"] for w in words]))
        top_drop.append(drops[top])
        random_drop.append(drops.mean())
        top_lowered.append(drops[top] > 0)
        random_lowered.append((drops > 0).mean())
    return {"n": n, "top_drop": float(np.mean(top_drop)), "random_drop": float(np.mean(random_drop)),
            "top_lowered": float(np.mean(top_lowered)), "random_lowered": float(np.mean(random_lowered)),
            "top_beats_random": float(np.mean(np.array(top_drop) > np.array(random_drop)))}


def assert_faithful(res: dict):
    assert res["top_lowered"] > res["random_lowered"], res
    assert res["top_drop"] > res["random_drop"], res
    # and not by a hair: the top word is the bigger loss on most reviews
    assert res["top_beats_random"] > 0.6, res
