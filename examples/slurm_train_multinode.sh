#!/bin/bash
# Multi-node DDP training under Slurm with torchrun's c10d rendezvous -- a sketch, UNTESTED HERE (no Slurm).
#   sbatch examples/slurm_train_multinode.sh
#SBATCH --job-name=bertclf-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one torchrun per node; torchrun starts one worker per GPU
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=04:00:00
set -euo pipefail
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# --out on shared storage: rank 0 writes it; --resume after a requeue needs every node to see it.
srun torchrun \
  --nnodes "$SLURM_NNODES" --nproc_per_node 8 \
  --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$HEAD:29500" \
  -m bertclf train --data nsmc --batch-size 64 --epochs 2 \
  --checkpoint-every 500 --out /shared/runs/nsmc-16gpu
# After a preemption, resubmit with --resume added (same flags, same number of processes).
