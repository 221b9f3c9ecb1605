"""A real `bertclf serve` process on 127.0.0.1 (port chosen by the OS), optionally through
tests/support/serve_launcher.py, which plants faults from outside the package."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = Path(__file__).with_name("serve_launcher.py")


def server_env() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("BERTCLF_LOG_LEVEL", None)
    return env


class ServerProcess:
    def __init__(self, model_dir: Path, tmp: Path, flags: list[str], planted: list[str] | None = None):
        """planted: serve_launcher.py options (None: plain `python -m bertclf serve`)."""
        self.out, self.err = tmp / "serve.out", tmp / "serve.err"
        cmd = [sys.executable, "-m", "bertclf"] if planted is None else [sys.executable, str(LAUNCHER), *planted,
                                                                         "--"]
        cmd += ["serve", str(model_dir), "--host", "127.0.0.1", "--port", "0", *flags]
        with open(self.out, "w") as o, open(self.err, "w") as e:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=server_env(), stdout=o, stderr=e)
        deadline = time.monotonic() + 180
        while not (m := re.search(r"on (http://127\.0\.0\.1:\d+)", self.out.read_text())):
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited ({self.proc.returncode}): {self.err.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail("the server printed no address in 180 s")
            time.sleep(0.05)
        self.url = m.group(1)
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail("the server never answered /health")
            time.sleep(0.05)

    def info(self) -> dict:
        return httpx.get(f"{self.url}/info", timeout=10).json()

    def rss_bytes(self, trim: bool = False) -> int:
        """trim: first GET /_trim (needs the launcher's --trim-route) to hand free heap pages back."""
        import psutil

        if trim:
            httpx.get(f"{self.url}/_trim", timeout=30).raise_for_status()

        return psutil.Process(self.proc.pid).memory_info().rss

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait; the exit status (uvicorn re-raises SIGTERM: -15)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the server did not stop within {timeout} s of SIGTERM")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
