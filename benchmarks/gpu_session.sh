#!/usr/bin/env bash
# The device runs behind the README's performance table, in order (run from the project root on the GPU machine,
# after `source .gpu/env.sh`; see ../shared/gpu.md). OUT is the folder whose files come back.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
python3 -m pytest -q tests/test_cuda.py tests/test_metrics.py tests/test_monitor.py | tail -3
for p in fp32 bf16; do
  python3 -m plasticrl bench --device cuda --updates 300 --train-steps 12000 --n-envs 16 --precision $p \
    --async-env-step --json "$OUT/bench_$p.json"
done
python3 benchmarks/monitor_overhead.py --device cuda --steps 20000 --n-envs 16 --precision bf16 \
  --json "$OUT/monitor_overhead_h100.json"
# 500k frames of walker-walk (250k agent steps at action repeat 2), about 15 minutes: start it detached and collect
# runs/drq_walker_walk/*/ (metrics.jsonl, plots/dashboard.png, eval at the end) with a later call.
setsid nohup python3 -m plasticrl train configs/drq_walker_walk.yaml --set run.device=cuda --set run.out_dir=/tmp/runs \
  --set run.progress_bar=false --set env.n_envs=16 --set agent.precision=bf16 --set eval.every=0 \
  --set logging.print_episodes=false > /tmp/walker.log 2>&1 < /dev/null &
