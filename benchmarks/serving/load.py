"""Load test for `bertclf serve`: N concurrent clients post NSMC test reviews for a bounded time.

    python benchmarks/load.py MODEL_DIR                      # starts a server on loopback, 16 clients, 10 s
    python benchmarks/load.py MODEL_DIR --clients 32 --texts-per-request 4 --max-batch 32
    python benchmarks/load.py --url http://127.0.0.1:8000    # an already running server (no RSS numbers)

Reports throughput (requests/s, texts/s), p50/p90/p99 latency, errors (0 expected), the server's micro-batch
counters from /info, and, for a server it started, its RSS before and after the load and how long SIGTERM took.
Texts: the `document` column of ratings_test.txt, found as bertclf finds NSMC (--data-dir, $BERTCLF_DATA_DIR,
the cache, ../shared/data/nsmc).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def nsmc_texts(data_dir: str | None, limit: int = 50000) -> list[str]:
    """The first `limit` non-empty reviews of ratings_test.txt, found and read as bertclf finds and reads it."""
    sys.path.insert(0, str(REPO))
    from bertclf.data.dataset import NSMC_TEXT_COL, nsmc_path
    from bertclf.errors import UserError
    from bertclf.io.rows import iter_rows

    try:
        path = nsmc_path("test", data_dir, download=False)
    except UserError as e:
        sys.exit(f"load.py: {e}")
    texts = []
    for _n, row in iter_rows(path, [NSMC_TEXT_COL]):
        if row[NSMC_TEXT_COL].strip():
            texts.append(row[NSMC_TEXT_COL])
        if len(texts) >= limit:
            break
    return texts


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cpu_s(pid: int) -> float | None:
    """user + system CPU seconds the process has used so far."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class LocalServer:
    def __init__(self, model_dir: str, extra: list[str]):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen([sys.executable, "-m", "bertclf", "serve", model_dir, "--port", "0", *extra],
                                     cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
        self.line = self.proc.stdout.readline().strip()  # the start line, or "" if it died
        m = re.search(r"on (http://\S+:\d+)", self.line)
        if not m:
            self.proc.wait()
            sys.exit(f"load.py: the server did not start (exit {self.proc.returncode})")
        self.url = m.group(1)
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # keep the pipe drained

    def stop(self) -> float:
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return time.perf_counter() - t0


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

    lat = sorted(latencies)

    def pct(p):
        return round(1000 * lat[min(len(lat) - 1, int(p / 100 * len(lat)))], 1) if lat else None

    return {"clients": clients, "texts_per_request": per_request, "seconds": round(wall, 2),
            "requests_ok": len(lat), "errors": sum(errors.values()), "error_kinds": errors,
            "requests_per_s": round(len(lat) / wall, 1), "texts_per_s": round(len(lat) * per_request / wall, 1),
            "latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": pct(100),
                           "mean": round(1000 * sum(lat) / len(lat), 1) if lat else None}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", nargs="?", help="model directory to serve (not needed with --url)")
    p.add_argument("--url", help="load an already running server instead of starting one")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0, help="how long to send requests")
    p.add_argument("--requests", type=int, default=100000, help="stop after this many requests")
    p.add_argument("--texts-per-request", type=int, default=1)
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    p.add_argument("--data-dir", help="folder holding NSMC's ratings_test.txt")
    p.add_argument("--max-batch", type=int, help="passed to bertclf serve")
    p.add_argument("--max-wait-ms", type=float, help="passed to bertclf serve")
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
        extra = []
        if a.max_batch:
            extra += ["--max-batch", str(a.max_batch)]
        if a.max_wait_ms is not None:
            extra += ["--max-wait-ms", str(a.max_wait_ms)]
        t0 = time.perf_counter()
        server = LocalServer(a.model_dir, extra)
        url = server.url
        say(f"{server.line}  (started in {time.perf_counter() - t0:.1f}s)")
    result = {"url": url, "texts_available": len(texts)}
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
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


if __name__ == "__main__":
    raise SystemExit(main())
