"""Which precision to train and predict in, for the device at hand."""
from __future__ import annotations

import torch

from bertclf.errors import UserError


def pick_precision(requested: str) -> str:
    """Accelerate's mixed_precision name: bf16 where the GPU has it, fp16 on older GPUs, none on CPU."""
    if requested == "fp32":
        return "no"
    if requested in ("bf16", "fp16"):
        if not torch.cuda.is_available():
            raise UserError(f"--precision {requested}: needs a CUDA GPU; use --precision fp32 (or auto) on CPU")
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"
