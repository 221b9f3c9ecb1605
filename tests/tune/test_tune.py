"""`bertclf tune` on the tiny model: trials of real training runs in an Optuna study kept in SQLite, the best
model kept with the command that reruns it, a killed search continued, pruned trials recorded, one study shared
by two processes. Each trial trains 4 steps on 285 NSMC rows."""
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from bertclf.cli import main, parse
from bertclf.rundir import layout as rundir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_bars(monkeypatch):
    monkeypatch.setenv("BERTCLF_NO_PROGRESS", "1")


def tune_args(tiny_model_dir, nsmc_slices, out, *extra) -> list[str]:
    return ["tune", "--train", str(nsmc_slices["train"]), "--text-col", "document", "--model", str(tiny_model_dir),
            "--sample", "0.1", "--max-steps", "4", "--eval-every", "2", "--out", str(out), *extra]


def load(url: str, name: str = "bertclf"):
    return optuna.load_study(study_name=name, storage=url)


def states(study) -> list[str]:
    return [t.state.name for t in study.trials]


def test_a_search_keeps_the_best_model_and_the_command_that_reruns_it(tiny_model_dir, nsmc_slices, tmp_path,
                                                                        capsys):
    out = tmp_path / "search"
    assert main(tune_args(tiny_model_dir, nsmc_slices, out, "--trials", "3")) == 0
    printed = capsys.readouterr().out
    study = load(f"sqlite:///{out / 'study.db'}")
    assert states(study) == ["COMPLETE"] * 3
    assert [line.split(":")[0] for line in printed.splitlines() if line.startswith("trial ")] == \
        ["trial 0 (defaults)", "trial 1", "trial 2"]
    # trial 0 is `bertclf train`'s defaults on this CPU
    defaults = {"lr": 1e-4, "batch_size": 32, "epochs": 2, "warmup": 0.06, "weight_decay": 0.01,
                "class_weights": "none", "ngram": "auto", "max_length": 128}
    assert study.trials[0].params == {k: v for k, v in defaults.items() if k in study.trials[1].params}
    best = json.loads((out / "best.json").read_text())
    assert best["score"] == study.best_value and best["trial"] == study.best_trial.number
    assert best["defaults"]["score"] == study.trials[0].value and best["valid_rows"] == 15
    assert f"rerun it: {best['command']}" in printed and "the defaults (trial 0): " in printed
    assert rundir.has_card(out / "best") and list((out / "trials").iterdir()) == []  # the others' models deleted
    assert rundir.read_card(out / "best")["args"]["out"] == str(out / "trials" / f"trial-{best['trial']:04d}")

    # the page: every trial, the importances (3 complete trials), the command; its numbers as JSON
    page = (out / "report.html").read_text(encoding="utf-8")
    data = json.loads(page.split('<script type="application/json" id="report-data">')[1].split("</script>")[0])
    assert [t["number"] for t in data["trials"]] == [0, 1, 2] and data["best"]["command"] == best["command"]
    assert set(data["importance"]) <= set(study.trials[1].params) and 'id="fig-trials"' in page
    assert f"report: {out / 'report.html'}" in printed

    # the recipe file and the command are the same settings; rerun, the command gives the trial's score
    argv = shlex.split(best["command"])[1:]
    assert vars(parse(["train", "--config", best["config"], "--out", str(out / "rerun")])) | {"config": None} == \
        vars(parse(argv)) | {"config": None}
    assert main(argv) == 0
    card = rundir.read_card(out / "rerun")
    assert card["metrics"]["valid"]["accuracy"] == best["score"]

    # enough trials: running it again only reports; another metric is another search, refused
    capsys.readouterr()
    assert main(tune_args(tiny_model_dir, nsmc_slices, out, "--trials", "3")) == 0
    assert "trial " not in capsys.readouterr().out.split("searching")[1].split("best:")[0]
    assert main(tune_args(tiny_model_dir, nsmc_slices, out, "--trials", "5", "--timeout", "1e-9")) == 0
    assert "--timeout 1e-09: 0 s passed, no trial started after it" in capsys.readouterr().out
    assert main(tune_args(tiny_model_dir, nsmc_slices, out, "--trials", "4", "--metric", "macro_f1")) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: its study 'bertclf' searches another task: --metric (None there, macro_f1 here)" in err
    assert len(load(f"sqlite:///{out / 'study.db'}").trials) == 3


def cli(*args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "bertclf", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)


def complete_trials(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=10) as con:
            return con.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


class PruneTrialOne(optuna.pruners.BasePruner):
    """The search's pruner decides from the reported validation scores; this one gives up on trial 1."""

    def prune(self, study, trial) -> bool:
        return trial.number == 1


def test_a_pruned_trial_is_recorded_and_leaves_no_model(tiny_model_dir, nsmc_slices, tmp_path):
    from bertclf.tune.cli_flags import TUNE_FIELDS
    from bertclf.tune.run import tune

    a = parse(tune_args(tiny_model_dir, nsmc_slices, tmp_path / "search"))
    lines = []
    info = tune({k: getattr(a, k) for k in TUNE_FIELDS}, a.out, trials=2, echo=lines.append, pruner=PruneTrialOne())
    study = load(f"sqlite:///{tmp_path / 'search' / 'study.db'}")
    assert states(study) == ["COMPLETE", "PRUNED"]
    assert list(study.trials[1].intermediate_values) == [1]  # stopped at its first validation (step 2 of 4)
    assert any(line.startswith("trial 1: ") and " -> pruned at validation 1 (" in line for line in lines), lines
    assert info["trial"] == 0 and info["study"]["pruned"] == 1
    assert list((tmp_path / "search" / "trials").iterdir()) == []
    assert rundir.read_card(tmp_path / "search" / "best")["args"]["out"].endswith("trial-0000")


def wait_for_complete(db: Path, n: int, proc: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while complete_trials(db) < n and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert complete_trials(db) >= n, proc.communicate()[0] if proc.poll() is not None else "timed out"


def wait_for_a_trial_of(proc: subprocess.Popen, db: Path) -> None:
    """Until `proc` holds a running trial (its owner stamp written)."""
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        with sqlite3.connect(db, timeout=10) as con:
            owners = con.execute("SELECT a.value_json FROM trials t JOIN trial_user_attributes a ON "
                                 "a.trial_id = t.trial_id WHERE t.state = 'RUNNING' AND a.key = 'owner'").fetchall()
        if any(json.loads(v)["pid"] == proc.pid for (v,) in owners):
            return
        time.sleep(0.05)
    raise AssertionError(f"no running trial of process {proc.pid}")


def test_two_processes_share_a_study_and_a_killed_one_is_continued(tiny_model_dir, nsmc_slices, tmp_path, capsys):
    """A tune in another process; one here joins its study through --storage once it has a trial (both add
    trials); then the other is killed, most likely inside a trial, and a third tune continues its search to
    the total, marking the killed trial failed and removing its folder."""
    db, a = tmp_path / "shared.db", tmp_path / "a"
    shared = ("--storage", f"sqlite:///{db}", "--study", "shared")
    other = cli(*tune_args(tiny_model_dir, nsmc_slices, a, "--trials", "100", *shared))
    wait_for_complete(db, 1, other)
    assert main(tune_args(tiny_model_dir, nsmc_slices, tmp_path / "b", "--trials", "3", *shared)) == 0
    wait_for_a_trial_of(other, db)
    other.send_signal(signal.SIGKILL)  # no chance to clean up: its trial is in flight
    log = other.communicate()[0]
    assert other.returncode == -signal.SIGKILL, log
    study = load(f"sqlite:///{db}", "shared")
    pids = [t.user_attrs["owner"]["pid"] for t in study.trials]
    assert pids[0] == other.pid and os.getpid() in pids, log  # trial 0 (the defaults) by the other process
    assert [bool(t.user_attrs.get("defaults")) for t in study.trials].count(True) == 1
    in_flight = [t.number for t in study.trials if t.state.name == "RUNNING"]
    total = len([t for t in study.trials if t.state.name == "COMPLETE"]) + 2
    capsys.readouterr()

    assert main(tune_args(tiny_model_dir, nsmc_slices, a, "--trials", str(total), *shared)) == 0
    printed = capsys.readouterr().out
    study = load(f"sqlite:///{db}", "shared")
    assert states(study).count("COMPLETE") == total and "RUNNING" not in states(study)
    for n in in_flight:  # the killed process's trial: failed, its folder gone
        assert study.trials[n].state.name == "FAIL"
        assert f"trial {n}: its process died while it trained; marked failed" in printed
    assert list((a / "trials").iterdir()) == [] and rundir.has_card(a / "best")
    assert json.loads((a / "best.json").read_text())["study"]["finished"] == total


def test_a_stop_signal_ends_the_search_and_the_same_command_continues_it(tiny_model_dir, nsmc_slices, tmp_path,
                                                                         capsys):
    """SIGTERM at step 2 of trial 0 (the defaults): the search stops with exit code 75 and one line, leaving no
    trial folder or model; the trial is failed and queued again, so the same command runs the defaults first and
    completes the search."""
    from _cli import HOOKED, train_env

    out = tmp_path / "search"
    args = tune_args(tiny_model_dir, nsmc_slices, out, "--trials", "1")
    p = subprocess.run(HOOKED + args, cwd=REPO, env=train_env(BERTCLF_TEST_SIGNAL_AT="0:2:SIGTERM"),
                       capture_output=True, text=True, timeout=300)
    log = p.stdout + p.stderr
    assert p.returncode == 75 and "Traceback" not in log, log[-3000:]
    assert "tune: stopped by SIGTERM in trial 0, which is queued again; 0 of 1 trials done: run the same command " \
           "to continue the search" in p.stderr, log[-3000:]
    study = load(f"sqlite:///{out / 'study.db'}")
    assert states(study) == ["FAIL", "WAITING"] and study.trials[1].system_attrs["fixed_params"] == study.trials[0].params
    assert study.trials[1].user_attrs.get("defaults") is True
    assert list((out / "trials").iterdir()) == [] and not (out / "best").exists()

    assert main(args) == 0
    printed = capsys.readouterr().out
    study = load(f"sqlite:///{out / 'study.db'}")
    assert states(study) == ["FAIL", "COMPLETE"], printed
    assert printed.startswith("data:") and "trial 1 (defaults): " in printed
    assert json.loads((out / "best.json").read_text())["defaults"]["trial"] == 1


def test_a_study_recorded_before_a_flag_existed_continues_at_its_default(tiny_model_dir, nsmc_slices, tmp_path):
    """An older bertclf recorded the study's settings without a flag added since (here --compile): continuing it
    with that flag at its default is the same task; another value is refused."""
    out = tmp_path / "search"
    assert main(tune_args(tiny_model_dir, nsmc_slices, out, "--trials", "1")) == 0
    study = load(f"sqlite:///{out / 'study.db'}")
    older = {k: v for k, v in study.user_attrs["settings"].items() if k != "compile"}
    study.set_user_attr("settings", older)
    assert main(tune_args(tiny_model_dir, nsmc_slices, out, "--trials", "1", "--compile", "off")) == 2
    assert main(tune_args(tiny_model_dir, nsmc_slices, out, "--trials", "2")) == 0
    assert states(load(f"sqlite:///{out / 'study.db'}")).count("COMPLETE") == 2


def test_tune_takes_train_flags_and_a_config_beneath_them(tmp_path, capsys):
    f = tmp_path / "fixed.yaml"
    f.write_text("train: t.tsv\nlr: 1e-3\nmetric: weighted_f1\nout: runs/t\n", encoding="utf-8")
    a = parse(["tune", "--config", str(f), "--max-steps", "5", "--seed", "3"])
    assert (a.lr, a.metric, a.max_steps, a.seed, a.out, a.trials) == (1e-3, "weighted_f1", 5, 3, "runs/t", 10)
    assert a.epochs is None and a.warmup is None and a.max_length is None  # searched
    assert parse(["tune", "--config", str(f), "--lr", "2e-4"]).lr == 2e-4
    f.write_text("train: t.tsv\nresume: true\n", encoding="utf-8")
    assert main(["tune", "--config", str(f), "--out", "o"]) == 2
    assert "tune --config: resume is not for a search" in capsys.readouterr().err
    f.write_text("train: t.tsv\ntrails: 5\n", encoding="utf-8")
    assert main(["tune", "--config", str(f), "--out", "o"]) == 2
    assert f"--config {f}: unknown key 'trails'" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (("--trials", "0"), "--trials: must be >= 1, got 0"),
    (("--timeout", "-1"), "--timeout: must be > 0 seconds, got -1.0"),
    (("--storage", "nosuchdb://x"), "--storage nosuchdb://x: not a database URL Optuna can use"),
    (("--lr", "5"), "tune: argument --lr: must be in (0, 1), got 5"),
    (("--report-to", "tensorboard"), "tune --report-to tensorboard: its files would live in each trial's folder"),
])
def test_bad_tune_input_is_one_line_and_writes_nothing(tiny_model_dir, nsmc_slices, tmp_path, capsys, extra, message):
    assert main(tune_args(tiny_model_dir, nsmc_slices, tmp_path / "search", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("bertclf: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "search").exists()


def test_the_rerun_command_and_the_recipe_file_give_back_every_setting(tmp_path):
    """Switches (on, --no- for those on by default), lists, floats at full precision, names with spaces."""
    from bertclf.train.config import TrainConfig
    from bertclf.tune.recipe import train_command, write_config

    values = {"train": "my data.tsv", "out": "ignored", "columns": "id,text,labels", "multi_label": True,
              "label_sep": ";", "calibrate": False, "trim_vocab": False, "lr": 2.6668021767031695e-05,
              "epochs": 3, "batch_size": 64, "warmup": 0.0070206, "ngram": "off", "max_length": 256,
              "class_weights": "auto", "metric": "macro_f1", "seed": 7}
    argv = shlex.split(train_command(values, "runs/again"))
    assert argv[:2] == ["bertclf", "train"]
    a = parse(argv[1:])
    write_config(tmp_path / "r.yaml", values)
    b = parse(["train", "--config", str(tmp_path / "r.yaml"), "--out", "runs/again"])
    for name, v in values.items():
        if name != "out":
            assert getattr(a, name) == v == getattr(b, name), name
    assert a.out == b.out == "runs/again" and a.warmup != TrainConfig.warmup


def test_a_search_reported_to_mlflow_nests_each_trial_under_its_run(tiny_model_dir, nsmc_slices, tmp_path, capsys,
                                                                     monkeypatch):
    """--report-to mlflow: one run for the search (its settings, the best and the defaults' scores, best.json),
    and each trial's training run nested under it with that trial's validation score."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tune-test")
    import mlflow

    mlflow.create_experiment("tune-test", artifact_location=(tmp_path / "artifacts").as_uri())
    out = tmp_path / "search"
    assert main(tune_args(tiny_model_dir, nsmc_slices, out, "--trials", "2", "--report-to", "mlflow")) == 0
    printed = capsys.readouterr().out
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tune-test").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and f"mlflow: the search is run {parents[0].info.run_id}" in printed
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and len(runs) == 3
    best = json.loads((out / "best.json").read_text())
    assert parent.data.metrics["best/score"] == pytest.approx(best["score"])
    assert parent.data.metrics["defaults/score"] == pytest.approx(best["defaults"]["score"])
    assert parent.data.params["tune.trials"] == "2" and parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"best.json", "best.yaml"}
    study = load(f"sqlite:///{out / 'study.db'}")
    metric = "final/valid/" + best["metric"]
    scores = sorted(r.data.metrics.get(metric, r.data.metrics.get("valid/score", -1)) for r in children)
    assert scores == pytest.approx(sorted(t.value for t in study.trials)), [r.data.metrics for r in children]
