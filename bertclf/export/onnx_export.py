"""Export a trained model directory to ONNX (optionally int8) for fast CPU inference with onnxruntime.

    bertclf export runs/nsmc --onnx --out runs/nsmc-onnx            # fp32
    bertclf export runs/nsmc --onnx --int8 --out runs/nsmc-int8     # int8, checked on the validation rows

The output directory is self-contained: model.onnx, config.json (labels), the tokenizer files, the n-gram
partner's files when the model has one (bertclf/models/ngram.py: numpy, run beside onnxruntime) and bertclf.json
(the training card plus an "export" section). `Classifier.load`, `bertclf predict/eval/serve` use it as they use
the trained directory, on onnxruntime instead of torch.

How:
  1. torch.onnx.export with the TorchScript exporter (dynamo=False), eager attention, dynamic batch and sequence
     axes, inputs input_ids + attention_mask (as the torch path feeds), output logits.
  2. onnxruntime.transformers' BERT optimizer fuses the graph (EmbedLayerNormalization, Attention, SkipLayerNorm,
     BiasGelu); eager attention is what its patterns match. If fusing fails or changes the logits, the plain
     graph is kept. The fused Attention takes the padding mask as per-row lengths: padding must be on the right,
     which is how bertclf pads.
  3. --int8: onnxruntime's dynamic quantization (bertclf/export/quantize.py): int8 weights per output channel,
     uint8 activations quantized on the fly, after SmoothQuant (alpha 0.75, calibrated on built-in sample
     texts), which moves the few outlier activation channels of BERT-like encoders into the weights, exactly.
     Then it checks itself: the fp32 and int8 graphs score the model's validation rows (rebuilt from
     bertclf.json; or --check FILE, read in the training's format: its columns, --columns of a header-less
     file, encoding), and below --min-agreement agreement the next, more faithful variant is tried. The
     agreement is the share of texts whose label int8 keeps (default 0.99); for a multi-label model the share
     of (text, label) decisions it keeps over the stored thresholds (default quantize.MIN_AGREEMENT_MULTI_LABEL),
     with the share of texts whose whole label set it keeps reported beside it (and micro-F1 instead of
     accuracy). The variants: 7-bit weights first on CPUs without VNNI (their u8s8 AVX2 kernels saturate on
     8 bits), full 8-bit weights first where VNNI/AMX is present, then fp32 embeddings, then fp32 FFN output
     products. The first variant that passes is kept and named in bertclf.json ("int8_check"); if none does,
     nothing is written (UserError). Why SmoothQuant at alpha 0.75: benchmarks/RESULTS.md ("CPU inference", the int8 variants table).
  4. Checked before the directory appears: the fp32 graph must give torch's logits on sample texts
     (max |diff| <= 1e-3 + 1e-3 * max |logit|); for int8 the agreement (the same measures as above) and the
     largest probability difference against torch on the same texts are recorded in bertclf.json.
The directory is written atomically: it appears complete or not at all.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertclf.errors import UserError
from bertclf.io.files import atomic_dir, check_writable
from bertclf.models.ngram import ARRAYS_FILE, JSON_FILE
from bertclf.export.quantize import (SMOOTH_ALPHA, Variant, agreement, choose, default_min_agreement, describe,
                              quiet_logging, smooth, summary)
from bertclf.rundir.layout import CARD_FILE, write_card

OPSET = 17
PARTNER_FILES = (JSON_FILE, ARRAYS_FILE)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model",
                   "tokenizer.model", "chat_template.jinja")
LARGE_BYTES = 1_800_000_000  # protobuf stops at 2 GB: larger graphs keep their weights in model.onnx.data

# Sample texts for the export check: Korean and English, short and long (the longest is cut at max_length),
# so that batches with and without padding, and a single-row batch, all run.
SAMPLE_TEXTS = [
    "정말 재밌어요", "시간 아깝다", "ㅋ", "최고의 영화!! 배우들 연기가 대박이고 음악도 좋았다",
    "스토리가 너무 뻔하고 지루해서 중간에 잠들었습니다", "그냥 그랬음", "별로", "또 보고 싶다 ㅎㅎ",
    "This movie was surprisingly good, I'd watch it again.", "Terrible acting and a boring plot.",
    "감독이 무슨 생각으로 이걸 만들었는지 모르겠다. 돈 주고 본 게 아깝다. 다시는 안 본다.",
    "가족과 함께 보기 좋은 따뜻한 영화 👍", "1점도 아깝다", "10점 만점에 10점",
    "연출 " * 80, "ok", "평점 조작 아닌가요? 이게 9점대라니...", "아이들이 정말 좋아했어요",
    "지루함", "명작은 시간이 지나도 명작이다", "??", "음악이 좋아서 OST 계속 듣는 중",
    "배우는 좋은데 각본이 아쉽다", "다시 봐도 눈물 나는 장면",
]


@dataclass
class Source:
    """The trained directory, loaded once: its card, task, tokenizer and torch model, and torch's logits on the
    sample texts that every graph is checked against."""
    path: Path
    config: dict
    card: dict
    labels: list
    task: object            # bertclf.data.task: decides labels from probabilities (multi-label: thresholds)
    tokenizer: object
    model: object
    pad_id: int
    max_length: int
    samples: list           # SAMPLE_TEXTS, or pairs of them for a sentence-pair model
    sample_ids: list
    sample_types: list | None
    ref: np.ndarray         # torch's logits on the samples

    @property
    def partner(self) -> dict:
        return self.card.get("ngram") or {}


def export_onnx(model_dir: str, out_dir: str, int8: bool = False, log=print, opset: int = OPSET,
                optimize: bool = True, smooth_alpha: float | None = SMOOTH_ALPHA, check: str | None = None,
                min_agreement: float | None = None, variants: list[Variant] | None = None) -> dict:
    """Write an ONNX export of `model_dir` to `out_dir`; return what was done (also stored in bertclf.json).
    int8: the first of `variants` (default: quantize.variants() for this CPU) whose decisions agree with the fp32
    graph's on >= min_agreement of the check rows (`check` FILE, else the model's validation rows): the share of
    texts whose label agrees, for a multi-label model the share of (text, label) decisions that agree.
    min_agreement None: quantize.default_min_agreement for the model's task."""
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise UserError(f"--min-agreement must be between 0 and 1, got {min_agreement}")
    t0 = time.time()
    onnx, ort = _import_onnx()
    src, out = _check_paths(model_dir, out_dir)
    source = load_source(src)
    if min_agreement is None:
        min_agreement = default_min_agreement(source.task.kind == "multi_label")
    info = _describe_export(source, onnx, ort, opset, int8, optimize, smooth_alpha, check, min_agreement)
    check_rows = None
    if int8:  # the rows the int8 graph is checked on; read before anything is exported, so bad input fails fast
        check_rows = _int8_check_rows(source, check)
        info["cpu"] = cpu_summary()
    try:
        with atomic_dir(out) as tmp, tempfile.TemporaryDirectory(prefix=".bertclf-export.", dir=tmp.parent) as work:
            work = Path(work)
            fp32 = _export_fp32(source, work, opset, info["external_data"], optimize, info, log)
            target = tmp / "model.onnx"
            if int8:
                chosen = _quantize(source, fp32, work, smooth_alpha, check_rows, min_agreement, variants,
                                   info, log)
                _save_as(chosen, target, info["external_data"])
            else:
                _save_as(fp32, target, info["external_data"])
            new_card = _write_beside(source, tmp, info)
            _check_directory(source, tmp, int8, info)
            info["size_bytes"] = sum(f.stat().st_size for f in tmp.iterdir() if f.name.startswith("model.onnx"))
            info["source_size_bytes"] = _weights_bytes(src)
            info["seconds"] = round(time.time() - t0, 2)
            write_card(tmp, new_card)
    except OSError as e:
        raise UserError(f"{out}: cannot write the export ({e.strerror or e}); choose a writable --out directory") from None
    _log_result(out, info, int8, source.partner, log)
    return {"out": str(out), **info}


def load_source(src: Path) -> Source:
    from bertclf.data.task import task_from_card
    from bertclf.data.long_text import encode_rows
    from bertclf.models.forward import predict_logits
    from bertclf.models.resolve import load_classifier, load_tokenizer
    from bertclf.rundir.layout import read_card

    config = json.loads((src / "config.json").read_text())
    if not config.get("id2label"):
        raise UserError(f"{src}/config.json: no id2label; this is not a trained classifier")
    card = read_card(src)
    labels = [config["id2label"].get(str(i)) for i in range(len(config["id2label"]))]
    task = task_from_card(card, labels)  # multi-label: label sets over the stored thresholds
    ngram = card.get("ngram") or {}
    if ngram.get("kept"):  # the int8 check compares encoder with encoder: over the encoder's own thresholds
        from bertclf.models.ngram import component_task

        task = component_task(task, "encoder", ngram)
    max_length = card.get("max_length") or 128
    tokenizer = load_tokenizer(str(src))
    model = load_classifier(str(src)).eval()
    model.set_attn_implementation("eager")  # plain MatMul/Softmax attention: the pattern ORT's optimizer fuses
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pairs = (card.get("data") or {}).get("text_pair_col") is not None  # a sentence-pair model
    samples = list(zip(SAMPLE_TEXTS, SAMPLE_TEXTS[::-1])) if pairs else SAMPLE_TEXTS
    sample_ids, sample_types = encode_rows(tokenizer, *split_samples(samples), max_length)
    ref = predict_logits(model, sample_ids, pad_id, batch_size=8, types=sample_types)
    return Source(src, config, card, labels, task, tokenizer, model, pad_id, max_length, samples, sample_ids,
                  sample_types, ref)


def _describe_export(source: Source, onnx, ort, opset: int, int8: bool, optimize: bool, smooth_alpha, check,
                     min_agreement: float) -> dict:
    """The export's record in bertclf.json, as far as it is known before anything is exported."""
    import torch

    n_params = sum(p.numel() for p in source.model.parameters())
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if source.sample_types is not None else [])
    return {"format": "onnx", "source": str(source.path.resolve()), "int8": bool(int8), "opset": opset,
            "onnxruntime": ort.__version__, "onnx": onnx.__version__, "torch": torch.__version__,
            "exporter": "torch.onnx.export (TorchScript, dynamo=False)", "inputs": inputs,
            "output": "logits", "external_data": n_params * 4 > LARGE_BYTES, "parameters": n_params,
            "requested": {"optimize": optimize, "smooth": smooth_alpha, "check": check,
                          "min_agreement": min_agreement if int8 else None}}


def _int8_check_rows(source: Source, check: str | None) -> tuple:
    """(ids, types, labels, where they came from) of the rows the int8 graph is checked on."""
    from bertclf.data.long_text import encode_rows
    from bertclf.export.validation_rows import check_rows

    texts, y, where = check_rows(source.path, source.card, source.labels, check)
    ids, types = encode_rows(source.tokenizer, *split_samples(texts), source.max_length)
    return ids, types, y, where


def _export_fp32(source: Source, work: Path, opset: int, large: bool, optimize: bool, info: dict, log) -> Path:
    """torch -> ONNX, fused by onnxruntime's optimizer when that keeps torch's logits; the fp32 graph's path."""
    raw = work / "raw.onnx"
    log(f"exporting {source.path} ({info['parameters'] / 1e6:.1f}M parameters) to ONNX, opset {opset} ...")
    types2 = None if source.sample_types is None else source.sample_types[:2]
    try:
        _torch_export(source.model, source.sample_ids[:2], source.pad_id, raw, opset, large, types2)
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"cannot export {source.path} to ONNX ({type(e).__name__}: {first}); "
                        f"its architecture ({source.config.get('model_type')}) may not be exportable") from None
    source.model = None  # the torch weights are no longer needed: free them before quantizing
    fp32, fused = raw, None
    if optimize:
        fp32, fused = _fuse(raw, work / "fused.onnx", source.config, large, source.sample_ids, source.pad_id,
                            source.ref, log, source.sample_types)
    diff = _max_diff(_run_samples(fp32, source), source.ref)
    info["fp32_max_abs_logit_diff"] = diff
    if not _close(diff, source.ref):
        raise UserError(f"ONNX export of {source.path} does not reproduce torch: max |logit difference| {diff:.3g} "
                        f"on {len(SAMPLE_TEXTS)} sample texts; please report this model's architecture")
    info["fused"] = fused or {}
    info["optimized"] = bool(fused)
    return fp32


def _quantize(source: Source, fp32: Path, work: Path, smooth_alpha, check_rows: tuple, min_agreement: float,
              variants, info: dict, log) -> Path:
    """SmoothQuant (when it keeps torch's logits), then the first int8 variant that passes the agreement check."""
    ref, smoothed = source.ref, 0
    if smooth_alpha and not info["external_data"]:
        smoothed = smooth(fp32, work / "smooth.onnx", source.sample_ids, source.pad_id, smooth_alpha,
                          source.sample_types)
        sdiff = _max_diff(_run_samples(work / "smooth.onnx", source), ref)
        if _close(sdiff, ref):
            fp32 = work / "smooth.onnx"
        else:  # cannot happen in exact arithmetic; keep the plain graph if rounding says otherwise
            log(f"not smoothing: the smoothed graph differs from torch by {sdiff:.3g}")
            smoothed = 0
    ids, types, y, where = check_rows
    log(f"int8 dynamic quantization{f' after SmoothQuant ({smoothed} MatMuls)' if smoothed else ''}, "
        f"checked on {where} ...")
    task = source.task
    chosen, report = choose(fp32, work, ids, y, source.pad_id, ref.shape[1], min_agreement, info["external_data"],
                            log, variants, decide=lambda z: task.decide(task.probs(z)), types=types)
    info["quantization"] = report.pop("quantization") | {
        "smoothquant_alpha": smooth_alpha if smoothed else None, "smoothed_nodes": smoothed}
    info["int8_check"] = report | {"rows_from": where}
    return chosen


def _write_beside(source: Source, tmp: Path, info: dict) -> dict:
    """config, tokenizer and the n-gram partner (bertclf/models/ngram.py: it runs in numpy beside onnxruntime, so
    predict, eval and serve on the export give the trained model's blend) beside model.onnx; the card."""
    src = source.path
    for name in ("config.json",) + TOKENIZER_FILES + PARTNER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, tmp / name)
    new_card = dict(source.card)
    new_card.setdefault("labels", source.labels)
    new_card.setdefault("max_length", source.max_length)
    new_card["export"] = info
    write_card(tmp, new_card)
    return new_card


def _check_directory(source: Source, tmp: Path, int8: bool, info: dict) -> None:
    """The end-to-end check: load the new directory the way users will, and compare with torch."""
    from bertclf.inference.classifier import Classifier

    clf = Classifier.load(str(tmp), ngram=False)  # the encoder, against torch's encoder
    ref = source.ref
    got = clf.logits(source.samples, batch_size=8)
    p_ref, p_got = clf.task.probs(ref), clf.task.probs(got)  # softmax, or sigmoid for multi-label
    agree = agreement(clf.task.decide(p_got), clf.task.decide(p_ref))  # multi-label: per (text, label)
    info["check"] = {"texts": len(SAMPLE_TEXTS), "max_abs_logit_diff": _max_diff(got, ref),
                     "max_prob_diff": float(np.abs(p_got - p_ref).max()),
                     "label_agreement": agree.pop("agreement"), **agree}
    del clf
    if not int8 and not _close(info["check"]["max_abs_logit_diff"], ref):
        raise UserError(f"the exported directory does not reproduce torch (max |logit difference| "
                        f"{info['check']['max_abs_logit_diff']:.3g}); please report this")


def _log_result(out: Path, info: dict, int8: bool, partner: dict, log) -> None:
    if int8:
        log(summary(info["int8_check"]))
    c = info["check"]
    log(f"wrote {out}: model.onnx {info['size_bytes'] / 1e6:.1f} MB ({'int8' if int8 else 'fp32'}; torch weights "
        f"{info['source_size_bytes'] / 1e6:.1f} MB); vs torch on {c['texts']} texts: "
        f"{describe({'agreement': c['label_agreement']} | c, digits=1)}, max |prob diff| {c['max_prob_diff']:.2g}")
    if partner.get("kept"):
        log(f"the n-gram partner ({', '.join(PARTNER_FILES)}, weight {partner.get('weight')}) is copied beside "
            f"model.onnx: predict, eval and serve on {out} blend it as the trained model does")


def cpu_summary() -> dict:
    from bertclf import cpu

    return cpu.summary()


def _import_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise UserError("export needs onnx and onnxruntime; install them with: pip install 'bertclf[onnx]'") from None
    return onnx, onnxruntime


def _check_paths(model_dir: str, out_dir: str) -> tuple[Path, Path]:
    from bertclf.models.resolve import check_model_dir

    src = check_model_dir(Path(model_dir).expanduser())
    if (src / "model.onnx").is_file() and not any((src / w).is_file() for w in
                                                    ("model.safetensors", "model.safetensors.index.json",
                                                     "pytorch_model.bin")):
        raise UserError(f"{src}: already an ONNX export; export from the trained (torch) model directory")
    out = Path(out_dir).expanduser()
    if out.resolve() == src.resolve():
        raise UserError(f"{out}: --out is the model directory itself; give a new directory")
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise UserError(f"{out}: exists and is not a directory; give a new directory for --out")
        if any(out.iterdir()) and not _is_export(out):
            raise UserError(f"{out}: exists and is not empty (and is not an earlier ONNX export); "
                            f"give a new directory or remove it")
    check_writable(out)
    return src, out


def _is_export(p: Path) -> bool:
    """An earlier `bertclf export` output, which a new export may replace."""
    try:
        return (p / "model.onnx").is_file() and "export" in json.loads((p / CARD_FILE).read_text())
    except (OSError, ValueError):
        return False


def _torch_export(model, ids: list[np.ndarray], pad_id: int, path: Path, opset: int, large: bool,
                  types: list[np.ndarray] | None = None) -> None:
    """types: a sentence-pair model's token type ids (the graph then has a token_type_ids input), or None."""
    import torch

    from bertclf.data.batches import collate

    # Two rows of different lengths: the example batch has padding, so nothing mask-related is traced away.
    if len(ids[0]) == len(ids[1]):
        ids = [ids[0], ids[1][:-1]]
        types = None if types is None else [types[0], types[1][:-1]]
    batch = collate(ids, np.arange(2), pad_id, types=types)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if types is not None else [])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(batch[n] for n in names), str(path),
                          input_names=names, output_names=["logits"],
                          dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, "logits": {0: "batch"}},
                          opset_version=opset, do_constant_folding=True, dynamo=False,
                          **({"external_data": True} if large else {}))


def _fuse(raw: Path, dst: Path, config: dict, large: bool, ids, pad_id, ref, log,
          types=None) -> tuple[Path, dict | None]:
    """The graph with BERT's fused ops, or the raw graph (and None) when fusing fails or changes the logits."""
    heads, hidden = config.get("num_attention_heads"), config.get("hidden_size")
    model_type = config.get("model_type", "bert")
    opt_type = "bert" if model_type in ("bert", "roberta", "xlm-roberta", "electra", "camembert") else None
    if not (heads and hidden and opt_type):
        log(f"not fusing the graph: no onnxruntime BERT optimizer for model type {model_type!r}")
        return raw, None
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        with warnings.catch_warnings(), quiet_logging():
            warnings.simplefilter("ignore")
            opt = optimize_model(str(raw), model_type=opt_type, num_heads=int(heads), hidden_size=int(hidden),
                                 opt_level=0)
            stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
            opt.save_model_to_file(str(dst), use_external_data_format=large)
        del opt
    except Exception as e:  # a fusion bug must not block the export: the plain graph is correct, only slower
        log(f"not fusing the graph ({type(e).__name__}: {str(e)[:120]}); exporting the plain graph")
        return raw, None
    diff = _max_diff(_run(dst, ids, pad_id, ref.shape[1], types), ref)
    if not _close(diff, ref):
        log(f"not fusing the graph: the fused graph differs from torch by {diff:.3g}; exporting the plain graph")
        return raw, None
    log("fused: " + ", ".join(f"{k} x{v}" for k, v in stats.items()))
    return dst, stats


def _save_as(src: Path, dst: Path, large: bool) -> None:
    if not large:
        shutil.copyfile(src, dst)
        return
    import onnx

    m = onnx.load(str(src))
    onnx.save_model(m, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data")


def _run(path: Path, ids: list[np.ndarray], pad_id: int, num_labels: int, types=None) -> np.ndarray:
    from bertclf.inference.onnx_model import OnnxClassifierModel

    return OnnxClassifierModel(path, num_labels).predict_logits(ids, pad_id, batch_size=8, types=types)


def split_samples(items: list) -> tuple[list[str], list[str] | None]:
    """(texts, second texts or None) of a list of texts or (text, text_pair) tuples."""
    if items and isinstance(items[0], tuple):
        return [a for a, _ in items], [b for _, b in items]
    return list(items), None


def _run_samples(path: Path, source: Source) -> np.ndarray:
    return _run(path, source.sample_ids, source.pad_id, source.ref.shape[1], source.sample_types)


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def _close(diff: float, ref: np.ndarray) -> bool:
    return diff <= 1e-3 + 1e-3 * float(np.abs(ref).max())


def _weights_bytes(src: Path) -> int:
    return sum(f.stat().st_size for f in src.iterdir()
               if f.name.startswith(("model.safetensors", "model-", "pytorch_model")) and f.is_file())
