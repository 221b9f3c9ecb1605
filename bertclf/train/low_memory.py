"""--low-memory: a training process whose peak memory is the model, its optimizer state and one layer's
activations, not every layer's.

Where a CPU run's memory goes (me5-small trimmed to 6k pieces, batch 32 x 128 tokens, bf16 autocast; AMD EPYC,
2 cores): ~0.5 GB for the interpreter, torch and the model, ~0.4 GB for gradients and AdamW's two moments, and
~1.9 GB for the activations the backward pass needs, all 12 layers' of them at once. glibc keeps most of what is
freed after a step in its heap (its mmap threshold rises to the largest block freed), which adds ~0.5 GB more.
So the peak follows the batch's tokens, not the number of training rows.

Two remedies, neither of which changes a number the run computes:
  * gradient checkpointing (non-reentrant, RNG state preserved): each layer's forward runs again in the backward
    pass with the same dropout masks, so losses and gradients are bit-identical (tests/train/test_low_memory.py);
    only the boundary hidden states are kept. Costs one more forward pass per step.
  * M_MMAP_THRESHOLD fixed at 1 MiB (glibc only): tensor buffers of a MiB or more are mapped and unmapped, so
    memory freed after a step goes back to the OS instead of staying in the heap.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20


def use_low_memory(model) -> list[str]:
    """Turn the remedies on for this model (and this process's allocator); returns what was turned on."""
    done = []
    if getattr(model, "supports_gradient_checkpointing", False):
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        done.append("gradient checkpointing")
    if fix_mmap_threshold():
        done.append(f"allocations of {MMAP_THRESHOLD_BYTES >> 20} MiB or more returned to the OS when freed")
    return done


def fix_mmap_threshold(nbytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """glibc's mallopt(M_MMAP_THRESHOLD, nbytes); False where the C library is not glibc (or refuses)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        if not hasattr(libc, "gnu_get_libc_version"):  # musl, macOS: other allocators, other parameters
            return False
        return bool(libc.mallopt(M_MMAP_THRESHOLD, nbytes))
    except (OSError, AttributeError):
        return False


def return_freed_memory() -> bool:
    """Hand back to the OS what streaming a large file left free in the heaps (glibc's malloc_trim, and
    pyarrow's memory pool, which keeps freed blocks for reuse): measured ~120 MB of a cold 1M-row run's peak
    that a warm run does not have. False where the C library is not glibc."""
    try:
        import pyarrow

        pyarrow.default_memory_pool().release_unused()
    except ImportError:
        pass
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        if not hasattr(libc, "gnu_get_libc_version"):
            return False
        return bool(libc.malloc_trim(0) or True)
    except (OSError, AttributeError):
        return False
