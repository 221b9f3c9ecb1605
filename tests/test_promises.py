"""Promised success paths and training behaviours, through the real commands (`python -m bertclf ...`) on the
tiny random-weight model and NSMC slices: `eval` (table, --json, --errors), `baseline`, `models`; every
setting `--resume` must refuse; the final weights are the best checkpoint's, not the last step's; early
stopping at exactly best step + patience x eval interval; the tutorial-style log lines."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bertclf.rundir import checkpoint as ckpt
from bertclf.train.config import RESUME_KEYS
from bertclf.data.metrics import expected_calibration_error

from train_hooks import PAUSE_ENV, PAUSE_MARK  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HOOKED = [sys.executable, str(REPO / "tests" / "support" / "hooked_train.py")]  # the CLI plus the test callbacks


def _env(**extra) -> dict:
    env = dict(os.environ, BERTCLF_NO_PROGRESS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS="1",  # runs compared byte for byte use the same thread count
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop(PAUSE_ENV, None)
    return env | extra


def bertclf(*args, timeout=600, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bertclf", *map(str, args)], cwd=REPO, env=_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def kill_at(args, point: str, log_dir: Path, timeout: float = 600) -> None:
    """Run `bertclf train` until the BERTCLF_TEST_PAUSE_AT hook pauses at `point`, then SIGKILL it."""
    err = log_dir / f"killed-{point.replace(':', '-')}.err"
    with open(err.with_suffix(".out"), "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(HOOKED + [*map(str, args)], cwd=REPO, env=_env(**{PAUSE_ENV: point}), stdout=o,
                                stderr=e)
    deadline = time.monotonic() + timeout
    try:
        while f"{PAUSE_MARK} {point}" not in err.read_text():
            assert proc.poll() is None, f"exited ({proc.returncode}) before {point}: {err.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"did not reach {point} in {timeout:.0f} s"
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- eval, baseline, models

def test_eval_table_json_and_errors_file(trained_tiny_dir, nsmc_slices, tmp_path):
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    from bertclf.data.dataset import read_labelled
    from bertclf.inference.classifier import Classifier

    ds = read_labelled(nsmc_slices["test"], "document", "label")
    # fp32 on both sides: bf16 autocast (the default on AMX CPUs) gives scores that depend on the batch's padding
    clf = Classifier.load(str(trained_tiny_dir), precision="fp32")
    probs = clf.predict_proba(ds.texts)
    y = np.array([clf.labels.index(lab) for lab in ds.labels])
    pred = probs.argmax(1)
    acc, macro = accuracy_score(y, pred), f1_score(y, pred, average="macro")
    cm = confusion_matrix(y, pred)

    errors = tmp_path / "errors.tsv"
    r = bertclf("eval", trained_tiny_dir, "--test", nsmc_slices["test"], "--text-col", "document",
                "--errors", errors, "--precision", "fp32")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    weighted = f1_score(y, pred, average="weighted")
    ece = expected_calibration_error(y, probs)
    assert f"accuracy {acc:.4f}, weighted-F1 {weighted:.4f} on {len(ds)} rows, ECE {ece:.4f} (15 bins)" in lines
    macro_line = next(ln for ln in lines if ln.startswith("macro"))
    assert re.fullmatch(rf"macro\s+\d\.\d{{4}}\s+\d\.\d{{4}}\s+{macro:.4f}\s+{len(ds)}", macro_line), macro_line
    at = lines.index("confusion matrix (rows: true, columns: predicted)")
    for i, lab in enumerate(clf.labels):
        assert lines[at + 2 + i].split() == [lab, *map(str, cm[i])]
    assert lines[-1] == f"misclassified rows written to {errors}"

    with open(errors, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["row", "line", "text", "label", "predicted", "score"] + [f"p_{lab}" for lab in clf.labels]
    wrong = np.flatnonzero(pred != y)
    assert len(rows) - 1 == len(wrong) == cm.sum() - np.trace(cm)
    file_lines = Path(nsmc_slices["test"]).read_text(encoding="utf-8").splitlines()
    for row, i in zip(rows[1:], wrong):
        assert row[2:5] == [ds.texts[i], ds.labels[i], clf.labels[pred[i]]]
        # the row and line find the text in the file (the slice has a header and no blank line or empty text)
        cells = next(csv.reader([file_lines[int(row[1]) - 1]], delimiter="\t"))  # a wholly quoted cell unquoted
        assert int(row[0]) == i and cells[1] == ds.texts[i]
        np.testing.assert_allclose([float(v) for v in row[6:]], probs[i], atol=1e-6)
        assert float(row[5]) == pytest.approx(probs[i].max(), abs=1e-6)

    r = bertclf("eval", trained_tiny_dir, "--test", nsmc_slices["test"], "--text-col", "document", "--json",
                "--precision", "fp32")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["n"] == len(ds) and rep["labels"] == clf.labels
    assert rep["accuracy"] == pytest.approx(acc, abs=1e-12) and rep["macro_f1"] == pytest.approx(macro, abs=1e-12)
    assert rep["confusion_matrix"] == cm.tolist()


def test_baseline_learns_and_stores_its_result(nsmc_slices, tmp_path):
    from bertclf.data.dataset import read_labelled

    test_labels = read_labelled(nsmc_slices["test"], "document", "label").labels
    majority = max(test_labels.count(lab) for lab in set(test_labels)) / len(test_labels)
    r = bertclf("baseline", "--train", nsmc_slices["train"], "--test", nsmc_slices["test"], "--text-col",
                "document", "--out", tmp_path, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res == json.loads((tmp_path / "baseline.json").read_text())
    assert res["n_train"] == 3000 and res["n_test"] == 500
    cm = np.array(res["report"]["confusion_matrix"])
    assert res["accuracy"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-12) and cm.sum() == 500
    # the promise of a yardstick: it beats always answering the majority class (TF-IDF on 3,000 reviews does)
    assert res["accuracy"] > majority + 0.1, (res["accuracy"], majority)

    r = bertclf("baseline", "--train", nsmc_slices["train"], "--test", nsmc_slices["test"], "--text-col", "document")
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(rf"TF-IDF \+ logistic regression: accuracy {res['accuracy']:.4f}, macro-F1 "
                        rf"{res['macro_f1']:.4f}, weighted-F1 {res['weighted_f1']:.4f} on 500 test rows "
                        rf"\(trained on 3000 rows in \d+\.\ds\)\n", r.stdout)


def test_models_list_and_path(me5_dir):
    from bertclf.models.builtin import BUILTIN_MODELS

    r = bertclf("models", "list")
    assert r.returncode == 0, r.stderr
    assert [ln.split("\t")[0] for ln in r.stdout.splitlines()] == list(BUILTIN_MODELS) and "me5-small" in r.stdout
    r = bertclf("models", "path")
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip())
    assert path == me5_dir and (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert bertclf("models", "path", "me5-small").stdout == r.stdout


# ---------------------------------------------------------------- --resume refuses changed settings

@pytest.fixture(scope="module")
def resumable(nsmc_slices, tiny_model_dir, tmp_path_factory):
    """A run killed after step 3 (checkpoint at step 2), on a copy of the train slice with a second label column
    (same classes, other names), so --label-col can change without changing the model's shape."""
    d = tmp_path_factory.mktemp("resumable")
    rows = nsmc_slices["train"].read_text(encoding="utf-8").splitlines()
    train = d / "train.tsv"
    train.write_text("\n".join([rows[0] + "\tsentiment"] + [r + "\t" + ("pos" if r.endswith("1") else "neg")
                                                            for r in rows[1:]]) + "\n", encoding="utf-8")
    base = {"--train": train, "--text-col": "document", "--label-col": "label", "--model": tiny_model_dir,
            "--sample": 0.25, "--epochs": 1, "--max-steps": 6, "--batch-size": 16, "--lr": 2e-3, "--seed": 0,
            "--precision": "auto", "--grad-accum": 1, "--valid-frac": 0.05, "--warmup": 0.06,
            "--weight-decay": 0.01, "--max-length": 128, "--eval-every": 3, "--checkpoint-every": 2,
            "--log-every": 1, "--out": d / "run"}
    kill_at(["train", *[str(x) for kv in base.items() for x in kv]], "step:3", d)
    assert [p.name for p in ckpt.step_checkpoints(d / "run")] == ["step-00000002"]
    model_copy = d / "same-model-elsewhere"
    shutil.copytree(tiny_model_dir, model_copy)
    train_copy = d / "same-rows-elsewhere.tsv"
    shutil.copy(train, train_copy)
    return {"base": base, "dir": d, "model_copy": model_copy, "train_copy": train_copy}


def changed_setting(key: str, r: dict, nsmc_slices, nsmc_dir) -> tuple[dict, list[str]]:
    """The base command line with one setting changed: (flags replaced, flags added)."""
    flag = "--" + key.replace("_", "-")
    swap = {"train": r["train_copy"], "model": r["model_copy"], "epochs": 2, "batch_size": 8, "lr": 1e-3,
            "max_length": 64, "sample": 0.3, "seed": 1, "max_steps": 7, "precision": "fp32", "grad_accum": 2,
            "valid_frac": 0.1, "warmup": 0.1, "weight_decay": 0.0, "text_col": "id", "label_col": "sentiment",
            "eval_every": 2, "max_grad_norm": 0.5, "label_sep": ";", "class_weights": "auto", "metric": "macro_f1",
            "long_text": "head-tail", "select": "best", "encoding": "latin-1",  # latin-1 reads any bytes
            "text_pair_col": "sentiment", "group_col": "document"}
    if key in swap:
        return {flag: swap[key]}, []
    if key == "valid":
        return {}, ["--valid", str(nsmc_slices["test"])]
    if key == "trim_vocab":
        return {}, ["--trim-vocab"]
    if key == "multi_label":
        return {}, ["--multi-label"]
    if key == "columns":  # the header line then reads as a row
        return {}, ["--columns", "id,document,label,sentiment"]
    if key == "label_names":  # the cells 0/1 as ids of these names
        names = r["dir"] / "names.txt"
        names.write_text("neg\npos\n", encoding="utf-8")
        return {}, ["--label-names", str(names)]
    if key == "data":  # --data nsmc instead of --train FILE
        return {"--train": None}, ["--data", "nsmc", "--data-dir", str(nsmc_dir)]
    return derived_change(key)


def derived_change(key: str) -> tuple[dict, list[str]]:
    """Another valid value for a field this test has no case for, from its declaration in TrainConfig: a new
    resume setting is tested without editing this file, as long as its declaration says what it takes."""
    from dataclasses import fields

    from bertclf.train.config import TrainConfig

    f = next(f for f in fields(TrainConfig) if f.name == key)
    flag, meta = "--" + key.replace("_", "-"), f.metadata
    if meta.get("choices"):
        return {flag: next(c for c in reversed(meta["choices"]) if c != f.default)}, []
    if f.type in ("bool", "bool | None") or meta.get("negatable") or meta.get("tri_state"):
        return {}, [("--no-" + key.replace("_", "-")) if f.default else flag]
    rng = meta.get("range")
    if rng is not None and rng.high is not None:
        return {flag: (rng.low + rng.high) / 2}, []
    if rng is not None:
        return {flag: (f.default or rng.low or 1) + 1}, []
    raise AssertionError(f"RESUME_KEYS has {key!r}, whose declaration says no other value: add a case here")


@pytest.mark.parametrize("key", RESUME_KEYS)
def test_resume_refuses_each_changed_setting_naming_its_flag(key, resumable, nsmc_slices, nsmc_dir, capsys,
                                                            monkeypatch):
    """The CLI's own main() in this process (a subprocess per case would spend most of its time importing
    torch); the exit status and stderr are what `bertclf train ... --resume` gives."""
    from bertclf.cli import main

    replace, add = changed_setting(key, resumable, nsmc_slices, nsmc_dir)
    flags = {k: v for k, v in (resumable["base"] | replace).items() if v is not None}
    run = resumable["base"]["--out"]
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    monkeypatch.setenv("BERTCLF_NO_PROGRESS", "1")
    capsys.readouterr()
    status = main(["train", *[str(x) for kv in flags.items() for x in kv], *add, "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    flag = "--" + key.replace("_", "-")
    assert status == 2 and len(err) == 1, (status, err[-5:])
    assert err[0].startswith("bertclf: error: --resume: ") and re.search(rf"{flag}\b", err[0]), err[0]
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # a refusal touches nothing


def test_resume_with_the_same_settings_is_accepted(resumable):
    """The other side of the refusals: the unchanged command line resumes (on a copy of the killed run)."""
    out = resumable["dir"] / "accepted"
    shutil.copytree(resumable["base"]["--out"], out)
    flags = resumable["base"] | {"--out": out}
    r = bertclf("train", *[x for kv in flags.items() for x in kv], "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from step-00000002: step 2, epoch 1" in r.stdout


# ---------------------------------------------------------------- best weights, early stopping, log lines

PATIENCE, EVAL_EVERY, LOG_EVERY = 2, 3, 3
TUTORIAL_LINE = re.compile(r"\[Epoch (\d+)/(\d+)\] step (\d+) -> loss (\d+\.\d{4}), acc ([01]\.\d{4}) \((\d+) samples/s\)")
VALID_LINE = re.compile(r"validation @ step (\d+): accuracy ([01]\.\d{4}), macro-F1 ([01]\.\d{4}) "
                        r"\((best so far|best ([01]\.\d{4}) @ step (\d+))\)")


def early_stop_args(slices, model, out) -> list:
    return ["train", "--train", slices["train"], "--text-col", "document", "--model", model, "--sample", 0.25,
            "--epochs", 2, "--batch-size", 16, "--lr", 2e-3, "--seed", 0, "--eval-every", EVAL_EVERY,
            "--patience", PATIENCE, "--log-every", LOG_EVERY, "--select", "best", "--out", out,
            "--ngram", "off",  # the temperature is then folded into the head, which the weights test undoes
            "--valid-frac", 0.15]  # >= 100 validation rows: the run fits and folds a temperature


@pytest.fixture(scope="module")
def early_stopped(nsmc_slices, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("early") / "run"
    r = bertclf(*early_stop_args(nsmc_slices, tiny_model_dir, out))
    assert r.returncode == 0, r.stderr[-2000:]
    return out, r.stdout


def test_early_stopping_at_exactly_best_step_plus_patience_evaluations(early_stopped):
    out, stdout = early_stopped
    card = json.loads((out / "bertclf.json").read_text())["training"]
    assert card["stop_reason"] == f"early stop: no improvement in {PATIENCE} evaluation(s)", card
    assert card["steps"] == card["best_step"] + PATIENCE * EVAL_EVERY, card
    evals = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    evals = [e for e in evals if "valid_accuracy" in e]
    assert [e["step"] for e in evals] == list(range(EVAL_EVERY, card["steps"] + 1, EVAL_EVERY))
    best = max(e["valid_accuracy"] for e in evals)
    first_best = next(e["step"] for e in evals if e["valid_accuracy"] == best)
    assert card["best_step"] == first_best  # a tie is not an improvement
    assert [e["best"] for e in evals[-PATIENCE:]] == [False] * PATIENCE and evals[-PATIENCE - 1]["best"]


def test_final_weights_are_the_best_checkpoints_not_the_last_steps(early_stopped, nsmc_slices, tiny_model_dir,
                                                                   tmp_path):
    """An early-stopped run ends PATIENCE validations after its best, so its last step is not its best. The same
    run killed right after its last optimizer step (before that step's validation) holds checkpoints/best:
    the finished run's model.safetensors must hold exactly those tensors."""
    from safetensors.torch import load_file

    out, _ = early_stopped
    card = json.loads((out / "bertclf.json").read_text())["training"]
    last, best_step = card["steps"], card["best_step"]
    assert best_step < last
    killed = tmp_path / "run"
    # --checkpoint-every does not change the computation; it leaves the weights of step last-1 to compare with
    kill_at([*early_stop_args(nsmc_slices, tiny_model_dir, killed), "--checkpoint-every", 1], f"step:{last}",
            tmp_path)
    best = load_file(killed / "checkpoints" / "best" / "model.safetensors")
    late = load_file(killed / "checkpoints" / f"step-{last - 1:08d}" / "model.safetensors")
    final = load_file(out / "model.safetensors")
    assert set(final) == set(best)
    # calibration folds its temperature into the classifier when the run finishes (bertclf/train/calibration.py)
    t = json.loads((out / "bertclf.json").read_text())["calibration"]["temperature"]
    for k in ("classifier.weight", "classifier.bias"):
        np.testing.assert_allclose(final[k].numpy(), best[k].numpy() / t, rtol=1e-6, atol=1e-7)
    different = [k for k in final if not k.startswith("classifier.")
                 and not np.array_equal(final[k].numpy(), best[k].numpy())]
    assert not different, different[:5]
    # and those are not the late weights: the model kept training after its best step
    assert any(not np.array_equal(final[k].numpy(), late[k].numpy()) for k in final if k in late)


def test_log_lines_have_the_tutorial_format_and_match_the_log_file(early_stopped):
    out, stdout = early_stopped
    records = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss" in r]
    printed = [m for ln in stdout.splitlines() if (m := TUTORIAL_LINE.fullmatch(ln))]
    assert len(printed) == len(train_records) > 0
    for m, rec in zip(printed, train_records):
        epoch, n_epochs, step, loss, acc, sps = m.groups()
        assert int(n_epochs) == 2 and int(epoch) == int(rec["epoch"] - 1e-9) + 1
        assert int(step) == rec["step"] and (rec["step"] % LOG_EVERY == 0)
        assert loss == f"{rec['loss']:.4f}" and acc == f"{rec['acc']:.4f}" and int(sps) == round(rec["samples_per_s"])
    valid_records = [r for r in records if "valid_accuracy" in r]
    printed = [m for ln in stdout.splitlines() if (m := VALID_LINE.fullmatch(ln))]
    assert len(printed) == len(valid_records) > 0
    for m, rec in zip(printed, valid_records):
        assert int(m.group(1)) == rec["step"] and m.group(2) == f"{rec['valid_accuracy']:.4f}"
        assert (m.group(4) == "best so far") == rec["best"]
