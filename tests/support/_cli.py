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
