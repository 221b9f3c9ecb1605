"""bertclf train --texts: the keep rule, both ways end to end (the kept pass's weights become OUT's, the card's
`texts` block says which and why), --resume after a stop in pass 2 (pass 1 reused, pass 2 continued from its
checkpoint), and one-line refusals of a missing, empty or column-less --texts file.

The tiny random-weight model of conftest; 400 labelled NSMC reviews (80 of them validation) and 200 more with their
labels dropped; a few dozen steps per pass. A pass is made to lose by zeroing its learning rate (its model stays
the random start) instead of hoping that a few steps on noise score worse."""
from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import pytest

from bertclf.train.callbacks import TrainCallback
from bertclf.train.config import TrainConfig

STEPS = 160  # measured: pass 1 of the tiny model reached 0.725 validation accuracy, pass 2 taught by a frozen
# (random) pass 1 0.775; a frozen pass scores 0.5 (it says one class for all 80 rows)


@pytest.fixture(scope="module")
def texts_data(nsmc_slices, tmp_path_factory) -> dict[str, Path]:
    """labelled.tsv: 400 rows of the tiny model's NSMC slice; more.txt: 200 other rows' texts, one per line."""
    lines = nsmc_slices["train"].read_text(encoding="utf-8").splitlines(keepends=True)
    d = tmp_path_factory.mktemp("texts")
    (d / "labelled.tsv").write_text("".join(lines[:401]), encoding="utf-8")
    (d / "more.txt").write_text("".join(line.split("\t")[1] + "\n" for line in lines[401:601]), encoding="utf-8")
    return {"train": d / "labelled.tsv", "texts": d / "more.txt"}


def config(texts_data, tiny_model_dir, out: Path, **kw) -> TrainConfig:
    return TrainConfig(**{"out": str(out), "train": str(texts_data["train"]), "texts": str(texts_data["texts"]),
                          "text_col": "document", "model": str(tiny_model_dir), "valid_frac": 0.2, "batch_size": 16,
                          "lr": 5e-3, "epochs": 10, "max_steps": STEPS, "ngram": "off", "precision": "fp32", "seed": 0} | kw)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Passes(TrainCallback):
    """Records each pass's final weights (their SHA-256) and can freeze one pass at its random start (lr 0) or
    send this process SIGTERM after a step of one pass, as a cluster taking the machine away would."""

    def __init__(self, frozen: int | None = None, stop_at: tuple[int, int] | None = None):
        self.frozen, self.stop_at, self.weights, self.current = frozen, stop_at, {}, None

    def on_train_begin(self, run) -> None:
        self.current = int(Path(run.out).name.split("-")[1])  # OUT/checkpoints/texts/pass-N
        if self.current == self.frozen:
            run.learner.scheduler.base_lrs = [0.0] * len(run.learner.scheduler.base_lrs)
            for group in run.learner.optimizer.param_groups:
                group["lr"] = 0.0

    def on_step_end(self, step: int) -> None:
        if (self.current, step) == self.stop_at:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_end(self, run, card: dict) -> None:
        self.weights[self.current] = sha256(Path(run.out) / "model.safetensors")


def run_texts(cfg: TrainConfig, passes: Passes) -> tuple[dict, list[str]]:
    from bertclf.distill.self_train import train

    lines: list[str] = []
    return train(cfg, echo=lines.append, callbacks=[passes]), lines


def test_the_keep_rule():
    from bertclf.distill.self_train import keep_pass_2

    assert keep_pass_2(0.80, 0.81) and keep_pass_2(0.80, 0.80)  # a tie goes to pass 2: it saw more text
    assert not keep_pass_2(0.80, 0.7999)
    assert not keep_pass_2(None, 0.9) and not keep_pass_2(0.8, None)  # unscored: pass 1 stays


@pytest.mark.parametrize("frozen, kept", [(1, 2), (2, 1)])
def test_the_pass_that_scores_higher_on_validation_is_the_model(texts_data, tiny_model_dir, tmp_path, frozen, kept):
    """Freeze one pass at its random start: the other is kept, its weights are OUT's, and the card says so."""
    from bertclf.inference.classifier import Classifier

    out = tmp_path / "run"
    passes = Passes(frozen=frozen)
    card, lines = run_texts(config(texts_data, tiny_model_dir, out), passes)
    block = card["texts"]
    assert block["kept"] == f"pass-{kept}" and block["rows"] == 200 and block["metric"] == "accuracy"
    assert block["sha256"] == sha256(texts_data["texts"]) and block["file"] == str(texts_data["texts"])
    assert block[f"pass_{kept}"]["valid"] > block[f"pass_{frozen}"]["valid"] + 0.05, block
    assert block["pass_1"]["seconds"] > 0 and block["pass_2"]["seconds"] > 0
    assert card["metrics"]["valid"]["accuracy"] == block[f"pass_{kept}"]["valid"]
    assert sha256(out / "model.safetensors") == passes.weights[kept] != passes.weights[frozen]
    assert json.loads((out / "bertclf.json").read_text()) == json.loads(json.dumps(card))
    assert card["args"]["texts"] == str(texts_data["texts"]) and card["args"]["out"] == str(out)
    assert card["data"]["train"]["rows"] == 320 + (200 if kept == 2 else 0)  # 400 labelled, 80 held out
    assert not (out / "checkpoints").exists()  # both passes' folders are gone
    assert any(line.startswith(f"--texts: kept pass {kept}: validation accuracy") for line in lines), lines
    assert len(Classifier.load(str(out)).predict(["정말 재밌어요"])) == 1  # a normal model directory


def test_resume_after_a_stop_in_pass_2_reuses_pass_1(texts_data, tiny_model_dir, tmp_path):
    from bertclf.train.preemption import Preempted

    out = tmp_path / "run"
    cfg = config(texts_data, tiny_model_dir, out, max_steps=8, checkpoint_every=4)
    first = Passes(stop_at=(2, 6))
    with pytest.raises(Preempted, match="after step 6"):
        run_texts(cfg, first)
    pass_1 = out / "checkpoints" / "texts" / "pass-1"
    assert sha256(pass_1 / "model.safetensors") == first.weights[1] and not (out / "bertclf.json").exists()
    again = Passes()
    card, lines = run_texts(config(texts_data, tiny_model_dir, out, max_steps=8, checkpoint_every=4, resume=True),
                            again)
    assert f"pass 1: finished before, reused ({pass_1})" in lines and 1 not in again.weights
    assert any(line.startswith("resumed from step-00000006") for line in lines), lines
    assert card["texts"]["kept"] in ("pass-1", "pass-2") and card["training"]["steps"] == 8
    assert not (out / "checkpoints").exists()


def test_resume_refuses_another_texts_file(texts_data, tiny_model_dir, tmp_path, capsys):
    """A --texts run under way, resumed with other texts: one line naming them."""
    from bertclf.cli import main
    from bertclf.distill.self_train import SETTINGS_FILE, outer_settings
    from bertclf.io.files import write_json
    from bertclf.rundir import layout

    out = tmp_path / "run"
    cfg = config(texts_data, tiny_model_dir, out)
    write_json(layout.texts_dir(out) / SETTINGS_FILE, outer_settings(cfg) | {"texts_sha256": "0" * 64})
    assert main(["train", "--train", str(texts_data["train"]), "--text-col", "document", "--model",
                 str(tiny_model_dir), "--texts", str(texts_data["texts"]), "--out", str(out), "--resume",
                 "--valid-frac", "0.2", "--batch-size", "16", "--lr", "5e-3", "--epochs", "10", "--max-steps", str(STEPS),
                 "--ngram", "off", "--precision", "fp32", "--seed", "0"]) == 2
    err = capsys.readouterr().err
    assert "--resume: the --texts file's content differ" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("content, message", [
    (None, "--texts {path}: file not found"),
    ("", "--texts {path}: no texts in it"),
    ("\n  \n", "--texts {path}: no texts in it"),
    ("id\tcomment\n1\t재밌어요\n", "column 'document' not in header"),
])
def test_a_bad_texts_file_is_one_line_before_any_training(texts_data, tiny_model_dir, tmp_path, capsys, content,
                                                          message):
    from bertclf.cli import main

    path = tmp_path / ("more.tsv" if content and "\t" in content else "more.txt")
    if content is not None:
        path.write_text(content, encoding="utf-8")
    out = tmp_path / "runs" / "run"
    assert main(["train", "--train", str(texts_data["train"]), "--text-col", "document", "--model",
                 str(tiny_model_dir), "--texts", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message.format(path=path) in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flags, message", [
    (["--text-pair-col", "label"], "--texts: unlabelled sentence pairs are not supported"),
    (["--report-to", "tensorboard"], "--texts: --report-to is not supported with --texts yet"),
])
def test_texts_with_what_it_cannot_serve_is_one_line(texts_data, tiny_model_dir, tmp_path, capsys, flags, message):
    from bertclf.cli import main

    assert main(["train", "--train", str(texts_data["train"]), "--text-col", "document", "--model",
                 str(tiny_model_dir), "--texts", str(texts_data["texts"]), "--out", str(tmp_path / "r"),
                 *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_resuming_a_texts_run_without_texts_is_one_line(texts_data, tiny_model_dir, tmp_path, capsys):
    """The other way round from tests/rundir/test_resume.py's --texts case: a --texts run under way, resumed as a
    plain run, is refused before anything in OUT changes."""
    from bertclf.cli import main
    from bertclf.distill.self_train import SETTINGS_FILE, outer_settings
    from bertclf.io.files import write_json
    from bertclf.rundir import layout

    out = tmp_path / "run"
    write_json(layout.texts_dir(out) / SETTINGS_FILE, outer_settings(config(texts_data, tiny_model_dir, out)))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert main(["train", "--train", str(texts_data["train"]), "--text-col", "document", "--model",
                 str(tiny_model_dir), "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume: --texts differs from the run in" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
