"""The micro-batcher behind `bertclf serve`: concurrent requests merged into micro-batches of up to max_batch
texts (waiting at most max_wait_ms after the oldest queued text), run by one worker thread that owns the model,
so the event loop never runs the model. A request with more texts than max_batch is spread over several
micro-batches.
"""
import asyncio
import collections
import threading
import time

import numpy as np

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
