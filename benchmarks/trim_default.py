"""Why --trim-vocab is on by default for the builtin model: one training step, full vs trimmed vocabulary.

    python benchmarks/trim_default.py [--steps 6] [--texts FILE --text-col COL]

Side by side in one process (steps interleaved A B A B, so a busy machine slows both alike): the same batches
of 32 real texts through me5-small with its full 250k-piece vocabulary and with the vocabulary trimmed to the
texts; forward, backward, gradient clipping and the AdamW step, as bertclf's loop does them. Prints the median
step time of each and their ratio. (The trimming itself, once per run, is timed too.)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
HATE = REPO.parent / "shared" / "data" / "korean-hate-speech" / "train.tsv"


def main() -> None:
    from bertclf.data.batches import collate
    from bertclf.models.builtin import builtin_model_path
    from bertclf.data.dataset import read_labelled
    from bertclf.models.resolve import load_classifier, load_tokenizer
    from bertclf.data.tokens import encode
    from bertclf.models.vocab_trim import trim_vocab

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--texts", default=str(HATE))
    ap.add_argument("--text-col", default="comments")
    ap.add_argument("--label-col", default="hate")
    a = ap.parse_args()
    torch.manual_seed(0)
    ds = read_labelled(a.texts, a.text_col, a.label_col)
    full = str(builtin_model_path("me5-small"))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        trim_vocab(full, ds.texts, Path(tmp) / "trimmed", log=lambda s: None)
        trim_s = time.time() - t0
        variants = {}
        for name, path in (("full", full), ("trimmed", str(Path(tmp) / "trimmed"))):
            tok = load_tokenizer(path)
            model = load_classifier(path, {0: "a", 1: "b", 2: "c"}).train()
            opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
            ids = encode(tok, ds.texts[: 32 * a.steps], 128)
            variants[name] = (model, opt, ids, tok.pad_token_id, sum(p.numel() for p in model.parameters()))
        times = {k: [] for k in variants}
        import numpy as np

        labels = np.zeros(len(ds.texts), dtype=np.int64)
        for step in range(a.steps + 1):  # step 0 warms up both
            rows = np.arange(32 * (step % a.steps), 32 * (step % a.steps) + 32)
            for name, (model, opt, ids, pad, _) in variants.items():
                batch = collate(ids, rows, pad, labels)
                t0 = time.perf_counter()
                loss = model(**batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if step:
                    times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, (_, _, _, _, n) in variants.items():
        print(f"{name:8s} {n / 1e6:6.1f}M parameters  median step {med[name]:.2f}s over {a.steps} steps")
    print(f"trimmed is {med['full'] / med['trimmed']:.2f}x faster per step; trimming took {trim_s:.1f}s once")


if __name__ == "__main__":
    main()
