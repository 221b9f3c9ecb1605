"""Where a bertclf training step spends its time on a GPU: torch.profiler over ~50 of the loop's own steps.

Sets a run up exactly as `bertclf train --data nsmc` does (bertclf.train.prepare), then times the loop's step body
(Stepper.gradients, clip, optimizer.step, scheduler.step, zero_grad) three ways, on the same batches:
  - plain: steps/s and samples/s, no profiler, at several batch sizes (fewer, larger steps = fewer launches)
  - profiled: top ops by device time, the GPU's idle share (1 - union of kernel intervals / wall), and the
    host syncs per step (aten::_local_scalar_dense = .item()/bool() on a device tensor, cuda*Synchronize)

    python -m benchmarks.training.gpu_profile --data-dir /tmp/in/nsmc --model /tmp/in/model --json OUT/profile.json
    python -m benchmarks.training.gpu_profile --model DIR --sample 0.002 --steps 4 --warmup 1  # a dry run on the CPU
    ... --compile: the same for the compiled step (--compile on)
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


def profiled(step, batches) -> dict:
    """Profile `step` over `batches`: ms per step, the GPU's busy share of the wall time, host syncs per step and
    the top ops."""
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                     if torch.cuda.is_available() else [])
    with torch.profiler.profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for rows in batches:
            step(rows)
        sync()
        wall = time.perf_counter() - t0
    n = len(batches)
    sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    counts = {k: 0 for k in SYNC_OPS}
    for e in prof.events():
        if e.name in counts:
            counts[e.name] += 1
    busy = busy_seconds(prof) if torch.cuda.is_available() else None
    summary = (f"{wall / n * 1e3:.1f} ms/step" + (f", GPU busy {busy / wall:.0%} of the wall time" if busy is not None
                                                  else "")
               + "; host syncs per step: " + ", ".join(f"{k} {v / n:.1f}" for k, v in counts.items() if v))
    return {"steps": n, "wall_s": wall, "ms_per_step": wall / n * 1e3,
            "gpu_busy_share": busy / wall if busy is not None else None,
            "host_syncs_per_step": {k: v / n for k, v in counts.items()}, "summary": summary,
            "table": prof.key_averages().table(sort_by=sort, row_limit=20, max_name_column_width=60)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir")
    p.add_argument("--model", required=True)
    p.add_argument("--sample", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch-sizes", default="256,512,1024")
    p.add_argument("--max-length", type=int, default=128, help="a dry run of --compile: 16 (one shape)")
    p.add_argument("--profile-batch-sizes", help="batch sizes profiled (default: the run's default batch)")
    p.add_argument("--compile", action="store_true", help="the compiled step (--compile on): each timed or "
                   "profiled stretch runs once first, so every shape it needs is compiled before it is measured")
    p.add_argument("--json")
    args = p.parse_args()

    from bertclf.data.batches import epoch_batches
    from bertclf.train.callbacks import Events
    from bertclf.train.loop import TrainConfig
    from bertclf.train.prepare import prepare
    from bertclf.train.compiled import CompiledForward
    from bertclf.train.stepper import Stepper, optimizer_step

    out = Path(tempfile.mkdtemp()) / "run"
    cfg = TrainConfig(out=str(out), data="nsmc", data_dir=args.data_dir, model=args.model, epochs=1,
                      sample=args.sample, max_length=args.max_length)
    res = {"device": machine()}
    print(f"device: {res['device']}", flush=True)
    with contextlib.ExitStack() as held:
        run = prepare(cfg, echo=lambda s: None, held=held)
        model, opt, sched, state = run.learner.model, run.learner.optimizer, run.learner.scheduler, run.state
        model.train()

        def make_step(batch_size: int):
            """The loop's step body (bertclf/train/loop.py), nothing else, for optimizer batches of batch_size."""
            compiled = CompiledForward(model, run.unwrapped(), cfg.max_length, batch_size, run.accelerator.device,
                                       run.world) if args.compile else None
            stepper = Stepper(model, opt, run.accelerator, run.data.train_ids, run.data.y_train, run.learner.pad_id,
                              batch_size, cfg.grad_accum, Events(()), run.task, compiled=compiled)

            def step(rows):
                stepper.gradients(rows, state)
                optimizer_step(run.accelerator, model, opt, sched, cfg.max_grad_norm)
            return step, compiled

        def warm_up(step, batches):
            for rows in batches:
                step(rows)
            sync()

        res["precision"], res["default_batch"], res["compiled"] = run.mixed, run.plan.eff_batch, args.compile
        res["plain"] = {}
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            batches = epoch_batches(run.data.train_len, bs, cfg.seed, 0)
            n = min(args.steps, len(batches) - args.warmup)
            if n < 1:
                continue
            step, compiled = make_step(bs)
            t0 = time.perf_counter()
            warm_up(step, batches[:args.warmup + n] if compiled else batches[:args.warmup])
            warm_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for rows in batches[args.warmup:args.warmup + n]:
                step(rows)
            sync()
            wall = time.perf_counter() - t0
            rows_done = sum(len(r) for r in batches[args.warmup:args.warmup + n])
            res["plain"][bs] = {"steps": n, "steps_per_s": n / wall, "samples_per_s": rows_done / wall,
                                "tokens_per_s": int(sum(run.data.train_len[r].sum() for r in
                                                        batches[args.warmup:args.warmup + n])) / wall,
                                "warmup_s": warm_s, "compiled": compiled.record() if compiled else None}
            print(f"batch {bs}: {n / wall:.1f} steps/s, {rows_done / wall:.0f} samples/s"
                  + (f" ({compiled.summary()})" if compiled else ""), flush=True)

        res["profiled_by_batch"] = {}
        for bs in [int(b) for b in (args.profile_batch_sizes or str(run.plan.eff_batch)).split(",")]:
            batches = epoch_batches(run.data.train_len, bs, cfg.seed, 1)
            n = min(args.steps, len(batches) - args.warmup)
            step, compiled = make_step(bs)
            warm_up(step, batches[:args.warmup + n] if compiled else batches[:args.warmup])
            res["profiled_by_batch"][bs] = profiled(step, batches[args.warmup:args.warmup + n])
            print(res["profiled_by_batch"][bs]["table"])
            print(f"profiled {n} steps at batch {bs}: {res['profiled_by_batch'][bs]['summary']}", flush=True)
        res["profiled"] = next(iter(res["profiled_by_batch"].values()))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    run(main)
