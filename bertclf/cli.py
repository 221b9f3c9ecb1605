"""The command line: a thin layer that parses flags and calls the library. `bertclf -h` lists the commands."""
from __future__ import annotations

import argparse
import json
import os
import sys

from bertclf.data.batches import INFERENCE_BATCH
from bertclf.train.config import add_train_flags, number
from bertclf.errors import UserError
from bertclf.io.rows import FORMATS, check_encoding, parse_columns


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump; main() adds the "bertclf: error: " prefix
        command = self.prog.removeprefix("bertclf").strip()
        raise UserError(f"{command + ': ' if command else ''}{message}; see '{self.prog} -h'")


def _read_flags(p) -> None:
    """The flags of the shared row reader (bertclf.io.rows) for commands that read files."""
    p.add_argument("--columns", metavar="A,B,...", help="names of the columns of a file without a header line, "
                   "e.g. id,text,label (the first line is then a row)")
    p.add_argument("--encoding", help="text encoding of the input, e.g. cp949 or euc-kr (default utf-8; for a "
                   "model's data: the encoding it was trained with)")


# eval and predict score in the same batches by default, so they give the same probabilities (bf16 rounding
# depends on the batch a text is padded into); bertclf/inference/classifier.py sorts by length within fixed blocks of rows
BATCH_HELP = (f"texts per forward pass (default {INFERENCE_BATCH}; eval and predict agree exactly at the same "
              f"batch size)")
PAIR_COL_HELP = "second text column of a sentence-pair model's file (default: the training's)"
COMPILE_HELP = ("auto | on | off: torch.compile the model, each batch padded to a few fixed shapes (CUDA graphs on "
                "a GPU; auto: on for CUDA, off on CPUs, where compiling takes tens of seconds per shape: "
                "docs/compile.md)")
PRECISION_HELP = "auto | fp32 | bf16 (auto: bf16 on AMX / AVX-512 BF16 CPUs and bf16 GPUs, else fp32)"


def _long_text_flags(p) -> None:
    """--long-text and --stride for the commands that score texts (bertclf/data/long_text.py)."""
    from bertclf.data.long_text import HELP, MODES

    p.add_argument("--long-text", choices=MODES, help=HELP + " (default: as the model was trained, else truncate)")
    p.add_argument("--stride", type=int, metavar="N", help="--long-text window: tokens each chunk shares with the "
                   "previous one (default max-length / 4)")


CONFIG_HELP = ("YAML or JSON file of these flags (keys: the flag names, e.g. max_length: 256); a flag given here "
               "wins over it. A finished run's DIR/bertclf.json reruns that run (give a new --out)")


def _train_flags(sub, config: dict | None = None) -> None:
    t = sub.add_parser("train", help="fine-tune a model", description="Fine-tune a pretrained encoder on labelled text.")
    t.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    add_train_flags(t, defaults=config)  # one flag per TrainConfig field (bertclf/train/config.py)


def _tune_flags(sub, config: dict | None = None) -> None:
    from bertclf.tune.cli_flags import TUNE_FIELDS, searched_helps, tune_defaults

    t = sub.add_parser("tune", help="search the training recipe (Optuna): the best model, its score beside the "
                       "defaults', and the command that reruns it",
                       description="Trials of `bertclf train` on the same validation split, chosen by Optuna's TPE "
                       "sampler and stopped early by its median pruner, over the learning rate, epochs, batch size, "
                       "warmup, weight decay, class weights, n-gram partner and max length (each range fitted to "
                       "the data). Any train flag given here holds for every trial and is not searched. The study "
                       "is kept in DIR/study.db: running tune again continues it.")
    t.add_argument("--out", metavar="DIR", required=not (config or {}).get("out"), default=(config or {}).get("out"),
                   help="the search's folder: study.db, best/ (the best model), best.json, best.yaml, logs/")
    t.add_argument("--trials", type=int, default=10, metavar="N",
                   help="finished trials the study holds at the end, counting earlier runs' (default 10)")
    t.add_argument("--timeout", type=number, metavar="S", help="start no trial after S seconds")
    t.add_argument("--storage", metavar="URL", help="the study's database (default sqlite:///DIR/study.db); one URL "
                   "shared by several processes or machines (e.g. postgresql://...) spreads the trials over them")
    t.add_argument("--study", metavar="NAME", help="the study's name in --storage (default bertclf)")
    t.add_argument("--config", metavar="FILE", help="YAML or JSON file of train flags that hold for every trial "
                   "(a flag given here wins over it)")
    add_train_flags(t, TUNE_FIELDS, defaults=tune_defaults(config), helps=searched_helps(), grouped=True)


def _eval_flags(sub) -> None:
    e = sub.add_parser("eval", help="score a trained model on labelled data")
    e.add_argument("model_dir", metavar="DIR")
    add_train_flags(e, ("data", "test", "text_col", "text_pair_col", "label_col", "data_dir"), helps={
        "data": "builtin dataset: nsmc (its test split)", "test": "labelled file to score",
        "text_col": "text column (default: the training text column, else text)",
        "text_pair_col": PAIR_COL_HELP,
        "label_col": "label column (default: the training label column, else label)"})
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.add_argument("--errors", metavar="FILE", help="write misclassified rows with probabilities (TSV/CSV)")
    e.add_argument("--batch-size", type=int, default=INFERENCE_BATCH, help=BATCH_HELP)
    e.add_argument("--precision", default="auto", help=PRECISION_HELP)
    e.add_argument("--compile", default="auto", choices=("auto", "on", "off"), help=COMPILE_HELP)
    _long_text_flags(e)
    _read_flags(e)
    add_train_flags(e, ("report_to",), helps={"report_to": "mlflow: log the scores to an existing MLflow run "
                                              "(--run-id, default: the run that trained DIR) under eval/NAME/"})
    e.add_argument("--run-id", metavar="ID", help="with --report-to mlflow: the MLflow run to log the scores to")


def _predict_flags(sub) -> None:
    pr = sub.add_parser("predict", help="classify texts", description="Classify texts given as arguments, "
                        "in a TSV/CSV/JSONL/plain-lines/Parquet file, or on stdin (one text per line unless --format "
                        "says otherwise); prints or writes JSONL (CSV by extension). Empty texts are skipped.")
    pr.add_argument("model_dir", metavar="DIR")
    pr.add_argument("texts", nargs="*", metavar="TEXT")
    pr.add_argument("--input", metavar="FILE", help="file to classify ('-' for stdin)")
    pr.add_argument("--output", metavar="FILE", help="where to write (default stdout)")
    add_train_flags(pr, ("text_col", "text_pair_col"), helps={
        "text_col": "text column of --input (default: the training text column, else text)",
        "text_pair_col": PAIR_COL_HELP + "; a JSONL file may name its fields text and text_pair"})
    pr.add_argument("--pair", nargs=2, action="append", metavar=("TEXT", "TEXT_PAIR"),
                    help="a sentence pair to classify with a pair model (repeat for more pairs)")
    pr.add_argument("--batch-size", type=int, default=INFERENCE_BATCH, help=BATCH_HELP)
    pr.add_argument("--shard", metavar="I/N", help="only rows whose index modulo N is I (split work over N workers)")
    pr.add_argument("--precision", default="auto", help=PRECISION_HELP)
    pr.add_argument("--compile", default="auto", choices=("auto", "on", "off"), help=COMPILE_HELP)
    pr.add_argument("--format", choices=FORMATS, help="format of --input (default: by extension; stdin: lines)")
    pr.add_argument("--explain", action="store_true", help="print the words that drove each prediction (Captum "
                    "Integrated Gradients: ~32 passes per text; torch models only); with --output, JSONL of all words")
    pr.add_argument("--engine", choices=["local", "ray"], default="local",
                    help="ray: classify in Ray Data actors (the cluster in RAY_ADDRESS, else a local one)")
    _long_text_flags(pr)
    pr.add_argument("--workers", type=int, default=2, help="--engine ray: model replicas (one GPU each if any)")
    _read_flags(pr)


def _models_flags(sub) -> None:
    mo = sub.add_parser("models", help="builtin models: list, path")
    mo_sub = mo.add_subparsers(dest="models_command", metavar="ACTION", parser_class=Parser)
    mo_sub.add_parser("list", help="show the builtin model names")
    mp = mo_sub.add_parser("path", help="print the directory of a builtin model (building it if needed)")
    mp.add_argument("name", nargs="?", default="me5-small")


def _trim_vocab_flags(sub) -> None:
    tv = sub.add_parser("trim-vocab", help="keep only the vocabulary pieces a corpus uses")
    tv.add_argument("src", metavar="SRC", help="model directory or builtin name")
    tv.add_argument("--corpus", required=True, metavar="FILE")
    tv.add_argument("--text-col", default="document")
    tv.add_argument("--out", required=True)
    _read_flags(tv)


def _baseline_flags(sub) -> None:
    b = sub.add_parser("baseline", help="TF-IDF + logistic regression baseline in seconds")
    add_train_flags(b, ("data", "train", "test", "text_col", "text_pair_col", "group_col", "label_col", "data_dir",
                        "sample", "seed"), helps={
        "test": "test file (default: NSMC test with --data nsmc, else 20%% of --train)",
        "text_pair_col": "second text column: sentence pairs, featurised as the first text's n-grams, the second's, "
                         "and their elementwise product",
        "group_col": "without --test: hold out whole groups (rows sharing this column's value) as the test split"})
    b.add_argument("--out", metavar="DIR", help="also store the result as DIR/baseline.json (e.g. a model directory)")
    add_train_flags(b, ("multi_label", "label_sep", "label_names"),
                    helps={"multi_label": "one-vs-rest, thresholds tuned on 20%% of train"})
    b.add_argument("--json", action="store_true")
    _read_flags(b)


def _serve_flags(sub) -> None:
    s = sub.add_parser("serve", help="HTTP server (Hugging Face Inference API shape) with micro-batching")
    s.add_argument("model_dir", metavar="DIR")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-batch", type=int, default=64, help="largest micro-batch of texts")
    s.add_argument("--max-wait-ms", type=float, default=5.0, help="how long to wait for a micro-batch to fill")
    s.add_argument("--max-texts", type=int, default=256, help="texts per request")
    s.add_argument("--max-chars", type=int, default=10000, help="characters per text")
    s.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body size")
    s.add_argument("--precision", default="auto", help=PRECISION_HELP)
    s.add_argument("--compile", default="auto", choices=("auto", "on", "off"), help=COMPILE_HELP)
    _long_text_flags(s)


def _export_flags(sub) -> None:
    x = sub.add_parser("export", help="export to ONNX (optionally int8) for fast CPU inference")
    x.add_argument("model_dir", metavar="DIR")
    x.add_argument("--onnx", action="store_true", required=True, help="export format (ONNX is the only one)")
    x.add_argument("--int8", action="store_true", help="int8 dynamic quantization, checked against fp32")
    x.add_argument("--check", metavar="FILE", help="labelled file to check int8 on (default: the model's validation rows)")
    x.add_argument("--min-agreement", type=number, default=None,
                   help="share of labels int8 must keep (default 0.99; multi-label: share of (text, label) "
                        "decisions, default 0.95), else a more faithful variant is tried")
    x.add_argument("--out", required=True, metavar="DIR2")


def _distill_flags(sub) -> None:
    d = sub.add_parser("distill", help="train a smaller, faster student of a trained model on its soft labels",
                       description="A student with N of the teacher's layers (evenly spaced, the top one kept), "
                       "trained on the teacher's own training rows (rebuilt from its bertclf.json) with the true "
                       "labels and the teacher's logits, plus unlabelled --texts. Unset recipe flags are the teacher's.")
    d.add_argument("teacher_dir", metavar="TEACHER_DIR")
    d.add_argument("--layers", type=int, required=True, metavar="N", help="layers of the student (< the teacher's)")
    d.add_argument("--out", required=True, metavar="DIR")
    d.add_argument("--texts", metavar="FILE", help="unlabelled texts: a file with a text column or one text per line")
    d.add_argument("--text-col", help="text column of --texts (default: the teacher's text column)")
    d.add_argument("--format", choices=FORMATS, help="format of --texts (default: by extension)")
    from bertclf.distill.run import RECIPE_FLAGS

    add_train_flags(d, RECIPE_FLAGS, helps={"epochs": "passes over the rows (default: the teacher's)",
                                            "lr": "peak learning rate (default: the teacher's)",
                                            "batch_size": "rows per micro-batch (default: the teacher's)"})
    d.add_argument("--temperature", type=number, default=2.0, metavar="T", help="softmax temperature (default 2)")
    d.add_argument("--alpha", type=number, default=0.5, metavar="A",
                   help="share of the soft-label loss on labelled rows (default 0.5; unlabelled rows: soft only)")
    add_train_flags(d, ("precision", "checkpoint_every", "resume", "overwrite"),
                    helps={"resume": "continue the distillation in --out from its last checkpoint (auto: if there "
                                     "is one)"})
    _read_flags(d)


def _report_flags(sub) -> None:
    rp = sub.add_parser("report", help="plots and a self-contained HTML page for a run (two runs: compared)")
    rp.add_argument("run_dirs", nargs="+", metavar="DIR")
    rp.add_argument("--out", metavar="FILE", help="HTML file (default DIR/report.html; several runs: A/compare-<B>.html)")


def _audit_flags(sub) -> None:
    au = sub.add_parser("audit", help="find training rows whose labels look wrong (cleanlab, out-of-fold probabilities)",
                        description="Out-of-fold probabilities for every row (TF-IDF + logistic regression, or a transformer "
                        "fine-tuned per fold with --model), then "
                        "cleanlab's confident learning; writes the suspect rows, most suspect first, and an HTML page.")
    au.add_argument("--train", required=True, metavar="FILE",
                    help="labelled TSV/CSV/JSONL/Parquet file (or Parquet folder/glob) to audit")
    au.add_argument("--text-col", help="text column (default: text)")
    add_train_flags(au, ("text_pair_col", "group_col"), helps={
        "text_pair_col": "second text column: sentence pairs",
        "group_col": "keep the rows sharing this column's value in one fold"})
    au.add_argument("--label-col", help="label column (default: label)")
    au.add_argument("--out", required=True, metavar="AUDIT.tsv", help="suspect rows (TSV); AUDIT.html goes beside it")
    au.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    add_train_flags(au, ("seed",))
    au.add_argument("--model", default="baseline", metavar="baseline|NAME|DIR",
                    help="out-of-fold model: baseline (TF-IDF + LR, default, minutes on a CPU) or a transformer "
                         "(builtin name, directory or hub name) fine-tuned per fold with bertclf train's defaults")
    add_train_flags(au, ("multi_label", "label_sep", "label_names"),
                    helps={"multi_label": "a label cell holds several labels (split by --label-sep): one-vs-rest "
                                          "out-of-fold probabilities, cleanlab's multi-label issues"})
    _read_flags(au)


def build_parser(config: dict | None = None, config_of: str = "train") -> Parser:
    """config: the values of --config FILE given to command `config_of`, the defaults beneath its flags."""
    p = Parser(prog="bertclf", description="Fine-tune transformer encoders for text classification.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    _train_flags(sub, config if config_of == "train" else None)
    _tune_flags(sub, config if config_of == "tune" else None)
    for add in (_eval_flags, _predict_flags, _models_flags, _trim_vocab_flags,
                _baseline_flags, _serve_flags, _export_flags, _distill_flags, _report_flags, _audit_flags):
        add(sub)
    return p


def _version() -> str:
    from bertclf import __version__

    return f"bertclf {__version__}"


def cmd_train(a) -> int:
    from dataclasses import fields

    from bertclf.distill.self_train import train
    from bertclf.train.callbacks import TrainCallback
    from bertclf.train.loop import TrainConfig

    cfg = TrainConfig(**{f.name: getattr(a, f.name) for f in fields(TrainConfig)})
    if a.config:
        from bertclf.train.config_file import rerun_notes

        for note in rerun_notes(a.config, cfg):
            print(f"bertclf: note: rerun of {a.config}: {note}", file=sys.stderr)

    class ReportPage(TrainCallback):  # written before the trackers (--report-to) take it as an artifact
        def on_train_end(self, run, card):
            if card:  # the main process (the others have {}) writes the report
                _write_report(run.out)

    if cfg.texts:  # each pass is a run of its own: the report is the kept model's, written once at the end
        train(cfg)
        _write_report(cfg.out)
    else:
        train(cfg, callbacks=[ReportPage()])
    return 0


def cmd_tune(a) -> int:
    from bertclf.tune.cli_flags import TUNE_FIELDS
    from bertclf.tune.run import tune

    tune({name: getattr(a, name) for name in TUNE_FIELDS}, a.out, trials=a.trials, timeout=a.timeout,
         storage=a.storage, study_name=a.study)
    return 0


def _write_report(out) -> None:
    try:  # the pictures are a bonus: never fail a finished run over them
        from bertclf.report import write_report

        print(f"report: {write_report([str(out)])}")
    except Exception as e:  # noqa: BLE001
        print(f"report not written: {e}")


def cmd_eval(a) -> int:
    from bertclf.inference.evaluate import evaluate
    from bertclf.data.metrics import format_report
    from bertclf.train.tracking import EvalRun

    tracked = EvalRun(a.report_to, a.run_id, a.model_dir, say=lambda s: print(s, file=sys.stderr))
    rep = evaluate(a.model_dir, data=a.data, test=a.test, text_col=a.text_col, label_col=a.label_col,
                   data_dir=a.data_dir, errors=a.errors, batch_size=a.batch_size, encoding=a.encoding,
                   columns=parse_columns(a.columns), log=lambda s: print(s, file=sys.stderr), precision=a.precision,
                   long_text=a.long_text, stride=a.stride, text_pair_col=a.text_pair_col, compile=a.compile)
    if a.json:
        print(json.dumps(rep, indent=2, ensure_ascii=False))
    else:
        print(format_report(rep))
        if a.errors:
            print(f"misclassified rows written to {a.errors}")
    tracked.log(rep, a.data or os.path.splitext(os.path.basename(a.test))[0])
    return 0


def cmd_predict(a) -> int:
    from bertclf.data.batches import check_batch_size
    from bertclf.inference.classifier import Classifier
    from bertclf.inference.records import check_output, parse_shard, predict_to

    if sum(map(bool, (a.texts, a.input, a.pair))) > 1:
        raise UserError("predict: give texts as arguments, pairs with --pair, or --input FILE: one of them")
    if a.pair:
        a.texts = [tuple(p) for p in a.pair]  # Classifier's pair form; a single-text model refuses it in one line
    if not a.texts and not a.input and sys.stdin.isatty():
        raise UserError("predict: no texts; give them as arguments, with --input FILE, or on stdin")
    shard, columns = parse_shard(a.shard), parse_columns(a.columns)  # every flag checked before the model loads
    check_batch_size(a.batch_size)
    if a.encoding:
        check_encoding(a.encoding)
    check_output(a.output, a.input)
    _warn_texts_naming_files([t for t in a.texts if isinstance(t, str)])
    if a.engine == "ray":
        if a.explain:
            raise UserError("predict: --explain runs on the local engine only (Captum needs the torch model in this "
                            "process); drop --engine ray, or --explain for plain predictions on Ray")
        return _predict_on_ray(a)
    clf = Classifier.load(a.model_dir, precision=a.precision, long_text=a.long_text, stride=a.stride,
                          compile="off" if a.explain else a.compile)  # Captum runs the eager model
    if a.explain:
        from bertclf.inference.explain import explain_to

        explain_to(clf, texts=a.texts or None, input_path=a.input or ("-" if not a.texts else None),
                   output_path=a.output, text_col=a.text_col, shard=shard, fmt=a.format, encoding=a.encoding,
                   columns=columns, text_pair_col=a.text_pair_col)
        return 0
    predict_to(clf, texts=a.texts or None, input_path=a.input or ("-" if not a.texts else None),
               output_path=a.output, text_col=a.text_col, batch_size=a.batch_size, shard=shard, fmt=a.format,
               encoding=a.encoding, columns=columns, text_pair_col=a.text_pair_col)
    if clf.compiled is not None:
        print(clf.compiled.summary(), file=sys.stderr)
    return 0


def _warn_texts_naming_files(texts: list[str]) -> None:
    """`predict DIR p.tsv` classifies the string "p.tsv": say so when a file of that name exists."""
    from pathlib import Path

    for t in texts:
        try:
            named = len(t) < 4096 and "\n" not in t and Path(t).is_file()
        except (OSError, ValueError):
            named = False
        if named:
            print(f"bertclf: note: '{t}' is classified as a text; a file of that name exists: --input {t} reads "
                  f"its rows", file=sys.stderr)


def _predict_on_ray(a) -> int:
    from bertclf.inference.ray_engine import predict_ray_to

    if a.shard:
        raise UserError("predict: --shard is for the local engine; --engine ray splits the rows over --workers")
    predict_ray_to(a.model_dir, texts=a.texts or None, input_path=a.input or ("-" if not a.texts else None),
                   output_path=a.output, text_col=a.text_col, batch_size=a.batch_size, workers=a.workers,
                   fmt=a.format, encoding=a.encoding, columns=parse_columns(a.columns), precision=a.precision,
                   long_text=a.long_text, stride=a.stride, text_pair_col=a.text_pair_col)
    return 0


def cmd_models(a) -> int:
    from bertclf.models.builtin import BUILTIN_MODELS, builtin_model_path

    if a.models_command == "list":
        for name, desc in BUILTIN_MODELS.items():
            print(f"{name}\t{desc}")
    elif a.models_command == "path":
        print(builtin_model_path(a.name, log=lambda s: print(s, file=sys.stderr)))
    else:
        raise UserError("models: give an action, list or path; see 'bertclf models -h'")
    return 0


def cmd_trim_vocab(a) -> int:
    from bertclf.models.resolve import resolve
    from bertclf.models.vocab_trim import trim_vocab_from_file

    src = resolve(a.src, log=lambda s: print(s, file=sys.stderr))
    stats = trim_vocab_from_file(src, a.corpus, a.text_col, a.out, encoding=a.encoding or "utf-8",
                                 columns=parse_columns(a.columns))
    print(json.dumps(stats))
    return 0


def cmd_baseline(a) -> int:
    from bertclf.models.baseline import format_baseline, run_baseline

    res = run_baseline(data=a.data, train=a.train, test=a.test, text_col=a.text_col, label_col=a.label_col,
                       text_pair_col=a.text_pair_col, group_col=a.group_col,
                       data_dir=a.data_dir, sample=a.sample, seed=a.seed, out=a.out, encoding=a.encoding or "utf-8",
                       columns=parse_columns(a.columns), multi_label=a.multi_label, label_sep=a.label_sep,
                       label_names=a.label_names)
    print(json.dumps(res, indent=2, ensure_ascii=False) if a.json else format_baseline(res))
    return 0


def cmd_serve(a) -> int:
    from bertclf.serve.app import serve

    serve(a.model_dir, host=a.host, port=a.port, max_batch=a.max_batch, max_wait_ms=a.max_wait_ms,
          max_texts=a.max_texts, max_chars=a.max_chars, max_body_bytes=a.max_body_bytes, precision=a.precision,
          long_text=a.long_text, stride=a.stride, compile=a.compile)
    return 0


def cmd_export(a) -> int:
    from bertclf.export.onnx_export import export_onnx

    if a.check and not a.int8:
        raise UserError("export: --check is for --int8 (the fp32 graph is checked against torch anyway)")
    info = export_onnx(a.model_dir, a.out, int8=a.int8, log=lambda s: print(s, file=sys.stderr), check=a.check,
                       min_agreement=a.min_agreement)
    print(json.dumps(info, indent=2))
    return 0


def cmd_distill(a) -> int:
    from bertclf.distill.run import distill

    distill(a.teacher_dir, a.layers, a.out, texts=a.texts, text_col=a.text_col, fmt=a.format,
            encoding=a.encoding or "utf-8", columns=parse_columns(a.columns), epochs=a.epochs, lr=a.lr, batch_size=a.batch_size,
            temperature=a.temperature, alpha=a.alpha, precision=a.precision, max_steps=a.max_steps,
            checkpoint_every=a.checkpoint_every, resume=a.resume, overwrite=a.overwrite)
    _write_report(a.out)
    return 0


def cmd_report(a) -> int:
    from bertclf.report import write_report

    print(write_report(a.run_dirs, out=a.out))
    return 0


def cmd_audit(a) -> int:
    from bertclf.audit.label_issues import format_summary, run_audit

    a.encoding = check_encoding(a.encoding or "utf-8")
    res = run_audit(a.train, a.out, text_col=a.text_col, label_col=a.label_col, folds=a.folds, seed=a.seed,
                    text_pair_col=a.text_pair_col, group_col=a.group_col,
                    log=lambda s: print(s, file=sys.stderr), model=a.model, encoding=a.encoding,
                    columns=parse_columns(a.columns), multi_label=a.multi_label, label_sep=a.label_sep,
                    label_names=a.label_names)
    print(format_summary(res))
    print(f"written: {res['out']} and {res['html']}")
    return 0


CONFIG_COMMANDS = ("train", "tune")  # the commands whose flags --config FILE may give
COMMANDS = {"baseline": cmd_baseline, "serve": cmd_serve, "export": cmd_export, "report": cmd_report,
            "train": cmd_train, "tune": cmd_tune, "eval": cmd_eval, "predict": cmd_predict, "models": cmd_models,
            "trim-vocab": cmd_trim_vocab, "audit": cmd_audit, "distill": cmd_distill}


def parse(argv=None) -> argparse.Namespace:
    """Parse the command line. predict's texts may follow its options (`predict DIR --batch-size 8 "text"`);
    anything else unrecognised is an error that points to the command's own help."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = build_parser(_config_values(argv), argv[0] if argv else "train").parse_known_args(argv)
    if args.command == "predict" and extra and not any(x.startswith("-") for x in extra):
        args.texts = list(args.texts) + extra
    elif extra:
        where = f"bertclf {args.command}" if args.command else "bertclf"
        raise UserError(f"{args.command + ': ' if args.command else ''}unrecognized arguments: {' '.join(extra)}; "
                        f"see '{where} -h'")
    return args


def _config_values(argv: list[str]) -> dict | None:
    """train --config FILE: the file's flag values, read before the command line is parsed (they are its defaults)."""
    if not argv or argv[0] not in CONFIG_COMMANDS:
        return None
    pre = Parser(prog=f"bertclf {argv[0]}", add_help=False)
    pre.add_argument("--config")
    config = pre.parse_known_args(argv[1:])[0].config
    if not config:
        return None
    from bertclf.train.config_file import read_config_file

    return read_config_file(config)


def main(argv=None) -> int:
    try:
        args = parse(argv)
        if not args.command:
            build_parser().print_help()
            return 2
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"bertclf: {e.prefix}{e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("bertclf: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
