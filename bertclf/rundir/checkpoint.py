"""Checkpoints and the final model directory, all written atomically.

A checkpoint is a folder `checkpoints/step-00000500/` holding model weights, optimizer, scheduler, RNG states
and the data position, plus `manifest.json` (SHA-256 of every file) written last. A folder appears whole
(built under a temporary name, then renamed) and is verified against its manifest before use, so a crash,
kill -9 or a truncated copy can only ever make us fall back to the previous checkpoint.

Tests stop or fault a run at the moments named in bertclf/train/callbacks.py (`on_write` below is one of them).
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from bertclf.rundir import layout as rundir
from bertclf.io.disk_space import folder_bytes, tensor_bytes, writing
from bertclf.errors import UserError
from bertclf.io.files import atomic_dir, fsync_dir, restore_all_replaced, restore_replaced, sha256_file, write_json
from bertclf.rundir.layout import step_checkpoints

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


def _torch_save(obj, path: Path) -> None:
    # through a Python file: a full disk then surfaces as OSError(ENOSPC), not torch's bare "file write failed"
    with open(path, "wb") as f:
        torch.save(obj, f)


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
    previous = [p for p in step_checkpoints(run_dir) if p != target]
    needed = (lambda: folder_bytes(previous[-1])) if previous else \
        (lambda: tensor_bytes(model.state_dict(), optimizer.state_dict()))
    with writing(f"checkpoint {target.name}", target.parent, needed,
                 "the previous checkpoint's size" if previous else "the weights and optimizer state",
                 lambda: after_disk_full(run_dir, target)):
        with atomic_dir(target) as tmp:
            save_file(_state_dict_for_file(model), str(tmp / "model.safetensors"))
            _torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
            on_write("step", step, tmp)
            _torch_save(scheduler.state_dict(), tmp / "scheduler.pt")
            _torch_save(rng_state(), tmp / "rng.pt")
            if rank_rngs and len(rank_rngs) > 1:
                _torch_save(rank_rngs, tmp / "rng-ranks.pt")
            write_json(tmp / TRAINER_STATE, state)
            _write_manifest(tmp, {"step": step})
    for old in step_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def after_disk_full(run_dir: Path, being_written: Path | None = None) -> str:
    """What to do when the disk filled up while writing `being_written` (or any file) in the run folder."""
    done = [p for p in step_checkpoints(run_dir) if p != being_written]
    if done:
        return (f"checkpoint {done[-1].name} is intact: free space and run the same command with --resume auto "
                f"(or --resume) to continue from it")
    return "no step checkpoint was written yet: free space and run the same command with --resume auto to start again"


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
    """Restore weights, optimizer, schedule and this process's RNG state; return the trainer state.

    A checkpoint whose tensors or optimizer parameter groups do not fit this run (written by another bertclf
    version, e.g. before the classification head got its own lr group) is refused with one line; nothing in
    the run folder has been written by then."""
    try:
        model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=False))
        scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
    except (RuntimeError, ValueError, KeyError) as e:
        lines = [ln.strip().rstrip(":.") for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        reason = ": ".join(lines[:2])[:300]  # torch's first line is generic, its second names the tensor
        raise UserError(f"--resume: checkpoint {ckpt} does not fit this run ({reason}); it was probably written by "
                        f"another bertclf version: resume with that version, or start again with --overwrite") from e
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
    with writing("the best checkpoint", best.parent, lambda: tensor_bytes(model.state_dict()), "the weights",
                 lambda: after_disk_full(run_dir)):
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


def _final_model_bytes(model, tokenizer) -> int:
    """The weights, plus the tokenizer files of the folder it was loaded from (when that is a local folder)."""
    src = Path(getattr(tokenizer, "name_or_path", "") or ".")
    names = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             *getattr(tokenizer, "vocab_files_names", {}).values()}
    files = [src / n for n in names if (src / n).is_file()] if src.is_dir() else []
    return tensor_bytes(model.state_dict()) + sum(f.stat().st_size for f in files)


def save_model_dir(out_dir: Path, model, tokenizer, card: dict, on_write=_no_hook) -> None:
    """The final, standard Hugging Face directory (+ the model card), each file replaced atomically.

    Weights, tokenizer and card are written to a temporary folder first (a full disk fails there, before the
    output folder changes) and then renamed into place, the card last: it marks the directory complete.
    on_write("final-write", steps, folder): inside the temporary folder, weights written, tokenizer not yet;
    on_write("final", steps, out_dir): once the first file has moved into place (the card removed, the rest
    still staged).
    """
    out_dir = Path(out_dir)
    steps = card.get("training", {}).get("steps")
    staging = rundir.checkpoints_dir(out_dir) / rundir.FINAL_STAGING
    with writing("the final model", out_dir, lambda: _final_model_bytes(model, tokenizer),
                 "the weights and the tokenizer's files", lambda: after_disk_full(out_dir)):
        with atomic_dir(staging) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            on_write("final-write", steps, tmp)
            tokenizer.save_pretrained(tmp)
            rundir.write_card(tmp, card)
    rundir.remove_card(out_dir)
    for i, p in enumerate(sorted(p for p in staging.iterdir() if p.name != rundir.CARD_FILE)):
        p.replace(out_dir / p.name)
        if i == 0:
            on_write("final", steps, out_dir)
    (staging / rundir.CARD_FILE).replace(out_dir / rundir.CARD_FILE)  # last: it marks the model complete
    fsync_dir(out_dir)
    shutil.rmtree(staging, ignore_errors=True)
