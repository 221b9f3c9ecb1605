"""The training loop on a tiny random-weight BERT with the real tokenizer: output format, accumulation, early
stopping, and refusals. Resuming is tests/rundir/test_resume.py; kill-and-resume, tests/rundir/test_crash_resume.py."""
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from bertclf.errors import UserError
from bertclf.train.loop import train

from tiny_runs import tiny_cfg


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
    # fp32: bf16 autocast (the default on AMX CPUs) rounds the two batchings differently
    train(tiny_cfg(tmp_path / "full", nsmc_slices, model, batch_size=16, max_steps=20, precision="fp32"),
          echo=lambda s: None)
    train(tiny_cfg(tmp_path / "acc", nsmc_slices, model, batch_size=4, grad_accum=4, max_steps=20, precision="fp32"),
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


def test_one_run_per_output_folder(tiny_model_dir, nsmc_slices, tmp_path):
    """A second run on an --out that a live run holds is refused with one line naming that process, even with
    --overwrite or --resume; once the holder is dead (SIGKILL: no cleanup ran), its lock does not block."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "run"
    args = ["train", "--train", str(nsmc_slices["train"]), "--text-col", "document", "--model", str(tiny_model_dir),
            "--sample", "0.2", "--batch-size", "16", "--max-steps", "4", "--checkpoint-every", "1", "--out", str(out),
            "--epochs", "1", "--lr", "2e-3", "--seed", "0"]  # tiny_cfg's settings: --resume must accept them
    env = os.environ | {"BERTCLF_TEST_PAUSE_AT": "step:2", "BERTCLF_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1",
                        "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    holder = subprocess.Popen([sys.executable, str(repo / "tests" / "support" / "hooked_train.py"), *args], cwd=repo, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while "paused at step:2" not in (err := holder.stderr.readline()) and holder.poll() is None:
            assert time.monotonic() < deadline, "the first run did not reach step 2"
        assert holder.poll() is None, err
        cfg = tiny_cfg(out, nsmc_slices, tiny_model_dir, sample=0.2, max_steps=4, checkpoint_every=1)
        for kw in ({"overwrite": True}, {"resume": True}, {"resume": "auto"}):
            with pytest.raises(UserError, match=rf"another 'bertclf train' \(pid {holder.pid} on .*\) is running"):
                train(replace(cfg, **kw), echo=lambda s: None)
    finally:
        holder.kill()
        holder.wait()
    assert (out / ".bertclf.lock").exists()  # left behind by the killed run: it must not block
    card = train(replace(cfg, resume=True), echo=lambda s: None)
    assert card["training"]["steps"] == 4 and not (out / ".bertclf.lock").exists()
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


def test_a_failure_scoring_the_test_rows_keeps_the_trained_model(tiny_model_dir, nsmc_slices, tmp_path, monkeypatch):
    """Training has finished when the test rows are scored: if that fails (a fault injected here into the test
    rows' tokenization), the model is still written, its card has no test score, and one line says how to get
    it (issue 19: a failure after training must never cost the trained model)."""
    import bertclf.train.finish as finish

    def broken(*args, **kwargs):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(finish, "encode_rows", broken)
    lines = []
    card = train(tiny_cfg(tmp_path / "run", nsmc_slices, tiny_model_dir, max_steps=3), echo=lines.append)
    assert card["metrics"]["test"] is None
    assert (tmp_path / "run" / "model.safetensors").is_file() and (tmp_path / "run" / "bertclf.json").is_file()
    assert any("scoring the test rows failed (RuntimeError: injected fault)" in ln and "bertclf eval" in ln
               for ln in lines), lines


def test_validation_and_test_texts_also_in_training_are_counted_and_said(tiny_model_dir, nsmc_slices, tmp_path):
    """A --valid or --test file that repeats training texts is accepted (short reviews repeat), but said and
    recorded: its scores are partly scores on training texts."""
    from bertclf.data.dataset import read_labelled
    from bertclf.train.loop import TrainConfig, train

    ds = read_labelled(nsmc_slices["train"], "document", "label")
    head = "document\tlabel\n"
    rows = [f"{t}\t{y}\n" for t, y in zip(ds.texts, ds.labels)]
    (tmp_path / "tr.tsv").write_text(head + "".join(rows[:300]), encoding="utf-8")
    (tmp_path / "va.tsv").write_text(head + "".join(rows[:20] + rows[2000:2100]), encoding="utf-8")
    (tmp_path / "te.tsv").write_text(head + "".join(rows[20:30] + rows[2500:2550]), encoding="utf-8")
    train_texts = set(ds.texts[:300])
    want_valid = sum(t in train_texts for t in ds.texts[:20] + ds.texts[2000:2100])
    want_test = sum(t in train_texts for t in ds.texts[20:30] + ds.texts[2500:2550])
    assert want_valid >= 20 and want_test >= 10
    said = []
    card = train(TrainConfig(out=str(tmp_path / "run"), train=str(tmp_path / "tr.tsv"), valid=str(tmp_path / "va.tsv"),
                             test=str(tmp_path / "te.tsv"), text_col="document", model=str(tiny_model_dir),
                             max_steps=2, batch_size=8, seed=0), echo=said.append)
    assert card["data"]["valid"]["texts_in_train"] == want_valid and card["data"]["test"]["texts_in_train"] == want_test
    assert (f"repeated texts: also in the training rows: {want_valid} of 120 validation, {want_test} of 60 test (exact "
            f"repeats; their scores are partly scores on training texts)") in said


def test_the_cut_share_counts_only_texts_longer_than_max_length(tiny_model_dir, nsmc_slices):
    """A text of exactly --max-length tokens is not cut (the printed share counted it)."""
    from bertclf.data.dataset import read_labelled
    from bertclf.models.resolve import load_tokenizer
    from bertclf.train.prepare import count_cut
    from bertclf.data.tokens import encode, lengths

    tok = load_tokenizer(str(tiny_model_dir))
    texts = read_labelled(nsmc_slices["train"], "document", "label").texts[:300]
    full = np.array([len(x) for x in tok(texts)["input_ids"]])
    m = int(np.median(full))
    kept = lengths(encode(tok, texts, m))
    assert (full == m).any() and count_cut(tok, texts, kept, m) == (full > m).sum() < (kept >= m).sum()


def test_a_stop_signal_while_scoring_the_test_rows_saves_the_model_now(tiny_model_dir, nsmc_slices, tmp_path,
                                                                       monkeypatch):
    """SIGTERM after the last step used to be noted and ignored while the test rows were scored (minutes on all of
    NSMC test; a preempted job then met its hard kill). The scoring now gives way: the model is saved at once,
    without a test score, and the run says how to score it. The slow scoring is this test's own stand-in."""
    import os
    import signal
    import time

    from bertclf.train import finish
    from bertclf.train.loop import TrainConfig, train

    def slow_scoring(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)  # the signal's handler ends this at once
        raise AssertionError("the stop signal did not interrupt the test scoring")

    monkeypatch.setattr(finish, "_score_test", slow_scoring)
    said = []
    out = tmp_path / "run"
    handler = signal.getsignal(signal.SIGTERM)
    t0 = time.time()
    card = train(TrainConfig(out=str(out), train=str(nsmc_slices["train"]), test=str(nsmc_slices["test"]),
                             text_col="document", model=str(tiny_model_dir), sample=0.2, max_steps=2, batch_size=8,
                             seed=0), echo=said.append)
    assert time.time() - t0 < 50
    assert card["metrics"]["test"] is None and (out / "model.safetensors").is_file()
    assert f"SIGTERM while scoring the test rows: scoring skipped so that the model is saved now; score it with " \
           f"'bertclf eval {out} --test FILE'" in said
    assert signal.getsignal(signal.SIGTERM) == handler  # the run's handler is gone again
