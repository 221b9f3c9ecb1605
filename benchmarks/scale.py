"""Training on large Parquet corpora: the token store's build time and size, a run's time to its first optimizer
step cold (store built) and warm (store reused), and peak RSS, per corpus size (issue 32).

    python -m benchmarks.scale                          # 100k and 300k rows (minutes on 2 cores)
    python -m benchmarks.scale --sizes 1e6,3e6,1e7      # the issue's sizes, for an idle machine
    python -m benchmarks.scale --sizes 3e5 --no-store   # the same runs with token ids in memory, to compare

Corpora are synthetic, from NSMC's training reviews: row k joins review k mod n with another review (so texts
are unique and twice a review's length), label of the first; written as Parquet in row groups of 100,000 rows.
Every run is `bertclf train --max-steps 20` of the builtin model (vocabulary trimmed to the corpus, as by
default) with a 1,000-row validation file, under /usr/bin/time -v for its peak RSS; `--procs 2` runs it with
torchrun (gloo), where /usr/bin/time reports the largest process.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO, nsmc

ROW_GROUP = 100_000


def write_corpus(path: Path, n_rows: int, start: int = 0) -> Path:
    """n_rows synthetic reviews as Parquet (see the module docstring), written a row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.is_file():
        return path
    ds = nsmc("train")
    texts, labels, n = ds.texts, ds.labels, len(ds.texts)
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, pa.schema([("text", pa.string()), ("label", pa.string())])) as w:
        for lo in range(start, start + n_rows, ROW_GROUP):
            ks = range(lo, min(start + n_rows, lo + ROW_GROUP))
            rows = [(texts[k % n] + " " + texts[(k % n + 1 + k // n) % n], labels[k % n]) for k in ks]
            w.write_table(pa.table({"text": [t for t, _ in rows], "label": [y for _, y in rows]}))
    tmp.rename(path)
    return path


def run_train(corpus: Path, valid: Path, out: Path, cache: Path, store: bool, procs: int, steps: int) -> dict:
    """One timed `bertclf train`; returns wall seconds, peak RSS (MB), seconds to the first optimizer step, and
    the token store lines it printed. The builtin model is named by its folder in the usual cache (the run's own
    BERTCLF_CACHE, fresh for a cold run, holds only its token stores)."""
    from bertclf.models.builtin import builtin_model_path

    model = builtin_model_path("me5-small", log=lambda s: None)
    args = ["--train", str(corpus), "--valid", str(valid), "--out", str(out), "--overwrite", "--max-steps",
            str(steps), "--log-every", "1", "--ngram", "off", "--no-calibrate",
            "--model", str(model), "--trim-vocab",
            "--token-store", "on" if store else "off"]
    launch = [sys.executable, "-m", "bertclf", "train"] if procs == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "-m", "bertclf", "train"]
    env = os.environ | {"BERTCLF_CACHE": str(cache), "BERTCLF_NO_PROGRESS": "1", "PYTHONPATH": str(REPO)}
    t0 = time.time()
    res = subprocess.run(["/usr/bin/time", "-v", *launch, *args], env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if res.returncode != 0:
        raise SystemExit(f"train failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
    first = next(json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()
                 if json.loads(x).get("step") == 1 and "loss" in json.loads(x))
    said = res.stdout + res.stderr
    return {"wall_s": round(wall, 1), "rss_mb": round(rss_kb / 1024), "first_step_s": round(first["elapsed_s"], 1),
            "store": [ln.strip() for ln in said.splitlines() if ln.strip().startswith("token store:")],
            "tokenized": next((ln.strip() for ln in said.splitlines() if "tokenized in" in ln), "")}


def store_numbers(cache: Path) -> dict:
    """Bytes per row and build rows/s of the largest store in the cache (the training rows')."""
    metas = [json.loads(p.read_text()) for p in (cache / "token-store").glob("*/meta.json")]
    meta = max(metas, key=lambda m: m["rows"])
    return {"rows": meta["rows"], "bytes_per_row": round(meta["bytes"] / meta["rows"], 1),
            "tokens_per_row": round(meta["tokens"] / meta["rows"], 1), "build_s": meta["build_seconds"],
            "build_rows_per_s": round(meta["rows"] / meta["build_seconds"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e5,3e5", help="corpus rows, comma-separated (default 1e5,3e5)")
    ap.add_argument("--work", default="/tmp/bertclf-scale", help="corpora, caches and runs go here")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--procs", type=int, default=1, help="processes per run (2: torchrun, gloo)")
    ap.add_argument("--no-store", action="store_true", help="also run each size with token ids in memory")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    valid = write_corpus(work / "valid-1000.parquet", 1000, start=10_000_000)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} cores; {a.procs} process(es), {a.steps} steps of me5-small")
    table = []
    for size in [int(float(s)) for s in a.sizes.split(",")]:
        corpus = write_corpus(work / f"corpus-{size}.parquet", size)
        cache = work / f"cache-{size}"
        shutil.rmtree(cache, ignore_errors=True)
        row = {"rows": size, "parquet_mb": round(corpus.stat().st_size / 1e6, 1)}
        for name, store in (("cold", True), ("warm", True)) + ((("memory", False),) if a.no_store else ()):
            row[name] = run_train(corpus, valid, work / "run", cache, store, a.procs, a.steps)
            print(json.dumps({"rows": size, name: row[name]}, ensure_ascii=False), flush=True)  # as they come
        row["store"] = store_numbers(cache)
        table.append(row)
    print("| rows | store B/row | build rows/s | first step cold / warm (s) | wall cold / warm (s) | peak RSS "
          "cold / warm (MB) | ids in memory: first step (s), RSS (MB) |\n|---|---|---|---|---|---|---|")
    for r in table:
        mem = f"{r['memory']['first_step_s']}, {r['memory']['rss_mb']}" if "memory" in r else "-"
        print(f"| {r['rows']:,} | {r['store']['bytes_per_row']} | {r['store']['build_rows_per_s']:,} | "
              f"{r['cold']['first_step_s']} / {r['warm']['first_step_s']} | {r['cold']['wall_s']} / "
              f"{r['warm']['wall_s']} | {r['cold']['rss_mb']} / {r['warm']['rss_mb']} | {mem} |")


if __name__ == "__main__":
    main()
