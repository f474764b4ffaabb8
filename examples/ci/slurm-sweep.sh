#!/usr/bin/env bash
# Slurm job array: N shards of a sweep, then one dependent job that merges, reports and checks the gates.
#   bash examples/ci/slurm-sweep.sh     # on the login node: downloads, then submits the array and the gate job
# `bench sweep --shard auto` reads SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT (and _MIN, _STEP).
# Every shard writes into its own directory; they could also share one (shards never touch each
# other's cells), but separate ones are what a multi-machine CI does and what `bench merge` combines.
#SBATCH --job-name=bench-sweep
#SBATCH --array=0-3
#SBATCH --gres=gpu:1
#SBATCH --time=04:00:00
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail

CONFIG=${CONFIG:-configs/ci-gpu.yaml}
export SAMPLER_BENCH_CACHE=${SAMPLER_BENCH_CACHE:-$HOME/.cache/sampler_bench}
RESULTS=${RESULTS:-results/slurm}

if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
  # Submission (login node, which has the network): fetch everything once, then submit the array
  # and the gate job that runs after all its tasks, whatever their outcome.
  mkdir -p logs
  bench download "$CONFIG"
  array=$(sbatch --parsable --export=ALL,CONFIG="$CONFIG",RESULTS="$RESULTS" "$0")
  sbatch --dependency=afterany:"$array" --job-name=bench-gate --time=00:30:00 --output=logs/%x-%j.out \
    --export=ALL,CONFIG="$CONFIG",RESULTS="$RESULTS" --wrap \
    "bench merge $RESULTS/merged $RESULTS/shard-* --overwrite && bench report $RESULTS/merged && bench check $RESULTS/merged --junit $RESULTS/junit.xml --summary $RESULTS/summary.md"
  exit 0
fi

bench env "$CONFIG"
bench sweep "$CONFIG" --shard auto --offline --out "$RESULTS/shard-$SLURM_ARRAY_TASK_ID"
