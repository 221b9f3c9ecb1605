"""Test-only launcher: `bertclf serve` through the real CLI, with faults planted from outside the package.

    python tests/support/serve_launcher.py [--leak-bytes N] [--trim-route] [--gate FILE] [--kill-worker-on TEXT] -- serve DIR ...

It wraps `bertclf.serve.app.create_app` (called after the model is loaded and warmed up) so that:
  --leak-bytes N      every HTTP request keeps N bytes alive forever (a planted memory leak, for the test
                      that must catch one);
  --trim-route        GET /_trim runs gc.collect() and glibc's malloc_trim(0), so the RSS read right after it
                      counts memory still held, not free heap pages the allocator keeps for later;
  --gate FILE         the model worker blocks before each micro-batch until FILE exists (requests pile up in
                      the queue, or stay in flight, for as long as the test wants);
  --kill-worker-on T  a micro-batch holding the text T raises a BaseException, which the worker does not
                      survive (what a bug in the worker would do): /health must turn 503.
Everything else is the real command: flags, model loading, uvicorn, signals.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import sys
import time
from pathlib import Path


class WorkerKilled(BaseException):
    """Not an Exception: the micro-batcher's per-batch error handling does not catch it."""


def leaking(app, n_bytes: int):
    kept: list[bytes] = []

    async def middleware(scope, receive, send):
        if scope["type"] == "http":
            kept.append(b"\x01" * n_bytes)  # written, so the pages count in RSS
        await app(scope, receive, send)

    middleware.state = app.state  # serve() reaches the batcher through app.state
    return middleware


def trimming(app):
    libc = ctypes.CDLL("libc.so.6")

    async def middleware(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/_trim":
            gc.collect()
            libc.malloc_trim(0)
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await app(scope, receive, send)

    middleware.state = app.state
    return middleware


def wrap_logits(clf, gate: Path | None, kill_on: str | None) -> None:
    real = clf.logits

    def logits(texts, batch_size=64):
        if kill_on is not None and kill_on in texts:
            raise WorkerKilled(f"planted worker death on {kill_on!r}")
        while gate is not None and not gate.exists():
            time.sleep(0.005)
        return real(texts, batch_size=batch_size)

    clf.logits = logits


def main() -> int:
    argv = sys.argv[1:]
    cut = argv.index("--")
    p = argparse.ArgumentParser()
    p.add_argument("--leak-bytes", type=int, default=0)
    p.add_argument("--trim-route", action="store_true")
    p.add_argument("--gate", type=Path)
    p.add_argument("--kill-worker-on")
    a = p.parse_args(argv[:cut])

    import bertclf.serve.app as serve_module
    from bertclf.cli import main as cli_main

    create_app = serve_module.create_app

    def planted_create_app(clf, **kw):
        wrap_logits(clf, a.gate, a.kill_worker_on)
        app = create_app(clf, **kw)
        app = leaking(app, a.leak_bytes) if a.leak_bytes else app
        return trimming(app) if a.trim_route else app

    serve_module.create_app = planted_create_app
    return cli_main(argv[cut + 1:])


if __name__ == "__main__":
    sys.exit(main())
