"""Training speed, side by side in one run: HF Trainer vs the tutorial's loop vs bertclf's defaults.

Same model, same data, same machine; each variant runs in its own process (clean peak memory) and the
script prints samples/s, real (unpadded) tokens/s, wall time, peak memory, validation/test accuracy and the
ratio of each to HF Trainer.

    python -m benchmarks.training.train_speed --cpu            # an NSMC slice, a few minutes on a 2-core CPU
    python -m benchmarks.training.train_speed --gpu            # full NSMC, one epoch, on one GPU
    python -m benchmarks.training.train_speed --precision-rounds 5   # CPU training step: fp32 vs bf16 autocast
    (a GPU machine without network: carry the inputs with benchmarks/gpu/gpu_pack.py, see its docstring)

Variants:
  (a) hf-trainer  transformers.Trainer configured like transformers' run_classification example:
                  pad to 128, batch 32, lr 5e-5, bf16 on GPU
  (b) tutorial    the tutorial's loop: Adam lr 1e-5, batch 2, fp32, tokenize inside the loop
  (c) bertclf     `bertclf train` with its defaults
  (d) bertclf-fp32 / bertclf-bf16: `bertclf train` with --precision forced (add them with --variants; on a
                  CPU with AMX / AVX-512 BF16 `bertclf` alone already trains in bf16); bertclf-bf16w:
                  --precision bf16-weights (the model held in bf16, fp32 master weights, no autocast)
  (e) bertclf-bN  `bertclf train --batch-size N` (e.g. bertclf-b1024)
  (f) ...-eager / ...-compiled: any bertclf variant with --compile off / on (its default, auto, compiles the
                  step on a GPU only): bertclf-eager is the path before --compile, bertclf-b1024-compiled the
                  compiled step at batch 1024
The model is me5-small with its vocabulary trimmed to the training texts (the same for all three).

--precision-rounds N: the training step alone (batch 32 of NSMC reviews, AdamW, bertclf's length-bucketed
padding), fp32 and bf16 autocast alternating in one process, --round-steps steps each per round, N rounds;
prints each precision's median samples/s and the ratio. Alternating in one process is what keeps the ratio
honest when other jobs share the machine. Every output starts with the device line (CPU model and matrix
features, bertclf/cpu.py).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import REPO, machine, nsmc, run


def peak_mem_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_split(args):
    from bertclf.data import dataset as D

    train = nsmc("train", args.data_dir)
    test = nsmc("test", args.data_dir)
    if args.train_rows:
        train = train.subset(list(range(args.train_rows)))
    if args.test_rows:
        test = test.subset(list(range(args.test_rows)))
    train, valid = D.split_valid(train, 0.05, 42)
    if args.variant == "hf-trainer" and args.hf_train_rows and args.hf_train_rows < len(train):
        train = train.subset(list(range(args.hf_train_rows)))  # same validation and test rows as the others
    return train, valid, test


def encode_labels(ds):
    return [1 if lab == "positive" else 0 for lab in ds.labels]


@torch.no_grad()
def accuracy(model, tok, ds, device, max_length=128, bs=128):
    from bertclf.models.forward import predict_logits
    from bertclf.data.tokens import encode

    ids = encode(tok, ds.texts, max_length)
    logits = predict_logits(model, ids, tok.pad_token_id, bs, device)
    return float((logits.argmax(1) == np.array(encode_labels(ds))).mean())


def run_hf_trainer(args, model_dir, train, valid, test, device):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    enc = tok(train.texts, padding="max_length", truncation=True, max_length=128)
    y = encode_labels(train)
    rows = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": y[i]}
            for i in range(len(y))]
    targs = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=32, learning_rate=5e-5,
                              num_train_epochs=1, bf16=device.type == "cuda", report_to=[], save_strategy="no",
                              logging_steps=500, seed=42, disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=targs, train_dataset=rows)
    t0 = time.time()
    trainer.train()
    wall = time.time() - t0
    return model, tok, wall


def run_tutorial(args, model_dir, train, valid, test, device):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    y = encode_labels(train)
    order = np.random.default_rng(42).permutation(len(y))
    model.train()
    t0 = time.time()
    for i in range(0, len(order), 2):
        idx = order[i:i + 2]
        batch = tok([train.texts[j] for j in idx], padding=True, truncation=True, max_length=128,
                    return_tensors="pt").to(device)
        out = model(**batch, labels=torch.tensor([y[j] for j in idx], device=device))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return model, tok, time.time() - t0


def run_bertclf(args, model_dir, train, valid, test, device, files):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bertclf.train.loop import TrainConfig, train as bertclf_train

    out = Path(tempfile.mkdtemp()) / "run"
    card = bertclf_train(TrainConfig(out=str(out), train=str(files["train"]), valid=str(files["valid"]),
                                     text_col="text", model=model_dir, epochs=1,
                                     **bertclf_flags(args.variant, args.max_length)),
                         echo=lambda s: None)
    args.compiled = card["training"].get("compiled")  # the shapes and their first steps' seconds, into the result
    # scored like the other variants: the saved Hugging Face directory, in fp32
    model = AutoModelForSequenceClassification.from_pretrained(str(out))
    return model, AutoTokenizer.from_pretrained(str(out)), card["training"]["train_seconds"]


def bertclf_flags(variant: str, max_length: int | None = None) -> dict:
    """bertclf[-fp32|-bf16|-bf16w][-bN][-eager|-compiled]: --precision (bf16w: bf16-weights), --batch-size N,
    --compile off or on (else auto: on for CUDA); max_length: --max-length (None: the default)."""
    m = re.fullmatch(r"bertclf(?:-(fp32|bf16w|bf16))?(?:-b(\d+))?(?:-(eager|compiled))?", variant)
    if m is None:
        raise SystemExit(f"unknown variant {variant!r}: bertclf[-fp32|-bf16|-bf16w][-bN][-eager|-compiled], "
                         f"hf-trainer or tutorial")
    return {"precision": {"bf16w": "bf16-weights"}.get(m[1], m[1] or "auto"), "batch_size": int(m[2]) if m[2] else None,
            "compile": {"eager": "off", "compiled": "on"}.get(m[3], "auto")} | (
        {"max_length": max_length} if max_length else {})


def child(args):
    """Run one variant; print one JSON line."""
    from bertclf.data.tokens import encode, lengths

    t_process = time.time()
    torch.manual_seed(42)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train, valid, test = load_split(args)
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for name, ds in (("train", train), ("valid", valid)):
            files[name] = Path(tmp) / f"{name}.tsv"
            with open(files[name], "w", encoding="utf-8") as f:
                f.write("text\tlabel\n" + "".join(f"{t.replace(chr(9), ' ')}\t{lab}\n" for t, lab in zip(ds.texts, ds.labels)))
        runner = {"hf-trainer": run_hf_trainer, "tutorial": run_tutorial}.get(args.variant)
        if runner:
            model, tok, wall = runner(args, args.model_dir, train, valid, test, device)
        else:
            model, tok, wall = run_bertclf(args, args.model_dir, train, valid, test, device, files)
        model.to(device)
        real_tokens = int(lengths(encode(tok, train.texts, 128)).sum())
        res = {"variant": args.variant, "rows": len(train), "wall_s": wall, "samples_per_s": len(train) / wall,
               "tokens_per_s": real_tokens / wall, "peak_mem_mb": peak_mem_mb(),
               "valid_acc": accuracy(model, tok, valid, device), "test_acc": accuracy(model, tok, test, device),
               "compiled": getattr(args, "compiled", None)}
        # the whole process: reading data, tokenizing, model load, training, scoring validation and test
        res["process_s"] = time.time() - t_process
    print("RESULT " + json.dumps(res), flush=True)


def precision_rounds(args) -> dict:
    """fp32 vs bf16 autocast training steps, alternating in this process; medians of per-round samples/s."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bertclf.data.batches import collate, epoch_batches
    from bertclf.data.tokens import encode, lengths

    train, _, _ = load_split(args)
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    ids = encode(tok, train.texts, 128)
    y = np.array(encode_labels(train))
    batches = epoch_batches(lengths(ids), 32, 42, 0)
    runs = {}
    for prec in ("fp32", "bf16"):
        torch.manual_seed(42)
        model = AutoModelForSequenceClassification.from_pretrained(args.model_dir, num_labels=2).train()
        runs[prec] = {"model": model, "opt": torch.optim.AdamW(model.parameters(), lr=5e-5), "rates": [],
                      "losses": []}
    step = 0
    for r in range(args.precision_rounds + 1):  # round 0 warms up both
        for prec, arm in runs.items():
            rows_done, t = 0, time.perf_counter()
            for i in range(args.round_steps):
                rows = batches[(step + i) % len(batches)]
                batch = collate(ids, rows, tok.pad_token_id, y)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
                    loss = arm["model"](**batch).loss
                loss.backward()
                arm["opt"].step()
                arm["opt"].zero_grad(set_to_none=True)
                rows_done += len(rows)
                arm["losses"].append(float(loss.detach()))
            if r:
                arm["rates"].append(rows_done / (time.perf_counter() - t))
        step += args.round_steps
        if r:
            print(f"round {r}: " + ", ".join(f"{p} {arm['rates'][-1]:.1f} samples/s" for p, arm in runs.items()),
                  flush=True)
    med = {p: float(np.median(arm["rates"])) for p, arm in runs.items()}
    return {"rounds": args.precision_rounds, "steps_per_round": args.round_steps, "batch": 32,
            "median_samples_per_s": med, "bf16_over_fp32": med["bf16"] / med["fp32"],
            "rates": {p: arm["rates"] for p, arm in runs.items()},
            "final_loss": {p: float(np.mean(arm["losses"][-args.round_steps:])) for p, arm in runs.items()}}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--cpu", action="store_true", help="NSMC slice (default)")
    mode.add_argument("--gpu", action="store_true", help="full NSMC")
    p.add_argument("--data-dir", default=os.environ.get("BERTCLF_DATA_DIR", str(REPO.parent / "shared/data/nsmc")))
    p.add_argument("--model-dir", help="model to train (default: me5-small trimmed to NSMC train)")
    p.add_argument("--train-rows", type=int, help="default 1600 (cpu) / all (gpu)")
    p.add_argument("--test-rows", type=int, help="default 1000 (cpu) / all (gpu)")
    p.add_argument("--hf-train-rows", type=int, help="train HF Trainer on the first N training rows only (its "
                                                         "samples/s is compared; same validation and test rows)")
    p.add_argument("--variants", help="default: hf-trainer,tutorial,bertclf (cpu); hf-trainer,bertclf (gpu: the "
                                      "tutorial's batch-2 loop needs ~45 min for full NSMC; run it on --train-rows)")
    p.add_argument("--precision-rounds", type=int, help="time fp32 vs bf16 training steps, alternating, N rounds")
    p.add_argument("--round-steps", type=int, default=5, help="training steps per precision per round")
    p.add_argument("--max-length", type=int, help="bertclf variants' --max-length (a dry run: 16, one compiled "
                                                      "shape); default theirs, 128")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    args.variants = args.variants or ("hf-trainer,bertclf" if args.gpu else "hf-trainer,tutorial,bertclf")
    if not args.gpu:
        args.train_rows = args.train_rows or 1600
        args.test_rows = args.test_rows or 1000
    if args.variant:
        return child(args)
    from bertclf import cpu

    device = machine()
    print(f"device: {device}", flush=True)
    if not args.model_dir:
        from bertclf.models.builtin import builtin_model_path
        from bertclf.models.vocab_trim import trim_vocab

        args.model_dir = str(Path(tempfile.gettempdir()) / "bertclf-bench-me5-nsmc")
        if not (Path(args.model_dir) / "config.json").is_file():
            trim_vocab(str(builtin_model_path()), nsmc("train", args.data_dir).texts, args.model_dir)
    if args.precision_rounds:
        res = precision_rounds(args)
        m = res["median_samples_per_s"]
        print(f"\ndevice: {device}; training step, batch 32, {res['rounds']} rounds x {res['steps_per_round']} steps "
              f"per precision, alternating: median fp32 {m['fp32']:.1f} samples/s, bf16 {m['bf16']:.1f} = "
              f"{res['bf16_over_fp32']:.2f}x (mean loss of the last round: fp32 {res['final_loss']['fp32']:.3f}, "
              f"bf16 {res['final_loss']['bf16']:.3f})")
        if args.json:
            Path(args.json).write_text(json.dumps({"device": device, "cpu": cpu.summary(), "precision": res}, indent=2))
        return
    results = []
    for v in args.variants.split(","):
        cmd = [sys.executable, "-m", __spec__.name, "--variant", v, "--model-dir", args.model_dir, "--data-dir", args.data_dir,
               "--gpu" if args.gpu else "--cpu"]  # the child's default sizes follow the mode
        for k in ("train_rows", "test_rows", "hf_train_rows", "max_length"):
            if getattr(args, k):
                cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
        print(f"running {v} ...", flush=True)
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=os.environ | {"BERTCLF_NO_PROGRESS": "1"})
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
        if r.returncode or not line:
            print(f"{v} failed:\n{r.stderr[-3000:]}")
            continue
        results.append(json.loads(line[0][7:]))
    print(f"\ndevice: {device}; one epoch")
    base = next((r for r in results if r["variant"] == "hf-trainer"), None)
    print(f"{'variant':<22} {'rows':>7} {'samples/s':>10} {'tokens/s':>10} {'wall s':>8} {'peak MB':>8} {'valid':>7} {'test':>7} {'x HF':>6} {'process s':>9}")
    for r in results:
        ratio = r["samples_per_s"] / base["samples_per_s"] if base else float("nan")
        print(f"{r['variant']:<22} {r['rows']:>7} {r['samples_per_s']:>10.1f} {r['tokens_per_s']:>10.0f} {r['wall_s']:>8.1f} "
              f"{r['peak_mem_mb']:>8.0f} {r['valid_acc']:>7.4f} {r['test_acc']:>7.4f} {ratio:>6.2f} {r.get('process_s', float('nan')):>9.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "cpu": None if torch.cuda.is_available()
                                               else cpu.summary(), "results": results}, indent=2))


if __name__ == "__main__":
    run(main)
