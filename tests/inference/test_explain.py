"""Word attributions (bertclf.inference.explain): Captum Integrated Gradients on real trained models, merged into words.

The faithfulness check: on NSMC test reviews the model gets right, deleting the word with the highest score
must lower the predicted label's probability more often, and by more, than deleting a random word.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("captum")

from bertclf.errors import UserError  # noqa: E402
from bertclf.inference.explain import explain, merge_into_words  # noqa: E402
from faithfulness import FAITHFUL_REVIEWS, assert_faithful, check_faithfulness  # noqa: E402 (tests/support)

REPO = Path(__file__).resolve().parents[2]
TEXT = "배우들 연기가 정말 최고였다!!  스토리는 좀 지루했지만 또 보고 싶다"


@pytest.fixture(scope="module")
def clf(trained_tiny_dir):
    from bertclf.inference.classifier import Classifier

    return Classifier.load(str(trained_tiny_dir))


def _cli(*args, timeout=300, stdin=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "bertclf", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, input=stdin)


def test_words_are_the_texts_words_and_scores_add_up(clf):
    ex = explain(clf, TEXT)
    assert [w["token"] for w in ex["tokens"]] == TEXT.split()
    assert all(TEXT[w["start"]:w["end"]] == w["token"] for w in ex["tokens"])
    from bertclf.inference.classifier import Classifier

    # the attributions explain the encoder (a partner's blend has no gradients): its own label and probability
    pred = Classifier.load(clf.path, ngram=False).predict(TEXT)
    assert ex["label"] == pred["label"] and ex["score"] == pytest.approx(pred["score"], abs=1e-4)
    assert ex["component"].startswith("encoder")
    # Integrated Gradients' completeness: the word scores share out p(label) - p(label | baseline)
    total = sum(w["score"] for w in ex["tokens"])
    assert total == pytest.approx(ex["score"] - ex["baseline_score"], abs=max(0.02, 2 * ex["convergence_delta"]))
    assert not ex["truncated"] and ex["steps"] == 32
    assert len({round(w["score"], 6) for w in ex["tokens"]}) > 1, "every word got the same score"


def test_other_target_gets_the_opposite_scores(clf):
    ex = explain(clf, TEXT)
    other = next(lab for lab in clf.labels if lab != ex["label"])
    ex2 = explain(clf, TEXT, target=other)
    assert ex2["label"] == other
    # two softmax labels: p(other) = 1 - p(label), so every gradient, and every score, flips sign
    np.testing.assert_allclose([w["score"] for w in ex2["tokens"]], [-w["score"] for w in ex["tokens"]], atol=1e-5)


def test_text_longer_than_max_tokens_is_cut(clf):
    long = " ".join(["정말 재밌어요"] * 40)
    ex = explain(clf, long, max_tokens=16, steps=4)
    words = long.split()
    assert ex["truncated"] and ex["max_tokens"] == 16
    assert 0 < len(ex["tokens"]) < len(words)
    assert [w["token"] for w in ex["tokens"]] == words[:len(ex["tokens"])]


def test_pieces_merge_into_whitespace_words():
    # offsets as SentencePiece gives them: a piece may start with the space before its word; (0, 0) = special
    text = "ab  cd!! e"
    offsets = [(0, 0), (0, 1), (1, 2), (2, 5), (5, 6), (6, 8), (8, 10), (0, 0)]
    words = merge_into_words(text, offsets, np.array([9, 1, 2, 3, 4, 5, 6, 9.0]))
    assert [(w["token"], w["score"], w["start"], w["end"]) for w in words] == \
        [("ab", 3.0, 0, 2), ("cd!!", 12.0, 4, 8), ("e", 6.0, 9, 10)]
    # cut after "cd": the words after the last piece are left out, unless nothing was cut (then they score 0)
    assert [w["token"] for w in merge_into_words(text, offsets[:4], np.array([0, 1, 2, 3.0]), True)] == ["ab", "cd!!"]
    assert [w["score"] for w in merge_into_words(text, offsets[:4], np.array([0, 1, 2, 3.0]))] == [3.0, 3.0, 0.0]


def test_bad_target_and_steps_are_user_errors(clf):
    with pytest.raises(UserError, match="not a label"):
        explain(clf, TEXT, target="nope")
    with pytest.raises(UserError, match="steps must be between"):
        explain(clf, TEXT, steps=0)


def test_predict_explain_prints_top_words(trained_tiny_dir, tmp_path):
    r = _cli("predict", str(trained_tiny_dir), TEXT, "시간 아깝다", "--explain")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    first = [ln for ln in lines if ln.endswith(TEXT)]
    assert len(first) == 1 and first[0].split()[0] in ("0", "1"), r.stdout
    assert sum(ln.startswith("  toward ") for ln in lines) == 2, r.stdout
    out = tmp_path / "why.jsonl"
    r = _cli("predict", str(trained_tiny_dir), "--explain", "--output", str(out),
             stdin="정말 재밌어요\n시간 아깝다\n")
    assert r.returncode == 0, r.stderr
    recs = [json.loads(ln) for ln in out.read_text(encoding="utf-8").splitlines()]
    assert [(rec["row"], rec["text"]) for rec in recs] == [(0, "정말 재밌어요"), (1, "시간 아깝다")]
    assert [w["token"] for w in recs[0]["tokens"]] == ["정말", "재밌어요"]
    r = _cli("predict", str(trained_tiny_dir), "--explain", "--output", str(tmp_path / "why.csv"), "--input", "-",
             stdin="좋다\n")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and ".jsonl" in r.stderr, r.stderr


def test_explain_skips_the_rows_predict_skips(clf, tmp_path):
    """Empty and blank texts get no explanation, as they get no prediction: the same rows, numbers and message."""
    from bertclf.inference.explain import explain_to
    from bertclf.inference.records import predict_to

    inp = tmp_path / "in.tsv"
    inp.write_text("id\tdocument\n0\t\n1\t정말 재밌어요\n2\t   \n3\t시간 아깝다\n", encoding="utf-8")
    said, predict_said = [], []
    assert explain_to(clf, input_path=str(inp), output_path=str(tmp_path / "why.jsonl"), steps=4,
                      log=said.append) == 2
    assert predict_to(clf, input_path=str(inp), output_path=str(tmp_path / "p.jsonl"), progress=False,
                      log=predict_said.append) == 2
    rows = [[(r["row"], r["text"]) for r in map(json.loads, (tmp_path / f).read_text(encoding="utf-8").splitlines())]
            for f in ("why.jsonl", "p.jsonl")]
    assert rows[0] == rows[1] == [(1, "정말 재밌어요"), (3, "시간 아깝다")]
    assert said == predict_said and len(said) == 1 and said[0].startswith("bertclf: 2 empty text(s) skipped")

    shown = []  # texts given as arguments, explained on the terminal
    assert explain_to(clf, texts=["", "정말 재밌어요", " "], steps=4, echo=shown.append, log=said.append) == 1
    assert len(shown) == 1 and shown[0].splitlines()[0].endswith("정말 재밌어요")
    assert said[-1].startswith("bertclf: 2 empty text(s) skipped")


@pytest.fixture(scope="module")
def onnx_dir(trained_tiny_dir, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from bertclf.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "model"
    export_onnx(str(trained_tiny_dir), str(out), log=lambda s: None)
    return out


def test_onnx_export_says_explain_needs_the_torch_model(onnx_dir, trained_tiny_dir):
    r = _cli("predict", str(onnx_dir), TEXT, "--explain")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "explain needs the torch model" in r.stderr and str(Path(trained_tiny_dir).resolve()) in r.stderr


# ---------------------------------------------------------------- faithfulness on NSMC test reviews

def test_deleting_the_top_word_hurts_more_than_a_random_word(clf, nsmc_dir, record_property):
    res = check_faithfulness(clf, nsmc_dir, FAITHFUL_REVIEWS)
    for k, v in res.items():
        record_property(k, v)
    print(f"\nfaithfulness (tiny model): {res}")
    assert_faithful(res)
