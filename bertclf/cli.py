"""The command line: a thin layer that parses flags and calls the library. `bertclf -h` lists the commands."""
from __future__ import annotations

import argparse
import json
import os
import sys

from bertclf.errors import UserError


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        raise UserError(f"{self.prog}: {message}; see '{self.prog} -h'")


def _frac(s):
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None


def build_parser() -> Parser:
    p = Parser(prog="bertclf", description="Fine-tune transformer encoders for text classification.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    t = sub.add_parser("train", help="fine-tune a model", description="Fine-tune a pretrained encoder on labelled text.")
    src = t.add_argument_group("data")
    src.add_argument("--data", choices=None, help="builtin dataset: nsmc")
    src.add_argument("--train", metavar="FILE", help="labelled TSV/CSV/JSONL file")
    src.add_argument("--valid", metavar="FILE", help="validation file (default: a stratified split of --train)")
    src.add_argument("--test", metavar="FILE", help="test file, scored once at the end")
    src.add_argument("--text-col", help="text column (default: document for NSMC, else text)")
    src.add_argument("--label-col", help="label column (default: label)")
    src.add_argument("--data-dir", help="folder holding NSMC's ratings_train.txt / ratings_test.txt")
    src.add_argument("--sample", type=_frac, default=1.0, help="train on this fraction of the training rows (seeded)")
    src.add_argument("--test-sample", type=_frac, default=1.0,
                     help="score on this fraction of the test rows at the end (seeded, stratified)")
    src.add_argument("--valid-frac", type=_frac, default=0.05, help="share of train carved out for validation")
    lab = t.add_argument_group("labels and task")
    lab.add_argument("--multi-label", action="store_true",
                     help="a label cell holds several labels (split by --label-sep); sigmoid + BCE, thresholds tuned")
    lab.add_argument("--label-sep", default=",", help="separator of the labels in a multi-label cell (default ,)")
    lab.add_argument("--label-names", metavar="FILE", help="line i names label id i (the label cells hold ids)")
    lab.add_argument("--class-weights", default="none", choices=["none", "auto"],
                     help="auto: weight the loss by smoothed inverse class frequency (recorded in bertclf.json)")
    lab.add_argument("--metric", choices=["accuracy", "macro_f1", "weighted_f1", "micro_f1"],
                     help="checkpoint selection and early stopping (default accuracy; multi-label macro_f1)")
    m = t.add_argument_group("model and recipe")
    m.add_argument("--model", default="me5-small", help="builtin name, local directory or hub name (default me5-small)")
    m.add_argument("--out", required=True, help="output directory (a Hugging Face model directory)")
    m.add_argument("--epochs", type=_frac, default=2)
    m.add_argument("--batch-size", type=int, help="rows per micro-batch (default 32 on CPU, 256 on GPU)")
    m.add_argument("--lr", type=_frac, help="peak learning rate (default scales with the batch size)")
    m.add_argument("--max-length", type=int, default=128, help="tokens per text, longer texts are cut")
    m.add_argument("--seed", type=int, default=42)
    m.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    m.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16")
    m.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    m.add_argument("--warmup", type=_frac, default=0.06, help="warmup share of the steps")
    m.add_argument("--weight-decay", type=_frac, default=0.01)
    m.add_argument("--trim-vocab", action=argparse.BooleanOptionalAction, default=None,
                   help="keep only the vocabulary the training texts use (default: on for builtin models)")
    r = t.add_argument_group("logging, evaluation, checkpoints")
    r.add_argument("--log-every", type=int, help="print loss/accuracy every N steps")
    r.add_argument("--eval-every", type=int, help="validate every N steps (default: each epoch)")
    r.add_argument("--patience", type=int, help="stop after N validations without improvement")
    r.add_argument("--checkpoint-every", type=int, help="write a resumable checkpoint every N steps")
    r.add_argument("--keep-checkpoints", type=int, default=2, help="how many step checkpoints to keep (plus best)")
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    r.add_argument("--overwrite", action="store_true", help="replace what --out holds")

    e = sub.add_parser("eval", help="score a trained model on labelled data")
    e.add_argument("model_dir", metavar="DIR")
    e.add_argument("--data", help="builtin dataset: nsmc (its test split)")
    e.add_argument("--test", metavar="FILE")
    e.add_argument("--text-col")
    e.add_argument("--label-col")
    e.add_argument("--data-dir")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.add_argument("--errors", metavar="FILE", help="write misclassified rows with probabilities (TSV/CSV)")
    e.add_argument("--batch-size", type=int, default=128)

    pr = sub.add_parser("predict", help="classify texts", description="Classify texts given as arguments, "
                        "in a TSV/CSV/JSONL/plain-lines file, or on stdin; prints or writes JSONL (CSV by extension).")
    pr.add_argument("model_dir", metavar="DIR")
    pr.add_argument("texts", nargs="*", metavar="TEXT")
    pr.add_argument("--input", metavar="FILE", help="file to classify ('-' for stdin)")
    pr.add_argument("--output", metavar="FILE", help="where to write (default stdout)")
    pr.add_argument("--text-col", help="text column of --input (default: the training text column, else text)")
    pr.add_argument("--batch-size", type=int, default=64)
    pr.add_argument("--shard", metavar="I/N", help="only rows whose index modulo N is I (split work over N workers)")

    mo = sub.add_parser("models", help="builtin models: list, path")
    mo_sub = mo.add_subparsers(dest="models_command", metavar="ACTION", parser_class=Parser)
    mo_sub.add_parser("list", help="show the builtin model names")
    mp = mo_sub.add_parser("path", help="print the directory of a builtin model (building it if needed)")
    mp.add_argument("name", nargs="?", default="me5-small")

    tv = sub.add_parser("trim-vocab", help="keep only the vocabulary pieces a corpus uses")
    tv.add_argument("src", metavar="SRC", help="model directory or builtin name")
    tv.add_argument("--corpus", required=True, metavar="FILE")
    tv.add_argument("--text-col", default="document")
    tv.add_argument("--out", required=True)
    b = sub.add_parser("baseline", help="TF-IDF + logistic regression baseline in seconds")
    b.add_argument("--data", help="builtin dataset: nsmc")
    b.add_argument("--train", metavar="FILE")
    b.add_argument("--test", metavar="FILE")
    b.add_argument("--text-col")
    b.add_argument("--label-col")
    b.add_argument("--data-dir")
    b.add_argument("--sample", type=_frac, default=1.0)
    b.add_argument("--seed", type=int, default=42)
    b.add_argument("--out", metavar="DIR", help="also store the result as DIR/baseline.json (e.g. a model directory)")
    b.add_argument("--multi-label", action="store_true", help="one-vs-rest, thresholds tuned on 20%% of train")
    b.add_argument("--label-sep", default=",", help="separator of the labels in a multi-label cell (default ,)")
    b.add_argument("--label-names", metavar="FILE", help="line i names label id i")
    b.add_argument("--json", action="store_true")

    s = sub.add_parser("serve", help="HTTP server (Hugging Face Inference API shape) with micro-batching")
    s.add_argument("model_dir", metavar="DIR")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-batch", type=int, default=64, help="largest micro-batch of texts")
    s.add_argument("--max-wait-ms", type=float, default=5.0, help="how long to wait for a micro-batch to fill")
    s.add_argument("--max-texts", type=int, default=256, help="texts per request")
    s.add_argument("--max-chars", type=int, default=10000, help="characters per text")
    s.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body size")

    x = sub.add_parser("export", help="export to ONNX (optionally int8) for fast CPU inference")
    x.add_argument("model_dir", metavar="DIR")
    x.add_argument("--onnx", action="store_true", required=True, help="export format (ONNX is the only one)")
    x.add_argument("--int8", action="store_true", help="int8 dynamic quantization")
    x.add_argument("--out", required=True, metavar="DIR2")

    rp = sub.add_parser("report", help="plots and a self-contained HTML page for a run (two runs: compared)")
    rp.add_argument("run_dirs", nargs="+", metavar="DIR")
    rp.add_argument("--out", metavar="FILE", help="HTML file (default DIR/report.html; several runs: A/compare-<B>.html)")
    return p


def _version() -> str:
    from bertclf import __version__

    return f"bertclf {__version__}"


def cmd_train(a) -> int:
    from bertclf.loop import TrainConfig, train

    cfg = TrainConfig(out=a.out, data=a.data, train=a.train, valid=a.valid, test=a.test, text_col=a.text_col,
                      label_col=a.label_col, data_dir=a.data_dir, model=a.model, epochs=a.epochs,
                      batch_size=a.batch_size, lr=a.lr, max_length=a.max_length, sample=a.sample, test_sample=a.test_sample, seed=a.seed,
                      max_steps=a.max_steps, precision=a.precision, grad_accum=a.grad_accum, eval_every=a.eval_every,
                      patience=a.patience, checkpoint_every=a.checkpoint_every, resume=a.resume,
                      overwrite=a.overwrite, valid_frac=a.valid_frac, warmup=a.warmup, weight_decay=a.weight_decay,
                      log_every=a.log_every, keep_checkpoints=a.keep_checkpoints, trim_vocab=a.trim_vocab,
                      multi_label=a.multi_label, label_sep=a.label_sep, label_names=a.label_names,
                      class_weights=a.class_weights, metric=a.metric)
    train(cfg)
    return 0


def cmd_eval(a) -> int:
    from bertclf.evaluate import evaluate
    from bertclf.metrics import format_report

    rep = evaluate(a.model_dir, data=a.data, test=a.test, text_col=a.text_col, label_col=a.label_col,
                   data_dir=a.data_dir, errors=a.errors, batch_size=a.batch_size,
                   log=lambda s: print(s, file=sys.stderr))
    if a.json:
        print(json.dumps(rep, indent=2, ensure_ascii=False))
    else:
        print(format_report(rep))
        if a.errors:
            print(f"misclassified rows written to {a.errors}")
    return 0


def cmd_predict(a) -> int:
    from bertclf.predict import Classifier
    from bertclf.predict_io import parse_shard, predict_to

    if a.texts and a.input:
        raise UserError("predict: give texts as arguments or --input FILE, not both")
    if not a.texts and not a.input and sys.stdin.isatty():
        raise UserError("predict: no texts; give them as arguments, with --input FILE, or on stdin")
    clf = Classifier.load(a.model_dir)
    predict_to(clf, texts=a.texts or None, input_path=a.input or ("-" if not a.texts else None),
               output_path=a.output, text_col=a.text_col, batch_size=a.batch_size, shard=parse_shard(a.shard))
    return 0


def cmd_models(a) -> int:
    from bertclf.builtin import BUILTIN_MODELS, builtin_model_path

    if a.models_command == "list":
        for name, desc in BUILTIN_MODELS.items():
            print(f"{name}\t{desc}")
    elif a.models_command == "path":
        print(builtin_model_path(a.name, log=lambda s: print(s, file=sys.stderr)))
    else:
        raise UserError("models: give an action, list or path; see 'bertclf models -h'")
    return 0


def cmd_trim_vocab(a) -> int:
    from bertclf.models import resolve
    from bertclf.vocab_trim import trim_vocab_from_file

    src = resolve(a.src, log=lambda s: print(s, file=sys.stderr))
    stats = trim_vocab_from_file(src, a.corpus, a.text_col, a.out)
    print(json.dumps(stats))
    return 0


def cmd_baseline(a) -> int:
    from bertclf.baseline import format_baseline, run_baseline

    res = run_baseline(data=a.data, train=a.train, test=a.test, text_col=a.text_col, label_col=a.label_col,
                       data_dir=a.data_dir, sample=a.sample, seed=a.seed, out=a.out, multi_label=a.multi_label,
                       label_sep=a.label_sep, label_names=a.label_names)
    print(json.dumps(res, indent=2, ensure_ascii=False) if a.json else format_baseline(res))
    return 0


def cmd_serve(a) -> int:
    from bertclf.serve import serve

    serve(a.model_dir, host=a.host, port=a.port, max_batch=a.max_batch, max_wait_ms=a.max_wait_ms,
          max_texts=a.max_texts, max_chars=a.max_chars, max_body_bytes=a.max_body_bytes)
    return 0


def cmd_export(a) -> int:
    from bertclf.export import export_onnx

    info = export_onnx(a.model_dir, a.out, int8=a.int8, log=lambda s: print(s, file=sys.stderr))
    print(json.dumps(info, indent=2))
    return 0


def cmd_report(a) -> int:
    from bertclf.report import write_report

    print(write_report(a.run_dirs, out=a.out))
    return 0


COMMANDS = {"baseline": cmd_baseline, "serve": cmd_serve, "export": cmd_export, "report": cmd_report,
            "train": cmd_train, "eval": cmd_eval, "predict": cmd_predict, "models": cmd_models,
            "trim-vocab": cmd_trim_vocab}


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if not args.command:
            build_parser().print_help()
            return 2
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"bertclf: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("bertclf: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
