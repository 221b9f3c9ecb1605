"""GPU smoke test: a tiny bf16 run on CUDA is killed, resumed and used for prediction. It executes what a CPU
never does: bf16 autocast, fused AdamW, the CUDA RNG state in checkpoints, the CUDA predict path, and with
--compile on the compiled step in CUDA graphs (mode reduce-overhead) through a kill and a resume.
Run with `pytest -m gpu`; skipped, with the reason, where there is no CUDA device. BERTCLF_TEST_GPU_DRY_RUN=1 runs it
on the CPU (bf16 autocast there), to check the test itself before device time is spent."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from bertclf.rundir import layout as rundir

from _cli import REPO, kill_at, train_env

DRY_RUN = os.environ.get("BERTCLF_TEST_GPU_DRY_RUN") == "1"

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available() and not DRY_RUN,
                                 reason="no CUDA device: the gpu tests need one (BERTCLF_TEST_GPU_DRY_RUN=1: on the CPU)")]


def _train(slices, model, out, *extra) -> list[str]:
    """`bertclf train`'s arguments (after the program)."""
    return ["train", "--train", str(slices["train"]), "--text-col", "document",
            "--model", str(model), "--sample", "0.25", "--epochs", "1", "--max-steps", "30", "--batch-size", "16",
            "--lr", "2e-3", "--seed", "0", "--precision", "bf16", "--checkpoint-every", "10", "--eval-every", "10",
            "--log-every", "5", "--out", str(out), *extra]


def _bertclf(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bertclf", *map(str, args)], cwd=REPO, env=train_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("compiled", ["off", "on"])
def test_bf16_train_kill_resume_predict_on_cuda(compiled, tiny_model_dir, nsmc_slices, tmp_path):
    """--compile on: CUDA graphs (one process), the kill and the resume included."""
    out = tmp_path / "run"
    kill_at(_train(nsmc_slices, tiny_model_dir, out, "--compile", compiled), "step:15", tmp_path)  # after step 15
    assert [p.name for p in rundir.step_checkpoints(out)] == ["step-00000010"]
    r = _bertclf(*_train(nsmc_slices, tiny_model_dir, out, "--compile", compiled, "--resume"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"resumed from step-00000010: step 10", r.stdout), r.stdout[-2000:]
    assert ("torch.compile: " in r.stdout) == (compiled == "on"), r.stdout[-2000:]
    card = json.loads((out / "bertclf.json").read_text())
    assert card["training"]["precision"] == "bf16" and card["training"]["steps"] == 30
    steps = [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert steps == list(range(5, 31, 5))  # the killed run's lines after step 10 were replaced, none doubled

    from safetensors.torch import load_file

    weights = load_file(out / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    texts = ["정말 재밌어요 최고", "시간 아깝다 최악"]
    p = _bertclf("predict", out, *texts, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [json.loads(x) for x in p.stdout.splitlines()]
    assert len(rows) == 2
    from bertclf.inference.classifier import Classifier

    clf = Classifier.load(str(out))
    assert next(clf.model.parameters()).is_cuda == torch.cuda.is_available()
    probs = clf.predict_proba(texts)
    assert np.isfinite(probs).all() and np.allclose(probs.sum(1), 1, atol=1e-5)
