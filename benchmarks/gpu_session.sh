#!/usr/bin/env bash
# One device call: GPU tests, `plasticrl bench`, then a detached 500k-frame walker-walk run (logs under /tmp/runs).
# Usage on the GPU machine: bash benchmarks/gpu_session.sh  (after `source .gpu/env.sh`)
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)" | tee -a "$OUT/gpu.txt"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl 2>/dev/null
timeout 240 python3 -m pytest -q -x tests/test_cuda.py tests/test_metrics.py tests/test_monitor.py 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
N_ENVS=${N_ENVS:-8}
setsid nohup python3 -m plasticrl train configs/drq_walker_walk.yaml --set run.device=cuda --set run.out_dir=/tmp/runs \
  --set run.progress_bar=false --set env.n_envs=$N_ENVS --set eval.every=0 --set run.checkpoint_every=0 \
  --set logging.print_episodes=false > /tmp/walker.log 2>&1 < /dev/null &
echo "started walker run (n_envs=$N_ENVS)"
