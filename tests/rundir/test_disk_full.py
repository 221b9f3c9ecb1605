"""A full disk while `bertclf train` writes a checkpoint or the final model: the previous checkpoint stays intact,
the run stops with one line (exit 74) naming the folder, the space needed and the space free, and after space is
freed the same command with `--resume auto` ends with the bytes of an uninterrupted run.

The disk is a real tmpfs of a size the test sets (mounted, then remounted smaller or larger between runs), so the
writers meet a real ENOSPC. Mounting needs root; without it the test runs the same steps on the normal disk with
the test callback BERTCLF_TEST_DISK_FULL_AT (tests/support/train_hooks.py), which raises OSError(ENOSPC) inside the write,
and says so with a warning (BERTCLF_TEST_NO_MOUNT=1 chooses that way on purpose).
"""
from __future__ import annotations

import errno
import os
import re
import subprocess
import warnings
from pathlib import Path

import pytest

from bertclf.rundir import checkpoint as ckpt
from bertclf.rundir import layout as rundir
from bertclf.io.disk_space import DISK_FULL_EXIT, DiskFull, is_disk_full

from _cli import train_env  # noqa: E402
from test_crash_resume import CLI, HOOKED, REPO, STEPS, Reference, _args, _steps  # noqa: E402
from train_hooks import DISK_FULL_ENV, SIGNAL_ENV  # noqa: E402

# fp32: compared byte for byte with the reference on any CPU; --select best: the best checkpoint is not rewritten
# at the end (a within-noise tie there would swap it just before the final write and free the room sized below)
FP32 = ("--precision", "fp32", "--select", "best")
ROOMY = 64 << 20  # holds the whole run (~7 MB at its peak)
NO_MOUNT_ENV = "BERTCLF_TEST_NO_MOUNT"  # set: use the callback even where a tmpfs could be mounted


class Disk:
    """The filesystem of the run folder: a tmpfs when this process may mount one, else the normal disk, where
    a full disk is the test callback's OSError(ENOSPC)."""

    def __init__(self, mount_point: Path):
        self.path = mount_point
        self.path.mkdir()
        try:
            self.real = not os.environ.get(NO_MOUNT_ENV) and self._mount("size=%d" % ROOMY, fresh=True)
        except FileNotFoundError:  # no mount command
            self.real = False
        if not self.real:
            why = NO_MOUNT_ENV if os.environ.get(NO_MOUNT_ENV) else "cannot mount a tmpfs (not root?)"
            warnings.warn(f"{why}: a full disk is simulated by the callback BERTCLF_TEST_DISK_FULL_AT")

    def _mount(self, options: str, fresh: bool = False) -> bool:
        cmd = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(self.path)] if fresh else \
            ["mount", "-o", f"remount,{options}", str(self.path)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert fresh or r.returncode == 0, r.stderr
        return r.returncode == 0

    def used(self) -> int:
        st = os.statvfs(self.path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def full_at(self, point: str, room: int) -> dict:
        """Make the next run meet a full disk at `point` (NAME:STEP): leave `room` bytes free on the tmpfs, or
        ask the callback. Returns the run's extra environment."""
        if not self.real:
            return {DISK_FULL_ENV: point}
        self._mount(f"size={self.used() + room}")
        return {}

    def free_up(self) -> None:
        if self.real:
            self._mount(f"size={ROOMY}")

    def close(self) -> None:
        if self.real:
            subprocess.run(["umount", str(self.path)], check=True)


def _run(argv: list[str], hooked: bool = True, **env) -> subprocess.CompletedProcess:
    return subprocess.run((HOOKED if hooked else CLI) + argv, cwd=REPO, env=train_env(**env), capture_output=True,
                          text=True, timeout=600)


def _disk_full_line(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == DISK_FULL_EXIT and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines[0].startswith("bertclf: error: out of disk space writing "), lines[0]
    return lines[0]


def _needs_and_free(line: str) -> tuple[float, float]:
    m = re.search(r"it needs about ([\d.]+) MB \(estimated from [^)]+\), ([\d.]+) MB free; ", line)
    assert m, line
    return float(m[1]), float(m[2])


def _size(*files: Path) -> int:
    return sum(f.stat().st_size for f in files)


@pytest.mark.slow  # ~110 s on the busy 2-core machine (5 short runs and the reference); ~80 s with the callback
def test_disk_full_at_a_checkpoint_and_at_the_final_model_keeps_the_last_checkpoint_and_resumes_exactly(
        tiny_model_dir, nsmc_slices, tmp_path):
    reference = Reference(nsmc_slices, tiny_model_dir, tmp_path / "reference", FP32)
    disk = Disk(tmp_path / "disk")
    run = disk.path / "run"
    argv = _args(nsmc_slices, tiny_model_dir, run, *FP32, "--resume", "auto")
    try:
        # 1. (tmpfs) a first checkpoint, step 10, preempted there so that the test can size the disk from it
        room = 0
        if disk.real:
            r = _run(argv, **{SIGNAL_ENV: "0:10:SIGTERM"})
            assert r.returncode == 75 and _steps(run) == [10], r.stderr[-3000:]
            step10 = rundir.step_dir(run, 10)
            checkpoint_bytes, weight_bytes = _size(*step10.iterdir()), _size(step10 / "model.safetensors")
            # room for the best checkpoint that the validation at step 20 writes first, and half a checkpoint
            room = weight_bytes + (64 << 10) + checkpoint_bytes // 2

        # 2. the disk is full at the second checkpoint, step 20
        line = _disk_full_line(_run(argv, **disk.full_at("checkpoint-write:20", room=room)))
        print(line)
        assert f"writing checkpoint step-00000020 to {rundir.checkpoints_dir(run)}: " in line, line
        assert "checkpoint step-00000010 is intact: free space and run the same command with --resume auto" in line
        step10 = rundir.step_dir(run, 10)
        needs, free = _needs_and_free(line)
        assert abs(needs - _size(*step10.iterdir()) / 1e6) < 0.15, line  # the previous checkpoint's size
        assert not disk.real or free < needs, line
        assert _steps(run) == [10] and ckpt.verify(step10) is None
        assert not [p for p in rundir.checkpoints_dir(run).iterdir() if p.name.startswith(".")]  # no temp folders

        # 3. space freed: the same command continues from step 10 (the previous checkpoint loads); on the tmpfs
        #    until a preemption at step 55, so that the final model is the next write
        disk.free_up()
        last = 50
        if disk.real:
            r = _run(argv, **{SIGNAL_ENV: "0:55:SIGTERM"})
            assert r.returncode == 75 and "resumed from step-00000010" in r.stdout, r.stderr[-3000:]
            assert _steps(run) == [50, 55]
            last = 55

        # 4. the disk is full while the final model is written: room for a best checkpoint at step 60 if the
        #    reference writes one there, and half the final model (weights + tokenizer files)
        best_at_end = rundir.read_card(reference.finished())["training"]["best_step"] == STEPS
        final_bytes = _size(tiny_model_dir / "model.safetensors", tiny_model_dir / "tokenizer.json",
                            tiny_model_dir / "tokenizer_config.json")
        room = final_bytes // 2 + (_size(step10 / "model.safetensors") + (64 << 10) if best_at_end else 0)
        r = _run(argv, **disk.full_at(f"final-write:{STEPS}", room=room))
        line = _disk_full_line(r)
        print(line)
        assert disk.real or "resumed from step-00000010" in r.stdout
        assert f"writing the final model to {run}: " in line and f"checkpoint step-000000{last} is intact" in line
        needs, free = _needs_and_free(line)
        assert abs(needs - final_bytes / 1e6) < 0.15 and (not disk.real or free < needs), line
        assert not rundir.has_card(run)  # no half-written model folder: not a file of it, nothing staged
        assert not [f for f in ("model.safetensors", "config.json", "tokenizer.json") if (run / f).exists()]
        assert not [p for p in rundir.checkpoints_dir(run).iterdir() if p.name.startswith(".") or p.name == "final"]
        assert _steps(run) == ([50, 55] if disk.real else [40, 50])
        assert all(ckpt.verify(p) is None for p in rundir.step_checkpoints(run))
        assert ckpt.verify(rundir.best_dir(run)) is None

        # 5. space freed: the same command (no test callbacks) finishes with the uninterrupted run's bytes
        disk.free_up()
        r = _run(argv, hooked=False)
        assert r.returncode == 0 and f"resumed from step-000000{last}" in r.stdout, r.stderr[-3000:]
        assert rundir.has_card(run) and not rundir.checkpoints_dir(run).exists()
        assert (run / "model.safetensors").read_bytes() == (reference.out / "model.safetensors").read_bytes()
    finally:
        disk.close()


def _writers(folder: Path) -> dict:
    """Each way a run writes a file, writing 2 MB (more than the small disk holds)."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from bertclf.io.files import atomic_file, write_json

    def savez():
        with atomic_file(folder / "p.npz", "wb") as f:
            np.savez_compressed(f, a=np.random.default_rng(0).random(1 << 18))

    tensors = {"w": torch.rand(1 << 19)}
    return {"safetensors": lambda: save_file(tensors, str(folder / "w.safetensors")),
            "torch.save": lambda: ckpt._torch_save(tensors, folder / "o.pt"),
            "atomic_file": savez, "write_json": lambda: write_json(folder / "j.json", ["x" * 100] * 20000)}


def test_disk_full_is_recognised_in_each_writer_s_error(tmp_path):
    """The exceptions the writers raise on ENOSPC (safetensors keeps only the message; torch.save a RuntimeError
    whose context is the OSError; bertclf's atomic_file a UserError) are all recognised, and others are not. On
    a real 1 MB tmpfs when the test may mount one; else the same rules on the messages those writers give."""
    disk = Disk(tmp_path / "small")
    try:
        if disk.real:
            disk.full_at("", room=1 << 20)
            for name, write in _writers(disk.path).items():
                try:
                    write()
                    raise AssertionError(f"{name}: wrote 2 MB on a 1 MB disk")
                except Exception as e:  # noqa: BLE001 (whatever each library raises)
                    assert is_disk_full(e), f"{name}: {type(e).__name__}: {e}"
                assert not list(disk.path.iterdir()) or name in ("safetensors", "torch.save")
                for leftover in disk.path.iterdir():
                    leftover.unlink()
        else:
            assert is_disk_full(Exception("Error while serializing: I/O error: No space left on device (os error 28)"))
            try:
                try:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                except OSError:
                    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
            except RuntimeError as e:
                assert is_disk_full(e)
    finally:
        disk.close()
    assert is_disk_full(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)))
    assert not is_disk_full(OSError(errno.EACCES, os.strerror(errno.EACCES)))
    assert not is_disk_full(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"))
    assert DiskFull("x").exit_code == DISK_FULL_EXIT == 74
