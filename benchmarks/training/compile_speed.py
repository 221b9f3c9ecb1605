"""The training step eager vs compiled (--compile), on the same batches, in one process: what --compile auto
decides on a CPU is measured here.

Sets a run up as `bertclf train` does (bertclf.train.prepare), then times the loop's step body (Stepper.gradients
and optimizer_step) over the same --steps batches of NSMC, eager and compiled, after --warmup steps each (the
compiled warm-up compiles every shape the timed batches need: both run the timed batches once first), eager and
compiled alternating for --rounds rounds (the median is kept: other jobs on a shared machine slow both alike).
Also the largest difference between the eager and compiled losses (dropout off: neither draws masks).

    python -m benchmarks.training.compile_speed --model DIR --max-length 16     # the tiny model: seconds
    python -m benchmarks.training.compile_speed --model me5-small --max-length 16 --steps 5 --rounds 2
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import machine, run


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data-dir")
    p.add_argument("--sample", type=float, default=0.01)
    p.add_argument("--max-length", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default="auto")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="eager and compiled alternate, this many rounds each")
    p.add_argument("--json")
    args = p.parse_args()
    res = {"device": machine(), "threads": torch.get_num_threads()} | vars(args)
    print(f"device: {res['device']}, {res['threads']} threads", flush=True)
    with contextlib.ExitStack() as held:
        modes = {mode: StepTimer(args, mode == "compiled", held) for mode in ("eager", "compiled")}
        res["compile_s"] = modes["compiled"].warm_up()
        modes["eager"].warm_up()
        rounds = {mode: [] for mode in modes}
        for _ in range(args.rounds):  # alternating: other jobs on the machine slow both alike
            for mode, timer in modes.items():
                rounds[mode].append(timer.timed())
    for mode, rs in rounds.items():
        res[mode] = {"ms_per_step": statistics.median(r["ms_per_step"] for r in rs), "rounds": rs}
        print(f"{mode}: {res[mode]['ms_per_step']:.1f} ms/step (median of {len(rs)} rounds: "
              + ", ".join(f"{r['ms_per_step']:.1f}" for r in rs) + ")", flush=True)
    res["shapes"] = len(modes["compiled"].compiled.first_seconds)
    res["speedup"] = res["eager"]["ms_per_step"] / res["compiled"]["ms_per_step"]
    losses = [r["losses"] for r in rounds["eager"][:1] + rounds["compiled"][:1]]
    res["max_loss_rel_diff"] = max(abs(a - b) / abs(a) for a, b in zip(*losses))
    print(f"compiled: {res['shapes']} shape(s), {res['compile_s']:.1f} s compiling; compiled / eager speed "
          f"{res['speedup']:.2f}x; largest relative loss difference {res['max_loss_rel_diff']:.1e}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


class StepTimer:
    """One run set up as `bertclf train` does, its dropout off (eager and compiled then compute the same losses),
    stepping over the same batches from the same start each time it is timed."""

    def __init__(self, args, compiled: bool, held):
        from bertclf.train.callbacks import Events
        from bertclf.train.compiled import CompiledForward
        from bertclf.train.loop import TrainConfig
        from bertclf.train.prepare import prepare
        from bertclf.train.stepper import Stepper

        cfg = TrainConfig(out=str(Path(tempfile.mkdtemp()) / "run"), data="nsmc", data_dir=args.data_dir,
                          model=args.model, sample=args.sample, max_length=args.max_length,
                          batch_size=args.batch_size, precision=args.precision, compile="off", seed=0)
        self.run = r = prepare(cfg, echo=lambda s: None, held=held)
        for m in r.unwrapped().modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        model = r.learner.model
        self.compiled = CompiledForward(model, r.unwrapped(), cfg.max_length, r.plan.eff_batch,
                                        r.accelerator.device, r.world) if compiled else None
        self.stepper = Stepper(model, r.learner.optimizer, r.accelerator, r.data.train_ids, r.data.y_train,
                               r.learner.pad_id, r.plan.eff_batch, cfg.grad_accum, Events(()), r.task,
                               compiled=self.compiled)
        model.train()
        self.batches = r.batches(0)[:args.steps]
        self.start = copy.deepcopy((r.unwrapped().state_dict(), r.learner.optimizer.state_dict(),
                                    r.learner.scheduler.state_dict()))

    def step(self, rows) -> float:
        from bertclf.train.stepper import optimizer_step

        r = self.run
        loss = self.stepper.gradients(rows, r.state)[0]
        optimizer_step(r.accelerator, r.learner.model, r.learner.optimizer, r.learner.scheduler, r.cfg.max_grad_norm)
        return float(loss) / len(rows)

    def warm_up(self) -> float:
        """One pass over the batches (compiled: every shape they need is compiled); its seconds."""
        t0 = time.perf_counter()
        for rows in self.batches:
            self.step(rows)
        return time.perf_counter() - t0

    def timed(self) -> dict:
        r = self.run
        r.unwrapped().load_state_dict(self.start[0])
        r.learner.optimizer.load_state_dict(self.start[1])
        r.learner.scheduler.load_state_dict(self.start[2])
        t0 = time.perf_counter()
        losses = [self.step(rows) for rows in self.batches]
        return {"ms_per_step": (time.perf_counter() - t0) / len(self.batches) * 1e3, "losses": losses}


if __name__ == "__main__":
    run(main)
