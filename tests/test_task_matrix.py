"""Every task type by every command that reads a model: each model is used on a file in its own training format,
with no flag repeated that its card already holds (columns, encoding, text/label columns, label separator and
names, long-text mode). Exit 0 and sane output: the right number of records, labels the model knows.

Task types: single-label (NSMC, header), multi-label (KOTE: header-less, label ids named by labels.txt),
header-less cp949 (other column names), head-tail (texts over --max-length keep their first and last tokens).
Commands: eval, predict (local and Ray), serve, export (fp32, int8 with --check), distill, predict --explain,
report, audit (which reads training files, so it takes the training's reading flags)."""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from bertclf.cli import main

from _server_process import ServerProcess  # noqa: E402
from tiny_runs import encodes_in_cp949  # noqa: E402

KOTE = Path(__file__).resolve().parents[2] / "shared" / "data" / "kote"
TRAIN_ROWS, TEST_ROWS = 400, 40


def _nsmc_rows(path: Path, start: int, n: int) -> list[list[str]]:
    return [ln.split("\t") for ln in path.read_text(encoding="utf-8").splitlines()[1 + start:1 + start + n]]


def _write(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def _single(d: Path, slices) -> dict:
    head = "id\tdocument\tlabel"
    tr = _write(d / "train.tsv", [head] + ["\t".join(r) for r in _nsmc_rows(slices["train"], 0, TRAIN_ROWS)])
    te = _write(d / "test.tsv", [head] + ["\t".join(r) for r in _nsmc_rows(slices["test"], 0, TEST_ROWS)])
    return {"train": tr, "test": te, "n": TEST_ROWS, "flags": {"text_col": "document"}, "audit": ["--text-col",
            "document"]}


def _head_tail(d: Path, slices) -> dict:
    spec = _single(d, slices)
    spec["flags"] |= {"long_text": "head-tail", "max_length": 24}
    return spec


def _headerless_cp949(d: Path, slices) -> dict:
    def rows(src, start, n):
        return [f"{i}\t{t}\t{'good' if y == '1' else 'bad'}" for i, t, y in _nsmc_rows(src, start, n) if encodes_in_cp949(t)]
    train, test = rows(slices["train"], 0, TRAIN_ROWS), rows(slices["test"], 0, TEST_ROWS)
    tr, te = _write(d / "train.tsv", train, "cp949"), _write(d / "test.tsv", test, "cp949")
    flags = {"columns": "id,review,stars", "text_col": "review", "label_col": "stars", "encoding": "cp949"}
    return {"train": tr, "test": te, "n": len(test), "flags": flags,
            "audit": ["--columns", "id,review,stars", "--text-col", "review", "--label-col", "stars",
                      "--encoding", "cp949"]}


def _multi_label(d: Path, slices) -> dict:
    lines = (KOTE / "val.tsv").read_text(encoding="utf-8").splitlines()
    tr, te = _write(d / "train.tsv", lines[:TRAIN_ROWS]), _write(d / "test.tsv", lines[TRAIN_ROWS:TRAIN_ROWS + TEST_ROWS])
    flags = {"columns": "id,text,labels", "label_col": "labels", "multi_label": True,
             "label_names": str(KOTE / "labels.txt")}
    return {"train": tr, "test": te, "n": TEST_ROWS, "flags": flags,
            "audit": ["--columns", "id,text,labels", "--label-col", "labels", "--multi-label", "--label-names",
                      str(KOTE / "labels.txt")]}


TASKS = {"single": _single, "multi-label": _multi_label, "headerless-cp949": _headerless_cp949,
         "head-tail": _head_tail}


@pytest.fixture(scope="module")
def runs(tiny_model_dir, nsmc_slices, tmp_path_factory) -> dict:
    """One tiny model per task type, trained on its file (seconds each)."""
    from bertclf.train.loop import TrainConfig, train

    out = {}
    for name, make in TASKS.items():
        d = tmp_path_factory.mktemp(name)
        spec = make(d, nsmc_slices)
        run = d / "run"
        train(TrainConfig(out=str(run), train=str(spec["train"]), model=str(tiny_model_dir), epochs=2,
                          batch_size=16, lr=2e-3, seed=0, precision="fp32", **spec["flags"]), echo=lambda s: None)
        out[name] = spec | {"run": run}
    return out


def _ok(capsys, *args) -> str:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    assert rc == 0, cap.err[-2000:]
    return cap.out


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def _labels(run: Path) -> list[str]:
    return list(json.loads((run / "bertclf.json").read_text(encoding="utf-8"))["labels"])


def _check_records(recs: list[dict], spec: dict) -> None:
    labels = _labels(spec["run"])
    assert len(recs) == spec["n"] and [r["row"] for r in recs] == list(range(spec["n"]))
    assert all(r["label"] in labels and set(r["probabilities"]) == set(labels) for r in recs)


def cell_eval(spec, tmp_path, capsys):
    rep = json.loads(_ok(capsys, "eval", spec["run"], "--test", spec["test"], "--json"))
    assert rep["n"] == spec["n"] and rep["labels"] == _labels(spec["run"])


def cell_predict(spec, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    _ok(capsys, "predict", spec["run"], "--input", spec["test"], "--output", out)
    _check_records(_records(out), spec)


def cell_predict_ray(spec, tmp_path, capsys):
    local, ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    _ok(capsys, "predict", spec["run"], "--input", spec["test"], "--output", local, "--precision", "fp32")
    _ok(capsys, "predict", spec["run"], "--input", spec["test"], "--output", ray, "--precision", "fp32",
        "--engine", "ray", "--workers", "1")
    a, b = _records(local), _records(ray)
    _check_records(b, spec)
    assert [(r["row"], r["text"], r["label"], r.get("labels")) for r in a] == \
        [(r["row"], r["text"], r["label"], r.get("labels")) for r in b]


def cell_serve(spec, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    _ok(capsys, "predict", spec["run"], "--input", spec["test"], "--output", out, "--precision", "fp32")
    recs = _records(out)[:3]
    server = ServerProcess(spec["run"], tmp_path, ["--precision", "fp32"])
    try:
        r = httpx.post(f"{server.url}/predict", json={"inputs": [x["text"] for x in recs]}, timeout=60)
        assert r.status_code == 200, r.text
        for answer, rec in zip(r.json(), recs):
            assert answer[0]["label"] == rec["label"]
    finally:
        server.terminate()


def cell_export_fp32(spec, tmp_path, capsys):
    onnx, out = tmp_path / "onnx", tmp_path / "p.jsonl"
    _ok(capsys, "export", spec["run"], "--onnx", "--out", onnx)
    _ok(capsys, "predict", onnx, "--input", spec["test"], "--output", out)
    _check_records(_records(out), spec)


def cell_export_int8_check(spec, tmp_path, capsys):
    # a tiny model's scores sit near its thresholds: the agreement floor is not what this cell checks
    info = json.loads(_ok(capsys, "export", spec["run"], "--onnx", "--int8", "--check", spec["test"],
                          "--min-agreement", "0.5", "--out", tmp_path / "int8"))
    assert str(spec["test"]) in json.dumps(info, ensure_ascii=False)


def cell_distill(spec, tmp_path, capsys):
    student, out = tmp_path / "student", tmp_path / "p.jsonl"
    _ok(capsys, "distill", spec["run"], "--layers", "1", "--max-steps", "4", "--out", student)
    _ok(capsys, "predict", student, "--input", spec["test"], "--output", out)
    _check_records(_records(out), spec | {"run": student})


def cell_explain(spec, tmp_path, capsys):
    out = tmp_path / "e.jsonl"
    lines = spec["test"].read_bytes().splitlines(keepends=True)
    header = 0 if spec["flags"].get("columns") else 1
    few = tmp_path / "few.tsv"
    few.write_bytes(b"".join(lines[:header + 3]))  # three rows in the training format: --explain is ~32 passes a text
    _ok(capsys, "predict", spec["run"], "--explain", "--input", few, "--output", out)
    recs = _records(out)
    assert [r["row"] for r in recs] == [0, 1, 2] and all(r["tokens"] for r in recs)


def cell_report(spec, tmp_path, capsys):
    html = tmp_path / "r.html"
    _ok(capsys, "report", spec["run"], "--out", html)
    assert html.stat().st_size > 1000


def cell_audit(spec, tmp_path, capsys):
    out = tmp_path / "a.tsv"
    _ok(capsys, "audit", "--train", spec["train"], *spec["audit"], "--folds", "2", "--out", out)
    assert out.read_text(encoding="utf-8").startswith("row\tline\t")


CELLS = {name.removeprefix("cell_"): fn for name, fn in globals().items() if name.startswith("cell_")}


@pytest.mark.parametrize("command", list(CELLS))
@pytest.mark.parametrize("task", list(TASKS))
def test_task_by_command(runs, task, command, tmp_path, capsys):
    CELLS[command](runs[task], tmp_path, capsys)
