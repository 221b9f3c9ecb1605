"""Stepper: the gradients of one optimizer step, over micro-batches, surviving CUDA out-of-memory.

Each micro-batch's mean loss is weighted by its share of the step's rows, so the accumulated gradient equals
the whole batch's mean. On out-of-memory the micro-batch is halved and the step retried (the effective batch,
and so the recipe, is unchanged). With several plain-DDP processes every rank must take the same decision
before the gradient all-reduce (a rank that retried alone would leave the others waiting in it): the ranks
agree with one flag all-reduce per step, and the gradients are then averaged here instead of inside backward.
"""
from __future__ import annotations

import contextlib
import math

import torch

from bertclf.data.batches import collate, split_micro
from bertclf.train import rdrop
from bertclf.errors import UserError

# Accelerate's plain data-parallel (DDP) modes, where the loop can hold back the gradient all-reduce itself.
DDP_TYPES = ("MULTI_GPU", "MULTI_CPU", "MULTI_XPU", "MULTI_NPU", "MULTI_MLU", "MULTI_MUSA", "MULTI_HPU", "MULTI_SDAA")


class Stepper:
    def __init__(self, model, optimizer, accelerator, ids, labels, pad_id: int, eff_batch: int, grad_accum: int,
                 events, task, say=print, types=None, compiled=None, rdrop_alpha: float = 0.0):
        """task: bertclf.data.task.SingleLabel | MultiLabel, whose loss (class weights, BCE) and correct count apply;
        types: the rows' token type ids (sentence pairs) or None; compiled: a bertclf.train.compiled.CompiledForward
        (--compile): the forward that runs, and the static shapes its batches are padded to; rdrop_alpha: --rdrop
        (bertclf/train/rdrop.py), 0 for off."""
        self.model, self.optimizer, self.acc, self.task = model, optimizer, accelerator, task
        self.ids, self.labels, self.pad_id, self.types = ids, labels, pad_id, types
        self.eff_batch, self.grad_accum, self.events, self.say = eff_batch, grad_accum, events, say
        self.compiled, self.forward = compiled, compiled or model
        self.device, self.world, self.rank = accelerator.device, accelerator.num_processes, accelerator.process_index
        self.agreed_backoff = self.world > 1 and accelerator.distributed_type in DDP_TYPES
        self.rdrop_alpha = rdrop_alpha

    def gradients(self, rows, state) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Backward over `rows` for step state.step + 1, gradients averaged over processes; returns the summed
        loss, correct predictions and non-finite-loss flag of the attempt that succeeded (tensors on device)."""
        while True:
            result = self._attempt(rows, state.n_micro, state.step + 1)
            out_of_memory = result is None
            if self.agreed_backoff:  # every rank learns whether any rank ran out of memory: all retry together
                out_of_memory = any_rank(out_of_memory, self.device)
            elif self.world > 1 and out_of_memory:
                # DeepSpeed/FSDP/...: the other ranks may already wait in a collective; stop with one line.
                micro = self.eff_batch // self.grad_accum
                raise UserError(f"CUDA out of memory on process {self.rank}: outside plain DDP (DeepSpeed, FSDP) "
                                f"the automatic micro-batch back-off is off; rerun with --grad-accum "
                                f"{2 * self.grad_accum} and --batch-size {max(1, micro // 2)}")
            if not out_of_memory:
                if self.agreed_backoff:
                    all_reduce_gradients(self.model, self.world)
                return result
            self._back_off(state)

    def _attempt(self, rows, n_micro: int, step: int):
        loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        try:
            micro = split_micro(rows, n_micro)
            for i, part in enumerate(micro):
                fed = rdrop.twice(part) if self.rdrop_alpha else part
                batch = {k: v.to(self.device, non_blocking=True) for k, v in self._collate(fed, n_micro).items()}
                # DDP all-reduces gradients inside the last backward; with agreed back-off we do it after.
                sync = i == len(micro) - 1 and not self.agreed_backoff
                y = batch.pop("labels")  # the loss is the task's (class weights, BCE), not the model's
                with self._timed(batch), contextlib.nullcontext() if sync else self.acc.no_sync(self.model):
                    logits = self.forward(**batch).logits[:len(fed)]  # the real rows (compiled: padding rows after)
                    part_loss = (rdrop.loss(self.task, logits, y, self.rdrop_alpha) if self.rdrop_alpha
                                 else self.task.loss(logits, y))
                    self.acc.backward(part_loss * (len(part) / len(rows)))
                self.events.on_backward(step, i, self.rank)
                loss += part_loss.detach().float() * len(part)
                correct += self.task.correct(logits[:len(part)].detach(), y[:len(part)])
                nonfinite |= ~torch.isfinite(part_loss.detach())
        except torch.OutOfMemoryError:
            return None  # this frame, and with it the attempt's activations, is freed before the retry
        return loss, correct, nonfinite

    def _collate(self, part, n_micro: int) -> dict:
        if self.compiled is None:
            return collate(self.ids, part, self.pad_id, self.labels, types=self.types)
        copies = 2 if self.rdrop_alpha else 1  # R-Drop feeds each row twice
        static = self.compiled.shape(copies * math.ceil(self.eff_batch / n_micro))  # each padded to the same rows
        return self.compiled.prepare(collate(self.ids, part, self.pad_id, self.labels, types=self.types, **static))

    def _timed(self, batch):
        return self.compiled.timed(batch) if self.compiled else contextlib.nullcontext()

    def _back_off(self, state) -> None:
        """Halve the micro-batch and accumulate twice as many: the effective batch, and so the recipe, stays."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if state.n_micro >= self.eff_batch:
            raise UserError("CUDA out of memory even with one row per micro-batch; lower --max-length "
                            "or use a smaller model")
        state.n_micro *= 2
        many = self.world > 1
        self.say(f"CUDA out of memory{' on a process' if many else ''}: micro-batch now "
                 f"{math.ceil(self.eff_batch / state.n_micro)} rows x {state.n_micro} accumulation steps"
                 f"{' on every process' if many else ''} (effective batch unchanged)")


def optimizer_step(accelerator, model, optimizer, scheduler, max_grad_norm: float) -> None:
    """After the gradients: clip their norm, step the weights and the schedule, clear the gradients."""
    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def any_rank(flag: bool, device) -> bool:
    """True on every process if `flag` is true on any (a collective: every rank must call it)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t)
    return bool(t.item() > 0)


def all_reduce_gradients(model, world: int, bucket_elems: int = 1 << 24) -> None:
    """Average the gradients over processes, as DDP's backward hooks would, in flat buckets of <= 16M values.
    (Hand-written: DDP offers no way to run its all-reduce after backward, which the agreed back-off needs.)"""
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
