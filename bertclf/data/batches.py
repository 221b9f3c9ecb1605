"""Stage 3, batches: length-bucketed batch order and dynamic padding.

Why buckets: NSMC reviews are 3 to 140 characters; padding every batch to the longest review in the corpus
wastes most of the compute. We shuffle, cut the shuffled order into pools of `pool` batches, sort each pool
by length, cut it into batches, then shuffle the batches. Each batch holds similar lengths (little padding)
while the order stays random. Everything is a pure function of (seed, epoch): a resumed run sees the same
batches, and every rank of a distributed run computes the same plan and takes its own share.
"""
from __future__ import annotations

import numpy as np
import torch

from bertclf.errors import UserError


class Batches:
    """An epoch's batches as one array of row indices and each batch's start: len, indexing (a batch: a view)
    and slicing (the batches from a step on, for a resumed epoch) as a list of arrays would, without a Python
    object per batch. int32 rows below 2**31: 4 bytes a row (10^7 rows: 40 MB instead of ~150 MB as a list of
    arrays), the one part of a streamed run's memory that grows with the rows besides its lengths and labels."""

    def __init__(self, rows: np.ndarray, starts: np.ndarray):
        self.rows, self.starts = rows, starts  # starts: len(batches) + 1 offsets into rows

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            lo, hi, step = i.indices(len(self))
            if step != 1:
                raise ValueError("Batches: slices with a step are not supported")
            hi = max(lo, hi)
            return Batches(self.rows[self.starts[lo]:self.starts[hi]], self.starts[lo:hi + 1] - self.starts[lo])
        i = range(len(self))[i]
        return self.rows[self.starts[i]:self.starts[i + 1]]

    def __iter__(self):
        return (self.rows[a:b] for a, b in zip(self.starts[:-1].tolist(), self.starts[1:].tolist()))


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, pool: int = 64,
                  world_size: int = 1, rank: int = 0) -> Batches:
    """The batches (arrays of row indices) that `rank` trains on in `epoch`, in order.

    With world_size > 1 every global batch of batch_size*world_size rows is split across ranks, so the
    number of optimizer steps is the same as one process with the same global batch.
    """
    n = len(lengths)
    rng = np.random.default_rng([seed, epoch])
    order = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
    rng.shuffle(order)  # rng.permutation(n)'s draws and result, without its int64 copy
    head = order[:world_size].copy()  # a short batch's padding rows: the epoch's first, before the sorting
    global_bs = batch_size * world_size
    span = global_bs * pool  # a whole number of global batches: every batch starts at a multiple of global_bs
    for start in range(0, n, span):
        chunk = order[start:start + span]
        chunk[:] = chunk[np.argsort(lengths[chunk], kind="stable")]
    starts = np.arange(0, n, global_bs, dtype=np.int64)
    sizes = np.diff(np.append(starts, n))
    short = n - int(starts[-1]) if n else world_size  # only the sorted order's last batch can be short
    if short < world_size:
        # Each rank takes every world_size-th row of each global batch (below). A batch with fewer rows than
        # ranks borrows rows from the start of the epoch's order, as torch's DistributedSampler pads, so every
        # rank steps together and the step count matches one process: the borrowed rows follow it in `order`.
        pad = head[:world_size - short]  # fewer when the epoch has fewer rows than ranks
        order = np.concatenate([order, pad])
        sizes[-1] = short + len(pad)
    perm = rng.permutation(len(starts))
    return _gathered(order, starts[perm], sizes[perm], world_size, rank)


GATHER_BATCHES = 1 << 15  # batches gathered at a time: the int64 positions in flight stay ~8 MB at batch 32


def _gathered(order, starts, sizes, world_size: int, rank: int) -> Batches:
    """The batches starting at `starts` (positions in `order`, `sizes` rows each), in that order, each cut to its
    rows rank, rank + world_size, ... (every rank takes its share of each global batch: similar lengths on every
    rank, balanced work): one array of rows, filled a block of batches at a time."""
    mine = (sizes - rank + world_size - 1) // world_size  # rows of each batch that fall to this rank
    bounds = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(mine, out=bounds[1:])
    rows = np.empty(int(bounds[-1]), dtype=order.dtype)
    for lo in range(0, len(sizes), GATHER_BATCHES):
        hi = min(len(sizes), lo + GATHER_BATCHES)
        a, b = int(bounds[lo]), int(bounds[hi])
        within = (np.arange(a, b, dtype=np.int64) - np.repeat(bounds[lo:hi], mine[lo:hi])) * world_size + rank
        rows[a:b] = order[np.repeat(starts[lo:hi], mine[lo:hi]) + within]
    return Batches(rows, bounds)


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """For inference: batches of similar length, longest first (so an out-of-memory shows up at once)."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def collate(ids: list[np.ndarray], rows: np.ndarray, pad_id: int, labels: np.ndarray | None = None,
            multiple: int = 8, types: list[np.ndarray] | None = None, widths: tuple[int, ...] | None = None,
            pad_rows_to: int | None = None) -> dict[str, torch.Tensor]:
    """Pad rows to the batch's longest (rounded up to a multiple of 8 for tensor cores). types: the rows' token
    type ids (sentence pairs), padded with 0, or None: the model's default (all 0).
    Static shapes (a compiled step, bertclf/train/compiled.py): widths: pad to the smallest of these that holds the
    longest row instead; pad_rows_to: add padding rows up to this many (one attended pad token each, so their
    attention is finite; labels cover the real rows only: the caller keeps the first len(rows) outputs)."""
    seqs = [ids[i] for i in rows]
    width = max(len(s) for s in seqs)
    width = next(w for w in widths if w >= width) if widths else -(-width // multiple) * multiple
    n = max(len(seqs), pad_rows_to or 0)
    input_ids = np.full((n, width), pad_id, dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    mask[len(seqs):, 0] = 1
    for r, s in enumerate(seqs):
        input_ids[r, :len(s)] = s
        mask[r, :len(s)] = 1
    batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
    if types is not None:
        type_ids = np.zeros((n, width), dtype=np.int64)
        for r, i in enumerate(rows):
            type_ids[r, :len(types[i])] = types[i]
        batch["token_type_ids"] = torch.from_numpy(type_ids)
    if labels is not None:
        y = labels[rows]  # class ids, or multi-hot rows (multi-label) kept as float for BCE
        batch["labels"] = torch.from_numpy(y.astype(np.int64) if y.ndim == 1 else y.astype(np.float32))
    return batch


def static_widths(max_length: int, smallest: int = 16) -> tuple[int, ...]:
    """The padded widths of a compiled step: 16, 24, 32, 48, 64, 96, 128, ... (each 1.5x or 1.33x the one
    before, multiples of 8) below max_length, and max_length itself: 7 widths at the default 128, 11 at 512.
    At most a third of a batch is padding the rounding added, and every width is compiled once."""
    widths, w = [], smallest
    while w < max_length:
        widths.append(w)
        w = w * 3 // 2 if w & (w - 1) == 0 else w * 4 // 3  # a power of two x1.5, else x4/3 to the next power
    return (*widths, max_length)


def split_micro(rows: np.ndarray, n_micro: int) -> list[np.ndarray]:
    """Split one optimizer batch into n_micro micro-batches (gradient accumulation / OOM back-off)."""
    n_micro = max(1, min(n_micro, len(rows)))
    return [part for part in np.array_split(rows, n_micro) if len(part)]


INFERENCE_BATCH = 64  # eval, predict and serve's default texts per forward pass: one default, the same batches
# Classifier scores texts in blocks of this many (length-sorted batches within a block) and predict streams files
# in chunks of it: a text meets the same batch neighbours, and the same bf16 rounding, in eval and predict
SCORING_BLOCK = 4096


def check_batch_size(batch_size, flag: str = "--batch-size") -> None:
    """Rows per batch must be a whole number >= 1 (with -1 no batch would run and every score would be 0.5)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"{flag}: must be a whole number >= 1, got {batch_size}")
