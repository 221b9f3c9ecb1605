"""The mutation gate: defects that once left the suite green are planted, one at a time, in a scratch copy of the
package, and the tests that hold each promise must turn red there. A test that cannot fail does not count.

Each mutant replaces one exact snippet (it must occur once: when the code moves, this file says so and must be
updated with it) and runs only the tests named for it, in a child pytest on the scratch copy."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str       # file of the package, relative to the repository
    old: str        # the snippet replaced (must occur exactly once)
    new: str
    tests: tuple    # pytest node ids that must fail with the mutant in place


MUTANTS = [
    Mutant("eval ignores the training's column spec", "bertclf/inference/evaluate.py",
           "spec = data_spec(clf.card, text_col=", "spec = data_spec({}, text_col=",
           ("tests/io/test_card_defaults.py::test_no_flags_at_all",)),
    Mutant("the temperature folded in twice", "bertclf/train/calibration.py",
           "    if model is not None:\n        fold_temperature(model, t)\n",
           "    if model is not None:\n        fold_temperature(model, t)\n        fold_temperature(model, t)\n",
           ("tests/train/test_calibration.py::test_calibrated_logits_times_t_are_the_uncalibrated_twins_and_held_out_ece_falls",)),
    Mutant("training ignores --long-text head-tail", "bertclf/train/prepare.py",
           "train = encode_rows(tokenizer, train_ds.texts, train_ds.pairs, cfg.max_length, cfg.long_text)",
           "train = encode_rows(tokenizer, train_ds.texts, train_ds.pairs, cfg.max_length)",
           ("tests/data/test_long_text.py::test_training_feeds_the_model_the_head_tail_ids_of_long_texts",)),
    Mutant("the multi-label audit scores the rows it was fitted on", "bertclf/audit/multilabel.py",
           "probs[held] = fit_multilabel(texts[fit], y[fit], seed)(texts[held])",
           "probs[held] = fit_multilabel(texts, y, seed)(texts[held])",
           ("tests/audit/test_audit.py::test_multi_label_audit_finds_planted_flips_out_of_fold",)),
    Mutant("Ray predictions land one row off", "bertclf/inference/ray_engine.py",
           '"pred": [json.dumps(p, ensure_ascii=False) for p in preds]}',
           '"pred": [json.dumps(p, ensure_ascii=False) for p in preds[1:] + preds[:1]]}',
           ("tests/inference/test_ray_predict.py::test_ray_writes_the_local_records_around_empty_rows",)),
    Mutant("distill targets shifted by one row", "bertclf/distill/run.py",
           "return train_ds, distill_task.targets(y_train, logits), distill_task",
           "return train_ds, distill_task.targets(y_train, np.roll(logits, 1, axis=0)), distill_task",
           ("tests/distill/test_distill.py::test_targets_are_the_teachers_logits_of_the_same_row",)),
]


def _scratch_copy(root: Path) -> Path:
    """bertclf/, tests/ and pyproject.toml under root/repo, with ../shared beside it as the tests expect."""
    repo = root / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "bertclf", repo / "bertclf", ignore=ignore)
    shutil.copytree(REPO / "tests", repo / "tests", ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", repo / "pyproject.toml")
    shared = REPO.parent / "shared"
    if shared.exists():
        (root / "shared").symlink_to(shared)
    return repo


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_each_planted_defect_turns_its_tests_red(mutant, tmp_path):
    repo = _scratch_copy(tmp_path)
    target = repo / mutant.path
    text = target.read_text(encoding="utf-8")
    assert text.count(mutant.old) == 1, (f"{mutant.path}: the mutant '{mutant.name}' no longer applies (its snippet "
                                         f"occurs {text.count(mutant.old)} times); update tests/test_mutation_gate.py")
    target.write_text(text.replace(mutant.old, mutant.new), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(repo), PYTHONDONTWRITEBYTECODE="1")
    probe = subprocess.run([sys.executable, "-c", "import bertclf; print(bertclf.__file__)"], cwd=repo, env=env,
                           capture_output=True, text=True)
    assert probe.stdout.strip().startswith(str(repo)), probe  # the child tests the mutated copy, not this checkout
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *mutant.tests],
                       cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    # red by a failing assertion (exit 1), not by an error in collecting or setting up the tests
    assert r.returncode == 1 and re.search(r"\d+ failed", summary) and " error" not in summary, (
        f"'{mutant.name}' left {' '.join(mutant.tests)} green (exit {r.returncode}): {summary}\n{r.stdout[-3000:]}")
