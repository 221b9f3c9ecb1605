"""Streaming prediction over files: bounded memory on a 20,000-row file, `--shard i/n` splits a file exactly,
and every input/output form (TSV, JSONL, plain-lines .txt, stdin; JSONL and CSV out) gives the same answers.

Probabilities are compared to float32 rounding, not bit for bit: a row's logits depend by an ulp or two on
the batch it lands in (batch size and padded width change the BLAS/attention kernels' rounding). Sharding
changes the batches, so about 0.1% of rows differ in the last bits (measured: 20 of 20,000 rows, |dp| <= 6e-8).
Labels, rows and texts are compared exactly.
"""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bertclf.inference import records as predict_io
from bertclf.cli import main

from same_rows import PROB_TOL, probs_close, same_prediction

REPO = Path(__file__).resolve().parents[2]
BIG, SMALL = 40_000, 5_000


def read_jsonl(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines()]


def nsmc_rows(test_file: Path) -> tuple[str, list[str]]:
    lines = test_file.read_text(encoding="utf-8").splitlines()
    return lines[0], lines[1:]


def repeat_rows(test_file: Path, out: Path, n: int) -> Path:
    header, rows = nsmc_rows(test_file)
    with open(out, "w", encoding="utf-8") as f:
        f.write(header + "\n")
        for i in range(n):
            f.write(rows[i % len(rows)] + "\n")
    return out


# Reports the peak RSS of the command it runs. It is a small process of its own because a child's ru_maxrss
# also counts the memory it had before exec, i.e. a fork of its parent: forked from this pytest process
# (1 GiB after training) every child would "peak" at 1 GiB. os.wait4 gives that one child's rusage
# (RUSAGE_CHILDREN would be the maximum over every child ever waited for).
PEAK_RSS = """
import os, subprocess, sys
p = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(p.pid, 0)
print(usage.ru_maxrss, file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def predict_subprocess(model: Path, inp: Path, out: Path) -> tuple[float, float]:
    """Run `bertclf predict` in a child; (its peak RSS in MiB, seconds)."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
                        "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    # fp32: this measures streaming; bf16 on AMX CPUs adds oneDNN kernel caches that grow with the number of
    # distinct batch shapes (bounded by --max-length), which would blur the comparison
    r = subprocess.run([sys.executable, "-c", PEAK_RSS, sys.executable, "-m", "bertclf", "predict", str(model),
                        "--input", str(inp), "--output", str(out), "--precision", "fp32"], cwd=REPO, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return int(r.stderr.strip().splitlines()[-1]) / 1024, time.time() - t0  # Linux: KiB


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """In-process runs on one thread, as the children (OMP_NUM_THREADS=1): on a busy 2-core machine two
    threads per process are several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def big_run(trained_tiny_dir, nsmc_slices, tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("stream")
    big = repeat_rows(nsmc_slices["test"], d / "big.tsv", BIG)
    small = repeat_rows(nsmc_slices["test"], d / "small.tsv", SMALL)
    rss_small, s_small = predict_subprocess(trained_tiny_dir, small, d / "small.jsonl")
    rss_big, s_big = predict_subprocess(trained_tiny_dir, big, d / "big.jsonl")
    print(f"\npredict: {SMALL} rows peak RSS {rss_small:.1f} MiB in {s_small:.1f}s, "
          f"{BIG} rows {rss_big:.1f} MiB in {s_big:.1f}s")
    return {"dir": d, "big": big, "out": d / "big.jsonl", "small": small, "small_out": d / "small.jsonl",
            "rss": (rss_small, rss_big), "seconds": (s_small, s_big)}


def test_memory_stays_bounded_on_a_big_file(big_run):
    """8x the rows, (almost) the same peak memory. The small file spans more than one 4,096-row chunk, so both
    runs have the same per-chunk peak. Holding all rows instead grows 43 MiB for these 35,000 more rows
    (measured with CHUNK_ROWS = 10**9); streaming grew 5.8-11.0 MiB in three runs (the peak RSS of a whole
    process is noisy: with 20,000 rows it read 12.6 MiB once on CI, over the old 12 MiB bound)."""
    assert SMALL > predict_io.CHUNK_ROWS
    rows = read_jsonl(big_run["out"])
    assert [r["row"] for r in rows] == list(range(BIG))
    rss_small, rss_big = big_run["rss"]
    assert rss_big - rss_small < 24, f"peak RSS {rss_small:.0f} MiB for {SMALL} rows, {rss_big:.0f} MiB for {BIG}"


def test_texts_are_read_as_training_reads_them(big_run, nsmc_slices):
    from bertclf.data.dataset import read_labelled

    rows = read_jsonl(big_run["out"])
    texts = read_labelled(nsmc_slices["test"], "document", "label").texts  # NSMC quotes some reviews CSV-style
    n = len(texts)
    assert [r["text"] for r in rows[:n]] == texts and [r["text"] for r in rows[n:2 * n]] == texts
    assert all(r["label"] in ("0", "1") and probs_close({"s": r["score"]}, {"s": max(r["probabilities"].values())})
               for r in rows)


def test_shards_split_the_file_exactly(big_run, trained_tiny_dir):
    d, n, rows_in = big_run["dir"], 3, SMALL
    whole = {r["row"]: r for r in read_jsonl(big_run["small_out"])}
    union = {}
    for i in range(n):
        out = d / f"shard-{i}.jsonl"
        assert main(["predict", str(trained_tiny_dir), "--input", str(big_run["small"]), "--output", str(out),
                     "--shard", f"{i}/{n}", "--precision", "fp32"]) == 0  # as the whole run (big_run) is
        rows = read_jsonl(out)
        assert [r["row"] for r in rows] == list(range(i, rows_in, n))  # its own rows, in input order
        for r in rows:
            assert r["row"] not in union
            union[r["row"]] = r
    assert union.keys() == whole.keys()
    for k, a in whole.items():
        assert same_prediction(a, union[k]), (a, union[k])
    # Not asserted bit-identical: a row lands in batches of other widths in a shard (tests/support/same_rows.py)


@pytest.fixture(scope="module")
def reference(trained_tiny_dir, nsmc_slices, tmp_path_factory) -> list[dict]:
    """The 500-row NSMC test slice through the TSV path: the answers every other form must give."""
    out = tmp_path_factory.mktemp("forms") / "ref.jsonl"
    assert main(["predict", str(trained_tiny_dir), "--input", str(nsmc_slices["test"]), "--output", str(out)]) == 0
    return read_jsonl(out)


def same_answers(got: list[dict], ref: list[dict]):
    assert [(r["row"], r["text"], r["label"]) for r in got] == [(r["row"], r["text"], r["label"]) for r in ref]
    assert all(probs_close(a["probabilities"], b["probabilities"]) for a, b in zip(got, ref))


def test_jsonl_input_and_csv_output(trained_tiny_dir, reference, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "document": r["text"]}, ensure_ascii=False) + "\n"
                           for i, r in enumerate(reference)), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(trained_tiny_dir), "--input", str(inp), "--output", str(out)]) == 0
    same_answers(read_jsonl(out), reference)

    csv_out = tmp_path / "out.csv"
    assert main(["predict", str(trained_tiny_dir), "--input", str(inp), "--output", str(csv_out)]) == 0
    with open(csv_out, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["row", "text", "label", "score", "p_0", "p_1"]
    assert [(int(r["row"]), r["text"], r["label"]) for r in rows] == [(r["row"], r["text"], r["label"])
                                                                      for r in reference]
    for r, ref in zip(rows, reference):  # 6 decimals in CSV
        assert abs(float(r["p_1"]) - ref["probabilities"]["1"]) <= 5e-7 + PROB_TOL
        assert abs(float(r["score"]) - ref["score"]) <= 5e-7 + PROB_TOL


def test_plain_lines_txt_input(trained_tiny_dir, reference, tmp_path):
    inp = tmp_path / "in.txt"  # one text per line, no header; the first line is a text too
    texts = [r["text"] for r in reference if "\n" not in r["text"] and "\t" not in r["text"]]
    assert len(texts) == len(reference)
    inp.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(trained_tiny_dir), "--input", str(inp), "--output", str(out)]) == 0
    same_answers(read_jsonl(out), reference)


def test_stdin_input(trained_tiny_dir, reference, tmp_path, monkeypatch):
    data = "".join(r["text"] + "\n" for r in reference).encode("utf-8")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(trained_tiny_dir), "--output", str(out)]) == 0  # no --input: stdin
    same_answers(read_jsonl(out), reference)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    out2 = tmp_path / "out2.jsonl"
    assert main(["predict", str(trained_tiny_dir), "--input", "-", "--output", str(out2), "--shard", "1/2"]) == 0
    assert [r["row"] for r in read_jsonl(out2)] == list(range(1, len(reference), 2))


# ---- bad-input defects of issue 19 that exit 0: texts after options, stdin as a file, empty texts, folders ----


def test_texts_may_follow_options(trained_tiny_dir, capsys):
    assert main(["predict", str(trained_tiny_dir), "--batch-size", "8", "정말 재밌어요", "시간 아깝다"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["정말 재밌어요", "시간 아깝다"] and [r["row"] for r in rows] == [0, 1]


def test_batch_size_is_checked_by_the_api(trained_tiny_dir):
    from bertclf.errors import UserError
    from bertclf.inference.classifier import Classifier

    clf = Classifier.load(str(trained_tiny_dir))
    for bad in (-1, 0):
        with pytest.raises(UserError, match="batch_size: must be a whole number >= 1"):
            clf.predict(["정말 재밌어요"], batch_size=bad)


def test_stdin_is_parsed_as_a_file_with_format(trained_tiny_dir, tmp_path, monkeypatch):
    data = "id\tdocument\tlabel\n1\t정말 재밌어요\tpos\n2\t시간 아깝다\tneg\n".encode("utf-8")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(trained_tiny_dir), "--format", "tsv", "--output", str(out)]) == 0
    assert [r["text"] for r in read_jsonl(out)] == ["정말 재밌어요", "시간 아깝다"]


def test_empty_texts_are_skipped_and_counted(trained_tiny_dir, tmp_path, capsys):
    inp = tmp_path / "in.tsv"
    inp.write_text("id\tdocument\n1\t좋아요\n2\t   \n3\t별로\n", encoding="utf-8")
    out = tmp_path / "new" / "folder" / "out.jsonl"  # predict creates the output's folder
    assert main(["predict", str(trained_tiny_dir), "--input", str(inp), "--output", str(out)]) == 0
    assert [(r["row"], r["text"]) for r in read_jsonl(out)] == [(0, "좋아요"), (2, "별로")]
    assert "1 empty text(s) skipped" in capsys.readouterr().err


def test_eval_says_how_many_empty_rows_it_dropped(trained_tiny_dir, tmp_path, capsys):
    test = tmp_path / "t.tsv"
    test.write_text("document\tlabel\n좋아요\t1\n \t0\n별로\t0\n\t1\n", encoding="utf-8")
    assert main(["eval", str(trained_tiny_dir), "--test", str(test), "--json"]) == 0
    cap = capsys.readouterr()
    assert "2 row(s) with an empty text dropped" in cap.err and json.loads(cap.out)["n"] == 2


def test_headerless_input_with_columns(trained_tiny_dir, tmp_path, capsys):
    inp = tmp_path / "in.tsv"
    inp.write_text("7\t정말 재밌어요\n8\t시간 아깝다\n", encoding="utf-8")
    assert main(["predict", str(trained_tiny_dir), "--input", str(inp), "--columns", "id,document"]) == 0
    assert [json.loads(x)["text"] for x in capsys.readouterr().out.splitlines()] == ["정말 재밌어요", "시간 아깝다"]
