"""One lent GPU, one command: speed against HF Trainer (today's eager step, the compiled step at batch 256 and
1024, and compiled with --precision bf16-weights; one epoch of all of NSMC each, test accuracy), profiles of the
eager and the compiled step (GPU busy share), the recipe picked on validation with 3 seeds, `bertclf eval`/`predict`
on a result, predict's texts/s (eager, and compiled with CUDA graphs), and the best model brought back.

GPU time comes in ~15-minute windows, start-up included, so this runs the phases in order of importance
against one deadline, writes what it has measured to OUT/summary.json after every phase, and scales the
recipe phase to the time left (measured speed x parallel runs). Nothing here needs the network.

    python -m benchmarks.gpu.gpu_pack pack                         # here, once: .carry/gpu-inputs (~55 MB)
    # device tool (it runs in the repository root), carry [".carry"]:
    python3 -m benchmarks.gpu.gpu_proof --out $OUT --budget 420
    python -m benchmarks.gpu.gpu_proof --out /tmp/gp --dry-run     # the same path on the CPU, tiny sizes

What comes back (at most 8 files): summary.json, logs.tar.gz (every phase's log and JSON, the runs' cards and
train logs), best-model.tar (config, tokenizer, card) and best-model-N.safetensors (its weights in fp16,
4 shards under the 16 MiB file limit); `python -m benchmarks.gpu.gpu_proof --reassemble DIR --to MODEL_DIR` makes
a model directory of them again (weights widened to fp32).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from benchmarks.common import REPO, run

LOGS = Path("/tmp/gpu-proof/logs")
RUNS = Path("/tmp/gpu-proof/runs")
SHARDS = 4
# Recipe candidates, in the order they are dropped when time is short (the last ones first). Each keeps the
# best validation checkpoint of its epochs, so a 4-epoch run also stands for its own shorter versions.
CANDIDATES = [("defaults", []),                                  # 2 epochs, batch 256, lr 2e-4 on a GPU
              ("b1024-3ep", ["--batch-size", "1024", "--epochs", "3"]),  # lr 2e-4 (the default's cap)
              ("4ep-lr1e-4", ["--epochs", "4", "--lr", "1e-4"])]
EPOCHS = {"defaults": 2, "b1024-3ep": 3, "4ep-lr1e-4": 4}
SEEDS = (42, 1, 2)
TEXTS = ["정말 재미있고 감동적인 영화였어요. 배우들 연기도 최고!", "시간 낭비였다. 스토리도 엉망이고 지루함"]


class Proof:
    def __init__(self, args):
        self.args, self.t0 = args, time.time()
        self.deadline = self.t0 + args.budget
        self.summary = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "budget_s": args.budget,
                        "dry_run": args.dry_run, "phases": {}}
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        for d in (LOGS, RUNS):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)

    def left(self) -> float:
        return self.deadline - time.time()

    def save(self):
        self.summary["elapsed_s"] = round(time.time() - self.t0, 1)
        tmp = self.out / "summary.json.tmp"
        tmp.write_text(json.dumps(self.summary, indent=2, ensure_ascii=False))
        os.replace(tmp, self.out / "summary.json")

    def phase(self, name, fn, min_left: float = 0):
        if self.left() < min_left:
            self.summary["phases"][name] = {"skipped": f"{self.left():.0f}s left, needs {min_left:.0f}s"}
            print(f"== {name}: skipped ({self.left():.0f}s left)", flush=True)
            return self.save()
        print(f"== {name} ({self.left():.0f}s left)", flush=True)
        t = time.time()
        try:
            result = fn()
            self.summary["phases"][name] = {"ok": True, "seconds": round(time.time() - t, 1)} | (result or {})
        except Exception as e:  # a phase that fails leaves the others their time
            self.summary["phases"][name] = {"ok": False, "seconds": round(time.time() - t, 1),
                                            "error": f"{type(e).__name__}: {e}"[-2000:]}
            print(f"{name} failed: {type(e).__name__}: {e}", flush=True)
        self.save()

    def run(self, cmd, log: str, timeout: float, env=None) -> subprocess.CompletedProcess:
        with open(LOGS / log, "w") as f:
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=max(1.0, timeout), cwd=REPO,
                               env=os.environ | {"BERTCLF_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"} | (env or {}))
        if r.returncode:
            raise RuntimeError(f"{cmd[:4]} exited {r.returncode}: " + (LOGS / log).read_text()[-1500:])
        return r

    @property
    def inputs(self) -> Path:
        return Path(self.args.inputs)

    def bertclf(self, *a) -> list[str]:
        return [sys.executable, "-m", "bertclf", *a]

    # -- phases -------------------------------------------------------------------------------------------------
    def unpack(self):
        if not (self.inputs / "model" / "model.safetensors").is_file():
            from benchmarks.gpu.gpu_pack import unpack
            unpack(str(self.inputs))
        return {"inputs": str(self.inputs)}

    def env(self):
        import accelerate
        import torch
        import transformers

        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True) if shutil.which("nvidia-smi") else None
        return {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                "nvidia_smi": smi.stdout.strip() if smi else None, "cpus": os.cpu_count(), "python": sys.version.split()[0],
                "torch": torch.__version__, "transformers": transformers.__version__,
                "accelerate": accelerate.__version__}

    def speed(self):
        a = self.args
        cmd = [sys.executable, "-m", "benchmarks.training.train_speed", "--gpu", "--variants", self.args.speed_variants,
               "--data-dir", str(self.inputs / "nsmc"), "--model-dir", str(self.inputs / "model"),
               "--hf-train-rows", str(a.hf_train_rows), "--json", str(LOGS / "speed.json")]
        if a.dry_run:  # --max-length 16: one compiled shape (me5-small compiles for a minute per shape on a CPU)
            cmd += ["--train-rows", "400", "--test-rows", "200", "--max-length", "16"]
        self.run(cmd, "speed.log", self.left() - 60)
        res = json.loads((LOGS / "speed.json").read_text())
        print((LOGS / "speed.log").read_text()[-1500:], flush=True)
        return {"results": res["results"]}

    def profile(self, compiled: bool = False):
        """Steps/s at batch 256, 512 and 1024 and the profile of the default batch's steps (today's eager path);
        compiled: the compiled step's at batch 256 and 1024, each profiled (GPU busy share)."""
        name = "profile-compiled" if compiled else "profile"
        cmd = [sys.executable, "-m", "benchmarks.training.gpu_profile", "--data-dir", str(self.inputs / "nsmc"),
               "--model", str(self.inputs / "model"), "--json", str(LOGS / f"{name}.json")]
        if compiled:
            cmd += ["--compile", "--batch-sizes", "256,1024", "--profile-batch-sizes", "256,1024"]
        if self.args.dry_run:
            cmd += ["--sample", "0.003", "--steps", "3", "--warmup", "1", "--batch-sizes", "32,64",
                    "--profile-batch-sizes", "32"] + (["--max-length", "16"] if compiled else [])
        self.run(cmd, f"{name}.log", min(240 if compiled else 150, self.left() - 30))
        res = json.loads((LOGS / f"{name}.json").read_text())
        print(res["profiled"]["table"][:3000], flush=True)
        without_tables = lambda d: {k: v for k, v in d.items() if k != "table"}  # noqa: E731
        return {k: v for k, v in res.items() if k not in ("profiled", "profiled_by_batch")} | {
            "profiled": without_tables(res["profiled"]),
            "profiled_by_batch": {bs: without_tables(d) for bs, d in res.get("profiled_by_batch", {}).items()}}

    def profile_compiled(self):
        return self.profile(compiled=True)

    def recipes(self):
        single = self.single_speed()
        busy = ((self.summary["phases"].get("profile") or {}).get("profiled") or {}).get("gpu_busy_share")
        gain = min(4.0, 0.7 / busy) if busy else 4.0  # parallel runs fill the GPU's idle time, up to a point
        rows = 142_496 if not self.args.dry_run else 600
        reserve = 75 if {"check", "predict_speed", "bring_back"} & set(self.args.phases.split(",")) else 10
        available = self.left() - reserve  # eval, predict and packing the model after this
        plan = None
        options = ((CANDIDATES, SEEDS), (CANDIDATES[:2], SEEDS), (CANDIDATES[:1], SEEDS), (CANDIDATES[:1], SEEDS[:1]))
        if self.args.candidates:  # name:flags;name:flags, e.g. "b1024-lr4e-4:--batch-size 1024 --lr 4e-4 --epochs 1"
            mine = [(c.split(":")[0], c.split(":")[1].split()) for c in self.args.candidates.split(";")]
            for name, flags in mine:
                EPOCHS[name] = float(flags[flags.index("--epochs") + 1]) if "--epochs" in flags else 2
            options = ((mine, tuple(int(x) for x in self.args.seeds.split(","))),)
        for cands, seeds in options:
            n = len(cands) * len(seeds)
            samples = sum(EPOCHS[c] for c, _ in cands) * len(seeds) * rows
            estimate = 40 + samples / (single * min(n, gain))
            if estimate < available * 0.85:
                plan = (cands, seeds, estimate)
                break
        if plan is None:
            return {"skipped": f"one default run needs ~{estimate:.0f}s, {available:.0f}s left"}
        cands, seeds, estimate = plan
        print(f"recipes: {[c for c, _ in cands]} x seeds {list(seeds)}, estimated {estimate:.0f}s "
              f"(single run {single:.0f} samples/s, parallel gain {gain:.1f})", flush=True)
        procs = {}
        for name, flags in cands:
            for seed in seeds:
                tag = f"{name}-s{seed}"
                cmd = self.bertclf("train", "--data", "nsmc", "--data-dir", str(self.inputs / "nsmc"), "--model",
                                   str(self.inputs / "model"), "--out", str(RUNS / tag), "--seed", str(seed), *flags)
                if self.args.dry_run:
                    cmd += ["--sample", "0.002", "--test-sample", "0.004", "--max-steps", "3"]
                log = open(LOGS / f"train-{tag}.log", "w")
                procs[tag] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                              env=os.environ | {"BERTCLF_NO_PROGRESS": "1", "OMP_NUM_THREADS": "2"})
        while any(p.poll() is None for p in procs.values()) and self.left() > reserve:
            time.sleep(2)
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        runs = {tag: self.read_run(tag, p.returncode) for tag, p in procs.items()}
        return {"estimate_s": round(estimate), "parallel": len(procs), "runs": runs} | self.choose(runs, cands, seeds)

    def single_speed(self) -> float:
        results = (self.summary["phases"].get("speed") or {}).get("results") or []
        # the recipes run the defaults: compiled on a GPU (--compile auto), today's eager path elsewhere
        default = "bertclf-compiled" if self.on_gpu() else "bertclf-eager"
        if self.args.dry_run:  # its runs stop after 3 steps: a CPU's measured samples/s would skip them
            return 20.0
        rates = {r["variant"]: r["samples_per_s"] for r in results}
        return rates.get(default) or rates.get("bertclf") or self.args.assume_speed

    @staticmethod
    def on_gpu() -> bool:
        import torch

        return torch.cuda.is_available()

    def read_run(self, tag: str, rc: int) -> dict:
        card = RUNS / tag / "bertclf.json"
        res = {"rc": rc}
        if card.is_file():
            c = json.loads(card.read_text())
            res |= {"valid_acc": c["metrics"]["valid"]["accuracy"],
                    "test_acc": (c["metrics"].get("test") or {}).get("accuracy"),
                    "best_step": c["training"]["best_step"], "steps": c["training"]["steps"],
                    "samples_per_s": c["training"]["samples_per_s"], "train_seconds": c["training"]["train_seconds"],
                    "wall_s": c["training"]["wall_time_s"]}
        log = RUNS / tag / "train_log.jsonl"
        if log.is_file():  # validation after each epoch (also of a run stopped by the deadline)
            res["valid_by_epoch"] = [round(r["valid_accuracy"], 4) for r in map(json.loads, log.read_text().splitlines())
                                     if "valid_accuracy" in r]
        return res

    def choose(self, runs, cands, seeds) -> dict:
        import numpy as np

        table = {}
        for name, _ in cands:
            done = [runs[f"{name}-s{s}"] for s in seeds if runs[f"{name}-s{s}"].get("test_acc") is not None]
            if done:
                v, t = np.array([r["valid_acc"] for r in done]), np.array([r["test_acc"] for r in done])
                table[name] = {"seeds": len(done), "valid_mean": float(v.mean()), "test_mean": float(t.mean()),
                               "test_std": float(t.std(ddof=1)) if len(t) > 1 else None}
        if not table:
            return {"chosen": None}
        # chosen on validation alone; among the recipes with the most finished seeds
        most = max(r["seeds"] for r in table.values())
        chosen = max((n for n, r in table.items() if r["seeds"] == most), key=lambda n: table[n]["valid_mean"])
        best = max((f"{chosen}-s{s}" for s in seeds if runs[f"{chosen}-s{s}"].get("valid_acc") is not None),
                   key=lambda tag: runs[tag]["valid_acc"])
        print("recipe      seeds  valid mean  test mean ± std", flush=True)
        for n, r in table.items():
            std = f"{r['test_std']:.4f}" if r["test_std"] is not None else "-"
            print(f"{n:<11} {r['seeds']:>5}  {r['valid_mean']:.4f}      {r['test_mean']:.4f} ± {std}", flush=True)
        return {"table": table, "chosen": chosen, "best_run": best}

    def check(self):
        """The user's path on a trained model: eval on NSMC's test split, predict two texts."""
        tag = self.trained_run()
        results = {"run": tag}
        test = ["--data", "nsmc", "--data-dir", str(self.inputs / "nsmc")]
        if self.args.dry_run:  # all 49,997 test reviews take minutes on a CPU
            small = Path("/tmp/gpu-proof/test-small.tsv")
            small.write_text("".join((self.inputs / "nsmc/ratings_test.txt").read_text().splitlines(True)[:201]))
            test = ["--test", str(small), "--text-col", "document"]
        for name, cmd in (("eval", self.bertclf("eval", str(RUNS / tag), *test, "--json")),
                          ("predict", self.bertclf("predict", str(RUNS / tag), *TEXTS))):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=90,
                               env=os.environ | {"BERTCLF_NO_PROGRESS": "1"})
            (LOGS / f"{name}.log").write_text(r.stdout + "\n--- stderr\n" + r.stderr)
            if r.returncode:
                raise RuntimeError(f"bertclf {name} exited {r.returncode}: {r.stderr[-1000:]}")
            results[name] = json.loads(r.stdout) if name == "eval" else r.stdout.strip().splitlines()
        rep = results.pop("eval")
        return results | {"eval_accuracy": rep.get("accuracy"), "eval_report": {k: v for k, v in rep.items()
                                                                               if not isinstance(v, (list, dict))}}

    def predict_speed(self):
        """Texts per second of the trained model on NSMC's test reviews (all 49,997; a dry run 200), in this
        process after a warm-up, at predict's default batch (64) and at 512, eager; then compiled (--compile on:
        static shapes, CUDA graphs on a GPU) at 512, warmed up on all the texts so every shape is compiled before
        the timed pass (a dry run: at 64, --max-length 16, one width). The model's load is not counted."""
        from bertclf.inference.classifier import Classifier

        lines = (self.inputs / "nsmc/ratings_test.txt").read_text(encoding="utf-8").splitlines()[1:]
        texts = [ln.split("\t")[1] for ln in lines if ln.count("\t") == 2]
        texts = texts[:200] if self.args.dry_run else texts
        clf = Classifier.load(str(RUNS / self.trained_run()), compile="off")
        res = {"texts": len(texts), "precision": clf.precision, "device": str(next(clf.model.parameters()).device)}
        for batch in (64, 512):
            res[f"texts_per_s_batch_{batch}"] = self.texts_per_s(clf, texts, batch, texts[:1000])
        # a CPU compiles me5-small for ~a minute per shape: the dry run keeps to one width and one batch size
        batch, max_length = (64, 16) if self.args.dry_run else (512, None)
        clf = Classifier.load(str(RUNS / self.trained_run()), compile="on", max_length=max_length)
        res[f"texts_per_s_batch_{batch}_compiled"] = self.texts_per_s(clf, texts, batch, texts)
        res["compiled"] = clf.compiled.record() | ({"max_length": max_length} if max_length else {})
        print(f"predict: {res}", flush=True)
        return res

    @staticmethod
    def texts_per_s(clf, texts: list[str], batch: int, warm_up: list[str]) -> float:
        import torch

        clf.predict_proba(warm_up, batch_size=batch)  # kernels chosen, memory pooled, shapes compiled
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        clf.predict_proba(texts, batch_size=batch)
        return round(len(texts) / (time.perf_counter() - t0), 1)

    def trained_run(self) -> str:
        rec = self.summary["phases"].get("recipes") or {}
        if rec.get("best_run"):
            return rec["best_run"]
        raise RuntimeError("no finished training run to check")

    def bring_back(self):
        import torch
        from safetensors.torch import load_file, save_file

        tag = self.trained_run()
        src = RUNS / tag
        with tarfile.open(self.out / "best-model.tar", "w") as tar:
            for f in sorted(src.iterdir()):
                if f.is_file() and f.suffix in (".json", ".jsonl", ".txt") or f.name in ("tokenizer.model",):
                    tar.add(f, arcname=f.name)
        weights = {k: v.to(torch.float16) if v.is_floating_point() else v
                   for k, v in load_file(str(src / "model.safetensors")).items()}
        shards = [{} for _ in range(SHARDS)]  # largest tensor first into the lightest shard: even sizes
        for k in sorted(weights, key=lambda k: -weights[k].nbytes):
            min(shards, key=lambda sh: sum(v.nbytes for v in sh.values()))[k] = weights[k]
        for i, part in enumerate(shards):
            save_file(part, str(self.out / f"best-model-{i}.safetensors"))
        sizes = [round((self.out / f"best-model-{i}.safetensors").stat().st_size / 2**20, 1) for i in range(SHARDS)]
        return {"run": tag, "shards_mib": sizes}

    def pack_logs(self):
        for tag_dir in RUNS.iterdir() if RUNS.is_dir() else ():
            for name in ("bertclf.json", "train_log.jsonl"):
                if (tag_dir / name).is_file():
                    shutil.copy2(tag_dir / name, LOGS / f"{tag_dir.name}.{name}")
        with tarfile.open(self.out / "logs.tar.gz", "w:gz") as tar:
            tar.add(LOGS, arcname="logs")


def reassemble(src: str, to: str) -> None:
    """The fp16 shards and small files of a brought-back model -> a model directory (weights in fp32)."""
    import torch
    from safetensors.torch import load_file, save_file

    out = Path(to)
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(Path(src) / "best-model.tar") as tar:
        tar.extractall(out, filter="data")
    weights = {}
    for i in range(SHARDS):
        weights |= load_file(str(Path(src) / f"best-model-{i}.safetensors"))
    save_file({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in weights.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    print(f"wrote {out}: {len(weights)} tensors (fp16 widened to fp32)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out")
    p.add_argument("--budget", type=float, help="seconds for everything (the device call's limit less a margin; "
                                                "default 420, a dry run 1500: a CPU compiles me5-small slowly)")
    p.add_argument("--inputs", default="/tmp/in", help="where gpu/gpu_pack.py's inputs are (unpacked here if absent)")
    p.add_argument("--hf-train-rows", type=int, default=30000, help="HF Trainer's slice of the training rows")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes, on any machine")
    p.add_argument("--phases", default="speed,profile,profile_compiled,recipes,check,predict_speed,bring_back",
                   help="which measuring phases")
    p.add_argument("--candidates", help="recipes to try instead of CANDIDATES: name:flags;name:flags")
    p.add_argument("--seeds", default="42,1,2", help="seeds of --candidates")
    p.add_argument("--assume-speed", type=float, default=3000, help="samples/s of one run when no speed phase ran")
    p.add_argument("--speed-variants", default="bertclf-eager,bertclf-compiled,bertclf-bf16w-compiled,"
                   "bertclf-b1024-compiled,hf-trainer",
                   help="training/train_speed.py's --variants (-eager: today's path, --compile off; -compiled: on; "
                        "-bf16w: --precision bf16-weights)")
    p.add_argument("--reassemble", metavar="DIR", help="a brought-back model's files -> --to MODEL_DIR")
    p.add_argument("--to")
    args = p.parse_args()
    if args.reassemble:
        return reassemble(args.reassemble, args.to)
    args.budget = args.budget or (1500 if args.dry_run else 420)
    if args.dry_run:
        args.hf_train_rows = min(args.hf_train_rows, 200)
        # 380 training rows: batch 1024 would be one step of 1024 rows, mostly padding; 64 takes the same path
        args.speed_variants = args.speed_variants.replace("-b1024-", "-b64-")
    proof = Proof(args)
    try:
        proof.phase("unpack", proof.unpack)
        proof.phase("env", proof.env)
        for name, min_left in (("speed", 120), ("profile", 150), ("profile_compiled", 150), ("recipes", 120),
                               ("check", 40), ("predict_speed", 40), ("bring_back", 15)):
            if name in args.phases.split(","):
                proof.phase(name, getattr(proof, name), min_left=min_left)
    finally:
        proof.pack_logs()
        proof.save()
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk not in ("results", "runs", "plain")}
                      for k, v in proof.summary["phases"].items()}, indent=1, ensure_ascii=False)[-5000:])


if __name__ == "__main__":
    run(main)
