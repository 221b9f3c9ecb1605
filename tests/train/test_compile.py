"""--compile: the training step compiled by torch.compile (inductor, here on the CPU) gives the eager step's losses,
compiles one graph per static shape and no more, resumes exactly, and refuses a bad value with one line.

Kept to one shape (--max-length 16: static widths (16,)) so inductor compiles once per process; later processes
read inductor's on-disk cache. Gradient accumulation (2 micro-batches) and the epoch's last, shorter batch
(padded with rows that reach no loss) are inside the 6 steps compared."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from bertclf.data.batches import static_widths
from bertclf.rundir import layout as rundir
from bertclf.train.loop import train

from _cli import REPO, kill_at, train_env
from tiny_runs import tiny_cfg

# 0.05 of the 3,000-row slice: ~140 training rows, 5 steps of 2 x 16 rows per epoch; 6 steps cross the epoch's
# last (shorter) batch and its end.
SHORT = dict(sample=0.05, max_length=16, batch_size=16, grad_accum=2, max_steps=6, epochs=2, log_every=1,
             precision="fp32", ngram="off", calibrate=False, test=None)
# Eager and compiled sum the same products in other orders: losses agree to float32 rounding, a few units in
# the 6th digit after 6 steps of lr 2e-3 (measured: at most 2e-6).
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def no_dropout_model(tiny_model_dir, tmp_path_factory):
    """The tiny model without dropout: inductor draws dropout masks from its own generator, so only a model
    without dropout can give the eager step's losses."""
    d = tmp_path_factory.mktemp("no-dropout") / "model"
    shutil.copytree(tiny_model_dir, d)
    config = json.loads((d / "config.json").read_text())
    config |= {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout": 0.0}
    (d / "config.json").write_text(json.dumps(config))
    return d


def _losses(out) -> list[float]:
    return [r["loss"] for r in map(json.loads, rundir.log_path(out).read_text().splitlines()) if "loss" in r]


def test_compiled_losses_match_eager_with_one_graph_per_shape(no_dropout_model, nsmc_slices, tmp_path):
    import torch._dynamo.utils

    eager = tmp_path / "eager"
    train(tiny_cfg(eager, nsmc_slices, no_dropout_model, compile="off", **SHORT), echo=lambda s: None)
    said = []
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled = tmp_path / "compiled"
    train(tiny_cfg(compiled, nsmc_slices, no_dropout_model, compile="on", **SHORT), echo=said.append)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before
    assert len(_losses(eager)) == 6
    assert _losses(compiled) == pytest.approx(_losses(eager), rel=TOLERANCE)
    line = [s for s in said if s.startswith("torch.compile:")]
    assert len(line) == 1 and re.fullmatch(r"torch\.compile: 1 shape\(s\) compiled \(rows x tokens: 16x16\), "
                                           r"[\d.]+ s in their first steps, compiling included", line[0]), line
    assert static_widths(16) == (16,) and graphs == 1  # one graph for the one shape: no graph break, no recompile


def test_compiled_run_resumes_exactly(no_dropout_model, nsmc_slices, tmp_path):
    """Killed after step 3 (checkpoint at step 2) and resumed: the same weights' bytes as the uninterrupted
    compiled run. The model without dropout: its graph is the one the test above compiled, read from inductor's
    cache (with dropout, another graph: ~40 s more to compile; it resumed exactly too, inductor's dropout seeds
    coming from the checkpointed torch RNG state)."""
    args = ["train", "--train", nsmc_slices["train"], "--text-col", "document", "--model", no_dropout_model,
            "--sample", 0.05, "--max-length", 16, "--batch-size", 16, "--grad-accum", 2, "--max-steps", 5, "--lr", 2e-3, "--seed", 0,
            "--precision", "fp32", "--compile", "on", "--ngram", "off", "--no-calibrate", "--checkpoint-every", 2]
    argv = lambda out: [sys.executable, "-m", "bertclf", *map(str, args), "--out", str(out)]  # noqa: E731
    whole = subprocess.run(argv(tmp_path / "whole"), cwd=REPO, env=train_env(), capture_output=True, text=True,
                           timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    kill_at([*args, "--out", tmp_path / "run"], "step:3", tmp_path)
    resumed = subprocess.run([*argv(tmp_path / "run"), "--resume"], cwd=REPO, env=train_env(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0 and "resumed from step-00000002" in resumed.stdout, resumed.stderr[-2000:]
    assert (tmp_path / "run/model.safetensors").read_bytes() == (tmp_path / "whole/model.safetensors").read_bytes()


def test_compile_refuses_a_bad_value_with_one_line(capsys, tmp_path):
    from bertclf.cli import main

    status = main(["train", "--train", "x.tsv", "--out", str(tmp_path / "o"), "--compile", "yes"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "--compile" in err[0] and "'yes'" in err[0], err


def test_static_padding_changes_no_loss(tiny_model_dir):
    """The padding a compiled step adds (width rounded up to a static width, rows of one pad token each) leaves the
    real rows' logits, and so the loss, as the eager batch has them, to float rounding."""
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification

    from bertclf.data.batches import collate
    from bertclf.models.forward import prepared_mask, takes_prepared_mask

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2).eval()
    rng = np.random.default_rng(0)
    ids = [rng.integers(5, 500, size=n) for n in (5, 9, 13)]
    rows, labels = np.arange(3), np.array([0, 1, 1])
    plain = collate(ids, rows, 1, labels)
    padded = collate(ids, rows, 1, labels, widths=static_widths(64), pad_rows_to=8)
    assert plain["input_ids"].shape == (3, 16) and padded["input_ids"].shape == (8, 16)
    assert padded["attention_mask"][3:].sum(1).tolist() == [1] * 5 and padded["labels"].tolist() == [0, 1, 1]
    wider = collate(ids, rows, 1, labels, widths=(24, 64), pad_rows_to=8)
    assert wider["input_ids"].shape == (8, 24)
    assert takes_prepared_mask(model)  # BERT in transformers 5: masks built by masking_utils
    with torch.no_grad():
        want = model(input_ids=plain["input_ids"], attention_mask=plain["attention_mask"]).logits
        for batch in (padded, wider):
            got = model(input_ids=batch["input_ids"], attention_mask=prepared_mask(batch["attention_mask"])).logits
            assert torch.allclose(got[:3], want, atol=1e-5)
            loss = torch.nn.functional.cross_entropy
            assert loss(got[:3], batch["labels"]).item() == pytest.approx(loss(want, plain["labels"]).item(), rel=1e-5)
