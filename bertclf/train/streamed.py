"""prepare()'s data stage for a large Parquet/Arrow training file (issue 32): the file is streamed into a token
store (bertclf/data/file_store.py) and every step that walked the rows in Python works from the store's arrays.

Sentence pairs (--text-pair-col) and --group-col stream too: the store holds a pair's ids (and token type ids
where the tokenizer has them) and a hash per row of its group value.

What differs from the in-memory path (load_in_memory): the validation split and --sample are drawn with numpy
(file_store.stratified_positions: the same stratified shares, another draw, so the same seed picks other rows);
a --group-col split takes whole groups at random up to the asked share (file_store.grouped_positions), not
scikit-learn's label-balanced StratifiedGroupKFold; the repeated-text checks compare NFC text hashes; the share
of texts cut at --max-length is the whole file's. With --valid FILE and no --sample the rows, their order, the
batches and the losses are the in-memory path's. Per training row the process keeps an int64 row index, its
label id and what the OS pages in of the store.
"""
from __future__ import annotations

import itertools
import json
import time

import numpy as np

from bertclf.data import dataset as D
from bertclf.data import task as T
from bertclf.data.file_store import FileRows, StoredDataset, open_or_build_file
from bertclf.data.long_text import encode_rows
from bertclf.data.token_store import content_hash, repeats_in, text_hashes
from bertclf.models.resolve import check_max_length, load_tokenizer, resolve
from bertclf.models.vocab_trim import TextChunks


def load_streamed(cfg, accelerator, out, say, resuming: bool):
    """prepare.Loaded for cfg.train streamed: the file hashed once, the vocabulary trimmed over a pass of its
    texts, the store built by the node's main process (or reused), the split drawn from the label codes."""
    from bertclf.train.prepare import Loaded, TrainingData, say_data, say_repeats, trimmed_base

    from bertclf.train.low_memory import fix_mmap_threshold, return_freed_memory

    if cfg.low_memory:  # from the start, not from the model's load: the chunks of the build are large blocks
        fix_mmap_threshold()
    multi = bool(cfg.multi_label)
    rows, valid_file, test_ds = read_sources(cfg)
    with accelerator.local_main_process_first():
        rows.sha256  # noqa: B018 (one process per node reads the file to hash it; the others find it cached)
    base = resolve(cfg.model, log=say)
    check_max_length(cfg.max_length, base)
    if cfg.trim_vocab:
        extra = [valid_file.all_texts()] if valid_file else []
        texts = TextChunks(lambda: itertools.chain(rows.text_chunks(), extra))
        key = json.dumps(["file", rows.texts_key(), content_hash(extra[0], None) if extra else None])
        base = trimmed_base(base, out, texts, accelerator, say, reuse=resuming, cached=True, texts_key=key)
    tokenizer = load_tokenizer(base)
    t0 = time.time()
    with accelerator.local_main_process_first():
        store = open_or_build_file(tokenizer, rows, cfg.max_length, cfg.long_text, log=say,
                                   builds=accelerator.is_local_main_process)
    return_freed_memory()  # what the trim's and the build's chunks left in the heaps
    train_ds, valid_ds = split(cfg, StoredDataset.of(store, rows).sample(cfg.sample, cfg.seed, multi), valid_file,
                               multi, say)
    task, (y_train, y_valid, y_test) = encode_labels(cfg, train_ds, valid_ds, test_ds)
    say_data(cfg, task, train_ds, valid_ds, test_ds, say)
    valid_ids, valid_types = ((valid_ds.ids(), valid_ds.types()) if valid_file is None else
                              encode_rows(tokenizer, valid_file.texts, valid_file.pairs, cfg.max_length,
                                          cfg.long_text))
    train_len = np.array(train_ds.lengths(), dtype=np.int32)  # 4 bytes a row: the buckets' and meter's lengths
    in_train = repeats(train_ds, valid_ds, valid_file, test_ds)
    store.drop_pages(*(a for a in (store.hashes, store.labels, store.lengths, store.first_hashes, store.groups)
                       if a is not None))  # read once above; training reads ids (and type ids) only
    say(f"tokenized in {time.time() - t0:.1f}s: " + describe_stored_cut(tokenizer, store, train_len, cfg.max_length))
    say_repeats(in_train, valid_ds, test_ds, say)
    data = TrainingData(train_ds, valid_ds, test_ds, y_train, y_valid, y_test, train_ds.ids(), valid_ids, train_len,
                        train_ds.types(), valid_types, in_train)
    return Loaded(data, task, tokenizer, base)


def read_sources(cfg):
    """(the training file's FileRows, --valid FILE's Dataset or None, --test FILE's or None), read with the same
    columns; the group column only where the validation rows are carved from the training file (as in memory)."""
    multi = bool(cfg.multi_label)
    read = dict(encoding=cfg.encoding, columns=cfg.columns, allow_empty_label=multi)
    rows = FileRows(cfg.train, cfg.text_col, cfg.label_col, **read, pair_col=cfg.text_pair_col,
                    group_col=None if cfg.valid else cfg.group_col)
    read["pair_col"] = cfg.text_pair_col
    valid_file = D.read_labelled(cfg.valid, cfg.text_col, cfg.label_col, **read) if cfg.valid else None
    test_ds = D.read_labelled(cfg.test, cfg.text_col, cfg.label_col, **read) if cfg.test else None
    if test_ds is not None:
        test_ds = D.sample(test_ds, cfg.test_sample, cfg.seed, "--test-sample", multi)
    return rows, valid_file, test_ds


def repeats(train_ds: StoredDataset, valid_ds, valid_file, test_ds) -> dict:
    """Validation and test rows whose text (pair) is also a training row's, by NFC hash."""
    train_hashes = np.sort(train_ds.hashes())  # sorted once: np.isin below does not sort 10^7 hashes per check
    valid_hashes = valid_ds.hashes() if valid_file is None else text_hashes(valid_file.texts, valid_file.pairs)
    return {"valid": repeats_in(valid_hashes, train_hashes),
            "test": repeats_in(text_hashes(test_ds.texts, test_ds.pairs), train_hashes) if test_ds else None}


def describe_stored_cut(tokenizer, store, train_len: np.ndarray, max_length: int) -> str:
    """prepare.describe_cut's line from the counts the build kept (the whole file's, not the training split's)."""
    from bertclf.train.prepare import types_note

    meta, share = store.meta, lambda n: f"{n / max(1, len(store)) * 100:.1f}%"  # noqa: E731
    if not meta.get("pair_col"):
        return (f"mean {train_len.mean():.1f} tokens per training text, {share(meta['cut'])} of the file's texts "
                f"cut at --max-length {max_length}")
    return (f"mean {train_len.mean():.1f} tokens per training pair, {share(meta['cut'])} of the file's pairs cut at "
            f"--max-length {max_length} (longest first: the first text shortened in {share(meta['cut_first'])}, "
            f"the second in {share(meta['cut_second'])})" + types_note(tokenizer))


def split(cfg, whole: StoredDataset, valid_file, multi: bool, say):
    """(train, validation): the file's rows and --valid FILE, or a stratified (or grouped) split of the rows."""
    if valid_file is not None:
        return whole, valid_file
    share = whole.repeated_text_share() if not whole.file.group_col else 0.0  # grouped: the hint's advice is taken
    if share >= D.REPEAT_HINT_SHARE:
        say(f"hint: {share:.0%} of the rows of {whole.source} share their '{cfg.text_col}' text with another row, "
            f"and the validation split is by row: such rows land on both sides; pass --group-col {cfg.text_col} "
            f"to keep each text's rows together")
    return whole.split(cfg.valid_frac or D.default_valid_frac(len(whole), multi), cfg.seed, multi)


def encode_labels(cfg, train_ds: StoredDataset, valid_ds, test_ds):
    """The task (from the label values the training rows hold) and the label ids of the three splits; a stored
    split's ids come from encoding its distinct label values once, not a cell per row."""
    task = T.make_task(cfg, [train_ds.label_values[c] for c in present_codes(train_ds.codes(), train_ds)],
                       train_ds.source)
    y = (stored_ids(task, train_ds), stored_ids(task, valid_ds) if isinstance(valid_ds, StoredDataset) else
         task.encode(valid_ds.labels, valid_ds.source or "validation"),
         task.encode(test_ds.labels, test_ds.source) if test_ds else None)
    if cfg.class_weights == "auto":
        task.set_class_weights(y[0])
    return task, y


def stored_ids(task, ds: StoredDataset) -> np.ndarray:
    """task.encode of a stored split's labels: its distinct values encoded (an unknown one is the same one-line
    error), then looked up per row."""
    codes = ds.codes()
    present = present_codes(codes, ds)
    encoded = task.encode([ds.label_values[c] for c in present], ds.source)
    # a table from label code to encoded label, indexed per row: no sort and no int64 inverse of 10^7 rows; class
    # ids as int32 (4 bytes a row; collate widens each batch's), multi-hot rows as encoded
    table = np.zeros((len(ds.label_values),) + encoded.shape[1:],
                     dtype=np.int32 if encoded.ndim == 1 else encoded.dtype)
    table[present] = encoded
    return table[codes]


def present_codes(codes: np.ndarray, ds: StoredDataset) -> list[int]:
    """The label codes that occur in `codes` (a stored split's), ascending: a count per label value, no sorted
    copy of 10^7 codes as np.unique makes."""
    return np.flatnonzero(np.bincount(codes, minlength=len(ds.label_values))).tolist()
