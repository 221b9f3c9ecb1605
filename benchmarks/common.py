"""What the benchmarks share: NSMC's rows, a local `bertclf serve`, the machine line, and the main wrapper.

Run every benchmark as a module from the repository root (`python -m benchmarks.FOLDER.NAME ...`), so that
both `bertclf` and `benchmarks` import from this checkout without touching sys.path.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "RESULTS.md"


# --- NSMC ---------------------------------------------------------------------------------------------------


def nsmc_file(split: str, data_dir: str | None = None) -> Path:
    """ratings_{split}.txt where bertclf looks (--data-dir, $BERTCLF_DATA_DIR, the cache, ../shared/data/nsmc),
    checksum verified; never downloaded: a benchmark should not spend its time on the network."""
    from bertclf.data.dataset import nsmc_path

    return nsmc_path(split, data_dir, download=False)


def nsmc(split: str, data_dir: str | None = None):
    """NSMC's train or test split as bertclf reads it (labels "negative"/"positive", empty reviews dropped)."""
    from bertclf.data import dataset as D

    return D.read_labelled(nsmc_file(split, data_dir), D.NSMC_TEXT_COL, D.NSMC_LABEL_COL, D.NSMC_LABELS)


def nsmc_texts(data_dir: str | None = None, limit: int = 50000) -> list[str]:
    """The first `limit` non-empty reviews of ratings_test.txt."""
    return nsmc("test", data_dir).texts[:limit]


def nsmc_label_ids(names: list[str], labels: list[str]):
    """NSMC label names ("negative"/"positive") as ids in a model's label order, which holds the names or NSMC's
    raw "0"/"1" (a model trained on the file's own cells); -1 where it holds neither."""
    import numpy as np

    from bertclf.data.dataset import NSMC_LABELS

    index = {lab: i for i, lab in enumerate(labels)}
    raw = {name: code for code, name in NSMC_LABELS.items()}
    return np.array([index.get(lab, index.get(raw[lab], -1)) for lab in names])


def nsmc_test(n: int | None, data_dir: str | None, labels: list[str]):
    """The first n test reviews and their label ids in a model's label order (see nsmc_label_ids)."""
    ds = nsmc("test", data_dir)
    y = nsmc_label_ids(ds.labels[:n], labels)
    if y.min() < 0:
        print(f"note: model labels {labels} are not NSMC's (0/1 or negative/positive); accuracy is not shown",
              file=sys.stderr)
    return ds.texts[:n], y


# --- the machine ----------------------------------------------------------------------------------------------


def machine(threads: int | None = None) -> str:
    """The line every benchmark's output starts with: the GPU's name, or the CPU's model and matrix features."""
    import torch

    from bertclf import cpu

    return torch.cuda.get_device_name() if torch.cuda.is_available() else cpu.describe(threads)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cpu_s(pid: int) -> float | None:
    """user + system CPU seconds the process has used so far."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


# --- a local server -------------------------------------------------------------------------------------------


class LocalServer:
    """`python -m bertclf serve MODEL_DIR --port 0` from this checkout; .url once it listens."""

    def __init__(self, model_dir: str, extra: list[str]):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen([sys.executable, "-m", "bertclf", "serve", model_dir, "--port", "0", *extra],
                                     cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
        self.line = self.proc.stdout.readline().strip()  # the start line, or "" if it died
        m = re.search(r"on (http://\S+:\d+)", self.line)
        if not m:
            self.proc.wait()
            sys.exit(f"the server did not start (exit {self.proc.returncode})")
        self.url = m.group(1)
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # keep the pipe drained

    def stop(self) -> float:
        """SIGTERM, then the seconds until it exited (killed after 30)."""
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return time.perf_counter() - t0


def wait_healthy(url: str, tries: int = 300) -> None:
    """Until GET /health answers 200 (or `tries` x 0.1 s)."""
    import httpx

    for _ in range(tries):
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)


# --- the main wrapper -----------------------------------------------------------------------------------------


def run(main) -> None:
    """`if __name__ == "__main__": run(main)`: main's return value is the exit status; a UserError prints its one
    line and exits 2, as the bertclf command does."""
    from bertclf.errors import UserError

    try:
        code = main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        code = e.exit_code
    raise SystemExit(code or 0)
