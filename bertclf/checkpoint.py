"""Checkpoints and the final model directory, all written atomically.

A checkpoint is a folder `checkpoints/step-00000500/` holding model weights, optimizer, scheduler, RNG states
and the data position, plus `manifest.json` (SHA-256 of every file) written last. A folder appears whole
(built under a temporary name, then renamed) and is verified against its manifest before use, so a crash,
kill -9 or a truncated copy can only ever make us fall back to the previous checkpoint.

Crash tests stop a run at exact points with BERTCLF_TEST_PAUSE_AT (see `pause_point`); unset, it costs nothing.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from bertclf.files import atomic_dir, sha256_file, write_json

CHECKPOINTS = "checkpoints"
BEST = "best"
PAUSE_ENV = "BERTCLF_TEST_PAUSE_AT"
PAUSE_MARK = "bertclf-test: paused at"


def pause_point(name: str, step: int) -> None:
    """A test hook, inert unless the environment sets BERTCLF_TEST_PAUSE_AT=NAME:STEP.

    At that point of that step the process prints "bertclf-test: paused at NAME:STEP" on stderr and sleeps for
    good, so a crash test can SIGKILL it exactly there. The points:
      step:N              after optimizer step N, before its logging, validation and checkpoint (loop.py)
      eval:N              during the validation at step N: scored, best checkpoint not yet written (loop.py)
      best-write:N        inside the temporary folder of checkpoints/best, weights written, no manifest yet
      checkpoint-write:N  inside the temporary folder of checkpoints/step-N, weights and optimizer written,
                          no manifest yet
      checkpoint-saved:N  right after checkpoints/step-N is complete and older ones are pruned
    """
    want = os.environ.get(PAUSE_ENV)
    if want and want == f"{name}:{step}":
        print(f"{PAUSE_MARK} {name}:{step}", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)


OOM_ENV = "BERTCLF_TEST_OOM_AT"
_oom_done: set[str] = set()


def fault_point(name: str, step: int, rank: int) -> None:
    """A test hook, inert unless the environment sets BERTCLF_TEST_OOM_AT=RANK:STEP.

    Process RANK raises torch.OutOfMemoryError once, after the backward pass of the first micro-batch of
    optimizer step STEP (so that rank holds gradients the retry must drop), as a CUDA allocation would. The
    CPU test of the out-of-memory back-off (one process, and agreed across several) uses it. `name` is the
    point ("oom").
    """
    want = os.environ.get(OOM_ENV)
    key = f"{rank}:{step}"
    if want and name == "oom" and want == key and key not in _oom_done:
        _oom_done.add(key)
        raise torch.OutOfMemoryError(f"bertclf-test: simulated CUDA out of memory on process {rank} at step {step}")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _state_dict_for_file(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def _write_manifest(folder: Path, extra: dict) -> None:
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}
    write_json(folder / "manifest.json", {"files": files, **extra})


def verify(folder: Path) -> str | None:
    """None if the folder matches its manifest, else what is wrong."""
    man = folder / "manifest.json"
    if not man.is_file():
        return "no manifest.json (incomplete write)"
    try:
        files = json.loads(man.read_text())["files"]
    except (ValueError, KeyError):
        return "unreadable manifest.json"
    for name, digest in files.items():
        p = folder / name
        if not p.is_file():
            return f"{name} missing"
        if sha256_file(p) != digest:
            return f"{name} fails its checksum (truncated or corrupt)"
    return None


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, state: dict, keep: int = 2,
                    rank_rngs: list[dict] | None = None) -> Path:
    """Write checkpoints/step-N atomically, then drop all but the newest `keep` step checkpoints.

    rank_rngs: every process's RNG state (distributed runs), so each rank resumes with its own dropout stream."""
    root = Path(run_dir) / CHECKPOINTS
    target = root / f"step-{step:08d}"
    with atomic_dir(target) as tmp:
        save_file(_state_dict_for_file(model), str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        pause_point("checkpoint-write", step)
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        if rank_rngs and len(rank_rngs) > 1:
            torch.save(rank_rngs, tmp / "rng-ranks.pt")
        write_json(tmp / "trainer_state.json", state)
        _write_manifest(tmp, {"step": step})
    for old in step_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    pause_point("checkpoint-saved", step)
    return target


def step_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CHECKPOINTS
    return sorted(root.glob("step-[0-9]*")) if root.is_dir() else []


def latest_checkpoint(run_dir: Path, log=print) -> Path | None:
    """The newest checkpoint that passes its manifest; says which broken ones it skipped."""
    for ckpt in reversed(step_checkpoints(run_dir)):
        problem = verify(ckpt)
        if problem is None:
            return ckpt
        log(f"checkpoint {ckpt.name} is unusable ({problem}); falling back to the previous one")
    return None


def load_checkpoint(ckpt: Path, model, optimizer, scheduler, rank: int = 0) -> dict:
    """Restore weights, optimizer, schedule and this process's RNG state; return the trainer state."""
    model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
    per_rank = ckpt / "rng-ranks.pt"
    if per_rank.is_file():
        set_rng_state(torch.load(per_rank, weights_only=False)[rank])
    else:
        set_rng_state(torch.load(ckpt / "rng.pt", weights_only=False))
    return json.loads((ckpt / "trainer_state.json").read_text())


def save_best(run_dir: Path, model, info: dict) -> None:
    """checkpoints/best: the weights with the best validation score so far."""
    with atomic_dir(Path(run_dir) / CHECKPOINTS / BEST) as tmp:
        save_file(_state_dict_for_file(model), str(tmp / "model.safetensors"))
        pause_point("best-write", info.get("step"))
        write_json(tmp / "best.json", info)
        _write_manifest(tmp, {"step": info.get("step")})


def load_best(run_dir: Path, model) -> dict | None:
    best = Path(run_dir) / CHECKPOINTS / BEST
    if not best.is_dir() or verify(best) is not None:
        return None
    model.load_state_dict(load_file(str(best / "model.safetensors")))
    return json.loads((best / "best.json").read_text())


def save_model_dir(out_dir: Path, model, tokenizer, card: dict) -> None:
    """The final, standard Hugging Face directory (+ bertclf.json), each file replaced atomically.

    Weights and tokenizer are written to a temporary folder first and renamed into place; bertclf.json,
    written last, marks the directory complete.
    """
    out_dir = Path(out_dir)
    staging = out_dir / CHECKPOINTS / "final"
    with atomic_dir(staging) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    stale = out_dir / "bertclf.json"
    stale.unlink(missing_ok=True)
    for p in sorted(staging.iterdir()):
        p.replace(out_dir / p.name)
    shutil.rmtree(staging, ignore_errors=True)
    write_json(out_dir / "bertclf.json", card)
