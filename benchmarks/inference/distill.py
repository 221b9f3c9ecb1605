"""Teacher vs distilled student vs the student's int8 export, side by side in one process, on NSMC test reviews.

    python -m benchmarks.inference.distill texts TEACHER --n 8000 --out more.txt   # unlabelled texts for --texts
    bertclf distill TEACHER --layers 6 --out STUDENT --texts more.txt --format lines ...
    bertclf export STUDENT --onnx --int8 --out STUDENT_INT8
    python -m benchmarks.inference.distill compare TEACHER STUDENT STUDENT_INT8 [--n 9999] [--latency-n 100]

`texts` writes NSMC training reviews that the teacher's own (sampled) training rows do not hold, one per line,
without labels: the teacher's rows are rebuilt from its bertclf.json as `bertclf distill` rebuilds them.

`compare` scores the three on the same rows of the teacher's test sample (NSMC test, --test-sample and seed from
the teacher's card: the rows both cards' test accuracy was measured on), using benchmarks/inference/engines.py's
engines: torch eager fp32 for teacher and student, onnxruntime for the int8 export. Batch-64 throughput with
the engines interleaved block by block (a busy neighbour slows all alike), batch-1 latency interleaved text by
text, accuracy, agreement with the teacher, size on disk; ratios against the teacher's torch eager rate.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine, nsmc, nsmc_label_ids, run
from benchmarks.inference.engines import Engine
from bertclf.errors import UserError


def teacher_config(teacher: Path):
    from bertclf.train.config import config_from_dict
    from bertclf.rundir.layout import read_card

    return config_from_dict(dict(read_card(teacher)["args"]) | {"test": None})


def write_texts(teacher: Path, n: int, out: Path, seed: int = 0) -> int:
    """n NSMC training reviews outside the teacher's training and validation rows, one per line."""
    from bertclf.data import dataset as D

    cfg = teacher_config(teacher)
    train, valid, _ = D.load_training_data(cfg, log=lambda s: None)
    used = set(train.texts) | set(valid.texts)
    every = nsmc("train", cfg.data_dir).texts
    rest = [t for t in dict.fromkeys(every) if t not in used and "\n" not in t and "\r" not in t]
    rng = np.random.default_rng(seed)
    chosen = [rest[i] for i in sorted(rng.choice(len(rest), size=min(n, len(rest)), replace=False))]
    out.write_text("".join(t + "\n" for t in chosen), encoding="utf-8")
    print(f"wrote {len(chosen)} of the {len(rest)} NSMC training reviews the teacher did not train on to {out}")
    return len(chosen)


def test_rows(teacher: Path, n: int, labels: list[str]) -> tuple[list[str], np.ndarray, str]:
    """The first n rows of the teacher's test sample (its card's --test-sample and --seed) with label ids."""
    from bertclf.data import dataset as D
    from bertclf.rundir.layout import read_card

    args = read_card(teacher)["args"]
    ds = D.sample(nsmc("test", args.get("data_dir")), args.get("test_sample", 1.0),
                  args.get("seed", 42), "--test-sample")
    y = nsmc_label_ids(ds.labels[:n], labels)
    return ds.texts[:n], y, f"the first {min(n, len(ds))} of the teacher's {len(ds)}-row test sample"


def compare(args) -> int:
    from bertclf.inference.onnx_model import physical_cores
    from bertclf.data.tokens import encode

    threads = args.threads or physical_cores()
    named = [("teacher torch", "torch", Path(args.teacher)), ("student torch", "torch", Path(args.student)),
             ("student int8 ONNX", "onnx-int8", Path(args.student_int8))]
    engines = []
    for label, kind, path in named:
        e = Engine(kind, path, threads)
        e.label = label
        engines.append(e)
    teacher = engines[0].clf
    if engines[2].clf.precision != "int8":
        raise UserError(f"{args.student_int8}: not an int8 export; make it with bertclf export --onnx --int8")
    texts, y, where = test_rows(Path(args.teacher), args.n, teacher.labels)
    ids = encode(teacher.tokenizer, texts, teacher.max_length)
    for e in engines[1:]:  # the student's tokenizer is the teacher's: the same ids (checked, not assumed)
        if not all(np.array_equal(a, b) for a, b in zip(encode(e.clf.tokenizer, texts[:50], e.clf.max_length), ids)):
            raise UserError(f"{e.path}: tokenizes otherwise than the teacher; is it a student of {engines[0].path}?")
    print(f"device: {machine(threads)}; {len(ids)} reviews ({where}), {threads} threads", file=sys.stderr)
    for e in engines:
        e.run(ids[:2 * args.batch_size], args.batch_size)
        e.run(ids[:1], 1)
    rng = np.random.default_rng(0)
    for i in rng.choice(len(ids), size=min(args.latency_n, len(ids)), replace=False):
        for e in engines:
            t = time.perf_counter()
            e.run([ids[i]], 1)
            e.lat.append(time.perf_counter() - t)
    for e in engines:
        e.logits = np.zeros((len(ids), len(teacher.labels)), dtype=np.float32)
    for start in range(0, len(ids), args.block):
        part = ids[start:start + args.block]
        for e in engines:
            t = time.perf_counter()
            e.logits[start:start + len(part)] = e.run(part, args.batch_size)
            e.seconds += time.perf_counter() - t
            e.block_rates.append(len(part) / (time.perf_counter() - t))
        print(f"  {start + len(part)}/{len(ids)}: " + ", ".join(f"{e.label} {(start + len(part)) / e.seconds:.0f}/s"
                                                                for e in engines), file=sys.stderr)
    return report(engines, y, where, threads, args)


def report(engines, y, where: str, threads: int, args) -> int:
    from bertclf import cpu
    from bertclf.rundir.layout import read_card

    ref = engines[0]
    rows = []
    for e in engines:
        card = read_card(e.path)
        test = (card.get("metrics") or {}).get("test") or {}
        rows.append({"model": e.label, "path": str(e.path), "size_mb": e.size / 1e6,
                     "layers": json.loads((e.path / "config.json").read_text()).get("num_hidden_layers"),
                     "accuracy": float((e.logits.argmax(1) == y).mean()),
                     "agreement_with_teacher": float((e.logits.argmax(1) == ref.logits.argmax(1)).mean()),
                     "card_test_accuracy": test.get("accuracy"), "card_test_n": test.get("n"),
                     "throughput": len(y) / e.seconds, "throughput_median_block": float(np.median(e.block_rates)),
                     "latency_p50_ms": float(np.percentile(np.array(e.lat) * 1000, 50)),
                     "int8_check": (card.get("export") or {}).get("int8_check")})
    for r in rows:
        r["x_teacher_throughput"] = r["throughput"] / rows[0]["throughput"]
        r["x_teacher_median_block"] = r["throughput_median_block"] / rows[0]["throughput_median_block"]
        r["x_teacher_p50"] = rows[0]["latency_p50_ms"] / r["latency_p50_ms"]
    print(f"\ndevice: {cpu.describe(threads)}; {len(y)} NSMC test reviews ({where}); batch {args.batch_size}; "
          f"{threads} threads; latency over {min(args.latency_n, len(y))} reviews one at a time")
    print("| model | layers | MB | accuracy | agrees with teacher | card test acc (n) | texts/s b64 | x teacher | "
          "median block/s | x teacher | p50 ms b1 | x teacher |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        card_acc = f"{r['card_test_accuracy']:.4f} ({r['card_test_n']})" if r["card_test_accuracy"] else "-"
        print(f"| {r['model']} | {r['layers']} | {r['size_mb']:.1f} | {r['accuracy']:.4f} | "
              f"{r['agreement_with_teacher']:.2%} | {card_acc} | {r['throughput']:.1f} | "
              f"{r['x_teacher_throughput']:.2f} | {r['throughput_median_block']:.1f} | "
              f"{r['x_teacher_median_block']:.2f} | {r['latency_p50_ms']:.1f} | {r['x_teacher_p50']:.2f} |")
    check = rows[2]["int8_check"]
    if check:
        print(f"\nthe int8 export's own check: variant {check.get('variant')}, labels agree with fp32 on "
              f"{check.get('agreement'):.2%} of {check.get('rows')} rows ({check.get('rows_from')})")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": cpu.describe(threads), "rows": rows, "n": len(y)}, indent=2))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("texts", help="write unlabelled NSMC training reviews the teacher did not train on")
    t.add_argument("teacher")
    t.add_argument("--n", type=int, default=8000)
    t.add_argument("--out", required=True)
    c = sub.add_parser("compare", help="teacher torch vs student torch vs student int8, side by side")
    c.add_argument("teacher")
    c.add_argument("student")
    c.add_argument("student_int8")
    c.add_argument("--n", type=int, default=9999, help="rows of the teacher's test sample")
    c.add_argument("--latency-n", type=int, default=100)
    c.add_argument("--batch-size", type=int, default=64)
    c.add_argument("--block", type=int, default=500)
    c.add_argument("--threads", type=int)
    c.add_argument("--json", metavar="FILE")
    a = p.parse_args(argv)
    if a.command == "texts":
        write_texts(Path(a.teacher), a.n, Path(a.out))
        return 0
    return compare(a)


if __name__ == "__main__":
    run(main)
