"""`bertclf serve` under fuzzing and load: a real server process on 127.0.0.1 with the tiny trained model.

1. Property-based fuzzing of the OpenAPI spec the server publishes (schemathesis drives hypothesis): every
   operation, valid and invalid bodies, must never get a 5xx; responses must match the spec; schema-valid
   requests must be accepted and invalid ones rejected with a 4xx.
2. A bounded load test: 16 concurrent clients for 10 s on loopback, no errors, every answer complete; the
   latency percentiles and the RSS change are printed (pytest -s) and recorded as test properties. Memory is
   held by tests/serve/test_server_memory.py (equal load rounds, per-request growth, and a planted leak it must
   catch): one 10 s window with a MB allowance could not fail on a 4 KiB-per-request leak.
   `python -m benchmarks.serving.load MODEL_DIR --soak` is the long version (64 clients, 30 s, mixed and
   malformed requests).
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from hypothesis import HealthCheck, example, given, settings  # noqa: E402  (installed with schemathesis)
from hypothesis import strategies as st  # noqa: E402
from _server_process import ServerProcess  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from benchmarks.common import nsmc_texts, rss_mb  # noqa: E402  (the repository root is on pytest's pythonpath)
from benchmarks.serving.load import run_load  # noqa: E402

# Small limits, so that generated requests reach them often and the model answers fast. The body limit is above
# what the schema allows (8 texts x 200 characters, each up to 12 bytes as JSON \u escapes): a schema-valid
# request is never 413.
LIMITS = {"max_batch": 8, "max_wait_ms": 2.0, "max_texts": 8, "max_chars": 200, "max_body_bytes": 65536}
FUZZ_EXAMPLES = int(os.environ.get("BERTCLF_FUZZ_EXAMPLES", "200"))
LOAD_CLIENTS, LOAD_SECONDS = 16, 10.0


class Server(ServerProcess):
    """`python -m bertclf serve` on 127.0.0.1, port chosen by the OS (tests/support/_server_process.py)."""

    def __init__(self, model_dir: Path, tmp: Path):
        super().__init__(model_dir, tmp, [f"--{k.replace('_', '-')}={v}" for k, v in LIMITS.items()])

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid)

    def stop(self) -> int:
        return self.terminate(timeout=30)


@pytest.fixture(scope="module")
def server(trained_tiny_dir, tmp_path_factory):
    s = Server(trained_tiny_dir, tmp_path_factory.mktemp("serve-fuzz"))
    yield s
    assert s.proc.poll() is None, "the server died during the tests"
    t0 = time.monotonic()
    assert s.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after its graceful shutdown
    assert time.monotonic() - t0 < 15
    err = s.err.read_text()
    assert "Traceback" not in err, err[-3000:]


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


FUZZ_SETTINGS = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(HealthCheck))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          positive_data_acceptance, negative_data_rejection]


# schemathesis' own pytest integration (schemathesis.pytest.from_fixture + @schema.parametrize) fails on pytest
# 9.2 ("'Function' object has no attribute '_nodeid'"), so hypothesis runs the operation strategies directly.
@pytest.mark.parametrize("method,path,mode", [("POST", "/predict", GenerationMode.POSITIVE),
                                              ("POST", "/predict", GenerationMode.NEGATIVE),
                                              ("GET", "/health", GenerationMode.POSITIVE),
                                              ("GET", "/info", GenerationMode.POSITIVE)])
def test_fuzz_the_published_openapi_spec(api_schema, method, path, mode):
    """Requests generated from the spec the server publishes (valid ones, and ones that break it): no 5xx,
    responses as documented, valid requests accepted, invalid ones rejected."""
    operation = api_schema[path][method]
    statuses: dict[int, int] = {}

    @given(case=operation.as_strategy(generation_mode=mode))
    @FUZZ_SETTINGS
    def fuzz(case):
        r = case.call_and_validate(checks=CHECKS, timeout=60)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

    fuzz()
    print(f"{method} {path} {mode.value}: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    if path == "/predict":  # (the GET operations take no input: a few requests cover them)
        assert sum(statuses.values()) >= FUZZ_EXAMPLES // 2


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
                           lambda inner: st.lists(inner, max_size=6) | st.dictionaries(
                               st.sampled_from(["inputs", "parameters", "options", "top_k", "function_to_apply",
                                                "x"]) | st.text(max_size=8), inner, max_size=4),
                           max_leaves=30)
BODIES = (st.binary(max_size=300)
          | JSON_VALUES.map(lambda v: json.dumps(v).encode())
          | st.fixed_dictionaries({"inputs": JSON_VALUES}, optional={"parameters": JSON_VALUES,
                                                                    "options": JSON_VALUES}).map(
              lambda v: json.dumps(v).encode()))
CONTENT_TYPES = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain",
                                 "application/x-www-form-urlencoded", "multipart/form-data", ""])


def test_fuzz_raw_bodies(server):
    """Bytes the spec says nothing about: arbitrary bytes, arbitrary JSON values, any shape under "inputs",
    odd content types. Always a JSON {"error"} 4xx, or a 200."""
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=server.url, timeout=60) as client:

        @given(body=BODIES, content_type=CONTENT_TYPES)
        # found by this fuzz: a client's field name holding a line break was echoed into the one-line error
        @example(body=b'{"": null, "parameters": {"\\n": null, "\\u2028x": 1}}', content_type="application/json")
        @FUZZ_SETTINGS
        def fuzz(body, content_type):
            headers = {"content-type": content_type} if content_type else {}
            r = client.post("/predict", content=body, headers=headers)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert r.status_code < 500, (r.status_code, r.text, body)
            if r.status_code != 200:
                assert r.status_code in (400, 413, 422), (r.status_code, r.text, body)
                err = r.json()["error"]
                assert isinstance(err, str) and err and "\n" not in err

        fuzz()
    print(f"raw bodies: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) >= FUZZ_EXAMPLES // 2


def test_fuzzing_left_the_server_healthy(server):
    r = httpx.get(f"{server.url}/health", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    stats = httpx.get(f"{server.url}/info", timeout=10).json()["stats"]
    assert stats["model_errors"] == 0


def test_bounded_load(server, record_property):
    """16 clients for 10 s: no errors, every answer complete; p50/p99 and the RSS change reported."""
    texts = nsmc_texts(None, limit=5000)
    warm = asyncio.run(run_load(server.url, texts, LOAD_CLIENTS, 2.0, 10**6, 1, 30.0))  # allocator warm-up
    assert warm["errors"] == 0, warm["error_kinds"]
    rss0 = server.rss_mb()
    res = asyncio.run(run_load(server.url, texts, LOAD_CLIENTS, LOAD_SECONDS, 10**6, 1, 30.0))
    rss1 = server.rss_mb()
    lat = res["latency_ms"]
    summary = (f"load: {LOAD_CLIENTS} clients x {res['seconds']}s: {res['requests_ok']} requests "
               f"({res['requests_per_s']} req/s), errors {res['errors']}; latency ms p50 {lat['p50']} p90 {lat['p90']} "
               f"p99 {lat['p99']} max {lat['max']}; server RSS {rss0:.0f} -> {rss1:.0f} MB")
    print(summary)
    for k in ("p50", "p90", "p99", "max"):
        record_property(f"latency_ms_{k}", lat[k])
    record_property("requests_per_s", res["requests_per_s"])
    record_property("rss_growth_mb", round(rss1 - rss0, 1))
    assert res["errors"] == 0, res["error_kinds"]
    assert res["requests_ok"] > LOAD_CLIENTS  # every client got answers
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
