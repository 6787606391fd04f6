#!/usr/bin/env bash
# bulkprompt as a Slurm job array: 8 tasks share one provider key's limits and one budget
# through Redis. Submit with
#   sbatch examples/slurm/bulkprompt-array.sh
# and merge when every task is done (sbatch --dependency=afterok:JOBID merges automatically):
#   bulkprompt merge out/labels.shard-*-of-8.jsonl -o out/labels.parquet --jobs reviews.jsonl
#SBATCH --job-name=label-reviews
#SBATCH --array=0-7                  # 8 tasks: SLURM_ARRAY_TASK_ID 0..7, _COUNT 8 (the shards)
#SBATCH --cpus-per-task=1            # one core runs thousands of requests in flight
#SBATCH --mem=1G                     # memory stays flat in the size of the job file
#SBATCH --time=12:00:00              # an interrupted task resumes when run again
#SBATCH --requeue                    # a preempted task is requeued and resumes its shard
#SBATCH --signal=B:TERM@120          # SIGTERM two minutes before the limit: it drains and exits 130
#SBATCH --output=logs/%x-%a.log      # one log per task

set -euo pipefail

# The provider key and the Redis password come from files only you can read, never argv.
export OPENROUTER_API_KEY="$(cat ~/.secrets/openrouter)"
REDIS_PASSWORD="$(cat ~/.secrets/redis)"
# The URL with its password goes in the environment, so `ps` and the stored command line
# never show it. Any Redis >= 5 reachable from the compute nodes works.
export BULKPROMPT_COORDINATOR="redis://:${REDIS_PASSWORD}@redis.cluster.internal:6379/0"

mkdir -p out logs

# exec: Slurm's signals reach bulkprompt itself, which stops admitting, lets requests in flight
# finish, flushes and exits 130; the requeued task resumes where it stopped.
exec bulkprompt run reviews.jsonl \
  -o out/labels.jsonl `# becomes out/labels.shard-I-of-8.jsonl, I from SLURM_ARRAY_TASK_ID` \
  --provider openrouter \
  --model google/gemini-2.5-flash \
  --rpm 600 `# the key's whole limit: the coordinator shares it among the 8 tasks` \
  --tpm 1000000 \
  --max-cost 40 `# the whole budget, shared: the 8 together never pass it` \
  --run-name "label-reviews-${SLURM_ARRAY_JOB_ID}" `# what the tasks share (one ledger per array)` \
  --coordinator-timeout 60 `# Redis gone this long: stop with exit 4, re-run to resume` \
  --summary-json "out/summary-${SLURM_ARRAY_TASK_ID}.json" \
  --progress-log `# timestamped progress lines in the task's log`
