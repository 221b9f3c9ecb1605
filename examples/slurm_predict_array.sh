#!/bin/bash
# Sharded prediction as a Slurm job array -- a sketch, UNTESTED HERE (no Slurm). One task per shard:
#   sbatch --array=0-7 examples/slurm_predict_array.sh runs/nsmc big.tsv preds
# then, once all tasks are done, concatenate (the "row" field restores input order if you need it):
#   cat preds/part-*.jsonl > preds.jsonl
#SBATCH --job-name=bertclf-predict
#SBATCH --cpus-per-task=4
#SBATCH --mem=4G
#SBATCH --time=01:00:00
set -euo pipefail
MODEL=$1 INPUT=$2 OUTDIR=$3
N=${SLURM_ARRAY_TASK_COUNT:?run with sbatch --array=0-N}
I=${SLURM_ARRAY_TASK_ID}
mkdir -p "$OUTDIR"
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
bertclf predict "$MODEL" --input "$INPUT" --shard "$I/$N" --output "$OUTDIR/part-$(printf %05d "$I").jsonl"
