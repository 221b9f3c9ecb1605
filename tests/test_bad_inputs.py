"""The error contract, command by command: a bad input exits 2 with exactly one line on stderr that names the
file, line or flag at fault, never a traceback, and leaves nothing half-written (no output appears; the inputs
and the directories involved are unchanged).

The cases are one table. Commands that fail before importing torch (serve, export, trim-vocab, baseline, report)
and a few others run as real subprocesses; the rest run in this process through `bertclf.cli.main(argv)`, which
is the same code path without the ~3-10 s torch import per case.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SUB, INPROC = "subprocess", "in-process"

# (id, how, argv, words the one line must hold; "!word": must not hold). Placeholders: {D} folder of bad inputs, {G} a good training
# file in it, {M} the tiny (untrained) model, {T} a trained model directory, {OUT} a path that must not appear.
TR = ["train", "--text-col", "document", "--model", "{M}", "--batch-size", "8", "--max-steps", "2"]
CASES = [
    # ---- train: data files
    ("train-missing-file", SUB, TR + ["--train", "{D}/nope.tsv", "--out", "{OUT}"], ["nope.tsv", "not found"]),
    ("train-empty-file", INPROC, TR + ["--train", "{D}/empty.tsv", "--out", "{OUT}"], ["empty.tsv", "empty"]),
    ("train-wrong-delimiter", INPROC, TR + ["--train", "{D}/comma.tsv", "--out", "{OUT}"],
     ["comma.tsv", "line 1", "comma"]),
    ("train-missing-column", INPROC, TR + ["--train", "{G}", "--label-col", "stars", "--out", "{OUT}"],
     ["good.tsv", "line 1", "'stars'"]),
    ("train-ragged-row", INPROC, TR + ["--train", "{D}/ragged.tsv", "--out", "{OUT}"],
     ["ragged.tsv", "line 11", "4 fields"]),
    ("train-non-utf8", INPROC, TR + ["--train", "{D}/latin1.tsv", "--out", "{OUT}"],
     ["latin1.tsv", "line 6", "UTF-8"]),
    ("train-bad-jsonl-line", INPROC, TR + ["--train", "{D}/bad.jsonl", "--out", "{OUT}"],
     ["bad.jsonl", "line 3", "JSON"]),
    ("train-empty-label", INPROC, TR + ["--train", "{D}/nolabel.tsv", "--out", "{OUT}"],
     ["nolabel.tsv", "line 3", "empty label"]),
    ("train-one-class", INPROC, TR + ["--train", "{D}/oneclass.tsv", "--out", "{OUT}"], ["oneclass.tsv", "one class"]),
    ("train-test-label-unseen", INPROC, TR + ["--train", "{G}", "--test", "{D}/unseen.tsv", "--out", "{OUT}"],
     ["unseen.tsv", "'2'", "never seen"]),
    ("train-text-col-is-label-col", INPROC, TR + ["--train", "{G}", "--label-col", "document", "--out", "{OUT}"],
     ["good.tsv", "--text-col", "--label-col", "'document'"]),
    ("train-column-named-twice", INPROC, TR + ["--train", "{D}/twice.tsv", "--out", "{OUT}"],
     ["twice.tsv", "line 1", "'document'", "2 times"]),
    ("train-unknown-file-type", INPROC, TR + ["--train", "{D}/data.xlsx", "--out", "{OUT}"], ["data.xlsx", ".xlsx"]),
    # ---- train: the model
    ("train-model-not-a-model", INPROC, TR + ["--model", "{D}/notamodel", "--train", "{G}", "--out", "{OUT}"],
     ["notamodel", "config.json"]),
    ("train-model-broken-config", INPROC, TR + ["--model", "{D}/brokencfg", "--train", "{G}", "--out", "{OUT}"],
     ["brokencfg/config.json", "not valid JSON", "line 2"]),
    ("train-model-truncated-weights", INPROC, TR + ["--model", "{D}/truncweights", "--train", "{G}", "--out",
                                                    "{OUT}"], ["truncweights", "truncated or corrupt"]),
    # ---- train: flags
    ("train-negative-epochs", INPROC, TR + ["--train", "{G}", "--epochs", "-1", "--out", "{OUT}"], ["--epochs", "-1"]),
    ("train-infinite-epochs", INPROC, TR + ["--train", "{G}", "--epochs", "inf", "--out", "{OUT}"],
     ["--epochs", "inf"]),
    ("train-epochs-not-a-number", INPROC, TR + ["--train", "{G}", "--epochs", "two", "--out", "{OUT}"],
     ["--epochs", "'two'"]),
    ("train-sample-0", INPROC, TR + ["--train", "{G}", "--sample", "0", "--out", "{OUT}"], ["--sample", "0"]),
    ("train-batch-size-0", INPROC, TR + ["--train", "{G}", "--batch-size", "0", "--out", "{OUT}"], ["--batch-size"]),
    ("train-max-length-3", INPROC, TR + ["--train", "{G}", "--max-length", "3", "--out", "{OUT}"],
     ["--max-length", "3"]),
    ("train-unknown-precision", INPROC, TR + ["--train", "{G}", "--precision", "fp8", "--out", "{OUT}"],
     ["--precision", "fp8"]),
    ("train-unknown-data", INPROC, TR + ["--data", "imdb", "--out", "{OUT}"], ["--data", "imdb"]),
    ("train-lr-too-big", INPROC, TR + ["--train", "{G}", "--lr", "5", "--out", "{OUT}"], ["--lr", "5"]),
    ("train-unknown-flag", INPROC, TR + ["--train", "{G}", "--learning-rate", "2", "--out", "{OUT}"],
     ["train: unrecognized arguments: --learning-rate", "see 'bertclf train -h'"]),
    ("train-max-length-over-the-model", INPROC, TR + ["--train", "{G}", "--max-length", "1024", "--out", "{OUT}"],
     ["--max-length", "1024", "514 positions"]),
    ("train-test-sample-leaves-no-row", INPROC, TR + ["--train", "{G}", "--test", "{D}/tinytest.tsv",
                                                      "--test-sample", "0.01", "--out", "{OUT}"],
     ["--test-sample 0.01", "tinytest.tsv"]),
    ("train-max-grad-norm-0", INPROC, TR + ["--train", "{G}", "--max-grad-norm", "0", "--out", "{OUT}"],
     ["--max-grad-norm", "0"]),
    ("train-eval-batch-size-0", INPROC, TR + ["--train", "{G}", "--eval-batch-size", "0", "--out", "{OUT}"],
     ["--eval-batch-size", "0"]),
    ("train-weight-decay-negative", INPROC, TR + ["--train", "{G}", "--weight-decay", "-1", "--out", "{OUT}"],
     ["--weight-decay", "-1"]),
    ("train-unknown-encoding", INPROC, TR + ["--train", "{G}", "--encoding", "klingon", "--out", "{OUT}"],
     ["--encoding", "klingon"]),
    ("train-bad-columns", INPROC, TR + ["--train", "{G}", "--columns", "id,,label", "--out", "{OUT}"],
     ["--columns", "id,,label"]),
    ("train-cp949-without-encoding", INPROC, TR + ["--train", "{D}/cp949.tsv", "--out", "{OUT}"],
     ["cp949.tsv", "line 2", "--encoding"]),
    # ---- train: the output directory
    ("train-out-under-a-file", SUB, TR + ["--train", "{G}", "--out", "{D}/afile/run"], ["afile"]),
    ("train-out-is-a-file", INPROC, TR + ["--train", "{G}", "--out", "{D}/afile"],
     ["--out", "afile", "not a directory"]),
    ("train-out-holds-another-run", INPROC, TR + ["--train", "{G}", "--out", "{D}/otherrun"],
     ["otherrun", "another run"]),
    ("train-out-holds-a-finished-model", INPROC, TR + ["--train", "{G}", "--out", "{T}"], ["finished model"]),
    ("train-resume-nothing", INPROC, TR + ["--train", "{G}", "--out", "{OUT}", "--resume"],
     ["--resume", "no checkpoint"]),
    ("train-resume-a-finished-run", INPROC, TR + ["--train", "{G}", "--out", "{T}", "--resume"],
     ["--resume", "finished"]),
    # ---- eval
    ("eval-broken-config", SUB, ["eval", "{D}/brokencfg", "--test", "{G}"],
     ["brokencfg/config.json", "not valid JSON"]),
    ("eval-not-a-model", INPROC, ["eval", "{D}/notamodel", "--test", "{G}"], ["notamodel"]),
    ("eval-truncated-weights", INPROC, ["eval", "{D}/truncweights", "--test", "{G}"], ["truncated or corrupt"]),
    ("eval-missing-test-file", INPROC, ["eval", "{T}", "--test", "{D}/nope.tsv"], ["nope.tsv", "not found"]),
    ("eval-labels-unknown-to-model", INPROC, ["eval", "{T}", "--test", "{D}/unseen.tsv"], ["unseen.tsv", "'2'"]),
    ("eval-no-data", INPROC, ["eval", "{T}"], ["--test"]),
    ("eval-text-col-is-label-col", INPROC, ["eval", "{T}", "--test", "{G}", "--text-col", "label"],
     ["good.tsv", "--text-col", "--label-col", "'label'"]),
    ("eval-batch-size-negative", INPROC, ["eval", "{T}", "--test", "{G}", "--batch-size", "-1"],
     ["--batch-size", "-1"]),
    ("eval-batch-size-0", INPROC, ["eval", "{T}", "--test", "{G}", "--batch-size", "0"], ["--batch-size", "0"]),
    ("eval-columns-miss-the-text", INPROC, ["eval", "{T}", "--test", "{D}/headerless.tsv", "--columns", "id,doc,label",
                                            "--text-col", "document"], ["--columns id,doc,label", "'document'"]),
    ("eval-errors-under-a-file", INPROC, ["eval", "{T}", "--test", "{G}", "--errors", "{D}/afile/errors.tsv"],
     ["afile", "is a file"]),
    # ---- predict
    ("predict-not-a-model", INPROC, ["predict", "{D}/notamodel", "hello"], ["notamodel"]),
    ("predict-broken-config", INPROC, ["predict", "{D}/brokencfg", "hello"], ["brokencfg/config.json"]),
    ("predict-missing-input", INPROC, ["predict", "{T}", "--input", "{D}/nope.tsv"], ["nope.tsv"]),
    ("predict-non-utf8-input", INPROC, ["predict", "{T}", "--input", "{D}/latin1.tsv", "--output", "{OUT}"],
     ["latin1.tsv", "line 6", "UTF-8"]),
    ("predict-ragged-input", INPROC, ["predict", "{T}", "--input", "{D}/ragged.tsv", "--output", "{OUT}"],
     ["ragged.tsv", "line 11"]),
    ("predict-missing-text-column", INPROC, ["predict", "{T}", "--input", "{G}", "--text-col", "review",
                                             "--output", "{OUT}"], ["good.tsv", "'review'"]),
    ("predict-output-under-a-file", INPROC, ["predict", "{T}", "hello", "--output", "{D}/afile/p.jsonl"], ["afile"]),
    ("predict-output-is-a-folder", INPROC, ["predict", "{T}", "hello", "--output", "{D}/notamodel"],
     ["notamodel", "folder"]),
    ("predict-batch-size-negative", INPROC, ["predict", "{T}", "hello", "--batch-size", "-1"],
     ["--batch-size", "-1"]),
    ("predict-batch-size-0", INPROC, ["predict", "{T}", "hello", "--batch-size", "0"], ["--batch-size", "0"]),
    ("predict-output-is-the-input", INPROC, ["predict", "{T}", "--input", "{D}/copy.tsv", "--output", "{D}/copy.tsv"],
     ["--output", "is the --input file"]),
    ("predict-unknown-flag", INPROC, ["predict", "{T}", "hello", "--bogus"],
     ["predict: unrecognized arguments: --bogus", "see 'bertclf predict -h'"]),
    ("predict-bad-format", INPROC, ["predict", "{T}", "--input", "{G}", "--format", "xml"],
     ["predict: argument --format", "'xml'", "see 'bertclf predict -h'"]),
    ("predict-unknown-encoding", INPROC, ["predict", "{T}", "hello", "--encoding", "klingon"],
     ["--encoding", "klingon"]),
    ("predict-bad-shard", INPROC, ["predict", "{T}", "hello", "--shard", "5/2"], ["--shard", "5/2"]),
    ("predict-ray-explain", INPROC, ["predict", "{T}", "hello", "--engine", "ray", "--explain"],
     ["--explain", "local engine", "--engine ray"]),
    # ---- serve (always a subprocess: if it started, it would serve)
    ("serve-not-a-model", SUB, ["serve", "{D}/notamodel", "--port", "0"], ["notamodel"]),
    ("serve-broken-config", SUB, ["serve", "{D}/brokencfg", "--port", "0"], ["brokencfg/config.json"]),
    ("serve-max-batch-0", SUB, ["serve", "{T}", "--port", "0", "--max-batch", "0"], ["--max-batch"]),
    ("serve-port-out-of-range", SUB, ["serve", "{T}", "--port", "70000"], ["--port", "70000"]),
    # ---- export
    ("export-to-a-non-empty-dir", SUB, ["export", "{T}", "--onnx", "--out", "{D}/otherrun"], ["otherrun", "not empty"]),
    ("export-not-a-model", SUB, ["export", "{D}/notamodel", "--onnx", "--out", "{OUT}"], ["notamodel"]),
    ("export-broken-config", SUB, ["export", "{D}/brokencfg", "--onnx", "--out", "{OUT}"], ["brokencfg/config.json"]),
    ("export-out-under-a-file", SUB, ["export", "{T}", "--onnx", "--out", "{D}/afile/onnx"], ["afile"]),
    # ---- trim-vocab
    ("trim-vocab-missing-column", SUB, ["trim-vocab", "{M}", "--corpus", "{G}", "--text-col", "text", "--out", "{OUT}"],
     ["good.tsv", "'text'"]),
    ("trim-vocab-missing-corpus", SUB, ["trim-vocab", "{M}", "--corpus", "{D}/nope.tsv", "--out", "{OUT}"],
     ["nope.tsv"]),
    ("trim-vocab-non-utf8-corpus", SUB, ["trim-vocab", "{M}", "--corpus", "{D}/latin1.tsv", "--out", "{OUT}"],
     ["latin1.tsv", "line 6", "UTF-8"]),
    ("trim-vocab-not-a-model", SUB, ["trim-vocab", "{D}/notamodel", "--corpus", "{G}", "--out", "{OUT}"],
     ["notamodel"]),
    ("trim-vocab-out-under-a-file", SUB, ["trim-vocab", "{M}", "--corpus", "{G}", "--out", "{D}/afile/t"], ["afile"]),
    # ---- baseline
    ("baseline-one-class", SUB, ["baseline", "--train", "{D}/oneclass.tsv", "--text-col", "document"],
     ["oneclass.tsv", "one class"]),
    ("baseline-too-few-rows-to-split", SUB, ["baseline", "--train", "{D}/tworows.tsv", "--text-col", "document"],
     ["tworows.tsv", "too few rows", "--test FILE", "!--valid"]),
    ("baseline-missing-train", SUB, ["baseline", "--train", "{D}/nope.tsv"], ["nope.tsv"]),
    ("baseline-no-data", SUB, ["baseline"], ["--train"]),
    ("baseline-out-under-a-file", SUB, ["baseline", "--train", "{G}", "--text-col", "document", "--out",
                                        "{D}/afile/b"], ["afile"]),
    # ---- report
    ("report-not-a-run", SUB, ["report", "{D}/notamodel"], ["notamodel", "not a bertclf run"]),
    ("report-missing-dir", SUB, ["report", "{D}/nope"], ["nope", "no such directory"]),
    ("report-broken-card", SUB, ["report", "{D}/brokencard"], ["brokencard/bertclf.json"]),
    ("report-out-under-a-file", SUB, ["report", "{T}", "--out", "{D}/afile/r.html"], ["afile"]),
]


@pytest.fixture(scope="module")
def bad(nsmc_slices, trained_tiny_dir, tmp_path_factory) -> Path:
    """A folder of broken inputs next to good ones."""
    d = tmp_path_factory.mktemp("bad")
    lines = nsmc_slices["train"].read_text(encoding="utf-8").splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    (d / "good.tsv").write_text(header + "".join(rows[:300]), encoding="utf-8")
    (d / "empty.tsv").write_text("")
    (d / "comma.tsv").write_text("id,document,label\n1,좋아요,1\n2,싫어요,0\n", encoding="utf-8")
    (d / "ragged.tsv").write_text(header + "".join(rows[:9]) + "99\t탭이\t하나 더\t1\n" + "".join(rows[9:50]),
                                  encoding="utf-8")
    (d / "latin1.tsv").write_bytes((header + "".join(rows[:4])).encode() + b"7\tcaf\xe9\t1\n")
    (d / "bad.jsonl").write_text('{"document": "좋아요", "label": 1}\n{"document": "별로", "label": 0}\n'
                                 '{"document": "끝이 없는\n', encoding="utf-8")
    (d / "nolabel.tsv").write_text(header + rows[0] + "5\t라벨 없음\t\n" + "".join(rows[1:20]), encoding="utf-8")
    (d / "oneclass.tsv").write_text(header + "".join(r for r in rows[:400] if r.rstrip("\n").endswith("\t1")),
                                    encoding="utf-8")
    (d / "unseen.tsv").write_text(header + "1\t좋아요\t1\n2\t별로\t2\n", encoding="utf-8")
    (d / "twice.tsv").write_text("id\tdocument\tlabel\tdocument\n1\t좋아요\t1\t별로\n2\t별로\t0\t좋아요\n",
                                 encoding="utf-8")
    (d / "data.xlsx").write_bytes(b"PK\x03\x04")
    (d / "tinytest.tsv").write_text(header + "".join(rows[:40]), encoding="utf-8")
    (d / "tworows.tsv").write_text(header + "1\t좋아요\t1\n2\t별로\t0\n", encoding="utf-8")
    (d / "copy.tsv").write_text(header + "".join(rows[:20]), encoding="utf-8")
    (d / "headerless.tsv").write_text("".join(rows[:20]), encoding="utf-8")
    (d / "cp949.tsv").write_bytes((header + "".join(rows[:20])).encode("cp949", errors="replace"))
    (d / "afile").write_text("a file where a folder is expected\n")
    (d / "notamodel").mkdir()
    (d / "notamodel" / "readme.txt").write_text("not a model")
    (d / "otherrun").mkdir()
    (d / "otherrun" / "notes.txt").write_text("someone else's files")
    for name in ("brokencfg", "truncweights"):
        shutil.copytree(trained_tiny_dir, d / name, ignore=shutil.ignore_patterns("report*", "*.npz"))
    (d / "brokencfg" / "config.json").write_text('{"model_type": "bert",\n  oops\n}\n')
    w = d / "truncweights" / "model.safetensors"
    with open(w, "r+b") as f:
        f.truncate(w.stat().st_size // 2)
    (d / "brokencard").mkdir()
    (d / "brokencard" / "bertclf.json").write_text('{"labels": ["0", "1"],')
    return d


def _snapshot(*roots: Path) -> dict:
    """Every file and folder under the roots with size and modification time: 'nothing changed' is equality."""
    snap = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                snap[str(p)] = (st.st_size if p.is_file() else None, st.st_mtime_ns)
    return snap


def _env() -> dict:
    env = dict(os.environ, BERTCLF_NO_PROGRESS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("BERTCLF_TEST_PAUSE_AT", None)
    return env


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, bad, tiny_model_dir, trained_tiny_dir, tmp_path, capsys):
    name, how, argv, words = case
    out = tmp_path / "out"
    subst = {"{D}": str(bad), "{G}": str(bad / "good.tsv"), "{M}": str(tiny_model_dir), "{T}": str(trained_tiny_dir),
             "{OUT}": str(out)}
    args = []
    for a in argv:
        for k, v in subst.items():
            a = a.replace(k, v)
        args.append(a)
    before = _snapshot(bad, trained_tiny_dir, tiny_model_dir, tmp_path)

    if how == SUB:
        r = subprocess.run([sys.executable, "-m", "bertclf", *args], cwd=tmp_path, env=_env(), capture_output=True,
                           text=True, stdin=subprocess.DEVNULL, timeout=300)
        rc, stdout, stderr = r.returncode, r.stdout, r.stderr
    else:
        from bertclf.cli import main

        rc = main(args)
        cap = capsys.readouterr()
        stdout, stderr = cap.out, cap.err

    assert "Traceback" not in stdout + stderr, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert rc == 2 and len(lines) == 1, f"exit {rc}, stderr:\n{stderr[-3000:]}"
    line = lines[0]
    assert line.startswith("bertclf: error: ") and "error: bertclf" not in line, line  # the prefix once
    for w in words:
        if w.startswith("!"):
            assert w[1:] not in line, f"{w[1:]!r} in: {line}"
        else:
            assert w in line, f"{w!r} not in: {line}"
    assert not out.exists(), f"{name} left {out} behind"
    assert _snapshot(bad, trained_tiny_dir, tiny_model_dir, tmp_path) == before, f"{name} changed files"


def test_a_text_naming_a_file_is_classified_and_said(trained_tiny_dir, tmp_path, capsys, monkeypatch):
    """`predict DIR p.tsv` classifies the string "p.tsv" (texts are arguments); when such a file exists, one line
    says so and names --input."""
    from bertclf.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.tsv").write_text("text\n좋아요\n", encoding="utf-8")
    assert main(["predict", str(trained_tiny_dir), "p.tsv", "정말 좋다"]) == 0
    cap = capsys.readouterr()
    assert cap.out.count("\n") == 2 and '"text": "p.tsv"' in cap.out
    assert cap.err.strip().splitlines() == ["bertclf: note: 'p.tsv' is classified as a text; a file of that name "
                                            "exists: --input p.tsv reads its rows"]
