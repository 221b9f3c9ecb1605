"""Disk full while a run writes: one line naming the folder, the space the write needs and the space free.

A checkpoint, the best checkpoint and the final model are built in a hidden temporary folder that is removed
when a write fails, and older checkpoints are deleted only after a new one is complete, so a full disk (ENOSPC,
or EDQUOT for a quota) never costs the previous checkpoint. `writing()` turns the failure, whichever library
raised it (Python's OSError, safetensors' SafetensorError "os error 28", torch.save's RuntimeError whose
context is the OSError), into DiskFull: exit code 74 (EX_IOERR), no traceback.
"""
from __future__ import annotations

import contextlib
import errno
import shutil
from pathlib import Path

from bertclf.errors import UserError

DISK_FULL_EXIT = 74  # EX_IOERR; 75 (preempted) means "run again as is", this one "free space first"
_CODES = {errno.ENOSPC, errno.EDQUOT}
_TEXTS = ("No space left on device", "Disk quota exceeded", f"os error {errno.ENOSPC}", f"os error {errno.EDQUOT}")


class DiskFull(UserError):
    exit_code = DISK_FULL_EXIT


def is_disk_full(exc: BaseException | None) -> bool:
    """True if `exc`, or an exception it was raised from or while handling, says the disk or quota is full."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _CODES:
            return True
        if any(text in str(exc) for text in _TEXTS):  # libraries that keep only the message (safetensors)
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def free_bytes(folder: str | Path) -> int | None:
    """Free bytes for an unprivileged writer on the filesystem that holds `folder` (or its nearest parent)."""
    for p in (Path(folder), *Path(folder).parents):
        if p.exists():
            with contextlib.suppress(OSError):
                return shutil.disk_usage(p).free
            return None
    return None


def tensor_bytes(*objects) -> int:
    """Bytes of the tensors in state dicts (nested dicts/lists, as an optimizer's state_dict() is)."""
    import torch

    total, todo = 0, list(objects)
    while todo:
        obj = todo.pop()
        if isinstance(obj, torch.Tensor):
            total += obj.numel() * obj.element_size()
        elif isinstance(obj, dict):
            todo.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            todo.extend(obj)
    return total


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f}"


@contextlib.contextmanager
def writing(what: str, folder: str | Path, needed, estimate_of: str, then):
    """Run the body (a write of `what` into `folder`); a full disk becomes one DiskFull line.

    needed: the bytes the write takes, or a function giving them (called only on failure); estimate_of: what
    that estimate counts; then: what the user does next (or a function giving it). The free space is read
    after the body's temporary files are gone, so it is what a rerun will find."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as e:
        if not is_disk_full(e):
            raise
        n = needed() if callable(needed) else needed
        next_step = then() if callable(then) else then
        raise DiskFull(f"out of disk space writing {what} to {folder}: it needs about {_mb(n)} MB (estimated from "
                       f"{estimate_of}), {_mb(free_bytes(folder))} MB free; {next_step}") from None
