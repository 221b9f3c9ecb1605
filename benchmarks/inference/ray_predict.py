"""texts/s of `bertclf predict` local vs `--engine ray --workers N`, side by side on the same file.

    python -m benchmarks.inference.ray_predict MODEL_DIR                 # 5,000 NSMC test rows, 2 Ray workers
    python -m benchmarks.inference.ray_predict MODEL_DIR --rows 20000 --workers 4
    RAY_ADDRESS=HOST:PORT python -m benchmarks.inference.ray_predict ... # join a running cluster instead

Each run is the whole command, as a user sees it (Python start, model load, Ray start-up and actors
included), so the Ray figure carries its fixed cost; the output says how long that cost was by also timing
a 1-row Ray run. Also checks that the two outputs agree (rows, texts, labels; max probability difference).
Texts: ratings_test.txt, found as bertclf finds it (--data-dir, $BERTCLF_DATA_DIR, the cache, ../shared/data/nsmc).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, nsmc_file, run


def head_rows(src: Path, out: Path, rows: int) -> Path:
    with open(src, encoding="utf-8") as f, open(out, "w", encoding="utf-8") as g:
        for i, line in enumerate(f):
            if i > rows:
                break
            g.write(line)
    return out


def timed_predict(model: str, inp: Path, out: Path, *extra: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bertclf", "predict", model, "--input", str(inp), "--output", str(out),
                    *extra], check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data-dir")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        inp = head_rows(nsmc_file("test", a.data_dir), d / "in.tsv", a.rows)
        one = head_rows(nsmc_file("test", a.data_dir), d / "one.tsv", 1)
        ray_args = ("--engine", "ray", "--workers", str(a.workers))
        s_local = timed_predict(a.model_dir, inp, d / "local.jsonl")
        s_ray = timed_predict(a.model_dir, inp, d / "ray.jsonl", *ray_args)
        s_fixed = timed_predict(a.model_dir, one, d / "one.jsonl", *ray_args)
        local = [json.loads(x) for x in (d / "local.jsonl").read_text(encoding="utf-8").splitlines()]
        ray = [json.loads(x) for x in (d / "ray.jsonl").read_text(encoding="utf-8").splitlines()]
    same = len(local) == len(ray) and all((x["row"], x["text"], x["label"]) == (y["row"], y["text"], y["label"])
                                          for x, y in zip(local, ray))
    dp = max(abs(x["probabilities"][k] - y["probabilities"][k]) for x, y in zip(local, ray) for k in x["probabilities"])
    n = len(local)
    print(f"{machine()}; rows {n}, cpu cores {os.cpu_count()}, RAY_ADDRESS {os.environ.get('RAY_ADDRESS') or '(local cluster)'}")
    print(f"local:            {s_local:7.1f} s  {n / s_local:7.1f} texts/s")
    print(f"ray --workers {a.workers}:  {s_ray:7.1f} s  {n / s_ray:7.1f} texts/s  ({s_local / s_ray:.2f}x local)")
    print(f"ray, 1 row:       {s_fixed:7.1f} s  (start-up and actors: the fixed cost)")
    print(f"ray minus fixed:  {s_ray - s_fixed:7.1f} s  {n / max(s_ray - s_fixed, 1e-9):7.1f} texts/s")
    print(f"same rows, texts, labels: {same}; max |probability difference| {dp:.1e}")


if __name__ == "__main__":
    run(main)
