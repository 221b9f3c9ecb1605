"""Training-time validation, one named piece: score the validation rows (sharded over processes), decide whether
these weights become the model (--select), write them as checkpoints/best, log the line, and say when to stop
early (--patience)."""
from __future__ import annotations

import time

from bertclf.rundir import checkpoint as ckpt
from bertclf.train.meter import Meter, check_finite
from bertclf.train.scoring import score_ids
from bertclf.train.state import selection_tolerance
from bertclf.train.master_weights import full_precision


def validate(run, meter: Meter, events) -> str | None:
    """Validate the weights of run.state.step; returns the early-stop reason, or None to go on."""
    check_finite(run, meter)
    t_eval, step = time.time(), run.state.step
    report = score_validation(run)
    events.on_evaluate(step, report)
    score = run.task.score(report)
    kept, note = select(run, score)
    if kept and run.main:
        with full_precision(run.unwrapped(), run.learner.optimizer) as model:  # bf16-weights: the fp32 masters
            ckpt.save_best(run.out, model, {"step": step, "valid": report}, on_write=events.on_checkpoint_write)
    log_validation(run, report, score, kept, note)
    meter.exclude(time.time() - t_eval)  # evaluation time is not training throughput
    if run.cfg.patience and run.state.evals_without_improvement >= run.cfg.patience:
        return f"early stop: no improvement in {run.cfg.patience} evaluation(s)"
    return None


def score_validation(run) -> dict:
    """The validation report of the current weights (multi-label: its thresholds tuned on these rows first)."""
    data = run.data
    report, _ = score_ids(run.unwrapped(), data.valid_ids, data.y_valid, run.task.validation_report,
                          run.learner.pad_id, run.cfg.eval_batch_size, run.accelerator, run.autocast_dtype,
                          data.valid_types)
    return report


def select(run, score: float) -> tuple[bool, str]:
    """Whether these weights become the model, and the note the log line ends with. --select within-noise keeps
    the latest weights within one standard error of the best score (bertclf/train/state.py)."""
    state = run.state
    top_before = state.top
    tolerance = None if run.cfg.select == "best" else \
        selection_tolerance(top_before if top_before is not None else score, len(run.data.y_valid))
    kept = state.record_score(score, state.step, tolerance)
    if not kept:
        return False, f" (best {state.best_score:.4f} @ step {state.best_step})"
    if top_before is None or score > top_before:
        return True, " (best so far)"
    return True, f" (kept: within one standard error, {tolerance:.4f}, of the best {state.top_score:.4f}, and later)"


def log_validation(run, report: dict, score: float, kept: bool, note: str) -> None:
    step = run.state.step
    chosen = "" if run.task.metric in ("accuracy", "macro_f1") else f"{run.task.metric} {score:.4f}, "
    run.log(f"validation @ step {step}: {chosen}accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}"
            + note, step=step, epoch=step / run.plan.steps_per_epoch, valid_accuracy=report["accuracy"],
            valid_macro_f1=report["macro_f1"], valid_score=score, valid_loss=None, best=kept)
