"""Batch prediction on Ray Data: `bertclf predict DIR --input FILE --output OUT --engine ray --workers N`.

The driver reads the input with bertclf's own reader (same rows, same errors as the local predict) into
blocks in Ray's object store; `map_batches` runs N actors, each holding one Classifier (one GPU each when the
cluster has GPUs, else one CPU). The rows are the local predict's (predict_io.select_rows: the same row
numbers, the same empty texts skipped and reported), and the results, back in input order, go through its
writer (predict_io.write_records), so the records, the CSV columns and the atomic write are the same.

Joins the cluster named by RAY_ADDRESS, else starts a local one on 127.0.0.1 and stops it at the end.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import sys
import threading
from typing import Iterable, Iterator

from bertclf.data.batches import check_batch_size
from bertclf.errors import UserError
from bertclf.inference.classifier import Classifier
from bertclf.inference.records import check_output, select_rows, write_records

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
    """A Ray Data actor: loads the model once, then classifies batches of {row, text} (a pair model's: {row, text,
    text_pair}). Each prediction goes back
    as the JSON of the dict Classifier.predict returns, so the driver writes exactly what the local predict does
    (json round-trips Python floats exactly)."""

    def __init__(self, model_dir: str, batch_size: int, precision: str = "auto", long_text: str | None = None,
                 stride: int | None = None):
        self.clf = Classifier.load(model_dir, precision=precision, long_text=long_text, stride=stride)
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        texts = [str(t) for t in batch["text"]]
        if "text_pair" in batch:
            texts = list(zip(texts, (str(t) for t in batch["text_pair"])))
        preds = self.clf.predict(texts, self.batch_size)
        return {**batch, "pred": [json.dumps(p, ensure_ascii=False) for p in preds]}


def _input_blocks(ray, rows: Iterable[tuple[int, str]]) -> tuple[list, int]:
    """(references, rows put): the (row, text) pairs as Arrow tables of BLOCK_ROWS rows in the object store, so
    the driver holds only references. Each text keeps its input row number, which comes back with its
    prediction."""
    import pyarrow as pa

    rows, refs, n = iter(rows), [], 0
    while chunk := list(itertools.islice(rows, BLOCK_ROWS)):
        pairs = isinstance(chunk[0][1], tuple)  # a pair model's rows: (row, (text, text_pair))
        columns = {"row": pa.array([row for row, _ in chunk], pa.int64())}
        if pairs:
            columns |= {"text": pa.array([t[0] for _, t in chunk], pa.string()),
                        "text_pair": pa.array([t[1] for _, t in chunk], pa.string())}
        else:
            columns["text"] = pa.array([text for _, text in chunk], pa.string())
        refs.append(ray.put(pa.table(columns)))
        n += len(chunk)
    return refs, n


def _in_order(batches: Iterable[dict], sent: int) -> Iterator[tuple[int, str, dict]]:
    """(row, text, prediction) from the actors' batches, checked to be every row sent, in input order."""
    last, n = -1, 0
    for batch in batches:
        texts = [str(t) for t in batch["text"]]
        if "text_pair" in batch:
            texts = list(zip(texts, (str(t) for t in batch["text_pair"])))
        for row, text, pred in zip(batch["row"], texts, batch["pred"]):
            if int(row) <= last:  # preserve_order is what keeps rows in order; never write them shuffled
                raise RuntimeError(f"Ray returned row {int(row)} after row {last}")
            last, n = int(row), n + 1
            yield last, text, json.loads(pred)
    if n != sent:  # raised inside the writer, so the output file is not written
        raise RuntimeError(f"Ray returned {n} of the {sent} rows sent")


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
                   workers: int = 2, fmt: str | None = None, encoding: str | None = None,
                   columns: list[str] | None = None, precision: str = "auto", long_text: str | None = None,
                   stride: int | None = None, log=None, text_pair_col: str | None = None) -> int:
    """predict_io.predict_to's records (the same rows, skipped texts and writer), classified by `workers` Ray
    actors; returns the number of rows written."""
    if workers < 1:
        raise UserError(f"--workers {workers}: need at least 1")
    ray = import_ray()
    check_batch_size(batch_size)
    check_output(output_path, input_path)
    # checks the directory, gives labels, card and the CSV columns; no GPU taken
    clf = Classifier.load(model_dir, device="cpu", long_text=long_text, stride=stride)
    if texts is not None:
        clf.split_inputs(texts)  # a pair for a single-text model, or the other way round: one line, before Ray
    if text_pair_col and clf.pair_col is None:
        raise UserError(f"--text-pair-col {text_pair_col}: {clf.path} reads single texts (trained without "
                        f"--text-pair-col); drop the flag or use a model trained on pairs")
    rows = select_rows(clf.card, texts, input_path, text_col, None, fmt, encoding, columns, text_pair_col=text_pair_col)
    source = iter(rows)
    first = list(itertools.islice(source, 1))  # a missing or bad file fails here, before Ray starts
    if not first:  # nothing to classify: the same (empty) output, no cluster needed
        written = write_records(clf, [], output_path)
        rows.report(log)
        return written
    handlers = signal_handlers()  # ray.init installs its own SIGTERM handler (sys.exit) in the calling process
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
        blocks, sent = _input_blocks(ray, itertools.chain(first, source))
        ds = ray.data.from_arrow_refs(blocks).map_batches(
            ClassifyBatch, fn_constructor_args=(str(clf.path), batch_size, precision, long_text, stride),
            batch_size=BLOCK_ROWS, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
            num_gpus=gpus, num_cpus=1)
        written = write_records(clf, _in_order(ds.iter_batches(batch_size=None, batch_format="numpy"), sent),
                                output_path)
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start = saved
        data_log.setLevel(saved_level)
        if started:
            ray.shutdown()
        restore_signal_handlers(handlers)  # a caller of this function keeps its own, as with the settings above
    rows.report(log)
    return written


def signal_handlers() -> dict:
    """SIGTERM's and SIGINT's Python handlers now (none off the main thread, where they cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: h for s in (signal.SIGTERM, signal.SIGINT) if (h := signal.getsignal(s)) is not None}


def restore_signal_handlers(handlers: dict) -> None:
    for s, h in handlers.items():
        signal.signal(s, h)
