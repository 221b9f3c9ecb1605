"""Which precision to train and predict in, for the device at hand.

auto: bf16 autocast on GPUs that have it (fp16 on older GPUs) and on CPUs that multiply bf16 natively (AMX,
AVX-512 BF16: bertclf.cpu); fp32 on other CPUs, where bf16 is emulated and slower than fp32. bf16 can be
forced on any CPU (slow without native support, but it runs: that is how it is tested on AVX2 machines).
fp16 autocast needs a GPU (CPU fp16 kernels are slow, and fp16 training needs loss scaling).
bf16-weights (training only): the model held in bf16, no autocast, fp32 master weights in the optimizer
(bertclf/train/master_weights.py); scoring during training runs in bf16 autocast, as bf16's does.
"""
from __future__ import annotations

import torch

from bertclf import cpu
from bertclf.errors import UserError

CHOICES = ("auto", "fp32", "bf16", "fp16", "bf16-weights")
INFERENCE_CHOICES = ("auto", "fp32", "bf16")


def pick_precision(requested: str) -> str:
    """The training precision: Accelerate's mixed_precision name ("no", "bf16", "fp16"), in which Accelerate
    autocasts the forward pass, on a CPU too (Accelerator(mixed_precision="bf16", cpu=True)); or "bf16-weights"
    (accelerate_mixed: "no", no autocast)."""
    _check(requested, CHOICES, "--precision")
    on_gpu = torch.cuda.is_available()
    if requested == "fp32":
        return "no"
    if requested == "bf16-weights":
        if on_gpu and not torch.cuda.is_bf16_supported():
            raise UserError("--precision bf16-weights: this GPU has no bf16; use --precision fp16 or auto")
        return requested
    if requested == "fp16" and not on_gpu:
        raise UserError("--precision fp16: needs a CUDA GPU; on a CPU use --precision bf16, fp32 or auto")
    if requested in ("bf16", "fp16"):
        if requested == "bf16" and on_gpu and not torch.cuda.is_bf16_supported():
            raise UserError("--precision bf16: this GPU has no bf16; use --precision fp16 or auto")
        return requested
    if on_gpu:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu.native_bf16() else "no"


def autocast_dtype(mixed: str):
    """The torch.autocast dtype of scoring for a training precision (pick_precision's); None for fp32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "bf16-weights": torch.bfloat16}.get(mixed)


def accelerate_mixed(mixed: str) -> str:
    """Accelerate's mixed_precision for a training precision: bf16-weights trains without autocast."""
    return "no" if mixed == "bf16-weights" else mixed


def inference_dtype(requested: str, device) -> torch.dtype | None:
    """The autocast dtype for predict/eval/serve on `device` (None: fp32). auto: bf16 where the device
    multiplies it natively (a bf16 GPU, an AMX / AVX-512 BF16 CPU), fp32 elsewhere."""
    _check(requested, INFERENCE_CHOICES, "--precision")
    device = torch.device(device)
    if requested == "fp32":
        return None
    if requested == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError("--precision bf16: this GPU has no bf16; use --precision fp32 or auto")
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and cpu.native_bf16() else None


def cast_for_cpu_inference(model, dtype) -> None:
    """Store the whole model in `dtype` once, in place; it still runs under autocast(dtype). Held whole, its
    activations stay bf16 from the embeddings to the head. With only the nn.Linear weights in bf16 (the way
    before), every product cast its fp32 input and every residual add went back to fp32: on the `make nsmc`
    model, 2 AMX cores, benchmarks/inference/engines.py, that ran 2.47x fp32's texts/s, held whole 2.57-2.72x on 2,000
    reviews and 2.85x at 99.80% label agreement on 9,999 (benchmarks/RESULTS.md). Either way no call re-casts
    the ~20M weights, which at batch 1 cost more than bf16 saved."""
    model.to(dtype)


def precision_name(dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def _check(requested: str, choices: tuple[str, ...], flag: str) -> None:
    if requested not in choices:
        raise UserError(f"{flag} {requested}: must be one of {', '.join(choices)}")
