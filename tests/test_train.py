"""The training loop on a tiny random-weight BERT with the real tokenizer: output format, accumulation, early
stopping, and refusals. Kill-and-resume is tested in test_crash_resume.py."""
import json
import shutil

import numpy as np
import pytest

from bertclf.errors import UserError
from bertclf.loop import TrainConfig, train


def tiny_cfg(out, slices, model, **kw):
    base = dict(out=str(out), train=str(slices["train"]), test=str(slices["test"]), text_col="document",
                model=str(model), epochs=1, batch_size=16, lr=2e-3, seed=0)
    return TrainConfig(**(base | kw))


def test_output_is_a_standard_hf_directory(trained_tiny_dir):
    from transformers import pipeline

    d = trained_tiny_dir
    for name in ("config.json", "model.safetensors", "tokenizer.json", "bertclf.json", "train_log.jsonl"):
        assert (d / name).is_file(), name
    assert not (d / "checkpoints").exists()
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["id2label"] == {"0": "0", "1": "1"} and cfg["label2id"] == {"0": 0, "1": 1}
    card = json.loads((d / "bertclf.json").read_text())
    assert card["data"]["train"]["rows"] + card["data"]["valid"]["rows"] == 3000
    assert card["metrics"]["test"]["n"] == 500
    assert card["metrics"]["test"]["accuracy"] > 0.6  # the tiny model learns something in seconds
    assert card["training"]["samples_per_s"] > 0 and card["versions"]["torch"]
    clf = pipeline("text-classification", model=str(d), device="cpu")
    out = clf(["정말 재밌어요 최고", "시간 아깝다 최악"])
    assert [o["label"] for o in out] == ["1", "0"]


def test_log_lines_match_the_tutorial(trained_tiny_dir):
    rows = [json.loads(x) for x in (trained_tiny_dir / "train_log.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "valid_accuracy" in r]
    assert len(evals) == 2  # one validation per epoch, 2 epochs
    assert all(np.isfinite(r["loss"]) and 0 <= r["acc"] <= 1 for r in train_rows)
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]


def test_gradient_accumulation_matches_the_full_batch(tiny_model_dir, nsmc_slices, tmp_path):
    import torch
    from safetensors.torch import load_file

    # Dropout draws different masks for 4 micro-batches than for one batch; switch it off so the two runs
    # compute the same function and only the accumulation is compared.
    model = tmp_path / "no-dropout"
    shutil.copytree(tiny_model_dir, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg |= {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout": 0.0}
    (model / "config.json").write_text(json.dumps(cfg))
    train(tiny_cfg(tmp_path / "full", nsmc_slices, model, batch_size=16, max_steps=20), echo=lambda s: None)
    train(tiny_cfg(tmp_path / "acc", nsmc_slices, model, batch_size=4, grad_accum=4, max_steps=20),
          echo=lambda s: None)
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "acc" / "model.safetensors")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, worst


def test_early_stopping(tiny_model_dir, nsmc_slices, tmp_path):
    card = train(tiny_cfg(tmp_path / "es", nsmc_slices, tiny_model_dir, lr=1e-7, epochs=3, eval_every=10,
                          patience=2), echo=lambda s: None)
    assert card["training"]["stop_reason"].startswith("early stop")
    assert card["training"]["steps"] < 3 * 179


def test_refusals(tiny_model_dir, nsmc_slices, trained_tiny_dir, tmp_path):
    with pytest.raises(UserError, match="already holds a finished model"):
        train(tiny_cfg(trained_tiny_dir, nsmc_slices, tiny_model_dir), echo=lambda s: None)
    with pytest.raises(UserError, match="no checkpoint to resume"):
        train(tiny_cfg(tmp_path / "new", nsmc_slices, tiny_model_dir, resume=True), echo=lambda s: None)
    with pytest.raises(UserError, match="--sample"):
        train(tiny_cfg(tmp_path / "x", nsmc_slices, tiny_model_dir, sample=0), echo=lambda s: None)
    with pytest.raises(UserError, match="--epochs"):
        train(tiny_cfg(tmp_path / "x", nsmc_slices, tiny_model_dir, epochs=-1), echo=lambda s: None)
    with pytest.raises(UserError, match="not a model directory"):
        train(tiny_cfg(tmp_path / "x", nsmc_slices, tmp_path), echo=lambda s: None)


def test_test_sample_scores_a_stratified_share_of_the_test_rows(tiny_model_dir, nsmc_slices, tmp_path):
    from bertclf.cli import main

    card = train(tiny_cfg(tmp_path / "ts", nsmc_slices, tiny_model_dir, max_steps=2, test_sample=0.5),
                 echo=lambda s: None)
    assert card["metrics"]["test"]["n"] == 250 and card["data"]["test"]["rows"] == 250
    assert main(["train", "--train", str(nsmc_slices["train"]), "--model", str(tiny_model_dir),
                 "--out", str(tmp_path / "bad"), "--test-sample", "0"]) == 2


@pytest.mark.xfail(strict=True, reason="loop.py must read its data through bertclf.data.load_training_data "
                   "(one-line change for the lead when merging the loop rewrite); then remove this mark")
def test_train_reads_headerless_cp949_files_with_columns_and_encoding(tiny_model_dir, nsmc_slices, tmp_path):
    from bertclf.cli import main

    lines = nsmc_slices["train"].read_text(encoding="utf-8").splitlines(keepends=True)[1:401]
    f = tmp_path / "headerless-cp949.tsv"
    f.write_bytes("".join(lines).encode("cp949", errors="replace"))
    assert main(["train", "--train", str(f), "--columns", "id,text,label", "--encoding", "cp949", "--model",
                 str(tiny_model_dir), "--batch-size", "16", "--max-steps", "2", "--out", str(tmp_path / "run")]) == 0
    card = json.loads((tmp_path / "run" / "bertclf.json").read_text())
    assert card["args"]["columns"] == ["id", "text", "label"]
    assert card["data"]["train"]["rows"] + card["data"]["valid"]["rows"] == 400
