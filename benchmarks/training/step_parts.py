"""One part of a training step, A against B side by side in one process (alternating, so a busy machine slows
both alike): the numbers behind two defaults.

    python -m benchmarks.training.step_parts optimizer                          # AdamW fused vs foreach
    ATEN_CPU_CAPABILITY=avx2 python -m benchmarks.training.step_parts optimizer # torch's AVX2 kernels
    python -m benchmarks.training.step_parts vocab [--steps 6]                  # full vs trimmed vocabulary

optimizer: AdamW's step alone on the builtin model's parameters, its embedding cut to --vocab rows as a default
run trims it (prepare.make_optimizer's `fused=True` on CPUs). Gradients are random (the step's cost does not
depend on their values); all parameters sit in one group with weight decay, because make_optimizer always
builds the fused optimizer and so cannot time foreach beside it; both kernels do the same per-parameter work.

vocab: one whole training step (forward, backward, clipping, AdamW, as bertclf's loop does them) on the same
batches of 32 real texts through me5-small with its full vocabulary and with the vocabulary trimmed to the
texts (why --trim-vocab is on by default for the builtin model); the trimming itself is timed once.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import SHARED, machine, run

HATE = SHARED / "korean-hate-speech" / "train.tsv"


def model_params(vocab: int):
    """The builtin model with a classification head, its embedding cut to `vocab` rows."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from bertclf.models.resolve import resolve

    config = AutoConfig.from_pretrained(resolve("me5-small"), num_labels=2)
    config.vocab_size = vocab
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config)


def time_steps(model, fused: bool, steps: int, warmup: int) -> list[float]:
    import torch
    from torch.optim import AdamW

    params = list(model.parameters())
    opt = AdamW([{"params": params, "weight_decay": 0.01}], lr=1e-4, fused=fused, foreach=None if fused else True)
    g = torch.Generator().manual_seed(1)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    times = []
    for _ in range(warmup + steps):
        t = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t)
    return times[warmup:]


def optimizer(a) -> None:
    import torch

    model = model_params(a.vocab)
    n = sum(p.numel() for p in model.parameters())
    print(f"{machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', '(unset)')}, "
          f"kernels {torch.backends.cpu.get_cpu_capability()}")
    print(f"parameters: {n / 1e6:.1f}M (vocabulary {a.vocab:,}); {a.steps} steps per round, median ms per step")
    med = {True: [], False: []}
    for r in range(a.rounds):
        for fused in (True, False) if r % 2 == 0 else (False, True):
            med[fused].append(1000 * statistics.median(time_steps(model, fused, a.steps, a.warmup)))
    f, e = statistics.median(med[True]), statistics.median(med[False])
    print(f"fused    {f:7.1f} ms  (rounds: {', '.join(f'{x:.1f}' for x in med[True])})")
    print(f"foreach  {e:7.1f} ms  (rounds: {', '.join(f'{x:.1f}' for x in med[False])})")
    print(f"fused is {e / f:.2f}x faster")


def vocab(a) -> None:
    import numpy as np
    import torch

    from bertclf.data.batches import collate
    from bertclf.data.dataset import read_labelled
    from bertclf.data.tokens import encode
    from bertclf.models.builtin import builtin_model_path
    from bertclf.models.resolve import load_classifier, load_tokenizer
    from bertclf.models.vocab_trim import trim_vocab

    torch.manual_seed(0)
    print(machine())
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="part", required=True)
    o = sub.add_parser("optimizer", help="AdamW's step, fused vs foreach")
    o.add_argument("--vocab", type=int, default=5000, help="embedding rows (make nsmc keeps ~5,200 of 250,002)")
    o.add_argument("--steps", type=int, default=30)
    o.add_argument("--warmup", type=int, default=3)
    o.add_argument("--rounds", type=int, default=3, help="alternate fused/foreach this many times")
    v = sub.add_parser("vocab", help="a whole training step, full vs trimmed vocabulary")
    v.add_argument("--steps", type=int, default=6)
    v.add_argument("--texts", default=str(HATE))
    v.add_argument("--text-col", default="comments")
    v.add_argument("--label-col", default="hate")
    a = ap.parse_args()
    optimizer(a) if a.part == "optimizer" else vocab(a)


if __name__ == "__main__":
    run(main)
