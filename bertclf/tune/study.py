"""The Optuna study behind `bertclf tune`: where it is stored, that a continued study searches the same task,
and the trials of processes that died (killed between or inside trials)."""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import shutil
import socket
import time
from pathlib import Path

from bertclf.errors import UserError

STUDY_FILE = "study.db"  # DIR/study.db: the default storage (SQLite)
DEFAULT_STUDY = "bertclf"
# settings that may differ between the processes of one study: where files are (their contents are compared
# by SHA-256), where trials are written, and the test rows (scored after the search's choice, not searched on)
PLACES = ("out", "train", "valid", "test", "data_dir", "label_names", "test_sample")


def storage_url(out: Path, storage: str | None) -> str:
    return storage or f"sqlite:///{(out / STUDY_FILE).resolve()}"


def open_study(url: str, name: str, pruner):
    """(the study `name` in the storage at `url`, its storage, whether this process created it): created if new,
    maximizing the validation score. Of processes starting together exactly one creates it (the database
    refuses a second study of the name)."""
    import optuna
    import sqlalchemy.exc

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # tune prints its own line per trial
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    for attempt in range(3):  # processes starting together race to create the tables of a new database
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
            try:
                return optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                           pruner=pruner), storage, True
            except optuna.exceptions.DuplicatedStudyError:
                return optuna.load_study(storage=storage, study_name=name, pruner=pruner), storage, False
        except sqlalchemy.exc.OperationalError as e:
            if attempt == 2:
                raise UserError(f"--storage {url}: cannot open the study ({str(e).splitlines()[0][:200]})") from None
            time.sleep(0.5 + attempt)
        except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ImportError) as e:
            raise UserError(f"--storage {url}: not a database URL Optuna can use ({e}); give e.g. "
                            f"sqlite:///study.db or postgresql://user@host/db") from None


def check_same_task(study, fixed: dict, data_sha256: dict, where: str) -> None:
    """A continued study must search the same task: the same settings given to tune (apart from file places) and
    the same data. The first process records them in the study; later ones are refused with the differences."""
    settings = {k: v for k, v in fixed.items() if k not in PLACES}
    recorded = study.user_attrs.get("settings")
    if recorded is None:
        study.set_user_attr("settings", settings)
        study.set_user_attr("data_sha256", data_sha256)
        return
    # a setting the recording bertclf did not have yet (a newer flag) is the same task at its default
    differ = sorted(k for k in set(recorded) | set(settings) if recorded.get(k, flag_default(k)) != settings.get(k))
    named = [f"--{k.replace('_', '-')} ({recorded.get(k)} there, {settings.get(k)} here)" for k in differ]
    old_sha = study.user_attrs.get("data_sha256") or {}
    named += [f"the {split} data (SHA-256 {old_sha.get(split, '-')[:12]} there, {sha[:12]} here)"
              for split, sha in data_sha256.items() if sha and old_sha.get(split) not in (None, sha)]
    if named:
        raise UserError(f"{where}: its study '{study.study_name}' searches another task: {'; '.join(named)} differ; "
                        f"give the same flags and data to continue it, or another --out (or --study NAME) for a new "
                        f"search")


def flag_default(name: str):
    from dataclasses import MISSING, fields

    from bertclf.train.config import TrainConfig

    f = next((f for f in fields(TrainConfig) if f.name == name), None)
    return None if f is None or f.default is MISSING else f.default


def owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def live_elsewhere(trial) -> bool:
    """A running trial of another living process (on any machine: another host's are taken as alive)."""
    o = trial.user_attrs.get("owner") or {}
    return o.get("pid") != os.getpid() and (o.get("host") != socket.gethostname() or _alive(o.get("pid")))


UNOWNED_S = 60  # a running trial with no owner this long after its start was never started by a living tune


def fail_dead_trials(study, storage) -> list[int]:
    """Trials left running by a process of this machine that died (a killed tune): marked failed, their folders
    removed. Returns their numbers."""
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study.study_name)
    dead = []
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        o = t.user_attrs.get("owner") or {}
        # no owner: its process died between Optuna creating the trial and tune's first line (milliseconds)
        unowned = not o and t.datetime_start is not None and (now - t.datetime_start).total_seconds() > UNOWNED_S
        if unowned or (o.get("host") == socket.gethostname() and not _alive(o.get("pid"))
                       and o.get("pid") != os.getpid()):
            storage.set_trial_state_values(storage.get_trial_id_from_study_id_trial_number(study_id, t.number),
                                           TrialState.FAIL)
            if t.user_attrs.get("dir"):
                shutil.rmtree(t.user_attrs["dir"], ignore_errors=True)
            dead.append(t.number)
    return dead


def finished(study) -> list:
    """The trials that count towards --trials: complete or pruned."""
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


@contextlib.contextmanager
def folder_lock(out: Path):
    """One process at a time changes DIR/best and DIR/best.json (processes of one study may share DIR)."""
    fd = os.open(out / ".tune.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
