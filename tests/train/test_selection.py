"""Which weights a run keeps: the highest validation score, except that a later score within one standard
error of it (a tie within the validation noise) keeps the later, more trained weights; the finished model holds
exactly those weights; early stopping at best step + patience; and the log lines the same validations print
(training-time validation is bertclf/train/validation.py)."""
import json
import math
import re

import numpy as np
import pytest

from bertclf.train.state import TrainState, selection_tolerance

from _cli import bertclf, kill_at


def test_tolerance_is_one_binomial_standard_error():
    assert selection_tolerance(0.8, 200) == pytest.approx(math.sqrt(0.8 * 0.2 / 200))  # 0.028: one row is 0.005
    assert selection_tolerance(0.8, 7500) == pytest.approx(0.00462, abs=1e-5)
    assert selection_tolerance(1.0, 50) == 0.0 and selection_tolerance(1.3, 50) == 0.0  # clipped, never NaN
    assert selection_tolerance(0.5, 0) == 0.5  # no rows: no evidence, any later score ties


def test_a_later_score_within_the_tolerance_is_kept_and_a_worse_one_is_not():
    s = TrainState()
    assert s.record_score(0.81, 118, tolerance=0.028)      # the first score: kept
    assert s.record_score(0.805, 236, tolerance=0.028)     # one row lower on 200: a tie, the later weights kept
    assert (s.best_score, s.best_step, s.top_score) == (0.805, 236, 0.81)
    assert s.evals_without_improvement == 1               # but not an improvement: early stopping still counts
    assert not s.record_score(0.77, 354, tolerance=0.028)  # below top - tolerance: the kept weights stay
    assert (s.best_step, s.evals_without_improvement) == (236, 2)
    assert s.record_score(0.82, 472, tolerance=0.028)      # a new top resets the count
    assert (s.best_score, s.best_step, s.top_score, s.evals_without_improvement) == (0.82, 472, 0.82, 0)


def test_strict_selection_keeps_the_first_of_equal_scores_and_tolerance_zero_the_last():
    s = TrainState()
    assert s.record_score(0.8, 1) and not s.record_score(0.79, 2) and not s.record_score(0.8, 3)
    assert s.best_step == 1 and s.evals_without_improvement == 2  # --select best
    s = TrainState()
    assert s.record_score(0.8, 1, 0.0) and not s.record_score(0.79, 2, 0.0) and s.record_score(0.8, 3, 0.0)
    assert s.best_step == 3 and s.evals_without_improvement == 2


def test_a_checkpoint_saved_before_top_score_existed_resumes_with_its_best_as_the_top():
    s = TrainState.from_dict({"step": 10, "best_score": 0.8, "best_step": 10})  # no top_score key
    assert not s.record_score(0.7, 20, tolerance=0.05)
    assert s.record_score(0.76, 30, tolerance=0.05) and s.top_score == 0.8 and s.best_step == 30


def test_a_run_keeps_the_weights_the_rule_picks_from_its_validation_scores(tiny_model_dir, nsmc_slices, tmp_path):
    """The loop's wiring: each validation's `best` flag in train_log.jsonl is the rule applied to the logged scores
    with the run's validation row count, the printed line says why a tie was kept, and the card's best_step is
    the last kept step."""
    import json

    from bertclf.train.loop import TrainConfig, train

    lines = []
    cfg = TrainConfig(out=str(tmp_path / "run"), train=str(nsmc_slices["train"]), text_col="document",
                      model=str(tiny_model_dir), sample=0.25, epochs=2, batch_size=16, lr=2e-3, seed=0, eval_every=3)
    card = train(cfg, echo=lines.append)
    n_valid = card["data"]["valid"]["rows"]
    evals = [r for r in map(json.loads, (tmp_path / "run" / "train_log.jsonl").read_text().splitlines())
             if "valid_score" in r]
    top, kept_steps, ties = None, [], 0
    for r in evals:
        tol = selection_tolerance(top if top is not None else r["valid_score"], n_valid)
        expect = top is None or r["valid_score"] >= top - tol
        assert r["best"] == expect, (r, top, tol)
        if expect:
            kept_steps.append(r["step"])
            ties += top is not None and r["valid_score"] <= top
        top = r["valid_score"] if top is None else max(top, r["valid_score"])
    assert ties >= 1, evals  # the tie path ran (37 validation rows: one standard error is ~0.08)
    assert card["training"]["best_step"] == kept_steps[-1]
    assert sum("(kept: within one standard error" in ln for ln in lines) == ties


# ---------------------------------------------------------------- best weights, early stopping, log lines

PATIENCE, EVAL_EVERY, LOG_EVERY = 2, 3, 3
TUTORIAL_LINE = re.compile(r"\[Epoch (\d+)/(\d+)\] step (\d+) -> loss (\d+\.\d{4}), acc ([01]\.\d{4}) \((\d+) samples/s\)")
VALID_LINE = re.compile(r"validation @ step (\d+): accuracy ([01]\.\d{4}), macro-F1 ([01]\.\d{4}) "
                        r"\((best so far|best ([01]\.\d{4}) @ step (\d+))\)")


def early_stop_args(slices, model, out) -> list:
    return ["train", "--train", slices["train"], "--text-col", "document", "--model", model, "--sample", 0.25,
            "--epochs", 2, "--batch-size", 16, "--lr", 2e-3, "--seed", 0, "--eval-every", EVAL_EVERY,
            "--patience", PATIENCE, "--log-every", LOG_EVERY, "--select", "best", "--out", out,
            "--ngram", "off",  # the temperature is then folded into the head, which the weights test undoes
            "--valid-frac", 0.15]  # >= 100 validation rows: the run fits and folds a temperature


@pytest.fixture(scope="module")
def early_stopped(nsmc_slices, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("early") / "run"
    r = bertclf(*early_stop_args(nsmc_slices, tiny_model_dir, out))
    assert r.returncode == 0, r.stderr[-2000:]
    return out, r.stdout


def test_early_stopping_at_exactly_best_step_plus_patience_evaluations(early_stopped):
    out, stdout = early_stopped
    card = json.loads((out / "bertclf.json").read_text())["training"]
    assert card["stop_reason"] == f"early stop: no improvement in {PATIENCE} evaluation(s)", card
    assert card["steps"] == card["best_step"] + PATIENCE * EVAL_EVERY, card
    evals = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    evals = [e for e in evals if "valid_accuracy" in e]
    assert [e["step"] for e in evals] == list(range(EVAL_EVERY, card["steps"] + 1, EVAL_EVERY))
    best = max(e["valid_accuracy"] for e in evals)
    first_best = next(e["step"] for e in evals if e["valid_accuracy"] == best)
    assert card["best_step"] == first_best  # a tie is not an improvement
    assert [e["best"] for e in evals[-PATIENCE:]] == [False] * PATIENCE and evals[-PATIENCE - 1]["best"]


def test_final_weights_are_the_best_checkpoints_not_the_last_steps(early_stopped, nsmc_slices, tiny_model_dir,
                                                                   tmp_path):
    """An early-stopped run ends PATIENCE validations after its best, so its last step is not its best. The same
    run killed right after its last optimizer step (before that step's validation) holds checkpoints/best:
    the finished run's model.safetensors must hold exactly those tensors."""
    from safetensors.torch import load_file

    out, _ = early_stopped
    card = json.loads((out / "bertclf.json").read_text())["training"]
    last, best_step = card["steps"], card["best_step"]
    assert best_step < last
    killed = tmp_path / "run"
    # --checkpoint-every does not change the computation; it leaves the weights of step last-1 to compare with
    kill_at([*early_stop_args(nsmc_slices, tiny_model_dir, killed), "--checkpoint-every", 1], f"step:{last}",
            tmp_path)
    best = load_file(killed / "checkpoints" / "best" / "model.safetensors")
    late = load_file(killed / "checkpoints" / f"step-{last - 1:08d}" / "model.safetensors")
    final = load_file(out / "model.safetensors")
    assert set(final) == set(best)
    # calibration folds its temperature into the classifier when the run finishes (bertclf/train/calibration.py)
    t = json.loads((out / "bertclf.json").read_text())["calibration"]["temperature"]
    for k in ("classifier.weight", "classifier.bias"):
        np.testing.assert_allclose(final[k].numpy(), best[k].numpy() / t, rtol=1e-6, atol=1e-7)
    different = [k for k in final if not k.startswith("classifier.")
                 and not np.array_equal(final[k].numpy(), best[k].numpy())]
    assert not different, different[:5]
    # and those are not the late weights: the model kept training after its best step
    assert any(not np.array_equal(final[k].numpy(), late[k].numpy()) for k in final if k in late)


def test_log_lines_have_the_tutorial_format_and_match_the_log_file(early_stopped):
    out, stdout = early_stopped
    records = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss" in r]
    printed = [m for ln in stdout.splitlines() if (m := TUTORIAL_LINE.fullmatch(ln))]
    assert len(printed) == len(train_records) > 0
    for m, rec in zip(printed, train_records):
        epoch, n_epochs, step, loss, acc, sps = m.groups()
        assert int(n_epochs) == 2 and int(epoch) == int(rec["epoch"] - 1e-9) + 1
        assert int(step) == rec["step"] and (rec["step"] % LOG_EVERY == 0)
        assert loss == f"{rec['loss']:.4f}" and acc == f"{rec['acc']:.4f}" and int(sps) == round(rec["samples_per_s"])
    valid_records = [r for r in records if "valid_accuracy" in r]
    printed = [m for ln in stdout.splitlines() if (m := VALID_LINE.fullmatch(ln))]
    assert len(printed) == len(valid_records) > 0
    for m, rec in zip(printed, valid_records):
        assert int(m.group(1)) == rec["step"] and m.group(2) == f"{rec['valid_accuracy']:.4f}"
        assert (m.group(4) == "best so far") == rec["best"]
