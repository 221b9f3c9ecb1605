"""Carry the GPU benchmark's inputs to a machine without network: NSMC (xz) and me5-small trimmed to NSMC.

The device machine gets the working tree (at most 64 MiB) and nothing else: no ../shared, no PyPI, no hub.

    python -m benchmarks.gpu.gpu_pack pack                  # here: writes .carry/gpu-inputs/ (~55 MB, git-ignored)
    python -m benchmarks.gpu.gpu_pack unpack --to /tmp/in   # there: /tmp/in/nsmc/ratings_*.txt, /tmp/in/model/
    python -m benchmarks.training.train_speed --gpu --data-dir /tmp/in/nsmc --model-dir /tmp/in/model --json $OUT/speed.json

The trimmed model is too big in fp32 to carry with the data (RESULTS.md, "GPU: one H200"): it travels as fp16
and is widened back to fp32 on unpacking. fp16 rounds the weights (relative error <= 2^-11):
fine for speed, and the same start for every variant, but not bit-identical to the fp32 conversion.
The NSMC files are checked against their SHA-256 on unpacking (the same checksums bertclf's reader uses).
"""
from __future__ import annotations

import argparse
import lzma
import os
import shutil
from pathlib import Path

from benchmarks.common import REPO, SHARED, nsmc, run

PACK = REPO / ".carry" / "gpu-inputs"
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def pack(data_dir: str | None) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from bertclf.data import dataset as D
    from bertclf.models.builtin import builtin_model_path
    from bertclf.io.files import atomic_dir
    from bertclf.models.vocab_trim import trim_vocab

    with atomic_dir(PACK) as tmp:
        (tmp / "nsmc").mkdir()
        for split, (name, _) in D.NSMC_FILES.items():
            with open(D.nsmc_path(split, data_dir, download=False), "rb") as src, \
                    lzma.open(tmp / "nsmc" / (name + ".xz"), "wb", preset=9) as dst:
                shutil.copyfileobj(src, dst)
        trimmed = tmp / "fp32"
        trim_vocab(str(builtin_model_path()), nsmc("train", data_dir).texts, trimmed)
        (tmp / "model").mkdir()
        for name in MODEL_FILES:
            if (trimmed / name).is_file():
                shutil.copy2(trimmed / name, tmp / "model" / name)
        weights = load_file(str(trimmed / "model.safetensors"))
        save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in weights.items()},
                  str(tmp / "model" / "model.fp16.safetensors"))
        shutil.rmtree(trimmed)
    total = sum(f.stat().st_size for f in PACK.rglob("*") if f.is_file())
    print(f"wrote {PACK}: {total / 2**20:.1f} MiB (the working tree that travels is capped at 64 MiB)")


def unpack(to: str) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from bertclf.data.dataset import NSMC_FILES
    from bertclf.io.files import sha256_file

    out = Path(to)
    (out / "nsmc").mkdir(parents=True, exist_ok=True)
    for name, sha in NSMC_FILES.values():
        target = out / "nsmc" / name
        with lzma.open(PACK / "nsmc" / (name + ".xz"), "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
        if sha256_file(target) != sha:
            raise SystemExit(f"{target}: SHA-256 mismatch; pack again")
    model = out / "model"
    model.mkdir(exist_ok=True)
    for f in (PACK / "model").iterdir():
        if f.name != "model.fp16.safetensors":
            shutil.copy2(f, model / f.name)
    weights = load_file(str(PACK / "model" / "model.fp16.safetensors"))
    save_file({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in weights.items()},
              str(model / "model.safetensors"))
    print(f"unpacked to {out}: nsmc/ (checksums ok), model/ (fp32)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["pack", "unpack"])
    p.add_argument("--data-dir", default=os.environ.get("BERTCLF_DATA_DIR", str(SHARED / "nsmc")))
    p.add_argument("--to", default="/tmp/bertclf-gpu-inputs")
    a = p.parse_args()
    pack(a.data_dir) if a.action == "pack" else unpack(a.to)


if __name__ == "__main__":
    run(main)
