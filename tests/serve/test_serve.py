"""`bertclf serve`: a real server process on loopback, spoken to over real HTTP (httpx and huggingface_hub)."""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

REPO = Path(__file__).resolve().parents[2]
# small limits so the limit tests are cheap and requests over --max-batch are split
LIMITS = {"max_batch": 8, "max_wait_ms": 20.0, "max_texts": 40, "max_chars": 300, "max_body_bytes": 32768}
TEXTS = ["정말 재밌어요", "시간 아깝다", "배우들 연기가 좋았다", "최악의 영화", "그냥 그랬다", "또 보고 싶다",
         "지루해서 잠들었음", "감동적인 이야기", "ㅋㅋㅋ 웃겼다", "돈이 아깝다",
         "a", "hello world", "!!!", "123"]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("BERTCLF_LOG_LEVEL", None)
    return env


def _cli(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bertclf", *args], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


class Server:
    def __init__(self, model_dir: Path, tmp: Path):
        self.log_out, self.log_err = tmp / "stdout.txt", tmp / "stderr.txt"
        args = [f"--{k.replace('_', '-')}={v}" for k, v in LIMITS.items()]
        with open(self.log_out, "w") as out, open(self.log_err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "bertclf", "serve", str(model_dir), "--port", "0",
                                          *args], cwd=REPO, env=_env(), stdout=out, stderr=err)
        self.url = self._wait_for_url(timeout=120)
        self.client = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server does not answer /health"
            time.sleep(0.1)

    def _wait_for_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"on (http://\S+:\d+)", self.log_out.read_text())
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                pytest.fail(f"bertclf serve exited with {self.proc.returncode}: {self.log_err.read_text()}")
            time.sleep(0.1)
        self.proc.kill()
        pytest.fail("bertclf serve printed no address in time")

    def stop(self) -> float:
        """SIGTERM; seconds until the process is gone."""
        self.client.close()
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail("bertclf serve did not stop within 20 s of SIGTERM")
        return time.monotonic() - t0


@pytest.fixture(scope="module")
def clf(trained_tiny_dir):
    from bertclf.inference.classifier import Classifier

    return Classifier.load(str(trained_tiny_dir))


@pytest.fixture(scope="module")
def server(trained_tiny_dir, tmp_path_factory):
    s = Server(trained_tiny_dir, tmp_path_factory.mktemp("serve"))
    yield s
    took = s.stop()
    assert took < 15
    assert "Traceback" not in s.log_err.read_text()


def _post(server, body, **kw):
    if not isinstance(body, (bytes, str)):
        return server.client.post("/predict", json=body, **kw)
    return server.client.post("/predict", content=body, **kw)


def _as_rows(answer: list[list[dict]], labels: list[str]) -> np.ndarray:
    """Answer -> (n, n_labels) scores in label order; checks each list is sorted best first."""
    out = np.zeros((len(answer), len(labels)))
    for i, ranking in enumerate(answer):
        scores = [d["score"] for d in ranking]
        assert scores == sorted(scores, reverse=True)
        for d in ranking:
            out[i, labels.index(d["label"])] = d["score"]
    return out


def test_startup_line_names_address_model_and_backend(server, trained_tiny_dir):
    line = server.log_out.read_text().strip().splitlines()[0]
    assert server.url in line and str(trained_tiny_dir) in line and "torch" in line


def test_inference_client_text_classification(server, clf):
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=f"{server.url}/predict")
    out = client.text_classification(TEXTS[0])
    assert [o.label for o in out] and {o.label for o in out} == set(clf.labels)
    scores = [o.score for o in out]
    assert scores == sorted(scores, reverse=True) and math.isclose(sum(scores), 1.0, rel_tol=1e-5)
    expect = clf.predict_proba([TEXTS[0]])[0]
    for o in out:
        assert o.score == pytest.approx(float(expect[clf.labels.index(o.label)]), abs=1e-5)
    top = client.text_classification(TEXTS[0], top_k=1)
    assert len(top) == 1 and top[0].label == out[0].label
    raw = client.text_classification(TEXTS[0], function_to_apply="none")
    logits = clf.logits([TEXTS[0]])[0]
    for o in raw:
        assert o.score == pytest.approx(float(logits[clf.labels.index(o.label)]), abs=1e-4)


def test_single_text_and_batch_bodies(server, clf):
    r = _post(server, {"inputs": TEXTS[1]})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    one = r.json()
    assert len(one) == 1 and len(one[0]) == len(clf.labels)  # a single string: [[...]], like the Inference API
    np.testing.assert_allclose(_as_rows(one, clf.labels), clf.predict_proba([TEXTS[1]]), atol=1e-5)

    r = _post(server, {"inputs": TEXTS})  # 14 texts > --max-batch 8: split over micro-batches, answered in order
    assert r.status_code == 200
    np.testing.assert_allclose(_as_rows(r.json(), clf.labels), clf.predict_proba(TEXTS), atol=1e-5)

    r = _post(server, {"inputs": ["x" * LIMITS["max_chars"]] * LIMITS["max_texts"]})  # exactly at the limits
    assert r.status_code == 200 and len(r.json()) == LIMITS["max_texts"]


def test_top_k_and_function_to_apply(server, clf):
    logits = clf.logits(TEXTS[:3]).astype(np.float64)
    n = len(clf.labels)
    for k in (1, n, n + 5):
        r = _post(server, {"inputs": TEXTS[:3], "parameters": {"top_k": k}})
        assert r.status_code == 200 and all(len(x) == min(k, n) for x in r.json())
    r = _post(server, {"inputs": TEXTS[:3], "parameters": {"function_to_apply": "none"}})
    np.testing.assert_allclose(_as_rows(r.json(), clf.labels), logits, atol=1e-4)
    r = _post(server, {"inputs": TEXTS[:3], "parameters": {"function_to_apply": "sigmoid"}})
    np.testing.assert_allclose(_as_rows(r.json(), clf.labels), 1 / (1 + np.exp(-logits)), atol=1e-5)
    r = _post(server, {"inputs": TEXTS[:3], "parameters": {"function_to_apply": "softmax", "top_k": None}})
    np.testing.assert_allclose(_as_rows(r.json(), clf.labels), clf.predict_proba(TEXTS[:3]), atol=1e-5)
    r = _post(server, {"inputs": TEXTS[0], "parameters": None, "options": {"wait_for_model": True}})
    assert r.status_code == 200  # what old Inference API clients send


def test_health_info_and_openapi(server, clf, trained_tiny_dir):
    assert server.client.get("/health").json()["status"] == "ok"
    info = server.client.get("/info").json()
    assert info["labels"] == clf.labels and info["backend"] == "torch"
    assert info["card"] == json.loads((trained_tiny_dir / "bertclf.json").read_text())
    assert {k: info["limits"][k] for k in LIMITS} == LIMITS
    assert info["stats"]["requests"] >= 0
    spec = server.client.get("/openapi.json").json()
    assert {"/predict", "/health", "/info"} <= set(spec["paths"])
    ref = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    req = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert req["required"] == ["inputs"] and {"inputs", "parameters"} <= set(req["properties"])
    as_list = [s for s in req["properties"]["inputs"]["anyOf"] if s["type"] == "array"][0]
    assert as_list["maxItems"] == LIMITS["max_texts"] and as_list["items"]["maxLength"] == LIMITS["max_chars"]
    assert {"400", "413", "422"} <= set(spec["paths"]["/predict"]["post"]["responses"])


JSON = {"content-type": "application/json"}
BAD = {
    "malformed json": (b'{"inputs": ', JSON, 400),
    "not utf-8": (b'\xff\xfe{"inputs": "a"}', JSON, 400),
    "deeply nested": (b"[" * 20000, JSON, 400),
    "not an object": (b'["a", "b"]', JSON, 422),
    "null body": (b"null", JSON, 422),
    "empty body": (b"", JSON, 422),
    "missing inputs": ({"parameters": {"top_k": 1}}, None, 422),
    "inputs a number": ({"inputs": 5}, None, 422),
    "inputs null": ({"inputs": None}, None, 422),
    "inputs an object": ({"inputs": {"text": "a"}}, None, 422),
    "list with a number": ({"inputs": ["a", 1]}, None, 422),
    "nested list": ({"inputs": [["a"]]}, None, 422),
    "empty list": ({"inputs": []}, None, 422),
    "empty string": ({"inputs": ""}, None, 422),
    "empty string in list": ({"inputs": ["a", ""]}, None, 422),
    "whitespace-only string": ({"inputs": ["a", " \t\n"]}, None, 422),  # empty, as for predict and eval
    "lone surrogate": (b'{"inputs": "a\\ud800b"}', JSON, 422),
    "too many texts": ({"inputs": ["a"] * (LIMITS["max_texts"] + 1)}, None, 422),
    "too long text": ({"inputs": "a" * (LIMITS["max_chars"] + 1)}, None, 422),
    "top_k zero": ({"inputs": "a", "parameters": {"top_k": 0}}, None, 422),
    "top_k string": ({"inputs": "a", "parameters": {"top_k": "2"}}, None, 422),
    "top_k float": ({"inputs": "a", "parameters": {"top_k": 1.5}}, None, 422),
    "top_k bool": ({"inputs": "a", "parameters": {"top_k": True}}, None, 422),
    "unknown function": ({"inputs": "a", "parameters": {"function_to_apply": "relu"}}, None, 422),
    "unknown parameter": ({"inputs": "a", "parameters": {"temperature": 1}}, None, 422),
    "parameters a list": ({"inputs": "a", "parameters": [1]}, None, 422),
    "unknown field": ({"inputs": "a", "input": "b"}, None, 422),
    "form content type": (b'{"inputs": "a"}', {"content-type": "application/x-www-form-urlencoded"}, 422),
    "oversized body": ({"inputs": ["b" * 200] * 200}, None, 413),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_a_4xx_json_error(server, name):
    body, headers, status = BAD[name]
    r = _post(server, body, headers=headers)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert isinstance(err, str) and err and "\n" not in err


def test_oversized_chunked_body_is_413(server):
    def chunks():  # no Content-Length: the server has to count as the bytes stream in
        yield b'{"inputs": ["'
        for _ in range(LIMITS["max_body_bytes"] // 1000 + 2):
            yield b"c" * 1000
        yield b'"]}'

    r = server.client.post("/predict", content=chunks(), headers=JSON)
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and "error" in r.json()


def test_wrong_routes_and_methods_are_json_errors(server):
    assert server.client.get("/nope").status_code == 404
    r = server.client.get("/predict")
    assert r.status_code == 405 and "error" in r.json()
    assert server.client.get("/health").status_code == 200  # and after all the bad input it still serves


def test_concurrent_requests_get_their_own_answers(server, clf):
    """32 threads, single texts and lists (some longer than --max-batch), merged into shared micro-batches:
    every answer must equal what the model gives for that request's own texts."""
    expect = dict(zip(TEXTS, clf.predict_proba(TEXTS)))
    before = server.client.get("/info").json()["stats"]
    failures, lock = [], threading.Lock()

    def worker(i):
        rng = np.random.default_rng(i)
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for j in range(4):
                n = int(rng.choice([1, 1, 3, 11]))
                texts = [TEXTS[int(k)] for k in rng.integers(0, len(TEXTS), n)]
                body = {"inputs": texts[0] if n == 1 and j % 2 else texts}
                try:
                    r = c.post("/predict", json=body)
                    assert r.status_code == 200, r.text
                    got = _as_rows(r.json(), clf.labels)
                    np.testing.assert_allclose(got, np.stack([expect[t] for t in texts]), atol=1e-5)
                except Exception as e:  # noqa: BLE001 - collected and reported below
                    with lock:
                        failures.append(f"thread {i} request {j}: {e!r}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "requests hung"
    assert not failures, failures[:3]
    after = server.client.get("/info").json()["stats"]
    requests, batches = after["requests"] - before["requests"], after["batches"] - before["batches"]
    assert requests == 32 * 4
    assert batches < requests  # requests were merged
    assert after["batch_texts_max"] <= LIMITS["max_batch"]


def test_bad_model_dir_exits_2_with_one_line(tmp_path):
    r = _cli("serve", str(tmp_path / "missing"), "--port", "0")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "missing" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_port_in_use_exits_2_with_one_line(server, trained_tiny_dir):
    port = server.url.rsplit(":", 1)[1]
    r = _cli("serve", str(trained_tiny_dir), "--port", port)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and port in r.stderr
