#!/usr/bin/env bash
# The GPU runs behind docs/results.md's CW10 comparison (fixed protocol), the DMC SAC-agent datasets and resume on
# CUDA (run from the project root on the GPU machine after `source .gpu/env.sh`; OUT is the folder whose files
# come back):
#   bash benchmarks/l2m_gpu.sh start      # starts, detached: (1) Meta-World scripted data for MT40 + CW10, then the
#                                         # CW10 comparison (scripts/l2m_cw10_device.sh, reduced budget);
#                                         # (2) state SAC on the 16 DMC tasks of dmc10 + dmc6, their datasets, then a
#                                         # short end-to-end run of configs/continual/l2m_cw10_dmc6.yaml;
#                                         # in the foreground: the resume-on-CUDA tests and the GPU suite
#   (SKIP_TESTS=1: only the detached jobs; JOBS=dmc: only (2), collecting its own Meta-World data, E2E_EPISODES
#   episodes per task, 50 by default; SAC_STEPS: agent steps of each state SAC run, 30000 by default; SAC_SETS and
#   E2E_SETS: more --set options for the SAC runs and the end-to-end run)
#   bash benchmarks/l2m_gpu.sh collect [SECONDS]   # later: waits up to SECONDS for both, then packs the results
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export PYTHON=python3 RUNS=/tmp/runs
SAC_STEPS=${SAC_STEPS:-30000}
JOBS=${JOBS:-"cw10 dmc"}
E2E_EPISODES=${E2E_EPISODES:-50}
mkdir -p /tmp/runs
if [ "${1:-start}" = start ]; then
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/machine.txt"
  python3 -c "import torch; print('torch', torch.__version__)" >> "$OUT/machine.txt"
  nproc >> "$OUT/machine.txt"
  cat > /tmp/cw10.sh <<EOF
set -u
date +%s > /tmp/cw10.start
python3 -m plasticrl collect --tasks mt40,cw10 --episodes 50 --noise-std 0.1 --seed 0 --out data > /tmp/runs/collect_mw.log 2>&1
touch /tmp/mw_data_done
scripts/l2m_cw10_device.sh --set run.device=cuda --set pretrain.steps=25000 --set sequence.steps_per_task=1500 \
  --set sequence.eval_every=750 --set sequence.eval_scope=current --set data.episodes_per_task=50 \
  > /tmp/runs/cw10.out 2>&1
echo "status \$? after \$((\$(date +%s) - \$(cat /tmp/cw10.start))) s" >> /tmp/runs/cw10.out
touch /tmp/cw10_done
EOF
  cat > /tmp/dmc.sh <<EOF
set -u
date +%s > /tmp/dmc.start
case "$JOBS" in *cw10*) ;; *) (python3 -m plasticrl collect --tasks mt40,cw10 --episodes $E2E_EPISODES --noise-std 0.1 \
  --seed 0 --out data > /tmp/runs/collect_mw.log 2>&1; touch /tmp/mw_data_done) & ;; esac
scripts/train_sac_state.sh 50 --set run.total_steps=$SAC_STEPS --set eval.every=10000 --set eval.episodes=5 \
  --set logging.plots=false ${SAC_SETS:-} > /tmp/runs/sac_state.out 2>&1
echo "sac status \$? after \$((\$(date +%s) - \$(cat /tmp/dmc.start))) s" >> /tmp/runs/sac_state.out
while [ ! -e /tmp/mw_data_done ]; do sleep 5; done
python3 -m plasticrl continual configs/continual/l2m_cw10_dmc6.yaml --set run.device=cuda --set run.out_dir=/tmp/runs \
  --set data.episodes_per_task=$E2E_EPISODES --set pretrain.steps=3000 --set sequence.steps_per_task=300 \
  --set sequence.eval_every=0 --set sequence.eval_episodes=2 ${E2E_SETS:-} > /tmp/runs/dmc6_e2e.log 2>&1
echo "e2e status \$? after \$((\$(date +%s) - \$(cat /tmp/dmc.start))) s" >> /tmp/runs/dmc6_e2e.log
touch /tmp/dmc_done
EOF
  case "$JOBS" in *cw10*) setsid nohup bash /tmp/cw10.sh > /dev/null 2>&1 < /dev/null & ;; *) touch /tmp/cw10_done ;; esac
  setsid nohup bash /tmp/dmc.sh > /dev/null 2>&1 < /dev/null &
  [ -n "${SKIP_TESTS:-}" ] && exit 0
  PLASTICRL_RESULTS=$OUT timeout 420 python3 -m pytest -q -p no:cacheprovider -s tests/gpu/test_resume_cuda.py \
    > "$OUT/resume_cuda_tests.txt" 2>&1
  tail -3 "$OUT/resume_cuda_tests.txt"
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_cuda.py -m "not slow" > "$OUT/gpu_tests.txt" 2>&1
  tail -3 "$OUT/gpu_tests.txt"
  tail -2 /tmp/runs/collect_mw.log /tmp/runs/cw10_*.log 2>/dev/null
else
  deadline=$(($(date +%s) + ${2:-500}))
  while [ "$(date +%s)" -lt $deadline ] && { [ ! -e /tmp/cw10_done ] || [ ! -e /tmp/dmc_done ]; }; do sleep 10; done
  ls /tmp/*_done 2>/dev/null
  tail -n 25 /tmp/runs/cw10.out 2>/dev/null
  tail -n 4 /tmp/runs/sac_state.out /tmp/runs/dmc6_e2e.log 2>/dev/null
  for f in /tmp/runs/cw10_*.log; do echo "$f: $(tail -c 300 "$f" | tail -n 1)"; done
  tar czf "$OUT/l2m_runs.tgz" --exclude="*.pt" --exclude="*.zip" --exclude="*.pkl" --exclude=wandb -C /tmp runs -C "$PWD" runs/sac_state
  ls -la "$OUT"
fi
