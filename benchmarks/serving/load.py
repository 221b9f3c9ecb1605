"""`bertclf serve` under load: N concurrent clients post NSMC test reviews for a bounded time.

    python -m benchmarks.serving.load MODEL_DIR                   # a server on loopback, 16 clients, 10 s
    python -m benchmarks.serving.load MODEL_DIR --clients 32 --texts-per-request 4 --max-batch 32
    python -m benchmarks.serving.load MODEL_DIR --soak            # 64 clients, 30 s, mixed and malformed requests
    python -m benchmarks.serving.load MODEL_DIR --soak --clients 128 --seconds 300 --json
    python -m benchmarks.serving.load --url http://127.0.0.1:8000 # an already running server (no RSS numbers)

load (the default): every request carries --texts-per-request texts. Reports throughput (requests/s, texts/s),
p50/p90/p99 latency, errors (0 expected), the server's micro-batch counters from /info, and, for a server it
started, its RSS before and after the load, its CPU ms per request and how long SIGTERM took. Exit 1 on errors.

--soak: each client loops until the time is up, sending (by a seeded draw) one text (60%), a list of 4 (20%), a
list of --max-texts-per-request (10%), or a malformed request (10%: broken JSON, empty text, wrong type, over the
text limit) that must get a 4xx with a JSON {"error"} body. Counted as errors: a 5xx, a transport error, a wrong
status or a malformed answer. The server's RSS is sampled every second; the report gives its start, peak and end,
and the growth over the second half of the run (a leak shows as steady growth once everything is warm). Exit 1
when there were errors or the second-half RSS growth is over --max-rss-growth-mb.

Texts: the `document` column of ratings_test.txt, found as bertclf finds NSMC (--data-dir, $BERTCLF_DATA_DIR,
the cache, ../shared/data/nsmc). The short versions run in the test suite (tests/serve/test_serve_fuzz.py,
tests/serve/test_server_memory.py import run_load from here).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

from benchmarks.common import LocalServer, cpu_s, machine, nsmc_texts, rss_mb, run, wait_healthy

def pct(sorted_ms: list[float], p: float) -> float | None:
    if not sorted_ms:
        return None
    return round(sorted_ms[min(len(sorted_ms) - 1, int(p / 100 * len(sorted_ms)))], 1)


async def run_load(url: str, texts: list[str], clients: int, seconds: float, max_requests: int, per_request: int,
                   timeout: float) -> dict:
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        async def one_client(i: int):
            nonlocal sent
            k = i * 7919
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                batch = [texts[(k + j) % len(texts)] for j in range(per_request)]
                k += per_request * clients
                body = {"inputs": batch[0] if per_request == 1 else batch}
                t0 = time.perf_counter()
                try:
                    r = await client.post("/predict", json=body)
                    ok = r.status_code == 200 and len(r.json()) == per_request
                    key = None if ok else f"HTTP {r.status_code}: {r.text[:100]}"
                except Exception as e:  # noqa: BLE001 - counted as an error
                    key = f"{type(e).__name__}: {e}"[:120]
                if key is None:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors[key] = errors.get(key, 0) + 1

        t_start = time.perf_counter()
        await asyncio.gather(*(one_client(i) for i in range(clients)))
        wall = time.perf_counter() - t_start

    ms = sorted(1000 * x for x in latencies)
    return {"clients": clients, "texts_per_request": per_request, "seconds": round(wall, 2),
            "requests_ok": len(ms), "errors": sum(errors.values()), "error_kinds": errors,
            "requests_per_s": round(len(ms) / wall, 1), "texts_per_s": round(len(ms) * per_request / wall, 1),
            "latency_ms": {"p50": pct(ms, 50), "p90": pct(ms, 90), "p99": pct(ms, 99), "max": pct(ms, 100),
                           "mean": round(sum(ms) / len(ms), 1) if ms else None}}


MALFORMED = [
    (b'{"inputs": ', 400),
    (b'{"inputs": ""}', 422),
    (b'{"inputs": 5}', 422),
    (b'{"inputs": ["a", null]}', 422),
    (b'{"inputs": "a", "parameters": {"top_k": 0}}', 422),
    (b'["not", "an", "object"]', 422),
]


async def soak(url: str, texts: list[str], clients: int, seconds: float, big: int, timeout: float, seed: int,
               pid: int | None) -> dict:
    import httpx

    lat: dict[str, list[float]] = {"1": [], "4": [], str(big): [], "malformed": []}
    errors: dict[str, int] = {}
    rss: list[tuple[float, float]] = []
    t_start = time.perf_counter()
    deadline = t_start + seconds

    def error(key: str) -> None:
        errors[key[:160]] = errors.get(key[:160], 0) + 1

    async def sample_rss():
        while time.perf_counter() < deadline:
            if pid is not None and (m := rss_mb(pid)) is not None:
                rss.append((time.perf_counter() - t_start, m))
            await asyncio.sleep(1.0)

    async def one_client(i: int, client):
        rng = random.Random(seed * 1000 + i)
        while time.perf_counter() < deadline:
            draw = rng.random()
            headers = {"content-type": "application/json"}
            if draw < 0.9:
                n = 1 if draw < 0.6 else 4 if draw < 0.8 else big
                batch = [texts[rng.randrange(len(texts))] for _ in range(n)]
                body, expect, kind = json.dumps({"inputs": batch[0] if n == 1 else batch}).encode(), 200, str(n)
            else:
                body, expect = rng.choice(MALFORMED)
                kind = "malformed"
            t0 = time.perf_counter()
            try:
                r = await client.post("/predict", content=body, headers=headers)
                ms = 1000 * (time.perf_counter() - t0)
                if r.status_code != expect:
                    error(f"HTTP {r.status_code} (expected {expect}): {r.text[:100]}")
                elif expect == 200 and len(r.json()) != int(kind):
                    error(f"answer for {kind} texts has {len(r.json())} entries")
                elif expect != 200 and not isinstance(r.json().get("error"), str):
                    error(f"HTTP {r.status_code} without an error message: {r.text[:100]}")
                else:
                    lat[kind].append(ms)
            except Exception as e:  # noqa: BLE001 - counted
                error(f"{type(e).__name__}: {e}")

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        await asyncio.gather(sample_rss(), *(one_client(i, client) for i in range(clients)))
    wall = time.perf_counter() - t_start

    ok = sum(len(v) for v in lat.values())
    out = {"clients": clients, "seconds": round(wall, 1), "requests_ok": ok, "requests_per_s": round(ok / wall, 1),
           "texts_per_s": round(sum(len(v) * (int(k) if k.isdigit() else 0) for k, v in lat.items()) / wall, 1),
           "errors": sum(errors.values()), "error_kinds": errors, "latency_ms": {}}
    for kind, values in lat.items():
        s = sorted(values)
        out["latency_ms"][kind if kind == "malformed" else f"{kind}_texts"] = {
            "n": len(s), "p50": pct(s, 50), "p90": pct(s, 90), "p99": pct(s, 99), "max": pct(s, 100)}
    if rss:
        half = [m for t, m in rss if t >= wall / 2]
        out["rss_mb"] = {"start": round(rss[0][1], 1), "peak": round(max(m for _, m in rss), 1),
                         "end": round(rss[-1][1], 1),
                         "second_half_growth": round(half[-1] - half[0], 1) if len(half) > 1 else 0.0}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", nargs="?", help="model directory to serve (not needed with --url)")
    p.add_argument("--url", help="load an already running server instead of starting one")
    p.add_argument("--soak", action="store_true", help="mixed sizes and 10%% malformed requests, RSS sampled")
    p.add_argument("--clients", type=int, help="concurrent clients (default 16; --soak 64)")
    p.add_argument("--seconds", type=float, help="how long to send requests (default 10; --soak 30)")
    p.add_argument("--timeout", type=float, help="per-request timeout, seconds (default 30; --soak 60)")
    p.add_argument("--data-dir", help="folder holding NSMC's ratings_test.txt")
    p.add_argument("--max-batch", type=int, help="passed to bertclf serve")
    p.add_argument("--max-wait-ms", type=float, help="passed to bertclf serve")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")
    g = p.add_argument_group("load")
    g.add_argument("--requests", type=int, default=100000, help="stop after this many requests")
    g.add_argument("--texts-per-request", type=int, default=1)
    s = p.add_argument_group("--soak")
    s.add_argument("--max-texts-per-request", type=int, default=32, help="size of the largest requests")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-rss-growth-mb", type=float, default=50.0,
                   help="fail when the server's RSS grows more than this over the second half of the run")
    a = p.parse_args(argv)
    if not a.url and not a.model_dir:
        p.error("give a MODEL_DIR to serve, or --url of a running server")
    defaults = (64, 30.0, 60.0) if a.soak else (16, 10.0, 30.0)
    a.clients, a.seconds, a.timeout = (v if v is not None else d for v, d in
                                       zip((a.clients, a.seconds, a.timeout), defaults))
    return (soak_main if a.soak else load_main)(a)


def target(a, say) -> tuple[LocalServer | None, str]:
    """--url, or a server of MODEL_DIR started on loopback (and the URL either way), once it answers /health."""
    if a.url:
        server, url = None, a.url.rstrip("/").removesuffix("/predict")
    else:
        extra = ["--max-batch", str(a.max_batch)] if a.max_batch else []
        if a.max_wait_ms is not None:
            extra += ["--max-wait-ms", str(a.max_wait_ms)]
        t0 = time.perf_counter()
        server = LocalServer(a.model_dir, extra)
        url = server.url
        say(f"{server.line}  (started in {time.perf_counter() - t0:.1f}s)")
    wait_healthy(url)
    return server, url


def load_main(a) -> int:
    import httpx

    texts = nsmc_texts(a.data_dir)
    say = (lambda s: print(s, file=sys.stderr)) if a.json else print
    say(f"device: {machine()}")
    server, url = target(a, say)
    result = {"url": url, "texts_available": len(texts)}
    try:
        info_before = httpx.get(f"{url}/info", timeout=10).json()
        result.update(backend=info_before.get("backend"), limits=info_before.get("limits"))
        if server:
            result["rss_mb_before"] = rss_mb(server.proc.pid)
            cpu0 = cpu_s(server.proc.pid)
        httpx.post(f"{url}/predict", json={"inputs": texts[:8]}, timeout=60)  # warm-up
        say(f"load: {a.clients} clients, {a.texts_per_request} text(s)/request, up to {a.seconds:g}s or "
            f"{a.requests} requests ...")
        result.update(asyncio.run(run_load(url, texts, a.clients, a.seconds, a.requests, a.texts_per_request,
                                           a.timeout)))
        s0, s1 = info_before.get("stats", {}), httpx.get(f"{url}/info", timeout=10).json().get("stats", {})
        batches = s1.get("batches", 0) - s0.get("batches", 0)
        served = s1.get("texts", 0) - s0.get("texts", 0) - 8
        result["micro_batches"] = batches
        result["mean_batch_texts"] = round(served / batches, 2) if batches else None
        result["largest_batch_texts"] = s1.get("batch_texts_max")
        if server:
            result["rss_mb_after"] = rss_mb(server.proc.pid)
            cpu1 = cpu_s(server.proc.pid)
            if cpu0 is not None and cpu1 is not None and result["requests_ok"]:
                result["server_cpu_ms_per_request"] = round(1000 * (cpu1 - cpu0) / result["requests_ok"], 2)
    finally:
        if server:
            result["shutdown_s"] = round(server.stop(), 2)
            result["server_exit"] = server.proc.returncode
    if a.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        lat = result["latency_ms"]
        print(f"{result['requests_ok']} requests ({result['texts_per_s']} texts/s, {result['requests_per_s']} req/s) "
              f"in {result['seconds']}s; errors: {result['errors']}")
        for kind, n in result["error_kinds"].items():
            print(f"  {n} x {kind}")
        print(f"latency ms: p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}")
        print(f"micro-batches: {result['micro_batches']}, mean {result['mean_batch_texts']} texts, "
              f"largest {result['largest_batch_texts']}")
        if server:
            print(f"server RSS: {result['rss_mb_before']:.0f} MB before, {result['rss_mb_after']:.0f} MB after; "
                  f"SIGTERM -> exit {result['server_exit']} in {result['shutdown_s']}s; "
                  f"server CPU {result.get('server_cpu_ms_per_request')} ms/request")
    return 1 if result["errors"] else 0


def soak_main(a) -> int:
    import httpx

    texts = nsmc_texts(a.data_dir)
    say = (lambda s: print(s, file=sys.stderr)) if a.json else print
    say(f"device: {machine()}")
    server, url = target(a, say)
    result: dict = {"url": url}
    try:
        limits = httpx.get(f"{url}/info", timeout=10).json()["limits"]
        big = min(a.max_texts_per_request, limits["max_texts"])
        httpx.post(f"{url}/predict", json={"inputs": texts[:big]}, timeout=60)  # warm-up
        pid = server.proc.pid if server else None
        cpu0 = cpu_s(pid) if pid else None
        say(f"soak: {a.clients} clients for {a.seconds:g}s (1, 4 and {big} texts per request, 10% malformed) ...")
        result.update(asyncio.run(soak(url, texts, a.clients, a.seconds, big, a.timeout, a.seed, pid)))
        if pid and cpu0 is not None and (cpu1 := cpu_s(pid)) is not None and result["requests_ok"]:
            result["server_cpu_ms_per_request"] = round(1000 * (cpu1 - cpu0) / result["requests_ok"], 2)
        health = httpx.get(f"{url}/health", timeout=10)
        result["health_after"] = health.status_code
        result["stats"] = httpx.get(f"{url}/info", timeout=10).json()["stats"]
    finally:
        if server:
            result["shutdown_s"] = round(server.stop(), 2)
    growth = (result.get("rss_mb") or {}).get("second_half_growth", 0.0)
    failed = bool(result.get("errors")) or result.get("health_after") != 200 or growth > a.max_rss_growth_mb
    result["passed"] = not failed
    if a.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print(f"{result['requests_ok']} requests in {result['seconds']}s ({result['requests_per_s']} req/s, "
              f"{result['texts_per_s']} texts/s); errors: {result['errors']}")
        for kind, n in result["error_kinds"].items():
            print(f"  {n} x {kind}")
        for kind, q in result["latency_ms"].items():
            print(f"  {kind:>12}: n {q['n']:>6}  p50 {q['p50']}  p90 {q['p90']}  p99 {q['p99']}  max {q['max']} ms")
        if "rss_mb" in result:
            r = result["rss_mb"]
            print(f"server RSS MB: start {r['start']}, peak {r['peak']}, end {r['end']}; second-half growth "
                  f"{r['second_half_growth']} (limit {a.max_rss_growth_mb:g})")
        print(f"micro-batches: {result['stats'].get('batches')}, largest {result['stats'].get('batch_texts_max')} "
              f"texts, busy rejections {result['stats'].get('busy_rejections')}, model errors "
              f"{result['stats'].get('model_errors')}" + (f"; SIGTERM took {result['shutdown_s']}s" if server else ""))
        if "server_cpu_ms_per_request" in result:
            print(f"server CPU {result['server_cpu_ms_per_request']} ms per request (closed loop: latency ~ clients / "
                  f"throughput once the server's cores are busy)")
        print("PASS" if not failed else "FAIL")
    return 1 if failed else 0


if __name__ == "__main__":
    run(main)
