"""Bounded memory of `bertclf serve`: the RSS of the real server process (psutil) over equal load rounds.

After WARM_ROUNDS rounds (allocator arenas, tokenizer caches and uvicorn's buffers reach their working size),
MEASURED_ROUNDS more rounds of exactly REQUESTS requests each, the same bodies in the same order, are sent by
CLIENTS concurrent clients. A server that holds nothing per request ends the late rounds at the same RSS; the
test bounds the growth over the late rounds per request (MAX_GROWTH_PER_REQUEST).

That the check can fail is itself tested: tests/support/serve_launcher.py --leak-bytes 4096 wraps the app in a
middleware that keeps 4 KiB per request (about 6 GB an hour at 400 requests/s), and the same measurement must
see it.

RSS is read right after GET /_trim (the launcher's --trim-route: gc.collect() and glibc's malloc_trim(0)), so
free heap pages the allocator keeps for later do not count as growth. Without it the clean server's late
growth read ~1-2 KiB/request (2,091 once on CI, over the bound); with it, on the 2-core dev machine (Xeon
AMX, busy with the full suite), 600 requests a round (RSS in MB after each):
  clean:         443.9 445.6 448.4 450.4 | 451.7 451.9 450.7   -> 203 bytes/request over the last 3 rounds
  4 KiB planted: 445.8 450.6 456.0 458.3 | 461.9 465.7 469.2   -> 6,337 bytes/request
so the planted leak reads 31x the clean server and 3x the bound; the old check (64 MB allowed in one 10 s
window) passed it. On an idle machine four warm rounds were too few (1.4-2.3 KB/request clean, see WARM_ROUNDS);
with 10 warm rounds and the slope over 5 more, idle: clean 333 and -35 bytes/request, planted 4,384 and 4,659."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("psutil")

from _server_process import ServerProcess  # noqa: E402
from benchmarks.common import nsmc_texts  # noqa: E402  (the repository root is on pytest's pythonpath)
from benchmarks.serving.load import run_load  # noqa: E402

# fp32: bf16 autocast (the default on AMX CPUs) adds oneDNN kernel caches that grow with each new batch shape
FLAGS = ["--max-batch=16", "--max-wait-ms=2", "--max-texts=8", "--max-chars=300", "--precision", "fp32"]
CLIENTS, REQUESTS, TEXTS_PER_REQUEST = 8, 600, 2
# Warm-up is long: on an idle AMX machine the clean server still grew ~1 MB a round at rounds 5-7 (1.4-2.3 KB per
# request, over the bound, once on CI) and levelled off by round 11 (16 rounds: +3.5 +2.1 +0.9 +1.4 -0.7 +0.8
# +0.6 +1.1 +0.8 +0.4 +0.4 +0.1 +0.1 +0.2 +0.2 MB): caches filling with new batch shapes, not a leak.
WARM_ROUNDS, MEASURED_ROUNDS = 10, 5
# Near zero per request: half the 4 KiB leak, 10x the clean server's measured residue (docstring).
MAX_GROWTH_PER_REQUEST = 2048
PLANTED_LEAK = 4096


def growth_per_request(server: ServerProcess, texts: list[str]) -> tuple[float, list[int]]:
    """Bytes of RSS growth per request over the measured rounds, and the RSS after every round."""
    rss = []
    for _ in range(WARM_ROUNDS + MEASURED_ROUNDS):
        res = asyncio.run(run_load(server.url, texts, CLIENTS, 10**6, REQUESTS, TEXTS_PER_REQUEST, 60.0))
        assert res["errors"] == 0 and res["requests_ok"] == REQUESTS, res["error_kinds"]
        rss.append(server.rss_bytes(trim=True))
    late = rss[WARM_ROUNDS - 1:]  # from the end of the warm-up to the end of the last round
    # the least-squares slope over those rounds: one noisy reading at either end moves it less than end - start
    slope = np.polyfit(np.arange(len(late)), np.array(late, dtype=float), 1)[0]
    return slope / REQUESTS, rss


@pytest.fixture(scope="module")
def texts(nsmc_dir):
    return nsmc_texts(str(nsmc_dir), limit=REQUESTS * TEXTS_PER_REQUEST)


def _measure(trained_tiny_dir, tmp_path, texts, planted=()):
    server = ServerProcess(trained_tiny_dir, tmp_path, FLAGS, planted=["--trim-route", *planted])
    try:
        per_request, rss = growth_per_request(server, texts)
    finally:
        server.kill()
    print(f"RSS after each round of {REQUESTS} requests (MB): {[round(r / 2**20, 1) for r in rss]}; "
          f"late growth {per_request:.0f} bytes/request" + (f" (planted {planted})" if planted else ""))
    return per_request


def test_server_memory_is_flat_over_equal_load_rounds(trained_tiny_dir, tmp_path, texts):
    per_request = _measure(trained_tiny_dir, tmp_path, texts)
    assert per_request < MAX_GROWTH_PER_REQUEST, f"RSS grows {per_request:.0f} bytes per request"


def test_the_memory_check_catches_a_planted_leak(trained_tiny_dir, tmp_path, texts):
    per_request = _measure(trained_tiny_dir, tmp_path, texts, planted=["--leak-bytes", str(PLANTED_LEAK)])
    assert per_request >= MAX_GROWTH_PER_REQUEST, f"a {PLANTED_LEAK}-byte leak per request read {per_request:.0f}"
    assert per_request > 0.75 * PLANTED_LEAK  # and it is measured, not just noticed
