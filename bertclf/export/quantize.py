"""Int8 dynamic quantization of an exported graph: the variants, their order on this CPU, and the self-check.

`bertclf export --int8` quantizes with onnxruntime's quantize_dynamic (int8 weights per output channel, uint8
activations quantized on the fly) after SmoothQuant (alpha 0.75, below), then scores the fp32 and the int8
graph on labelled rows (the model's validation split, or --check FILE). Below --min-agreement it tries the
next, more faithful variant and keeps the first that passes (benchmarks/RESULTS.md measured each). The agreement
is the share of texts whose label int8 keeps; for a multi-label model, the share of (text, label) decisions it
keeps (agreement() below):

  CPU without VNNI (AVX2): s8-7bit (7-bit signed weights: the u8s8 AVX2 kernels saturate on 8 bits) ->
      u8-8bit (full-range unsigned weights: the u8u8 kernels widen to 16 bits, no saturation, ~15% slower) ->
      u8-8bit-emb (+ embedding table fp32) -> u8-8bit-emb-ffn2 (+ FFN output products of layers 0-4 fp32)
  CPU with VNNI or AMX: s8-8bit (full-range signed weights; vpdpbusd / AMX tiles do not saturate) ->
      s8-8bit-emb -> s8-8bit-emb-ffn2
"""
from __future__ import annotations

import contextlib
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bertclf import cpu
from bertclf.errors import UserError

SMOOTH_ALPHA = 0.75
FFN2_LAYERS = 5  # the FFN output products of the first layers carry the most int8 error (RESULTS.md, --sensitivity)


@dataclass(frozen=True)
class Variant:
    name: str
    weight_type: str             # QInt8 (signed) or QUInt8 (unsigned)
    reduce_range: bool           # 7-bit weights
    fp32_embeddings: bool = False
    fp32_ffn_out_layers: int = 0  # FFN output products of layers 0..N-1 stay fp32


def variants(fast_int8: bool | None = None) -> list[Variant]:
    """The variants to try, fastest first, for this CPU (or for one with/without VNNI when told)."""
    fast_int8 = cpu.fast_int8() if fast_int8 is None else fast_int8
    if fast_int8:
        return [Variant("s8-8bit", "QInt8", False), Variant("s8-8bit-emb", "QInt8", False, True),
                Variant("s8-8bit-emb-ffn2", "QInt8", False, True, FFN2_LAYERS)]
    return [Variant("s8-7bit", "QInt8", True), Variant("u8-8bit", "QUInt8", False),
            Variant("u8-8bit-emb", "QUInt8", False, True),
            Variant("u8-8bit-emb-ffn2", "QUInt8", False, True, FFN2_LAYERS)]


# --min-agreement's defaults. Single-label: the share of texts whose label the int8 graph keeps. Multi-label: the
# share of (text, label) decisions it keeps (whole label sets are no unit to gate on: with KOTE's 44 labels int8
# kept 96.8% of the decisions but only 29% of the sets, at unchanged micro-F1).
MIN_AGREEMENT = 0.99
MIN_AGREEMENT_MULTI_LABEL = 0.95  # KOTE me5-small: int8 keeps 96.8%; <95% cost 1.5-3.6 pt F1 (benchmarks/RESULTS.md)


def default_min_agreement(multi_label: bool) -> float:
    return MIN_AGREEMENT_MULTI_LABEL if multi_label else MIN_AGREEMENT


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """How far two graphs' decisions agree. Single-label (label ids, one per text): {"agreement": the share of
    texts with the same label}. Multi-label (booleans, texts x labels): {"agreement": the share of (text, label)
    decisions that are equal, "set_agreement": the share of texts whose whole label sets are equal}."""
    if a.ndim == 1:
        return {"agreement": float((a == b).mean()) if len(a) else 1.0}
    same = a == b
    return {"agreement": float(same.mean()) if same.size else 1.0,
            "set_agreement": float(same.all(1).mean()) if len(same) else 1.0}


def quality(decided: np.ndarray, truth: np.ndarray) -> float:
    """Against the true labels: accuracy (single-label), micro-F1 over all (text, label) decisions (multi-label;
    the share of exactly right label sets is near 0 for a model with 44 labels and says little)."""
    if decided.ndim == 1:
        return float((decided == truth).mean()) if len(truth) else 0.0
    tp = float((decided & truth).sum())
    denom = float(decided.sum() + truth.sum())
    return 2 * tp / denom if denom else 1.0


def describe(a: dict, digits: int = 2) -> str:
    """The measures of `agreement()` in words, the same in every line export prints."""
    if "set_agreement" not in a:
        return f"labels agree {a['agreement']:.{digits}%}"
    return f"label decisions agree {a['agreement']:.{digits}%}, label sets equal {a['set_agreement']:.{digits}%}"


def choose(fp32: Path, work: Path, ids: list[np.ndarray], y: np.ndarray, pad_id: int, num_labels: int,
           min_agreement: float, large: bool, log, tries: list[Variant] | None = None,
           decide=None, types: list[np.ndarray] | None = None) -> tuple[Path, dict]:
    """Quantize `fp32` variant by variant until one agrees with it on >= min_agreement (see agreement()).
    decide(logits): the decisions (default argmax; a multi-label task's label sets over its thresholds, 2-d,
    where the gated measure is the share of (text, label) decisions that agree); types: the rows' token type ids
    (sentence pairs) or None. Returns (the int8 graph, the
    check report for bertclf.json); raises UserError when none passes."""
    decide = decide or (lambda z: z.argmax(1))
    ref = score(fp32, ids, pad_id, num_labels, types)
    ref_decided = decide(ref)
    multi = ref_decided.ndim == 2
    truth = y > 0.5 if multi else y
    metric = "micro_f1" if multi else "accuracy"
    q_fp32 = quality(ref_decided, truth)
    labels = ref_decided.shape[1] if multi else None
    head = {"rows": len(y)} | ({"labels": labels, "agreement_of": "(text, label) decisions"} if multi
                               else {"agreement_of": "texts' labels"})
    tried = []
    for k, v in enumerate(tries or variants()):
        dst = work / f"int8-{k}.onnx"
        settings = quantize(fp32, dst, v, large)
        got = score(dst, ids, pad_id, num_labels, types)
        decided = decide(got)
        agree, q = agreement(decided, ref_decided), quality(decided, truth)
        tried.append({"variant": v.name, **agree, metric: q, "mean_abs_logit_diff": float(np.abs(got - ref).mean())})
        ok = agree["agreement"] >= min_agreement
        below = '' if ok else f' - below --min-agreement {min_agreement:.2%}'
        if multi:
            log(f"int8 {v.name} vs fp32 on {len(y)} rows x {labels} labels: {describe(agree)}, micro-F1 {q:.2%} "
                f"({(q - q_fp32) * 100:+.2f} pt){below}")
        else:
            log(f"int8 {v.name}: labels agree with fp32 on {agree['agreement']:.2%} of {len(y)} rows, accuracy "
                f"{q:.2%} ({(q - q_fp32) * 100:+.2f} pt){below}")
        if ok:
            return dst, head | {"min_agreement": min_agreement, "variant": v.name, "quantization": settings, **agree,
                                f"{metric}_fp32": q_fp32, f"{metric}_int8": q, f"{metric}_change": q - q_fp32,
                                "tried": tried}
    best = max(tried, key=lambda t: t["agreement"])
    what = f"{len(y)} rows" if not multi else f"the {len(y) * labels} (text, label) decisions of {len(y)} rows"
    raise UserError(f"no int8 variant agrees with fp32 on --min-agreement {min_agreement:.2%} of {what} (best: "
                    f"{best['variant']} {best['agreement']:.2%}); nothing written: export fp32 (drop --int8) or "
                    f"lower --min-agreement")


def summary(k: dict) -> str:
    """The export's closing int8 line, from its int8_check report."""
    if "labels" in k:
        rows, metric, name = f"{k['rows']} rows x {k['labels']} labels", "micro_f1", "micro-F1"
    else:
        rows, metric, name = f"{k['rows']} rows", "accuracy", "accuracy"
    return (f"int8 ({k['variant']}) vs fp32 on {rows}: {describe(k)}, {name} {k[f'{metric}_fp32']:.2%} -> "
            f"{k[f'{metric}_int8']:.2%} ({k[f'{metric}_change'] * 100:+.2f} pt)")


def score(path: Path, ids: list[np.ndarray], pad_id: int, num_labels: int,
          types: list[np.ndarray] | None = None) -> np.ndarray:
    from bertclf.inference.onnx_model import OnnxClassifierModel

    return OnnxClassifierModel(path, num_labels, spin=False).predict_logits(ids, pad_id, batch_size=64, types=types)


def quantize(src: Path, dst: Path, v: Variant, large: bool) -> dict:
    """Dynamic int8 as `v` says; returns the settings for bertclf.json."""
    import onnx
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    exclude = kept_fp32(onnx.load(str(src), load_external_data=False), v)
    with warnings.catch_warnings(), quiet_logging():
        warnings.simplefilter("ignore")
        # DefaultTensorType: ONNX shape inference cannot type the outputs of the fused (com.microsoft) ops;
        # everything here is float32.
        quantize_dynamic(str(src), str(dst), weight_type=getattr(QuantType, v.weight_type), per_channel=True,
                         reduce_range=v.reduce_range, use_external_data_format=large, nodes_to_exclude=exclude,
                         extra_options={"DefaultTensorType": TensorProto.FLOAT})
    return {"method": "onnxruntime.quantization.quantize_dynamic", "variant": v.name, **asdict(v),
            "activations": "uint8, dynamic", "per_channel": True, "fp32_nodes": exclude}


def kept_fp32(model, v: Variant) -> list[str]:
    """Names of the nodes `v` leaves in fp32: the embedding lookup (fused or plain Gather on a weight table)
    and the FFN output MatMuls (".../layer.N/output/dense/MatMul") of the first layers."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if v.fp32_embeddings and (n.op_type == "EmbedLayerNormalization"
                                  or (n.op_type == "Gather" and n.input and n.input[0] in inits)):
            out.append(n.name)
        m = re.search(r"layer\.(\d+)/output/dense/MatMul$", n.name)
        if m and n.op_type == "MatMul" and int(m.group(1)) < v.fp32_ffn_out_layers:
            out.append(n.name)
    return out


def smooth(src: Path, dst: Path, ids: list[np.ndarray], pad_id: int, alpha: float,
           types: list[np.ndarray] | None = None) -> int:
    """SmoothQuant for dynamic int8: move activation outliers into the weights, exactly.

    A few hidden channels of BERT-like encoders carry values 10x larger than the rest (e.g. the GELU output
    into FFN2 of multilingual-e5-small reaches 60 in one channel while the others stay below 5). Dynamic int8
    quantizes each activation tensor with one scale, so that one channel wastes most of the 256 levels. For
    every MatMul/Attention with a constant weight W (in x out) we insert x -> x / s before it and store
    W * s[:, None], with s_j = max|x_j|^alpha / max|W_j|^(1 - alpha) measured on the calibration ids: the
    product is unchanged (fp32-checked afterwards), the quantized activation is flatter. Returns how many
    nodes were smoothed.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from bertclf.data.batches import collate
    from bertclf.inference.onnx_model import import_onnxruntime, session_options

    ort = import_onnxruntime()
    m = onnx.load(str(src))
    inits = {i.name: i for i in m.graph.initializer}
    uses: dict[str, int] = {}
    for n in m.graph.node:
        for x in n.input:
            uses[x] = uses.get(x, 0) + 1
    targets = []
    for n in m.graph.node:
        if n.op_type in ("MatMul", "Attention") and len(n.input) > 1 and n.input[1] in inits \
                and uses[n.input[1]] == 1 \
                and len(inits[n.input[1]].dims) == 2 and inits[n.input[1]].data_type == TensorProto.FLOAT:
            targets.append(n)
    if not targets:
        return 0
    names = sorted({n.input[0] for n in targets})
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(x, TensorProto.FLOAT, None) for x in names if x not in have)
    so = session_options(spin=False)  # the threads the other sessions use (BERTCLF_THREADS), none left spinning
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the probed tensors
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    del probe
    amax: dict[str, np.ndarray] = {}
    for start in range(0, len(ids), 8):
        b = collate(ids, np.arange(start, min(start + 8, len(ids))), pad_id, multiple=1, types=types)
        mask = b["attention_mask"].numpy().astype(bool)
        feed = {k: v.numpy() for k, v in b.items()}  # input_ids, attention_mask (and a pair's token_type_ids)
        for x, v in zip(names, sess.run(names, feed)):
            v = np.abs(v.reshape(mask.shape + (-1,))[mask] if v.shape[:2] == mask.shape else v.reshape(-1, v.shape[-1]))
            amax[x] = np.maximum(amax[x], v.max(0)) if x in amax else v.max(0)
    del sess
    order = list(m.graph.node)
    done = 0
    for k, n in enumerate(targets):
        w_init = inits[n.input[1]]
        W = numpy_helper.to_array(w_init).astype(np.float32)
        a = amax.get(n.input[0])
        if a is None or a.shape[0] != W.shape[0]:
            continue
        scale = np.maximum(a, 1e-5) ** alpha / np.maximum(np.abs(W).max(1), 1e-5) ** (1 - alpha)
        scale = (scale / np.exp(np.log(scale).mean())).astype(np.float32)  # geometric mean 1
        w_init.CopyFrom(numpy_helper.from_array((W * scale[:, None]).astype(np.float32), w_init.name))
        inv, out = f"smooth_{k}_inv_scale", f"smooth_{k}_output"
        m.graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inv))
        order.insert(order.index(n), helper.make_node("Mul", [n.input[0], inv], [out], name=f"Smooth_{k}"))
        n.input[0] = out
        done += 1
    del m.graph.node[:]
    m.graph.node.extend(order)
    onnx.save(m, str(dst))
    return done


@contextlib.contextmanager
def quiet_logging():
    import logging

    prev = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(prev)
