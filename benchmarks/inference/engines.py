"""CPU inference, side by side: torch eager fp32 vs torch bf16 autocast vs ONNX fp32 vs ONNX int8, on NSMC test reviews.

    python -m benchmarks.inference.engines DIR [--n 5000] [--latency-n 200] [--work WORKDIR]

DIR is a trained model directory (config.json with labels, model.safetensors, tokenizer). Get one with e.g.

    bertclf train --data nsmc --model me5-small --trim-vocab --sample 0.1 --epochs 1 --out runs/x

(any fine-tune works: speed does not depend on how well it is trained; the accuracy columns do). The script
exports DIR with `bertclf.export.onnx_export.export_onnx` (fp32 and int8) into WORKDIR (default: a temporary directory;
an existing export there from the same DIR is reused with --reuse), then measures on the first N reviews of
NSMC's ratings_test.txt, every engine on the same pre-tokenized ids (tokenization is timed once, apart):

  * batch-1 latency p50 / p99 (ms): --latency-n reviews one at a time, engines interleaved text by text so a
    busy neighbour on the machine slows all engines alike;
  * batch-64 throughput (texts/s): the N reviews in blocks of --block (1,000), engines interleaved block by
    block, each block length-sorted and padded per batch as `bertclf predict` does; "texts/s" is over all
    blocks, "med/s" the median of the blocks' rates (steadier when other jobs share the machine);
  * engines: torch (fp32, the reference), torch-bf16 (bf16 autocast, what `bertclf predict` runs by default
    on CPUs with AMX / AVX-512 BF16; emulated and slow elsewhere), onnx-fp32, onnx-int8 (the variant the
    export picks on this CPU by its agreement check) and onnx-int8-VARIANT (one variant forced, e.g.
    onnx-int8-s8-7bit: see bertclf/export/quantize.py; benchmarks/inference/int8.py compares them all);
  * the CPU's model name and matrix features (bertclf/cpu.py), printed and stored in --json;
  * model size on disk, accuracy on the gold labels, label agreement with torch, max |probability difference|
    and max |logit difference| against torch;
  * ratios against torch eager: "x thru" (wall-clock texts/s at batch 64), "x cpu" (texts per CPU-second of
    this process: with --threads 1 it hardly moves when other jobs share the machine), "x p50" (batch-1 latency);
  * the ceiling this CPU puts on int8: one matrix product of the model's FFN shape at batch 64 (64 x mean
    tokens rows), timed in torch fp32 (MKL), onnxruntime fp32 and onnxruntime int8 (DynamicQuantizeMatMul,
    what the int8 export runs, activation quantization included): int8 cannot speed the whole model up by
    more than it speeds its matrix products up.
On a busy machine prefer --threads 1: multi-threaded torch (OpenMP) loses far more than onnxruntime when its
threads are preempted, which inflates the ratios.
Threads: torch and onnxruntime both get one thread per physical core (BERTCLF_THREADS overrides); idle
onnxruntime threads sleep rather than spin (otherwise they slow down whichever engine runs next).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine, nsmc_test, run
from bertclf.errors import UserError


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model_dir", metavar="DIR", help="trained model directory (see the module docstring)")
    p.add_argument("--n", type=int, default=5000, help="NSMC test reviews for throughput and accuracy")
    p.add_argument("--latency-n", type=int, default=200, help="reviews timed one at a time")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--block", type=int, default=1000, help="texts per turn of each engine (median over turns: med/s)")
    p.add_argument("--data-dir", help="folder with ratings_test.txt (default: BERTCLF_DATA_DIR, cache, shared/)")
    p.add_argument("--work", help="where the exports go (default: a temporary directory, removed at the end)")
    p.add_argument("--reuse", action="store_true", help="reuse exports already in --work")
    p.add_argument("--engines", default="torch,torch-bf16,onnx-fp32,onnx-int8",
                   help="comma list of torch, torch-bf16, onnx-fp32, onnx-int8, onnx-int8-VARIANT")
    p.add_argument("--threads", type=int, help="threads per engine (default: physical cores)")
    p.add_argument("--no-fuse", action="store_true", help="export without onnxruntime's BERT fusions")
    p.add_argument("--min-agreement", type=float, default=0.99, help="onnx-int8's export check (0: keep its first "
                   "variant whatever it agrees)")
    p.add_argument("--no-smooth", action="store_true", help="int8 without SmoothQuant scaling of activation outliers")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return p.parse_args(argv)


def export(src: Path, work: Path, name: str, args) -> Path:
    """onnx-fp32, onnx-int8 (the export's own choice) or onnx-int8-VARIANT, into work/name."""
    from bertclf.export.onnx_export import export_onnx
    from bertclf.export.quantize import variants

    out = work / name
    int8 = name.startswith("onnx-int8")
    forced = name[len("onnx-int8-"):] if name.startswith("onnx-int8-") else None
    every = {v.name: v for v in variants(True) + variants(False)}
    if forced and forced not in every:
        raise UserError(f"--engines {name}: no int8 variant {forced!r}; variants: {', '.join(every)}")
    opts = dict(optimize=not args.no_fuse, **({"smooth_alpha": None} if args.no_smooth else {}))
    if int8:
        opts |= {"min_agreement": 0.0 if forced else args.min_agreement,
                 "variants": [every[forced]] if forced else None}
    card = out / "bertclf.json"
    if args.reuse and card.is_file():
        exp = json.loads(card.read_text()).get("export", {})
        q = exp.get("quantization") or {}
        same = (exp.get("source") == str(src.resolve()) and exp.get("int8") == int8
                and exp.get("requested", {}).get("optimize", True) == opts["optimize"]
                and (not int8 or (not forced or q.get("variant") == forced)
                     and bool(q.get("smoothquant_alpha")) == (not args.no_smooth)))
        if same:
            print(f"reusing {out}", file=sys.stderr)
            return out
    t = time.time()
    export_onnx(str(src), str(out), int8=int8, log=lambda s: print("  " + s, file=sys.stderr), **opts)
    print(f"  export took {time.time() - t:.1f}s", file=sys.stderr)
    return out


class Engine:
    def __init__(self, name: str, path: Path, threads: int):
        from bertclf.inference.classifier import Classifier

        self.name, self.path = name, path
        if name.startswith("torch"):
            import torch

            torch.set_num_threads(threads)
            self.clf = Classifier.load(str(path), device="cpu", precision="bf16" if name == "torch-bf16" else "fp32")
            self.size = sum(f.stat().st_size for f in path.iterdir() if f.name.startswith("model.safetensors"))
        else:
            from bertclf.inference.onnx_model import OnnxClassifierModel

            self.clf = Classifier.load(str(path))
            # idle threads must not spin: the engines take turns, and spinning ones slow the next engine down
            self.clf.model = OnnxClassifierModel(path / "model.onnx", len(self.clf.labels), threads=threads, spin=False)
            self.size = sum(f.stat().st_size for f in path.iterdir() if f.name.startswith("model.onnx"))
        self.pad_id = self.clf.pad_id
        self.logits = None
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.block_rates: list[float] = []  # texts/s of each block: their median shrugs off a busy neighbour
        self.lat: list[float] = []

    def run(self, ids: list[np.ndarray], batch_size: int) -> np.ndarray:
        if self.name.startswith("torch"):
            from bertclf.models.forward import predict_logits

            return predict_logits(self.clf.model, ids, self.pad_id, batch_size, autocast_dtype=self.clf.autocast_dtype)
        return self.clf.model.predict_logits(ids, self.pad_id, batch_size)


def gemm_ceiling(m: int, k: int, n: int, threads: int, seconds: float = 1.5) -> dict:
    """GFLOP/s (GOP/s for int8) of one (m x k) @ (k x n) product: torch fp32 and bf16, onnxruntime fp32, int8
    with 7-bit weights (as on AVX2 CPUs) and with full-range 8-bit weights (as on VNNI/AMX CPUs)."""
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from bertclf.inference.onnx_model import session_options

    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    scale = (np.abs(w).max(0) / 63).astype(np.float32)  # 7-bit weights per column, as the export stores them
    wq = np.clip(np.round(w / scale), -64, 63).astype(np.int8)
    scale8 = (np.abs(w).max(0) / 127).astype(np.float32)
    wq8 = np.clip(np.round(w / scale8), -128, 127).astype(np.int8)

    def session(node, inits):
        graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(a, name) for name, a in inits.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                        helper.make_opsetid("com.microsoft", 1)])
        return ort.InferenceSession(model.SerializeToString(), session_options(threads, spin=False),
                                    providers=["CPUExecutionProvider"])

    fp32 = session(helper.make_node("MatMul", ["x", "w"], ["y"]), {"w": w})
    int8 = session(helper.make_node("DynamicQuantizeMatMul", ["x", "wq", "scale"], ["y"], domain="com.microsoft"),
                   {"wq": wq, "scale": scale})
    int8_full = session(helper.make_node("DynamicQuantizeMatMul", ["x", "wq", "scale"], ["y"], domain="com.microsoft"),
                        {"wq": wq8, "scale": scale8})
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    bx, bw = tx.bfloat16(), tw.bfloat16()
    engines = {"torch_fp32": lambda: torch.mm(tx, tw), "torch_bf16": lambda: torch.mm(bx, bw),
               "onnxruntime_fp32": lambda: fp32.run(None, {"x": x}),
               "onnxruntime_int8": lambda: int8.run(None, {"x": x}),
               "onnxruntime_int8_full": lambda: int8_full.run(None, {"x": x})}
    torch.set_num_threads(threads)
    out = {}
    for name, f in engines.items():
        for _ in range(3):
            f()
        reps, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            f()
            reps += 1
        out[name] = 2 * m * k * n * reps / (time.perf_counter() - t) / 1e9
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    from bertclf import cpu
    from scipy.special import softmax
    from bertclf.models.resolve import check_model_dir
    from bertclf.inference.onnx_model import physical_cores
    from bertclf.data.tokens import encode

    src = check_model_dir(Path(args.model_dir))
    if (src / "model.onnx").is_file():
        raise UserError(f"{src}: give the trained (torch) model directory, not an export")
    threads = args.threads or physical_cores()
    names = [e.strip() for e in args.engines.split(",") if e.strip()]
    if "torch" not in names:
        names.insert(0, "torch")  # the reference for every comparison
    unknown = [n for n in names if n not in ("torch", "torch-bf16", "onnx-fp32") and not n.startswith("onnx-int8")]
    if unknown:
        raise UserError(f"--engines: unknown engine(s) {', '.join(unknown)}; see --help")
    print(f"device: {machine(threads)}", file=sys.stderr)

    tmp = None
    if args.work:
        work = Path(args.work)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bertclf-bench.")
        work = Path(tmp.name)
    paths = {"torch": src, "torch-bf16": src}
    for name in names:
        if name.startswith("onnx-"):
            print(f"exporting {name} ...", file=sys.stderr)
            paths[name] = export(src, work, name, args)

    engines = [Engine(name, paths[name], threads) for name in names]
    clf = engines[0].clf
    texts, y = nsmc_test(args.n, args.data_dir, clf.labels)
    t = time.perf_counter()
    ids = encode(clf.tokenizer, texts, clf.max_length)
    tok_s = time.perf_counter() - t
    n_tokens = int(sum(len(x) for x in ids))
    print(f"{len(texts)} reviews, {n_tokens / len(texts):.1f} tokens each on average; tokenizing took {tok_s:.2f}s; "
          f"{threads} threads per engine", file=sys.stderr)

    for e in engines:  # warm-up: first-call allocations, thread pools, lazy kernels
        e.run(ids[:2 * args.batch_size], args.batch_size)
        e.run(ids[:1], 1)

    # batch-1 latency, interleaved text by text
    rng = np.random.default_rng(0)
    lat_rows = rng.choice(len(ids), size=min(args.latency_n, len(ids)), replace=False)
    print(f"latency: {len(lat_rows)} reviews one at a time ...", file=sys.stderr)
    for i in lat_rows:
        for e in engines:
            t = time.perf_counter()
            e.run([ids[i]], 1)
            e.lat.append(time.perf_counter() - t)

    # batch-64 throughput, interleaved block by block
    print(f"throughput: {len(ids)} reviews in batches of {args.batch_size} ...", file=sys.stderr)
    for e in engines:
        e.logits = np.zeros((len(ids), len(clf.labels)), dtype=np.float32)
    block = args.block
    for start in range(0, len(ids), block):
        part = ids[start:start + block]
        for e in engines:
            t, c = time.perf_counter(), time.process_time()
            e.logits[start:start + len(part)] = e.run(part, args.batch_size)
            e.seconds += time.perf_counter() - t
            e.block_rates.append(len(part) / (time.perf_counter() - t))
            e.cpu_seconds += time.process_time() - c
        print(f"  {min(start + block, len(ids))}/{len(ids)}: " + ", ".join(
            f"{e.name} {(start + len(part)) / e.seconds:.0f}/s" for e in engines), file=sys.stderr)

    ref = engines[0]
    p_ref = softmax(ref.logits, axis=1)
    results = []
    for e in engines:
        p = softmax(e.logits, axis=1)
        lat = np.array(e.lat) * 1000
        r = {"engine": e.name, "path": str(e.path), "size_mb": e.size / 1e6,
             "latency_p50_ms": float(np.percentile(lat, 50)), "latency_p99_ms": float(np.percentile(lat, 99)),
             "throughput": len(ids) / e.seconds, "throughput_median_block": float(np.median(e.block_rates)),
             "texts_per_cpu_second": len(ids) / e.cpu_seconds,
             "accuracy": float((e.logits.argmax(1) == y).mean()) if y.min() >= 0 else None,
             "agreement": float((e.logits.argmax(1) == ref.logits.argmax(1)).mean()),
             "max_prob_diff": float(np.abs(p - p_ref).max()),
             "max_logit_diff": float(np.abs(e.logits - ref.logits).max())}
        results.append(r)
    base = results[0]
    for r in results:
        r["speedup_throughput"] = r["throughput"] / base["throughput"]
        r["speedup_median_block"] = r["throughput_median_block"] / base["throughput_median_block"]
        r["speedup_cpu"] = r["texts_per_cpu_second"] / base["texts_per_cpu_second"]
        r["speedup_latency_p50"] = base["latency_p50_ms"] / r["latency_p50_ms"]
        r["size_ratio"] = r["size_mb"] / base["size_mb"]

    import onnxruntime
    import torch

    cfg = json.loads((src / "config.json").read_text())
    hidden = cfg["hidden_size"]
    shape = (args.batch_size * round(n_tokens / len(ids)), hidden, cfg.get("intermediate_size", 4 * hidden))
    print(f"matrix-product ceiling: {shape[0]} x {shape[1]} @ {shape[1]} x {shape[2]} ...", file=sys.stderr)
    gemm = gemm_ceiling(*shape, threads)

    print(f"\ndevice: {cpu.describe(threads)}")
    print(f"model {src}; {len(ids)} NSMC test reviews (latency: {len(lat_rows)}); batch {args.batch_size}; "
          f"{threads} threads; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
    hdr = (f"{'engine':<18} {'size MB':>8} {'p50 ms':>7} {'p99 ms':>7} {'texts/s':>8} {'x thru':>6} {'x cpu':>6} "
           f"{'x p50':>6} {'med/s':>7} {'x med':>6} "
           f"{'accuracy':>8} {'agree':>7} {'max dP':>8} {'max dlogit':>10}")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        acc = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "-"
        print(f"{r['engine']:<18} {r['size_mb']:>8.1f} {r['latency_p50_ms']:>7.2f} {r['latency_p99_ms']:>7.2f} "
              f"{r['throughput']:>8.1f} {r['speedup_throughput']:>6.2f} {r['speedup_cpu']:>6.2f} "
              f"{r['speedup_latency_p50']:>6.2f} {r['throughput_median_block']:>7.1f} {r['speedup_median_block']:>6.2f} "
              f"{acc:>8} {r['agreement']:>7.2%} {r['max_prob_diff']:>8.2g} {r['max_logit_diff']:>10.2g}")
    print(f"\nmatrix product {shape[0]} x {shape[1]} @ {shape[1]} x {shape[2]} (the FFN at batch {args.batch_size}), "
          f"{threads} threads: torch fp32 {gemm['torch_fp32']:.0f} GFLOP/s, torch bf16 {gemm['torch_bf16']:.0f} "
          f"({gemm['torch_bf16'] / gemm['torch_fp32']:.2f}x), onnxruntime fp32 {gemm['onnxruntime_fp32']:.0f}, "
          f"onnxruntime int8 {gemm['onnxruntime_int8']:.0f} GOP/s with 7-bit weights "
          f"({gemm['onnxruntime_int8'] / gemm['torch_fp32']:.2f}x), {gemm['onnxruntime_int8_full']:.0f} with 8-bit "
          f"weights ({gemm['onnxruntime_int8_full'] / gemm['torch_fp32']:.2f}x torch fp32): the most each can gain "
          f"on the model's matrix products on this CPU")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": cpu.describe(threads), "cpu": cpu.summary(),
                                               "model": str(src), "n": len(ids), "latency_n": len(lat_rows),
                                               "batch_size": args.batch_size, "threads": threads,
                                               "tokenize_seconds": tok_s, "results": results,
                                               "matrix_product": {"shape": shape, "gflops": gemm}}, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    run(main)
