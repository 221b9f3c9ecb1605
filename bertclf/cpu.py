"""What this CPU's matrix engines can do: native bf16 (AMX, AVX-512 BF16), fast int8 dot products (VNNI, AMX).

Asked once per process, from torch's own runtime check (torch.cpu.get_capabilities, cpuinfo underneath);
/proc/cpuinfo's flags when torch has no such check. bf16 autocast pays off only where the CPU multiplies bf16
natively (measured on a 2-core Xeon with AMX: 2.6x fp32 at inference, 1.6x in training); elsewhere oneDNN
emulates it and it is slower than fp32. Int8 products run ~2x fp32 on AVX2 (vpmaddubsw, which saturates unless
weights keep 7 bits) and 4x or more with VNNI/AMX (no saturation: full 8-bit weights are safe).
"""
from __future__ import annotations

import functools
import platform

# Feature names as torch.cpu.get_capabilities() spells them, and as /proc/cpuinfo's flags spell them.
_BF16 = ("amx_bf16", "avx512_bf16")
_INT8 = ("amx_int8", "avx512_vnni", "avx_vnni")
_SHOWN = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512_f", "avx2")
_LABELS = {"amx_bf16": "AMX-BF16", "amx_int8": "AMX-INT8", "avx512_bf16": "AVX512-BF16", "avx512_vnni": "AVX512-VNNI",
           "avx_vnni": "AVX-VNNI", "avx512_f": "AVX512", "avx2": "AVX2", "bf16": "BF16", "i8mm": "I8MM",
           "dot": "DOTPROD", "sve_bf16": "SVE-BF16"}
_PROC_FLAGS = {"avx512f": "avx512_f", "asimddp": "dot", "bf16": "bf16", "i8mm": "i8mm", "svebf16": "sve_bf16"}
_ARM_BF16 = ("bf16", "sve_bf16")
_ARM_INT8 = ("i8mm", "dot")


@functools.lru_cache(maxsize=None)
def features() -> frozenset[str]:
    """The matrix-relevant features this CPU has, in torch's spelling (e.g. amx_bf16, avx512_vnni, avx2)."""
    caps = _torch_capabilities()
    if caps is None:
        return _proc_cpuinfo_features()
    return frozenset(k for k, v in caps.items() if v is True)


@functools.lru_cache(maxsize=None)
def source() -> str:
    return "torch.cpu.get_capabilities" if _torch_capabilities() is not None else "/proc/cpuinfo"


def native_bf16() -> bool:
    """The CPU multiplies bf16 in hardware (AMX-BF16 or AVX-512 BF16; BF16 on Arm)."""
    f = features()
    return any(x in f for x in _BF16 + _ARM_BF16)


def fast_int8() -> bool:
    """The CPU has int8 dot-product instructions without saturation (VNNI, AMX-INT8; I8MM/DOTPROD on Arm)."""
    f = features()
    return any(x in f for x in _INT8 + _ARM_INT8)


@functools.lru_cache(maxsize=None)
def model_name() -> str:
    """The CPU's marketing name, e.g. 'Intel(R) Xeon(R) Processor' (/proc/cpuinfo), else what platform says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model") and val.strip():
                    return val.strip()
    except OSError:
        pass
    caps = _torch_capabilities() or {}
    return str(caps.get("cpu_name") or platform.processor() or platform.machine() or "unknown CPU")


def feature_labels() -> list[str]:
    """The features worth naming, most capable first: ['AMX-BF16', 'AMX-INT8', 'AVX512-BF16', ...]."""
    f = features()
    shown = [x for x in _SHOWN + _ARM_BF16 + _ARM_INT8 if x in f]
    if "avx512_f" in shown:  # AVX2 goes without saying on an AVX-512 CPU
        shown = [x for x in shown if x != "avx2"]
    return [_LABELS[x] for x in shown] or ["no AVX2"]


def describe(threads: int | None = None) -> str:
    """One line for bertclf.json's device field and benchmark output:
    'cpu: Intel(R) Xeon(R) Processor (AMX-BF16, AMX-INT8, AVX512-BF16, AVX512-VNNI; 2 threads)'."""
    import torch

    threads = threads or torch.get_num_threads()
    return f"cpu: {model_name()} ({', '.join(feature_labels())}; {threads} thread{'s' if threads != 1 else ''})"


def summary() -> dict:
    """JSON-ready: model, features, what bf16 and int8 will do here, and where the answer came from."""
    return {"model": model_name(), "features": feature_labels(), "native_bf16": native_bf16(),
            "fast_int8": fast_int8(), "source": source()}


@functools.lru_cache(maxsize=None)
def _torch_capabilities() -> dict | None:
    try:
        import torch

        caps = torch.cpu.get_capabilities()
    except (ImportError, AttributeError, RuntimeError):
        return None
    return dict(caps) if caps else None


def _proc_cpuinfo_features() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(_PROC_FLAGS.get(x, x) for x in val.split())
    except OSError:
        pass
    return frozenset()
