"""Stage 4, the training loop: fine-tune an encoder with a classification head.

It reads like the tutorial it grew from (load data, tokenize, loop over batches, print loss and accuracy
every N steps, report test accuracy), with each speed and safety trick named where it happens:

  tokenize once up front · length-bucketed batches with dynamic padding · AdamW (fused on GPU) with linear
  warmup and decay · bf16 autocast on GPUs that have it (fp16 + loss scaling otherwise, fp32 on CPU) ·
  gradient accumulation · on CUDA out-of-memory halve the micro-batch (the effective batch stays) ·
  no per-step host syncs (numbers leave the GPU only when logged) · validation each epoch or every N steps,
  best checkpoint kept, early stopping · atomic checkpoints with exact resume.

Accelerate runs the same code on CPU, one GPU or many (`accelerate launch` / `torchrun`).
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from bertclf import __version__
from bertclf import checkpoint as ckpt
from bertclf import data as D
from bertclf import task as T
from bertclf.batches import collate, epoch_batches, split_micro
from bertclf.config import RESUME_KEYS, TrainConfig, config_from_dict, trims_vocab, validate_config  # noqa: F401
from bertclf.errors import UserError
from bertclf.inference import predict_logits
from bertclf.models import load_classifier, load_tokenizer, resolve
from bertclf.precision import pick_precision
from bertclf.tokens import encode, lengths


# Accelerate's plain data-parallel (DDP) modes, where the loop can hold back the gradient all-reduce itself.
DDP_TYPES = ("MULTI_GPU", "MULTI_CPU", "MULTI_XPU", "MULTI_NPU", "MULTI_MLU", "MULTI_MUSA", "MULTI_HPU", "MULTI_SDAA")
def load_data(cfg: TrainConfig, log=print):
    """(train, valid, test or None) datasets, as the config asks."""
    if cfg.data == "nsmc":
        cfg.text_col = cfg.text_col or D.NSMC_TEXT_COL
        cfg.label_col = cfg.label_col or D.NSMC_LABEL_COL
        train = D.read_nsmc("train", cfg.data_dir, log=log)
        test = D.read_nsmc("test", cfg.data_dir, log=log)
    else:
        cfg.text_col = cfg.text_col or "text"
        cfg.label_col = cfg.label_col or "label"
        train = D.read_labelled(cfg.train, cfg.text_col, cfg.label_col)
        test = D.read_labelled(cfg.test, cfg.text_col, cfg.label_col) if cfg.test else None
    train = T.sample(train, cfg.sample, cfg.seed, cfg.multi_label)
    if test is not None:  # a quick look at the test score: torch on a CPU scores ~75 reviews/s
        test = T.sample(test, cfg.test_sample, cfg.seed, cfg.multi_label)
    if cfg.valid:
        valid = D.read_labelled(cfg.valid, cfg.text_col, cfg.label_col)
    else:
        train, valid = T.split_valid(train, cfg.valid_frac, cfg.seed, cfg.multi_label)
    return train, valid, test


def prepare_out_dir(cfg: TrainConfig) -> Path:
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory; choose another path")
    has_run = out.is_dir() and any(out.iterdir())
    if cfg.resume:
        if not ckpt.step_checkpoints(out) and not (out / ckpt.CHECKPOINTS / "config.json").is_file():
            if (out / "bertclf.json").is_file():
                raise UserError(f"--resume: {out} holds a finished model, there is nothing to resume; choose a new "
                                f"directory or --overwrite to train it again")
            if has_run:
                raise UserError(f"--resume: {out} holds no checkpoint to resume from (the run stopped before its "
                                f"first checkpoint); start it again with --overwrite instead of --resume")
            raise UserError(f"--resume: {out} holds no checkpoint to resume from; start without --resume")
    elif has_run:
        if not cfg.overwrite:
            what = "a finished model" if (out / "bertclf.json").exists() else "files of another run"
            raise UserError(f"--out {out}: already holds {what}; choose a new directory, add --resume to "
                            f"continue it, or --overwrite to replace it")
    created = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
        for p in created:  # checked, not kept: a run that fails on its input leaves no empty folder behind
            p.rmdir()
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror}); choose a writable directory") from None
    return out


class Logger:
    """Prints the tutorial-style line and appends every logged value to DIR/train_log.jsonl."""

    def __init__(self, path: Path, main_process: bool, echo=print):
        self.path, self.main, self.echo = path, main_process, echo

    def __call__(self, line: str = "", **record):
        if not self.main:
            return
        if line:
            self.echo(line)
        if record:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int):
        """On resume: forget what was logged after the checkpoint we continue from."""
        if not self.main or not self.path.exists():
            return
        keep = []
        for ln in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(ln).get("step", 0) <= step:
                    keep.append(ln)
            except (ValueError, AttributeError):  # blank, or torn by the crash (power loss, full disk)
                continue
        from bertclf.files import atomic_file

        with atomic_file(self.path) as f:
            f.write("".join(k + "\n" for k in keep))


def train(cfg: TrainConfig, echo=print) -> dict:
    """Fine-tune as `cfg` says; returns the model card that is also written to DIR/bertclf.json."""
    from accelerate import Accelerator
    from accelerate.utils import gather_object, set_seed
    from transformers import get_linear_schedule_with_warmup

    t_start = time.time()
    validate_config(cfg)

    # ---- 0. device, precision, output directory ------------------------------------------------------------
    mixed = pick_precision(cfg.precision)
    accelerator = Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    main = accelerator.is_main_process
    say = echo if main else (lambda *a, **k: None)
    out = prepare_out_dir(cfg) if main else Path(cfg.out)
    accelerator.wait_for_everyone()
    on_gpu = device.type == "cuda"
    batch_size = cfg.batch_size or (256 if on_gpu else 32)
    lr = cfg.lr or (2e-4 if batch_size >= 256 else 5e-5 * math.sqrt(batch_size / 32))
    set_seed(cfg.seed, device_specific=True)  # + process index: ranks draw different dropout masks

    # ---- 1. data --------------------------------------------------------------------------------------------
    train_ds, valid_ds, test_ds = load_data(cfg, log=say)
    # [task] single- or multi-label: label map, encoding, loss, metrics (bertclf/task.py)
    task = T.make_task(cfg, train_ds.labels, train_ds.source, raw=D.NSMC_LABELS if cfg.data == "nsmc" else None)
    labels = task.labels
    y_train = task.encode(train_ds.labels, train_ds.source)
    y_valid = task.encode(valid_ds.labels, valid_ds.source or "validation")
    y_test = task.encode(test_ds.labels, test_ds.source) if test_ds else None
    if cfg.class_weights == "auto":
        task.set_class_weights(y_train)
    say(f"data: {len(train_ds)} train, {len(valid_ds)} validation"
        + (f", {len(test_ds)} test" if test_ds else "")
        + f" rows; labels {', '.join(labels.names)}"
        + (f"; dropped {train_ds.dropped_empty} empty train / {test_ds.dropped_empty if test_ds else 0} empty test rows"
           if cfg.data == "nsmc" or train_ds.dropped_empty else ""))

    # ---- 2. model and tokenizer (vocabulary trimmed to the training texts if asked) -------------------------
    base = resolve(cfg.model, log=say)
    cfg.trim_vocab = trims_vocab(cfg)  # [defaults] unset: on for the builtin models
    if cfg.trim_vocab:
        base = trimmed_base(base, out, train_ds.texts + valid_ds.texts, accelerator, say, reuse=cfg.resume)
    tokenizer = load_tokenizer(base)
    model = load_classifier(base, labels.id2label)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # ---- 3. tokenize once, up front -------------------------------------------------------------------------
    t0 = time.time()
    train_ids = encode(tokenizer, train_ds.texts, cfg.max_length)
    valid_ids = encode(tokenizer, valid_ds.texts, cfg.max_length)
    train_len = lengths(train_ids)
    say(f"tokenized in {time.time() - t0:.1f}s: mean {train_len.mean():.1f} tokens per training text, "
        f"{(train_len >= cfg.max_length).mean() * 100:.1f}% cut at --max-length {cfg.max_length}")

    # ---- 4. batches, optimizer, schedule --------------------------------------------------------------------
    eff_batch = batch_size * cfg.grad_accum  # rows per optimizer step on each process
    steps_per_epoch = len(epoch_batches(train_len, eff_batch, cfg.seed, 0, world_size=world, rank=rank))
    total_steps = math.ceil(steps_per_epoch * cfg.epochs)
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    log_every = cfg.log_every or max(1, min(500, total_steps // 20))
    eval_every = cfg.eval_every or steps_per_epoch
    say(f"model {cfg.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; device {device}"
        f" x{world}, precision {'fp32' if mixed == 'no' else mixed}; global batch {eff_batch * world} "
        f"(= {batch_size} per micro-batch x {cfg.grad_accum} accumulation x {world} processes), lr {lr:g}, "
        f"{total_steps} steps over {n_epochs} epoch(s)")

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "LayerNorm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "LayerNorm" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=lr, fused=on_gpu)  # fused: one kernel for all parameters
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup * total_steps), total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)

    # ---- 5. resume ------------------------------------------------------------------------------------------
    log = Logger(out / "train_log.jsonl", main, echo=say)
    run_args = asdict(cfg) | {"batch_size": batch_size, "lr": lr, "processes": world}
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_score": None, "best_step": None,
             "evals_without_improvement": 0, "n_micro": cfg.grad_accum, "samples_seen": 0, "tokens_seen": 0,
             "train_seconds": 0.0}
    if cfg.resume:
        found = ckpt.latest_checkpoint(out, log=say)
        if found is None:
            raise UserError(f"--resume: no complete checkpoint in {out / ckpt.CHECKPOINTS}; start without --resume")
        saved = json.loads((found / "trainer_state.json").read_text())["args"]
        if saved.get("processes", 1) != world:
            # Another process count is another global batch: another batch plan, step count and schedule.
            raise UserError(f"--resume: the run in {out} was trained by {saved.get('processes', 1)} process(es), "
                            f"this one has {world}; resume with the same number of processes")
        state = ckpt.load_checkpoint(found, accelerator.unwrap_model(model), optimizer, scheduler, rank=rank)
        state.pop("args")
        changed = [k for k in RESUME_KEYS if saved.get(k) != run_args.get(k)]
        if changed:
            raise UserError(f"--resume: {', '.join('--' + k.replace('_', '-') for k in changed)} differ from the "
                            f"run in {out}; repeat its settings (see {found / 'trainer_state.json'})")
        log.truncate_after(state["step"])
        say(f"resumed from {found.name}: step {state['step']}, epoch {state['epoch'] + 1}")
    elif main:
        (out / "train_log.jsonl").unlink(missing_ok=True)
        # --overwrite: the old run's card (the "finished" mark) and checkpoints go, so that neither can pass for
        # this run's: retention keeps the highest step numbers, and --resume would pick the old run's newest.
        (out / "bertclf.json").unlink(missing_ok=True)
        for old in ckpt.step_checkpoints(out) + [out / ckpt.CHECKPOINTS / ckpt.BEST]:
            shutil.rmtree(old, ignore_errors=True)

    # ---- 6. the loop ----------------------------------------------------------------------------------------
    def evaluate_valid() -> dict:
        # Each process scores every world-th row; the shares are gathered and the padding rows that make
        # them equal in size are dropped, so the metrics count exactly the validation rows.
        share = np.arange(rank, len(valid_ids), world)
        n_max = math.ceil(len(valid_ids) / world)
        padded = np.concatenate([share, share[:1].repeat(n_max - len(share))]) if len(share) else np.zeros(n_max, int)
        logits = predict_logits(accelerator.unwrap_model(model), [valid_ids[i] for i in padded], pad_id,
                                cfg.eval_batch_size, device, autocast_dtype=autocast_dtype)
        logits = torch.from_numpy(logits).to(device)
        if world > 1:
            logits = accelerator.gather(logits)
        gathered = logits.cpu().numpy().reshape(world, n_max, -1)
        full = np.zeros((len(valid_ids), gathered.shape[-1]), dtype=np.float32)
        for r in range(world):
            rows = np.arange(r, len(valid_ids), world)
            full[rows] = gathered[r, :len(rows)]
        return task.validation_report(y_valid, full)  # [task] multi-label: thresholds tuned here

    def save_checkpoint():
        # The running log window is part of the state, so a resumed run logs exactly the same numbers.
        state["window"] = [accelerator.reduce(sum_loss, "sum").item(), accelerator.reduce(sum_correct, "sum").item(),
                           sum_rows]
        # Every rank draws its own dropout masks: keep each rank's RNG state, not only rank 0's.
        rank_rngs = gather_object([ckpt.rng_state()]) if world > 1 else None
        if main:
            ckpt.save_checkpoint(out, state["step"], accelerator.unwrap_model(model), optimizer, scheduler,
                                 state | {"args": run_args}, keep=cfg.keep_checkpoints, rank_rngs=rank_rngs)
        accelerator.wait_for_everyone()

    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed)
    model.train()
    progress = make_progress(total_steps, state["step"], main)
    sum_loss = torch.zeros((), device=device)   # accumulated on the device: no sync per step
    sum_correct = torch.zeros((), device=device)
    sum_rows, window_start, window_samples, window_tokens = 0, time.time(), 0, 0
    if "window" in state:  # resumed mid-window: continue its sums (already reduced over processes)
        sum_loss += state["window"][0] / world
        sum_correct += state["window"][1] / world
        sum_rows = state["window"][2]
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    # With several DDP processes the out-of-memory back-off must be agreed on before the gradient all-reduce
    # (a rank that retried alone would leave the others waiting in it): one flag all-reduce per step.
    agreed_backoff = world > 1 and accelerator.distributed_type in DDP_TYPES
    stop_reason = None
    while state["step"] < total_steps and stop_reason is None:
        epoch = state["epoch"]
        batches = epoch_batches(train_len, eff_batch, cfg.seed, epoch, world_size=world, rank=rank)
        for rows in batches[state["batch_in_epoch"]:]:
            # One optimizer step over `rows`, in n_micro micro-batches. Each micro-batch's mean loss is
            # weighted by its share of rows, so the gradient equals the whole batch's mean.
            while True:
                step_loss, step_correct = torch.zeros((), device=device), torch.zeros((), device=device)
                step_nonfinite = torch.zeros((), dtype=torch.bool, device=device)
                out_of_memory = False
                try:
                    micro = split_micro(rows, state["n_micro"])
                    for i, part in enumerate(micro):
                        batch = {k: v.to(device, non_blocking=True)
                                 for k, v in collate(train_ids, part, pad_id, y_train).items()}
                        # DDP all-reduces gradients inside the last backward; with several processes that waits
                        # until the OOM check below has passed on every rank (agreed_backoff).
                        sync = i == len(micro) - 1 and not agreed_backoff
                        y_part = batch.pop("labels")  # [task] the loss is the task's (class weights, BCE)
                        with _null() if sync else accelerator.no_sync(model):
                            outputs = model(**batch)
                            loss = task.loss(outputs.logits, y_part)
                            accelerator.backward(loss * (len(part) / len(rows)))
                        ckpt.fault_point("oom", state["step"] + 1, rank)  # test hook (BERTCLF_TEST_OOM_AT); inert
                        step_loss += loss.detach().float() * len(part)
                        step_correct += task.correct(outputs.logits.detach(), y_part)
                        step_nonfinite |= ~torch.isfinite(loss.detach())
                except torch.OutOfMemoryError:
                    out_of_memory = True
                outputs = batch = loss = None  # free this attempt's activations before a retry
                if agreed_backoff:  # every rank learns whether any rank ran out of memory: all retry together
                    out_of_memory = any_rank(out_of_memory, device)
                elif world > 1 and out_of_memory:
                    # DeepSpeed/FSDP/...: the other ranks may already wait in a collective; stop with one line.
                    raise UserError(f"CUDA out of memory on process {rank}: outside plain DDP (DeepSpeed, FSDP) "
                                    f"the automatic micro-batch back-off is off; rerun with --grad-accum {2 * cfg.grad_accum} "
                                    f"and --batch-size {max(1, batch_size // 2)}")
                if not out_of_memory:
                    if agreed_backoff:
                        all_reduce_gradients(model, world)
                    break
                # The tutorial's author was stuck at batch 2: instead, halve the micro-batch and accumulate
                # twice as many; the effective batch (and so the recipe) is unchanged.
                optimizer.zero_grad(set_to_none=True)
                if on_gpu:
                    torch.cuda.empty_cache()
                if state["n_micro"] >= eff_batch:
                    raise UserError("CUDA out of memory even with one row per micro-batch; lower --max-length "
                                    "or use a smaller model")
                state["n_micro"] *= 2
                say(f"CUDA out of memory{' on a process' if world > 1 else ''}: micro-batch now "
                    f"{math.ceil(eff_batch / state['n_micro'])} rows x {state['n_micro']} accumulation steps"
                    f"{' on every process' if world > 1 else ''} (effective batch unchanged)")
            sum_loss += step_loss  # only the attempt that succeeded counts
            sum_correct += step_correct
            nonfinite |= step_nonfinite
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            state["batch_in_epoch"] += 1
            sum_rows += len(rows)
            n_tok = int(train_len[rows].sum())
            state["samples_seen"] += len(rows) * world
            state["tokens_seen"] += n_tok * world
            window_samples += len(rows) * world
            window_tokens += n_tok * world
            progress.update(1)
            step = state["step"]
            ckpt.pause_point("step", step)  # test hook (BERTCLF_TEST_PAUSE_AT); inert otherwise

            if step % log_every == 0 or step == total_steps:
                if bool(accelerator.reduce(nonfinite.float(), "sum") > 0):  # checked here, not every step: a sync
                    raise UserError(f"training diverged: the loss became NaN/inf before step {step}; lower --lr "
                                    f"(now {lr:g}) or use --precision fp32; the last checkpoint is intact")
                elapsed = time.time() - window_start
                state["train_seconds"] += elapsed
                loss = accelerator.reduce(sum_loss, "sum").item() / (sum_rows * world)
                acc = accelerator.reduce(sum_correct, "sum").item() / (sum_rows * world)
                sps, tps = window_samples / max(elapsed, 1e-9), window_tokens / max(elapsed, 1e-9)
                log(f"[Epoch {epoch + 1}/{n_epochs}] step {step} -> loss {loss:.4f}, acc {acc:.4f} "
                    f"({sps:.0f} samples/s)",
                    step=step, epoch=epoch + state["batch_in_epoch"] / len(batches), loss=loss, acc=acc,
                    lr=scheduler.get_last_lr()[0], samples_per_s=sps, tokens_per_s=tps,
                    elapsed_s=time.time() - t_start)
                progress.set_postfix(loss=f"{loss:.3f}", samples_s=f"{sps:.0f}")
                sum_loss.zero_(), sum_correct.zero_()
                sum_rows, window_start, window_samples, window_tokens = 0, time.time(), 0, 0

            epoch_end = state["batch_in_epoch"] == len(batches)
            if epoch_end:
                state["epoch"] += 1
                state["batch_in_epoch"] = 0
            if step % eval_every == 0 or step == total_steps:
                t_eval = time.time()
                rep = evaluate_valid()
                ckpt.pause_point("eval", step)  # test hook (BERTCLF_TEST_PAUSE_AT); inert otherwise
                score = task.score(rep)  # [task] --metric
                improved = state["best_score"] is None or score > state["best_score"]
                if improved:
                    state.update(best_score=score, best_step=step, evals_without_improvement=0)
                    if main:
                        ckpt.save_best(out, accelerator.unwrap_model(model), {"step": step, "valid": rep})
                else:
                    state["evals_without_improvement"] += 1
                log(f"validation @ step {step}: {task.metric} {score:.4f}, accuracy {rep['accuracy']:.4f}, "
                    f"macro-F1 {rep['macro_f1']:.4f}"
                    + (" (best so far)" if improved else f" (best {state['best_score']:.4f} @ step {state['best_step']})"),
                    step=step, epoch=step / steps_per_epoch, valid_accuracy=rep["accuracy"], valid_macro_f1=rep["macro_f1"],
                    valid_score=score,
                    valid_loss=None, best=improved)
                window_start += time.time() - t_eval  # evaluation time is not training throughput
                if cfg.patience and state["evals_without_improvement"] >= cfg.patience:
                    stop_reason = f"early stop: no improvement in {cfg.patience} evaluation(s)"
            if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0) and step < total_steps:
                if bool(accelerator.reduce(nonfinite.float(), "sum") > 0):  # never checkpoint a diverged model
                    raise UserError(f"training diverged: the loss became NaN/inf before step {step}; lower --lr; "
                                    f"the last checkpoint is intact")
                save_checkpoint()
            if step >= total_steps or stop_reason or epoch_end:
                break
    progress.close()
    if stop_reason:
        say(stop_reason)

    # ---- 7. the best model, test report, model card ---------------------------------------------------------
    unwrapped = accelerator.unwrap_model(model)
    best = ckpt.load_best(out, unwrapped) if main else None
    card = {}
    if main:
        test_rep = None
        valid_logits = predict_logits(unwrapped, valid_ids, pad_id, cfg.eval_batch_size, device,
                                      autocast_dtype=autocast_dtype)
        task.validation_report(y_valid, valid_logits)  # [task] the best model's thresholds (multi-label)
        preds = {"labels": np.array(labels.names), "valid_y": y_valid, "valid_probs": task.probs(valid_logits),
                 "valid_tokens": lengths(valid_ids), "valid_chars": np.array([len(t) for t in valid_ds.texts])}
        if test_ds is not None:
            t0 = time.time()
            test_ids = encode(tokenizer, test_ds.texts, cfg.max_length)
            test_logits = predict_logits(unwrapped, test_ids, pad_id, cfg.eval_batch_size, device,
                                         autocast_dtype=autocast_dtype)
            test_rep = task.report(y_test, test_logits)
            test_rep["seconds"] = time.time() - t0
            preds |= {"test_y": y_test, "test_probs": task.probs(test_logits), "test_tokens": lengths(test_ids),
                      "test_chars": np.array([len(t) for t in test_ds.texts])}
        save_predictions(out / PREDICTIONS, preds)
        wall = time.time() - t_start
        card = {
            "bertclf_version": __version__,
            "task": "text-classification",
            "base_model": cfg.model,
            "labels": labels.names,
            "classification": task.card(),  # [task] single/multi-label, label values, class weights, thresholds
            "max_length": cfg.max_length,
            "args": run_args,
            "data": {"train": train_ds.summary(), "valid": valid_ds.summary(),
                     "test": test_ds.summary() if test_ds else None, "text_col": cfg.text_col,
                     "label_col": cfg.label_col},
            "metrics": {"valid": best["valid"] if best else None, "test": test_rep},
            "training": {"steps": state["step"], "best_step": state["best_step"], "epochs": state["step"] / steps_per_epoch,
                         "stop_reason": stop_reason or "finished", "wall_time_s": wall,
                         "train_seconds": state["train_seconds"],
                         "samples_per_s": state["samples_seen"] / max(state["train_seconds"], 1e-9),
                         "tokens_per_s": state["tokens_seen"] / max(state["train_seconds"], 1e-9),
                         "device": device_name(device), "processes": world,
                         "precision": "fp32" if mixed == "no" else mixed, "global_batch": eff_batch * world},
            "versions": versions(),
        }
        task.configure(unwrapped.config)  # [task] id2label, label2id, problem_type
        ckpt.save_model_dir(out, unwrapped, tokenizer, card)
        shutil.rmtree(out / ckpt.CHECKPOINTS, ignore_errors=True)  # finished: the final model is the best one
        try:  # the pictures are a bonus: never fail a finished run over them
            from bertclf.report import write_report

            say(f"report: {write_report([str(out)])}")
        except Exception as e:  # noqa: BLE001
            say(f"report not written: {e}")
        if test_rep:
            say(f"test {task.metric} {task.score(test_rep):.4f} (accuracy {test_rep['accuracy']:.4f}, macro-F1 "
                f"{test_rep['macro_f1']:.4f}) on {test_rep['n']} rows; "
                f"model saved to {out} in {wall / 60:.1f} min")
        else:
            say(f"best validation {task.metric} {state['best_score']:.4f}; model saved to {out} in {wall / 60:.1f} min")
    accelerator.wait_for_everyone()
    return card


PREDICTIONS = "eval_predictions.npz"  # the final model's validation/test probabilities, for reports


def save_predictions(path: Path, arrays: dict) -> None:
    from bertclf.files import atomic_file

    with atomic_file(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def trimmed_base(base: str, out: Path, texts: list[str], accelerator, say, reuse: bool = False) -> str:
    """Trim the vocabulary to the pieces the training texts use (once per run; reused on resume only: an
    --overwrite run may train on other texts)."""
    from bertclf.vocab_trim import trim_vocab

    target = out / ckpt.CHECKPOINTS / "base-model"
    if accelerator.is_main_process and not (reuse and (target / "config.json").is_file()):
        trim_vocab(base, texts, target, log=say)
    accelerator.wait_for_everyone()
    return str(target)


def any_rank(flag: bool, device) -> bool:
    """True on every process if `flag` is true on any (a collective: every rank must call it)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t)
    return bool(t.item() > 0)


def all_reduce_gradients(model, world: int, bucket_elems: int = 1 << 24) -> None:
    """Average the gradients over processes, as DDP's backward hooks would, in flat buckets of <= 16M values."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:  # unused on this rank: it contributes zeros (all ranks need the same buckets; unlike
            p.grad = torch.zeros_like(p)  # DDP, a parameter no rank used gets a zero gradient, not None)
    start = 0
    while start < len(params):
        end, size, dtype = start, 0, params[start].grad.dtype
        while end < len(params) and params[end].grad.dtype == dtype and (size == 0 or size + params[end].numel()
                                                                         <= bucket_elems):
            size += params[end].numel()
            end += 1
        grads = [p.grad for p in params[start:end]]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        start = end


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def make_progress(total: int, done: int, main: bool):
    from tqdm.auto import tqdm

    disable = (not main) or bool(os.environ.get("BERTCLF_NO_PROGRESS")) or None  # None: off when not a TTY
    return tqdm(total=total, initial=done, unit="step", disable=disable, dynamic_ncols=True, leave=False)


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def versions() -> dict:
    import accelerate
    import transformers

    return {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "bertclf": __version__}
