"""Int8 variants side by side: which quantization choices keep the torch model's labels, and at what speed.

    python benchmarks/int8_variants.py DIR [--n 2000] [--calib-n 256] [--sensitivity]

DIR is a trained model directory (e.g. runs/nsmc-cpu from `make nsmc`). The script exports DIR once to the
fused fp32 ONNX graph (bertclf.export.onnx_export, as `bertclf export --onnx` does), builds every variant from that graph,
and scores the first N NSMC test reviews with each: label agreement with torch, mean and max |logit
difference|, accuracy, and texts/s at batch 64 (engines in turn, block by block, so machine noise hits all
alike; the ratio "x torch" is against torch eager fp32 in the same run; torch-bf16 is bf16 autocast). The output
starts with the CPU's model name and matrix features (bertclf/cpu.py). The variants:

  s8-7bit            onnxruntime dynamic int8 as-is: int8 weights per channel, 7-bit (reduce_range)
  smooth-0.5/0.75/0.9  the same after SmoothQuant with that alpha, calibrated on the export's 24 sample texts
                     (0.75 is what `bertclf export --int8` writes)
  smooth-0.75-train  SmoothQuant 0.75 calibrated on --calib-n NSMC training reviews
  u8-8bit            unsigned 8-bit weights, full range (no saturation-avoiding 7th bit), SmoothQuant 0.75
  s8-8bit            signed 8-bit weights, full range, SmoothQuant 0.75: what the export tries first on CPUs
                     with VNNI/AMX (u8 x s8 dot products there do not saturate); s8-8bit-emb / -emb-ffn2 as below
  u8-train-emb       u8-8bit calibrated on training reviews, the embedding tables left in fp32
  u8-train-emb-ffn2  the same with the FFN output products of layers 0-4 left in fp32 as well
  block32/block128   per-block 8-bit weights with int8 compute (onnxruntime MatMulNBits, accuracy_level 4;
                     needs the onnx-ir package, skipped without it)

--sensitivity also quantizes each product alone (the rest fp32) and prints its mean |logit error| on 400
reviews: where the int8 error comes from.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bertclf.errors import UserError  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model_dir", metavar="DIR", help="trained model directory")
    p.add_argument("--n", type=int, default=2000, help="NSMC test reviews scored by every variant")
    p.add_argument("--calib-n", type=int, default=256, help="NSMC training reviews for the *-train calibrations")
    p.add_argument("--data-dir", help="folder with ratings_train.txt and ratings_test.txt")
    p.add_argument("--sensitivity", action="store_true", help="also quantize each product alone")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return p.parse_args(argv)


def quantize(src: Path, dst: Path, unsigned: bool = False, reduce_range: bool = True, exclude=(), include=None):
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QUInt8 if unsigned else QuantType.QInt8,
                         per_channel=True, reduce_range=reduce_range, nodes_to_exclude=list(exclude),
                         nodes_to_quantize=include, extra_options={"DefaultTensorType": TensorProto.FLOAT})
    return dst


def blockwise(src: Path, dst: Path, block: int):
    """Per-block 8-bit weights (MatMulNBits); the fused Attention's packed weights stay fp32, so the graph is
    fused without attention fusion first, to quantize the Q/K/V products too."""
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError:
        return None
    import onnx

    q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=8, block_size=block, is_symmetric=True, accuracy_level=4)
    q.process()
    q.model.save_model_to_file(str(dst))
    return dst


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.disable(logging.WARNING)
    from bertclf import cpu

    print(f"device: {cpu.describe()}", file=sys.stderr)
    from bertclf.data.dataset import nsmc_path, read_labelled
    from bertclf.export.onnx_export import SAMPLE_TEXTS, export_onnx
    from bertclf.export.quantize import smooth as _smooth
    from bertclf.models.forward import predict_logits
    from bertclf.models.resolve import check_model_dir
    from bertclf.inference.onnx_model import OnnxClassifierModel
    from bertclf.inference.classifier import Classifier
    from bertclf.data.tokens import encode

    src = check_model_dir(Path(args.model_dir))
    if (src / "model.onnx").is_file():
        raise UserError(f"{src}: give the trained (torch) model directory, not an export")
    from inference import nsmc_dir, nsmc_test  # benchmarks/inference.py, beside this script

    clf = Classifier.load(str(src), device="cpu")
    texts, y = nsmc_test(args.n, args.data_dir, clf.labels)
    train = read_labelled(nsmc_path("train", nsmc_dir(args.data_dir), log=lambda s: None), "document", "label")
    ids = encode(clf.tokenizer, texts, clf.max_length)
    calib = {"sample": encode(clf.tokenizer, SAMPLE_TEXTS, clf.max_length),
             "train": encode(clf.tokenizer, train.texts[-args.calib_n:], clf.max_length)}
    n_layers = clf.model.config.num_hidden_layers
    ffn2_early = [f"/bert/encoder/layer.{i}/output/dense/MatMul" for i in range(min(5, n_layers))]

    with tempfile.TemporaryDirectory(prefix="bertclf-int8.") as tmp:
        w = Path(tmp)
        print("exporting the fused fp32 graph ...", file=sys.stderr)
        export_onnx(str(src), str(w / "fp32"), int8=False, log=lambda s: None)
        fused = w / "fp32" / "model.onnx"
        smoothed = {}
        for cal, alpha in (("sample", 0.5), ("sample", 0.75), ("sample", 0.9), ("train", 0.75)):
            smoothed[cal, alpha] = w / f"smooth-{cal}-{alpha}.onnx"
            _smooth(fused, smoothed[cal, alpha], calib[cal], clf.pad_id, alpha)
        print("building the variants ...", file=sys.stderr)
        variants = {
            "onnx-fp32": fused,
            "s8-7bit": quantize(fused, w / "s8.onnx"),
            "smooth-0.5": quantize(smoothed["sample", 0.5], w / "sm05.onnx"),
            "smooth-0.75": quantize(smoothed["sample", 0.75], w / "sm075.onnx"),
            "smooth-0.9": quantize(smoothed["sample", 0.9], w / "sm09.onnx"),
            "smooth-0.75-train": quantize(smoothed["train", 0.75], w / "sm075t.onnx"),
            "u8-8bit": quantize(smoothed["sample", 0.75], w / "u8.onnx", unsigned=True, reduce_range=False),
            "s8-8bit": quantize(smoothed["sample", 0.75], w / "s8f.onnx", reduce_range=False),
            "s8-8bit-emb": quantize(smoothed["sample", 0.75], w / "s8fe.onnx", reduce_range=False,
                                    exclude=["EmbedLayerNormalization_0"]),
            "s8-8bit-emb-ffn2": quantize(smoothed["sample", 0.75], w / "s8fef.onnx", reduce_range=False,
                                         exclude=["EmbedLayerNormalization_0"] + ffn2_early),
            "u8-train-emb": quantize(smoothed["train", 0.75], w / "u8te.onnx", unsigned=True, reduce_range=False,
                                     exclude=["EmbedLayerNormalization_0"]),
            "u8-train-emb-ffn2": quantize(smoothed["train", 0.75], w / "u8tef.onnx", unsigned=True,
                                          reduce_range=False, exclude=["EmbedLayerNormalization_0"] + ffn2_early),
        }
        # per-block variants start from a graph fused without attention fusion
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        cfg = clf.model.config
        opts = FusionOptions("bert")
        opts.enable_attention = False
        raw = w / "raw"
        export_onnx(str(src), str(raw), int8=False, optimize=False, log=lambda s: None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            noattn = optimize_model(str(raw / "model.onnx"), model_type="bert", num_heads=cfg.num_attention_heads,
                                    hidden_size=cfg.hidden_size, opt_level=0, optimization_options=opts)
            noattn.save_model_to_file(str(w / "noattn.onnx"))
        for block in (32, 128):
            path = blockwise(w / "noattn.onnx", w / f"block{block}.onnx", block)
            if path is None:
                print("per-block variants skipped: pip install onnx-ir", file=sys.stderr)
                break
            variants[f"block{block}"] = path

        import torch

        engines = {"torch": lambda x: predict_logits(clf.model, x, clf.pad_id, 64),
                   "torch-bf16": lambda x: predict_logits(clf.model, x, clf.pad_id, 64, autocast_dtype=torch.bfloat16)}
        for name, path in variants.items():
            m = OnnxClassifierModel(path, len(clf.labels), spin=False)
            engines[name] = (lambda m: lambda x: m.predict_logits(x, clf.pad_id, 64))(m)
        for f in engines.values():
            f(ids[:128])
        seconds = dict.fromkeys(engines, 0.0)
        logits = {k: [] for k in engines}
        print(f"scoring {len(ids)} reviews with {len(engines)} engines ...", file=sys.stderr)
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            for name, f in engines.items():
                t = time.perf_counter()
                logits[name].append(f(part))
                seconds[name] += time.perf_counter() - t
        ref = np.concatenate(logits["torch"])
        rows = []
        for name in engines:
            lg = np.concatenate(logits[name])
            size = variants[name].stat().st_size if name in variants else None
            rows.append({"variant": name, "agreement": float((lg.argmax(1) == ref.argmax(1)).mean()),
                         "mean_abs_logit_diff": float(np.abs(lg - ref).mean()),
                         "max_abs_logit_diff": float(np.abs(lg - ref).max()),
                         "accuracy": float((lg.argmax(1) == y).mean()), "texts_per_s": len(ids) / seconds[name],
                         "x_torch": seconds["torch"] / seconds[name], "size_mb": size / 1e6 if size else None})
        p = np.exp(ref - ref.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        top = p.max(1)
        print(f"\ndevice: {cpu.describe()}")
        print(f"model {src}; {len(ids)} NSMC test reviews; torch predictions within 0.05 of 0.5: "
              f"{(top < 0.55).mean():.1%}, within 0.02: {(top < 0.52).mean():.1%}")
        print(f"{'variant':<20} {'agree':>7} {'mean dlogit':>11} {'max dlogit':>10} {'accuracy':>8} {'texts/s':>8} "
              f"{'x torch':>7} {'MB':>6}")
        for r in rows:
            mb = f"{r['size_mb']:.1f}" if r["size_mb"] else "-"
            print(f"{r['variant']:<20} {r['agreement']:>7.2%} {r['mean_abs_logit_diff']:>11.3f} "
                  f"{r['max_abs_logit_diff']:>10.3f} {r['accuracy']:>8.4f} {r['texts_per_s']:>8.1f} "
                  f"{r['x_torch']:>7.2f} {mb:>6}")

        sens = {}
        if args.sensitivity:
            import onnx

            sub = ids[:400]
            sub_ref = ref[:400]
            names = [n.name for n in onnx.load(str(smoothed["sample", 0.75])).graph.node
                     if n.op_type in ("MatMul", "Attention", "EmbedLayerNormalization")]
            print(f"\nsensitivity: each of {len(names)} nodes quantized alone (SmoothQuant 0.75 graph), "
                  f"mean |logit error| on {len(sub)} reviews", file=sys.stderr)
            for n in names:
                one = quantize(smoothed["sample", 0.75], w / "one.onnx", include=[n])
                lg = OnnxClassifierModel(one, len(clf.labels), spin=False).predict_logits(sub, clf.pad_id, 64)
                sens[n] = float(np.abs(lg - sub_ref).mean())
            print("\nmean |logit error| with one node in int8 (largest first):")
            for n, v in sorted(sens.items(), key=lambda kv: -kv[1]):
                print(f"  {v:.4f}  {n}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": cpu.describe(), "cpu": cpu.summary(), "model": str(src), "n": len(ids), "variants": rows,
                                               "sensitivity": sens}, indent=2))
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
