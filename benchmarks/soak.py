"""Soak test for `bertclf serve`: many clients for a longer time, mixed request sizes and malformed requests.

    python benchmarks/soak.py MODEL_DIR                         # 64 clients, 30 s, a server on loopback
    python benchmarks/soak.py MODEL_DIR --clients 128 --seconds 300 --json
    python benchmarks/soak.py --url http://127.0.0.1:8000       # an already running server (no RSS numbers)

Each client loops until the time is up, sending (by a seeded draw) one text (60%), a list of 4 (20%), a list of
--max-texts-per-request (10%), or a malformed request (10%: broken JSON, empty text, wrong type, over the text
limit) that must get a 4xx with a JSON {"error"} body. Counted as errors: a 5xx, a transport error, a wrong
status or a malformed answer. The server's RSS is sampled every second; the report gives its start, peak and end,
and the growth over the second half of the run (a leak shows as steady growth once everything is warm).

Exit status 1 when there were errors or the second-half RSS growth is over --max-rss-growth-mb. The short
version of this runs in the test suite (tests/test_serve_fuzz.py::test_bounded_load).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import LocalServer, cpu_s, nsmc_texts, rss_mb  # noqa: E402

MALFORMED = [
    (b'{"inputs": ', 400),
    (b'{"inputs": ""}', 422),
    (b'{"inputs": 5}', 422),
    (b'{"inputs": ["a", null]}', 422),
    (b'{"inputs": "a", "parameters": {"top_k": 0}}', 422),
    (b'["not", "an", "object"]', 422),
]


def pct(sorted_ms: list[float], p: float) -> float | None:
    if not sorted_ms:
        return None
    return round(sorted_ms[min(len(sorted_ms) - 1, int(p / 100 * len(sorted_ms)))], 1)


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
    p.add_argument("--url", help="soak an already running server instead of starting one")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--max-texts-per-request", type=int, default=32, help="size of the largest requests")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-rss-growth-mb", type=float, default=50.0,
                   help="fail when the server's RSS grows more than this over the second half of the run")
    p.add_argument("--data-dir", help="folder holding NSMC's ratings_test.txt")
    p.add_argument("--max-batch", type=int, help="passed to bertclf serve")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")
    a = p.parse_args(argv)
    if not a.url and not a.model_dir:
        p.error("give a MODEL_DIR to serve, or --url of a running server")
    import httpx

    texts = nsmc_texts(a.data_dir)
    say = (lambda s: print(s, file=sys.stderr)) if a.json else print
    server = None
    if a.url:
        url = a.url.rstrip("/").removesuffix("/predict")
    else:
        server = LocalServer(a.model_dir, ["--max-batch", str(a.max_batch)] if a.max_batch else [])
        url = server.url
        say(server.line)
    result: dict = {"url": url}
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
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
    raise SystemExit(main())
