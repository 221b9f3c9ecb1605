"""Checkpoints and the final model directory, all written atomically.

A checkpoint is a folder `checkpoints/step-00000500/` holding model weights, optimizer, scheduler, RNG states
and the data position, plus `manifest.json` (SHA-256 of every file) written last. A folder appears whole
(built under a temporary name, then renamed) and is verified against its manifest before use, so a crash,
kill -9 or a truncated copy can only ever make us fall back to the previous checkpoint.

Tests stop or fault a run at the moments named in bertclf/callbacks.py (`on_write` below is one of them).
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from bertclf import rundir
from bertclf.files import atomic_dir, restore_all_replaced, restore_replaced, sha256_file, write_json
from bertclf.rundir import step_checkpoints

TRAINER_STATE = "trainer_state.json"


def _no_hook(kind: str, step: int, folder: Path) -> None:
    pass


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
    """None if the folder matches its manifest, else what is wrong (a folder that a kill left moved aside by
    atomic_dir is put back first)."""
    restore_replaced(folder)
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
                    rank_rngs: list[dict] | None = None, on_write=_no_hook) -> Path:
    """Write checkpoints/step-N atomically, then drop all but the newest `keep` step checkpoints.

    rank_rngs: every process's RNG state (distributed runs), so each rank resumes with its own dropout stream.
    on_write(kind, step, folder): called inside the temporary folder, weights and optimizer written."""
    target = rundir.step_dir(run_dir, step)
    with atomic_dir(target) as tmp:
        save_file(_state_dict_for_file(model), str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        on_write("step", step, tmp)
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        if rank_rngs and len(rank_rngs) > 1:
            torch.save(rank_rngs, tmp / "rng-ranks.pt")
        write_json(tmp / TRAINER_STATE, state)
        _write_manifest(tmp, {"step": step})
    for old in step_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def read_trainer_state(ckpt: Path) -> dict:
    return json.loads((Path(ckpt) / TRAINER_STATE).read_text())


def latest_checkpoint(run_dir: Path, log=print) -> Path | None:
    """The newest checkpoint that passes its manifest; says which broken ones it skipped."""
    restore_all_replaced(rundir.checkpoints_dir(run_dir))
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
    return read_trainer_state(ckpt)


def save_best(run_dir: Path, model, info: dict, on_write=_no_hook) -> None:
    """checkpoints/best: the weights with the best validation score so far.

    on_write(kind, step, folder): kind "best" inside the temporary folder, weights written; kind "best-swap"
    between the renames that replace an existing best (the old one moved aside, the new one not yet in place)."""
    best, step = rundir.best_dir(run_dir), info.get("step")
    with atomic_dir(best, between=lambda: on_write("best-swap", step, best)) as tmp:
        save_file(_state_dict_for_file(model), str(tmp / "model.safetensors"))
        on_write("best", step, tmp)
        write_json(tmp / "best.json", info)
        _write_manifest(tmp, {"step": step})


def load_best(run_dir: Path, model) -> dict | None:
    best = rundir.best_dir(run_dir)
    restore_replaced(best)
    if not best.is_dir() or verify(best) is not None:
        return None
    model.load_state_dict(load_file(str(best / "model.safetensors")))
    return json.loads((best / "best.json").read_text())


def save_model_dir(out_dir: Path, model, tokenizer, card: dict, on_write=_no_hook) -> None:
    """The final, standard Hugging Face directory (+ the model card), each file replaced atomically.

    Weights and tokenizer are written to a temporary folder first and renamed into place; the card, written
    last, marks the directory complete. on_write("final", steps, out_dir): called once the first file has moved
    into place (the card removed, the rest still staged).
    """
    out_dir = Path(out_dir)
    staging = rundir.checkpoints_dir(out_dir) / rundir.FINAL_STAGING
    with atomic_dir(staging) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    rundir.remove_card(out_dir)
    for i, p in enumerate(sorted(staging.iterdir())):
        p.replace(out_dir / p.name)
        if i == 0:
            on_write("final", card.get("training", {}).get("steps"), out_dir)
    shutil.rmtree(staging, ignore_errors=True)
    rundir.write_card(out_dir, card)
