"""What a page comparing runs shows: each run's numbers and the side-by-side table."""
from __future__ import annotations

import json

from bertclf.report.data import Run, finite
from bertclf.report.numbers import REPORT_FORMAT, run_data

MAX_COMPARE = 8


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _card(*keys):
    return lambda r, d: _get(r.card, *keys)


COMPARE_ROWS = [  # (group, key, getter on (run, its run_data)): the side-by-side table
    ("metrics", "test accuracy", _card("metrics", "test", "accuracy")),
    ("metrics", "test macro-F1", _card("metrics", "test", "macro_f1")),
    ("metrics", "validation accuracy", _card("metrics", "valid", "accuracy")),
    ("metrics", "validation macro-F1", _card("metrics", "valid", "macro_f1")),
    ("metrics", "test ECE", lambda r, d: (d.get("ece") or {}).get("test")),
    ("metrics", "validation ECE", lambda r, d: (d.get("ece") or {}).get("valid")),
    ("metrics", "TF-IDF baseline accuracy", lambda r, d: (r.baseline or {}).get("accuracy")),
    ("training", "steps", _card("training", "steps")),
    ("training", "best step", _card("training", "best_step")),
    ("training", "epochs", _card("training", "epochs")),
    ("training", "wall time (s)", _card("training", "wall_time_s")),
    ("training", "samples/s", _card("training", "samples_per_s")),
    ("training", "tokens/s", _card("training", "tokens_per_s")),
    ("training", "device", _card("training", "device")),
    ("training", "precision", _card("training", "precision")),
    ("training", "stopped", _card("training", "stop_reason")),
    ("recipe", "base model", _card("base_model")),
    ("recipe", "max length", _card("args", "max_length")),
    ("recipe", "epochs asked", _card("args", "epochs")),
    ("recipe", "batch size (micro)", _card("args", "batch_size")),
    ("recipe", "global batch", _card("training", "global_batch")),
    ("recipe", "peak learning rate", _card("args", "lr")),
    ("recipe", "warmup share", _card("args", "warmup")),
    ("recipe", "weight decay", _card("args", "weight_decay")),
    ("recipe", "train sample", _card("args", "sample")),
    ("recipe", "seed", _card("args", "seed")),
    ("data", "train rows", _card("data", "train", "rows")),
    ("data", "train sha256", _card("data", "train", "sha256")),
    ("data", "validation rows", _card("data", "valid", "rows")),
    ("data", "test rows", _card("data", "test", "rows")),
    ("data", "test sha256", _card("data", "test", "sha256")),
]
HIGHER_IS_BETTER = {"test accuracy", "test macro-F1", "validation accuracy", "validation macro-F1", "samples/s",
                    "tokens/s"}
LOWER_IS_BETTER = {"test ECE", "validation ECE", "wall time (s)"}


def compare_data(runs: list[Run]) -> dict:
    """Everything a comparison page shows: each run's run_data, and the side-by-side table rows
    {group, key, values: [one per run], delta: last minus first or None, differ}."""
    per_run = [run_data(r) for r in runs]
    rows = []
    for group, key, get in COMPARE_ROWS:
        values = []
        for r, d in zip(runs, per_run):
            try:
                values.append(get(r, d))
            except Exception:  # noqa: BLE001
                values.append(None)
        if all(v is None for v in values):
            continue
        delta = (values[-1] - values[0] if len(values) == 2 and group in ("metrics", "training")
                 and all(finite(v) for v in values) else None)
        rows.append({"group": group, "key": key, "values": values, "delta": delta,
                     "differ": len({json.dumps(v, default=str) for v in values}) > 1})
    notes = []
    for key in ("train sha256", "test sha256"):
        row = next((r for r in rows if r["key"] == key), None)
        if row and row["differ"] and all(v for v in row["values"]):
            notes.append(f"the runs used different {key.split()[0]} data ({key} differs): compare with care")
    return {"bertclf_report": REPORT_FORMAT, "kind": "compare", "runs": [str(r.dir) for r in runs],
            "names": display_names(runs), "per_run": per_run, "table": rows, "notes": notes, "errors": {}}


def display_names(runs: list[Run]) -> list[str]:
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # same folder names: add the parent
        names = [f"{r.dir.parent.name}/{r.name}" for r in runs]
    if len(set(names)) < len(names):
        names = [f"{i + 1}: {n}" for i, n in enumerate(names)]
    return names
