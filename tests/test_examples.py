"""The preemptible-training examples (no cluster here): the Kubernetes Job parses and wires the volume, grace
period and exit codes as docs/guarantees.md says; the Slurm script is valid bash; both run a command that bertclf's
own argument parser and config check accept, with `--resume auto`."""
from __future__ import annotations

import shlex
import subprocess
from dataclasses import fields
from pathlib import Path, PurePosixPath

import yaml

from bertclf.cli import parse
from bertclf.train.config import TrainConfig, validate_config
from bertclf.io.disk_space import DISK_FULL_EXIT
from bertclf.train.preemption import PREEMPTED_EXIT

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
K8S, SLURM = EXAMPLES / "k8s_train_job.yaml", EXAMPLES / "slurm_train_preemptible.sh"


def _train_args(argv: list[str]):
    """`bertclf train ...` as the CLI parses it, with its settings checked (what a run checks before any work)."""
    assert argv[0] == "bertclf" and argv[1] == "train", argv
    args = parse(argv[1:])
    validate_config(TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)}))
    assert args.resume == "auto", "a restarted pod or requeued job must run the same command: --resume auto"
    return args


def _exit_codes(rules: list[dict], action: str) -> set[int]:
    return {code for r in rules if r["action"] == action for code in r.get("onExitCodes", {}).get("values", [])}


def test_kubernetes_job_restarts_a_preempted_run_with_the_same_command_on_its_volume():
    docs = {d["kind"]: d for d in yaml.safe_load_all(K8S.read_text())}
    job, claim = docs["Job"], docs["PersistentVolumeClaim"]
    pod = job["spec"]["template"]["spec"]
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert pod["restartPolicy"] == "Never"  # Kubernetes refuses a podFailurePolicy with any other
    assert PREEMPTED_EXIT in _exit_codes(rules, "Ignore")  # preempted: a new pod, not counted as a failure
    assert {2, DISK_FULL_EXIT} <= _exit_codes(rules, "FailJob")  # bad input, full volume: no retry loop
    assert 60 <= pod["terminationGracePeriodSeconds"]  # one step and one checkpoint write after SIGTERM

    (container,) = pod["containers"]
    args = _train_args(container["command"] + container.get("args", []))
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) in
                 PurePosixPath(args.out).parents)  # --out lives on a mounted volume, not in the pod
    assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def test_slurm_script_requeues_on_exit_75_and_runs_the_same_command():
    subprocess.run(["bash", "-n", str(SLURM)], check=True)  # valid bash
    text = SLURM.read_text()
    assert "#SBATCH --requeue" in text and "#SBATCH --signal=USR1@" in text
    (line,) = [ln for ln in text.splitlines() if ln.startswith("srun ")]
    words = shlex.split(line, comments=True)[1:]
    end = next((i for i, w in enumerate(words) if w in ("||", "&&", ";", "|")), len(words))
    _train_args(words[:end])
    assert f'[ "$rc" -eq {PREEMPTED_EXIT} ]' in text and 'scontrol requeue "$SLURM_JOB_ID"' in text
