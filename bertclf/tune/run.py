"""Stage 8, the search: `bertclf tune`, an Optuna study over the recipe (bertclf/tune/space.py).

Each trial is a real `bertclf train` in this process, on the same validation split (the --seed's), scored by
the final model's validation --metric; a pruner stops a trial whose validation scores fall behind the others'
(fed by the loop's on_evaluate callback). The study lives in SQLite under DIR (or --storage URL, shared by
several processes or machines), so running tune again continues it: --trials N counts the whole study.

    DIR/study.db        the study (trials, their parameters, scores and states)
    DIR/best/           the best trial's model (the others' are deleted as they finish)
    DIR/best.json       its score, parameters, the defaults' score, and the `bertclf train` command rerunning it
    DIR/best.yaml       its recipe as a `bertclf train --config` file
    DIR/trials/         the folders of the trials in flight
    DIR/logs/           each trial's training log
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from bertclf.errors import UserError
from bertclf.io.files import atomic_dir, write_json
from bertclf.rundir import layout as rundir
from bertclf.train.callbacks import TrainCallback
from bertclf.train.config import TrainConfig, validate_config
from bertclf.train.preemption import Preempted, Preemption, StopSignal
from bertclf.tune import study as S
from bertclf.tune.recipe import train_command, write_config
from bertclf.tune.space import Space, make_space, token_lengths

BEST, BEST_FILE, BEST_CONFIG, TRIALS, LOGS = "best", "best.json", "best.yaml", "trials", "logs"
MAX_FAILURES = 3  # trials failing in a row (e.g. a diverging recipe each time) stop the search


@dataclass
class Job:
    out: Path
    fixed: dict          # the settings given to tune: {field: value}, None where searched
    space: Space
    metric: str
    study: object
    storage: object
    url: str
    echo: object
    failures: int = 0
    last_error: str = ""
    stop: "StopRequest | None" = None


def tune(fixed: dict, out, trials: int = 10, timeout: float | None = None, storage: str | None = None,
         study_name: str | None = None, echo=print, pruner=None) -> dict:
    """Run trials until the study holds `trials` finished (complete or pruned) ones or `timeout` seconds have
    passed (no trial starts after that); returns what DIR/best.json holds. pruner: an Optuna pruner (default:
    the median rule, after two trials)."""
    import optuna

    if trials < 1:
        raise UserError(f"--trials: must be >= 1, got {trials}")
    if timeout is not None and timeout <= 0:
        raise UserError(f"--timeout: must be > 0 seconds, got {timeout}")
    check_trackers(fixed)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory; choose another path")
    space, sha = search_space(fixed, out, echo)
    url = S.storage_url(out, storage)
    if storage is None:  # SQLite makes the file, not its folder
        out.mkdir(parents=True, exist_ok=True)
    study, store, created = S.open_study(url, study_name or S.DEFAULT_STUDY,
                                         pruner or optuna.pruners.MedianPruner(n_startup_trials=2))
    (out / LOGS).mkdir(parents=True, exist_ok=True)
    S.check_same_task(study, fixed, sha, f"--storage {url}" if storage else f"--out {out}")
    metric = fixed.get("metric") or ("macro_f1" if fixed.get("multi_label") else "accuracy")
    job = Job(out, fixed, space, metric, study, store, url, echo)
    for n in S.fail_dead_trials(study, store):
        echo(f"trial {n}: its process died while it trained; marked failed")
    settle_leftovers(job)
    others = [t for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING" and S.live_elsewhere(t)]
    # reproducible alone; another live process of the study draws other random points
    study.sampler = optuna.samplers.TPESampler(n_startup_trials=5, seed=(fixed.get("seed") or 0) * 1000
                                               + len(study.trials) + (os.getpid() if others else 0))
    if created:  # trial 0: `bertclf train`'s defaults, the score to beat
        study.enqueue_trial(space.default_params(), user_attrs={"defaults": True})
    echo(f"searching {space.describe()}; study '{study.study_name}' in {url}: {len(S.finished(study))} of {trials} "
         f"trials done")
    with study_run(job, fixed, trials) as tracked:
        run_trials(job, trials, timeout)
        with S.folder_lock(out):
            info = write_best(job, final=True)
        tracked(info)
    if info:
        write_page(job, info)
    return info


def check_trackers(fixed: dict) -> None:
    from bertclf.train.tracking import parse_report_to

    local = [n for n in parse_report_to(fixed.get("report_to")) if n != "mlflow"]
    if local:
        raise UserError(f"tune --report-to {local[0]}: its files would live in each trial's folder, which tune "
                        f"deletes; a search reports to mlflow (each trial a run nested under the search's run)")


@contextlib.contextmanager
def study_run(job: Job, fixed: dict, trials: int):
    """--report-to mlflow: one MLflow run for the search, each trial's run nested under it (bertclf/train/tracking.py
    nests a run started inside an active one); the search's settings as its parameters, the best score and the
    defaults' as its metrics at the end. Yields a function taking best.json's content. A tracker that fails is
    one warning line and the search goes on untracked, as in train."""
    from bertclf.train.tracking import PROJECT, check_reachable, parse_report_to

    names = parse_report_to(fixed.get("report_to"))
    if "mlflow" not in names:
        yield lambda info: None
        return
    import mlflow

    try:
        check_reachable(mlflow.get_tracking_uri())
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or PROJECT)
        parent = mlflow.start_run(run_name=f"tune {job.study.study_name} ({job.out.name})")
        mlflow.log_params({"tune.trials": trials, "tune.metric": job.metric, "tune.space": job.space.describe(),
                           **{f"fixed.{k}": v for k, v in fixed.items() if v is not None}})
    except Exception as e:  # noqa: BLE001 (the search never depends on a tracker)
        job.echo(f"warning: --report-to mlflow: {type(e).__name__}: {e}; the search goes on without mlflow")
        yield lambda info: None
        return
    job.echo(f"mlflow: the search is run {parent.info.run_id}; each trial is a run nested under it")

    def record(info: dict) -> None:
        d = info.get("defaults") or {}
        mlflow.log_metrics({k: v for k, v in {"best/score": info.get("score"), "defaults/score": d.get("score"),
                                              "best/trial": info.get("trial")}.items() if v is not None})
        for name in (BEST_FILE, BEST_CONFIG):
            if (job.out / name).is_file():
                mlflow.log_artifact(str(job.out / name))

    status = "FAILED"
    try:
        yield record
        status = "FINISHED"
    finally:
        mlflow.end_run(status=status)


def write_page(job: Job, info: dict) -> None:
    try:  # the page is a bonus: never fail a finished search over it
        from bertclf.tune.report import write_tune_report

        job.echo(f"report: {write_tune_report(job.study, job.out, info)}")
    except Exception as e:  # noqa: BLE001
        job.echo(f"report not written: {type(e).__name__}: {e}")


def search_space(fixed: dict, out: Path, echo) -> tuple[Space, dict]:
    """The space for this data (its size and token lengths) and the data's SHA-256; every setting and the data
    checked first, so that a mistake stops tune before its first trial."""
    import torch

    from bertclf.models.resolve import load_tokenizer, resolve, usable_positions
    from bertclf.train.prepare import load_data

    cfg = TrainConfig(**settings(fixed, {}, str(out / TRIALS / "check")))
    validate_config(cfg)
    train_ds, valid_ds, _ = load_data(cfg, log=echo)
    model_dir = resolve(cfg.model, log=echo)
    lengths = token_lengths(load_tokenizer(model_dir), train_ds.texts, train_ds.pairs, cfg.seed)
    space = make_space(fixed, len(train_ds), lengths, cfg.multi_label, torch.cuda.is_available(),
                       usable_positions(model_dir), pairs=train_ds.pairs is not None)
    echo(f"data: {len(train_ds)} train, {len(valid_ds)} validation rows (the same split in every trial)")
    return space, {"train": train_ds.sha256, "valid": valid_ds.sha256 if cfg.valid else None}


def settings(fixed: dict, params: dict, out: str) -> dict:
    """A trial's TrainConfig values: the settings given to tune, the trial's parameters, its folder; a setting
    neither gives is `bertclf train`'s default."""
    return {k: v for k, v in fixed.items() if v is not None} | params | {"out": out}


class PruneOnValidation(TrainCallback):
    """Reports each validation score to the trial (its k-th validation as step k: the same point of training
    in every trial that validates on the same schedule) and stops a trial the pruner gives up on. The last
    validation is reported, never pruned: the trial has trained by then."""

    def __init__(self, trial):
        self.trial, self.validations, self.task, self.total_steps = trial, 0, None, 0

    def on_train_begin(self, run) -> None:
        self.task, self.total_steps = run.task, run.plan.total_steps

    def on_evaluate(self, step: int, report: dict) -> None:
        import optuna

        self.validations += 1
        score = self.task.score(report)
        self.trial.report(score, self.validations)
        if step < self.total_steps and self.trial.should_prune():
            raise optuna.TrialPruned(f"validation {self.validations} (step {step}): {score:.4f}")


def objective(job: Job, trial) -> float:
    trial.set_user_attr("owner", S.owner())  # first: a process killed after this is known to have held the trial
    params = job.space.suggest(trial)
    folder = job.out / TRIALS / f"trial-{trial.number:04d}"
    values = settings(job.fixed, params, str(folder))
    trial.set_user_attr("dir", str(folder))
    trial.set_user_attr("settings", values)
    watcher = PruneOnValidation(trial)
    try:
        with open(job.out / LOGS / f"trial-{trial.number:04d}.log", "w", encoding="utf-8") as log, quiet_progress():
            card = train_quietly(TrainConfig(**values), log, watcher)
    except BaseException as e:  # pruned, failed or interrupted: no half-trained model stays behind
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(e, (Preempted, StopSignal)):  # the search stops; this trial is run again when it continues
            trial.set_user_attr("error", f"stopped by {job.stop.received if job.stop else 'a signal'}; queued again")
            job.study.enqueue_trial(trial.params, user_attrs={k: v for k, v in trial.user_attrs.items()
                                                              if k == "defaults"})
            raise TrialStopped(trial.number) from None
        if isinstance(e, UserError):
            trial.set_user_attr("error", str(e))
        raise
    trial.set_user_attr("valid_rows", card["data"]["valid"]["rows"])
    if card["metrics"].get("test"):
        trial.set_user_attr("test_score", watcher.task.score(card["metrics"]["test"]))
    return watcher.task.score(card["metrics"]["valid"])


def train_quietly(cfg: TrainConfig, log, watcher) -> dict:
    from bertclf.train.loop import train

    return train(cfg, echo=lambda s: print(s, file=log, flush=True), callbacks=[watcher])


@contextlib.contextmanager
def quiet_progress():
    """No per-step bar of each trial under tune's bar of trials."""
    before = os.environ.get("BERTCLF_NO_PROGRESS")
    os.environ["BERTCLF_NO_PROGRESS"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("BERTCLF_NO_PROGRESS", None)
        else:
            os.environ["BERTCLF_NO_PROGRESS"] = before


def run_trials(job: Job, target: int, timeout: float | None) -> None:
    from tqdm.auto import tqdm

    t0 = time.time()
    off = bool(os.environ.get("BERTCLF_NO_PROGRESS")) or None  # None: off when not a terminal
    with tqdm(total=target, initial=len(S.finished(job.study)), unit="trial", disable=off, dynamic_ncols=True) as bar:
        def after_trial(study, ft):
            line = trial_line(job, ft)
            if ft.state.name == "COMPLETE":
                job.failures = 0
                if settle(job, ft.number):
                    line += "  (best so far)"
            elif ft.state.name == "FAIL":
                job.failures += 1
                job.last_error = ft.user_attrs.get("error", "")
            bar.n = len(S.finished(study))
            bar.refresh()
            job.echo(line) if bar.disable else tqdm.write(line)

        with StopRequest() as job.stop:
            while len(S.finished(job.study)) < target:
                if timeout is not None and time.time() - t0 >= timeout:
                    job.echo(f"--timeout {timeout:g}: {time.time() - t0:.0f} s passed, no trial started after it")
                    break
                run_one_trial(job, after_trial, target)


def run_one_trial(job: Job, after_trial, target: int) -> None:
    """One trial (unless a stop signal came first); a stop signal during it ends the search (Preempted)."""
    if job.stop.received:
        raise job.stop.stopped("between trials", job, target)
    try:
        job.study.optimize(lambda trial: objective(job, trial), n_trials=1, catch=(UserError,),
                           callbacks=[after_trial], gc_after_trial=True)  # one model in memory at a time
    except TrialStopped as e:
        raise job.stop.stopped(f"in trial {e.number}, which is queued again", job, target) from None
    if job.stop.received:  # it came while the trial's model was being finished: the trial is kept
        raise job.stop.stopped("after a trial", job, target)
    if job.failures >= MAX_FAILURES:
        raise UserError(f"tune: {job.failures} trials in a row failed; the last: {job.last_error} (each "
                        f"trial's log is in {job.out / LOGS})")


class TrialStopped(Exception):
    """A trial ended by a stop signal (not a UserError, so that Optuna's catch lets it end the search)."""

    def __init__(self, number: int):
        super().__init__(number)
        self.number = number


class HideStoppedTrial(logging.Filter):
    """Optuna warns with a traceback when a trial raises; a stopped trial gets tune's one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], TrialStopped))


logging.getLogger("optuna.study._optimize").addFilter(HideStoppedTrial())


class StopRequest(Preemption):
    """SIGTERM / SIGUSR1 during a search: the trial in flight stops as `bertclf train` does (its folder is
    deleted and it is queued again), a trial that finishes anyway is kept, and the search ends with exit code 75;
    the same command continues it. Train's own handler notes the signal: installed around the search's loop, and
    heard during a trial through train's handler, which passes a signal on to the one it replaced. Main thread only."""

    def stopped(self, where: str, job: Job, target: int) -> Preempted:
        return Preempted(f"tune: stopped by {self.received} {where}; {len(S.finished(job.study))} of {target} trials "
                         f"done: run the same command to continue the search")


def trial_line(job: Job, ft) -> str:
    shown = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in ft.params.items())
    seconds = (ft.datetime_complete - ft.datetime_start).total_seconds() if ft.datetime_complete else 0.0
    head = f"trial {ft.number}{' (defaults)' if ft.user_attrs.get('defaults') else ''}: {shown or 'no parameters'}"
    if ft.state.name == "COMPLETE":
        return f"{head} -> {job.metric} {ft.value:.4f} ({seconds:.0f} s)"
    if ft.state.name == "PRUNED":
        last = max(ft.intermediate_values) if ft.intermediate_values else None
        at = f" at validation {last} ({ft.intermediate_values[last]:.4f})" if last is not None else ""
        return f"{head} -> pruned{at} ({seconds:.0f} s)"
    return f"{head} -> failed: {ft.user_attrs.get('error', 'see its log in ' + str(job.out / LOGS))}"


def settle(job: Job, number: int) -> bool:
    """A complete trial's model becomes DIR/best when it scores above the model there (a tie keeps the earlier:
    the defaults run first); otherwise it is deleted. True when it became the best."""
    ft = job.study.trials[number]
    folder = Path(ft.user_attrs.get("dir", ""))
    with S.folder_lock(job.out):
        held = best_trial_here(job)
        better = rundir.has_card(folder) and (held is None or ft.value > held.value)
        if better:
            with atomic_dir(job.out / BEST) as tmp:  # a kill leaves the old best or the new one, never half
                for p in folder.iterdir():
                    os.replace(p, tmp / p.name)
            write_best(job)
        shutil.rmtree(folder, ignore_errors=True)
    return better


def settle_leftovers(job: Job) -> None:
    """Folders of trials that finished while their process was killed (before their model was kept or
    deleted) are settled now; those of failed or pruned trials go."""
    root = job.out / TRIALS
    if not root.is_dir():
        return
    by_dir = {t.user_attrs.get("dir"): t for t in job.study.get_trials(deepcopy=False)}
    for folder in sorted(root.iterdir()):
        t = by_dir.get(str(folder))
        if t is not None and t.state.name == "RUNNING":
            continue  # another process of this study is training it
        if t is not None and t.state.name == "COMPLETE":
            settle(job, t.number)
        shutil.rmtree(folder, ignore_errors=True)


def best_trial_here(job: Job):
    """The trial whose model is DIR/best (its card records the trial's folder), or None."""
    card = rundir.read_card(job.out / BEST)
    trial_dir = (card.get("args") or {}).get("out")
    return next((t for t in job.study.get_trials(deepcopy=False)
                 if t.state.name == "COMPLETE" and t.user_attrs.get("dir") == trial_dir), None) if trial_dir else None


def write_best(job: Job, final: bool = False) -> dict:
    """DIR/best.json and DIR/best.yaml for the model in DIR/best; final: also print the summary."""
    best = best_trial_here(job)
    done = S.finished(job.study)
    if best is None:
        if final:
            job.echo(f"no trial finished with a model ({len(done)} pruned or failed); see {job.out / LOGS}")
        return {}
    tried = [t for t in job.study.trials if t.user_attrs.get("defaults")]  # more than one if a stop requeued it
    defaults = next((t for t in tried if t.state.name == "COMPLETE"), tried[-1] if tried else None)
    command = train_command(best.user_attrs["settings"], str(job.out / "rerun"))
    info = {"score": best.value, "metric": job.metric, "trial": best.number, "params": best.params,
            "valid_rows": best.user_attrs.get("valid_rows"), "test_score": best.user_attrs.get("test_score"),
            "command": command, "config": str(job.out / BEST_CONFIG), "model": str(job.out / BEST),
            "defaults": None if defaults is None else {
                "trial": defaults.number, "state": defaults.state.name.lower(), "score": defaults.value,
                "test_score": defaults.user_attrs.get("test_score")},
            "study": {"name": job.study.study_name, "storage": job.url, "finished": len(done),
                      "pruned": sum(t.state.name == "PRUNED" for t in done)}}
    write_config(job.out / BEST_CONFIG, best.user_attrs["settings"])
    write_json(job.out / BEST_FILE, info)
    if final:
        for line in summary(job, info):
            job.echo(line)
    return info


def summary(job: Job, info: dict) -> list[str]:
    d, m = info["defaults"], job.metric
    vs = (f"; the defaults (trial {d['trial']}): {d['score']:.4f} ({info['score'] - d['score']:+.4f})"
          if d and d["score"] is not None else "; the defaults' trial did not finish" if d else "")
    lines = [f"best: trial {info['trial']}, validation {m} {info['score']:.4f} on {info['valid_rows']} rows" + vs]
    if info["test_score"] is not None:
        lines.append(f"test {m}: best {info['test_score']:.4f}" + (
            f", defaults {d['test_score']:.4f}" if d and d.get("test_score") is not None else ""))
    study_best = job.study.best_trial if any(t.state.name == "COMPLETE" for t in job.study.trials) else None
    if study_best is not None and study_best.number != info["trial"]:
        lines.append(f"the study's best is trial {study_best.number} ({study_best.value:.4f}), trained by "
                     f"{(study_best.user_attrs.get('owner') or {}).get('host')}: its model is in that tune's DIR/best")
    lines += [f"model: {info['model']}; recipe: {info['config']}; details: {job.out / BEST_FILE}",
              f"rerun it: {info['command']}"]
    return lines
