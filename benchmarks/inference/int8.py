"""Int8 fidelity: which quantization choices keep a model's decisions, and what an int8 export keeps.

    python -m benchmarks.inference.int8 variants DIR [--n 2000] [--calib-n 256] [--sensitivity]
    python -m benchmarks.inference.int8 agreement SRC INT8 [--n 2000] [--json out.json]
    python -m benchmarks.inference.int8 kote [--steps 60,200,600] [--variants first] [--json out.json]

variants: DIR is a trained model directory (e.g. runs/nsmc-cpu from `make nsmc`). It exports DIR once to the
fused fp32 ONNX graph (bertclf.export.onnx_export, as `bertclf export --onnx` does), builds every variant from
that graph, and scores the first N NSMC test reviews with each: label agreement with torch, mean and max |logit
difference|, accuracy, and texts/s at batch 64 (engines in turn, block by block, so machine noise hits all
alike; "x torch" is against torch eager fp32 in the same run; torch-bf16 is bf16 autocast). The variants:

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

agreement: an existing int8 export INT8 against the model SRC it was exported from, on NSMC's test reviews
(all by default): label agreement, each one's accuracy and the change. SRC runs in torch fp32 (the reference the
export's own check uses), INT8 in onnxruntime, both through bertclf.inference.classifier.Classifier as `bertclf
predict` would; rows whose labels differ are listed with both probabilities of the source's label.

kote: the measurement behind the multi-label default of `export --min-agreement` (bertclf/export/quantize.py,
MIN_AGREEMENT_MULTI_LABEL). For each --steps value it fine-tunes me5-small multi-label (KOTE's 44 labels) for that
many optimizer steps at batch --train-batch-size on the first --train-rows rows of KOTE's header-less val.tsv
(--columns id,text,label; the multi-label defaults otherwise), then runs `bertclf export --int8 --check FILE` on
the next --check-rows rows, once per int8 variant of this CPU (--variants first: only the one the export tries
first). It prints the export's own check: the share of (text, label) decisions int8 keeps (the gated measure),
the share of texts whose whole label set it keeps, micro-F1 before and after, and "chance": the first variant's
decisions against those of other rows (what an export that ignored its input would score). Trained runs are kept
in --work and reused when run again (each takes minutes to train on a 2-core CPU).

Every output starts with the machine line (bertclf/cpu.py).
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

from benchmarks.common import SHARED, machine, nsmc, nsmc_label_ids, nsmc_test, run
from bertclf.errors import UserError


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("variants", help="every int8 variant of one model, side by side")
    v.add_argument("model_dir", metavar="DIR", help="trained model directory")
    v.add_argument("--n", type=int, default=2000, help="NSMC test reviews scored by every variant")
    v.add_argument("--calib-n", type=int, default=256, help="NSMC training reviews for the *-train calibrations")
    v.add_argument("--data-dir", help="folder with ratings_train.txt and ratings_test.txt")
    v.add_argument("--sensitivity", action="store_true", help="also quantize each product alone")
    v.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    g = sub.add_parser("agreement", help="an int8 export against the model it was exported from")
    g.add_argument("source", metavar="SRC")
    g.add_argument("int8", metavar="INT8")
    g.add_argument("--n", type=int, help="the first N test reviews (default: all)")
    g.add_argument("--data-dir", help="NSMC folder (default: BERTCLF_DATA_DIR or ../shared/data/nsmc)")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--json", metavar="FILE")
    k = sub.add_parser("kote", help="train multi-label me5-small models on KOTE and measure their int8 exports")
    k.add_argument("--kote-dir", default=str(SHARED / "kote"),
                   help="folder with KOTE's val.tsv and labels.txt (default ../shared/data/kote)")
    k.add_argument("--steps", default="60,200,600", help="optimizer steps of each model, comma-separated")
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--train-batch-size", type=int, default=16)
    k.add_argument("--train-rows", type=int, default=2000)
    k.add_argument("--check-rows", type=int, default=1000)
    k.add_argument("--variants", choices=("first", "all"), default="all")
    k.add_argument("--work", default="runs/int8-kote", help="trained runs and exports (kept, reused)")
    k.add_argument("--json", metavar="FILE")
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


def variants(args) -> int:
    """The variants table (and --sensitivity) on DIR."""
    logging.disable(logging.WARNING)
    from bertclf import cpu

    print(f"device: {machine()}", file=sys.stderr)
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
    clf = Classifier.load(str(src), device="cpu")
    texts, y = nsmc_test(args.n, args.data_dir, clf.labels)
    train = nsmc("train", args.data_dir)
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


def agreement(a) -> int:
    """SRC against its int8 export INT8 on NSMC test reviews."""
    from bertclf.inference.classifier import Classifier

    test = nsmc("test", a.data_dir)
    texts, names = test.texts[:a.n], test.labels[:a.n]
    res, probs = {}, {}
    for name, path, precision in (("source", a.source, "fp32"), ("int8", a.int8, "auto")):
        clf = Classifier.load(path, device="cpu", precision=precision)
        y = nsmc_label_ids(names, clf.labels)
        t = time.perf_counter()
        probs[name] = clf.predict_proba(texts, a.batch_size)
        res[name] = {"path": path, "engine": f"{clf.backend} {clf.precision}", "accuracy": float(
            (probs[name].argmax(1) == y).mean()), "texts_per_s": len(texts) / (time.perf_counter() - t)}
    src, q = probs["source"].argmax(1), probs["int8"].argmax(1)
    differ = np.flatnonzero(src != q)
    res |= {"device": machine(), "n": len(texts), "agreement": float((src == q).mean()),
            "accuracy_change_pt": 100 * (res["int8"]["accuracy"] - res["source"]["accuracy"]),
            "differing_rows": [{"row": int(i), "text": texts[i], "p_source": float(probs["source"][i, src[i]]),
                                "p_int8_same_label": float(probs["int8"][i, src[i]])} for i in differ[:50]]}
    print(f"device: {res['device']}; {len(texts)} NSMC test reviews")
    for name in ("source", "int8"):
        print(f"{name:<7} {res[name]['engine']:<12} accuracy {res[name]['accuracy']:.4f}  "
              f"{res[name]['texts_per_s']:.0f} texts/s")
    near = np.abs(probs["source"][differ, src[differ]] - 0.5)
    print(f"labels agree on {res['agreement']:.2%} ({len(differ)} differ; the source's probability is within 0.1 "
          f"of 0.5 on {int((near < 0.1).sum())} of them); accuracy change {res['accuracy_change_pt']:+.2f} pt")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, ensure_ascii=False))
    return 0


def kote(a) -> int:
    from bertclf import cpu
    from bertclf.export.onnx_export import export_onnx
    from bertclf.train.loop import TrainConfig, train
    from bertclf.inference.classifier import Classifier
    from bertclf.export.quantize import variants as int8_variants

    src = Path(a.kote_dir)
    lines = (src / "val.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    if len(lines) < a.train_rows + a.check_rows:
        raise SystemExit(f"{src / 'val.tsv'} has {len(lines)} rows, fewer than --train-rows + --check-rows")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    files = {"train": lines[:a.train_rows], "check": lines[a.train_rows:a.train_rows + a.check_rows]}
    for name, part in files.items():  # header-less, as KOTE comes
        f = work / f"{name}-{a.train_rows}.tsv"
        if not f.is_file() or f.read_text(encoding="utf-8") != "".join(part):
            f.write_text("".join(part), encoding="utf-8")
        files[name] = f
    tries = int8_variants()
    tries = tries[:1] if a.variants == "first" else tries
    device = machine()
    print(f"device: {device}", file=sys.stderr)
    results = []
    for steps in [int(x) for x in a.steps.split(",")]:
        run = work / f"me5-small-{a.train_rows}rows-{steps}steps-b{a.train_batch_size}-seed{a.seed}"
        if not (run / "bertclf.json").is_file():
            t = time.perf_counter()
            train(TrainConfig(out=str(run), train=str(files["train"]), columns=["id", "text", "label"],
                              multi_label=True, label_names=str(src / "labels.txt"), model="me5-small",
                              max_steps=steps, batch_size=a.train_batch_size, seed=a.seed, overwrite=True),
                  echo=lambda s: print(s, file=sys.stderr))
            print(f"trained {run} in {(time.perf_counter() - t) / 60:.1f} min", file=sys.stderr)
        card = json.loads((run / "bertclf.json").read_text(encoding="utf-8"))
        # the export holds the encoder alone (no n-gram partner): its own validation score
        ng = card.get("ngram") or {}
        valid_f1 = (ng["valid"]["encoder"] if ng.get("kept") and ng.get("metric") == "macro_f1"
                    else ((card.get("metrics") or {}).get("valid") or {}).get("macro_f1"))
        for n, v in enumerate(tries):
            out = work / f"{run.name}-int8-{v.name}"
            info = export_onnx(str(run), str(out), int8=True, log=lambda s: print(s, file=sys.stderr),
                               check=str(files["check"]), min_agreement=0.0, variants=[v])
            k = info["int8_check"]
            if n == 0:  # what an export that ignored its input would score: its decisions against other rows'
                clf = Classifier.load(str(out), ngram=False)  # the encoder, over its own thresholds, as checked
                texts = [line.split("\t")[1] for line in files["check"].read_text(encoding="utf-8").splitlines()]
                d = clf.task.decide(clf.predict_proba(texts))
                rng = np.random.default_rng(0)
                chance = float(np.mean([(d == d[rng.permutation(len(d))]).mean() for _ in range(20)]))
            results.append({"steps": steps, "batch_size": a.train_batch_size, "seed": a.seed,
                            "train_rows": card["data"]["train"]["rows"], "valid_rows": card["data"]["valid"]["rows"],
                            "valid_macro_f1": valid_f1,
                            "variant": v.name, "check_rows": k["rows"], "labels": k["labels"],
                            "agreement": k["agreement"], "set_agreement": k["set_agreement"],
                            "micro_f1_fp32": k["micro_f1_fp32"], "micro_f1_int8": k["micro_f1_int8"],
                            "mean_abs_logit_diff": k["tried"][-1]["mean_abs_logit_diff"],
                            "positive_share": float(d.mean()), "chance_agreement": chance})
    print(f"device: {device}")
    print(f"me5-small multi-label on KOTE (44 labels), {a.train_rows} header-less rows (train + validation), seed "
          f"{a.seed}, batch {a.train_batch_size}; int8 vs fp32 on the next {a.check_rows} rows (export --check); "
          f"chance: the first variant's decisions against those of other rows (an export that ignored its input)")
    print(f"{'steps':>5} {'valid macro-F1':>14} {'variant':<18} {'decisions agree':>15} {'sets equal':>10} "
          f"{'micro-F1 fp32 -> int8':>22} {'chance':>7}")
    for r in results:
        print(f"{r['steps']:>5} {r['valid_macro_f1'] or float('nan'):>14.3f} {r['variant']:<18} "
              f"{r['agreement']:>15.2%} {r['set_agreement']:>10.2%} {r['micro_f1_fp32']:>13.3f} -> "
              f"{r['micro_f1_int8']:.3f} {r['chance_agreement']:>7.2%}")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": device, "cpu": cpu.summary(), "results": results}, indent=2))
    return 0


def main(argv=None) -> int:
    a = parse_args(argv)
    return {"variants": variants, "agreement": agreement, "kote": kote}[a.command](a)


if __name__ == "__main__":
    run(main)
