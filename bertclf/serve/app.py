"""Stage 6, serve: an HTTP server in the shape of the Hugging Face Inference API, with micro-batching.

    bertclf serve runs/nsmc --port 8000
    curl -s localhost:8000/predict -H 'content-type: application/json' -d '{"inputs": "정말 재밌어요"}'
    # [[{"label": "positive", "score": 0.98}, {"label": "negative", "score": 0.02}]]

or, from Python, `huggingface_hub.InferenceClient(model="http://localhost:8000/predict").text_classification(...)`.

The contract (also in /openapi.json, and /docs in a browser):
  POST /predict  {"inputs": "text" | ["text", ...], "parameters": {"top_k": k, "function_to_apply": f}}
                 -> 200, one list of {"label", "score"} per text, best first, as a list of lists: a single
                    string gives [[...]] like the Inference API (huggingface_hub takes element 0).
                    top_k: default every label; function_to_apply: softmax | sigmoid | none (raw logits),
                    default as the transformers pipeline: softmax, sigmoid for multi-label or 1-label models.
                 -> 400 body is not JSON / 413 body over --max-body-bytes / 422 wrong shape, empty text,
                    over --max-texts or --max-chars / 503 queue full or shutting down; always {"error": "..."}.
  GET /health    -> 200 {"status": "ok", ...}; 503 once the model worker has died.
  GET /info      -> labels, backend, model card (bertclf.json), limits, counters.
  GET /          -> the demo page; POST /explain -> the words behind a prediction (both in bertclf/serve/demo.py;
                    explanations run one at a time on their own thread, which only reads the model).

Requests are merged into micro-batches of up to --max-batch texts (waiting at most --max-wait-ms after the
oldest queued text) and run by one worker thread that owns the model; the event loop never runs the model.
A request with more texts than --max-batch is spread over several micro-batches.
"""
import asyncio
import json
import math
import os
import socket
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np

from bertclf.errors import UserError
from bertclf.serve.batcher import Busy, MicroBatcher
from bertclf.serve.body_limit import BodyLimit
from bertclf.serve.schema import api_models, validation_message

__all__ = ["FUNCTIONS", "Busy", "BodyLimit", "MicroBatcher", "apply_function", "create_app", "default_function",
           "ranked", "serve"]

FUNCTIONS = ("softmax", "sigmoid", "none")


# ---------------------------------------------------------------- scores

def apply_function(logits: np.ndarray, function: str) -> np.ndarray:
    logits = logits.astype(np.float64)
    if function == "softmax":
        z = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
    if function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -500, 500)))
    return logits


def ranked(scores: np.ndarray, labels: list[str], top_k: int | None) -> list[list[dict]]:
    """Per row, [{"label", "score"}] best first (ties keep label order), cut to top_k."""
    k = len(labels) if top_k is None else min(top_k, len(labels))
    out = []
    for row in scores:
        order = np.argsort(-row, kind="stable")[:k]
        out.append([{"label": labels[i], "score": _finite(row[i])} for i in order])
    return out


def _finite(x) -> float:
    x = float(x)
    return x if math.isfinite(x) else (0.0 if math.isnan(x) else math.copysign(3.4e38, x))


def default_function(model_dir: str | None, n_labels: int) -> str:
    """What transformers' text-classification pipeline applies by default."""
    problem = None
    if model_dir:
        try:
            problem = json.loads((Path(model_dir) / "config.json").read_text()).get("problem_type")
        except (OSError, ValueError, AttributeError):
            pass
    return "sigmoid" if problem == "multi_label_classification" or n_labels == 1 else "softmax"


# ---------------------------------------------------------------- the ASGI app

def _error(status: int, message: str, headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(clf, *, max_batch: int = 64, max_wait_ms: float = 5.0, max_texts: int = 256,
               max_chars: int = 10000, max_body_bytes: int = 1 << 20, max_queue: int | None = None,
               model_dir: str | None = None):
    """The FastAPI app around a loaded Classifier (anything with .labels, .card, .backend and .logits)."""
    from fastapi import FastAPI

    from bertclf import __version__
    from bertclf.serve.demo import add_demo_routes  # GET / (the demo page) and POST /explain

    labels = list(clf.labels)
    model_dir = model_dir or getattr(clf, "path", None)
    default_fn = default_function(model_dir, len(labels))
    max_queue = max_queue or max(4 * max_texts, 16 * max_batch, 1024)
    batcher = MicroBatcher(lambda texts: clf.logits(texts, batch_size=max_batch), len(labels),
                           max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue)
    limits = {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_texts": max_texts, "max_chars": max_chars,
              "max_body_bytes": max_body_bytes, "max_queue": max_queue}
    models = api_models(max_texts=max_texts, max_chars=max_chars, default_fn=default_fn,
                        pairs=getattr(clf, "pair_col", None) is not None)

    app = FastAPI(title="bertclf", version=__version__, lifespan=_lifespan,
                  description="Text classification in the shape of the Hugging Face Inference API. "
                              f"Model: {model_dir}; labels: {', '.join(labels)}.")
    app.state.batcher = batcher
    _add_error_handlers(app)
    _add_api_routes(app, clf, batcher, models, model_dir=model_dir, default_fn=default_fn, limits=limits)
    app.state.stop_demo = add_demo_routes(app, clf, model_dir=model_dir, default_fn=default_fn, max_chars=max_chars)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    return app


@asynccontextmanager
async def _lifespan(app):
    batcher = app.state.batcher
    batcher.start()
    try:
        yield
    finally:
        app.state.stop_demo()
        # uvicorn has waited for the requests in flight already (and drained the queue, see serve())
        await asyncio.get_running_loop().run_in_executor(None, lambda: batcher.stop(timeout=1.0))


def _add_error_handlers(app) -> None:
    """Every error, FastAPI's own included, answered as {"error": "one line"}."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        status = 400 if any(e.get("type") == "json_invalid" for e in errs) else 422
        return _error(status, validation_message(errs))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 400 and "parsing the body" in detail:
            detail = "the body could not be parsed as JSON (too deeply nested or not UTF-8)"
        return _error(exc.status_code, detail, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):  # a bug; still answer in the contract's shape
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")


def _add_api_routes(app, clf, batcher: MicroBatcher, models, *, model_dir: str | None, default_fn: str,
                    limits: dict) -> None:
    """POST /predict, GET /health and GET /info."""
    from fastapi.responses import JSONResponse

    from bertclf import __version__

    labels = list(clf.labels)
    PredictRequest, Parameters, ErrorBody = models.PredictRequest, models.Parameters, models.ErrorBody
    errors = {400: {"model": ErrorBody, "description": "the body is not (valid) JSON"},
              413: {"model": ErrorBody, "description": "the body is larger than the server's limit"},
              422: {"model": ErrorBody, "description": "wrong shape, empty text, or over a limit"},
              503: {"model": ErrorBody, "description": "queue full or shutting down; retry"}}

    @app.post("/predict", response_model=list[list[models.LabelScore]], responses=errors,
              summary="classify one text or a list of texts",
              description="Hugging Face Inference API text-classification: one list of {label, score}, best "
                          "first, per text. A single string is answered as a list holding one list, as the "
                          "Inference API does.")
    async def predict(req: PredictRequest):
        texts = [req.inputs] if isinstance(req.inputs, (str, dict)) else list(req.inputs)
        texts = [(t["text"], t["text_pair"]) if isinstance(t, dict) else t for t in texts]  # Classifier's pair form
        p = req.parameters or Parameters()
        try:
            logits = await batcher.submit(texts)
        except Busy as e:
            return _error(503, str(e), {"Retry-After": "1"})
        except RuntimeError as e:
            return _error(500, str(e))
        scores = apply_function(logits, p.function_to_apply or default_fn)
        return JSONResponse(ranked(scores, labels, p.top_k))

    @app.get("/health", response_model=models.Health, responses={503: {"model": ErrorBody}}, summary="liveness")
    async def health():
        if not batcher.alive:
            return _error(503, batcher.error or "the model worker is not running")
        return {"status": "ok", "queued_texts": batcher.queued}

    @app.get("/info", response_model=models.Info, summary="model, labels, backend, limits and counters")
    async def info():
        return {"task": "text-classification", "model": model_dir,
                "backend": getattr(clf, "backend", "torch"), "labels": labels,
                "default_function_to_apply": default_fn, "limits": limits, "card": dict(clf.card or {}),
                "stats": dict(batcher.stats), "bertclf_version": __version__}



# ---------------------------------------------------------------- the command

def _share_cores(clf) -> None:
    """Leave a core to the HTTP event loop: torch's intra-op threads on every core would fight it for CPU
    (and spin). OMP_NUM_THREADS, if set, wins."""
    if getattr(clf, "backend", None) != "torch" or os.environ.get("OMP_NUM_THREADS"):
        return
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, min(torch.get_num_threads(), cores - 1)))


def _draining_server(config, batcher: MicroBatcher):
    """A uvicorn.Server that, on SIGTERM/SIGINT and before uvicorn closes the listener and waits for the
    requests in flight, answers the queued requests 503 (Retry-After) at once: only the micro-batch in
    progress is finished."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets=None):
            await asyncio.get_running_loop().run_in_executor(None, lambda: batcher.stop(timeout=0))
            await super().shutdown(sockets)

    return DrainingServer(config)


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port but not listening yet: a taken port fails now, before the model loads."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"serve: cannot resolve --host {host!r} ({e.strerror}); use an address such as 127.0.0.1")
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        sock.close()
        hint = "pick another --port" if e.errno in (98, 48) else "check --host and --port"
        raise UserError(f"serve: cannot listen on {host}:{port}: {e.strerror or e}; {hint}") from None
    sock.set_inheritable(True)
    return sock


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 64, max_wait_ms: float = 5.0,
          max_texts: int = 256, max_chars: int = 10000, max_body_bytes: int = 1 << 20, log=None,
          precision: str = "auto", long_text: str | None = None, stride: int | None = None,
          compile: str = "auto") -> None:
    """Load the model, listen on host:port and serve until SIGINT/SIGTERM. Bad settings or a bad model
    directory raise UserError before anything listens. long_text / stride: texts over the model's max_length
    (bertclf/data/long_text.py; window scores a text's chunks in one call and averages their logits)."""
    log = log or (lambda s: print(s, flush=True))
    for name, v, lo in (("--max-batch", max_batch, 1), ("--max-texts", max_texts, 1), ("--max-chars", max_chars, 1),
                        ("--max-body-bytes", max_body_bytes, 64)):
        if v < lo:
            raise UserError(f"serve: {name} must be at least {lo}, got {v}")
    if not (max_wait_ms >= 0 and math.isfinite(max_wait_ms)):
        raise UserError(f"serve: --max-wait-ms must be 0 or more, got {max_wait_ms}")
    if not 0 <= port <= 65535:
        raise UserError(f"serve: --port must be between 0 and 65535, got {port}")
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise UserError(f"serve needs FastAPI and uvicorn ({e.name} is missing); pip install 'bertclf[serve]'") \
            from None

    from bertclf.models.resolve import check_model_dir

    check_model_dir(Path(model_dir))  # the cheap checks first, before torch is imported
    sock = _bind(host, port)
    try:
        from bertclf.inference.classifier import Classifier

        clf = Classifier.load(model_dir, precision=precision, long_text=long_text, stride=stride, compile=compile)
        _share_cores(clf)
        compiled, clf.compiled = clf.compiled, None
        try:  # fail now, not on the first request, if the model cannot run
            # eagerly: the compiled forward runs in the batcher's thread only (CUDA graph trees are per thread,
            # pytorch #123177), each shape compiled by its first micro-batch
            clf.logits([("warm-up", "warm-up") if clf.pair_col else "warm-up"], batch_size=1)
        except Exception as e:
            raise UserError(f"{model_dir}: the model failed on a test input ({type(e).__name__}: {e}); "
                            "re-train or re-export it") from None
        clf.compiled = compiled
        app = create_app(clf, max_batch=max_batch, max_wait_ms=max_wait_ms, max_texts=max_texts,
                         max_chars=max_chars, max_body_bytes=max_body_bytes, model_dir=str(model_dir))
        try:
            sock.listen(2048)
        except OSError as e:
            raise UserError(f"serve: cannot listen on {host}:{port}: {e.strerror or e}; pick another --port") \
                from None
    except BaseException:
        sock.close()
        raise
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    log(f"bertclf: serving {model_dir} ({clf.backend} {clf.precision}{', compiled' if clf.compiled else ''}, labels: {', '.join(map(str, clf.labels))}) on "
        f"http://{shown}:{bound_port} - demo page at /, POST /predict /explain, GET /health /info /docs")
    config = uvicorn.Config(app, log_level=os.environ.get("BERTCLF_LOG_LEVEL", "warning"), access_log=False,
                            timeout_graceful_shutdown=10, lifespan="on")
    server = _draining_server(config, app.state.batcher)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        raise UserError(f"serve: the server did not start on {host}:{port}; see the messages above")
