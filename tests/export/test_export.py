"""bertclf export --onnx [--int8]: the exported directory loads, predicts, and agrees with torch."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from _cli import run_cli  # noqa: E402 (tests/support/_cli.py)

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")



@pytest.fixture(scope="module")
def test_rows(nsmc_slices):
    from bertclf.data.dataset import read_labelled

    ds = read_labelled(nsmc_slices["test"], "document", "label")
    return ds.texts, ds.labels


@pytest.fixture(scope="module")
def torch_logits(trained_tiny_dir, test_rows):
    from bertclf.inference.classifier import Classifier

    clf = Classifier.load(str(trained_tiny_dir), device="cpu", precision="fp32")  # what the export reproduces
    assert clf.backend == "torch"
    return clf.logits(test_rows[0])


@pytest.fixture(scope="module")
def onnx_fp32(trained_tiny_dir, tmp_path_factory):
    from bertclf.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("export") / "fp32"
    info = export_onnx(str(trained_tiny_dir), str(out), int8=False, log=lambda s: None)
    return out, info


@pytest.fixture(scope="module")
def onnx_int8(trained_tiny_dir, tmp_path_factory):
    """Through the command line: `bertclf export DIR --onnx --int8 --out DIR2` prints the info as JSON."""
    out = tmp_path_factory.mktemp("export") / "int8"
    r = run_cli("export", trained_tiny_dir, "--onnx", "--int8", "--out", out)
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout), r.stderr


def test_fp32_export_is_self_contained_and_matches_torch(onnx_fp32, trained_tiny_dir, test_rows, torch_logits):
    from bertclf.inference.classifier import Classifier

    out, info = onnx_fp32
    assert {"model.onnx", "config.json", "tokenizer.json", "bertclf.json"} <= {p.name for p in out.iterdir()}
    assert not any(p.name.startswith(".") for p in out.parent.iterdir()), "temporary files left behind"
    card = json.loads((out / "bertclf.json").read_text())
    exp = card["export"]
    assert exp["int8"] is False and exp["opset"] == info["opset"] and exp["onnxruntime"]
    assert exp["source"] == str(Path(trained_tiny_dir).resolve())
    assert exp["check"]["max_abs_logit_diff"] < 1e-4 and exp["check"]["label_agreement"] == 1.0
    assert exp["fused"].get("Attention"), "onnxruntime's BERT fusions did not apply"
    assert card["labels"] == ["0", "1"] and card["max_length"] == 128  # the training card is kept

    clf = Classifier.load(str(out))
    assert clf.backend == "onnx" and clf.labels == ["0", "1"]
    got = clf.logits(test_rows[0])
    assert got.shape == torch_logits.shape and got.dtype == np.float32
    assert np.abs(got - torch_logits).max() < 1e-4
    assert (got.argmax(1) == torch_logits.argmax(1)).all()
    one = clf.predict("정말 재밌어요")
    assert one["label"] in ("0", "1") and abs(sum(one["probabilities"].values()) - 1) < 1e-5


def test_onnx_model_keeps_input_order_for_any_batch_size(onnx_fp32, test_rows):
    from bertclf.inference.classifier import Classifier
    from bertclf.data.tokens import encode

    clf = Classifier.load(str(onnx_fp32[0]))
    texts = test_rows[0][:40]
    ids = encode(clf.tokenizer, texts, clf.max_length)
    a = clf.model.predict_logits(ids, clf.pad_id, batch_size=64)
    b = clf.model.predict_logits(ids, clf.pad_id, batch_size=1)
    c = clf.model.predict_logits(ids[::-1], clf.pad_id, batch_size=7)[::-1]
    assert np.abs(a - b).max() < 1e-5 and np.abs(a - c).max() < 1e-5
    assert clf.model.predict_logits([], clf.pad_id, 8).shape == (0, 2)


def test_int8_export_agrees_with_torch(onnx_int8, onnx_fp32, test_rows, torch_logits):
    from bertclf import cpu
    from bertclf.inference.classifier import Classifier
    from bertclf.export.quantize import variants

    out, info, stderr = onnx_int8
    assert info["out"] == str(out) and info["int8"] is True
    exp = json.loads((out / "bertclf.json").read_text())["export"]
    q, k = exp["quantization"], exp["int8_check"]
    names = [v.name for v in variants()]
    assert q["variant"] == k["variant"] in names and q["per_channel"] is True
    # VNNI/AMX CPUs start from full-range 8-bit weights, others from 7-bit ones
    assert q["reduce_range"] == (k["variant"] == "s8-7bit")
    assert names[0] == ("s8-8bit" if cpu.fast_int8() else "s8-7bit")
    assert exp["cpu"]["fast_int8"] == cpu.fast_int8()
    # checked on the model's 150 validation rows (5% of the 3,000-row slice), rebuilt from bertclf.json
    assert k["rows"] == 150 and "validation rows" in k["rows_from"] and k["min_agreement"] == 0.99
    assert k["agreement"] >= 0.99 and [t["variant"] for t in k["tried"]] == names[:len(k["tried"])]
    assert all(t["agreement"] < 0.99 for t in k["tried"][:-1]) and k["tried"][-1]["variant"] == k["variant"]
    assert abs(k["accuracy_change"] - (k["accuracy_int8"] - k["accuracy_fp32"])) < 1e-12
    # single-label: one label per text, the measures and lines as they always were (multi-label's are its own)
    assert k["agreement_of"] == "texts' labels" and not {"labels", "set_agreement", "micro_f1_int8"} & set(k)
    assert "set_agreement" not in exp["check"] and exp["check"]["label_agreement"] == info["check"]["label_agreement"]
    assert (f"int8 ({k['variant']}) vs fp32 on 150 rows: labels agree {k['agreement']:.2%}, accuracy "
            f"{k['accuracy_fp32']:.2%} -> {k['accuracy_int8']:.2%} ({k['accuracy_change'] * 100:+.2f} pt)") in stderr
    assert f"int8 {k['variant']}: labels agree with fp32 on {k['agreement']:.2%} of 150 rows, accuracy" in stderr
    wrote = next(line for line in stderr.splitlines() if line.startswith("wrote "))
    assert f"labels agree {exp['check']['label_agreement']:.1%}, max |prob diff|" in wrote
    assert (out / "model.onnx").stat().st_size < 0.5 * (onnx_fp32[0] / "model.onnx").stat().st_size

    clf = Classifier.load(str(out))
    got = clf.logits(test_rows[0])
    y = np.array([int(lab) for lab in test_rows[1]])
    agree = (got.argmax(1) == torch_logits.argmax(1)).mean()
    acc_torch, acc_int8 = (torch_logits.argmax(1) == y).mean(), (got.argmax(1) == y).mean()
    assert agree >= 0.995, f"int8 agrees with torch on only {agree:.1%} of {len(y)} reviews"
    assert acc_int8 >= acc_torch - 0.005, f"int8 accuracy {acc_int8:.3f} vs torch {acc_torch:.3f}"


@pytest.fixture(scope="module")
def check_file(nsmc_slices, tmp_path_factory):
    """Check rows where int8 and fp32 may disagree: the test slice and the training slice (3,500 rows)."""
    f = tmp_path_factory.mktemp("check") / "check.tsv"
    lines = nsmc_slices["test"].read_text(encoding="utf-8").splitlines()
    lines += nsmc_slices["train"].read_text(encoding="utf-8").splitlines()[1:]
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return f


@pytest.fixture(scope="module")
def agreements(trained_tiny_dir, check_file):
    """Each variant's label agreement with fp32 on check_file, measured through export_onnx one at a time."""
    from bertclf.export.onnx_export import export_onnx
    from bertclf.export.quantize import variants

    out = {}
    for v in variants():
        info = export_onnx(str(trained_tiny_dir), str(check_file.parent / v.name), int8=True, log=lambda s: None,
                           check=str(check_file), min_agreement=0.0, variants=[v])
        out[v.name] = info["int8_check"]["agreement"]
        assert info["int8_check"]["rows"] == 3500 and str(check_file) in info["int8_check"]["rows_from"]
    return out


@pytest.mark.hardware
def test_int8_falls_through_to_the_first_variant_that_passes(trained_tiny_dir, check_file, agreements, tmp_path):
    """Below --min-agreement the next variant is tried; the first that passes is kept and named."""
    from bertclf.export.onnx_export import export_onnx

    names = list(agreements)
    first = agreements[names[0]]
    better = [a for a in agreements.values() if a > first]
    if not better:
        pytest.skip(f"no variant agrees better than {names[0]} ({first:.4f}) on this CPU: nothing to fall through to")
    threshold = min(better)
    want = next(n for n in names if agreements[n] >= threshold)
    logs = []
    info = export_onnx(str(trained_tiny_dir), str(tmp_path / "out"), int8=True, log=logs.append,
                       check=str(check_file), min_agreement=threshold)
    k = info["int8_check"]
    assert k["variant"] == want and k["agreement"] == agreements[want]
    assert [t["variant"] for t in k["tried"]] == names[:names.index(want) + 1]
    assert any("below --min-agreement" in line for line in logs)
    assert json.loads((tmp_path / "out" / "bertclf.json").read_text())["export"]["quantization"]["variant"] == want


@pytest.mark.hardware
def test_int8_that_no_variant_passes_exits_2_and_writes_nothing(trained_tiny_dir, check_file, agreements, tmp_path):
    best = max(agreements.values())
    if best >= 1.0:
        pytest.skip("every label agrees with some variant on this CPU; no threshold can fail")
    r = run_cli("export", trained_tiny_dir, "--onnx", "--int8", "--check", check_file, "--min-agreement",
                (best + 1.0) / 2, "--out", tmp_path / "out")
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert err[-1].startswith("bertclf: error: no int8 variant agrees") and "nothing written" in err[-1]
    assert len([e for e in err if e.startswith("bertclf: error")]) == 1 and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_int8_check_needs_rows(trained_tiny_dir, tmp_path, capsys):
    """Without a way to rebuild the validation rows (the card's data moved), --int8 asks for --check FILE."""
    from bertclf.cli import main

    moved = tmp_path / "model"
    shutil.copytree(trained_tiny_dir, moved)
    card = json.loads((moved / "bertclf.json").read_text())
    card["args"]["train"] = str(tmp_path / "gone.tsv")
    (moved / "bertclf.json").write_text(json.dumps(card))
    assert main(["export", str(moved), "--onnx", "--int8", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot rebuild the validation rows" in err and "--check FILE" in err and "\n" not in err
    bad = tmp_path / "bad.tsv"
    bad.write_text("document\tlabel\n좋아요\tmaybe\n", encoding="utf-8")
    assert main(["export", str(moved), "--onnx", "--int8", "--check", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown to the model" in err and "\n" not in err
    assert main(["export", str(moved), "--onnx", "--check", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert main(["export", str(moved), "--onnx", "--int8", "--min-agreement", "1.5", "--out", str(tmp_path / "o")]) == 2
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tsv", "model"]


def test_predict_cli_on_export(onnx_int8):
    r = run_cli("predict", onnx_int8[0], "정말 재밌어요", "시간 아깝다")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert len(rows) == 2 and all(row["label"] in ("0", "1") for row in rows)


def test_reexport_replaces_an_earlier_export(trained_tiny_dir, onnx_fp32, tmp_path):
    from bertclf.export.onnx_export import export_onnx

    out = tmp_path / "again"
    shutil.copytree(onnx_fp32[0], out)
    info = export_onnx(str(trained_tiny_dir), str(out), int8=True, log=lambda s: None)
    assert info["int8"] and json.loads((out / "bertclf.json").read_text())["export"]["int8"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]


def test_failed_export_leaves_nothing(trained_tiny_dir, tmp_path, monkeypatch):
    from bertclf.export import onnx_export as export

    def boom(*a, **k):
        raise RuntimeError("quantizer crashed")

    monkeypatch.setattr(export, "choose", boom)
    with pytest.raises(RuntimeError):
        export.export_onnx(str(trained_tiny_dir), str(tmp_path / "out"), int8=True, log=lambda s: None)
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_exit_2_with_one_line(trained_tiny_dir, onnx_fp32, tmp_path, capsys):
    from bertclf.cli import main

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty").mkdir()
    cases = {
        "missing model dir": [tmp_path / "nope", "--out", tmp_path / "o1"],
        "not a model dir": [tmp_path / "empty", "--out", tmp_path / "o2"],
        "out not empty": [trained_tiny_dir, "--out", tmp_path / "busy"],
        "out is a file": [trained_tiny_dir, "--out", tmp_path / "afile"],
        "out under a file": [trained_tiny_dir, "--out", tmp_path / "afile" / "sub"],
        "out is the model": [trained_tiny_dir, "--out", trained_tiny_dir],
        "exporting an export": [onnx_fp32[0], "--out", tmp_path / "o3"],
    }
    for what, args in cases.items():
        assert main(["export", *map(str, args), "--onnx"]) == 2, what
        err = capsys.readouterr().err.strip()
        assert err.startswith("bertclf: error: ") and "\n" not in err, (what, err)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "busy", "empty"]
    assert main(["export", str(trained_tiny_dir), "--out", str(tmp_path / "o4")]) == 2  # --onnx is required
    capsys.readouterr()
    r = run_cli("export", tmp_path / "nope", "--onnx", "--out", tmp_path / "o5")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_bf16_on_an_onnx_export_is_a_user_error(onnx_fp32):
    from bertclf.errors import UserError
    from bertclf.inference.classifier import Classifier

    with pytest.raises(UserError, match="ONNX export"):
        Classifier.load(str(onnx_fp32[0]), precision="bf16")
    assert Classifier.load(str(onnx_fp32[0]), precision="fp32").backend == "onnx"


def test_damaged_onnx_file_is_a_user_error(onnx_fp32, tmp_path):
    from bertclf.errors import UserError
    from bertclf.inference.classifier import Classifier

    bad = tmp_path / "bad"
    shutil.copytree(onnx_fp32[0], bad)
    (bad / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(UserError, match="cannot load the ONNX model"):
        Classifier.load(str(bad))


# --- multi-label, and a model trained on a header-less file -----------------------------------------------------

KOTE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "kote"


@pytest.fixture(scope="module")
def kote_cp949(tmp_path_factory):
    """KOTE as its val.tsv comes (no header line: id, text, label ids) re-encoded in cp949: 800 training rows and
    400 other rows to check on, in the same format, plus one row with no label (a multi-label row may have none)."""
    if not (KOTE / "val.tsv").is_file():
        pytest.skip("KOTE not in ../shared/data/kote")
    d = tmp_path_factory.mktemp("kote")
    lines = (KOTE / "val.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    out = {"names": KOTE / "labels.txt"}
    for name, part in (("train", lines[:800]), ("check", lines[800:1200] + ["99999\t그냥 그래요\t\n"])):
        out[name] = d / f"{name}.tsv"
        out[name].write_bytes("".join(part).encode("cp949", errors="replace"))
    return out


@pytest.fixture(scope="module")
def ml_headerless_dir(kote_cp949, tiny_model_dir, tmp_path_factory):
    """The tiny model trained multi-label (44 labels) on the header-less cp949 file: --columns, --encoding."""
    from bertclf.cli import main

    out = tmp_path_factory.mktemp("ml") / "run"
    assert main(["train", "--train", str(kote_cp949["train"]), "--columns", "id,text,label", "--encoding", "cp949",
                 "--multi-label", "--label-names", str(kote_cp949["names"]), "--model", str(tiny_model_dir),
                 "--epochs", "3", "--batch-size", "16", "--lr", "3e-3", "--seed", "0", "--ngram", "on",
                 "--out", str(out)]) == 0
    card = json.loads((out / "bertclf.json").read_text())
    assert card["args"]["columns"] == ["id", "text", "label"] and card["args"]["encoding"] == "cp949"
    assert card["ngram"]["kept"]  # with an n-gram partner, whose blend has thresholds of its own
    return out


@pytest.fixture(scope="module")
def ml_int8(ml_headerless_dir, kote_cp949, tmp_path_factory):
    """`bertclf export --onnx --int8 --check FILE` (header-less, cp949, as trained) without --min-agreement: the
    command line's default is the task's (multi-label: (text, label) decisions)."""
    out = tmp_path_factory.mktemp("export") / "ml-int8"
    r = run_cli("export", ml_headerless_dir, "--onnx", "--int8", "--check", kote_cp949["check"], "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, json.loads(r.stdout), r.stderr.strip().splitlines()


def test_int8_check_reads_a_headerless_file_in_the_trainings_format(ml_int8, kote_cp949):
    """The card's --columns and --encoding read the --check file: all 401 rows, labels as trained."""
    _, info, _ = ml_int8
    k = info["int8_check"]
    assert k["rows"] == 401 and k["rows_from"] == f"{kote_cp949['check']} (401 rows)"
    assert k["micro_f1_fp32"] > 0.1  # the label ids were read as the model's labels, not as noise


def test_multilabel_int8_check_gates_on_label_decisions(ml_int8, ml_headerless_dir, kote_cp949):
    """Multi-label: the gated agreement is the share of (text, label) decisions int8 keeps (default
    --min-agreement for multi-label); whole label sets are reported beside it; the same two measures in the check
    line, the closing line, the returned info and the card's export block; no top-1 figure."""
    from bertclf.export.onnx_export import SAMPLE_TEXTS
    from bertclf.inference.classifier import Classifier
    from sklearn.metrics import f1_score

    from bertclf.export.quantize import MIN_AGREEMENT_MULTI_LABEL

    out, info, logs = ml_int8
    k = info["int8_check"]
    assert k["min_agreement"] == MIN_AGREEMENT_MULTI_LABEL == info["requested"]["min_agreement"]
    assert k["labels"] == 44 and k["agreement_of"] == "(text, label) decisions"
    assert MIN_AGREEMENT_MULTI_LABEL <= k["agreement"] <= 1 and 0 <= k["set_agreement"] <= k["agreement"]
    assert not any(key.startswith("accuracy") for key in k)  # subset accuracy says nothing with 44 labels
    assert abs(k["micro_f1_change"] - (k["micro_f1_int8"] - k["micro_f1_fp32"])) < 1e-12
    assert all({"agreement", "set_agreement", "micro_f1"} <= set(t) for t in k["tried"])
    card = json.loads((out / "bertclf.json").read_text())["export"]
    assert card["int8_check"] == k and card["check"] == info["check"]

    # the measures mean what they say: recomputed from the int8 directory against torch on the check rows, encoder
    # with encoder (the check's; the n-gram partner is the same numpy model on both sides), over the encoder's own
    # thresholds, not the blend's
    clf = Classifier.load(str(out), ngram=False)
    ref = Classifier.load(str(ml_headerless_dir), precision="fp32", ngram=False)
    rows = [line.split("\t") for line in kote_cp949["check"].read_text(encoding="cp949").splitlines()]
    assert len(rows) == 401 and rows[-1][2] == ""
    texts, truth = [r[1] for r in rows], ref.task.encode([r[2] for r in rows], "check") > 0.5
    got, want = clf.task.decide(clf.predict_proba(texts)), ref.task.decide(ref.predict_proba(texts))
    assert abs((got == want).mean() - k["agreement"]) < 0.01
    assert abs((got == want).all(1).mean() - k["set_agreement"]) < 0.05
    assert k["micro_f1_fp32"] == pytest.approx(f1_score(truth, want, average="micro"), abs=0.005)
    assert k["micro_f1_int8"] == pytest.approx(f1_score(truth, got, average="micro"), abs=0.02)
    c = info["check"]  # the export's own check against torch on its sample texts (in its batches of 8)
    got = clf.task.decide(clf.predict_proba(SAMPLE_TEXTS, 8))
    want = ref.task.decide(ref.predict_proba(SAMPLE_TEXTS, 8))
    assert c["label_agreement"] == pytest.approx((got == want).mean(), abs=1 / got.size + 1e-9)
    assert c["set_agreement"] == pytest.approx((got == want).all(1).mean(), abs=1 / len(got) + 1e-9)

    check_line = next(line for line in logs if line.startswith(f"int8 {k['variant']} vs fp32"))
    closing = next(line for line in logs if line.startswith(f"int8 ({k['variant']}) vs fp32"))
    wrote = next(line for line in logs if line.startswith("wrote "))
    for line in (check_line, closing):
        assert "401 rows x 44 labels" in line and "micro-F1" in line, line
        assert f"label decisions agree {k['agreement']:.2%}, label sets equal {k['set_agreement']:.2%}" in line, line
    assert wrote.startswith("wrote ") and (f"label decisions agree {c['label_agreement']:.1%}, label sets equal "
                                           f"{c['set_agreement']:.1%}") in wrote, wrote
    assert not any("labels agree" in line or "accuracy" in line for line in logs), logs


@pytest.mark.hardware
def test_multilabel_int8_below_min_agreement_names_the_decisions(ml_int8, ml_headerless_dir, kote_cp949, tmp_path):
    """Refused, the multi-label check says what it counted: (text, label) decisions; nothing is written."""
    from bertclf.errors import UserError
    from bertclf.export.onnx_export import export_onnx
    from bertclf.export.quantize import variants

    k = ml_int8[1]["int8_check"]
    if k["agreement"] == 1.0:
        pytest.skip("int8 kept every decision of the tiny model on this CPU; no threshold can fail")
    v = next(v for v in variants() if v.name == k["variant"])  # the same variant on the same rows: same agreement
    with pytest.raises(UserError) as e:
        export_onnx(str(ml_headerless_dir), str(tmp_path / "out"), int8=True, check=str(kote_cp949["check"]),
                    min_agreement=(k["agreement"] + 1) / 2, variants=[v], log=lambda s: None)
    assert str(e.value).startswith("no int8 variant agrees with fp32 on --min-agreement ")
    assert f"of the {401 * 44} (text, label) decisions of 401 rows (best: {v.name} {k['agreement']:.2%})" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_int8_check_errors_name_the_trainings_format_and_only_export_flags(ml_headerless_dir, trained_tiny_dir,
                                                                           tmp_path, capsys):
    """A --check file not in the training's format: one line saying what is wrong and which format the file needs;
    its advice names no flag that export does not have (--columns, --encoding, --text-col, --label-col)."""
    import re

    from bertclf.cli import main

    export_flags = {"--onnx", "--int8", "--check", "--min-agreement", "--out"}
    with_header = tmp_path / "with-header.tsv"  # the model was trained header-less: the header is read as a row
    with_header.write_bytes("id\ttext\tlabel\n1\t좋아요\t3\n".encode("cp949"))
    two_fields = tmp_path / "two-fields.tsv"
    two_fields.write_bytes("좋아요\t3\n".encode("cp949"))
    utf8 = tmp_path / "utf8.tsv"
    utf8.write_text("1\t정말 좋아요 👍\t3\n", encoding="utf-8")
    wrong_header = tmp_path / "wrong-header.tsv"  # trained_tiny_dir has a header with columns document, label
    wrong_header.write_text("text\tlabel\n좋아요\t1\n", encoding="utf-8")
    cases = [(ml_headerless_dir, with_header, "unknown to the model"), (ml_headerless_dir, two_fields, "2 fields"),
             (ml_headerless_dir, utf8, "not cp949 text"), (trained_tiny_dir, wrong_header, "column 'document'")]
    for model, check, what in cases:
        assert main(["export", str(model), "--onnx", "--int8", "--check", str(check),
                     "--out", str(tmp_path / "out")]) == 2, check
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"bertclf: error: --check {check}") and "\n" not in err and what in err, err
        assert set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", err)) <= export_flags, err
        assert "write the file in the training's format" in err, err
        if model == ml_headerless_dir:
            assert "no header line, columns id,text,label" in err and "encoding cp949" in err, err
            assert "several separated by ','" in err, err
        else:
            assert "a header line; text in column 'document', labels in 'label'" in err, err
    assert not (tmp_path / "out").exists()
