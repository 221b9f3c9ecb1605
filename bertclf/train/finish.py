"""The end of a run: the best checkpoint's weights become the model, scored on validation and test, saved as a
standard Hugging Face directory with its model card and predictions; the checkpoints go. With --ngram auto|on
the n-gram partner is fitted here and, when kept, the model is the blend (bertclf/models/ngram.py)."""
from __future__ import annotations

import contextlib
import shutil
import time

import numpy as np

from bertclf.rundir import checkpoint as ckpt
from bertclf.models import ngram
from bertclf.rundir import layout as rundir
from bertclf.train.calibration import MIN_ROWS, calibrate, test_calibration
from bertclf.rundir.card import build_card, device_name
from bertclf.io.disk_space import writing
from bertclf.train.scoring import gathered_logits, score_ids
from bertclf.train.preemption import StopSignal
from bertclf.train.master_weights import to_full_precision
from bertclf.data.long_text import encode_rows
from bertclf.data.tokens import lengths


def finish(run, stop_reason: str | None, t_start: float, preemption=None) -> dict:
    """Write the final model (main process); returns its card ({} on other processes). preemption: the run's
    bertclf.train.preemption.Preemption; a stop signal then cuts the test scoring short, not the model."""
    card = {}
    if run.main:
        card = _write_final_model(run, stop_reason, t_start, preemption)
    run.accelerator.wait_for_everyone()
    return card


def _write_final_model(run, stop_reason: str | None, t_start: float, preemption=None) -> dict:
    data = run.data
    cfg, state, plan, out, say = run.cfg, run.state, run.plan, run.out, run.say
    model = run.unwrapped()
    to_full_precision(model, run.learner.optimizer)  # bf16-weights: the fp32 master weights become the model
    best = ckpt.load_best(out, model)
    score = dict(pad_id=run.learner.pad_id, batch_size=cfg.eval_batch_size, autocast_dtype=run.autocast_dtype)
    names, task = run.labels.names, run.task
    # the best model's validation report: for multi-label it tunes the thresholds stored with the model
    _, valid_logits = score_ids(model, data.valid_ids, data.y_valid, task.validation_report, **score,
                                types=data.valid_types)
    valid_metrics = best["valid"] if best else None
    fitted, ngram_record, blend_valid = _ngram_partner(run, valid_logits)
    partner = fitted if ngram_record and ngram_record["kept"] else None
    if partner is not None:  # the blend is the model: calibrated, scored and saved as such; the head stays raw
        valid_logits, valid_metrics = blend_valid
    calibration, valid_metrics = _calibrate(run, model if partner is None else None, valid_logits, valid_metrics)
    if calibration:
        valid_logits = valid_logits / calibration["temperature"]  # what the folded model (or the blend) gives
    blend = None if fitted is None else (fitted, partner is not None, ngram_record["weight"],
                                         calibration["temperature"] if calibration else None)
    preds = {"labels": np.array(names), "valid_y": data.y_valid, "valid_probs": task.probs(valid_logits),
             "valid_tokens": lengths(data.valid_ids), "valid_chars": chars(data.valid_ds)}
    test_rep = None
    if data.test_ds is not None:
        try:
            with preemption.interrupting() if preemption else contextlib.nullcontext():
                test_rep, test_preds = _score_test(run, model, score, blend, ngram_record)
            preds |= test_preds
            if calibration:
                calibration["test"] = test_calibration(data.y_test, test_preds["test_probs"],
                                                       calibration["temperature"])
        except StopSignal as e:
            say(f"{e.name} while scoring the test rows: scoring skipped so that the model is saved now; score it "
                f"with 'bertclf eval {out} --test FILE'")
        except Exception as e:  # noqa: BLE001 (a failure after training must never cost the trained model)
            say(f"scoring the test rows failed ({type(e).__name__}: {e}); the model is saved without a test score: "
                f"score it with 'bertclf eval {out} --test FILE'")
    with writing("the predictions file", out, lambda: sum(np.asarray(a).nbytes for a in preds.values()),
                 "the uncompressed arrays", lambda: ckpt.after_disk_full(out)):
        rundir.save_predictions(out, preds)
    wall = time.time() - t_start
    train_s = max(state.train_seconds, 1e-9)
    card = build_card(
        cfg, run.run_args, names,
        data={"train": data.train_ds.summary(),
              "valid": data.valid_ds.summary() | {"texts_in_train": data.in_train.get("valid")},
              "test": data.test_ds.summary() | {"texts_in_train": data.in_train.get("test")} if data.test_ds else None},
        metrics={"valid": valid_metrics, "test": test_rep},
        training={"steps": state.step, "best_step": state.best_step, "epochs": state.step / plan.steps_per_epoch,
                  "stop_reason": stop_reason or "finished", "wall_time_s": wall, "train_seconds": state.train_seconds,
                  "samples_per_s": state.samples_seen / train_s, "tokens_per_s": state.tokens_seen / train_s,
                  "device": device_name(run.accelerator.device), "processes": run.world,
                  "precision": "fp32" if run.mixed == "no" else run.mixed, "global_batch": plan.eff_batch * run.world,
                  "compiled": run.compiled},
        classification=task.card(), calibration=calibration, ngram=ngram_record) | run.card_extra
    task.configure(model.config)  # id2label, label2id, problem_type (transformers.pipeline scores as we do)
    with writing("the n-gram partner", out, lambda: partner.nbytes() if partner else 0, "its arrays and vocabulary",
                 lambda: ckpt.after_disk_full(out)):
        if partner is not None:
            rundir.remove_card(out)  # the card marks a complete model; save_model_dir writes it last
            partner.save(out)
        else:
            ngram.remove(out)  # an earlier run's partner in this folder must not pass for this model's
    ckpt.save_model_dir(out, model, run.learner.tokenizer, card, on_write=run.events.on_checkpoint_write)
    shutil.rmtree(rundir.checkpoints_dir(out), ignore_errors=True)  # finished: the final model is the best one
    if test_rep:
        say(f"test {task.metric} {task.score(test_rep):.4f} (accuracy {test_rep['accuracy']:.4f}, macro-F1 "
            f"{test_rep['macro_f1']:.4f}) on {test_rep['n']} rows; model saved to {out} in {wall / 60:.1f} min")
    else:
        say(f"best validation {task.metric} {state.best_score:.4f}; model saved to {out} in {wall / 60:.1f} min")
    return card


def _calibrate(run, model, valid_logits, valid_metrics: dict | None) -> tuple[dict | None, dict | None]:
    """--calibrate (single-label): fold a temperature fitted on the validation rows into the model
    (bertclf/train/calibration.py; model None: a blend's logits, nothing folded); (its record for the card or None, the
    validation metrics with the calibrated ECE)."""
    data = run.data
    if not run.cfg.calibrate or run.task.kind != "single_label" or not len(data.y_valid):
        return None, valid_metrics
    if len(data.y_valid) < MIN_ROWS:
        run.say(f"calibration: skipped: {len(data.y_valid)} validation rows, fewer than the {MIN_ROWS} a temperature "
                f"needs (fitted on fewer it is noise); the probabilities stay raw: hold out more with --valid-frac "
                f"or --valid FILE")
        return None, valid_metrics
    calibration = calibrate(model, valid_logits, data.y_valid)
    v, fit = calibration["valid"], calibration["fit"]
    of = "" if model is not None else " of the blend"
    if fit["kept"]:
        run.say(f"calibration: temperature {calibration['temperature']:.3f}{of} fitted on {len(data.y_valid)} "
                f"validation rows; validation ECE {v['ece_before']:.4f} -> {v['ece_after']:.4f}, NLL "
                f"{v['nll_before']:.4f} -> {v['nll_after']:.4f}")
    else:
        run.say(f"calibration: temperature{of} kept at 1: the {fit['fitted']:.3f} fitted on {len(data.y_valid)} "
                f"validation rows lowers their NLL by {fit['nll_gain']:.4f}, within its standard error "
                f"{fit['se']:.4f} (noise); validation ECE {v['ece_before']:.4f}")
    return calibration, (valid_metrics | {"ece": v["ece_after"]} if valid_metrics else valid_metrics)


def _ngram_partner(run, valid_logits: np.ndarray):
    """--ngram auto|on: fit the n-gram partner on the training rows, choose its weight on the validation rows and
    say so in one line (bertclf/models/ngram.py). (the fitted partner or None, the card's record (its "kept") or None,
    and for a kept partner (the blend's validation logits, its validation report))."""
    data = run.data
    cfg, say, task = run.cfg, run.say, run.task
    if cfg.ngram == "off":
        return None, None, None
    if "distilled_from" in run.card_extra:  # a student's rows include unlabelled texts: no partner (not yet)
        return None, {"mode": cfg.ngram, "kept": False, "reason": "not fitted for a distilled student"}, None
    if data.train_ds.pairs is not None:
        # measured on premise-grouped KorNLI (benchmarks/RESULTS.md, "Sentence pairs"): the pair n-grams of
        # `bertclf baseline` score far below the encoder, so a blend has nothing to add
        reason = "not fitted for sentence pairs (n-grams do not read the relation between the two texts)"
        say(f"n-gram partner: {reason}")
        return None, {"mode": cfg.ngram, "kept": False, "reason": reason}, None
    if not len(data.y_valid):
        say("n-gram partner: not fitted: no validation rows to choose its weight on")
        return None, {"mode": cfg.ngram, "kept": False, "reason": "no validation rows"}, None
    t0 = time.time()
    try:
        texts, y = partner_rows(data.train_ds, data.y_train, task, cfg.seed, say)
        partner = ngram.fit(texts, y, len(run.labels.names), task.kind == "multi_label", cfg.seed)
        valid_probs = partner.probs(texts_of(data.valid_ds))
    except ValueError as e:  # scikit-learn: one class only, no n-gram in two texts, ...
        say(f"n-gram partner: not fitted ({e})")
        return None, {"mode": cfg.ngram, "kept": False, "reason": str(e)}, None
    kept, record, blend_logits, blend_report = ngram.judge(task, data.y_valid, valid_logits, valid_probs, cfg.ngram)
    record |= {"features": partner.n_features, "fit_seconds": round(time.time() - t0, 2), "fit_rows": len(texts)}
    say(ngram.describe(record))
    return partner, record, (blend_logits, blend_report) if kept else None


def partner_rows(ds, y_train: np.ndarray, task, seed: int, say) -> tuple[list[str], np.ndarray]:
    """The rows the n-gram partner is fitted on: the labelled training rows, or a seeded random ngram.FIT_ROWS of
    them (said in one line): TF-IDF's matrix and the fit grow with the rows, the partner's gain does not."""
    n = labelled_count(ds)
    y = y_train if n == len(ds) else task.encode(ds.labels[:n], ds.source)  # y_train then packs teacher logits too
    if n <= ngram.FIT_ROWS:
        return (texts_of(ds) if n == len(ds) else ds.texts[:n]), y
    idx = np.sort(np.random.default_rng(seed).choice(n, ngram.FIT_ROWS, replace=False))
    say(f"n-gram partner: fitted on a random {ngram.FIT_ROWS:,} of the {n:,} training rows ({ngram.FIT_WHY})")
    return (ds.texts_at(idx) if hasattr(ds, "texts_at") else [ds.texts[i] for i in idx.tolist()]), y[idx]


def labelled_count(ds) -> int:
    """The labelled training rows: all, except that train --texts appends its unlabelled rows (label None) after
    them, which the n-gram partner cannot learn from."""
    labels = getattr(ds, "labels", None)
    return labels.index(None) if isinstance(labels, list) and None in labels else len(ds)


def texts_of(ds) -> list[str]:
    """A split's texts: a Dataset's list, or a stored split's read back from its file (bertclf/data/file_store.py)."""
    return ds.texts_at(np.arange(len(ds))) if hasattr(ds, "texts_at") else ds.texts


def _score_test(run, model, score: dict, blend=None, ngram_record: dict | None = None) -> tuple[dict, dict]:
    """(test report, test arrays for eval_predictions.npz). blend: (fitted partner, kept, weight, temperature or
    None): each side's test score goes into ngram_record["test"], and a kept partner's blend scores the rows."""
    data = run.data
    t0 = time.time()
    test_ids, test_types = encode_rows(run.learner.tokenizer, data.test_ds.texts, data.test_ds.pairs,
                                       run.cfg.max_length, run.cfg.long_text)
    if blend is None:
        test_rep, test_logits = score_ids(model, test_ids, data.y_test, run.task.report, **score, types=test_types)
    else:
        partner, kept, weight, temperature = blend
        encoder_logits = gathered_logits(model, test_ids, score["pad_id"], score["batch_size"],
                                         autocast_dtype=score["autocast_dtype"], types=test_types)
        ngram_probs = partner.probs(data.test_ds.texts)
        test_logits = (ngram.blended_logits(run.task, encoder_logits, ngram_probs, weight, temperature) if kept
                       else encoder_logits)
        test_rep = run.task.report(data.y_test, test_logits)
        sides = {"encoder": encoder_logits, "ngram": ngram.link(ngram_probs, run.task.kind == "multi_label")}
        ngram_record["test"] = {name: run.task.score(ngram.component_task(run.task, name, ngram_record)
                                                     .report(data.y_test, z)) for name, z in sides.items()}
    test_rep["seconds"] = time.time() - t0
    return test_rep, {"test_y": data.y_test, "test_probs": run.task.probs(test_logits),
                      "test_tokens": lengths(test_ids), "test_chars": chars(data.test_ds)}


def chars(ds) -> np.ndarray:
    """Characters per row (a pair: both texts), for the report's length plots; a stored split's texts are read
    back from its file in one pass."""
    texts, pairs = ds.sides_at(np.arange(len(ds))) if hasattr(ds, "sides_at") else (ds.texts, ds.pairs)
    return np.array([len(t) for t in texts]) + (np.array([len(t) for t in pairs]) if pairs else 0)
