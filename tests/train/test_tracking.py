"""`bertclf train --report-to`: the real TensorBoard, MLflow and W&B packages, read back through their own
readers (TensorBoard's EventAccumulator, MLflow's client, W&B's offline files), on the tiny model.

One MLflow store (sqlite, MLflow's default kind) serves the module: its first use creates the tables (~5 s)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bertclf.cli import main
from bertclf.rundir import layout as rundir
from bertclf.train.tracking import parse_report_to

from train_hooks import PAUSE_ENV, PAUSE_MARK  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
HOOKED = [sys.executable, str(REPO / "tests" / "support" / "hooked_train.py")]  # the CLI plus the test callbacks


def _args(slices, model, out: Path, *extra) -> list[str]:
    """600 rows of the slice: 480 train (30 steps of 16 per epoch), 120 validation (enough for calibration)."""
    return ["train", "--train", str(slices["train"]), "--test", str(slices["test"]), "--test-sample", "0.2",
            "--text-col", "document", "--model", str(model), "--sample", "0.2", "--valid-frac", "0.2",
            "--batch-size", "16", "--lr", "2e-3", "--seed", "0", "--ngram", "off", "--log-every", "2",
            "--eval-every", "4", "--out", str(out), *map(str, extra)]


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """MLFLOW_TRACKING_URI: a fresh sqlite store for this module, with the experiment's artifacts beside it
    (MLflow's default artifact root is ./mlruns in the working folder: the repository here)."""
    import mlflow

    d = tmp_path_factory.mktemp("mlflow")
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{d / 'mlflow.db'}"
    mlflow.MlflowClient().create_experiment("bertclf", artifact_location=(d / "artifacts").as_uri())
    yield os.environ["MLFLOW_TRACKING_URI"]
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI")
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="module")
def tracked(mlflow_store, tiny_model_dir, nsmc_slices, tmp_path_factory):
    """One `bertclf train --report-to all --register tiny-clf` run, 8 steps (logged at 2, 4, 6, 8; validated at
    4 and 8), W&B offline (no key): (out, its card, its log records, what it printed)."""
    out = tmp_path_factory.mktemp("tracked") / "run"
    env = {k: os.environ.pop(k) for k in ("WANDB_MODE", "WANDB_API_KEY") if k in os.environ}
    try:
        import contextlib
        import io

        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = main(_args(nsmc_slices, tiny_model_dir, out, "--max-steps", 8, "--report-to", "all",
                              "--register", "tiny-clf"))
    finally:
        os.environ.update(env)
    assert code == 0, printed.getvalue()[-3000:]
    log = [json.loads(x) for x in rundir.log_path(out).read_text().splitlines()]
    return out, rundir.read_card(out), log, printed.getvalue()


def _windows(log: list[dict]) -> dict[int, dict]:
    return {r["step"]: r for r in log if "loss" in r}


def _tb_events(out: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(rundir.tracking_dir(out) / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def _tb_scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    acc = _tb_events(out)
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_reads_each_log_window_and_validation_at_its_step(tracked):
    out, card, log, _ = tracked
    scalars = _tb_scalars(out)
    windows = _windows(log)
    assert [s for s, _ in scalars["train/loss"]] == [2, 4, 6, 8]
    for step, value in scalars["train/loss"]:
        assert value == pytest.approx(windows[step]["loss"], rel=1e-6)
    assert [s for s, _ in scalars["train/lr"]] == [2, 4, 6, 8]
    valid = {r["step"]: r for r in log if "valid_accuracy" in r}
    assert [(s, pytest.approx(valid[s]["valid_accuracy"])) for s, _ in scalars["valid/accuracy"]] == \
        scalars["valid/accuracy"] and [s for s, _ in scalars["valid/accuracy"]] == [4, 8]
    assert scalars["test/accuracy"] == [(8, pytest.approx(card["metrics"]["test"]["accuracy"]))]
    assert scalars["calibration/temperature"] == [(8, pytest.approx(card["calibration"]["temperature"]))]


def test_tensorboard_holds_the_resolved_settings_as_hparams_of_the_same_run(tracked):
    from tensorboard.plugins.hparams import plugin_data_pb2

    out, card, _, _ = tracked
    data = plugin_data_pb2.HParamsPluginData()
    data.ParseFromString(_tb_events(out).PluginTagToContent("hparams")["_hparams_/session_start_info"])
    hparams = data.session_start_info.hparams
    assert hparams["lr"].number_value == pytest.approx(2e-3) and hparams["report_to"].string_value == "all"
    assert hparams["data.train.sha256"].string_value == card["data"]["train"]["sha256"]
    assert hparams["resolved.precision"].string_value == card["training"]["precision"]
    assert sorted(p.name for p in (rundir.tracking_dir(out) / "tensorboard").iterdir() if p.is_dir()) == []


def test_mlflow_holds_params_metrics_artifacts_and_the_registered_model(tracked, mlflow_store):
    import mlflow

    out, card, log, printed = tracked
    run_id = rundir.read_tracked_runs(out)["mlflow"]["run_id"]
    assert f"tracking: mlflow run {run_id}" in printed
    client = mlflow.MlflowClient(tracking_uri=mlflow_store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    params = run.data.params
    assert params["lr"] == "0.002" and params["max_steps"] == "8" and params["report_to"] == "all"
    assert params["data.train.sha256"] == card["data"]["train"]["sha256"]
    assert params["resolved.device"] == card["training"]["device"]  # the CPU with its matrix features
    assert params["resolved.total_steps"] == "8" and params["versions.torch"] == card["versions"]["torch"]
    history = client.get_metric_history(run_id, "train/accuracy")
    windows = _windows(log)
    assert [(m.step, m.value) for m in history] == [(s, pytest.approx(windows[s]["acc"])) for s in (2, 4, 6, 8)]
    assert run.data.metrics["test/macro_f1"] == pytest.approx(card["metrics"]["test"]["macro_f1"])
    assert run.data.metrics["calibration/valid/ece_after"] == pytest.approx(card["calibration"]["valid"]["ece_after"])
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"bertclf.json", "report.html", "model"} <= names
    model_files = {Path(a.path).name for a in client.list_artifacts(run_id, "model")}
    assert {"config.json", "model.safetensors", "bertclf.json", "tokenizer.json"} <= model_files
    assert not model_files & {rundir.TRACKING, rundir.CHECKPOINTS, rundir.LOCK_FILE}
    (version,) = client.search_model_versions("name = 'tiny-clf'")
    assert version.run_id == run_id and version.source.endswith("/model")


def test_eval_logs_its_scores_to_the_run_that_trained_the_model(tracked, mlflow_store, nsmc_slices, capsys):
    import mlflow

    out = tracked[0]
    run_id = rundir.read_tracked_runs(out)["mlflow"]["run_id"]
    assert main(["eval", str(out), "--test", str(nsmc_slices["test"]), "--text-col", "document", "--json",
                 "--report-to", "mlflow"]) == 0
    printed = capsys.readouterr()
    rep = json.loads(printed.out)
    assert f"tracking: eval/test/* logged to mlflow run {run_id} at step 8" in printed.err
    client = mlflow.MlflowClient(tracking_uri=mlflow_store)
    (m,) = client.get_metric_history(run_id, "eval/test/accuracy")
    assert (m.step, m.value) == (8, pytest.approx(rep["accuracy"])) and rep["n"] == 500
    assert "eval/test.json" in {a.path for a in client.list_artifacts(run_id, "eval")}
    assert main(["eval", str(out), "--test", str(nsmc_slices["test"]), "--report-to", "mlflow",
                 "--run-id", "0" * 32]) == 2
    assert capsys.readouterr().err.startswith(f"bertclf: error: --run-id {'0' * 32}: no such MLflow run in ")


def test_wandb_writes_an_offline_run_with_the_card(tracked):
    out, _, _, printed = tracked
    run_id = rundir.read_tracked_runs(out)["wandb"]["id"]
    (offline,) = (rundir.tracking_dir(out) / "wandb").glob(f"offline-run-*-{run_id}")
    assert (offline / f"run-{run_id}.wandb").stat().st_size > 0
    assert json.loads((offline / "files" / rundir.CARD_FILE).read_text())["training"]["steps"] == 8
    assert f"wandb offline run {run_id}" in printed and "wandb sync" in printed


def test_the_model_directory_stays_a_plain_hugging_face_directory(tracked):
    """The trackers' files live in DIR/tracking only; transformers loads DIR as before."""
    from transformers import AutoModelForSequenceClassification

    out = tracked[0]
    assert sorted(p.name for p in rundir.tracking_dir(out).iterdir()) == ["runs.json", "tensorboard", "wandb"]
    assert AutoModelForSequenceClassification.from_pretrained(out).config.id2label == {0: "0", 1: "1"}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


def test_a_tracking_server_that_is_down_is_one_warning_line(tiny_model_dir, nsmc_slices, tmp_path, capsys,
                                                            monkeypatch):
    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp_path / "run"
    assert main(_args(nsmc_slices, tiny_model_dir, out, "--max-steps", 2, "--report-to", "mlflow")) == 0
    printed = capsys.readouterr()
    lines = [ln for ln in (printed.out + printed.err).splitlines() if "mlflow" in ln.lower()]
    assert len(lines) == 1 and lines[0].startswith(f"warning: --report-to mlflow: opening its run failed "
                                                   f"(ConnectionError: cannot reach {uri}"), lines
    assert "training goes on without mlflow" in lines[0]
    assert rundir.has_card(out) and rundir.read_card(out)["training"]["steps"] == 2
    assert "mlflow" not in rundir.read_tracked_runs(out)


def test_a_missing_tracker_package_is_one_line_before_any_work(tiny_model_dir, nsmc_slices, tmp_path, capsys,
                                                               monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # how Python marks a module that cannot be imported
    out = tmp_path / "run"
    assert main(_args(nsmc_slices, tiny_model_dir, out, "--report-to", "tensorboard,wandb")) == 2
    err = capsys.readouterr().err
    assert err == "bertclf: error: --report-to wandb: the wandb package is not installed; pip install 'bertclf[wandb]'\n"
    assert not out.exists()


@pytest.mark.parametrize("value, names", [("none", ()), ("all", ("tensorboard", "mlflow", "wandb")),
                                          (" MLflow,tensorboard ", ("tensorboard", "mlflow"))])
def test_report_to_takes_none_all_or_a_list(value, names):
    assert parse_report_to(value) == names


@pytest.mark.parametrize("extra, message", [
    (("--report-to", "comet"), "--report-to: unknown tracker 'comet'; give none, all, or a comma-separated list"),
    (("--register", "m"), "--register: registers the model in MLflow's model registry: add --report-to mlflow"),
    (("--report-to", "none,mlflow"), "--report-to: unknown tracker 'none'")])
def test_bad_tracking_flags_are_one_line(extra, message, tmp_path, capsys):
    assert main(["train", "--data", "nsmc", "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bertclf: error: {message}") and err.count("\n") == 1


def test_a_killed_and_resumed_run_is_one_tracked_run_with_each_step_once(mlflow_store, tiny_model_dir,
                                                                        nsmc_slices, tmp_path, monkeypatch):
    """Killed (SIGKILL) after step 7: steps 2, 4, 6 logged, checkpoint at 4. --resume restarts at step 4 and logs
    6, 8, 10: TensorBoard hides the killed run's step 6 (purge_step), MLflow's history already has it."""
    import mlflow

    for key in ("WANDB_MODE", "WANDB_API_KEY"):  # W&B offline
        monkeypatch.delenv(key, raising=False)
    out = tmp_path / "run"
    args = _args(nsmc_slices, tiny_model_dir, out, "--max-steps", 10, "--checkpoint-every", 4,
                 "--report-to", "all")
    env = dict(os.environ, BERTCLF_NO_PROGRESS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               **{PAUSE_ENV: "step:7"})
    # a W&B service this process started (the module's first run) is not the killed run's: on its own machine
    # a killed run's service dies with it, while a shared one would keep the run id "in use"
    env.pop("WANDB_SERVICE", None)
    proc = subprocess.Popen(HOOKED + args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        for line in proc.stderr:
            if PAUSE_MARK in line:
                break
    finally:
        proc.kill()  # SIGKILL: the trackers are not closed, the MLflow run stays RUNNING
        proc.wait(timeout=60)
    run_id, wandb_id = (rundir.read_tracked_runs(out)[k][i] for k, i in (("mlflow", "run_id"), ("wandb", "id")))
    client = mlflow.MlflowClient(tracking_uri=mlflow_store)
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [2, 4, 6]
    assert client.get_run(run_id).info.status == "RUNNING"

    assert main(args + ["--resume"]) == 0
    windows = _windows([json.loads(x) for x in rundir.log_path(out).read_text().splitlines()])
    assert rundir.read_tracked_runs(out)["mlflow"]["run_id"] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [r.info.run_id for r in client.search_runs([run.info.experiment_id], "attributes.run_name = 'run'")
            if Path(r.data.params.get("out", "")) == out] == [run_id]
    history = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(s, pytest.approx(windows[s]["loss"])) for s in (2, 4, 6, 8, 10)]
    assert [m.step for m in client.get_metric_history(run_id, "valid/accuracy")] == [4, 8, 10]
    scalars = _tb_scalars(out)
    assert [(s, pytest.approx(windows[s]["loss"], rel=1e-6)) for s in (2, 4, 6, 8, 10)] == scalars["train/loss"]
    assert [s for s, _ in scalars["valid/accuracy"]] == [4, 8, 10]
    # W&B: the same run id continued in a second offline session, which logged from step 8 on
    assert len(list((rundir.tracking_dir(out) / "wandb").glob(f"offline-run-*-{wandb_id}"))) == 2
    assert rundir.read_tracked_runs(out)["wandb"]["logged"]["train/loss"] == 10
