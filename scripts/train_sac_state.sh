#!/usr/bin/env bash
# State-based SAC on the 16 DMC tasks of envs.sequence("dmc10") + ("dmc6"), one process a task, all in parallel
# (one CPU thread each: 16 cores), then a Minari dataset of EPISODES episodes per task from each run's final.zip.
#   scripts/train_sac_state.sh [EPISODES] [--set key=value ...]     (from the repo root; PYTHON=python3 to change)
#   e.g. scripts/train_sac_state.sh 100 --set run.total_steps=250000
# Runs: runs/sac_state/<domain>-<task>/<seed>-<time>/, logs: runs/sac_state/*.log; datasets: data/. The ids to put
# in a continual config's data.dataset_ids are printed at the end.
set -euo pipefail
py=${PYTHON:-python}
episodes=${1:-100}
shift || true
tasks=$($py -c 'from plasticrl import envs; print(" ".join(envs.sequence("dmc10") + envs.sequence("dmc6")))')
mkdir -p runs/sac_state
export OMP_NUM_THREADS=1

wait_all() {  # wait_all LABEL PID...: exits if any of the processes failed
  local label=$1 failed=0
  shift
  for pid in "$@"; do wait "$pid" || failed=$((failed + 1)); done
  if [ "$failed" -gt 0 ]; then echo "$label: $failed tasks failed, see runs/sac_state/*.$label.log" >&2; exit 1; fi
}

pids=()
for id in $tasks; do
  $py -m plasticrl train configs/train/sac_state.yaml --set env.id="$id" --set run.out_dir=runs/sac_state \
    --set run.name="${id#dmc:}" --set run.progress_bar=false "$@" >"runs/sac_state/${id#dmc:}.train.log" 2>&1 &
  pids+=($!)
done
wait_all train "${pids[@]}"

pids=()
for id in $tasks; do
  $py -m plasticrl collect --runs runs/sac_state --tasks "$id" --episodes "$episodes" --out data --device cpu \
    >"runs/sac_state/${id#dmc:}.collect.log" 2>&1 &
  pids+=($!)
done
wait_all collect "${pids[@]}"
echo "data.dataset_ids (data.out_dir: data):"
grep -h "^  dmc:" runs/sac_state/*.collect.log
