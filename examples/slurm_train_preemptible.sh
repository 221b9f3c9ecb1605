#!/bin/bash
# Preemptible training under Slurm -- UNTESTED HERE (no Slurm); tests/test_examples.py checks its syntax and that
# its command is a valid `bertclf train` command line.
#   sbatch examples/slurm_train_preemptible.sh
# 120 s before the time limit (or when Slurm preempts the job) the tasks get SIGUSR1 (SIGTERM on preemption):
# bertclf finishes the step, writes a checkpoint and exits 75; the job requeues itself and the same command
# continues the run (--resume auto; on the first start it trains from scratch). See docs/guarantees.md.
#SBATCH --job-name=bertclf-train
#SBATCH --requeue
#SBATCH --signal=USR1@120
#SBATCH --open-mode=append
#SBATCH --cpus-per-task=16
#SBATCH --time=04:00:00
set -uo pipefail
rc=0
srun bertclf train --data nsmc --epochs 2 --checkpoint-every 500 --out runs/nsmc --resume auto || rc=$?
if [ "$rc" -eq 75 ]; then  # stopped with a checkpoint: run again (74: disk full, 2: bad input: do not)
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
