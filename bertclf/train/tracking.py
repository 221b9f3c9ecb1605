"""Experiment tracking (`bertclf train --report-to tensorboard,mlflow,wandb`): the run's resolved settings,
each log window, each validation, the test metrics, the calibration, the card and the report page go to the
trackers a team compares runs in, through Accelerate's tracker classes (accelerate.tracking).

Offline first: TensorBoard writes event files to OUT/tracking/tensorboard; MLflow logs to MLFLOW_TRACKING_URI,
else to MLflow's own local default (sqlite:///mlflow.db in the working folder, where a plain `mlflow ui`
looks); W&B runs offline in OUT/tracking/wandb unless WANDB_MODE or WANDB_API_KEY says otherwise. A tracker
that cannot be reached, or fails later, is one warning line and the run goes on without it: the model and
train_log.jsonl never depend on a tracker. A tracker whose package is missing is refused before any work.

Only the main process logs. OUT/tracking/runs.json keeps each tracker's run id, and --resume reopens those
runs. A resumed run restarts at its last checkpoint, so the steps between that checkpoint and the kill were
logged once already; each tracker keeps them once in its own way:
  tensorboard  the writer reopens with purge_step = checkpoint step + 1: TensorBoard drops the killed run's
               events from there on, and the resumed run logs those steps again (the same numbers: resume is
               exact, timings aside)
  mlflow       the run's metric histories tell the last step logged of each metric; only later ones are logged
  wandb        runs.json records the last step logged of each metric (offline files cannot be asked); only
               later ones are logged
"""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import urllib.parse
import uuid
from pathlib import Path

from bertclf.errors import UserError
from bertclf.rundir import layout as rundir
from bertclf.train.callbacks import TrainCallback

NAMES = ("tensorboard", "mlflow", "wandb")
PROJECT = "bertclf"  # MLflow experiment and W&B project unless MLFLOW_EXPERIMENT_NAME / WANDB_PROJECT say otherwise
PROBE_TIMEOUT_S = 5.0


def parse_report_to(value) -> tuple[str, ...]:
    """--report-to's trackers, in a fixed order: none -> (), all -> every one, else the comma-separated names."""
    words = [w.strip().lower() for w in str(value if value is not None else "none").split(",") if w.strip()]
    if words in ([], ["none"]):
        return ()
    if words == ["all"]:
        return NAMES
    unknown = [w for w in words if w not in NAMES]
    if unknown:
        raise UserError(f"--report-to: unknown tracker {unknown[0]!r}; give none, all, or a comma-separated list "
                        f"of {', '.join(NAMES)} (e.g. mlflow,tensorboard)")
    return tuple(n for n in NAMES if n in words)


def check_installed(names) -> None:
    """A tracker's package missing: one line naming the extra to install, before any work."""
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise UserError(f"--report-to {name}: the {name} package is not installed; pip install 'bertclf[{name}]'")


def scalar(v):
    """A value every tracker takes as a parameter: numbers, text and booleans as they are, the rest as JSON."""
    return v if isinstance(v, (bool, int, float, str)) else json.dumps(v, ensure_ascii=False, default=str)


def numbers(d: dict | None, prefix: str) -> dict:
    """The numeric leaves of a (nested) report as prefix/key/subkey: value (booleans and lists left out)."""
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out |= numbers(v, f"{prefix}/{k}")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}/{k}"] = v
    return out


def run_params(run) -> dict:
    """The resolved configuration: every flag after defaults, what the defaults resolved to, the data files'
    checksums, the device (with the CPU's matrix features) and the library versions, as in bertclf.json."""
    from bertclf.rundir.card import device_name, versions

    plan = run.plan
    params = dict(run.run_args) | {
        "resolved.precision": "fp32" if run.mixed == "no" else run.mixed,
        "resolved.device": device_name(run.accelerator.device), "resolved.processes": run.world,
        "resolved.global_batch": plan.eff_batch * run.world, "resolved.total_steps": plan.total_steps,
        "resolved.epochs": plan.n_epochs, "resolved.steps_per_epoch": plan.steps_per_epoch,
        "resolved.log_every": plan.log_every, "resolved.eval_every": plan.eval_every,
        "resolved.task": run.task.kind, "resolved.labels": ",".join(run.labels.names)}
    for split, ds in (("train", run.data.train_ds), ("valid", run.data.valid_ds), ("test", run.data.test_ds)):
        if ds is not None:
            params |= {f"data.{split}.source": ds.source, f"data.{split}.sha256": ds.sha256,
                       f"data.{split}.rows": len(ds)}
    params |= {f"versions.{k}": v for k, v in versions().items()}
    return {k: scalar(v) for k, v in params.items()}


def final_metrics(card: dict) -> dict:
    """What the finished run adds at its last step: the final model's validation and test metrics, the
    calibration (temperature, ECE and NLL before and after), and the run's totals."""
    training = card.get("training") or {}
    totals = {k: training[k] for k in ("steps", "best_step", "epochs", "wall_time_s", "train_seconds",
                                       "samples_per_s", "tokens_per_s") if training.get(k) is not None}
    metrics = card.get("metrics") or {}
    return (numbers(metrics.get("valid"), "final/valid") | numbers(metrics.get("test"), "test")
            | numbers(card.get("calibration"), "calibration") | numbers(totals, "final"))


class Tracking(TrainCallback):
    """The trackers of one run, driven by the training loop's events (main process only)."""

    def __init__(self, names, say=print, register: str | None = None):
        self.names, self.say, self.register = tuple(names), say, register
        self.active, self.out, self.saved = [], None, None

    @classmethod
    def for_config(cls, cfg, say=print):
        names = parse_report_to(cfg.report_to)
        return cls(names, say, cfg.register) if names else None

    def on_train_begin(self, run) -> None:
        if not run.main:
            return
        self.out = run.out
        resumed = run.state.step  # 0: a fresh run starts new tracked runs (--overwrite removed the old files)
        records = rundir.read_tracked_runs(run.out) if resumed else {}
        params = None
        for name in self.names:
            backend = BACKENDS[name]()
            ok, reopened = self._try(backend, "opening its run", backend.start, run.out, records.get(name) or {},
                                     resumed)
            if not ok:
                continue
            self.active.append(backend)
            self.say(f"tracking: {backend.where(run.out)}" + (f" (continued at step {resumed})" if reopened else ""))
            if not reopened:  # a reopened run has its parameters (a resumed run changes none that matter)
                params = params or run_params(run)
                self._try(backend, "logging the parameters", backend.params, params)
        self._save()

    def on_log(self, step: int, metrics: dict) -> None:
        self._log(numbers({"accuracy" if k == "acc" else k: v for k, v in metrics.items()}, "train"), step)

    def on_evaluate(self, step: int, report: dict) -> None:
        if self.active:
            self._log(numbers({k: v for k, v in report.items() if k not in ("per_class", "per_label")}, "valid"),
                      step)

    def on_train_end(self, run, card: dict) -> None:
        if not (self.active and card):
            return
        self._log(final_metrics(card), run.state.step)
        files = [p for p in (Path(run.out) / rundir.CARD_FILE, Path(run.out) / "report.html") if p.is_file()]
        for backend in list(self.active):
            self._try(backend, "logging the card and the report", backend.files, run.out, files)
        mlflow = next((b for b in self.active if b.name == "mlflow"), None)
        if self.register and mlflow is not None:
            ok, version = self._try(mlflow, f"registering the model as {self.register}", mlflow.register_model,
                                    run.out, self.register)
            if ok:
                self.say(f"tracking: registered {run.out} as model {self.register} version {version} in MLflow")

    def exit(self, exc_type, exc, tb) -> bool:
        """ExitStack's exit for the run: each tracked run ends as finished, killed (a stop signal, Ctrl-C) or
        failed."""
        from bertclf.train.preemption import Preempted

        status = ("FINISHED" if exc_type is None else
                  "KILLED" if issubclass(exc_type, (KeyboardInterrupt, Preempted)) else "FAILED")
        for backend in list(self.active):
            self._try(backend, "closing its run", backend.finish, status)
        self.active = []
        return False

    def _log(self, values: dict, step: int) -> None:
        for backend in list(self.active):
            self._try(backend, f"logging step {step}", backend.log, values, step)
        self._save()

    def _try(self, backend, what: str, fn, *args):
        """(True, fn's result), or (False, None) after one warning line: the tracker is dropped, the run goes on."""
        try:
            return True, fn(*args)
        except Exception as e:  # noqa: BLE001 (a tracker never costs the run)
            if backend in self.active:
                self.active.remove(backend)
            reason = (str(e).strip().splitlines() or [""])[0][:300]
            self.say(f"warning: --report-to {backend.name}: {what} failed ({type(e).__name__}: {reason}); training "
                     f"goes on without {backend.name} (train_log.jsonl keeps every number)")
            return False, None

    def _save(self) -> None:
        """runs.json, when a tracked run's record changed (W&B's last step after each log)."""
        records = {b.name: b.record for b in self.active}
        if self.out is not None and records and records != self.saved:
            rundir.write_tracked_runs(self.out, records)
            self.saved = json.loads(json.dumps(records))


class TensorBoard:
    name = "tensorboard"

    def start(self, out, record: dict, resumed: int) -> bool:
        from accelerate.tracking import TensorBoardTracker

        # purge_step: the resumed run's first step; TensorBoard hides what the killed run logged from there on
        self.tracker = TensorBoardTracker(self.name, rundir.tracking_dir(out),
                                          **({"purge_step": resumed + 1} if resumed else {}))
        self.tracker.start()
        self.record = {"logdir": str(Path(self.tracker.logging_dir).relative_to(out))}
        return bool(record) and resumed > 0

    def where(self, out) -> str:
        return f"tensorboard event files in {Path(self.tracker.logging_dir)} (see them: tensorboard --logdir {out})"

    def params(self, values: dict) -> None:
        from torch.utils.tensorboard.summary import hparams

        # by hand: accelerate's store_init_configuration (add_hparams) files them as a second, timestamped run
        for summary in hparams(values, {}):
            self.tracker.writer.file_writer.add_summary(summary)
        self.tracker.writer.flush()

    def log(self, values: dict, step: int) -> None:
        self.tracker.log(values, step=step)

    def files(self, out, paths) -> None:
        """TensorBoard has no place for files: the card's numbers are logged as metrics."""

    def finish(self, status: str) -> None:
        self.tracker.finish()


class MLflow:
    name = "mlflow"

    def start(self, out, record: dict, resumed: int) -> bool:
        import mlflow
        from accelerate.tracking import MLflowTracker

        uri = mlflow.get_tracking_uri()
        check_reachable(uri)  # before MLflow's own retries (minutes against a server that is down)
        run_id = record.get("run_id") if resumed and record.get("tracking_uri") == uri else None
        self.tracker = MLflowTracker(experiment_name=PROJECT, run_id=run_id, run_name=Path(out).name,
                                     nested_run=mlflow.active_run() is not None)  # e.g. a trial in a study's run
        self.tracker.start()
        info = self.tracker.active_run.info
        self.record = {"run_id": info.run_id, "experiment_id": info.experiment_id, "tracking_uri": uri}
        self.logged = last_steps(info.run_id) if run_id else {}
        return run_id is not None

    def where(self, out) -> str:
        return (f"mlflow run {self.record['run_id']} (experiment {self.record['experiment_id']}) in "
                f"{self.record['tracking_uri']}")

    def params(self, values: dict) -> None:
        self.tracker.store_init_configuration(values)

    def log(self, values: dict, step: int) -> None:
        new = {k: v for k, v in values.items() if step > self.logged.get(k, -1)}
        if new:
            self.tracker.log(new, step=step)

    def files(self, out, paths) -> None:
        for p in paths:
            self.tracker.log_artifact(str(p))

    def register_model(self, out, name: str) -> str:
        """The model directory as it is (weights, tokenizer, card, report) under the run's artifacts at model/,
        then a new version of registered model `name` pointing there."""
        import mlflow

        out = Path(out)
        for p in sorted(out.iterdir()):
            if p.name.startswith(".") or p.name in (rundir.TRACKING, rundir.CHECKPOINTS):
                continue
            if p.is_dir():
                self.tracker.log_artifacts(str(p), artifact_path=f"model/{p.name}")
            else:
                self.tracker.log_artifact(str(p), artifact_path="model")
        client = mlflow.MlflowClient()
        if not client.search_registered_models(filter_string=f"name = '{name}'"):
            client.create_registered_model(name)
        info = self.tracker.active_run.info
        version = client.create_model_version(name, source=f"{info.artifact_uri}/model", run_id=info.run_id)
        return version.version

    def finish(self, status: str) -> None:
        import mlflow

        mlflow.end_run(status=status)  # accelerate's finish() ends every run as FINISHED


def last_steps(run_id: str) -> dict:
    """The last step logged of each metric of an MLflow run."""
    import mlflow

    client = mlflow.MlflowClient()
    return {k: max(m.step for m in client.get_metric_history(run_id, k))
            for k in client.get_run(run_id).data.metrics}


def check_reachable(uri: str) -> None:
    """An http(s) tracking server must accept a connection within PROBE_TIMEOUT_S."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise ConnectionError(f"cannot reach {uri} ({e.strerror or e})") from None


class WandB:
    name = "wandb"

    def start(self, out, record: dict, resumed: int) -> bool:
        import wandb
        from accelerate.tracking import WandBTracker

        reopened = bool(resumed and record.get("id"))
        # W&B's own ids are 8 characters of [a-z0-9]; kept in runs.json so --resume continues this run
        run_id = record["id"] if reopened else uuid.uuid4().hex[:8]
        self.mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        folder = rundir.tracking_dir(out)
        folder.mkdir(parents=True, exist_ok=True)
        self.tracker = WandBTracker(os.environ.get("WANDB_PROJECT", PROJECT), name=Path(out).name, id=run_id,
                                    resume="allow", dir=str(folder), mode=self.mode,
                                    settings=wandb.Settings(silent=True))  # its banner and summary: our one line
        self.tracker.start()
        self.record = {"id": run_id, "logged": record.get("logged", {}) if reopened else {}}
        return reopened

    def where(self, out) -> str:
        run = self.tracker.run
        if self.mode == "offline":
            return (f"wandb offline run {run.id} in {Path(run.dir).parent} (upload it: wandb sync "
                    f"{Path(run.dir).parent})")
        return f"wandb run {run.id} ({self.mode}): {getattr(run, 'url', None) or run.id}"

    def params(self, values: dict) -> None:
        self.tracker.store_init_configuration(values)

    def log(self, values: dict, step: int) -> None:
        logged = self.record["logged"]  # the last step of each metric, saved in runs.json after each call
        new = {k: v for k, v in values.items() if step > logged.get(k, -1)}
        if new:
            self.tracker.log(new, step=step)
            logged |= dict.fromkeys(new, step)

    def files(self, out, paths) -> None:
        import shutil

        run = self.tracker.run
        for p in paths:  # copied into the run's folder: the offline run keeps them as they are now
            shutil.copyfile(p, Path(run.dir) / p.name)
            run.save(str(Path(run.dir) / p.name), base_path=run.dir, policy="now")

    def finish(self, status: str) -> None:
        self.tracker.run.finish(exit_code=0 if status == "FINISHED" else 1)


BACKENDS = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB}


class EvalRun:
    """`bertclf eval DIR --report-to mlflow [--run-id ID]`: the scores of an evaluation added to an existing
    MLflow run (default: the run that trained DIR, from DIR/tracking/runs.json), under eval/<data name>/ at the
    model's last training step, with the whole report as eval/<data name>.json. Checked before the scoring:
    the flags, the package and the run (a server that is down: one warning line, the scores are still printed)."""

    def __init__(self, report_to: str, run_id: str | None, model_dir, say=print):
        names = parse_report_to(report_to)
        if names not in ((), ("mlflow",)):
            raise UserError(f"eval --report-to: {','.join(names)}: eval logs to an existing MLflow run only; give "
                            f"--report-to mlflow (with --run-id ID, or the run that trained {model_dir})")
        if run_id and not names:
            raise UserError("eval --run-id: names the MLflow run to log to: add --report-to mlflow")
        self.say, self.run_id, self.client = say, run_id, None
        if not names:
            return
        check_installed(names)
        self.run_id = run_id or (rundir.read_tracked_runs(model_dir).get("mlflow") or {}).get("run_id")
        if not self.run_id:
            raise UserError(f"eval --report-to mlflow: {model_dir} was not trained with --report-to mlflow; give "
                            f"the MLflow run to log to with --run-id ID")
        self.step = (rundir.read_card(model_dir).get("training") or {}).get("steps") or 0
        self._open()

    def _open(self) -> None:
        import mlflow
        from mlflow.exceptions import MlflowException

        uri = mlflow.get_tracking_uri()
        try:
            check_reachable(uri)
        except ConnectionError as e:
            self.say(f"warning: --report-to mlflow: {e}; the scores are printed but not logged")
            return
        client = mlflow.MlflowClient(tracking_uri=uri)
        try:
            client.get_run(self.run_id)
        except MlflowException:
            raise UserError(f"--run-id {self.run_id}: no such MLflow run in {uri}; give the id of an existing run "
                            f"(MLFLOW_TRACKING_URI chooses the store)") from None
        self.client = client

    def log(self, report: dict, data_name: str) -> None:
        import time

        from mlflow.entities import Metric

        if self.client is None:
            return
        now = int(time.time() * 1000)
        values = numbers({k: v for k, v in report.items() if k not in ("per_class", "per_label")}, f"eval/{data_name}")
        try:
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, self.step) for k, v in values.items()])
            self.client.log_text(self.run_id, json.dumps(report, indent=2, ensure_ascii=False, default=str),
                                 f"eval/{data_name}.json")
        except Exception as e:  # noqa: BLE001 (the scores are printed anyway)
            self.say(f"warning: --report-to mlflow: logging to run {self.run_id} failed ({type(e).__name__}: "
                     f"{(str(e).strip().splitlines() or [''])[0][:300]}); the scores are printed but not logged")
            return
        self.say(f"tracking: eval/{data_name}/* logged to mlflow run {self.run_id} at step {self.step}")
