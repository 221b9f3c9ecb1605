"""Resuming a run: --resume refuses each setting that changes the computation (one line naming the flag, the
run folder untouched) and accepts the unchanged command line; a checkpoint that does not fit this run's model or
optimizer is one line, nothing written. Crash safety itself (kills at exact points, byte-identical resumes) is
tests/rundir/test_crash_resume.py; resume across processes, tests/train/test_distributed.py.

Found for real: a `bertclf distill --resume auto` of a checkpoint written before the classification head got
its own lr group (2 optimizer parameter groups then, 4 now) ended in torch's ValueError traceback."""
from __future__ import annotations

import re
import shutil

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from bertclf.errors import UserError
from bertclf.train.callbacks import TrainCallback
from bertclf.train.loop import train
from bertclf.rundir import checkpoint as ckpt
from bertclf.train.config import RESUME_KEYS

from _cli import bertclf, kill_at
from tiny_runs import tiny_cfg
from train_hooks import CrashAfter


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
    if key == "texts":  # a plain run resumed as a --texts run
        more = r["dir"] / "more.txt"
        more.write_text("정말 재밌어요\n시간 아깝다\n", encoding="utf-8")
        return {}, ["--texts", str(more)]
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


# ---------------------------------------------------------------- a changed training file, --resume auto

class _ResumeAccepted(Exception):
    pass


class _StopAtBegin(TrainCallback):
    """Ends the run where it would take its first step: every resume check passed. `started`: the steps it began at."""

    def __init__(self):
        self.started = []

    def on_train_begin(self, run):
        self.started.append(run.state.step)
        raise _ResumeAccepted


def test_resume_refuses_a_changed_training_file(tiny_model_dir, nsmc_slices, tmp_path, monkeypatch):
    """--resume compares the training file's SHA-256 with the one in the checkpoint, not only its path: a file
    replaced between the crash and the resume is refused with one line; the original file is accepted."""
    data = tmp_path / "train.tsv"
    shutil.copy(nsmc_slices["train"], data)
    cfg = dict(out=tmp_path / "run", slices={"train": data, "test": nsmc_slices["test"]}, model=tiny_model_dir,
               max_steps=5, checkpoint_every=2, sample=0.2)
    with pytest.raises(RuntimeError, match="crash after step 3"):
        train(tiny_cfg(**cfg), echo=lambda s: None, callbacks=[CrashAfter(3)])
    original = data.read_bytes()
    lines = original.decode("utf-8").splitlines(keepends=True)
    data.write_text(lines[0] + lines[2] + lines[1] + "".join(lines[3:]), encoding="utf-8")  # same rows, reordered
    with pytest.raises(UserError, match=r"--resume: .*train\.tsv changed since .*SHA-256 differs"):
        train(tiny_cfg(**cfg, resume=True), echo=lambda s: None)

    data.write_bytes(original)
    with pytest.raises(_ResumeAccepted):  # past every resume check
        train(tiny_cfg(**cfg, resume=True), echo=lambda s: None, callbacks=[_StopAtBegin()])


def test_resume_auto_continues_a_checkpoint_or_starts_fresh(tiny_model_dir, nsmc_slices, trained_tiny_dir, tmp_path,
                                                            monkeypatch):
    """--resume auto: the same command resumes where a complete checkpoint exists, starts fresh where none does
    (an empty folder, or a run killed before its first checkpoint), and never replaces a finished model."""
    out = tmp_path / "run"
    cfg = dict(out=out, slices=nsmc_slices, model=tiny_model_dir, max_steps=5, checkpoint_every=2, sample=0.2)
    with pytest.raises(RuntimeError, match="crash after step 2"):  # before its first checkpoint: fresh start next
        train(tiny_cfg(**cfg, resume="auto"), echo=lambda s: None, callbacks=[CrashAfter(2)])
    assert (out / "train_log.jsonl").exists() and not (out / "checkpoints").exists()
    with pytest.raises(RuntimeError, match="crash after step 3"):
        train(tiny_cfg(**cfg, resume="auto"), echo=lambda s: None, callbacks=[CrashAfter(3)])

    begin = _StopAtBegin()
    lines = []
    with pytest.raises(_ResumeAccepted):
        train(tiny_cfg(**cfg, resume="auto"), echo=lines.append, callbacks=[begin])
    assert begin.started == [2] and "resumed from step-00000002: step 2, epoch 1" in lines
    with pytest.raises(UserError, match="finished model"):
        train(tiny_cfg(trained_tiny_dir, nsmc_slices, tiny_model_dir, resume="auto"), echo=lambda s: None)
    with pytest.raises(UserError, match="--resume"):
        train(tiny_cfg(**cfg, resume="yes"), echo=lambda s: None)


# ---------------------------------------------------------------- checkpoints that do not fit

def _model(num_labels: int = 2):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     num_labels=num_labels)
    return BertForSequenceClassification(cfg)


def _adamw(model, groups: int):
    """AdamW over the model's parameters in `groups` parameter groups (the layout decides what loads)."""
    params = list(model.parameters())
    return torch.optim.AdamW([{"params": params[i::groups]} for i in range(groups)], lr=1e-4)


def _saved(tmp_path, model, optimizer):
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([1])).loss.backward()
    optimizer.step()
    return ckpt.save_checkpoint(tmp_path / "run", 10, model, optimizer, scheduler, {"step": 10})


def _refusal(found, model, optimizer) -> str:
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    before = sorted(p.name for p in found.iterdir())
    with pytest.raises(UserError) as e:
        ckpt.load_checkpoint(found, model, optimizer, scheduler)
    assert sorted(p.name for p in found.iterdir()) == before  # the checkpoint is left as it was
    msg = str(e.value)
    assert "\n" not in msg and str(found) in msg and "--overwrite" in msg, msg
    return msg


def test_another_optimizer_layout_is_one_line(tmp_path):
    model = _model()
    found = _saved(tmp_path, model, _adamw(model, 2))
    msg = _refusal(found, _model(), _adamw(_model(), 4))
    assert "parameter groups" in msg, msg


def test_another_model_shape_is_one_line(tmp_path):
    model = _model()
    found = _saved(tmp_path, model, _adamw(model, 2))
    three = _model(num_labels=3)
    msg = _refusal(found, three, _adamw(three, 2))
    assert "size mismatch for classifier.weight" in msg, msg


def test_the_same_layout_still_loads(tmp_path):
    model = _model()
    opt = _adamw(model, 2)
    found = _saved(tmp_path, model, opt)
    again = _model()
    opt2 = _adamw(again, 2)
    state = ckpt.load_checkpoint(found, again, opt2, torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0))
    assert state == {"step": 10}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_a_refused_default_lr_is_named_with_the_flag_that_moved_it(tmp_path):
    """--resume with only --batch-size changed: the default lr follows the batch size, so it differs too; the line
    says so instead of naming an --lr the user never passed."""
    from bertclf.train.prepare import default_lr, refuse_changed_settings

    model = _model()
    optimizer = _adamw(model, 2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    from dataclasses import asdict

    from bertclf.train.config import TrainConfig

    args = asdict(TrainConfig(out=str(tmp_path / "run"))) | {"batch_size": 32, "lr": default_lr(32)}
    ckpt.save_checkpoint(tmp_path / "run", 10, model, optimizer, scheduler, {"step": 10, "args": args})
    with pytest.raises(UserError) as e:
        refuse_changed_settings(tmp_path / "run", args | {"batch_size": 16, "lr": default_lr(16)},
                                {"lr": "--batch-size"})
    assert str(e.value).startswith("--resume: --batch-size, --lr (its default follows --batch-size) differ from ")
    with pytest.raises(UserError) as e:  # an --lr the user passed is named plainly
        refuse_changed_settings(tmp_path / "run", args | {"lr": 1e-3}, {})
    assert str(e.value).startswith("--resume: --lr differs from ")
