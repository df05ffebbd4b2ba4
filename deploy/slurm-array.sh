#!/bin/bash
# Encode a manifest on a Slurm job array: task i takes the manifest lines whose index is i
# modulo the shard count (SLURM_ARRAY_TASK_ID, set by Slurm). Submit with
#   sbatch --array=0-7 deploy/slurm-array.sh
# Outputs are content-addressed and published create-if-absent: requeued or repeated tasks
# never duplicate or overwrite a file, and a rerun does only what is unfinished.
#
# nernc batch exit status -> what this script does:
#   0   every input of the shard encoded or skipped       -> done
#   2   a bad input or command line (retrying won't help)   -> fail the task, no requeue
#   75  transient failure or SIGTERM (preemption, timeout)  -> requeue the task
#SBATCH --job-name=nernc-encode
#SBATCH --cpus-per-task=2
#SBATCH --time=02:00:00
#SBATCH --signal=TERM@120        # SIGTERM two minutes before the time limit
#SBATCH --requeue
#SBATCH --output=reports/%A_%a.log
set -u
SHARDS=8                         # = the array size
nernc batch --manifest manifest.jsonl --out nern/ --shards "$SHARDS" \
  --report "reports/${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}.jsonl"
status=$?
if [ "$status" -eq 75 ]; then
  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
fi
exit "$status"
