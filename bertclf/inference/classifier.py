"""Stage 5, predict: load a trained model directory and classify texts.

    from bertclf import Classifier
    clf = Classifier.load("runs/nsmc")
    clf.predict(["정말 재밌어요", "시간 아깝다"])
    # [{'label': 'positive', 'score': 0.98, 'probabilities': {'negative': 0.02, 'positive': 0.98}}, ...]

A multi-label model (trained with --multi-label) also returns 'labels': every label whose probability (sigmoid)
passes its threshold tuned on validation, best first.

A sentence-pair model (trained with --text-pair-col) reads pairs: each input is a tuple (text, text_pair) or a
dict {"text": ..., "text_pair": ...} (the Inference API's form); clf.predict(("전제", "가설")) or a list of them.

A directory exported to ONNX (bertclf export) loads the same way and runs on onnxruntime.

A model trained with an n-gram partner (bertclf/models/ngram.py; `bertclf train --ngram auto`, the default, when it was
kept) scores texts by the blend: logits() are the blend's, in the task's link space, so everything built on them
(probabilities, eval, predict, serve) uses it. `Classifier.load(DIR, ngram=False)` gives the encoder alone.

precision="auto" (the default) runs torch in bf16 autocast where the device multiplies bf16 natively (AMX /
AVX-512 BF16 CPUs, bf16 GPUs), fp32 elsewhere; "fp32" or "bf16" force it (bertclf/models/precision.py).

compile="auto" (the default) runs the torch model through torch.compile on CUDA (CUDA graphs), each batch padded
to a few static shapes (bertclf/inference/compiled.py); "on" compiles on a CPU too, "off" never.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bertclf.models import ngram as NG
from bertclf.data.batches import SCORING_BLOCK, check_batch_size
from bertclf.errors import UserError
from bertclf.models.forward import predict_logits
from bertclf.data.long_text import check_long_text, encode_long, per_text
from bertclf.models.resolve import check_model_dir, load_tokenizer
from bertclf.rundir.layout import read_card
from bertclf.data.task import task_from_card

BLOCK_ROWS = SCORING_BLOCK  # texts scored as one block (data.batches.SCORING_BLOCK)


class Classifier:
    """A trained text classifier: tokenizer + model + label names."""

    def __init__(self, tokenizer, model, labels: list[str], max_length: int = 128, card: dict | None = None,
                 path: str | None = None, backend: str = "torch", autocast_dtype=None, long_text: str | None = None,
                 stride: int | None = None, partner=None):
        self.tokenizer, self.model, self.labels = tokenizer, model, labels
        self.max_length, self.card, self.path, self.backend = max_length, card or {}, path, backend
        # texts over max_length (bertclf/data/long_text.py); default: as the model was trained (truncate or head-tail)
        self.long_text = long_text or (self.card.get("args") or {}).get("long_text") or "truncate"
        self.stride = check_long_text(self.long_text, stride, max_length, tokenizer)
        self.autocast_dtype = autocast_dtype  # torch backend: None = fp32
        self.compiled = None  # the compiled forward (bertclf/inference/compiled.py), or None: eager
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.task = task_from_card(self.card, labels)  # single/multi-label, label values, thresholds
        self.pair_col = (self.card.get("data") or {}).get("text_pair_col")  # a sentence-pair model's, else None
        self.multi_label = self.task.kind == "multi_label"
        # the n-gram partner (bertclf.models.ngram.NgramPartner) blended at the card's weight, or None: the encoder alone
        self.partner, self.ngram = partner, self.card.get("ngram") or None
        self.ngram_weight = float(self.ngram["weight"]) if partner is not None else None
        calibration = self.card.get("calibration") or {}
        self.blend_temperature = (calibration.get("temperature") if partner is not None
                                  and calibration.get("applied_to") == "blend" else None)
        if partner is None and self.ngram and self.ngram.get("kept"):  # the encoder alone: its own thresholds
            self.task = NG.component_task(self.task, "encoder", self.ngram)

    @classmethod
    def load(cls, path: str, device: str | None = None, max_length: int | None = None,
             precision: str = "auto", long_text: str | None = None, stride: int | None = None,
             ngram: bool = True, compile: str = "auto") -> "Classifier":
        """ngram=False: the encoder alone, also when the model was trained with an n-gram partner.
        compile: auto | on | off (auto: on for CUDA)."""
        if long_text is not None or stride is not None:  # a bad flag fails before the model loads
            check_long_text(long_text or "truncate", stride, max_length or 512)
        if compile not in ("auto", "on", "off"):
            raise UserError(f"--compile: must be auto, on or off, got {compile!r}")
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
            from bertclf.inference.onnx_model import OnnxClassifierModel

            if precision not in ("auto", "fp32", "bf16"):  # as bertclf.models.precision checks; torch not imported here
                raise UserError(f"--precision {precision}: must be one of auto, fp32, bf16")
            if precision == "bf16":
                raise UserError(f"--precision bf16: {p} is an ONNX export, which runs in the precision it was "
                                f"exported in; drop --precision or use the trained (torch) directory")
            model, backend = OnnxClassifierModel(p / "model.onnx", len(labels)), "onnx"
        else:
            import torch

            from bertclf.models.resolve import load_classifier
            from bertclf.models.precision import cast_for_cpu_inference, inference_dtype

            device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            dtype = inference_dtype(precision, device)
            model = load_classifier(str(p)).to(device).eval()
            if dtype is not None and device.type == "cpu":
                cast_for_cpu_inference(model, dtype)  # and every forward pass runs under autocast(dtype)
            backend = "torch"
        # bertclf export copies the partner's files beside model.onnx; an export made before that has none
        partner = NG.load_for(p, card, required=backend == "torch") if ngram else None
        clf = cls(tokenizer, model, labels, max_length, card, str(p), backend, dtype, long_text, stride, partner)
        if backend == "torch" or compile == "on":
            from bertclf.inference.compiled import compiled_inference

            clf.compiled = compiled_inference(model, clf.max_length, device, compile, backend)
        return clf

    @property
    def precision(self) -> str:
        """What the model computes in: fp32 or bf16 (torch autocast); int8 or fp32 for an ONNX export."""
        if self.backend == "onnx":
            return "int8" if (self.card.get("export") or {}).get("int8") else "fp32"
        from bertclf.models.precision import precision_name

        return precision_name(self.autocast_dtype)

    def logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self.logits_and_cut(texts, batch_size)[0]

    def logits_and_cut(self, texts: list[str], batch_size: int = 64, parts: dict | None = None
                       ) -> tuple[np.ndarray, int]:
        """(logits per text, how many texts were longer than max_length tokens), by self.long_text: window
        scores every chunk and averages each text's chunk logits (the n-gram partner reads the whole text).
        With a partner the logits are the blend's; `parts`, a dict, then receives each side's logits alone:
        "encoder" (its raw logits) and "ngram" (its probabilities in the task's link space)."""
        check_batch_size(batch_size, "batch_size")
        texts, pairs = self.split_inputs(texts)
        out, cut = [np.zeros((0, len(self.labels)), dtype=np.float32)], 0
        sides: dict[str, list] = {"encoder": [], "ngram": []}
        # Length-sorted batches are formed within fixed blocks of the stream, so a text meets the same batch
        # neighbours (and the same bf16 rounding) whether eval scores a whole file or predict streams it.
        for start in range(0, len(texts), BLOCK_ROWS):
            enc = encode_long(self.tokenizer, texts[start:start + BLOCK_ROWS], self.max_length, self.long_text,
                              self.stride, pairs=None if pairs is None else pairs[start:start + BLOCK_ROWS])
            if self.backend == "onnx":
                logits = self.model.predict_logits(enc.ids, self.pad_id, batch_size, types=enc.types)
            else:
                logits = predict_logits(self.model, enc.ids, self.pad_id, batch_size,
                                        autocast_dtype=self.autocast_dtype, types=enc.types, compiled=self.compiled)
            logits = per_text(logits, enc)
            if self.partner is not None:
                ngram_probs = self.partner.probs(texts[start:start + BLOCK_ROWS])
                sides["encoder"].append(logits)
                sides["ngram"].append(NG.link(ngram_probs, self.multi_label).astype(np.float32))
                logits = NG.blended_logits(self.task, logits, ngram_probs, self.ngram_weight, self.blend_temperature)
            out.append(logits)
            cut += enc.cut
        if parts is not None and self.partner is not None:
            parts.update({name: np.concatenate([out[0]] + arrays) for name, arrays in sides.items()})
        return np.concatenate(out), cut

    def split_inputs(self, items) -> tuple[list[str], list[str] | None]:
        """(first texts, second texts or None) of a list of inputs: single texts for a single-text model, pairs
        ((text, text_pair) or {"text", "text_pair"}) for a pair model; the other kind is a one-line UserError."""
        items = list(items)
        if self.pair_col is None:
            if any(as_pair(x) is not None for x in items):
                raise UserError(f"{self.path or 'this model'}: reads single texts (trained without --text-pair-col), "
                                f"but a sentence pair was given; give texts, or use a model trained on pairs")
            return [t if isinstance(t, str) else str(t) for t in items], None
        pairs = [as_pair(x) for x in items]
        if any(p is None for p in pairs):
            raise UserError(f"{self.path or 'this model'}: reads sentence pairs (trained with --text-pair-col "
                            f"{self.pair_col}), but a single text was given; give each input as (text, text_pair)")
        return [a for a, _ in pairs], [b for _, b in pairs]

    def component_reports(self, y: np.ndarray, parts: dict) -> dict:
        """The task's report of each side of the blend alone (from logits_and_cut's `parts`; multi-label each at
        its own validation thresholds)."""
        return {name: NG.component_task(self.task, name, self.ngram).report(y, z) for name, z in parts.items()}

    def predict_proba(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self.task.probs(self.logits(texts, batch_size))

    def predict(self, texts: str | list[str], batch_size: int = 64) -> list[dict] | dict:
        """Label, its probability, and every class's probability, per text, in input order (multi-label: also
        'labels', those over their thresholds, best first)."""
        single = isinstance(texts, str) or as_pair(texts) is not None
        probs = self.predict_proba([texts] if single else list(texts), batch_size)
        out = [{"label": self.labels[int(row.argmax())], "score": float(row.max()),
                "probabilities": {lab: float(p) for lab, p in zip(self.labels, row)}} for row in probs]
        if self.multi_label:
            for rec, row, chosen in zip(out, probs, self.task.decide(probs)):
                rec["labels"] = [self.labels[i] for i in np.argsort(-row, kind="stable") if chosen[i]]
        return out[0] if single else out


def as_pair(x) -> tuple[str, str] | None:
    """(text, text_pair) when `x` is a sentence pair: a tuple of two strings or a dict with "text" and "text_pair"
    (the Inference API's form); else None."""
    if isinstance(x, dict) and set(x) == {"text", "text_pair"}:
        x = (x["text"], x["text_pair"])
    if isinstance(x, tuple) and len(x) == 2 and all(isinstance(t, str) for t in x):
        return x
    return None
