"""Everything a training run needs before its first step: device and precision, output folder, data, model,
tokenized rows, batch plan, optimizer and schedule, and the state to start from (fresh or resumed)."""
from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from bertclf.rundir import checkpoint as ckpt
from bertclf.data import dataset as D
from bertclf.rundir import layout as rundir
from bertclf.data import task as T
from bertclf.data.batches import Batches, epoch_batches
from bertclf.train.callbacks import Events
from bertclf.models.resolve import check_max_length
from bertclf.train.config import RESUME_KEYS, TrainConfig, trims_vocab
from bertclf.errors import UserError
from bertclf.train.meter import Logger
from bertclf.models.resolve import load_classifier, load_tokenizer, resolve
from bertclf.models.precision import accelerate_mixed, autocast_dtype, pick_precision
from bertclf.train.state import TrainState
from bertclf.data.long_text import encode_rows
from bertclf.data.tokens import lengths, pair_cut

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase


# The default recipe (chosen on validation splits of training rows: benchmarks/quality/recipe_sweep.md).
BASE_LR = 1e-4        # peak lr at batch 32; scaled by sqrt(batch / 32), at most MAX_LR
MAX_LR = 2e-4
HEAD_LR = 1e-3        # the new classification head's peak lr is at least this (10x the encoder's at batch 32)
EPOCHS = 2            # default epochs of a single-label run
MIN_STEPS = 800       # multi-label default epochs: enough passes for about this many optimizer steps ...
EPOCHS_RANGE = (2, 10)  # ... but never fewer or more passes than these
PAIR_MIN_STEPS = 400  # sentence pairs: enough passes for about this many steps ...
PAIR_EPOCHS_RANGE = (2, 4)  # ... within these


def default_lr(batch_size: int) -> float:
    """Peak learning rate for --lr unset: square-root scaling with the global batch (Adam's rule of thumb)."""
    return min(MAX_LR, BASE_LR * math.sqrt(batch_size / 32))


def default_epochs(steps_per_epoch: int, multi_label: bool, pairs: bool = False) -> int:
    """Passes over the data for --epochs unset. Multi-label: small data gets more passes, so that it reaches
    MIN_STEPS steps (on 3,200 KOTE rows validation macro-F1 rose at every check up to 800 steps, and held-out
    macro-F1 0.4567 at 800 vs 0.4442 at 400: benchmarks/RESULTS.md, "Datasets"). Sentence pairs: likewise
    PAIR_MIN_STEPS, 2-4 passes (a relation between two texts is new to the encoder: on 3,807 premise-grouped
    KorNLI pairs validation accuracy rose at every epoch to 4, and held-out accuracy was 0.6158 after 4 against
    0.5858 after 2: RESULTS.md, "Sentence pairs"). Single-label: EPOCHS (on 2,000 hate-speech rows 7 epochs
    scored below 2: benchmarks/quality/recipe_sweep.md)."""
    if not multi_label and not pairs:
        return EPOCHS
    (lo, hi), steps = (EPOCHS_RANGE, MIN_STEPS) if multi_label else (PAIR_EPOCHS_RANGE, PAIR_MIN_STEPS)
    return int(min(hi, max(lo, math.ceil(steps / max(1, steps_per_epoch)))))


@dataclass
class Plan:
    """How many steps, and when to log and evaluate."""
    batch_size: int        # rows per micro-batch on each process, before any out-of-memory back-off
    lr: float
    eff_batch: int         # rows per optimizer step on each process
    steps_per_epoch: int
    total_steps: int
    n_epochs: int
    log_every: int
    eval_every: int


@dataclass
class TrainingData:
    """The run's rows: datasets as read, labels encoded for the task, token ids tokenized once up front."""
    train_ds: D.Dataset
    valid_ds: D.Dataset
    test_ds: D.Dataset | None
    y_train: np.ndarray
    y_valid: np.ndarray
    y_test: np.ndarray | None
    train_ids: list[np.ndarray]
    valid_ids: list[np.ndarray]
    train_len: np.ndarray       # tokens per training row: the length buckets and the tokens/s meter read it
    train_types: list[np.ndarray] | None = None  # sentence pairs: token type ids beside the ids (None: none)
    valid_types: list[np.ndarray] | None = None
    in_train: dict = field(default_factory=dict)  # validation / test rows whose text is also a training text


@dataclass
class Learner:
    """What learns: the model (wrapped by Accelerate), its tokenizer, optimizer and schedule."""
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    pad_id: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


@dataclass
class Run:
    """One training run, set up: its settings and machinery, data, learner and plan; what the loop and the final
    stage read."""
    cfg: TrainConfig
    accelerator: Accelerator
    mixed: str                 # "no" | "bf16" | "fp16"
    out: Path
    say: Callable[[str], None]  # print on the main process, nothing elsewhere
    log: Logger
    task: T.SingleLabel        # or T.MultiLabel (a subclass): encoding, loss, metrics, card
    data: TrainingData
    learner: Learner
    plan: Plan
    run_args: dict
    state: TrainState
    events: Events = field(default_factory=Events)  # bertclf.train.callbacks: train() sets the run's callbacks
    card_extra: dict = field(default_factory=dict)  # more model-card fields (bertclf distill: distilled_from)
    compiled: dict | None = None  # --compile: the shapes compiled and their first steps' seconds (the card's)

    @property
    def labels(self):
        return self.task.labels

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def autocast_dtype(self):
        return autocast_dtype(self.mixed)

    def batches(self, epoch: int) -> Batches:
        """This process's batches of `epoch`, in order (a pure function of seed and epoch)."""
        return epoch_batches(self.data.train_len, self.plan.eff_batch, self.cfg.seed, epoch, world_size=self.world,
                             rank=self.accelerator.process_index)

    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.learner.model)

    def data_sha256(self) -> dict:
        """The SHA-256 of the training (and --valid) file, which --resume requires unchanged."""
        return {"train": self.data.train_ds.sha256} | ({"valid": self.data.valid_ds.sha256} if self.cfg.valid else {})


def count_cut(tokenizer, texts: list[str], kept_lengths: np.ndarray, max_length: int) -> int:
    """How many texts were longer than max_length: of those kept at exactly max_length tokens, the ones whose
    whole tokenization is longer (a text of exactly max_length tokens is not cut)."""
    full = np.flatnonzero(kept_lengths >= max_length).tolist()
    if not full:
        return 0
    ids = tokenizer([texts[i] for i in full], truncation=False, return_attention_mask=False, verbose=False)
    return sum(len(x) > max_length for x in ids["input_ids"])


def describe_cut(tokenizer, ds: D.Dataset, ids: list, max_length: int) -> str:
    """Mean tokens per training row and the share cut at max_length; for pairs, the share cut on each side."""
    mean = lengths(ids).mean()
    if ds.pairs is None:
        cut = count_cut(tokenizer, ds.texts, lengths(ids), max_length)
        return f"mean {mean:.1f} tokens per training text, {cut / len(ids) * 100:.1f}% cut at --max-length {max_length}"
    either, first, second = pair_cut(tokenizer, ds.texts, ds.pairs, ids, max_length)
    share = lambda n: f"{n / len(ids) * 100:.1f}%"  # noqa: E731
    return (f"mean {mean:.1f} tokens per training pair, {share(either)} cut at --max-length {max_length} (longest "
            f"first: the first text shortened in {share(first)}, the second in {share(second)})"
            + types_note(tokenizer))


def types_note(tokenizer) -> str:
    """Said once for a pair run: whether the pair's two sides are told apart by segment ids."""
    from bertclf.data.tokens import uses_token_types

    return "; with token type ids" if uses_token_types(tokenizer) else \
        "; no token type ids (the tokenizer's pair template marks the sides by its separators alone)"


STORE_FROM_ROWS = 100_000  # --token-store auto: a store from this many training rows (seconds of tokenizing)


def uses_store(cfg: TrainConfig, n_train: int) -> bool:
    return cfg.token_store == "on" or (cfg.token_store == "auto" and n_train >= STORE_FROM_ROWS)


def tokenize(cfg: TrainConfig, tokenizer, train_ds, valid_ds, test_ds, accelerator, say):
    """((train ids, types), (validation ids, types), rows repeated from training): token ids as lists of arrays,
    or, with a token store (bertclf/data/token_store.py), as views into its memory maps: the node's main
    process builds the store (or finds it), then the other processes open it."""
    if not uses_store(cfg, len(train_ds)):
        train = encode_rows(tokenizer, train_ds.texts, train_ds.pairs, cfg.max_length, cfg.long_text)
        valid = encode_rows(tokenizer, valid_ds.texts, valid_ds.pairs, cfg.max_length, cfg.long_text)
        return train, valid, {"valid": D.texts_in(valid_ds, train_ds),
                              "test": D.texts_in(test_ds, train_ds) if test_ds else None}
    from bertclf.data.token_store import open_or_build, repeats_in, text_hashes

    stores = []
    for ds in (train_ds, valid_ds):
        with accelerator.local_main_process_first():
            stores.append(open_or_build(tokenizer, ds.texts, ds.pairs, cfg.max_length, cfg.long_text, log=say,
                                        builds=accelerator.is_local_main_process))
    train, valid = stores
    test_in = repeats_in(text_hashes(test_ds.texts, test_ds.pairs), train.hashes) if test_ds else None
    return (train.ids, train.types), (valid.ids, valid.types), {"valid": repeats_in(valid.hashes, train.hashes),
                                                                 "test": test_in}


def say_repeats(in_train: dict, valid_ds, test_ds, say) -> None:
    if in_train["valid"] or in_train["test"]:
        say("repeated texts: also in the training rows: " + ", ".join(
            f"{n} of {len(ds)} {name}" for name, n, ds in (("validation", in_train["valid"], valid_ds),
                                                            ("test", in_train["test"], test_ds)) if n)
            + " (exact repeats; their scores are partly scores on training texts)")


def load_data(cfg: TrainConfig, log=print):
    """(train, valid, test or None) datasets, as the config asks (bertclf.data.dataset reads and checks them)."""
    return D.load_training_data(cfg, log=log)


def prepare(cfg: TrainConfig, echo=print, held=None, objective=None) -> Run:
    """held: a contextlib.ExitStack that keeps the output folder's lock until the run ends. objective: None for
    plain fine-tuning; bertclf distill's (bertclf/distill/run.py) adds rows, targets, its loss and its start model."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed

    resuming, overwrite = resume_or_start(cfg)
    on_gpu = torch.cuda.is_available()
    batch_size = cfg.batch_size or (256 if on_gpu else 32)
    lr = cfg.lr or default_lr(batch_size)
    D.default_columns(cfg)
    cfg.trim_vocab = trims_vocab(cfg)  # unset: on for the builtin models (recorded resolved, for --resume)
    run_args = asdict(cfg) | {"batch_size": batch_size, "lr": lr}
    if resuming:  # settings first: before the accelerator (its precision is set once) and any trimming
        refuse_changed_settings(Path(cfg.out), run_args, derived={"lr": "--batch-size"} if cfg.lr is None else {})
    mixed = pick_precision(cfg.precision)
    if not torch.distributed.is_initialized():  # a second train() in one process (a notebook) may pick another
        AcceleratorState._reset_state()         # precision; Accelerate keeps the first one's state otherwise
    accelerator = Accelerator(mixed_precision=accelerate_mixed(mixed), cpu=not on_gpu)
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    main = accelerator.is_main_process
    say = echo if main else (lambda *a, **k: None)
    out = rundir.prepare(cfg.out, resuming, overwrite) if main else Path(cfg.out)
    if main and held is not None:  # after the read-only refusals, before anything in the folder changes
        held.enter_context(rundir.lock(out))
    accelerator.wait_for_everyone()
    set_seed(cfg.seed, device_specific=True)  # + process index: ranks draw different dropout masks

    # data and tokenizer (vocabulary trimmed to the training texts if asked), token ids, then the model
    if streams_file(cfg, objective):  # a large Parquet/Arrow file: streamed into a token store, no list per row
        from bertclf.train.streamed import load_streamed

        loaded = load_streamed(cfg, accelerator, out, say, resuming)
    else:
        loaded = load_in_memory(cfg, accelerator, out, say, resuming, objective)
    task, tokenizer, data = loaded.task, loaded.tokenizer, loaded.data
    model = load_classifier(loaded.base, task.labels.id2label)
    if cfg.low_memory:
        from bertclf.train.low_memory import use_low_memory

        say("--low-memory: " + ("; ".join(use_low_memory(model)) or "nothing applies to this model"))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    plan = make_plan(cfg, batch_size, lr, data.train_len, world, rank)
    say(f"model {cfg.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; device {device}"
        f" x{world}, precision {'fp32' if mixed == 'no' else mixed}; global batch {plan.eff_batch * world} "
        f"(= {batch_size} per micro-batch x {cfg.grad_accum} accumulation x {world} processes), lr {lr:g}, "
        f"{plan.total_steps} steps over {plan.n_epochs} epoch(s)")
    if not resuming:  # a resumed run loads its head from the checkpoint
        task.init_head(model, data.y_train)
    optimizer, scheduler = make_optimizer(cfg, model, plan, bf16_weights=mixed == "bf16-weights")
    model, optimizer = accelerator.prepare(model, optimizer)

    run = Run(cfg, accelerator, mixed, out, say, Logger(out, main, echo=say), task, data,
              Learner(model, tokenizer, pad_id, optimizer, scheduler), plan, run_args | {"processes": world},
              TrainState(n_micro=cfg.grad_accum), card_extra=objective.card_fields() if objective else {})
    if resuming:
        resume(run)
    elif main:
        rundir.clear_previous_run(out)
    return run


@dataclass
class Loaded:
    """What the data stage of prepare() gives the rest: the rows and their token ids, the task, the tokenizer
    and the (possibly trimmed) model folder to load."""
    data: TrainingData
    task: T.SingleLabel
    tokenizer: PreTrainedTokenizerBase
    base: str


def streams_file(cfg: TrainConfig, objective=None) -> bool:
    """Whether the training file is streamed into a token store (bertclf/train/streamed.py) instead of read
    into lists: a Parquet/Arrow source whose run uses the store (--token-store on, or auto from STORE_FROM_ROWS
    rows by its metadata), single texts or sentence pairs, with or without --group-col, not a distilled student
    (whose rows the objective rewrites)."""
    from bertclf.io.rows import is_columnar_source

    if (objective is not None or cfg.data == "nsmc" or cfg.token_store == "off"
            or not is_columnar_source(cfg.train)):
        return False
    if cfg.token_store == "on":
        return True
    from bertclf.io.columnar import count_rows

    return count_rows(cfg.train) >= STORE_FROM_ROWS


def load_in_memory(cfg: TrainConfig, accelerator, out: Path, say, resuming: bool, objective=None) -> Loaded:
    """Read the files into Dataset lists, encode the labels, trim the vocabulary and tokenize (or open the token
    store of these rows)."""
    train_ds, valid_ds, test_ds = load_data(cfg, log=say)
    # single- or multi-label: label map, encoding, loss, metrics (bertclf/data/task.py)
    task = T.make_task(cfg, train_ds.labels, train_ds.source, raw=D.NSMC_LABELS if cfg.data == "nsmc" else None)
    y_train = task.encode(train_ds.labels, train_ds.source)
    y_valid = task.encode(valid_ds.labels, valid_ds.source or "validation")
    y_test = task.encode(test_ds.labels, test_ds.source) if test_ds else None
    if cfg.class_weights == "auto":
        task.set_class_weights(y_train)
    if objective is not None:  # writes the model cfg.model names (the student) and returns its training rows
        train_ds, y_train, task = objective.setup(out, train_ds, y_train, task, accelerator, say, resuming)
    say_data(cfg, task, train_ds, valid_ds, test_ds, say)
    base = resolve(cfg.model, log=say)
    check_max_length(cfg.max_length, base)  # a hub model's positions are known only once it is resolved
    if cfg.trim_vocab:
        base = trimmed_base(base, out, train_ds.all_texts() + valid_ds.all_texts(), accelerator, say,
                            reuse=resuming, cached=uses_store(cfg, len(train_ds)))
    tokenizer = load_tokenizer(base)
    # tokenize once, up front (or open the token store a previous run or the main process wrote)
    t0 = time.time()
    (train_ids, train_types), (valid_ids, valid_types), in_train = tokenize(cfg, tokenizer, train_ds, valid_ds,
                                                                            test_ds, accelerator, say)
    train_len = lengths(train_ids)
    say(f"tokenized in {time.time() - t0:.1f}s: " + describe_cut(tokenizer, train_ds, train_ids, cfg.max_length))
    say_repeats(in_train, valid_ds, test_ds, say)
    data = TrainingData(train_ds, valid_ds, test_ds, y_train, y_valid, y_test, train_ids, valid_ids, train_len,
                        train_types, valid_types, in_train)
    return Loaded(data, task, tokenizer, base)


def say_data(cfg: TrainConfig, task, train_ds, valid_ds, test_ds, say) -> None:
    say(f"data: {len(train_ds)} train, {len(valid_ds)} validation"
        + (f", {len(test_ds)} test" if test_ds else "")
        + f" rows; labels {', '.join(task.labels.names)}"
        + (f"; dropped {train_ds.dropped_empty} empty train" + (f" / {test_ds.dropped_empty} empty test" if test_ds
                                                                 else "") + " rows"
           if cfg.data == "nsmc" or train_ds.dropped_empty else ""))


def make_plan(cfg: TrainConfig, batch_size: int, lr: float, train_len, world: int, rank: int) -> Plan:
    eff_batch = batch_size * cfg.grad_accum
    steps_per_epoch = len(epoch_batches(train_len, eff_batch, cfg.seed, 0, world_size=world, rank=rank))
    total_steps = math.ceil(steps_per_epoch * (cfg.epochs or default_epochs(steps_per_epoch, cfg.multi_label,
                                                                              bool(cfg.text_pair_col))))
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    return Plan(batch_size=batch_size, lr=lr, eff_batch=eff_batch, steps_per_epoch=steps_per_epoch,
                total_steps=total_steps, n_epochs=math.ceil(total_steps / steps_per_epoch),
                log_every=cfg.log_every or max(1, min(500, total_steps // 20)),
                eval_every=cfg.eval_every or steps_per_epoch)


def make_optimizer(cfg: TrainConfig, model, plan: Plan, bf16_weights: bool = False):
    """AdamW (no weight decay on biases and LayerNorm) with linear warmup and decay; the freshly initialised
    classification head (every parameter outside the pretrained encoder) at max(peak lr, HEAD_LR): a random
    layer needs larger steps than pretrained weights that fine-tuning should only nudge. bf16_weights: over fp32
    master copies of the weights, the model cast to bf16 (bertclf/train/master_weights.py)."""
    from transformers import get_linear_schedule_with_warmup

    prefix = getattr(model, "base_model_prefix", "") + "."
    groups = {}
    for n, p in model.named_parameters():
        decays = p.ndim >= 2 and "LayerNorm" not in n
        head = prefix != "." and not n.startswith(prefix)
        groups.setdefault((decays, head, 0 if head else layers_below_top(n, model.config)), []).append(p)
    # fused: one kernel for all parameters, on GPUs and CPUs (2 CPU cores, 23.6M parameters: 18 ms per step
    # instead of foreach's 83, benchmarks/training/step_parts.py; a tenth of a bf16 training step at batch 32)
    param_groups = [{"params": ps, "weight_decay": cfg.weight_decay if decays else 0.0,
                     "lr": max(plan.lr, HEAD_LR) if head else plan.lr * cfg.layer_decay ** below}
                    for (decays, head, below), ps in sorted(groups.items())]
    if bf16_weights:
        from bertclf.train.master_weights import MasterWeightsAdamW

        optimizer = MasterWeightsAdamW(param_groups, lr=plan.lr, fused=True)
    else:
        optimizer = torch.optim.AdamW(param_groups, lr=plan.lr, fused=True)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup * plan.total_steps), plan.total_steps)
    return optimizer, scheduler


def layers_below_top(name: str, config) -> int:
    """--layer-decay's exponent for a parameter of the pretrained encoder: 0 for the top layer (and the pooler or
    anything above the layers), L - i for layer i of L (BERT-style `layer.i.` names), L for the embeddings."""
    n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", 0)
    found = re.search(r"\.layers?\.(\d+)\.", name)
    if found:
        return max(0, n_layers - 1 - int(found.group(1)))
    return n_layers if "embeddings" in name else 0


def resume_or_start(cfg: TrainConfig) -> tuple[bool, bool]:
    """(resume?, overwrite?) for this run. --resume auto continues a run that has a complete checkpoint and
    otherwise starts fresh, replacing what a run killed before its first checkpoint left; a finished model is
    never replaced by it. Every process decides alike: they read the same folder."""
    if cfg.resume != "auto":
        return bool(cfg.resume), cfg.overwrite
    if ckpt.latest_checkpoint(Path(cfg.out), log=lambda s: None) is not None:
        return True, cfg.overwrite
    if rundir.has_card(cfg.out) and not cfg.overwrite:
        raise UserError(f"--resume auto: {cfg.out} holds a finished model and no checkpoint; there is nothing to "
                        f"resume: choose a new directory or --overwrite to train it again")
    return False, True


def resume(run: Run) -> None:
    """Continue from the newest complete checkpoint of the same run; refuse other settings with one line."""
    out, say = run.out, run.say
    found = ckpt.latest_checkpoint(out, log=say)
    if found is None:
        raise UserError(f"--resume: no complete checkpoint in {rundir.checkpoints_dir(out)}; start without --resume")
    saved_state = ckpt.read_trainer_state(found)
    saved = saved_state["args"]
    if saved.get("processes", 1) != run.world:
        # Another process count is another global batch: another batch plan, step count and schedule.
        raise UserError(f"--resume: the run in {out} was trained by {saved.get('processes', 1)} process(es), "
                        f"this one has {run.world}; resume with the same number of processes")
    refuse_changed_settings(out, run.run_args)  # settings first: a checkpoint of other settings may not load
    check_same_data(run, saved_state.get("data_sha256") or {}, found)
    loaded = ckpt.load_checkpoint(found, run.unwrapped(), run.learner.optimizer, run.learner.scheduler,
                                  rank=run.accelerator.process_index)
    run.state = TrainState.from_dict(loaded)
    if run.main:
        rundir.truncate_log(out, run.state.step)
    say(f"resumed from {found.name}: step {run.state.step}, epoch {run.state.epoch + 1}")


def refuse_changed_settings(out: Path, run_args: dict, derived: dict | None = None) -> None:
    """--resume with other settings (RESUME_KEYS) than the newest complete checkpoint's: one line naming them.
    derived: setting -> the flag its default follows (the default lr follows --batch-size), so a setting the user
    never passed is named as what moved it."""
    found = ckpt.latest_checkpoint(out, log=lambda s: None)
    if found is None and rundir.texts_dir(out).is_dir():  # before anything is written in `out`
        raise UserError(f"--resume: --texts differs from the run in {out} (it trains with --texts, see "
                        f"{rundir.texts_dir(out)}); repeat its settings, or start again with --overwrite")
    if found is None:
        return  # resume() says there is no checkpoint
    saved = ckpt.read_trainer_state(found)["args"]
    from dataclasses import fields

    defaults = {f.name: f.default for f in fields(TrainConfig)}  # a checkpoint older than a key ran its default
    changed = [k for k in RESUME_KEYS if saved.get(k, defaults.get(k)) != run_args.get(k)]
    if changed:
        derived = derived or {}
        named = [f"--{k.replace('_', '-')}" + (f" (its default follows {derived[k]})" if k in derived else "")
                 for k in changed]
        raise UserError(f"--resume: {', '.join(named)} {'differs' if len(named) == 1 else 'differ'} from the "
                        f"run in {out}; repeat its settings (see {found / ckpt.TRAINER_STATE})")


def check_same_data(run: Run, recorded: dict, found: Path) -> None:
    """The same path is not enough: a training file replaced between the crash and --resume is refused."""
    for split, sha in run.data_sha256().items():
        if recorded.get(split) and sha and recorded[split] != sha:
            path = run.cfg.train if split == "train" else run.cfg.valid
            raise UserError(f"--resume: {path or run.data.train_ds.source} changed since the run in {run.out} was "
                            f"checkpointed (SHA-256 differs from {found.name}); resume with the original file or "
                            f"start again with --overwrite")


def trimmed_base(base: str, out: Path, texts: list[str], accelerator, say, reuse: bool = False,
                 cached: bool = False, texts_key: str | None = None) -> str:
    """Trim the vocabulary to the pieces the training texts use (once per run; reused on resume only: an
    --overwrite run may train on other texts). cached (runs with a token store): the trim is kept in the bertclf
    cache under (source model, texts) and copied from there by a later run on the same rows, which then does not
    tokenize every text again to count its pieces."""
    from bertclf.models.vocab_trim import trim_vocab

    target = rundir.base_model_dir(out)
    if accelerator.is_main_process and not (reuse and (target / "config.json").is_file()):
        if not cached:
            trim_vocab(base, texts, target, log=say)
        else:
            kept = trim_cache_dir(base, texts, texts_key)
            if (kept / "config.json").is_file():
                say(f"vocabulary: the trim of these texts, reused ({kept})")
            else:
                trim_vocab(base, texts, kept, log=say)
            import shutil

            from bertclf.io.files import atomic_dir

            with atomic_dir(target) as tmp:
                shutil.copytree(kept, tmp, dirs_exist_ok=True)
    accelerator.wait_for_everyone()
    return str(target)


TRIM_FORMAT = 1  # bump when trim_vocab's output for the same model and texts changes


def trim_cache_dir(base: str, texts: list[str], texts_key: str | None = None) -> Path:
    """Where the trim of `base` to `texts` is kept: keyed by the source model's files (tokenizer and config by
    content, weights by size and modification time) and the texts' content hash (texts_key: what stands for it
    when the texts are a streamed file's: its SHA-256 and column)."""
    import hashlib
    import json

    from bertclf.data.token_store import content_hash
    from bertclf.io.files import cache_dir, sha256_file

    src = Path(base)
    model = {p.name: ([p.stat().st_size, p.stat().st_mtime_ns] if p.suffix in (".safetensors", ".bin")
                      else sha256_file(p)) for p in sorted(src.iterdir()) if p.is_file()}
    key = json.dumps({"format": TRIM_FORMAT, "model": [str(src.resolve()), model],
                      "texts": texts_key or content_hash(texts, None)}, sort_keys=True)
    return cache_dir() / "trimmed" / hashlib.sha256(key.encode()).hexdigest()[:32]
