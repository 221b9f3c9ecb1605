"""Run a classifier over pre-tokenized rows: length-sorted batches, no gradients, results in input order."""
from __future__ import annotations

import numpy as np
import torch

from bertclf.data.batches import collate, length_sorted_batches
from bertclf.data.tokens import lengths


@torch.no_grad()
def predict_logits(model, ids: list[np.ndarray], pad_id: int, batch_size: int = 64, device=None,
                   autocast_dtype=None, progress=None, types: list[np.ndarray] | None = None,
                   compiled=None) -> np.ndarray:
    """Logits (n, num_labels) as float32, in the order of `ids` (types: sentence pairs' token type ids).
    compiled: the model's compiled forward (bertclf/inference/compiled.py), each batch padded to one of its
    static shapes; the padding rows' logits are dropped."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    n_labels = model.config.num_labels
    out = np.zeros((len(ids), n_labels), dtype=np.float32)
    try:
        for rows in length_sorted_batches(lengths(ids), batch_size):
            # Multiple-of-8 widths feed GPU tensor cores; a CPU only pays for the extra padding.
            shape = compiled.shape(len(rows), batch_size) if compiled is not None else {
                "multiple": 8 if device.type == "cuda" else 1}
            batch = {k: v.to(device, non_blocking=True) for k, v in collate(ids, rows, pad_id, types=types,
                                                                            **shape).items()}
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                if compiled is None:
                    logits = model(**batch).logits
                else:
                    with compiled.timed(batch):
                        logits = compiled(**compiled.prepare(batch)).logits[:len(rows)]
            out[rows] = logits.float().cpu().numpy()
            if progress is not None:
                progress(len(rows))
    finally:
        model.train(was_training)
    return out


def takes_prepared_mask(model) -> bool:
    """Whether `model` (unwrapped) takes a 4D boolean attention mask as it is: its attention is SDPA and its
    module builds masks with transformers.masking_utils, which returns a 4D mask untouched. Then a compiled step
    is handed the mask ready-made, and no mask building (in older transformers a data-dependent check,
    `torch.all(mask == 1)`, that splits the graph: transformers #28827, #36123) is traced."""
    import sys

    module = sys.modules.get(type(getattr(model, "base_model", model)).__module__)
    return (getattr(model.config, "_attn_implementation", None) == "sdpa"
            and hasattr(module, "create_bidirectional_mask"))


def prepared_mask(mask: torch.Tensor) -> torch.Tensor:
    """A (rows, tokens) 0/1 attention mask as SDPA's (rows, 1, 1, tokens) boolean mask: True = attended."""
    return mask[:, None, None, :].bool()
