"""Compiled training steps (--compile): static shapes, each compiled once by torch.compile.

torch.compile specialises a graph to its input shapes. Length-bucketed batches have a new width almost every
step, so the compiled step pads each micro-batch to a few fixed shapes: its width rounded up to one of
static_widths(--max-length) (16, 24, 32, 48, 64, 96, 128 at the default 128) and its rows padded to the full
micro-batch (the epoch's last, shorter batch too). Padding rows and positions are masked: only the real rows'
logits reach the loss, so the loss is the eager step's within float rounding. One graph per (rows, width): at
most len(widths) graphs per micro-batch size, and the micro-batch size changes only on an out-of-memory back-off
(each adds at most len(widths) more). torch._dynamo's recompile limit is raised to that bound, so no shape falls
back to eager. On CUDA a single process also captures each graph as a CUDA graph (mode reduce-overhead).

The attention mask is handed to the model ready-made (bertclf.models.forward.prepared_mask) where the model takes
it so; nothing in the step waits on the host.
"""
from __future__ import annotations

import contextlib
import math
import time

import torch

from bertclf.data.batches import static_widths
from bertclf.errors import UserError
from bertclf.models.forward import prepared_mask, takes_prepared_mask

CHOICES = ("auto", "on", "off")


def wants_compile(requested: str, device) -> bool:
    """--compile auto: on for CUDA; off on a CPU, where compiling costs more than it saves (2 AVX-512 BF16 cores:
    the compiled me5-small step 1.03x eager's speed, after 90 s of compiling per shape: docs/compile.md)."""
    if requested not in CHOICES:
        raise UserError(f"--compile: must be auto, on or off, got {requested!r}")
    return requested == "on" or (requested == "auto" and torch.device(device).type == "cuda")


def compiled_forward(run) -> CompiledForward | None:
    """The run's compiled forward, or None where --compile resolves to off."""
    if not wants_compile(run.cfg.compile, run.accelerator.device):
        return None
    return CompiledForward(run.learner.model, run.unwrapped(), run.cfg.max_length, run.plan.eff_batch,
                           run.accelerator.device, run.world)


class CompiledForward:
    """The model's forward, compiled once per static shape; the batches' padding to those shapes."""

    def __init__(self, model, unwrapped, max_length: int, eff_batch: int, device, world: int):
        self.widths = static_widths(max_length)
        self.prepared_mask = takes_prepared_mask(unwrapped)
        # One graph per (rows, width); rows halve on each out-of-memory back-off, at most log2(eff_batch) times.
        bound = len(self.widths) * (1 + math.ceil(math.log2(max(eff_batch, 1))))
        dynamo = torch._dynamo.config
        dynamo.recompile_limit = max(dynamo.recompile_limit, bound)
        dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, bound)
        self.cuda_graphs = torch.device(device).type == "cuda" and world == 1  # CUDA graphs under DDP: not tried
        self.forward = torch.compile(model, dynamic=False, mode="reduce-overhead" if self.cuda_graphs else None)
        self.first_seconds: dict[tuple[int, int], float] = {}  # (rows, width) -> its first forward + backward

    def __call__(self, **batch):
        if self.cuda_graphs:  # a new training iteration: the previous graph's outputs are no longer read
            torch.compiler.cudagraph_mark_step_begin()
        return self.forward(**batch)

    def shape(self, micro_rows: int) -> dict:
        """collate()'s static-shape arguments for micro-batches of at most micro_rows rows."""
        return {"widths": self.widths, "pad_rows_to": micro_rows}

    def prepare(self, batch: dict) -> dict:
        if self.prepared_mask:
            batch["attention_mask"] = prepared_mask(batch["attention_mask"])
        return batch

    @contextlib.contextmanager
    def timed(self, batch: dict):
        """Time the forward and backward of a shape's first batch: its compiling (and one step's compute)."""
        key = tuple(batch["input_ids"].shape)
        if key in self.first_seconds:
            yield
            return
        t0 = time.perf_counter()
        yield
        if batch["input_ids"].is_cuda:
            torch.cuda.synchronize()
        self.first_seconds[key] = time.perf_counter() - t0

    def record(self) -> dict:
        """For the model card: the shapes (rows x tokens) this process compiled and their first steps' seconds."""
        return {"shapes": [f"{r}x{w}" for r, w in sorted(self.first_seconds)],
                "first_steps_s": round(sum(self.first_seconds.values()), 2), "widths": list(self.widths)}

    def summary(self) -> str:
        shapes = ", ".join(f"{r}x{w}" for r, w in sorted(self.first_seconds))
        return (f"torch.compile: {len(self.first_seconds)} shape(s) compiled (rows x tokens: {shapes or 'none'}), "
                f"{sum(self.first_seconds.values()):.1f} s in their first steps, compiling included")
