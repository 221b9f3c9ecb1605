"""Compiled inference (eval / predict / serve --compile): the training step's static shapes for scoring.

Each length-sorted batch is padded to a fixed shape: its width rounded up to one of static_widths(max_length)
(16, 24, 32, 48, 64, 96, 128 at 128 tokens), its rows up to the next power of two, at most the batch size (so
eval and predict, whose batches are full but the last, compile about one shape per width; serve's micro-batches
of 1 to --max-batch texts at most 1 + log2(max-batch) row counts per width). Padding rows (one attended pad token
each) and positions are masked and their outputs dropped, so the logits are eager's within float rounding.
One graph per (rows, width); torch._dynamo's recompile limit is raised to that bound, so no shape falls back to
eager. On CUDA each graph is also captured as a CUDA graph (mode reduce-overhead): one launch per batch.
"""
from __future__ import annotations

import math

from bertclf.errors import UserError
from bertclf.train.compiled import CHOICES, CompiledForward, wants_compile


def compiled_inference(model, max_length: int, device, requested: str, backend: str = "torch"):
    """The model's compiled forward for scoring, or None where `requested` (auto | on | off) resolves to off.
    auto: on for CUDA, off on CPUs (compiling costs tens of seconds per shape there: docs/compile.md)."""
    if requested not in CHOICES:
        raise UserError(f"--compile: must be auto, on or off, got {requested!r}")
    if backend != "torch":
        if requested == "on":
            raise UserError("--compile on: this model is an ONNX export, run by onnxruntime; drop --compile or use "
                            "the trained (torch) directory")
        return None
    if not wants_compile(requested, device):
        return None
    return CompiledScoring(model, max_length, device)


class CompiledScoring(CompiledForward):
    """CompiledForward for scoring: rows padded to a power of two (at most the batch), no training world."""

    def __init__(self, model, max_length: int, device, batch_size: int = 64):
        super().__init__(model, model, max_length, batch_size, device, world=1)

    def shape(self, rows: int, batch_size: int | None = None) -> dict:
        """collate()'s static-shape arguments for a batch of `rows` rows out of batches of `batch_size`."""
        batch_size = max(batch_size or rows, rows)
        self.allow(batch_size)
        return {"widths": self.widths, "pad_rows_to": min(batch_size, 1 << (rows - 1).bit_length())}

    def allow(self, batch_size: int) -> None:
        """Raise torch._dynamo's recompile limit to this batch size's bound: widths x (1 + log2(batch))."""
        import torch

        bound = len(self.widths) * (1 + math.ceil(math.log2(max(batch_size, 1))))
        dynamo = torch._dynamo.config
        dynamo.recompile_limit = max(dynamo.recompile_limit, bound)
        dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, bound)
