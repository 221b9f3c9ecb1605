"""Real fine-tunes take both cores in turn; the other pytest worker waits meanwhile.

Why: on the 2-core CI machine two bf16 fine-tunes side by side (or one beside the other worker's tests) ran 3-4x
slower each than alone (KOTE 80 s alone on one thread, 250-340 s in the suite), so the suite took longer than the
same work done one at a time on both threads.

How (POSIX flock on two files that every xdist worker of one run shares): a heavy test takes the turnstile
exclusively, then the machine exclusively; every other test passes the turnstile (so a waiting heavy test is not
starved) and holds the machine shared. Heavy tests never overlap, and each gets both threads.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

_held = 0  # holds in this process: a lock taken again by the same process (another open file) would wait on itself


def _lock_dir() -> Path | None:
    """The folder every worker of this pytest run shares (set by conftest in the controller), or None alone."""
    d = os.environ.get("BERTCLF_TEST_LOCKS")
    return Path(d) if d else None


@contextlib.contextmanager
def _flock(path: Path, mode: int):
    with open(path, "a+") as f:
        fcntl.flock(f, mode)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def machine_shared():
    """Around each ordinary test: wait while a heavy test runs."""
    global _held
    d = _lock_dir()
    if d is None or _held:
        yield
        return
    with _flock(d / "turnstile", fcntl.LOCK_SH):
        pass
    with _flock(d / "machine", fcntl.LOCK_SH):
        _held += 1
        try:
            yield
        finally:
            _held -= 1


@contextlib.contextmanager
def whole_cpu():
    """Around a real fine-tune: the machine alone, with every core's thread."""
    global _held
    d = None if _held else _lock_dir()  # held shared already (a heavy fixture a plain test asked for): no wait
    import torch

    threads, env = torch.get_num_threads(), {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "BERTCLF_THREADS")}
    with contextlib.ExitStack() as stack:
        if d is not None:
            stack.enter_context(_flock(d / "turnstile", fcntl.LOCK_EX))
            stack.enter_context(_flock(d / "machine", fcntl.LOCK_EX))
        _held += 1
        cores = len(os.sched_getaffinity(0))
        torch.set_num_threads(cores)
        os.environ["OMP_NUM_THREADS"] = os.environ["BERTCLF_THREADS"] = str(cores)  # the CLI processes it starts
        try:
            yield
        finally:
            _held -= 1
            torch.set_num_threads(threads)
            for k, v in env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
