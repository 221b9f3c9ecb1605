"""Where a bertclf training step spends its time on a GPU: torch.profiler over ~50 of the loop's own steps.

Sets a run up exactly as `bertclf train --data nsmc` does (bertclf.train.prepare), then times the loop's step body
(Stepper.gradients, clip, optimizer.step, scheduler.step, zero_grad) three ways, on the same batches:
  - plain: steps/s and samples/s, no profiler, at several batch sizes (fewer, larger steps = fewer launches)
  - profiled: top ops by device time, the GPU's idle share (1 - union of kernel intervals / wall), and the
    host syncs per step (aten::_local_scalar_dense = .item()/bool() on a device tensor, cuda*Synchronize)

    python -m benchmarks.training.gpu_profile --data-dir /tmp/in/nsmc --model /tmp/in/model --json OUT/profile.json
    python -m benchmarks.training.gpu_profile --model DIR --sample 0.002 --steps 4 --warmup 1  # a dry run on the CPU
"""
from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import machine, run

SYNC_OPS = ("aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def busy_seconds(prof) -> float:
    """Union of the device kernels' intervals (overlapping kernels counted once)."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA)
    busy, end = 0.0, float("-inf")
    for s, e in spans:
        if s >= end:
            busy += e - s
            end = e
        elif e > end:
            busy += e - end
            end = e
    return busy / 1e6


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir")
    p.add_argument("--model", required=True)
    p.add_argument("--sample", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch-sizes", default="256,512,1024")
    p.add_argument("--json")
    args = p.parse_args()

    from bertclf.data.batches import epoch_batches
    from bertclf.train.callbacks import Events
    from bertclf.train.loop import TrainConfig
    from bertclf.train.prepare import prepare
    from bertclf.train.stepper import Stepper, optimizer_step

    out = Path(tempfile.mkdtemp()) / "run"
    cfg = TrainConfig(out=str(out), data="nsmc", data_dir=args.data_dir, model=args.model, epochs=1,
                      sample=args.sample)
    res = {"device": machine()}
    print(f"device: {res['device']}", flush=True)
    with contextlib.ExitStack() as held:
        run = prepare(cfg, echo=lambda s: None, held=held)
        model, opt, sched, state = run.learner.model, run.learner.optimizer, run.learner.scheduler, run.state
        stepper = Stepper(model, opt, run.accelerator, run.data.train_ids, run.data.y_train, run.learner.pad_id,
                          run.plan.eff_batch, cfg.grad_accum, Events(()), run.task)
        model.train()

        def step(rows):  # the loop's step body (bertclf/train/loop.py), nothing else
            stepper.gradients(rows, state)
            optimizer_step(run.accelerator, model, opt, sched, cfg.max_grad_norm)

        res["precision"], res["default_batch"] = run.mixed, run.plan.eff_batch
        res["plain"] = {}
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            batches = epoch_batches(run.data.train_len, bs, cfg.seed, 0)
            n = min(args.steps, len(batches) - args.warmup)
            if n < 1:
                continue
            for rows in batches[:args.warmup]:
                step(rows)
            sync()
            t0 = time.perf_counter()
            for rows in batches[args.warmup:args.warmup + n]:
                step(rows)
            sync()
            wall = time.perf_counter() - t0
            rows_done = sum(len(r) for r in batches[args.warmup:args.warmup + n])
            res["plain"][bs] = {"steps": n, "steps_per_s": n / wall, "samples_per_s": rows_done / wall,
                                "tokens_per_s": int(sum(run.data.train_len[r].sum() for r in
                                                        batches[args.warmup:args.warmup + n])) / wall}
            print(f"batch {bs}: {n / wall:.1f} steps/s, {rows_done / wall:.0f} samples/s", flush=True)

        batches = epoch_batches(run.data.train_len, run.plan.eff_batch, cfg.seed, 1)
        n = min(args.steps, len(batches) - args.warmup)
        for rows in batches[:args.warmup]:
            step(rows)
        sync()
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                         if torch.cuda.is_available() else [])
        with torch.profiler.profile(activities=acts) as prof:
            t0 = time.perf_counter()
            for rows in batches[args.warmup:args.warmup + n]:
                step(rows)
            sync()
            wall = time.perf_counter() - t0
    sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=20, max_name_column_width=60)
    counts = {k: 0 for k in SYNC_OPS}
    for e in prof.events():
        if e.name in counts:
            counts[e.name] += 1
    busy = busy_seconds(prof) if torch.cuda.is_available() else None
    res["profiled"] = {"steps": n, "wall_s": wall, "ms_per_step": wall / n * 1e3,
                       "gpu_busy_share": busy / wall if busy is not None else None,
                       "host_syncs_per_step": {k: v / n for k, v in counts.items()}, "table": table}
    print(table)
    print(f"profiled {n} steps at batch {run.plan.eff_batch}: {wall / n * 1e3:.1f} ms/step"
          + (f", GPU busy {busy / wall:.0%} of the wall time" if busy is not None else "")
          + "; host syncs per step: " + ", ".join(f"{k} {v / n:.1f}" for k, v in counts.items() if v))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    run(main)
