#!/usr/bin/env bash
# The device runs behind the README's performance table, in order (run from the project root on the GPU machine,
# after `source .gpu/env.sh`; see ../shared/gpu.md). OUT is the folder whose files come back. The 500k-frame run
# (about 10 minutes on an H100) starts detached at the end: collect runs/drq_walker_walk/*/ with a later call.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
python3 -m pytest -q -p no:cacheprovider tests/gpu tests/plasticrl/test_metrics.py tests/plasticrl/test_monitor.py \
  tests/agents/test_drq_fused_heads.py -m "not slow" | tail -3
python3 -m pytest -q -p no:cacheprovider tests/gpu -m slow | tail -3   # max-autotune compiles: ~9 minutes on an H200
fast=(--precision bf16 --async-env-step --compile --fused-q-heads)
python3 -m plasticrl bench --device cuda --updates 300 --train-steps 8000 --n-envs 16 "${fast[@]}" \
  --json "$OUT/bench_h100_fast.json"
python3 benchmarks/update_variants.py --updates 300 --autotune --profile "" --json "$OUT/update_autotune_h100.json"
python3 benchmarks/monitor_overhead.py --device cuda --steps 20000 --n-envs 16 --precision bf16 \
  --json "$OUT/monitor_overhead_h100.json"
setsid nohup python3 -m plasticrl train configs/train/drq_walker_walk.yaml --set run.device=cuda --set run.out_dir=/tmp/runs \
  --set run.progress_bar=false --set env.n_envs=16 --set agent.precision=bf16 --set agent.async_env_step=true \
  --set agent.compile=true --set agent.fused_q_heads=true --set eval.every=0 --set logging.print_episodes=false \
  > /tmp/walker.log 2>&1 < /dev/null &
