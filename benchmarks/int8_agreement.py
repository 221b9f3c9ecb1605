"""An int8 export against the model it was exported from, on NSMC's test reviews: label agreement, each one's
accuracy and the change (issue 13's step 4: target >= 99.5% agreement, accuracy drop <= 0.3 pt).

    python benchmarks/int8_agreement.py runs/gpu-nsmc runs/gpu-nsmc-int8            # all 49,997 reviews
    python benchmarks/int8_agreement.py SRC INT8 --n 2000 --json out.json

The source runs in torch fp32 (the reference the export's own check uses), the export in onnxruntime; both
through bertclf.predict.Classifier, as `bertclf predict` would. Rows whose labels differ are listed with both
probabilities of the source's label.
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
    p.add_argument("source")
    p.add_argument("int8")
    p.add_argument("--n", type=int, help="the first N test reviews (default: all)")
    p.add_argument("--data-dir", help="NSMC folder (default: BERTCLF_DATA_DIR or ../shared/data/nsmc)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", metavar="FILE")
    a = p.parse_args(argv)

    from bertclf import cpu
    from bertclf import data as D
    from bertclf.predict import Classifier

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


if __name__ == "__main__":
    sys.exit(main())
