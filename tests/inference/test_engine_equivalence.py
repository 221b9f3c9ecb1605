"""One nasty input, every way in and every engine: the records are exactly the non-empty rows, numbered by their
input row, each holding its own row's text and what `Classifier.predict` gives for that one text alone.

The rows: reviews, an empty and a blank text (first, in the middle and in a run), a repeated review, a stray
quote and quotes inside a text, texts far over the model's --max-length, emoji and characters the vocabulary
lacks, NFD Hangul; written with CRLF line ends. Forms: TSV with a header, header-less TSV, CSV, JSONL, stdin.
Engines: local (batch 1, 7, 64; JSONL and CSV), Ray (1 and 2 workers), the ONNX fp32 export, serve, --explain.
Task types: single-label (the NSMC tiny model) and multi-label (a tiny KOTE model trained header-less)."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import httpx
import numpy as np
import pytest

from bertclf.cli import main

from _server_process import ServerProcess  # noqa: E402
from test_ray_predict import ray_env  # noqa: E402,F401  (the fixture: a Ray head on 127.0.0.1 for this module)

REPO = Path(__file__).resolve().parents[2]
KOTE = REPO.parent / "shared" / "data" / "kote"
TOL = 1e-5  # fp32: a row's logits move in the last bits with the batch it is padded into
CSV_TOL = TOL + 1e-6  # CSV rounds probabilities to 6 decimals


def nasty_texts(reviews: list[str]) -> list[str]:
    long = " ".join(reviews[:12])  # far over any --max-length used here
    return ["", reviews[0], "   ", reviews[1], reviews[2], "", "", reviews[3], reviews[1],  # empty first, a run, a repeat
            '그 영화 "최고', '"좋다"고 했다 정말', long, "🎬🍿 최고 👍", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝔱𝔢𝔵𝔱 ㅋㅋ",
            unicodedata.normalize("NFD", "정말 재밌다 강추"), reviews[4], " ", reviews[5]]


def write_forms(d: Path, texts: list[str], text_col: str, label_col: str, label: str) -> dict[str, tuple]:
    """form -> (file, flags that read it); labels are one valid cell per row (predict ignores them)."""
    d.mkdir(parents=True, exist_ok=True)
    rows = [(str(i), t, label) for i, t in enumerate(texts)]
    header = [(["id", text_col, label_col])]
    tsv = d / "rows.tsv"
    tsv.write_bytes("".join("\t".join(r) + "\r\n" for r in header + rows).encode("utf-8"))
    bare = d / "bare.tsv"
    bare.write_bytes("".join("\t".join(r) + "\r\n" for r in rows).encode("utf-8"))
    f = io.StringIO()
    csv.writer(f, lineterminator="\r\n").writerows(header + rows)
    csv_path = d / "rows.csv"
    csv_path.write_bytes(f.getvalue().encode("utf-8"))
    jsonl = d / "rows.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, text_col: t, label_col: y}, ensure_ascii=False) + "\n"
                             for i, t, y in rows), encoding="utf-8")
    lines = d / "rows.lines"
    lines.write_bytes("".join(t + "\r\n" for t in texts).encode("utf-8"))
    return {"tsv": (tsv, ["--text-col", text_col]), "header-less": (bare, ["--columns", f"id,{text_col},{label_col}",
                                                                            "--text-col", text_col]),
            "csv": (csv_path, ["--text-col", text_col]), "jsonl": (jsonl, ["--text-col", text_col]),
            "stdin": (lines, ["--format", "lines"])}


def _kote_model(tiny_model_dir, tmp: Path) -> Path:
    from bertclf.train.loop import TrainConfig, train

    tmp.mkdir(parents=True, exist_ok=True)
    src = tmp / "kote.tsv"
    src.write_text("\n".join((KOTE / "val.tsv").read_text(encoding="utf-8").splitlines()[:300]) + "\n",
                   encoding="utf-8")
    run = tmp / "run"
    train(TrainConfig(out=str(run), train=str(src), model=str(tiny_model_dir), columns="id,text,labels",
                      label_col="labels", multi_label=True, label_names=str(KOTE / "labels.txt"), max_steps=20,
                      batch_size=16, lr=2e-3, seed=0, precision="fp32"), echo=lambda s: None)
    return run


@pytest.fixture(scope="module")
def tasks(trained_tiny_dir, tiny_model_dir, nsmc_slices, tmp_path_factory) -> dict:
    from bertclf.inference.classifier import Classifier

    reviews = [ln.split("\t")[1] for ln in nsmc_slices["test"].read_text(encoding="utf-8").splitlines()[1:40]]
    reviews = [r for r in reviews if r.strip() and '"' not in r][:12]
    texts = nasty_texts(reviews)
    d = tmp_path_factory.mktemp("equivalence")
    kote_run = _kote_model(tiny_model_dir, d / "kote")
    out = {}
    for name, run, text_col, label_col, label in (("single", trained_tiny_dir, "document", "label", "0"),
                                                  ("multi-label", kote_run, "text", "labels", "0,3")):
        clf = Classifier.load(str(run), precision="fp32")
        reference = {t: clf.predict([t], batch_size=1)[0] for t in set(texts) if t.strip()}
        out[name] = {"run": run, "texts": texts, "reference": reference, "multi": name == "multi-label",
                     "forms": write_forms(d / name, texts, text_col, label_col, label)}
    return out


def expected_rows(texts: list[str]) -> list[tuple[int, str]]:
    return [(i, t) for i, t in enumerate(texts) if t.strip()]


def check_jsonl(recs: list[dict], task: dict) -> None:
    assert [(r["row"], r["text"]) for r in recs] == expected_rows(task["texts"])
    for r in recs:
        ref = task["reference"][r["text"]]
        assert r["label"] == ref["label"] and r.get("labels") == ref.get("labels"), r["row"]
        np.testing.assert_allclose([r["probabilities"][k] for k in ref["probabilities"]],
                                   list(ref["probabilities"].values()), atol=TOL, err_msg=f"row {r['row']}")


def check_csv(path: Path, task: dict) -> None:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["row"]), r["text"]) for r in rows] == expected_rows(task["texts"])
    for r in rows:
        ref = task["reference"][r["text"]]
        assert r["label"] == ref["label"]
        if task["multi"]:
            assert r["labels"] == ",".join(ref["labels"])
        np.testing.assert_allclose([float(r[f"p_{k}"]) for k in ref["probabilities"]],
                                   list(ref["probabilities"].values()), atol=CSV_TOL)


def predict(capsys, run, form: tuple, out: Path, *flags, env: dict | None = None) -> None:
    path, read_flags = form
    args = ["predict", str(run), "--input", str(path), "--output", str(out), "--precision", "fp32", *read_flags,
            *map(str, flags)]
    if path.suffix == ".lines" or env:  # stdin, or a Ray cluster named in the environment: a real process
        stdin = path.read_bytes() if path.suffix == ".lines" else None
        if stdin is not None:
            args[args.index("--input") + 1] = "-"
        r = subprocess.run([sys.executable, "-m", "bertclf", *args], input=stdin, capture_output=True, cwd=REPO,
                           env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, timeout=600)
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        return
    capsys.readouterr()
    assert main(args) == 0, capsys.readouterr().err[-2000:]


@pytest.mark.parametrize("task_name", ["single", "multi-label"])
@pytest.mark.parametrize("form", ["tsv", "header-less", "csv", "jsonl", "stdin"])
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_local_engine_every_form_and_batch(tasks, task_name, form, batch, tmp_path, capsys):
    task = tasks[task_name]
    for output in ("out.jsonl", "out.csv"):
        if form == "stdin" and output.endswith(".csv") and batch != 7:
            continue  # a process each: one CSV run from stdin is enough
        out = tmp_path / output
        predict(capsys, task["run"], task["forms"][form], out, "--batch-size", batch)
        if output.endswith(".csv"):
            check_csv(out, task)
        else:
            check_jsonl([json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()], task)


@pytest.mark.parametrize("task_name, workers", [("single", 1), ("multi-label", 2)])  # each task, each pool size
def test_ray_engine(tasks, ray_env, task_name, workers, tmp_path, capsys):
    task = tasks[task_name]
    for form, output in (("tsv", "out.jsonl"), ("jsonl", "out.csv")):
        out = tmp_path / output
        predict(capsys, task["run"], task["forms"][form], out, "--engine", "ray", "--workers", workers,
                "--batch-size", 7, env={k: ray_env[k] for k in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})
        if output.endswith(".csv"):
            check_csv(out, task)
        else:
            check_jsonl([json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()], task)


@pytest.mark.parametrize("task_name", ["single", "multi-label"])
def test_onnx_fp32_export(tasks, task_name, tmp_path, capsys):
    task = tasks[task_name]
    onnx = tmp_path / "onnx"
    capsys.readouterr()
    assert main(["export", str(task["run"]), "--onnx", "--out", str(onnx)]) == 0, capsys.readouterr().err
    for form in ("tsv", "header-less"):
        out = tmp_path / f"{form}.jsonl"
        path, flags = task["forms"][form]
        assert main(["predict", str(onnx), "--input", str(path), "--output", str(out), *flags]) == 0
        recs = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
        assert [(r["row"], r["text"]) for r in recs] == expected_rows(task["texts"])
        for r in recs:  # onnxruntime's fp32 kernels differ from torch's in the last bits
            ref = task["reference"][r["text"]]
            np.testing.assert_allclose([r["probabilities"][k] for k in ref["probabilities"]],
                                       list(ref["probabilities"].values()), atol=1e-4)


@pytest.mark.parametrize("task_name", ["single", "multi-label"])
def test_serve(tasks, task_name, tmp_path):
    task = tasks[task_name]
    texts = [t for _, t in expected_rows(task["texts"])]
    server = ServerProcess(task["run"], tmp_path, ["--precision", "fp32", "--max-batch", "7"])
    try:
        r = httpx.post(f"{server.url}/predict", json={"inputs": texts, "parameters": {"top_k": None}}, timeout=120)
        assert r.status_code == 200, r.text
        for text, answer in zip(texts, r.json(), strict=True):
            ref = task["reference"][text]["probabilities"]
            got = {a["label"]: a["score"] for a in answer}
            np.testing.assert_allclose([got[k] for k in ref], list(ref.values()), atol=TOL)
    finally:
        server.terminate()


def test_explain_takes_predicts_rows(tasks, tmp_path, capsys):
    task = tasks["single"]
    out = tmp_path / "e.jsonl"
    path, flags = task["forms"]["tsv"]
    capsys.readouterr()
    assert main(["predict", str(task["run"]), "--explain", "--input", str(path), "--output", str(out), *flags]) == 0
    recs = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [(r["row"], r["text"]) for r in recs] == expected_rows(task["texts"])
    assert "5 empty text(s) skipped" in capsys.readouterr().err
