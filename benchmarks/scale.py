"""Training on large Parquet corpora: the token store's build time and size, a run's time to its first optimizer
step cold (file hashed, vocabulary trimmed, store built) and warm (all three reused), peak RSS of one process
and of each of two (torchrun, gloo), and whether the two ranks read disjoint rows (issue 32).

    python -m benchmarks.scale                                # 1M and 3M rows, 1 and 2 processes
    python -m benchmarks.scale --sizes 1e6,3e6,1e7            # and 10M (about 1 GB of Parquet, 2 GB of store)
    python -m benchmarks.scale --sizes 3e5 --no-store         # also each size with token ids in memory

Corpora are synthetic, from NSMC's training reviews: row k joins review k mod n with another review (so texts
are unique and twice a review's length), label of the first; written as Parquet in row groups of 100,000 rows.
Every run is `bertclf train --max-steps 20 --low-memory` of the builtin model (vocabulary trimmed to the corpus,
as by default) with a 1,000-row validation file, under /usr/bin/time -v for its peak RSS and CPU share (the
machine may be shared: the 1-minute load average before each run is printed beside it). The 2-process run is
warm (the store the 1-process runs built) and goes through tests/support/hooked_train.py, whose
BERTCLF_TEST_ROWS_READ hook writes each rank's rows and peak RSS.
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

if __package__ in (None, ""):  # `python benchmarks/scale.py` (issue 32's command) as well as `python -m benchmarks.scale`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import REPO, nsmc  # noqa: E402

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


def run_train(corpus: Path, valid: Path, out: Path, cache: Path, store: bool, procs: int, steps: int,
              low_memory: bool) -> dict:
    """One timed `bertclf train`; returns wall seconds, peak RSS (MB; the largest process), CPU share, seconds
    to the first optimizer step (train_log.jsonl's elapsed_s: from train() on, before the data is read), the
    token store lines it printed, and with procs > 1 each rank's rows and peak RSS. The builtin model is named
    by its folder in the usual cache (the run's own BERTCLF_CACHE, fresh for a cold run, holds its token
    stores, trims and file hashes)."""
    from bertclf.models.builtin import builtin_model_path

    model = builtin_model_path("me5-small", log=lambda s: None)
    args = ["--train", str(corpus), "--valid", str(valid), "--out", str(out), "--overwrite", "--max-steps",
            str(steps), "--log-every", "1", "--ngram", "off", "--no-calibrate",
            "--model", str(model), "--trim-vocab", "--token-store", "on" if store else "off"]
    args += ["--low-memory"] if low_memory else []
    hooked = REPO / "tests" / "support" / "hooked_train.py"
    launch = [sys.executable, "-m", "bertclf", "train"] if procs == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), str(hooked), "train"]
    rows_dir = out.parent / "rows-read"
    shutil.rmtree(rows_dir, ignore_errors=True)
    rows_dir.mkdir(parents=True)
    env = os.environ | {"BERTCLF_CACHE": str(cache), "BERTCLF_NO_PROGRESS": "1", "PYTHONPATH": str(REPO),
                        "BERTCLF_TEST_ROWS_READ": str(rows_dir)}
    load = os.getloadavg()[0]
    t0 = time.time()
    res = subprocess.run(["/usr/bin/time", "-v", *launch, *args], env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if res.returncode != 0:
        raise SystemExit(f"train failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
    cpu = re.search(r"Percent of CPU this job got: (\d+)%", res.stderr).group(1)
    first = next(json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()
                 if json.loads(x).get("step") == 1 and "loss" in json.loads(x))
    said = res.stdout + res.stderr
    row = {"wall_s": round(wall, 1), "rss_mb": round(rss_kb / 1024), "cpu_percent": int(cpu),
           "load_before": round(load, 2), "first_step_s": round(first["elapsed_s"], 1),
           "store": [ln.strip() for ln in said.splitlines() if ln.strip().startswith("token store:")],
           "tokenized": next((ln.strip() for ln in said.splitlines() if "tokenized in" in ln), "")}
    if procs > 1:
        ranks = [json.loads((rows_dir / f"rows-{r}.json").read_text()) for r in range(procs)]
        read = [set(r["rows"]) for r in ranks]
        row |= {"rank_rss_mb": [r["peak_rss_mb"] for r in ranks], "rank_rows": [len(r["rows"]) for r in ranks],
                "disjoint": not set.intersection(*read) and all(len(r["rows"]) == len(s) for r, s in zip(ranks, read))}
    return row


def store_numbers(cache: Path) -> dict:
    """Bytes per row and build rows/s of the largest store in the cache (the training rows')."""
    metas = [json.loads(p.read_text()) for p in (cache / "token-store").glob("*/meta.json")]
    meta = max(metas, key=lambda m: m["rows"])
    return {"rows": meta["rows"], "bytes_per_row": round(meta["bytes"] / meta["rows"], 1),
            "tokens_per_row": round(meta["tokens"] / meta["rows"], 1), "build_s": meta["build_seconds"],
            "build_rows_per_s": round(meta["rows"] / meta["build_seconds"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e6,3e6", help="corpus rows, comma-separated (default 1e6,3e6)")
    ap.add_argument("--work", default="/tmp/scale-bench", help="corpora, caches and runs go here")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--procs", type=int, default=2, help="processes of the warm multi-process run (0: none)")
    ap.add_argument("--no-low-memory", action="store_true", help="train without --low-memory")
    ap.add_argument("--no-store", action="store_true", help="also run each size with token ids in memory")
    ap.add_argument("--warm-only", action="store_true",
                    help="keep each size's cache from an earlier run and skip the cold run (memory after a change)")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    valid = write_corpus(work / "valid-1000.parquet", 1000, start=10_000_000)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} cores; {a.steps} steps of me5-small"
          f"{'' if a.no_low_memory else ' with --low-memory'}, batch 32", flush=True)
    table = []
    for size in [int(float(s)) for s in a.sizes.split(",")]:
        corpus = write_corpus(work / f"corpus-{size}.parquet", size)
        cache = work / f"cache-{size}"
        if not a.warm_only:
            shutil.rmtree(cache, ignore_errors=True)
        row = {"rows": size, "parquet_mb": round(corpus.stat().st_size / 1e6, 1)}
        runs = ([] if a.warm_only else [("cold", True, 1)]) + [("warm", True, 1)] + ([("procs", True, a.procs)] if a.procs > 1 else []) + (
            [("memory", False, 1)] if a.no_store else [])
        for name, store, procs in runs:
            row[name] = run_train(corpus, valid, work / "run", cache, store, procs, a.steps, not a.no_low_memory)
            print(json.dumps({"rows": size, name: row[name]}, ensure_ascii=False), flush=True)  # as they come
        row["store"] = store_numbers(cache)
        table.append(row)
    print_table(table, a.procs)


def print_table(table: list[dict], procs: int) -> None:
    print(f"| rows | Parquet MB | store B/row | store build s (rows/s) | first step cold / warm (s) | wall cold / "
          f"warm (s) | peak RSS cold / warm (MB) | {procs} processes: peak RSS per rank (MB), disjoint | "
          f"ids in memory: first step (s), RSS (MB) |\n|---|---|---|---|---|---|---|---|---|")
    for r in table:
        r.setdefault("cold", {"first_step_s": "-", "wall_s": "-", "rss_mb": "-"})  # --warm-only
        mem = f"{r['memory']['first_step_s']}, {r['memory']['rss_mb']}" if "memory" in r else "-"
        multi = (f"{' / '.join(map(str, r['procs']['rank_rss_mb']))}, {'yes' if r['procs']['disjoint'] else 'NO'}"
                 if "procs" in r else "-")
        print(f"| {r['rows']:,} | {r['parquet_mb']} | {r['store']['bytes_per_row']} | {r['store']['build_s']} "
              f"({r['store']['build_rows_per_s']:,}) | {r['cold']['first_step_s']} / {r['warm']['first_step_s']} | "
              f"{r['cold']['wall_s']} / {r['warm']['wall_s']} | {r['cold']['rss_mb']} / {r['warm']['rss_mb']} | "
              f"{multi} | {mem} |")


if __name__ == "__main__":
    main()
