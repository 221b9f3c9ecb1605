"""Stage 4, the training loop: fine-tune an encoder with a classification head.

It reads like the tutorial it grew from (load data, tokenize, loop over batches, print loss and accuracy
every N steps, report test accuracy); each speed and safety trick is named where it lives:

  prepare.py   tokenize once up front · fused AdamW with linear warmup and decay · bf16 autocast on
               GPUs and CPUs that have it (fp16 + loss scaling on older GPUs, fp32 elsewhere) · exact resume
  batches.py   length-bucketed batches with dynamic padding
  stepper.py   gradient accumulation · on CUDA out-of-memory halve the micro-batch (the effective batch stays)
  compiled.py  --compile: the forward compiled once per static shape (batches padded to a few widths)
  meter.py     no per-step host syncs (numbers leave the GPU only when logged)
  validation.py  validation each epoch or every N steps, sharded over processes; the best weights kept
  checkpoint.py  atomic checkpoints, best checkpoint kept; early stopping below
  preemption.py  SIGTERM/SIGUSR1: finish the step, checkpoint, stop (exit 75); `--resume auto` continues
  finish.py    the best model, test score, model card

Accelerate runs the same code on CPU, one GPU or many (`accelerate launch` / `torchrun`).
"""
from __future__ import annotations

import contextlib
import os
import time

from bertclf.rundir import checkpoint as ckpt
from bertclf.rundir import layout as rundir
from bertclf.train.callbacks import Events
from bertclf.train.config import RESUME_KEYS, TrainConfig, config_from_dict, validate_config  # noqa: F401 (re-exported)
from bertclf.io.disk_space import tensor_bytes, writing
from bertclf.train.compiled import compiled_forward
from bertclf.train.finish import finish
from bertclf.train.meter import Meter, check_finite
from bertclf.train.preemption import Preemption
from bertclf.train.prepare import Run, load_data, prepare  # noqa: F401 (load_data re-exported)
from bertclf.train.stepper import Stepper, optimizer_step
from bertclf.train.tracking import Tracking
from bertclf.train.validation import validate


def train(cfg: TrainConfig, echo=print, callbacks=(), objective=None) -> dict:
    """Fine-tune as `cfg` says; returns the model card that is also written to DIR/bertclf.json.
    callbacks: bertclf.train.callbacks.TrainCallback instances, handed the set-up run, then told of each step,
    validation and checkpoint write.
    objective: see prepare() (bertclf distill trains a student with the teacher's loss in this same loop)."""
    t_start = time.time()
    if cfg.texts:  # a caller's mistake, not the user's: the two passes are run one level up
        raise ValueError("cfg.texts: train it with bertclf.train (bertclf/distill/self_train.py), which runs the two "
                         "passes; bertclf.train.loop.train runs one")
    validate_config(cfg)
    tracking = Tracking.for_config(cfg, echo)  # --report-to: after the callbacks given (a report page written)
    events = Events([*callbacks, tracking] if tracking else callbacks)
    with contextlib.ExitStack() as held:  # the output folder's lock (one run per folder), for the whole run
        run = prepare(cfg, echo, held, objective)
        run.events = events  # the final model write (finish.py) tells them of its moments too
        if tracking:
            held.push(tracking.exit)  # each tracked run ends, finished or not, before the lock is released
        events.on_train_begin(run)
        # a full disk outside the checkpoint and model writes (which name their own folder): the log, the lock
        next_checkpoint = lambda: tensor_bytes(run.unwrapped().state_dict(),  # noqa: E731
                                               run.learner.optimizer.state_dict())
        with Preemption() as preemption, writing("the run's files", run.out, next_checkpoint,
                                                 "the next checkpoint's weights and optimizer state",
                                                 lambda: ckpt.after_disk_full(run.out)):
            card = run_loop(run, events, preemption, t_start)
            events.on_train_end(run, card)
            return card


def run_loop(run: Run, events, preemption: Preemption, t_start: float) -> dict:
    """batches -> step -> log -> evaluate -> checkpoint -> stop, then the final model."""
    cfg = run.cfg
    model, optimizer, scheduler = run.learner.model, run.learner.optimizer, run.learner.scheduler
    data, plan, state = run.data, run.plan, run.state
    compiled = compiled_forward(run)  # None unless --compile
    stepper = Stepper(model, optimizer, run.accelerator, data.train_ids, data.y_train, run.learner.pad_id,
                      plan.eff_batch, cfg.grad_accum, events, run.task, say=run.say, types=data.train_types,
                      compiled=compiled, rdrop_alpha=cfg.rdrop)
    meter = Meter(run.accelerator, run.world, state.window)
    progress = make_progress(plan.total_steps, state.step, run.main)
    model.train()
    stop_reason = None
    while state.step < plan.total_steps and stop_reason is None:
        epoch, batches = state.epoch, run.batches(state.epoch)
        for rows in batches[state.batch_in_epoch:]:
            loss, correct, nonfinite = stepper.gradients(rows, state)
            optimizer_step(run.accelerator, model, optimizer, scheduler, cfg.max_grad_norm)
            tokens = int(data.train_len[rows].sum())
            epoch_end = state.advance(len(rows), tokens, run.world, len(batches))
            meter.add(loss, correct, nonfinite, len(rows), tokens)
            progress.update(1)
            step = state.step
            events.on_step_end(step)
            if step % plan.log_every == 0 or step == plan.total_steps:
                log_window(run, meter, epoch, len(batches), progress, t_start)
            if step % plan.eval_every == 0 or step == plan.total_steps:
                stop_reason = validate(run, meter, events)
            preempted = step < plan.total_steps and preemption.requested(run.accelerator)
            checkpoint_due = cfg.checkpoint_every and step % cfg.checkpoint_every == 0
            if (checkpoint_due or preempted) and step < plan.total_steps:
                save_checkpoint(run, meter, events)
            if preempted:
                raise preemption.stop(step, rundir.step_dir(run.out, step))
            if step >= plan.total_steps or stop_reason or epoch_end:
                break
    progress.close()
    if compiled:
        run.say(compiled.summary())
        run.compiled = compiled.record()
    check_finite(run, meter)  # the final model is never a diverged one either
    if stop_reason:
        run.say(stop_reason)
    return finish(run, stop_reason, t_start, preemption)


def log_window(run: Run, meter: Meter, epoch: int, n_batches: int, progress, t_start: float) -> None:
    check_finite(run, meter)  # checked when logged, not every step: it is a host sync
    state, w = run.state, meter.flush()
    state.train_seconds += w["seconds"]
    numbers = dict(epoch=state.epoch + state.batch_in_epoch / n_batches, loss=w["loss"], acc=w["acc"],
                   lr=run.learner.scheduler.get_last_lr()[0], samples_per_s=w["samples_per_s"],
                   tokens_per_s=w["tokens_per_s"])
    run.log(f"[Epoch {epoch + 1}/{run.plan.n_epochs}] step {state.step} -> loss {w['loss']:.4f}, acc {w['acc']:.4f} "
            f"({w['samples_per_s']:.0f} samples/s)", step=state.step, **numbers, elapsed_s=time.time() - t_start)
    if run.main:
        run.events.on_log(state.step, numbers)
    progress.set_postfix(loss=f"{w['loss']:.3f}", samples_s=f"{w['samples_per_s']:.0f}")


def save_checkpoint(run: Run, meter: Meter, events) -> None:
    """Every process takes part: the log window's sums and each rank's RNG state are gathered into it."""
    from accelerate.utils import gather_object

    check_finite(run, meter)
    run.state.window = meter.window()  # part of the state, so a resumed run logs exactly the same numbers
    # Every rank draws its own dropout masks: keep each rank's RNG state, not only rank 0's.
    rank_rngs = gather_object([ckpt.rng_state()]) if run.world > 1 else None
    if run.main:
        ckpt.save_checkpoint(run.out, run.state.step, run.unwrapped(), run.learner.optimizer,
                             run.learner.scheduler,
                             run.state.to_dict() | {"args": run.run_args, "data_sha256": run.data_sha256()},
                             keep=run.cfg.keep_checkpoints,
                             rank_rngs=rank_rngs, on_write=events.on_checkpoint_write)
        events.on_checkpoint_saved(run.state.step)
    run.accelerator.wait_for_everyone()


def make_progress(total: int, done: int, main: bool):
    from tqdm.auto import tqdm

    disable = (not main) or bool(os.environ.get("BERTCLF_NO_PROGRESS")) or None  # None: off when not a TTY
    return tqdm(total=total, initial=done, unit="step", disable=disable, dynamic_ncols=True, leave=False)
