"""AdamW's step alone, fused vs foreach, on the builtin model's parameters (vocabulary trimmed as a default run
trims it), side by side in one process: the numbers behind prepare.make_optimizer's `fused=True` on CPUs.

    python benchmarks/optimizer_step.py                                # this CPU's best kernels
    ATEN_CPU_CAPABILITY=avx2 python benchmarks/optimizer_step.py       # torch's AVX2 kernels (an AVX2-only CPU)

Gradients are random (the step's cost does not depend on their values). All parameters sit in one group with
weight decay, not in prepare.make_optimizer's four (decay or not, encoder or head), which always builds the fused
optimizer and so cannot time foreach beside it; both kernels do the same per-parameter work either way.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def model_params(vocab: int):
    """The builtin model with a classification head, its embedding cut to `vocab` rows (what --trim-vocab keeps
    for a few thousand Korean reviews)."""
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
    for i in range(warmup + steps):
        t = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t)
    return times[warmup:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=5000, help="embedding rows (make nsmc keeps ~5,200 of 250,002)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="alternate fused/foreach this many times")
    a = ap.parse_args()

    import torch

    from bertclf.cpu import describe

    model = model_params(a.vocab)
    n = sum(p.numel() for p in model.parameters())
    print(f"{describe()}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
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


if __name__ == "__main__":
    main()
