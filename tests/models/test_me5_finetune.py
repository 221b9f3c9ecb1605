"""A real fine-tune of the builtin me5-small on CPU (5,000 NSMC training reviews, scored on 1,000 held-out NSMC
test reviews), then its int8 ONNX export checked against torch on 5,000 NSMC test reviews. Minutes on 2 cores."""
import json

import numpy as np
import pytest

from bertclf.inference.classifier import Classifier

pytestmark = [pytest.mark.slow, pytest.mark.whole_cpu]

# Not the requirement, and why: issue 14's target is "TF-IDF + LR trained on the same rows + 2 pt"; on these
# 5,000/1,000 rows the baseline scores 0.824 (bertclf.models.baseline.fit_predict, seed 0) and this one-epoch CPU recipe
# 0.820, so the target is not met by this recipe (a recipe question, reported, not a test to bend). What this
# test holds is "fine-tuning works": a broken loop (no learning, wrong labels) stays near the 0.50 of chance and
# far below 0.80.
MIN_ACCURACY = 0.80  # on tests/conftest.py's me5_nsmc_run (5,000 rows, one epoch; fp32 0.820, bf16 0.819)


def test_me5_small_learns_nsmc_on_cpu(me5_nsmc_run):
    out, card = me5_nsmc_run
    acc = card["metrics"]["test"]["accuracy"]
    assert card["metrics"]["test"]["n"] == 1000
    assert acc >= MIN_ACCURACY, f"test accuracy {acc:.4f} < {MIN_ACCURACY}"
    clf = Classifier.load(str(out))
    assert clf.predict("이 영화 정말 최고예요 강력 추천합니다")["label"] == "1"
    assert clf.predict("시간 낭비 돈 낭비 최악의 영화")["label"] == "0"
    assert json.loads((out / "config.json").read_text())["vocab_size"] < 30_000  # trimmed


def test_int8_onnx_export_agrees_with_torch_on_2000_reviews(me5_nsmc_run, nsmc_dir, tmp_path):
    """int8 against torch on 2,000 NSMC test reviews: accuracy drops <= 1 pt and labels agree >= 96%.

    Not the requirement, and why: issue 6 asks for >= 99.5% agreement and the GPU issue for <= 0.3 pt accuracy
    drop. This CPU-trained model is only ~82% accurate and 4.5% of its predictions lie within 0.05 of 0.5,
    where int8's rounding flips labels: measured 97.3-98.3% (benchmarks/RESULTS.md: no int8 variant that is
    faster than torch reaches 99.5% on such a model). So these floors only catch a broken export (a wrong scale
    or input order agrees ~50%; a bf16-trained model, as here on CPUs with bf16, sits nearer the floor); the 99.5% requirement is measured on the GPU-trained model (GPU issue)."""
    from bertclf.data.dataset import read_labelled
    from bertclf.export.onnx_export import export_onnx
    from scipy.special import softmax

    out, _ = me5_nsmc_run
    info = export_onnx(str(out), str(tmp_path / "int8"), int8=True, log=print, min_agreement=0.96)  # the floor below
    test = read_labelled(nsmc_dir / "ratings_test.txt", "document", "label")
    torch_clf = Classifier.load(str(out), device="cpu", precision="fp32")
    texts, y = test.texts[:2000], np.array([torch_clf.labels.index(lab) for lab in test.labels[:2000]])
    torch_logits = torch_clf.logits(texts)
    onnx_clf = Classifier.load(str(tmp_path / "int8"))
    assert onnx_clf.backend == "onnx"
    int8_logits = onnx_clf.logits(texts)
    agree = float((int8_logits.argmax(1) == torch_logits.argmax(1)).mean())
    acc_torch, acc_int8 = float((torch_logits.argmax(1) == y).mean()), float((int8_logits.argmax(1) == y).mean())
    max_prob = float(np.abs(softmax(int8_logits, axis=1) - softmax(torch_logits, axis=1)).max())
    print(f"int8 vs torch on {len(y)} NSMC test reviews: labels agree {agree:.2%}, accuracy {acc_int8:.4f} vs "
          f"{acc_torch:.4f}, max |prob diff| {max_prob:.3f}, size {info['size_bytes'] / 1e6:.1f} MB")
    assert agree >= 0.96, f"int8 agrees with torch on only {agree:.2%}"
    assert acc_int8 >= acc_torch - 0.01, f"int8 accuracy {acc_int8:.4f} vs torch {acc_torch:.4f}"


@pytest.mark.slow
def test_faithfulness_on_a_fine_tuned_me5_small(me5_nsmc_run, nsmc_dir, record_property):
    """predict --explain on the real fine-tune: deleting a review's top-scored word hurts more than a random
    word (tests/support/faithfulness.py). In this file so that the shared fine-tune is trained once per test
    worker (`make test` keeps a file on one worker)."""
    from faithfulness import FAITHFUL_REVIEWS, assert_faithful, check_faithfulness

    from bertclf.inference.classifier import Classifier

    res = check_faithfulness(Classifier.load(str(me5_nsmc_run[0])), nsmc_dir, FAITHFUL_REVIEWS)
    for k, v in res.items():
        record_property(k, v)
    print(f"\nfaithfulness (me5-small, 5,000 rows): {res}")
    assert_faithful(res)
