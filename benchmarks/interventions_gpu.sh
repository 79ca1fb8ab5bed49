#!/usr/bin/env bash
# The GPU runs behind docs/interventions.md and the fast-by-default figures (run from the project root on the GPU
# machine after `source .gpu/env.sh`; OUT is the folder whose files come back):
#   bash benchmarks/interventions_gpu.sh start     # intervention cost, auto vs hand-set fast path, GPU tests;
#                                                  # starts quadruped-run RR 2 with and without ReDo, detached
#   bash benchmarks/interventions_gpu.sh collect   # later: waits, then packs both run folders into OUT
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
common=(--set run.device=cuda --set run.out_dir=/tmp/runs --set run.progress_bar=false --set logging.print_episodes=false
        --set logging.plots=false)
if [ "${1:-start}" = start ]; then
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/machine.txt"
  python3 -c "import torch; print('torch', torch.__version__)" >> "$OUT/machine.txt"
  python3 benchmarks/intervention_cost.py --device cuda --json "$OUT/intervention_cost_h200.json" > /dev/null
  # auto settings (no flag) against the five hand-set fast-path flags: the same walker-walk run, 16k agent steps (frames/s between
  # the episode ends at 8k and 16k: after the warm-up and the compile)
  short=(configs/train/drq_walker_walk.yaml "${common[@]}" --set run.total_steps=16000 --set eval.every=0
         --set eval.episodes=1 --set monitor.every=8000 --set run.checkpoint_every=0)
  for arm in auto hand; do
    extra=(); [ $arm = hand ] && extra=(--set env.n_envs=16 --set agent.precision=bf16 --set agent.async_env_step=true
                                        --set agent.compile=true --set agent.fused_q_heads=true)
    python3 -m plasticrl train "${short[@]}" --set run.name=fast_$arm "${extra[@]}" > "/tmp/fast_$arm.log" 2>&1
    grep -h "auto settings" "/tmp/fast_$arm.log" > "$OUT/fast_$arm.txt"
    python3 - "$arm" >> "$OUT/fast_$arm.txt" <<'PY'
import glob, json, sys
rows = [json.loads(l) for f in glob.glob(f"/tmp/runs/fast_{sys.argv[1]}/*/metrics.jsonl") for l in open(f)]
ends = [(r["env_step"], r["time/wall_s"]) for r in rows if "train/episode_return" in r]
(s0, t0), (s1, t1) = ends[-2], ends[-1]
print(json.dumps({"arm": sys.argv[1], "steps": [s0, s1], "agent_steps_per_s": (s1 - s0) / (t1 - t0),
                  "frames_per_s": 2 * (s1 - s0) / (t1 - t0)}))
PY
  done
  redo=/tmp/redo25k.yaml
  printf 'run:\n  name: ${base}_redo\ninterventions:\n  - {kind: redo, groups: [critic], tau: 0.1, every: 25000}\n' > $redo
  long=(configs/train/drq_quadruped_run.yaml configs/train/overlays/rr2.yaml)
  longset=("${common[@]}" --set run.total_steps=400000 --set run.checkpoint_every=0 --set monitor.every=5000
           --set eval.every=25000 --set eval.episodes=3)
  setsid nohup python3 -m plasticrl train "${long[@]}" "${longset[@]}" > /tmp/rr2.log 2>&1 < /dev/null &
  setsid nohup python3 -m plasticrl train "${long[@]}" $redo "${longset[@]}" > /tmp/rr2_redo.log 2>&1 < /dev/null &
  python3 -m pytest -q -p no:cacheprovider tests/gpu -m "not slow" > "$OUT/gpu_tests.txt" 2>&1
  tail -3 "$OUT/gpu_tests.txt"; cat "$OUT"/fast_*.txt
else
  sleep "${2:-520}"
  tail -5 /tmp/rr2.log /tmp/rr2_redo.log > "$OUT/long_runs_tail.txt"
  tar czf "$OUT/runs.tgz" --exclude='*.zip' --exclude=wandb -C /tmp runs
  pkill -f "plasticrl train" || true
  ls -la "$OUT"
fi
