"""Crash safety of `bertclf train`: SIGKILL at exact points, resume, and end with the uninterrupted run's bytes.

The points come from the test callback BERTCLF_TEST_PAUSE_AT=NAME:STEP (tests/support/train_hooks.py, installed by the
test-only entry point tests/support/hooked_train.py): the run prints a marker on stderr and sleeps right there, and the
test kills it with SIGKILL. Also: a corrupt newest
checkpoint is skipped with a message, retention keeps at most --keep-checkpoints step checkpoints, and a
NaN/inf loss stops the run with one line (exit 2) while the last checkpoint stays intact.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bertclf.rundir import checkpoint as ckpt
from bertclf.rundir import layout as rundir

from _cli import train_env  # one thread each: the reference run and the killed runs share the cores
from train_hooks import PAUSE_ENV, PAUSE_MARK  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "bertclf"]
HOOKED = [sys.executable, str(REPO / "tests" / "support" / "hooked_train.py")]  # the CLI plus the test callbacks
TIMING = ("elapsed_s", "samples_per_s", "tokens_per_s")

# 750 of the slice's 3,000 rows: 712 train (45 steps of 16 per epoch) + 38 validation. 60 steps cross the epoch
# boundary at step 45; checkpoints every 10 steps, validation every 20, log lines every 5.
STEPS = 60


def _args(slices, model, out: Path, *extra: str) -> list[str]:
    """The `train` command's arguments (after the program)."""
    return ["train", "--train", str(slices["train"]), "--text-col", "document",
            "--model", str(model), "--sample", "0.25", "--epochs", "2", "--max-steps", str(STEPS),
            "--batch-size", "16", "--lr", "2e-3", "--seed", "0", "--checkpoint-every", "10", "--eval-every", "20",
            "--log-every", "5", "--keep-checkpoints", "2", "--out", str(out), *extra]


def _strip(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in path.read_text().splitlines()]


def _steps(out: Path) -> list[int]:
    return [rundir.step_of(p) for p in rundir.step_checkpoints(out)]


class Killed:
    """One `bertclf train ARGS` process (with the test callbacks) run until it pauses at `point` (NAME:STEP), then
    SIGKILLed there."""

    def __init__(self, args: list[str], point: str, log_dir: Path, timeout: float = 300):
        self.point = point
        tag = point.replace(":", "-")
        self.out_path, self.err_path = log_dir / f"{tag}.out", log_dir / f"{tag}.err"
        with open(self.out_path, "w") as o, open(self.err_path, "w") as e:
            proc = subprocess.Popen(HOOKED + args, cwd=REPO, env=train_env(**{PAUSE_ENV: point}), stdout=o, stderr=e)
        deadline = time.monotonic() + timeout
        try:
            while f"{PAUSE_MARK} {point}" not in self.err_path.read_text():
                if proc.poll() is not None:
                    pytest.fail(f"the run exited ({proc.returncode}) before reaching {point} (is the {PAUSE_ENV} "
                                f"callback installed by tests/support/hooked_train.py?):\n{self.err_path.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"the run did not reach {point} in {timeout:.0f}s")
                time.sleep(0.02)
        finally:
            proc.kill()  # SIGKILL: no handler, no atexit, no flush runs
            proc.wait()
        assert proc.returncode == -9
        self.stdout = self.out_path.read_text()
        self.step = int(re.search(rf"{re.escape(PAUSE_MARK)} \S+ \(step (\d+)\)", self.err_path.read_text())[1])


class Reference:
    """The uninterrupted run of _args(..., *extra), started in the background at once (it runs alongside the
    killed runs: one thread each, 2 cores are enough); finished() waits for it."""

    def __init__(self, slices, model, out: Path, extra: tuple[str, ...]):
        self.out, self.err_path = out, out.parent / "reference.err"
        with open(self.err_path, "w") as e:
            self.proc = subprocess.Popen(CLI + _args(slices, model, out, *extra), cwd=REPO, env=train_env(),
                                         stdout=subprocess.DEVNULL, stderr=e)

    def finished(self) -> Path:
        self.proc.wait(timeout=600)
        assert self.proc.returncode == 0, self.err_path.read_text()[-3000:]
        return self.out


@pytest.fixture(scope="module")
def references(tiny_model_dir, nsmc_slices, tmp_path_factory):
    """references(*extra): the uninterrupted run of _args(..., *extra), one per setting, shared by the tests that
    compare bytes with it."""
    started: dict[tuple, Reference] = {}

    def get(*extra: str) -> Reference:
        if extra not in started:
            out = tmp_path_factory.mktemp("crash-reference") / "reference"
            started[extra] = Reference(nsmc_slices, tiny_model_dir, out, extra)
        return started[extra]
    yield get
    for ref in started.values():
        if ref.proc.poll() is None:
            ref.proc.kill()
            ref.proc.wait()


# The tiny model's validation accuracy improves at steps 10 and 30 with these settings (at step 20 only with
# _args' own), so there is a second best-checkpoint write to kill, replacing an existing best.
TWO_BESTS = ("--eval-every", "10", "--valid-frac", "0.3")


def _resume_matches_the_reference(argv: list[str], run: Path, reference: Reference) -> str:
    """`--resume` the killed run to its end: exit 0, and the same model.safetensors bytes and train_log.jsonl
    (minus timings) as the uninterrupted run. Returns its stdout."""
    r = subprocess.run(CLI + argv + ["--resume"], cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    ref_out = reference.finished()
    assert rundir.has_card(run) and not rundir.checkpoints_dir(run).exists()
    assert (ref_out / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    assert _strip(rundir.log_path(ref_out)) == _strip(rundir.log_path(run))
    assert rundir.read_card(run)["training"]["best_step"] == rundir.read_card(ref_out)["training"]["best_step"]
    return r.stdout


def _resumed_from(stdout: str) -> int:
    m = re.search(r"resumed from step-(\d+): step (\d+)", stdout)
    assert m, f"no 'resumed from' line in:\n{stdout[-2000:]}"
    return int(m.group(1))


def _train_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    from bertclf.cli import main

    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bertclf: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_kill_at_every_kind_of_moment_then_resume_is_bit_identical(tiny_model_dir, nsmc_slices, tmp_path, capsys,
                                                                  references):
    """One run killed at five kinds of moments (and restarted once from scratch) ends bit-identical to an
    uninterrupted run: same model.safetensors bytes, same train_log.jsonl minus timings."""
    reference = references()
    run = tmp_path / "run"
    logs = tmp_path / "logs"
    logs.mkdir()
    argv = _args(nsmc_slices, tiny_model_dir, run)
    in_process = argv  # the same flags for cli.main

    # 1. early: killed at step 7, before the first checkpoint. --resume refuses with one line that says
    #    what to do instead (not "start without --resume", which would refuse in turn: the folder is not empty)
    Killed(argv, "step:7", logs)
    assert _steps(run) == [] and (run / "train_log.jsonl").is_file() and not (run / "bertclf.json").exists()
    rc, _, err = _train_in_process(in_process + ["--resume"], capsys)
    line = _one_line_error(err)
    assert rc == 2 and "no checkpoint" in line and "--overwrite" in line, line
    rc, _, err = _train_in_process(in_process, capsys)
    assert rc == 2 and "--overwrite" in _one_line_error(err)

    # 2. mid-epoch: step 13, three steps after the checkpoint of step 10
    Killed(argv + ["--overwrite"], "step:13", logs)
    assert _steps(run) == [10]
    rc, _, err = _train_in_process(in_process + ["--resume", "--seed", "1"], capsys)  # other settings: refused
    assert rc == 2 and "--seed" in _one_line_error(err)

    # 3. right after a checkpoint is complete (and older ones pruned)
    k = Killed(argv + ["--resume"], "checkpoint-saved:20", logs)
    assert _resumed_from(k.stdout) == 10
    assert _steps(run) == [10, 20]

    # 4. during a checkpoint write: a hidden temporary folder without manifest, never a step-30 folder
    k = Killed(argv + ["--resume"], "checkpoint-write:30", logs)
    assert _resumed_from(k.stdout) == 20
    assert _steps(run) == [10, 20]
    tmp_dirs = [p for p in rundir.checkpoints_dir(run).iterdir() if p.name.startswith(".step-00000030.")]
    assert tmp_dirs and not (tmp_dirs[0] / "manifest.json").exists()

    # 5. during evaluation (step 40: scored, best checkpoint and step-40 checkpoint not yet written)
    k = Killed(argv + ["--resume"], "eval:40", logs)
    assert _resumed_from(k.stdout) == 20
    assert _steps(run) == [20, 30]

    # 6. after checkpoint 50; then the newest checkpoint is damaged and the log's last line torn
    k = Killed(argv + ["--resume"], "checkpoint-saved:50", logs)
    assert _resumed_from(k.stdout) == 30
    assert _steps(run) == [40, 50]  # retention: never more than --keep-checkpoints 2 (+ best)
    assert ckpt.verify(rundir.best_dir(run)) is None
    victim = rundir.step_dir(run, 50) / "optimizer.pt"
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)
    with open(run / "train_log.jsonl", "a") as f:
        f.write('{"step": 51, "loss": 0.4')  # a line cut short by a crash (power loss, full disk)

    # 7. the last resume skips the broken checkpoint, says so, and finishes
    r = subprocess.run(CLI + argv + ["--resume"], cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert re.search(r"checkpoint step-00000050 is unusable \(optimizer\.pt fails its checksum", r.stdout), \
        r.stdout
    assert _resumed_from(r.stdout) == 40

    ref_out = reference.finished()
    assert rundir.has_card(run) and not rundir.checkpoints_dir(run).exists()
    assert (ref_out / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    assert _strip(rundir.log_path(ref_out)) == _strip(rundir.log_path(run))
    card_ref, card = (rundir.read_card(d) for d in (ref_out, run))
    assert card["metrics"] == card_ref["metrics"]
    assert card["training"]["steps"] == card_ref["training"]["steps"] == STEPS
    assert card["training"]["best_step"] == card_ref["training"]["best_step"]


def _best_step(run: Path) -> int:
    return json.loads((rundir.best_dir(run) / "best.json").read_text())["step"]


def test_kill_inside_a_later_best_write_keeps_the_old_best_and_resumes_bit_identical(tiny_model_dir, nsmc_slices,
                                                                                     tmp_path, references):
    """Killed inside the SECOND best-checkpoint write (new weights in a hidden temporary folder, no manifest):
    the previous best is still checkpoints/best and passes its manifest; --resume ends with the reference's bytes."""
    reference, run = references(*TWO_BESTS), tmp_path / "run"
    argv = _args(nsmc_slices, tiny_model_dir, run, *TWO_BESTS)
    k = Killed(argv, "best-write:#2", tmp_path)
    best = rundir.best_dir(run)
    assert ckpt.verify(best) is None
    assert _best_step(run) < k.step  # the first best, not the one being written
    tmp_dirs = [p for p in rundir.checkpoints_dir(run).iterdir() if p.name.startswith(".best.")]
    assert tmp_dirs and all(not (p / "manifest.json").exists() for p in tmp_dirs)
    assert _resumed_from(_resume_matches_the_reference(argv, run, reference)) < k.step


def test_kill_between_the_renames_of_the_best_write_puts_the_old_best_back(tiny_model_dir, nsmc_slices, tmp_path,
                                                                           references):
    """Killed between the two renames that replace checkpoints/best (the old best moved aside to
    checkpoints/.best.*.old/d, the new one not yet in place): there is no checkpoints/best at that moment. The
    readers put the old best back whole; --resume ends with the reference's bytes."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    reference, run = references(*TWO_BESTS), tmp_path / "run"
    argv = _args(nsmc_slices, tiny_model_dir, run, *TWO_BESTS)
    k = Killed(argv, "best-swap:#1", tmp_path)  # the first best write finds no best to replace: no swap
    best = rundir.best_dir(run)
    aside = list(rundir.checkpoints_dir(run).glob(".best.*.old/d"))
    assert not best.exists() and len(aside) == 1 and (aside[0] / "manifest.json").is_file()
    old_weights = (aside[0] / "model.safetensors").read_bytes()

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    info = ckpt.load_best(run, model)  # what the final stage reads: the old best, put back
    assert info is not None and info["step"] < k.step
    assert ckpt.verify(best) is None and (best / "model.safetensors").read_bytes() == old_weights
    assert not list(rundir.checkpoints_dir(run).glob(".best.*.old"))
    assert all(torch.equal(v, model.state_dict()[n]) for n, v in load_file(str(best / "model.safetensors")).items())
    _resume_matches_the_reference(argv, run, reference)


def test_kill_during_the_final_model_write_then_resume_is_bit_identical(tiny_model_dir, nsmc_slices, tmp_path,
                                                                        references):
    """Killed while the final model's files move into the output folder (the card removed, one file moved, the
    rest staged): the folder is not a finished model, the checkpoints are intact, and --resume ends with the
    reference's bytes."""
    reference, run = references(), tmp_path / "run"
    argv = _args(nsmc_slices, tiny_model_dir, run)
    k = Killed(argv, f"final:{STEPS}", tmp_path)
    assert k.step == STEPS
    assert not rundir.has_card(run) and (run / "config.json").is_file() and not (run / "model.safetensors").exists()
    staged = rundir.checkpoints_dir(run) / rundir.FINAL_STAGING
    assert (staged / "model.safetensors").is_file()
    assert _steps(run) == [40, 50] and all(ckpt.verify(p) is None for p in rundir.step_checkpoints(run))
    assert ckpt.verify(rundir.best_dir(run)) is None
    assert _resumed_from(_resume_matches_the_reference(argv, run, reference)) == 50


def test_atomic_dir_killed_between_its_renames_keeps_the_old_folder(tmp_path):
    """The filesystem state of a SIGKILL between atomic_dir's two renames, made by the real code path (a child
    process killed from its `between` callback): the folder is missing, its old version in `.NAME.*.old/d`.
    The next atomic_dir puts it back before writing, so a write that then fails leaves the old folder whole; a
    reader (restore_replaced) puts it back too."""
    from bertclf.io.files import atomic_dir, restore_replaced

    target = tmp_path / "best"
    child = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from bertclf.io.files import atomic_dir
        target = Path({str(target)!r})
        with atomic_dir(target) as tmp:
            (tmp / "w").write_text("old")
        with atomic_dir(target, between=lambda: os.kill(os.getpid(), signal.SIGKILL)) as tmp:
            (tmp / "w").write_text("new")
    """)
    for attempt in range(2):
        r = subprocess.run([sys.executable, "-c", child], cwd=REPO, env=train_env())
        assert r.returncode == -9
        assert not target.exists()
        assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.glob(".best.*.old/d/w")]
        assert (next(tmp_path.glob(".best.*.old/d")) / "w").read_text() == "old"
        if attempt == 0:
            with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
                (tmp / "w").write_text("half")
                raise RuntimeError("the writer fails")
            assert (target / "w").read_text() == "old"
            assert not list(tmp_path.glob(".best.*.old"))  # (the killed write's .tmp folder stays: no harm)
        else:
            assert restore_replaced(target) and (target / "w").read_text() == "old"
            assert not list(tmp_path.glob(".best.*.old"))


# ---------------------------------------------------------------- numerical faults


def _poisoned_copy(src: Path, dst: Path, edit) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(str(dst / "model.safetensors"))
    edit(weights)
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    original = load_file(str(src / "model.safetensors"))
    assert any(not torch.equal(w, original[k]) for k, w in weights.items())
    return dst


# A word embedding row this large is finite, but the first forward pass over its token overflows (loss NaN).
HUGE = 1e30


def _tensors(obj):
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _nonfinite_tensors(folder: Path) -> list[str]:
    """'file: name' of every tensor under `folder` (weights, optimizer states, hidden temporary folders too)
    that holds a NaN or inf."""
    import torch
    from safetensors.torch import load_file

    bad, n = [], 0
    for f in sorted(folder.rglob("*")):
        if f.suffix == ".safetensors":
            items = load_file(str(f)).items()
        elif f.suffix in (".pt", ".bin"):
            items = [(str(i), t) for i, t in enumerate(_tensors(torch.load(f, weights_only=False)))]
        else:
            continue
        for name, t in items:
            n += 1
            if t.is_floating_point() and not torch.isfinite(t).all():
                bad.append(f"{f.relative_to(folder)}: {name}")
    assert n, f"no tensor under {folder}: nothing was checked"
    return bad


def _first_step_with_token(cfg, model_dir: Path, after: int) -> tuple[int, int]:
    """A (token id, step) such that the token first occurs in the batch of optimizer step `step` > after:
    computed with the loop's own data split, tokenization and batch plan."""
    import numpy as np

    from bertclf.data.batches import epoch_batches
    from bertclf.train.loop import load_data
    from bertclf.models.resolve import load_tokenizer
    from bertclf.data.tokens import encode, lengths

    train_ds, _, _ = load_data(cfg, log=lambda s: None)
    tok = load_tokenizer(str(model_dir))
    ids = encode(tok, train_ds.texts, cfg.max_length)
    batches = epoch_batches(lengths(ids), cfg.batch_size, cfg.seed, 0)
    seen = set(tok.all_special_ids)
    for i, rows in enumerate(batches):
        here = set(np.concatenate([ids[r] for r in rows]).tolist())
        if i + 1 > after and here - seen:
            return min(here - seen), i + 1
        seen |= here
    raise AssertionError("no batch brings a new token")


def test_nan_loss_stops_with_one_line_and_the_last_checkpoint_intact(tiny_model_dir, nsmc_slices, tmp_path, capsys):
    """A huge word embedding row: the loss becomes NaN at the first batch holding that token. The run
    stops there with exit 2 and one line, writes no checkpoint of the diverged model, and the checkpoints
    before it pass their manifests. Then an --overwrite run whose LayerNorm weight is inf fails at its first
    check, and must not leave the first run's checkpoints behind as if they were its own."""
    from bertclf.train.loop import TrainConfig

    run = tmp_path / "run"
    cfg = TrainConfig(out=str(run), train=str(nsmc_slices["train"]), text_col="document",
                      model=str(tiny_model_dir), sample=0.1, batch_size=16, seed=0)
    token, bad_step = _first_step_with_token(cfg, tiny_model_dir, after=3)

    def poison_token(w):
        w["embeddings.word_embeddings.weight"][token] = HUGE

    def poison_layernorm(w):
        w["embeddings.LayerNorm.weight"][0] = float("inf")

    flags = ["train", "--train", str(nsmc_slices["train"]), "--text-col", "document", "--sample", "0.1",
             "--batch-size", "16", "--seed", "0", "--checkpoint-every", "1", "--keep-checkpoints", "2",
             "--out", str(run)]
    model = _poisoned_copy(tiny_model_dir, tmp_path / "poisoned-token", poison_token)
    rc, out, err = _train_in_process(flags + ["--model", str(model), "--max-steps", str(bad_step + 5),
                                              "--log-every", "1000"], capsys)
    line = _one_line_error(err)
    assert rc == 2 and "diverged" in line and "NaN" in line and f"step {bad_step}" in line, line
    assert _steps(run) == [bad_step - 2, bad_step - 1]
    for p in rundir.step_checkpoints(run):
        assert ckpt.verify(p) is None
    state = ckpt.read_trainer_state(rundir.step_dir(run, bad_step - 1))
    assert state["step"] == bad_step - 1
    assert not (run / "bertclf.json").exists() and not (run / "model.safetensors").exists()

    model = _poisoned_copy(tiny_model_dir, tmp_path / "poisoned-layernorm", poison_layernorm)
    rc, _, err = _train_in_process(flags + ["--model", str(model), "--max-steps", "10", "--log-every", "1",
                                            "--overwrite"], capsys)
    line = _one_line_error(err)
    assert rc == 2 and "NaN" in line and "step 1" in line, line
    # the first run's checkpoints are gone: --resume must not continue another run (nor retention keep it)
    assert _steps(run) == [] and not (rundir.best_dir(run)).exists()


def test_divergence_right_before_a_validation_writes_no_diverged_tensor(tiny_model_dir, nsmc_slices, tmp_path,
                                                                       capsys):
    """The loss turns NaN at step N, a validation step, with no log line due: the run exits 2 with one line
    before validating, so neither checkpoints/best nor any other file under the run folder holds a NaN/inf
    tensor (earlier, validation and the best-checkpoint save ran before the NaN check)."""
    from bertclf.train.loop import TrainConfig

    run = tmp_path / "run"
    cfg = TrainConfig(out=str(run), train=str(nsmc_slices["train"]), text_col="document",
                      model=str(tiny_model_dir), sample=0.1, batch_size=16, seed=0)
    token, bad_step = _first_step_with_token(cfg, tiny_model_dir, after=3)
    model = _poisoned_copy(tiny_model_dir, tmp_path / "poisoned", lambda w: w["embeddings.word_embeddings.weight"]
                           [token].fill_(HUGE))
    # the first validation is at bad_step, so the diverged model would be the best so far and be saved
    flags = ["train", "--train", str(nsmc_slices["train"]), "--text-col", "document", "--sample", "0.1",
             "--batch-size", "16", "--seed", "0", "--model", str(model), "--max-steps", str(bad_step + 5),
             "--eval-every", str(bad_step), "--checkpoint-every", "1", "--log-every", "1000", "--out", str(run)]
    rc, _, err = _train_in_process(flags, capsys)
    line = _one_line_error(err)
    assert rc == 2 and "diverged" in line and f"step {bad_step}" in line, line
    assert _nonfinite_tensors(run) == []
    assert not rundir.best_dir(run).exists() and not rundir.has_card(run)
    assert _steps(run) == [bad_step - 2, bad_step - 1]


def test_overwrite_trims_the_vocabulary_again(tiny_model_dir, nsmc_slices, tmp_path, capsys):
    """--trim-vocab keeps the trimmed base model in checkpoints/base-model for --resume. An --overwrite run on
    other texts must trim again, not reuse the old run's vocabulary (which lacks pieces of the new texts).
    Both runs stop at step 1 (an inf LayerNorm weight makes the loss NaN), leaving their base model behind."""
    from transformers import AutoTokenizer

    lines = nsmc_slices["train"].read_text(encoding="utf-8").splitlines(keepends=True)
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    a.write_text(lines[0] + "".join(lines[1:201]), encoding="utf-8")
    b.write_text(lines[0] + "".join(lines[2001:2201]), encoding="utf-8")
    model = _poisoned_copy(tiny_model_dir, tmp_path / "poisoned", lambda w: w["embeddings.LayerNorm.weight"].fill_(
        float("inf")))
    run = tmp_path / "run"
    flags = ["train", "--text-col", "document", "--model", str(model), "--trim-vocab", "--batch-size", "16",
             "--max-steps", "5", "--log-every", "1", "--out", str(run)]
    for data, extra in ((a, []), (b, ["--overwrite"])):
        rc, _, err = _train_in_process(flags + ["--train", str(data)] + extra, capsys)
        assert rc == 2 and "NaN" in _one_line_error(err)
    base = AutoTokenizer.from_pretrained(rundir.base_model_dir(run))
    full = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = [ln.split("\t")[1] for ln in lines[2001:2201]]
    assert [base.tokenize(t) for t in texts] == [full.tokenize(t) for t in texts]


def test_a_preempted_run_says_stopped_not_error(tiny_model_dir, nsmc_slices, tmp_path):
    """A stop signal is a normal stop: one line 'bertclf: stopped by SIGTERM after step N: ...', exit 75, no
    'error:' prefix and no traceback."""
    from train_hooks import SIGNAL_ENV

    out = tmp_path / "run"
    r = subprocess.run(HOOKED + _args(nsmc_slices, tiny_model_dir, out, "--max-steps", "6"), cwd=REPO,
                       env=train_env(**{SIGNAL_ENV: "0:3:SIGTERM"}), capture_output=True, text=True, timeout=300)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 75 and last.startswith("bertclf: stopped by SIGTERM after step 3: "), r.stderr[-2000:]
    assert "error" not in last and "Traceback" not in r.stderr
