"""Scoring during training: the model's logits on tokenized rows, each process scoring its share and the shares
gathered back in row order, and the task's report on them."""
from __future__ import annotations

import math

import numpy as np

from bertclf.models.forward import predict_logits


def gathered_logits(model, ids: list, pad_id: int, batch_size: int, accelerator=None,
                    autocast_dtype=None, types: list | None = None) -> np.ndarray:
    """Logits for every row of `ids`, in order. With an accelerator of several processes (every one must call
    this) each process scores every world-th row; the shares are gathered and the padding rows that made them
    equal in size are dropped, so the result holds exactly the rows of `ids`. types: sentence pairs' token type
    ids, row for row, or None."""
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    device = accelerator.device if accelerator is not None else None
    share = np.arange(rank, len(ids), world)
    n_max = math.ceil(len(ids) / world)
    padded = np.concatenate([share, share[:1].repeat(n_max - len(share))]) if len(share) else np.zeros(n_max, int)
    logits = predict_logits(model, [ids[i] for i in padded], pad_id, batch_size, device,
                            autocast_dtype=autocast_dtype, types=None if types is None else [types[i] for i in padded])
    if world == 1:
        return logits
    import torch

    gathered = accelerator.gather(torch.from_numpy(logits).to(device)).cpu().numpy().reshape(world, n_max, -1)
    full = np.zeros((len(ids), gathered.shape[-1]), dtype=np.float32)
    for r in range(world):
        rows = np.arange(r, len(ids), world)
        full[rows] = gathered[r, :len(rows)]
    return full


def score_ids(model, ids: list, y: np.ndarray, report, pad_id: int, batch_size: int,
              accelerator=None, autocast_dtype=None, types: list | None = None) -> tuple[dict, np.ndarray]:
    """(report, logits) of `model` on tokenized rows `ids` with true labels `y`; `report(y, logits)` is the
    task's (bertclf/data/task.py): `task.validation_report` tunes multi-label thresholds on these rows first."""
    logits = gathered_logits(model, ids, pad_id, batch_size, accelerator, autocast_dtype, types)
    return report(y, logits), logits
