"""bertclf distill: the student's starting weights, the loss, the command end to end (the student is a normal
model directory: eval, predict and the self-checking int8 export work on it), --texts, the teacher-logit cache,
and one-line refusals."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bertclf.distill_task import Distillation
from bertclf.labels import LabelMap
from bertclf.student import evenly_spaced, make_student
from bertclf.task import MultiLabel, SingleLabel

import _cli  # noqa: E402


def run_cli(*args):
    return _cli.run_cli(*args, timeout=600, extra_env={"BERTCLF_NO_PROGRESS": "1"})


def weights(model_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


def test_evenly_spaced_keeps_the_top_layer():
    assert evenly_spaced(12, 6) == [1, 3, 5, 7, 9, 11]
    assert evenly_spaced(12, 4) == [2, 5, 8, 11]
    assert evenly_spaced(12, 3) == [3, 7, 11]
    assert evenly_spaced(2, 1) == [1]
    assert evenly_spaced(4, 3) == [0, 2, 3]


@pytest.fixture(scope="module")
def four_layer_teacher(tiny_model_dir, tmp_path_factory) -> Path:
    """A random 4-layer classifier with the tiny model's tokenizer: enough layers to see which ones are taken."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.num_hidden_layers, config.num_labels = 4, 3
    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("teacher4") / "model"
    AutoModelForSequenceClassification.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def test_student_starts_from_the_chosen_teacher_layers(four_layer_teacher, tmp_path):
    chosen = make_student(four_layer_teacher, 2, tmp_path / "student")
    assert chosen == [1, 3]
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and len(config["id2label"]) == 3
    t, s = weights(four_layer_teacher), weights(tmp_path / "student")
    assert not any(".layer.2." in k or ".layer.3." in k for k in s)
    for key, value in s.items():
        src = key.replace(".layer.0.", ".layer.1.") if ".layer.0." in key else key.replace(".layer.1.", ".layer.3.")
        assert torch.equal(value, t[src]), key
    assert {k for k in t if ".layer." not in k} == {k for k in s if ".layer." not in k}  # embeddings, pooler, head
    assert (tmp_path / "student" / "tokenizer.json").is_file()


def test_distillation_loss_is_the_documented_mix():
    torch.manual_seed(0)
    task = SingleLabel(LabelMap(["a", "b", "c"]))
    d = Distillation(task, temperature=2.0, alpha=0.3)
    student, teacher = torch.randn(5, 3), torch.randn(5, 3)
    y = np.array([0, 2, 1])  # rows 3 and 4 are unlabelled
    packed = torch.from_numpy(d.targets(y, teacher.numpy()))
    log_s, log_t = torch.log_softmax(student / 2, -1), torch.log_softmax(teacher / 2, -1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1) * 4
    ce = -torch.log_softmax(student, -1)[torch.arange(3), torch.from_numpy(y)]
    want = (0.3 * kl[:3] + 0.7 * ce).sum() + kl[3:].sum()
    assert torch.allclose(d.loss(student, packed), want / 5, atol=1e-6)
    assert int(d.correct(student, packed)) == int((student.argmax(-1) == teacher.argmax(-1)).sum())
    assert d.labels is task.labels and d.card() == task.card()  # everything but the loss is the task's


def test_multilabel_soft_loss_is_zero_only_at_the_teachers_probabilities():
    task = MultiLabel(LabelMap(["x", "y", "z"]))
    d = Distillation(task, temperature=1.5, alpha=1.0)
    teacher = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 1.0]])
    packed = torch.from_numpy(d.targets(np.array([[1, 0, 1]], np.float32), teacher.numpy()))
    assert float(d.loss(teacher.clone(), packed)) == pytest.approx(0.0, abs=1e-6)
    assert float(d.loss(teacher + torch.tensor([0.5, -0.5, 0.0]), packed)) > 1e-3
    d.alpha = 0.0  # labelled row: the task's BCE only; unlabelled row: still the soft part
    student = teacher + 1.0
    want = (task.loss(student[:1], packed[:1, :3]) + task.soft_loss(student[1:], teacher[1:], 1.5).sum()) / 2
    assert torch.allclose(d.loss(student, packed), want, atol=1e-6)


@pytest.fixture(scope="module")
def unlabelled_file(nsmc_dir, tmp_path_factory) -> Path:
    """400 NSMC training reviews that the tiny teacher's slice (rows 0-2999) does not hold, one per line."""
    lines = (nsmc_dir / "ratings_train.txt").read_text(encoding="utf-8").splitlines()[1 + 3000:1 + 3400]
    path = tmp_path_factory.mktemp("texts") / "more.txt"
    path.write_text("".join(line.split("\t")[1] + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def student_dir(trained_tiny_dir, unlabelled_file, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("student") / "run"
    r = run_cli("distill", trained_tiny_dir, "--layers", 1, "--out", out, "--texts", unlabelled_file,
                "--format", "lines", "--max-steps", 20, "--precision", "fp32")
    assert r.returncode == 0, r.stderr
    return out, r


def test_distill_writes_a_normal_smaller_model(trained_tiny_dir, student_dir, unlabelled_file):
    out, r = student_dir
    assert "student: 1 of the teacher's 2 layers (1;" in r.stdout
    assert f"report: {out / 'report.html'}" in r.stdout and (out / "report.html").is_file()  # report works on it
    config = json.loads((out / "config.json").read_text())
    teacher_config = json.loads((trained_tiny_dir / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["id2label"] == teacher_config["id2label"]
    card, teacher_card = (json.loads((d / "bertclf.json").read_text()) for d in (out, trained_tiny_dir))
    info = card["distilled_from"]
    assert info["teacher"] == str(trained_tiny_dir.resolve()) and info["initial_layers"] == [1]
    assert info["teacher_precision"] == "fp32" and info["layers"] == 1 and info["teacher_layers"] == 2
    n_texts = sum(1 for line in unlabelled_file.read_text(encoding="utf-8").splitlines() if line.strip())
    assert info["unlabelled_rows"] == n_texts > 300  # --texts added its rows to the teacher's
    assert card["data"]["train"]["rows"] == teacher_card["data"]["train"]["rows"] + n_texts
    assert card["data"]["train"]["unlabelled_rows"] == n_texts and None not in card["data"]["train"]["label_counts"]
    assert card["data"]["valid"] == teacher_card["data"]["valid"]  # the same validation rows, rebuildable
    assert card["metrics"]["test"]["n"] == teacher_card["metrics"]["test"]["n"]
    assert not (out / "checkpoints").exists()  # the work folder (student start, teacher logits) is gone
    from bertclf.validation_rows import check_rows

    texts, y, where = check_rows(out, card, card["labels"])
    assert "rebuilt from bertclf.json" in where and len(texts) == card["data"]["valid"]["rows"]


def test_a_student_of_texts_can_teach_its_labelled_rows_are_what_rebuilds(tmp_path):
    """A student trained with --texts records its training rows plus the unlabelled ones; distilling it again
    rebuilds only the labelled rows, which must not read as 'the training file changed' (it did: 850 vs 1,050)."""
    from bertclf.data import Dataset
    from bertclf.distill import check_same_rows, with_unlabelled
    from bertclf.errors import UserError

    labelled = Dataset(["좋다", "싫다", "최고"], ["1", "0", "1"], source="t.tsv", sha256="abc")
    student = with_unlabelled(labelled, ["그냥", "별로"], "more.txt").summary()
    assert student["rows"] == 5 and student["unlabelled_rows"] == 2 and student["label_counts"] == {"0": 1, "1": 2}
    check_same_rows(labelled, {"data": {"train": student}}, tmp_path)
    older = {k: v for k, v in student.items() if k != "unlabelled_rows"} | {"label_counts": {"0": 1, "1": 2, "null": 2}}
    check_same_rows(labelled, {"data": {"train": older}}, tmp_path)  # a card written before unlabelled_rows
    with pytest.raises(UserError, match="2 rows now, 3 then"):
        check_same_rows(Dataset(["좋다", "싫다"], ["1", "0"], source="t.tsv", sha256="abc"),
                        {"data": {"train": student}}, tmp_path)


def test_eval_predict_export_work_on_the_student(student_dir, nsmc_slices, tmp_path):
    out, _ = student_dir
    r = run_cli("eval", out, "--test", nsmc_slices["test"], "--json", "--precision", "fp32")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n"] == 500
    r = run_cli("predict", out, "정말 재밌어요", "--precision", "fp32")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[0])["label"] in ("0", "1")
    r = run_cli("export", out, "--onnx", "--int8", "--min-agreement", "0.5", "--out", tmp_path / "int8")
    assert r.returncode == 0, r.stderr
    check = json.loads(r.stdout)["int8_check"]
    assert "validation rows" in check["rows_from"] and check["agreement"] >= 0.5


def test_teacher_logits_are_computed_once_per_run_folder(trained_tiny_dir, tmp_path, monkeypatch):
    """A run stopped after the teacher pass (here: the loop fails at once) reuses the logits when run again."""
    import bertclf.loop
    from bertclf.distill import distill

    def stop(*a, **k):
        raise RuntimeError("stopped")

    lines: list[str] = []
    with monkeypatch.context() as m:
        m.setattr(bertclf.loop, "run_loop", stop)
        with pytest.raises(RuntimeError, match="stopped"):
            distill(str(trained_tiny_dir), 1, str(tmp_path / "s"), max_steps=1, precision="fp32", echo=lines.append)
    assert any(line.startswith("teacher: scored") for line in lines)
    lines.clear()
    card = distill(str(trained_tiny_dir), 1, str(tmp_path / "s"), max_steps=1, precision="fp32", resume="auto",
                   echo=lines.append)
    assert any(line.startswith("teacher: logits of the") and "reused" in line for line in lines)
    assert card["training"]["steps"] == 1


@pytest.mark.parametrize("args, message", [
    (["--layers", "2"], "--layers 2: must be between 1 and 1"),
    (["--layers", "0"], "--layers 0: must be between 1 and 1"),
    (["--layers", "1", "--alpha", "1.5"], "--alpha"),
    (["--layers", "1", "--temperature", "0"], "--temperature"),
    (["--layers", "1", "--texts", "no-such-file.txt"], "--texts no-such-file.txt: file not found"),
])
def test_bad_flags_are_one_line(trained_tiny_dir, tmp_path, capsys, args, message):
    """The command's own entry point, in this process (each refusal comes before any model is loaded)."""
    from bertclf.cli import main

    assert main(["distill", str(trained_tiny_dir), "--out", str(tmp_path / "s"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s").exists()


def test_missing_teacher_is_one_line(tmp_path):
    r = run_cli("distill", tmp_path / "nope", "--layers", "1", "--out", tmp_path / "s")
    assert r.returncode == 2 and "teacher model directory not found" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
