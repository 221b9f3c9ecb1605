"""A real fine-tune of the builtin me5-small on CPU: 3,000 NSMC training reviews, scored on 1,000 held-out
NSMC test reviews. Takes a few minutes on a 2-core CPU."""
import json

import pytest

from bertclf.loop import TrainConfig, train
from bertclf.predict import Classifier

pytestmark = pytest.mark.slow

MIN_ACCURACY = 0.80


def test_me5_small_learns_nsmc_on_cpu(me5_dir, nsmc_dir, tmp_path):
    from conftest import write_nsmc_slice

    tr = write_nsmc_slice(nsmc_dir, "train", tmp_path / "train.tsv", 10_000, 3000)
    te = write_nsmc_slice(nsmc_dir, "test", tmp_path / "test.tsv", 10_000, 1000)
    out = tmp_path / "run"
    card = train(TrainConfig(out=str(out), train=str(tr), test=str(te), text_col="document", model="me5-small",
                             epochs=1, batch_size=32, lr=1e-4, seed=0, trim_vocab=True, max_length=96),
                 echo=print)
    acc = card["metrics"]["test"]["accuracy"]
    assert card["metrics"]["test"]["n"] == 1000
    assert acc >= MIN_ACCURACY, f"test accuracy {acc:.4f} < {MIN_ACCURACY}"
    clf = Classifier.load(str(out))
    assert clf.predict("이 영화 정말 최고예요 강력 추천합니다")["label"] == "1"
    assert clf.predict("시간 낭비 돈 낭비 최악의 영화")["label"] == "0"
    assert json.loads((out / "config.json").read_text())["vocab_size"] < 30_000  # trimmed
