"""--low-memory (bertclf/train/low_memory.py): gradient checkpointing and a fixed mmap threshold change how much
memory a step holds, never a number the run computes."""
from __future__ import annotations

import json

from bertclf.train.callbacks import TrainCallback
from bertclf.train.loop import train

from tiny_runs import tiny_cfg


class SeesCheckpointing(TrainCallback):
    def __init__(self):
        self.seen = None

    def on_train_begin(self, run):
        self.seen = run.unwrapped().is_gradient_checkpointing


def _losses(run_dir) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / "train_log.jsonl").read_text().splitlines()) if "loss" in r]


def test_low_memory_trains_the_same_weights(tiny_model_dir, nsmc_slices, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from bertclf.train import low_memory

    # the allocator setting lasts for the process: this worker's later tests keep glibc's own (the subprocess
    # test below checks the setting itself)
    monkeypatch.setattr(low_memory, "fix_mmap_threshold", lambda: False)

    kw = dict(sample=0.1, max_steps=4, log_every=1, precision="fp32", test=None, ngram="off", calibrate=False)
    seen, said = {}, {}
    for name, low in (("plain", False), ("low", True)):
        hook, said[name] = SeesCheckpointing(), []
        train(tiny_cfg(tmp_path / name, nsmc_slices, tiny_model_dir, low_memory=low, **kw), echo=said[name].append,
              callbacks=[hook])
        seen[name] = hook.seen
    assert seen == {"plain": False, "low": True}
    assert any(s.startswith("--low-memory: gradient checkpointing") for s in said["low"]), said["low"]
    assert len(_losses(tmp_path / "plain")) == 4
    assert _losses(tmp_path / "plain") == _losses(tmp_path / "low")
    a, b = load_file(tmp_path / "plain" / "model.safetensors"), load_file(tmp_path / "low" / "model.safetensors")
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    # the saved model is a plain model: nothing about checkpointing in its config
    assert "checkpointing" not in (tmp_path / "low" / "config.json").read_text()


def test_the_mmap_threshold_is_fixed_in_a_glibc_process():
    import platform
    import subprocess
    import sys

    code = "from bertclf.train.low_memory import fix_mmap_threshold; print(fix_mmap_threshold())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(platform.libc_ver()[0] == "glibc"), out
