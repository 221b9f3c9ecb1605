"""tests/support/whole_cpu.py: a heavy test has the machine alone; the others wait, and do not starve it."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

SUPPORT = Path(__file__).resolve().parent / "support"
HOLD = """
import os, sys, time
sys.path.insert(0, {support!r})
from whole_cpu import {which}
with {which}():
    print("in", time.time(), flush=True)
    time.sleep({seconds})
    while {release!r} and not os.path.exists({release!r}):
        time.sleep(0.05)
    print("out", time.time(), flush=True)
"""


def _start(which: str, seconds: float, locks: Path, release: Path | None = None) -> subprocess.Popen:
    """A process that holds `which` for `seconds`, and then until the file `release` exists (if given)."""
    code = HOLD.format(support=str(SUPPORT), which=which, seconds=seconds, release=str(release or ""))
    env = {**os.environ, "BERTCLF_TEST_LOCKS": str(locks)}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)


def _span(p: subprocess.Popen) -> tuple[float, float]:
    out, _ = p.communicate(timeout=60)
    times = dict(line.split() for line in out.splitlines())
    return float(times["in"]), float(times["out"])


def _wait_until_taken(path: Path, probe: int = fcntl.LOCK_SH, timeout: float = 60) -> None:
    """Until another process holds `path` so that our `probe` lock would have to wait (probe LOCK_SH: held
    exclusively; LOCK_EX: held at all)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, probe | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
            except BlockingIOError:
                return
        time.sleep(0.05)
    raise AssertionError(f"nobody took {path} in {timeout} s")


def test_a_heavy_section_and_a_plain_one_never_overlap(tmp_path):
    release = tmp_path / "release"
    plain = _start("machine_shared", 0, tmp_path, release)
    _wait_until_taken(tmp_path / "machine", probe=fcntl.LOCK_EX)
    # the plain test is inside; the heavy one takes the turnstile and waits for it; a late plain one waits in turn
    heavy = _start("whole_cpu", 0.5, tmp_path)
    _wait_until_taken(tmp_path / "turnstile")
    late = _start("machine_shared", 0, tmp_path)
    time.sleep(1.0)  # time enough for the late one to start and (wrongly) get in beside the plain one
    release.touch()
    (p_in, p_out), (h_in, h_out), (l_in, _) = _span(plain), _span(heavy), _span(late)
    assert p_out <= h_in, "the heavy section began while a plain test ran"
    assert h_out <= l_in, "a plain test that came while the heavy one waited went first (the heavy one can starve)"


def test_two_plain_sections_share_the_machine(tmp_path):
    a, b = _start("machine_shared", 1.5, tmp_path), _start("machine_shared", 1.5, tmp_path)
    (a_in, a_out), (b_in, b_out) = _span(a), _span(b)
    assert max(a_in, b_in) < min(a_out, b_out), "two ordinary tests took turns"
