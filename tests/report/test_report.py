"""The run report (bertclf report): plots carry the logged data, the page is self-contained and renders."""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from bertclf.cli import main  # noqa: E402
from bertclf.errors import UserError  # noqa: E402
from bertclf.report import plot_training, reliability, write_report  # noqa: E402

from report_pages import page_data, tables  # noqa: E402 (tests/support: shared with the audit page's tests)

REPO = Path(__file__).resolve().parents[2]


def copy_run(src: Path, dst: Path) -> Path:
    """The session-shared run, copied so a test may write into it (weights left out: the report never reads them)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "report*", "compare-*"))
    return dst


def read_log(run: Path) -> tuple[list[dict], list[dict]]:
    recs = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in recs if "loss" in r], [r for r in recs if "valid_accuracy" in r]


@pytest.fixture(scope="module")
def reported(trained_tiny_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(run directory, report.html) of the trained tiny model, report written once for this module."""
    run = copy_run(trained_tiny_dir, tmp_path_factory.mktemp("report") / "run")
    html = Path(write_report([str(run)]))
    return run, html


def test_report_files_are_where_documented(reported):
    run, html = reported
    assert html == run / "report.html"
    data = json.loads((run / "report" / "data.json").read_text())
    assert data["errors"] == {} and data["notes"] == []
    assert sorted(data["figures"]) == sorted(["training.png", "validation.png", "confusion.png", "scores.png",
                                              "calibration.png", "length.png"])
    assert sorted(p.name for p in (run / "report").iterdir()) == sorted(data["figures"] + ["data.json"])
    assert not [p for p in run.iterdir() if p.name.startswith(".")], "no temporary files left behind"


def test_curves_carry_every_logged_point(reported):
    run, html = reported
    logged_train, logged_valid = read_log(run)
    card = json.loads((run / "bertclf.json").read_text())
    c = json.loads((run / "report" / "data.json").read_text())["curves"]
    assert len(logged_train) > 5
    assert c["train"]["step"] == [r["step"] for r in logged_train]
    assert c["train"]["loss"] == [r["loss"] for r in logged_train]
    assert c["train"]["acc"] == [r["acc"] for r in logged_train]
    assert c["valid"]["step"] == [r["step"] for r in logged_valid]
    assert c["valid"]["accuracy"] == [r["valid_accuracy"] for r in logged_valid]
    assert c["best_step"] == card["training"]["best_step"] in c["valid"]["step"]
    assert page_data(html.read_text())["curves"] == c
    # the figure's own line artists hold exactly those points
    fig = plot_training(c)
    loss_line = fig.axes[0].lines[0]
    assert list(loss_line.get_xdata()) == [r["step"] for r in logged_train]
    assert list(loss_line.get_ydata()) == [r["loss"] for r in logged_train]
    assert list(fig.axes[1].lines[1].get_xdata()) == [r["step"] for r in logged_valid]


def test_confusion_matrix_on_page_is_the_cards(reported):
    run, html = reported
    card = json.loads((run / "bertclf.json").read_text())
    want = card["metrics"]["test"]  # the fixture has a test set, so the page shows test
    t = tables(html.read_text())["confusion-matrix"]
    assert [row[0] for row in t[1:]] == want["labels"] and t[0][1:] == want["labels"]
    assert [[int(v) for v in row[1:]] for row in t[1:]] == want["confusion_matrix"]
    assert page_data(html.read_text())["confusion"]["matrix"] == want["confusion_matrix"]


def direct_ece(y, probs, n_bins):
    """ECE written out plainly: bins (k/n, (k+1)/n], the first one closed (scikit-learn's calibration_curve)."""
    conf, pred = probs.max(1).astype(float), probs.argmax(1)
    total = 0.0
    for k in range(n_bins):
        lo, hi = k / n_bins, (k + 1) / n_bins
        m = ((conf > lo) if k > 0 else (conf >= lo)) & (conf <= hi)
        if m.any():
            total += m.sum() / len(y) * abs((pred[m] == y[m]).mean() - conf[m].mean())
    return total


def test_ece_matches_a_direct_computation(reported):
    run, html = reported
    z = np.load(run / "eval_predictions.npz")
    data = json.loads((run / "report" / "data.json").read_text())
    r = data["reliability"]
    assert data["prediction_split"] == "test" and r["n"] == len(z["test_y"]) and 10 <= r["n_bins"] <= 15
    assert r["ece"] == pytest.approx(direct_ece(z["test_y"], z["test_probs"], r["n_bins"]), abs=1e-9)
    assert data["ece"]["valid"] == pytest.approx(direct_ece(z["valid_y"], z["valid_probs"], r["n_bins"]), abs=1e-9)
    assert sum(r["count"]) == r["n"]
    assert f"ECE {r['ece']:.4f}" in html.read_text()  # the number is printed on the page
    # known answers: confidence 0.8 right 80% of the time is calibrated; always sure and half right is 0.5 off
    y = np.array([1] * 8 + [0] * 2)
    assert reliability(y, np.tile([0.2, 0.8], (10, 1)))["ece"] == pytest.approx(0.0)
    assert reliability(np.array([0, 1]), np.array([[1.0, 0.0], [1.0, 0.0]]))["ece"] == pytest.approx(0.5)
    # a confidence on a bin edge (0.6 = 9/15) belongs to the bin below it, as in scikit-learn
    r = reliability(np.array([0, 0]), np.array([[0.6, 0.4], [0.9, 0.1]]))
    assert r["count"][8] == 1 and r["count"][9] == 0 and r["ece"] == pytest.approx((0.4 + 0.1) / 2)


def test_page_is_self_contained(reported):
    run, html = reported
    text = html.read_text()
    assert not re.search(r"(?i)(https?:|//[a-z0-9.-]+\.[a-z]{2,}/|<link\b|@import|url\()", text)
    srcs = re.findall(r'\bsrc="([^"]*)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"\bhref=", text)
    files = re.findall(r'data-file="([^"]+)"', text)
    assert sorted(files) == sorted(page_data(text)["figures"])
    for src, name in zip(srcs, files):  # the embedded images are the PNGs in DIR/report/
        assert base64.b64decode(src.split(",", 1)[1]) == (run / "report" / name).read_bytes()
    summary = {row[1]: row[2] for row in tables(text)["summary"]}
    card = json.loads((run / "bertclf.json").read_text())
    assert summary["train sha256"] == card["data"]["train"]["sha256"]
    assert summary["test sha256"] == card["data"]["test"]["sha256"]
    assert summary["device"] == card["training"]["device"]
    assert summary["test accuracy"].startswith(f"{card['metrics']['test']['accuracy']:.4f}")


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_page_renders_in_headless_chromium(reported, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("chromium not installed (apt-get install -y chromium): cannot check that report.html renders")
    from PIL import Image

    run, html = reported
    shot = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}", f"--screenshot={shot}", "--window-size=1200,2000",
           html.as_uri()]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert shot.is_file(), f"chromium wrote no screenshot (rc {res.returncode}): {res.stderr[-500:]}"
    px = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert px.shape[:2] == (2000, 1200)
    assert px.std() > 20, "the screenshot is blank"
    # the plots' colours (matplotlib blue and orange) are on screen: the embedded PNGs decoded and drew
    blue = (np.abs(px - [31, 119, 180]).sum(-1) < 40).sum()
    orange = (np.abs(px - [255, 127, 14]).sum(-1) < 40).sum()
    assert blue > 500 and orange > 200, (blue, orange)


def test_two_runs_compared(trained_tiny_dir, tmp_path):
    a = copy_run(trained_tiny_dir, tmp_path / "runA")
    b = copy_run(trained_tiny_dir, tmp_path / "runB")
    recs = [json.loads(x) for x in (b / "train_log.jsonl").read_text().splitlines()]
    for r in recs:
        if "loss" in r:
            r["loss"] *= 0.5
    (b / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    card = json.loads((b / "bertclf.json").read_text())
    card["metrics"]["test"]["accuracy"] = acc_b = 0.9
    (b / "bertclf.json").write_text(json.dumps(card))

    html = Path(write_report([str(a), str(b)]))
    assert html == a / "compare-runB.html"
    data = json.loads((a / "compare-runB" / "data.json").read_text())
    assert data["kind"] == "compare" and data["names"] == ["runA", "runB"] and data["errors"] == {}
    la, lb = read_log(a)[0], read_log(b)[0]
    assert data["per_run"][0]["curves"]["train"]["loss"] == [r["loss"] for r in la]
    assert data["per_run"][1]["curves"]["train"]["loss"] == [r["loss"] for r in lb]
    row = next(r for r in data["table"] if r["key"] == "test accuracy")
    acc_a = json.loads((a / "bertclf.json").read_text())["metrics"]["test"]["accuracy"]
    assert row["values"] == [acc_a, acc_b] and row["delta"] == pytest.approx(acc_b - acc_a)
    t = tables(html.read_text())
    assert t["compare"][0][2:4] == ["runA", "runB"]
    assert "confusion-1" in t and "confusion-2" in t
    assert "training.png" in data["figures"] and "calibration.png" in data["figures"]
    assert not (a / "report.html").exists(), "a comparison does not touch the run's own report"
    # --out through the CLI
    out = tmp_path / "cmp.html"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    assert out.is_file() and (tmp_path / "cmp" / "data.json").is_file()


def test_not_a_run_is_one_line_exit_2(tmp_path):
    x = tmp_path / "x"
    x.mkdir()
    (x / "notes.txt").write_text("hello")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-m", "bertclf", "report", str(x)], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=60)
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.splitlines()) == 1 and "not a bertclf run" in res.stderr, res.stderr
    assert not (x / "report.html").exists() and not (x / "report").exists()
    with pytest.raises(UserError, match="no such directory"):
        write_report([str(tmp_path / "missing")])


def test_partial_run_still_reported(trained_tiny_dir, tmp_path):
    """A run cut short (log only, a torn last line, a damaged predictions file) still gets a page; a
    baseline.json beside it is shown; an asset folder that is not ours is never replaced."""
    run = tmp_path / "partial"
    run.mkdir()
    log = (trained_tiny_dir / "train_log.jsonl").read_text()
    (run / "train_log.jsonl").write_text(log + '{"step": 9999, "lo')
    (run / "eval_predictions.npz").write_bytes(b"not a zip file")
    (run / "baseline.json").write_text(json.dumps({"accuracy": 0.7123, "macro_f1": 0.71, "seconds": 2.5}))
    html = Path(write_report([str(run)]))
    data = json.loads((run / "report" / "data.json").read_text())
    assert data["errors"] == {}
    assert len(data["curves"]["train"]["step"]) == len(read_log(trained_tiny_dir)[0])
    assert any("skipped 1 unreadable" in n for n in data["notes"])
    assert any("eval_predictions.npz unreadable" in n for n in data["notes"])
    assert data["confusion"] is None and data["figures"] == ["training.png", "validation.png"]
    text = html.read_text()
    assert "TF-IDF baseline" in text and "0.7123" in text
    write_report([str(run)])  # again: replaces its own report
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(UserError, match="not a bertclf report folder"):
        write_report([str(run)], out=str(tmp_path / "mine.html"))
    assert (foreign / "keep.txt").read_text() == "precious"


def synthetic_run(d: Path, labels: list[str], n: int = 300, seed: int = 0) -> Path:
    """A run directory as `bertclf train` writes it, without a test set, from made-up numbers."""
    from bertclf.data.metrics import classification_report

    rng = np.random.default_rng(seed)
    k = len(labels)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    d.mkdir()
    np.savez_compressed(d / "eval_predictions.npz", labels=np.array(labels), valid_y=y, valid_probs=probs,
                        valid_tokens=rng.integers(3, 129, n), valid_chars=rng.integers(3, 300, n))
    rep = classification_report(y, probs.argmax(1), labels)
    log = [{"step": s, "epoch": s / 50, "loss": 1.2 / s ** 0.3, "acc": 0.4 + s / 200, "lr": 1e-4,
            "samples_per_s": 100.0, "tokens_per_s": 3000.0, "elapsed_s": s / 10} for s in range(5, 101, 5)]
    log += [{"step": s, "epoch": s / 50, "valid_accuracy": a, "valid_macro_f1": a - 0.01, "best": b}
            for s, a, b in ((50, 0.6, True), (100, 0.58, False))]
    (d / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    card = {"labels": labels, "max_length": 128, "args": {"max_length": 128, "batch_size": 32},
            "data": {"train": {"source": "t.tsv", "sha256": "ab" * 32, "rows": 1000}},
            "metrics": {"valid": rep, "test": None}, "training": {"steps": 100, "best_step": 50, "device": "cpu"},
            "baseline": {"accuracy": 0.5, "macro_f1": 0.49, "seconds": 1.0}}
    (d / "bertclf.json").write_text(json.dumps(card))
    return d


def test_many_classes_odd_labels_no_test_set(tmp_path):
    labels = ["<b>bad & ugly</b>", "긍정", "a very long label name that goes on and on"]
    run = synthetic_run(tmp_path / "multi", labels)
    html = Path(write_report([str(run)]))
    data = json.loads((run / "report" / "data.json").read_text())
    assert data["errors"] == {} and data["prediction_split"] == "valid" and data["confusion"]["split"] == "valid"
    assert len(data["figures"]) == 6
    text = html.read_text()
    assert "<b>bad" not in text  # labels are escaped ...
    t = tables(text)["confusion-matrix"]
    assert t[0][1:] == labels  # ... and read back as written
    card = json.loads((run / "bertclf.json").read_text())
    assert [[int(v) for v in row[1:]] for row in t[1:]] == card["metrics"]["valid"]["confusion_matrix"]
    z = np.load(run / "eval_predictions.npz")
    assert data["reliability"]["ece"] == pytest.approx(direct_ece(z["valid_y"], z["valid_probs"], 15), abs=1e-9)
    assert data["histograms"]["score"] == "P(true class)" and list(data["histograms"]["counts"]) == labels
    assert sum(b["n"] for b in data["length"]["buckets"]) == len(z["valid_y"])
    assert "TF-IDF baseline" in text
