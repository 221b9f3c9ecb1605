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
  GET /          -> the demo page; POST /explain -> the words behind a prediction (both in bertclf/demo.py;
                    explanations run one at a time on their own thread, which only reads the model).

Requests are merged into micro-batches of up to --max-batch texts (waiting at most --max-wait-ms after the
oldest queued text) and run by one worker thread that owns the model; the event loop never runs the model.
A request with more texts than --max-batch is spread over several micro-batches.
"""
import asyncio
import collections
import json
import math
import os
import socket
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import numpy as np

from bertclf.errors import UserError

FUNCTIONS = ("softmax", "sigmoid", "none")


# ---------------------------------------------------------------- the micro-batcher

class _Job:
    """One request's texts; the worker fills `logits` row by row, possibly over several micro-batches."""

    __slots__ = ("texts", "logits", "next", "done", "future", "loop", "enqueued", "cancelled")

    def __init__(self, texts: list[str], n_labels: int, future: asyncio.Future, loop):
        self.texts, self.future, self.loop = texts, future, loop
        self.logits = np.zeros((len(texts), n_labels), dtype=np.float32)
        self.next = 0  # first text not yet handed to a micro-batch
        self.done = 0  # texts whose logits are filled in
        self.enqueued = time.monotonic()
        self.cancelled = False


class Busy(Exception):
    """The queue is full or the server is stopping: answer 503."""


class MicroBatcher:
    """Merges concurrent requests into micro-batches run by a single worker thread on one model."""

    def __init__(self, predict_logits, n_labels: int, max_batch: int = 64, max_wait_ms: float = 5.0,
                 max_queue: int = 4096):
        self.predict_logits, self.n_labels = predict_logits, n_labels
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000.0, max_queue
        self._pending: collections.deque[_Job] = collections.deque()
        self._queued = 0  # texts not yet handed to a micro-batch
        self._cond = threading.Condition()
        self._stopping = False
        self.error: str | None = None  # set if the worker thread died
        self.stats = {"requests": 0, "texts": 0, "batches": 0, "batch_texts_max": 0, "busy_rejections": 0,
                      "model_errors": 0}
        self._thread = threading.Thread(target=self._run, name="bertclf-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    async def submit(self, texts: list[str]) -> np.ndarray:
        """Logits (len(texts), n_labels), in order. Raises Busy when the queue is full or the worker stopped."""
        loop = asyncio.get_running_loop()
        job = _Job(texts, self.n_labels, loop.create_future(), loop)
        with self._cond:
            if self.error is not None or not self._thread.is_alive():
                raise Busy(f"the model worker has stopped ({self.error or 'not running'}); restart the server")
            if self._stopping:
                raise Busy("the server is shutting down")
            if self._queued and self._queued + len(texts) > self.max_queue:
                self.stats["busy_rejections"] += 1
                raise Busy(f"server busy: {self._queued} texts queued; retry shortly")
            self._pending.append(job)
            self._queued += len(texts)
            self.stats["requests"] += 1
            self.stats["texts"] += len(texts)
            self._cond.notify()
        try:
            return await job.future
        finally:
            job.cancelled = True  # if the client went away the worker skips what is left of this job

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the micro-batch in progress, fail what is still queued with Busy, and join the worker."""
        with self._cond:
            self._stopping = True
            left, self._pending = list(self._pending), collections.deque()
            self._queued = 0
            self._cond.notify_all()
        for job in left:
            self._resolve(job, Busy("the server is shutting down"))
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- worker side

    @staticmethod
    def _resolve(job: _Job, result) -> None:
        def done(fut=job.future):
            if fut.done():
                return
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)

        try:
            job.loop.call_soon_threadsafe(done)
        except RuntimeError:  # the event loop is closed already
            pass

    def _take(self) -> list[tuple[_Job, int, int]] | None:
        """Block until there is work; return (job, start, stop) slices totalling at most max_batch texts."""
        with self._cond:
            while True:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return None
                while self._pending and self._pending[0].cancelled:  # client gone before its turn
                    job = self._pending.popleft()
                    self._queued -= len(job.texts) - job.next
                if not self._pending:
                    continue
                deadline = self._pending[0].enqueued + self.max_wait
                while self._queued < self.max_batch and not self._stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._stopping:
                    return None
                taken, room = [], self.max_batch
                while self._pending and room:
                    job = self._pending[0]
                    k = min(room, len(job.texts) - job.next)
                    taken.append((job, job.next, job.next + k))
                    job.next += k
                    room -= k
                    self._queued -= k
                    if job.next == len(job.texts):
                        self._pending.popleft()
                if taken:
                    return taken

    def _logits(self, texts: list[str]) -> np.ndarray:
        logits = np.asarray(self.predict_logits(texts), dtype=np.float32)
        if logits.shape != (len(texts), self.n_labels):
            raise RuntimeError(f"model returned logits of shape {logits.shape} for {len(texts)} texts")
        return logits

    def _fill(self, job: _Job, a: int, b: int, logits: np.ndarray) -> None:
        job.logits[a:b] = logits
        job.done += b - a
        if job.done == len(job.texts):
            self._resolve(job, job.logits)

    def _run(self) -> None:
        taken: list[tuple[_Job, int, int]] = []
        try:
            while (taken := self._take()) is not None:
                texts = [t for job, a, b in taken for t in job.texts[a:b]]
                try:
                    logits = self._logits(texts)
                except Exception as e:
                    self.stats["model_errors"] += 1
                    if len(taken) == 1:
                        self._resolve(taken[0][0], RuntimeError(f"model error: {type(e).__name__}: {e}"))
                        continue
                    # one request's texts broke the micro-batch: rerun each request alone so only it fails
                    for job, a, b in taken:
                        try:
                            self._fill(job, a, b, self._logits(job.texts[a:b]))
                        except Exception as e1:
                            self._resolve(job, RuntimeError(f"model error: {type(e1).__name__}: {e1}"))
                    continue
                self.stats["batches"] += 1
                self.stats["batch_texts_max"] = max(self.stats["batch_texts_max"], len(texts))
                row = 0
                for job, a, b in taken:
                    self._fill(job, a, b, logits[row:row + b - a])
                    row += b - a
        except BaseException as e:  # a bug; fail everything rather than hang
            self.error = f"{type(e).__name__}: {e}"
            for job, _, _ in taken or []:  # the micro-batch it died on is in no queue: answer it here
                self._resolve(job, RuntimeError(f"model worker died: {self.error}"))
            self.stop(timeout=0)
            raise


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


class BodyLimit:
    """Pure ASGI middleware: 413 for bodies over max_bytes, by Content-Length before reading anything and by
    counting bytes as they stream in (chunked bodies). The body is buffered and replayed to the app."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def _reply(self, send, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = (f"request body is larger than {self.max_bytes} bytes (--max-body-bytes); "
                   "send fewer or shorter texts per request")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                n = int(length)
                if n < 0:
                    raise ValueError
            except ValueError:
                return await self._reply(send, 400, "bad Content-Length header")
            if n > self.max_bytes:
                return await self._reply(send, 413, too_big)
        chunks, total, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away mid-body; nobody to answer
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                return await self._reply(send, 413, too_big)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for http.disconnect as usual

        return await self.app(scope, replay, send)


def _validation_message(errors) -> str:
    parts = []
    for e in list(errors)[:3]:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        msg = str(e.get("msg", "invalid"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if e.get("type") == "json_invalid":
            ctx = (e.get("ctx") or {}).get("error")
            msg = f"body is not valid JSON ({ctx})" if ctx else "body is not valid JSON"
            loc = []
        elif e.get("type") == "missing":
            msg = "field required" if loc else 'the body is empty; send a JSON object such as {"inputs": "text"}'
        elif e.get("type") in ("model_attributes_type", "model_type", "dict_type"):
            msg = ("must be a JSON object" if loc else 'the body must be a JSON object such as {"inputs": "text"} '
                   "(sent with Content-Type: application/json)")
        where = ".".join(loc)
        parts.append(f"{where}: {msg}" if loc and not msg.startswith(where) else msg)
    return "; ".join(parts) or "invalid request"


def create_app(clf, *, max_batch: int = 64, max_wait_ms: float = 5.0, max_texts: int = 256,
               max_chars: int = 10000, max_body_bytes: int = 1 << 20, max_queue: int | None = None,
               model_dir: str | None = None):
    """The FastAPI app around a loaded Classifier (anything with .labels, .card, .backend and .logits)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, field_validator
    from pydantic.json_schema import WithJsonSchema
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from bertclf import __version__

    labels = list(clf.labels)
    n_labels = len(labels)
    default_fn = default_function(model_dir or getattr(clf, "path", None), n_labels)
    max_queue = max_queue or max(4 * max_texts, 16 * max_batch, 1024)
    batcher = MicroBatcher(lambda texts: clf.logits(texts, batch_size=max_batch), n_labels,
                           max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue)
    limits = {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_texts": max_texts, "max_chars": max_chars,
              "max_body_bytes": max_body_bytes, "max_queue": max_queue}

    # "\\S": a text of only whitespace is empty, as for predict and eval (bertclf.data.is_empty_text)
    text_schema = {"type": "string", "minLength": 1, "maxLength": max_chars, "pattern": "\\S"}
    inputs_schema = {
        "anyOf": [text_schema, {"type": "array", "items": text_schema, "minItems": 1, "maxItems": max_texts}],
        "title": "Inputs",
        "description": f"a text, or a list of 1 to {max_texts} texts; each 1 to {max_chars} characters",
    }

    class Parameters(BaseModel):
        model_config = ConfigDict(extra="forbid", title="TextClassificationParameters")
        top_k: Optional[Annotated[int, Field(strict=True, ge=1)]] = Field(
            None, description="return only the k best labels (default: every label)")
        function_to_apply: Optional[Literal["softmax", "sigmoid", "none"]] = Field(
            None, description=f"how logits become scores; 'none' gives raw logits (default: {default_fn})")

        @field_validator("top_k", mode="before")
        @classmethod
        def _integral_number(cls, v):
            # JSON Schema, and so the published spec, counts 2.0 as an integer: accept it. 1.5, "2", true: still 422.
            return int(v) if isinstance(v, float) and v.is_integer() else v

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", title="TextClassificationRequest")
        inputs: Annotated[Any, WithJsonSchema(inputs_schema)]
        parameters: Optional[Parameters] = None
        options: Optional[dict[str, Any]] = Field(
            None, description="accepted for compatibility with old Inference API clients, and ignored")

        @field_validator("inputs", mode="before")
        @classmethod
        def _check_inputs(cls, v):
            if isinstance(v, str):
                texts, where = [v], lambda i: "inputs"
            elif isinstance(v, list):
                if not v:
                    raise ValueError("inputs is an empty list; send at least one text")
                if len(v) > max_texts:
                    raise ValueError(f"inputs has {len(v)} texts; the limit is {max_texts} per request (--max-texts)")
                texts, where = v, lambda i: f"inputs[{i}]"
            else:
                raise ValueError(f"inputs must be a string or a list of strings, not {_json_type(v)}")
            for i, t in enumerate(texts):
                if not isinstance(t, str):
                    raise ValueError(f"{where(i)} must be a string, not {_json_type(t)}")
                if len(t) > max_chars:
                    raise ValueError(f"{where(i)} has {len(t)} characters; the limit is {max_chars} (--max-chars)")
                if not t.strip():
                    raise ValueError(f"{where(i)} is empty (or only whitespace); send some text to classify")
                try:
                    t.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError(f"{where(i)} is not valid Unicode (it holds a lone surrogate such as "
                                     "\\ud800)") from None
            return v

    class LabelScore(BaseModel):
        label: str
        score: float

    class ErrorBody(BaseModel):
        error: str

    class Health(BaseModel):
        status: Literal["ok"]
        queued_texts: int

    class Info(BaseModel):
        model_config = ConfigDict(protected_namespaces=())
        task: Literal["text-classification"]
        model: Optional[str]
        backend: str
        labels: list[str]
        default_function_to_apply: str
        limits: dict[str, Union[int, float]]
        card: dict[str, Any]
        stats: dict[str, int]
        bertclf_version: str

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            stop_demo()
            # uvicorn has waited for the requests in flight already (and drained the queue, see serve())
            await asyncio.get_running_loop().run_in_executor(None, lambda: batcher.stop(timeout=1.0))

    app = FastAPI(title="bertclf", version=__version__, lifespan=lifespan,
                  description="Text classification in the shape of the Hugging Face Inference API. "
                              f"Model: {model_dir or getattr(clf, 'path', None)}; labels: {', '.join(labels)}.")
    app.state.batcher = batcher

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        status = 400 if any(e.get("type") == "json_invalid" for e in errs) else 422
        return _error(status, _validation_message(errs))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 400 and "parsing the body" in detail:
            detail = "the body could not be parsed as JSON (too deeply nested or not UTF-8)"
        return _error(exc.status_code, detail, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):  # a bug; still answer in the contract's shape
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    errors = {400: {"model": ErrorBody, "description": "the body is not (valid) JSON"},
              413: {"model": ErrorBody, "description": "the body is larger than the server's limit"},
              422: {"model": ErrorBody, "description": "wrong shape, empty text, or over a limit"},
              503: {"model": ErrorBody, "description": "queue full or shutting down; retry"}}

    @app.post("/predict", response_model=list[list[LabelScore]], responses=errors,
              summary="classify one text or a list of texts",
              description="Hugging Face Inference API text-classification: one list of {label, score}, best "
                          "first, per text. A single string is answered as a list holding one list, as the "
                          "Inference API does.")
    async def predict(req: PredictRequest):
        texts = [req.inputs] if isinstance(req.inputs, str) else list(req.inputs)
        p = req.parameters or Parameters()
        try:
            logits = await batcher.submit(texts)
        except Busy as e:
            return _error(503, str(e), {"Retry-After": "1"})
        except RuntimeError as e:
            return _error(500, str(e))
        scores = apply_function(logits, p.function_to_apply or default_fn)
        return JSONResponse(ranked(scores, labels, p.top_k))

    @app.get("/health", response_model=Health, responses={503: {"model": ErrorBody}}, summary="liveness")
    async def health():
        if not batcher.alive:
            return _error(503, batcher.error or "the model worker is not running")
        return {"status": "ok", "queued_texts": batcher.queued}

    @app.get("/info", response_model=Info, summary="model, labels, backend, limits and counters")
    async def info():
        return {"task": "text-classification", "model": model_dir or getattr(clf, "path", None),
                "backend": getattr(clf, "backend", "torch"), "labels": labels,
                "default_function_to_apply": default_fn, "limits": limits, "card": dict(clf.card or {}),
                "stats": dict(batcher.stats), "bertclf_version": __version__}

    from bertclf.demo import add_demo_routes  # GET / (the demo page) and POST /explain

    stop_demo = add_demo_routes(app, clf, model_dir=model_dir or getattr(clf, "path", None), default_fn=default_fn,
                                max_chars=max_chars)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    return app


def _json_type(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, list):
        return "a list"
    return type(v).__name__


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
          precision: str = "auto") -> None:
    """Load the model, listen on host:port and serve until SIGINT/SIGTERM. Bad settings or a bad model
    directory raise UserError before anything listens."""
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

    from bertclf.models import check_model_dir

    check_model_dir(Path(model_dir))  # the cheap checks first, before torch is imported
    sock = _bind(host, port)
    try:
        from bertclf.predict import Classifier

        clf = Classifier.load(model_dir, precision=precision)
        _share_cores(clf)
        try:  # fail now, not on the first request, if the model cannot run
            clf.logits(["warm-up"], batch_size=1)
        except Exception as e:
            raise UserError(f"{model_dir}: the model failed on a test input ({type(e).__name__}: {e}); "
                            "re-train or re-export it") from None
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
    log(f"bertclf: serving {model_dir} ({clf.backend} {clf.precision}, labels: {', '.join(map(str, clf.labels))}) on "
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
