"""How much do pooling and e5's "query: " prefix matter before fine-tuning? A linear probe of the frozen builtin
model: logistic regression (scikit-learn, C by 5-fold CV) on the [CLS] state, tanh([CLS]) (what the pooler feeds
the head at the start) and the mean of the token states (what e5 was trained with), fitted on a datasets.py
training split and scored on its held-out rows.

    python benchmarks/linear_probe.py nsmc --work /tmp/ds
    python benchmarks/linear_probe.py nsmc --work /tmp/ds --prefix "query: "
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=["nsmc", "hate", "bias"])
    ap.add_argument("--work", type=Path, required=True, help="datasets.py's --work folder (splits made if missing)")
    ap.add_argument("--prefix", default="", help='prepended to every text, e.g. "query: "')
    a = ap.parse_args()

    import datasets as DS
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import AutoModel, AutoTokenizer

    from bertclf.data import dataset as D
    from bertclf.cpu import describe
    from bertclf.models.resolve import resolve

    t = DS.TASKS[a.task]
    train_file, test_file = DS.make_splits(a.work, 0.1)[a.task]
    train = D.read_labelled(str(train_file), t["text"], t["label"])
    test = D.read_labelled(str(test_file), t["text"], t["label"])
    path = resolve("me5-small")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    t0 = time.time()
    tr = features([a.prefix + x for x in train.texts], tok, model)
    te = features([a.prefix + x for x in test.texts], tok, model)
    print(f"{describe()}; {a.task}: {len(train):,} training, {len(test):,} held-out rows; prefix {a.prefix!r}; "
          f"features in {time.time() - t0:.0f} s")
    for name, f_tr, f_te in (("cls", tr[0], te[0]), ("tanh-cls", np.tanh(tr[0]), np.tanh(te[0])),
                             ("mean", tr[1], te[1])):
        pred = LogisticRegressionCV(Cs=8, max_iter=3000).fit(f_tr, train.labels).predict(f_te)
        print(f"{name:9s} accuracy {accuracy_score(test.labels, pred):.4f}  "
              f"weighted F1 {f1_score(test.labels, pred, average='weighted'):.4f}")


if __name__ == "__main__":
    main()
