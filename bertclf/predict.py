"""Stage 5, predict: load a trained model directory and classify texts.

    from bertclf import Classifier
    clf = Classifier.load("runs/nsmc")
    clf.predict(["정말 재밌어요", "시간 아깝다"])
    # [{'label': 'positive', 'score': 0.98, 'probabilities': {'negative': 0.02, 'positive': 0.98}}, ...]

A multi-label model (trained with --multi-label) also returns 'labels': every label whose probability (sigmoid)
passes its threshold tuned on validation, best first.

A directory exported to ONNX (bertclf export) loads the same way and runs on onnxruntime.
precision="auto" (the default) runs torch in bf16 autocast where the device multiplies bf16 natively (AMX /
AVX-512 BF16 CPUs, bf16 GPUs), fp32 elsewhere; "fp32" or "bf16" force it (bertclf/precision.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bertclf.config import check_batch_size
from bertclf.errors import UserError
from bertclf.inference import predict_logits
from bertclf.long_text import check_long_text, encode_long, per_text
from bertclf.models import check_model_dir, load_tokenizer
from bertclf.rundir import read_card
from bertclf.task import task_from_card

BLOCK_ROWS = 4096  # texts scored as one block; predict streams files in chunks of this size


class Classifier:
    """A trained text classifier: tokenizer + model + label names."""

    def __init__(self, tokenizer, model, labels: list[str], max_length: int = 128, card: dict | None = None,
                 path: str | None = None, backend: str = "torch", autocast_dtype=None, long_text: str | None = None,
                 stride: int | None = None):
        self.tokenizer, self.model, self.labels = tokenizer, model, labels
        self.max_length, self.card, self.path, self.backend = max_length, card or {}, path, backend
        # texts over max_length (bertclf/long_text.py); default: as the model was trained (truncate or head-tail)
        self.long_text = long_text or (self.card.get("args") or {}).get("long_text") or "truncate"
        self.stride = check_long_text(self.long_text, stride, max_length, tokenizer)
        self.autocast_dtype = autocast_dtype  # torch backend: None = fp32
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.task = task_from_card(self.card, labels)  # single/multi-label, label values, thresholds
        self.multi_label = self.task.kind == "multi_label"

    @classmethod
    def load(cls, path: str, device: str | None = None, max_length: int | None = None,
             precision: str = "auto", long_text: str | None = None, stride: int | None = None) -> "Classifier":
        if long_text is not None or stride is not None:  # a bad flag fails before the model loads
            check_long_text(long_text or "truncate", stride, max_length or 512)
        p = check_model_dir(Path(path))
        card = read_card(p)
        config = json.loads((p / "config.json").read_text())
        id2label = config.get("id2label") or {}
        labels = [id2label.get(str(i), id2label.get(i, f"LABEL_{i}")) for i in range(len(id2label))]
        if not labels:
            raise UserError(f"{p}/config.json: no id2label; this is not a trained classifier")
        tokenizer = load_tokenizer(str(p))
        max_length = max_length or card.get("max_length") or 128
        dtype = None
        if (p / "model.onnx").is_file():
            from bertclf.onnx_model import OnnxClassifierModel

            if precision not in ("auto", "fp32", "bf16"):  # as bertclf.precision checks; torch not imported here
                raise UserError(f"--precision {precision}: must be one of auto, fp32, bf16")
            if precision == "bf16":
                raise UserError(f"--precision bf16: {p} is an ONNX export, which runs in the precision it was "
                                f"exported in; drop --precision or use the trained (torch) directory")
            model, backend = OnnxClassifierModel(p / "model.onnx", len(labels)), "onnx"
        else:
            import torch

            from bertclf.models import load_classifier
            from bertclf.precision import cast_for_cpu_inference, inference_dtype

            device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            dtype = inference_dtype(precision, device)
            model = load_classifier(str(p)).to(device).eval()
            if dtype is not None and device.type == "cpu":
                cast_for_cpu_inference(model, dtype)  # and every forward pass runs under autocast(dtype)
            backend = "torch"
        return cls(tokenizer, model, labels, max_length, card, str(p), backend, dtype, long_text, stride)

    @property
    def precision(self) -> str:
        """What the model computes in: fp32 or bf16 (torch autocast); int8 or fp32 for an ONNX export."""
        if self.backend == "onnx":
            return "int8" if (self.card.get("export") or {}).get("int8") else "fp32"
        from bertclf.precision import precision_name

        return precision_name(self.autocast_dtype)

    def logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self.logits_and_cut(texts, batch_size)[0]

    def logits_and_cut(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, int]:
        """(logits per text, how many texts were longer than max_length tokens), by self.long_text: window
        scores every chunk and averages each text's chunk logits."""
        check_batch_size(batch_size, "batch_size")
        texts = [t if isinstance(t, str) else str(t) for t in texts]
        out, cut = [np.zeros((0, len(self.labels)), dtype=np.float32)], 0
        # Length-sorted batches are formed within fixed blocks of the stream, so a text meets the same batch
        # neighbours (and the same bf16 rounding) whether eval scores a whole file or predict streams it.
        for start in range(0, len(texts), BLOCK_ROWS):
            enc = encode_long(self.tokenizer, texts[start:start + BLOCK_ROWS], self.max_length, self.long_text,
                              self.stride)
            if self.backend == "onnx":
                logits = self.model.predict_logits(enc.ids, self.pad_id, batch_size)
            else:
                logits = predict_logits(self.model, enc.ids, self.pad_id, batch_size,
                                        autocast_dtype=self.autocast_dtype)
            out.append(per_text(logits, enc))
            cut += enc.cut
        return np.concatenate(out), cut

    def predict_proba(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self.task.probs(self.logits(texts, batch_size))

    def predict(self, texts: str | list[str], batch_size: int = 64) -> list[dict] | dict:
        """Label, its probability, and every class's probability, per text, in input order (multi-label: also
        'labels', those over their thresholds, best first)."""
        single = isinstance(texts, str)
        probs = self.predict_proba([texts] if single else list(texts), batch_size)
        out = [{"label": self.labels[int(row.argmax())], "score": float(row.max()),
                "probabilities": {lab: float(p) for lab, p in zip(self.labels, row)}} for row in probs]
        if self.multi_label:
            for rec, row, chosen in zip(out, probs, self.task.decide(probs)):
                rec["labels"] = [self.labels[i] for i in np.argsort(-row, kind="stable") if chosen[i]]
        return out[0] if single else out
