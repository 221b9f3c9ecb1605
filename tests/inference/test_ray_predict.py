"""`bertclf predict --engine ray`: on a real Ray cluster of 1 or 2 worker actors, the same records in the same order
as the local predict (with empty rows first and in between, multi-label CSV columns, a header-less file read with
the model's columns); the missing-Ray error; the local cluster it starts when RAY_ADDRESS is unset.

One cluster serves the module (`ray start --head`, joined through RAY_ADDRESS as on a multi-node cluster):
starting Ray takes ~10 s on a 2-core machine. Probabilities are compared within 1e-5: a row's logits move in
the last bits with the batch it lands in, and the Ray blocks batch the rows differently from the local run.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'bertclf[ray]')")

PROB_TOL = 1e-5
ROWS = 500  # the NSMC test slice of conftest: 2 blocks of 256 rows, so both workers get work


def read_jsonl(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bertclf(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    # predict in fp32: bf16 autocast (the default on AMX CPUs) scores a row differently in batches of other
    # shapes, and Ray's actors batch the rows otherwise than the local run
    if args and args[0] == "predict":
        args = (*args, "--precision", "fp32")
    return subprocess.run([sys.executable, "-m", "bertclf", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def ray_env(tmp_path_factory):
    """A 2-CPU Ray head on 127.0.0.1, stopped (with everything it started) at the end of the module."""
    port = free_port()
    # a token of the module's own: a head with token auth starts only with one (none may be in ~/.ray yet)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    log = open(tmp_path_factory.mktemp("ray") / "head.log", "w")
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                             f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2", "--num-gpus=0",
                             "--include-dashboard=false", "--disable-usage-stats"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if head.poll() is not None:
                pytest.fail(f"ray start exited with {head.returncode}; see {log.name}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        else:
            pytest.fail(f"the Ray head did not open port {port} in 120 s; see {log.name}")
        # a driver joining by address sends the cluster's token only when told to
        yield {**env, "RAY_ADDRESS": address}
    finally:
        # the head's own session holds only what this fixture started: SIGTERM asks it to stop, SIGKILL what
        # lingers (`ray start --block` took the whole 30 s it was once given, every run: 5 s is plenty to ask)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        log.close()


@pytest.fixture(scope="module")
def local_jsonl(trained_tiny_dir, nsmc_slices, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "local.jsonl"
    r = bertclf("predict", trained_tiny_dir, "--input", nsmc_slices["test"], "--output", out)
    assert r.returncode == 0, r.stderr
    return out


def assert_same_records(ray_recs: list[dict], local_recs: list[dict]) -> None:
    assert len(ray_recs) == len(local_recs)
    for a, b in zip(ray_recs, local_recs):
        assert list(a) == list(b) == ["row", "text", "label", "score", "probabilities"]
        assert (a["row"], a["text"], a["label"]) == (b["row"], b["text"], b["label"])
        assert list(a["probabilities"]) == list(b["probabilities"])
        assert abs(a["score"] - b["score"]) <= PROB_TOL
        for lab in a["probabilities"]:
            assert abs(a["probabilities"][lab] - b["probabilities"][lab]) <= PROB_TOL


def test_ray_two_workers_write_the_local_records_in_order(ray_env, trained_tiny_dir, nsmc_slices,
                                                          local_jsonl, tmp_path):
    out = tmp_path / "ray.jsonl"
    r = bertclf("predict", trained_tiny_dir, "--input", nsmc_slices["test"], "--output", out, "--engine", "ray",
                "--workers", 2, env=ray_env)
    assert r.returncode == 0, r.stderr
    ray_recs, local_recs = read_jsonl(out), read_jsonl(local_jsonl)
    assert len(local_recs) == ROWS and [x["row"] for x in ray_recs] == list(range(ROWS))
    assert_same_records(ray_recs, local_recs)
    assert {x["label"] for x in ray_recs} == {"0", "1"}  # a model that tells the classes apart, not a constant
    assert sorted(os.listdir(tmp_path)) == ["ray.jsonl"]  # written through a temporary file, renamed at the end


def test_ray_csv_output_matches_local_csv(ray_env, trained_tiny_dir, nsmc_slices, tmp_path):
    from bertclf.cli import main

    assert main(["predict", str(trained_tiny_dir), "--input", str(nsmc_slices["test"]),
                 "--output", str(tmp_path / "local.csv"), "--precision", "fp32"]) == 0
    r = bertclf("predict", trained_tiny_dir, "--input", nsmc_slices["test"], "--output", tmp_path / "ray.csv",
                "--engine", "ray", "--workers", 2, env=ray_env)
    assert r.returncode == 0, r.stderr
    local = (tmp_path / "local.csv").read_text(encoding="utf-8").splitlines()
    got = (tmp_path / "ray.csv").read_text(encoding="utf-8").splitlines()
    assert len(got) == len(local) == ROWS + 1 and got[0] == local[0]
    for a, b in zip(got[1:], local[1:]):  # 6-decimal probabilities: equal, or one rounding step apart
        fa, fb = a.split(","), b.split(",")
        assert fa[:-3] == fb[:-3] and all(abs(float(x) - float(y)) <= 1.1e-6 for x, y in zip(fa[-3:], fb[-3:]))


# ---- one record pipeline: the rows, their numbers, skipped texts and output columns are the local predict's ----


def read_records(path: Path) -> list[dict]:
    """JSONL or CSV records as {"row", "text", "label", "probabilities"} (CSV: 6 decimals)."""
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    with open(path, encoding="utf-8", newline="") as f:
        return [{"row": int(r["row"]), "text": r["text"], "label": r["label"],
                 "probabilities": {k[2:]: float(v) for k, v in r.items() if k.startswith("p_")}}
                for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def gappy(nsmc_slices, tmp_path_factory) -> tuple[Path, list[str]]:
    """(TSV, its texts): 300 NSMC reviews with empty and blank rows first, in the middle and in a run, and a
    review twice more; 302 non-empty rows, so two Ray blocks."""
    from bertclf.data.dataset import read_labelled

    reviews = read_labelled(nsmc_slices["test"], "document", "label").texts[:300]
    texts = ["", *reviews[:150], "   ", "", *reviews[150:220], reviews[3], reviews[3], " ", *reviews[220:]]
    path = tmp_path_factory.mktemp("gappy") / "gappy.tsv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")  # quotes the reviews that hold a quote
        w.writerows([["id", "document"], *enumerate(texts)])
    return path, texts


@pytest.fixture(scope="module")
def fp32_clf(trained_tiny_dir):
    from bertclf.inference.classifier import Classifier

    return Classifier.load(str(trained_tiny_dir), device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def local_gappy(fp32_clf, gappy, tmp_path_factory) -> dict:
    """The local engine's JSONL and CSV of the gappy file, and what it said about the skipped rows."""
    from bertclf.inference.records import predict_to

    d, said = tmp_path_factory.mktemp("local_gappy"), []
    for ext in ("jsonl", "csv"):
        predict_to(fp32_clf, input_path=str(gappy[0]), output_path=str(d / f"local.{ext}"), progress=False,
                   log=said.append)
    assert said[0] == said[1]
    return {"jsonl": d / "local.jsonl", "csv": d / "local.csv", "said": said[0]}


def scored_alone(clf, texts: list[str]) -> dict[str, dict]:
    """Each non-empty text's probabilities, classified on its own (a batch of one)."""
    return {t: clf.predict([t])[0]["probabilities"] for t in set(texts) if t.strip()}


@pytest.fixture(scope="module")
def gappy_alone(fp32_clf, gappy) -> dict[str, dict]:
    return scored_alone(fp32_clf, gappy[1])


def assert_each_row_scored_alone(recs: list[dict], texts: list[str], alone: dict[str, dict], tol: float) -> None:
    """Exactly the non-empty rows, in order, each with its own text and the probabilities of that text alone."""
    assert [(r["row"], r["text"]) for r in recs] == [(i, t) for i, t in enumerate(texts) if t.strip()]
    for rec in recs:
        want = alone[rec["text"]]
        assert rec["probabilities"].keys() == want.keys()
        assert all(abs(rec["probabilities"][k] - p) <= tol for k, p in want.items()), rec


@pytest.mark.parametrize("workers", [2])  # two workers, whose blocks meet around the empty rows
def test_ray_writes_the_local_records_around_empty_rows(ray_env, trained_tiny_dir, gappy, local_gappy, gappy_alone,
                                                        tmp_path, workers):
    """Before, every empty row shifted the Ray predictions after it by one row (and the first empty row made
    every prediction of the file another row's)."""
    path, texts = gappy
    for ext, tol in (("jsonl", PROB_TOL), ("csv", PROB_TOL + 5e-7)):
        out = tmp_path / f"ray.{ext}"
        r = bertclf("predict", trained_tiny_dir, "--input", path, "--output", out, "--engine", "ray",
                    "--workers", workers, env=ray_env)
        assert r.returncode == 0, r.stderr
        assert local_gappy["said"] in r.stderr.splitlines() and "4 empty text(s)" in local_gappy["said"]
        got, local = read_records(out), read_records(local_gappy[ext])
        assert_each_row_scored_alone(got, texts, gappy_alone, tol)
        assert_each_row_scored_alone(local, texts, gappy_alone, tol)
        assert [x["label"] for x in got] == [x["label"] for x in local]
        if ext == "csv":
            assert out.read_text(encoding="utf-8").splitlines()[0] == "row,text,label,score,p_0,p_1"


def test_ray_texts_with_empty_ones_in_the_middle(ray_env, trained_tiny_dir, fp32_clf):
    texts = ["최고의 영화 강추", "", "정말 지루하고 시간 아깝다", "  ", "재밌어요 또 보고 싶다"]
    r = bertclf("predict", trained_tiny_dir, *texts, "--engine", "ray", "--workers", 2, env=ray_env)
    assert r.returncode == 0, r.stderr
    got = [json.loads(x) for x in r.stdout.splitlines()]
    assert_each_row_scored_alone(got, texts, scored_alone(fp32_clf, texts), PROB_TOL)
    assert "bertclf: 2 empty text(s) skipped" in r.stderr


@pytest.fixture(scope="module")
def headerless_ml(tiny_model_dir, tmp_path_factory) -> Path:
    """A multi-label model trained on a header-less file (--columns id,text,labels)."""
    from test_predict_records import train_headerless_kote

    return train_headerless_kote(tiny_model_dir, tmp_path_factory.mktemp("headerless") / "run")


def test_ray_multilabel_csv_is_the_local_csv(ray_env, headerless_ml, tmp_path):
    """The `labels` column too (before, Ray's CSV had none), on a header-less file read with the model's
    columns (before, Ray read its first row as a header, without a 'text' column)."""
    from test_predict_records import COLUMNS, kote_lines

    lines = kote_lines(400, 40)
    inp = tmp_path / "in.tsv"
    inp.write_text("\n".join(lines[:20] + ["999\t\t0"] + lines[20:]) + "\n", encoding="utf-8")
    assert bertclf("predict", headerless_ml, "--input", inp, "--output", tmp_path / "local.csv",
                   "--columns", COLUMNS).returncode == 0
    r = bertclf("predict", headerless_ml, "--input", inp, "--output", tmp_path / "ray.csv", "--engine", "ray",
                "--workers", 2, env=ray_env)
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "local.csv", encoding="utf-8", newline="") as f:
        local = list(csv.reader(f))
    with open(tmp_path / "ray.csv", encoding="utf-8", newline="") as f:
        got = list(csv.reader(f))
    assert got[0] == local[0] and local[0][:5] == ["row", "text", "label", "score", "labels"]
    assert len(got) == len(local) == 41 and [row[0] for row in got[1:]] == [str(i) for i in range(41) if i != 20]
    assert any(row[4] for row in got[1:])  # some text has labels over their thresholds
    for a, b in zip(got[1:], local[1:]):  # row, text, label, labels equal; 6-decimal probabilities within a step
        assert a[:3] + a[4:5] == b[:3] + b[4:5]
        assert all(abs(float(x) - float(y)) <= 1.1e-6 for x, y in zip(a[3:4] + a[5:], b[3:4] + b[5:]))


def test_ray_starts_a_local_cluster_without_ray_address(trained_tiny_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    texts = ["정말 재밌어요", "시간 아깝다", ""]
    r = bertclf("predict", trained_tiny_dir, *texts, "--engine", "ray", "--workers", 1, env=env)
    assert r.returncode == 0, r.stderr
    from bertclf.inference.classifier import Classifier

    want = Classifier.load(str(trained_tiny_dir), device="cpu", precision="fp32").predict(texts[:2])
    got = [json.loads(x) for x in r.stdout.splitlines()]  # stdout carries only the records
    # the empty text gets no record, as in the local predict (one rule for empty texts)
    assert [g["row"] for g in got] == [0, 1] and [g["text"] for g in got] == texts[:2]
    assert [g["label"] for g in got] == [w["label"] for w in want]
    assert all(abs(g["score"] - w["score"]) <= PROB_TOL for g, w in zip(got, want))


BLOCK_RAY = """
import sys
class NoRay:  # this interpreter behaves as one where Ray is not installed
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoRay())
from bertclf.cli import main
sys.argv[0] = "bertclf"
raise SystemExit(main(sys.argv[1:]))
"""


def test_without_ray_engine_ray_is_one_line_naming_the_extra(trained_tiny_dir, nsmc_slices, tmp_path):
    out = tmp_path / "out.jsonl"
    r = subprocess.run([sys.executable, "-c", BLOCK_RAY, "predict", str(trained_tiny_dir), "--input",
                        str(nsmc_slices["test"]), "--output", str(out), "--engine", "ray"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["bertclf: error: --engine ray needs Ray; install it with: "
                                             "pip install 'bertclf[ray]'"]
    assert not out.exists() and os.listdir(tmp_path) == []


def test_shard_with_engine_ray_is_refused(trained_tiny_dir, nsmc_slices):
    r = bertclf("predict", trained_tiny_dir, "--input", nsmc_slices["test"], "--engine", "ray", "--shard", "0/2")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--shard" in r.stderr


def test_ray_on_a_header_only_file_writes_what_local_writes(trained_tiny_dir, nsmc_slices, tmp_path):
    header = nsmc_slices["test"].read_text(encoding="utf-8").splitlines(keepends=True)[0]
    empty = tmp_path / "empty.tsv"
    empty.write_text(header, encoding="utf-8")
    for engine in ("local", "ray"):
        r = bertclf("predict", trained_tiny_dir, "--input", empty, "--output", tmp_path / f"{engine}.csv",
                    "--engine", engine, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "ray.csv").read_text() == (tmp_path / "local.csv").read_text() != ""  # the CSV header


def test_ray_in_this_process_leaves_its_sigterm_handler_as_it_was(trained_tiny_dir, monkeypatch):
    """ray.init installs a SIGTERM handler that calls sys.exit; called from Python (not the CLI), predict must
    hand the caller's handler back, or a later stop signal (bertclf train's checkpoint-and-stop) exits instead.
    A local cluster of its own (no RAY_ADDRESS), started and stopped by the call."""
    from bertclf.inference.ray_engine import predict_ray_to

    for k in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    mine = lambda signum, frame: None  # noqa: E731
    previous = signal.signal(signal.SIGTERM, mine)
    try:
        out = trained_tiny_dir.parent / "sigterm.jsonl"
        assert predict_ray_to(str(trained_tiny_dir), texts=["정말 좋아요", "별로예요"], output_path=str(out),
                              workers=1) == 2
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
