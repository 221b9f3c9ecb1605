"""The model card (DIR/bertclf.json): what was trained, on what, how, and how well."""
from __future__ import annotations

import sys

import torch

from bertclf import __version__


def build_card(cfg, run_args: dict, labels: list[str], data: dict, metrics: dict, training: dict,
               classification: dict | None = None, calibration: dict | None = None, ngram: dict | None = None) -> dict:
    """data: {"train", "valid", "test"} dataset summaries; metrics: {"valid", "test"} reports;
    training: steps, timings, device and batch facts (see loop.finish); classification: the task's card
    (bertclf/data/task.py: single/multi-label, label values, class weights, thresholds), read back by inference;
    calibration: the temperature folded into the classifier and ECE before/after (bertclf/train/calibration.py), or
    None when not calibrated (raw logits = the model's logits * temperature); ngram: the n-gram partner's record
    (bertclf/models/ngram.py: mode, kept, weight, validation scores of encoder, n-gram and blend, the rule), None with
    --ngram off."""
    return {
        "bertclf_version": __version__,
        "task": "text-classification",
        "base_model": cfg.model,
        "labels": labels,
        "classification": classification,
        "calibration": calibration,
        "ngram": ngram,
        "max_length": cfg.max_length,
        "args": run_args,
        "data": data | {"text_col": cfg.text_col, "label_col": cfg.label_col,
                        "text_pair_col": getattr(cfg, "text_pair_col", None),
                        "group_col": getattr(cfg, "group_col", None)},
        "metrics": metrics,
        "training": training,
        "versions": versions(),
    }


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from bertclf.cpu import describe

    return describe(torch.get_num_threads())  # the CPU model and its matrix features (AMX, AVX-512 BF16, VNNI)


def versions() -> dict:
    import accelerate
    import transformers

    return {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "bertclf": __version__}
