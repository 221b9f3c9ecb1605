"""Every status `bertclf serve` promises besides 200/4xx, on a real server process on 127.0.0.1:
503 with Retry-After when the queue is full, 500 for the request the model fails on (and only for it), /health
503 once the model worker has died, and SIGTERM with requests in flight.

Timing is controlled from outside the package by tests/support/serve_launcher.py --gate FILE (the model worker waits
for FILE before each micro-batch), so "the queue is full" and "requests are in flight" are exact states, not
races. The failing model is a real model folder: the trained tiny model with its position table cut to 16
positions, so a text of more than 16 tokens makes the forward raise."""
from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from _server_process import ServerProcess  # noqa: E402

MAX_BATCH, MAX_TEXTS = 8, 40
FLAGS = [f"--max-batch={MAX_BATCH}", "--max-wait-ms=2", f"--max-texts={MAX_TEXTS}", "--max-chars=300"]
QUEUE = 1024  # max(4 x max-texts, 16 x max-batch, 1024) texts, as docs/guarantees.md says
SHORT = ["정말 재밌어요", "시간 아깝다", "최악의 영화", "감동적인 이야기", "그냥 그랬다", "돈이 아깝다", "또 보고 싶다"]
LONG = "이 영화는 처음부터 끝까지 정말 지루하고 배우들의 연기도 어색해서 보는 내내 시간이 아까웠다 " * 3


class Requests:
    """Requests sent from background threads, each on its own connection; results collected by index."""

    def __init__(self, url: str):
        self.url, self.results, self.threads = url, {}, []

    def send(self, key, body: dict) -> None:
        def run():
            try:
                with httpx.Client(base_url=self.url, timeout=60) as c:
                    self.results[key] = c.post("/predict", json=body)
            except httpx.HTTPError as e:
                self.results[key] = e

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)

    def join(self, timeout=60) -> None:
        for t in self.threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "requests hung"


def wait_for(what, cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def queued_texts(server) -> int:
    return httpx.get(f"{server.url}/health", timeout=10).json()["queued_texts"]


@pytest.fixture
def gated(trained_tiny_dir, tmp_path):
    gate = tmp_path / "gate"
    s = ServerProcess(trained_tiny_dir, tmp_path, FLAGS, planted=["--gate", str(gate)])
    yield s, gate
    gate.touch()
    s.kill()


@pytest.fixture(scope="module")
def clf(trained_tiny_dir):
    from bertclf.inference.classifier import Classifier

    return Classifier.load(str(trained_tiny_dir))


def scores(response, labels) -> np.ndarray:
    out = np.zeros((len(response), len(labels)))
    for i, ranking in enumerate(response):
        for d in ranking:
            out[i, labels.index(d["label"])] = d["score"]
    return out


def test_queue_full_is_503_with_retry_after_and_the_queued_requests_still_complete(gated, clf):
    server, gate = gated
    reqs = Requests(server.url)
    reqs.send("first", {"inputs": SHORT})  # taken by the worker, which waits at the gate
    wait_for("the first micro-batch to be taken", lambda: server.info()["stats"]["requests"] == 1
             and queued_texts(server) == 0)
    n_fit = QUEUE // MAX_TEXTS  # 25 requests of 40 texts: 1,000 queued texts, the next 40 do not fit
    for i in range(n_fit):
        reqs.send(i, {"inputs": [SHORT[i % len(SHORT)]] * MAX_TEXTS})
    wait_for("the queue to fill", lambda: queued_texts(server) == n_fit * MAX_TEXTS)

    r = httpx.post(f"{server.url}/predict", json={"inputs": [SHORT[0]] * MAX_TEXTS}, timeout=10)
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "busy" in r.json()["error"] and "\n" not in r.json()["error"]
    assert server.info()["stats"]["busy_rejections"] == 1

    gate.touch()  # the worker runs again: everything that was queued is answered, in full
    reqs.join()
    expect = clf.predict_proba(SHORT)
    assert reqs.results["first"].status_code == 200
    np.testing.assert_allclose(scores(reqs.results["first"].json(), clf.labels), expect, atol=1e-5)
    for i in range(n_fit):
        r = reqs.results[i]
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(scores(r.json(), clf.labels), np.repeat(expect[[i % len(SHORT)]], MAX_TEXTS, 0),
                                   atol=1e-5)
    retry = httpx.post(f"{server.url}/predict", json={"inputs": [SHORT[0]] * MAX_TEXTS}, timeout=30)
    assert retry.status_code == 200  # Retry-After meant it: the same request is served once the queue drains


def test_sigterm_finishes_the_micro_batch_in_progress_and_answers_the_queue_503(gated, clf):
    """SIGTERM with one micro-batch in the model and three requests queued behind it: the queued ones are
    answered 503 with Retry-After at once (a client retries elsewhere), no new connection is accepted, the
    micro-batch in progress still gets its 200 answers, and the process exits as soon as it is done."""
    server, gate = gated
    reqs = Requests(server.url)
    reqs.send("running", {"inputs": SHORT})  # in the worker, held at the gate
    wait_for("the first micro-batch", lambda: server.info()["stats"]["requests"] == 1 and queued_texts(server) == 0)
    for i in range(3):
        reqs.send(i, {"inputs": SHORT[i:i + 2]})  # queued behind it
    wait_for("the queued requests", lambda: queued_texts(server) == 6)

    server.proc.send_signal(signal.SIGTERM)
    wait_for("the queued requests' answers", lambda: all(i in reqs.results for i in range(3)), timeout=10)
    for i in range(3):
        r = reqs.results[i]
        assert isinstance(r, httpx.Response) and r.status_code == 503, r
        assert r.headers["retry-after"] == "1" and "shutting down" in r.json()["error"]
    with pytest.raises(httpx.ConnectError):  # the listener is closed: a new client is refused, not queued
        httpx.post(f"{server.url}/predict", json={"inputs": "새 요청"}, timeout=5)
    time.sleep(0.5)
    assert server.proc.poll() is None and "running" not in reqs.results  # still finishing what it holds

    gate.touch()
    t0 = time.monotonic()
    reqs.join()
    running = reqs.results["running"]
    assert isinstance(running, httpx.Response) and running.status_code == 200, running
    np.testing.assert_allclose(scores(running.json(), clf.labels), clf.predict_proba(SHORT), atol=1e-5)
    assert server.terminate(timeout=15) in (0, -signal.SIGTERM)
    assert time.monotonic() - t0 < 10
    assert "Traceback" not in server.err.read_text()


def test_sigterm_with_a_model_that_never_finishes_still_exits(gated):
    """The micro-batch in progress never finishes (the gate stays shut): after uvicorn's 10 s graceful period
    the request is dropped and the process exits anyway, well before a supervisor's kill."""
    server, _ = gated
    reqs = Requests(server.url)
    reqs.send("running", {"inputs": SHORT})
    wait_for("the first micro-batch", lambda: server.info()["stats"]["requests"] == 1 and queued_texts(server) == 0)
    t0 = time.monotonic()
    server.terminate(timeout=40)
    took = time.monotonic() - t0
    reqs.join()
    assert not isinstance(reqs.results["running"], httpx.Response) or reqs.results["running"].status_code != 200
    assert 9 < took < 15, took


def test_worker_death_fails_its_request_and_turns_health_503(trained_tiny_dir, tmp_path):
    marker = "KILL-THE-WORKER"
    server = ServerProcess(trained_tiny_dir, tmp_path, FLAGS, planted=["--kill-worker-on", marker])
    try:
        assert httpx.post(f"{server.url}/predict", json={"inputs": SHORT[0]}, timeout=30).status_code == 200
        r = httpx.post(f"{server.url}/predict", json={"inputs": [SHORT[0], marker]}, timeout=30)
        assert r.status_code in (500, 503) and "\n" not in r.json()["error"], r.text  # answered, not hung
        h = httpx.get(f"{server.url}/health", timeout=10)
        assert h.status_code == 503 and "planted worker death" in h.json()["error"]
        r = httpx.post(f"{server.url}/predict", json={"inputs": SHORT[0]}, timeout=30)
        assert r.status_code == 503 and "worker" in r.json()["error"], r.text
        assert server.proc.poll() is None  # the process stays up to say so (a supervisor restarts it)
    finally:
        server.kill()


@pytest.fixture(scope="module")
def short_position_model(trained_tiny_dir, tmp_path_factory) -> Path:
    """The trained tiny model with a 16-position table: texts over 16 tokens make the forward raise."""
    import shutil

    from safetensors.torch import load_file, save_file

    d = tmp_path_factory.mktemp("short-positions") / "model"
    shutil.copytree(trained_tiny_dir, d)
    weights = load_file(d / "model.safetensors")
    key = next(k for k in weights if k.endswith("position_embeddings.weight"))
    weights[key] = weights[key][:16].clone()
    save_file(weights, d / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(cfg | {"max_position_embeddings": 16}))
    return d


def test_a_request_the_model_fails_on_is_500_and_only_it(short_position_model, tmp_path):
    from bertclf.inference.classifier import Classifier

    clf = Classifier.load(str(short_position_model))
    with pytest.raises(Exception):
        clf.logits([LONG])  # the planted fault is real: the forward raises on a long text
    expect = clf.predict_proba(SHORT)
    gate = tmp_path / "gate"
    server = ServerProcess(short_position_model, tmp_path, [*FLAGS, "--max-wait-ms=50"], planted=["--gate", str(gate)])
    try:
        reqs = Requests(server.url)
        reqs.send("first", {"inputs": SHORT[0]})
        wait_for("the first micro-batch", lambda: server.info()["stats"]["requests"] == 1
                 and queued_texts(server) == 0)
        # queued together, so they share the next micro-batch with the long text
        for i in range(3):
            reqs.send(i, {"inputs": SHORT[i]})
        reqs.send("long", {"inputs": LONG})
        for i in range(3, 6):
            reqs.send(i, {"inputs": SHORT[i]})
        wait_for("seven queued texts", lambda: queued_texts(server) == 7)
        gate.touch()
        reqs.join()
        bad = reqs.results["long"]
        assert bad.status_code == 500 and bad.json()["error"].startswith("model error: "), bad.text
        assert "\n" not in bad.json()["error"]
        for i in range(6):
            r = reqs.results[i]
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(scores(r.json(), clf.labels), expect[[i]], atol=1e-5)
        stats = server.info()["stats"]
        assert stats["model_errors"] >= 1 and stats["batch_texts_max"] <= MAX_BATCH
        h = httpx.get(f"{server.url}/health", timeout=10)
        assert h.status_code == 200  # one failing request does not take the worker down
        r = httpx.post(f"{server.url}/predict", json={"inputs": SHORT}, timeout=30)
        assert r.status_code == 200
        assert server.terminate() in (0, -15)
        assert "Traceback" not in server.err.read_text()
    finally:
        server.kill()
