"""An int8 export against the model it was exported from: how many of its decisions int8 keeps.

    python benchmarks/int8_agreement.py runs/gpu-nsmc runs/gpu-nsmc-int8            # all 49,997 NSMC test reviews
    python benchmarks/int8_agreement.py SRC INT8 --n 2000 --json out.json
    python benchmarks/int8_agreement.py --kote [--steps 60,200,600] [--variants first] [--json out.json]

SRC INT8: on NSMC's test reviews, label agreement, each one's accuracy and the change (issue 13's step 4: target
>= 99.5% agreement, accuracy drop <= 0.3 pt). The source runs in torch fp32 (the reference the export's own check
uses), the export in onnxruntime; both through bertclf.inference.classifier.Classifier, as `bertclf predict` would. Rows whose
labels differ are listed with both probabilities of the source's label.

--kote: the measurement behind the multi-label default of `export --min-agreement` (quantize.py,
MIN_AGREEMENT_MULTI_LABEL). For each --steps value it fine-tunes me5-small multi-label (KOTE's 44 labels) for that
many optimizer steps at batch --train-batch-size on the first --train-rows rows of KOTE's header-less val.tsv
(--columns id,text,label; the multi-label defaults otherwise: 1/5 of the rows held out for validation and the
thresholds, the n-gram partner by --ngram auto), then runs `bertclf export --int8 --check FILE`
(bertclf.export.onnx_export.export_onnx) on the next --check-rows rows, written in the training's header-less format, once per
int8 variant of this CPU (--variants first: only the one the export tries first). It prints the export's own
check (the encoder's int8 graph against its fp32 graph, over the encoder's thresholds): the share of (text,
label) decisions int8 keeps (the gated measure), the share of texts whose whole label set it keeps, micro-F1
before and after, and "chance": the first variant's decisions against those of other rows (what an export that
ignored its input would score). Trained runs are kept in --work and reused when run again (on this project's
shared 2-core CPU each model took 6 to 33 min to train, with other work running).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("source", nargs="?")
    p.add_argument("int8", nargs="?")
    p.add_argument("--n", type=int, help="the first N test reviews (default: all)")
    p.add_argument("--data-dir", help="NSMC folder (default: BERTCLF_DATA_DIR or ../shared/data/nsmc)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", metavar="FILE")
    k = p.add_argument_group("--kote: multi-label")
    k.add_argument("--kote", action="store_true", help="train multi-label me5-small models on KOTE and measure "
                   "their int8 exports (no SRC INT8)")
    k.add_argument("--kote-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "kote"),
                   help="folder with KOTE's val.tsv and labels.txt (default ../shared/data/kote)")
    k.add_argument("--steps", default="60,200,600", help="optimizer steps of each model, comma-separated")
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--train-batch-size", type=int, default=16)
    k.add_argument("--train-rows", type=int, default=2000)
    k.add_argument("--check-rows", type=int, default=1000)
    k.add_argument("--variants", choices=("first", "all"), default="all")
    k.add_argument("--work", default="runs/int8-kote", help="trained runs and exports (kept, reused)")
    a = p.parse_args(argv)
    if a.kote:
        if a.source or a.int8:
            p.error("--kote trains its own models: give no SRC INT8")
        return kote(a)
    if not (a.source and a.int8):
        p.error("give SRC INT8 (a trained model directory and its int8 export), or --kote")

    from bertclf import cpu
    from bertclf.data import dataset as D
    from bertclf.inference.classifier import Classifier

    test = D.read_nsmc("test", a.data_dir, log=lambda s: None)
    texts, raw = test.texts[:a.n], test.labels[:a.n]
    res, probs = {}, {}
    for name, path, precision in (("source", a.source, "fp32"), ("int8", a.int8, "auto")):
        clf = Classifier.load(path, device="cpu", precision=precision)
        y = np.array([clf.labels.index(D.NSMC_LABELS.get(r, r)) for r in raw])
        t = time.perf_counter()
        probs[name] = clf.predict_proba(texts, a.batch_size)
        res[name] = {"path": path, "engine": f"{clf.backend} {clf.precision}", "accuracy": float(
            (probs[name].argmax(1) == y).mean()), "texts_per_s": len(texts) / (time.perf_counter() - t)}
    src, q = probs["source"].argmax(1), probs["int8"].argmax(1)
    differ = np.flatnonzero(src != q)
    res |= {"device": cpu.describe(), "n": len(texts), "agreement": float((src == q).mean()),
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
    from bertclf.export.quantize import variants

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
    tries = variants()
    tries = tries[:1] if a.variants == "first" else tries
    device = cpu.describe()
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


if __name__ == "__main__":
    sys.exit(main())
