"""Run an exported classifier (model.onnx, written by `bertclf export --onnx`) on onnxruntime's CPU provider.

Same batching as the torch path (bertclf/models/forward.py): length-sorted batches padded to their own longest row,
results returned in input order. One intra-op thread per physical core (hyper-threads slow GEMM-bound graphs
down), one inter-op thread, every graph optimization on.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bertclf.errors import UserError

_ORT_INT = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UserError("onnxruntime is not installed; install it with: pip install 'bertclf[onnx]'") from None
    return onnxruntime


def physical_cores() -> int:
    """Physical cores this process may run on (BERTCLF_THREADS overrides); at least 1."""
    env = os.environ.get("BERTCLF_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or 1
    cores = set()
    try:
        phys = core = None
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    phys = val.strip()
                elif key == "core id":
                    core = val.strip()
                elif not key:  # end of one processor's block
                    if core is not None:
                        cores.add((phys, core))
                    phys = core = None
        if core is not None:
            cores.add((phys, core))
    except OSError:
        pass
    n = len(cores) or allowed
    return max(1, min(n, allowed))


def session_options(threads: int | None = None, spin: bool = True):
    """spin=False: idle intra-op threads sleep instead of spinning, so they leave the cores to other work in
    the process (measured: torch's batch-1 latency next to a spinning session 100 ms, next to a sleeping one
    34 ms); onnxruntime's own speed alone hardly changes."""
    ort = import_onnxruntime()
    so = ort.SessionOptions()
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads or physical_cores()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only: no "removing initializer" chatter
    return so


class OnnxClassifierModel:
    """The ONNX counterpart of a torch sequence classifier: predict_logits(ids, pad_id, batch_size)."""

    def __init__(self, path: str | os.PathLike, num_labels: int, threads: int | None = None, spin: bool = True):
        ort = import_onnxruntime()
        self.path, self.num_labels = Path(path), num_labels
        try:
            self.session = ort.InferenceSession(str(self.path), session_options(threads, spin),
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UserError(f"{self.path}: cannot load the ONNX model ({first}); re-export it with "
                            f"'bertclf export DIR --onnx --out DIR2'") from None
        self.inputs = {i.name: _ORT_INT.get(i.type, np.int64) for i in self.session.get_inputs()}
        if "input_ids" not in self.inputs:
            raise UserError(f"{self.path}: the ONNX graph has no input_ids input (it has "
                            f"{', '.join(self.inputs)}); it was not exported by bertclf")
        outputs = [o.name for o in self.session.get_outputs()]
        self.output = "logits" if "logits" in outputs else outputs[0]

    def feed(self, input_ids: np.ndarray, attention_mask: np.ndarray,
             token_type_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
        feed = {"input_ids": input_ids.astype(self.inputs["input_ids"], copy=False)}
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = attention_mask.astype(self.inputs["attention_mask"], copy=False)
        if token_type_ids is not None and "token_type_ids" not in self.inputs:
            raise UserError(f"{self.path}: the graph has no token_type_ids input, which this sentence-pair model "
                            f"needs; re-export it with 'bertclf export DIR --onnx --out DIR2'")
        if "token_type_ids" in self.inputs:
            types = np.zeros(input_ids.shape) if token_type_ids is None else token_type_ids
            feed["token_type_ids"] = types.astype(self.inputs["token_type_ids"], copy=False)
        return feed

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray,
            token_type_ids: np.ndarray | None = None) -> np.ndarray:
        """Logits of one padded batch."""
        return self.session.run([self.output], self.feed(input_ids, attention_mask, token_type_ids))[0]

    def predict_logits(self, ids: list[np.ndarray], pad_id: int, batch_size: int = 64, progress=None,
                       types: list[np.ndarray] | None = None) -> np.ndarray:
        """Logits (n, num_labels) as float32, in the order of `ids` (types: sentence pairs' token type ids)."""
        from bertclf.data.batches import collate, length_sorted_batches
        from bertclf.data.tokens import lengths

        out = np.zeros((len(ids), self.num_labels), dtype=np.float32)
        for rows in length_sorted_batches(lengths(ids), max(1, batch_size)):
            batch = collate(ids, rows, pad_id, multiple=1, types=types)  # CPU GEMMs gain nothing from multiple-of-8
            logits = self.run(batch["input_ids"].numpy(), batch["attention_mask"].numpy(),
                              batch["token_type_ids"].numpy() if types is not None else None)
            if logits.ndim != 2 or logits.shape[1] != self.num_labels:
                raise UserError(f"{self.path}: the graph gives logits of shape {tuple(logits.shape)} but config.json "
                                f"has {self.num_labels} labels; re-export the model directory")
            out[rows] = logits
            if progress is not None:
                progress(len(rows))
        return out
