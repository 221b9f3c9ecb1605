"""Which weights a run keeps: the highest validation score, except that a later score within one standard
error of it (a tie within the validation noise) keeps the later, more trained weights."""
import math

import pytest

from bertclf.train.state import TrainState, selection_tolerance


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
