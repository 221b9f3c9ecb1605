"""Run the bertclf CLI as a user does: `python -m bertclf ...` in a child process, from the repository, with
this checkout first on PYTHONPATH (so a worktree's code, not an installed copy, is what runs)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args, timeout: float = 300, extra_env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               **(extra_env or {}))
    return subprocess.run([sys.executable, "-m", "bertclf", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=timeout, **kw)


def train_env(**extra) -> dict:
    """The environment of a `bertclf train` child whose bytes are compared: one thread (runs that share the cores
    compute alike), no progress bar, unbuffered output, no test pause unless `extra` sets one."""
    from train_hooks import PAUSE_ENV

    env = dict(os.environ, BERTCLF_NO_PROGRESS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop(PAUSE_ENV, None)
    return env | extra


def bertclf(*args, timeout: float = 600, **env) -> subprocess.CompletedProcess:
    """`python -m bertclf ARGS` in train_env(**env)."""
    return subprocess.run([sys.executable, "-m", "bertclf", *map(str, args)], cwd=REPO, env=train_env(**env),
                          capture_output=True, text=True, timeout=timeout)


HOOKED = [sys.executable, str(REPO / "tests" / "support" / "hooked_train.py")]  # the CLI plus the test callbacks


def kill_at(args, point: str, log_dir: Path, timeout: float = 600, env_extra: dict | None = None) -> None:
    """Run `bertclf ARGS` (with the test callbacks) in train_env(**env_extra) until the BERTCLF_TEST_PAUSE_AT hook
    pauses at `point`, then SIGKILL it."""
    import time

    from train_hooks import PAUSE_ENV, PAUSE_MARK

    err = log_dir / f"killed-{point.replace(':', '-')}.err"
    with open(err.with_suffix(".out"), "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(HOOKED + [*map(str, args)], cwd=REPO,
                                env=train_env(**(env_extra or {}), **{PAUSE_ENV: point}), stdout=o, stderr=e)
    deadline = time.monotonic() + timeout
    try:
        while f"{PAUSE_MARK} {point}" not in err.read_text():
            assert proc.poll() is None, f"exited ({proc.returncode}) before {point}: {err.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"did not reach {point} in {timeout:.0f} s"
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
