"""Batch prediction on Ray Data: `bertclf predict DIR --input FILE --output OUT --engine ray --workers N`.

The driver reads the input with bertclf's own reader (same rows, same errors as the local predict) into
blocks in Ray's object store; `map_batches` runs N actors, each holding one Classifier (one GPU each when the
cluster has GPUs, else one CPU); the results come back in input order and are written by the local predict's
writer (predict_io.predict_to), so the records, the CSV columns and the atomic write are the same.

Joins the cluster named by RAY_ADDRESS, else starts a local one on 127.0.0.1 and stops it at the end.
"""
from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import sys
from typing import Iterable, Iterator

from bertclf.errors import UserError
from bertclf.files import check_writable
from bertclf.predict import Classifier
from bertclf.predict_io import iter_texts, predict_to

INSTALL_HINT = "--engine ray needs Ray; install it with: pip install 'bertclf[ray]'"
BLOCK_ROWS = 256  # rows per Ray block and per actor call: a few thousand rows still spread over every worker


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the "data" extra: pyarrow, pandas)
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return ray


class ClassifyBatch:
    """A Ray Data actor: loads the model once, then classifies batches of {row, text}. Each prediction goes back
    as the JSON of the dict Classifier.predict returns, so the driver writes exactly what the local predict does
    (json round-trips Python floats exactly)."""

    def __init__(self, model_dir: str, batch_size: int, precision: str = "auto", long_text: str | None = None,
                 stride: int | None = None):
        self.clf = Classifier.load(model_dir, precision=precision, long_text=long_text, stride=stride)
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        preds = self.clf.predict([str(t) for t in batch["text"]], self.batch_size)
        return {"row": batch["row"], "text": batch["text"],
                "pred": [json.dumps(p, ensure_ascii=False) for p in preds]}


class _OrderedPredictions:
    """Stands in for a Classifier inside predict_to: predict() hands back the next predictions of the Ray stream,
    which predict_to asks for right after drawing the same texts from `texts()`."""

    def __init__(self, clf: Classifier, batches: Iterable[dict]):
        self.labels, self.card = clf.labels, clf.card
        self._batches, self._pending = batches, collections.deque()

    def texts(self) -> Iterator[str]:
        expected = 0
        for batch in self._batches:
            for row, text, pred in zip(batch["row"], batch["text"], batch["pred"]):
                if int(row) != expected:  # preserve_order is what keeps rows in order; never write them shuffled
                    raise RuntimeError(f"Ray returned row {int(row)} where row {expected} was due")
                expected += 1
                self._pending.append(json.loads(pred))
                yield str(text)

    def predict(self, texts: list[str], batch_size: int = 64) -> list[dict]:
        return [self._pending.popleft() for _ in texts]


def _input_blocks(ray, texts: Iterable[str]) -> list:
    """The texts as Arrow tables of BLOCK_ROWS rows put in the object store: the driver holds only references."""
    import pyarrow as pa

    def put(start: int, chunk: list[str]):
        return ray.put(pa.table({"row": pa.array(range(start, start + len(chunk)), pa.int64()),
                                 "text": pa.array(chunk, pa.string())}))

    refs, chunk = [], []
    for t in texts:
        chunk.append(t)
        if len(chunk) == BLOCK_ROWS:
            refs.append(put(len(refs) * BLOCK_ROWS, chunk))
            chunk = []
    if chunk:
        refs.append(put(len(refs) * BLOCK_ROWS, chunk))
    return refs


def connect(ray, workers: int) -> bool:
    """Join RAY_ADDRESS's cluster, else start a local one; True when this call started it (and must stop it)."""
    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if os.environ.get("RAY_ADDRESS"):
        try:
            ray.init(address=os.environ["RAY_ADDRESS"], **{k: v for k, v in quiet.items() if k != "include_dashboard"})
        except ConnectionError as e:
            raise UserError(f"RAY_ADDRESS={os.environ['RAY_ADDRESS']}: cannot join the Ray cluster ({e}); "
                            f"check the address, set RAY_AUTH_MODE=token if the cluster uses token authentication, "
                            f"or unset RAY_ADDRESS for a local one") from None
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a local run sends nothing anywhere
    # one CPU per worker actor, at least the machine's cores (more would only oversubscribe them)
    # "local": a new instance, never a cluster some `ray start` left on this machine
    ray.init(address="local", num_cpus=max(workers, os.cpu_count() or 1), _node_ip_address="127.0.0.1", **quiet)
    return True


def predict_ray_to(model_dir: str, texts: list[str] | None = None, input_path: str | None = None,
                   output_path: str | None = None, text_col: str | None = None, batch_size: int = 64,
                   workers: int = 2, fmt: str | None = None, encoding: str = "utf-8",
                   columns: list[str] | None = None, precision: str = "auto", long_text: str | None = None,
                   stride: int | None = None) -> int:
    """Like predict_io.predict_to with a loaded Classifier, but classified by `workers` Ray actors; returns the
    number of rows written."""
    if workers < 1:
        raise UserError(f"--workers {workers}: need at least 1")
    ray = import_ray()
    if output_path:
        check_writable(output_path)
    clf = Classifier.load(model_dir, device="cpu", long_text=long_text, stride=stride)  # checks the directory, gives labels and card; no GPU taken
    card_col = (clf.card.get("data") or {}).get("text_col")
    source = iter(texts if texts is not None else iter_texts(input_path, text_col or card_col, fmt=fmt,
                                                                         encoding=encoding, columns=columns))
    first = list(itertools.islice(source, 1))  # a missing or bad file fails here, before Ray starts
    if not first:  # nothing to classify: the local writer makes the same empty output, no cluster needed
        return predict_to(clf, texts=[], output_path=output_path, batch_size=batch_size, progress=False)
    source = itertools.chain(first, source)
    started = connect(ray, workers)
    ctx = ray.data.DataContext.get_current()
    saved = ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start
    data_log = logging.getLogger("ray.data")
    saved_level = data_log.level
    try:
        ctx.execution_options.preserve_order = True  # blocks come back in input order, whichever actor ran them
        ctx.enable_progress_bars, ctx.print_on_execution_start = sys.stderr.isatty(), False
        data_log.setLevel(logging.ERROR)  # its INFO/WARNING lines would bury bertclf's
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        ds = ray.data.from_arrow_refs(_input_blocks(ray, source)).map_batches(
            ClassifyBatch, fn_constructor_args=(str(clf.path), batch_size, precision, long_text, stride), batch_size=BLOCK_ROWS,
            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers), num_gpus=gpus, num_cpus=1)
        results = _OrderedPredictions(clf, ds.iter_batches(batch_size=None, batch_format="numpy"))
        return predict_to(results, texts=results.texts(), output_path=output_path, batch_size=batch_size,
                          progress=False)
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start = saved
        data_log.setLevel(saved_level)
        if started:
            ray.shutdown()
