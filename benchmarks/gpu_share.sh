#!/usr/bin/env bash
# How many DrQ runs share one GPU: N concurrent fast-path trainings of walker-walk (the `auto` settings, env.n_envs =
# cores / N each, replay capped at the run's STEPS transitions, on the GPU), for each N of COUNTS. Per run: agent
# steps/s and frames/s from its first episode end at or after STEPS / 2 to its last (after the warm-up and the
# compile); per N: their sum and the peak GPU
# memory of all runs together (nvidia-smi, sampled every 2 s). Run from the project root on the GPU machine:
#   bash benchmarks/gpu_share.sh            # COUNTS="1 2 4" STEPS=16000 by default; results: $OUT/gpu_share.json
#   bash benchmarks/gpu_share.sh report     # only the summary, from the runs already under /tmp/share
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
COUNTS=${COUNTS:-"1 2 4"}
STEPS=${STEPS:-16000}
cores=$(nproc)
for n in $COUNTS; do
  [ "${1:-}" = report ] && break
  root=/tmp/share/$n; rm -rf "$root"; mkdir -p "$root"
  (while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >> "$root/mem.txt"; sleep 2; done) &
  sampler=$!
  pids=()
  for i in $(seq 1 "$n"); do
    python3 -m plasticrl train configs/train/drq_walker_walk.yaml --set run.device=cuda --set run.out_dir="$root" \
      --set run.name="run$i" --set run.seed="$i" --set run.total_steps="$STEPS" --set env.n_envs=$((cores / n)) \
      --set eval.every=0 --set eval.episodes=1 --set monitor.every=6000 --set run.checkpoint_every=0 \
      --set run.progress_bar=false --set logging.print_episodes=false --set logging.plots=false \
      > "$root/run$i.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || echo "N=$n: a run failed, see $root/run*.log"; done
  kill $sampler
done
python3 - "$COUNTS" "$cores" "$STEPS" > "$OUT/gpu_share.json" <<'PY'
import glob, json, subprocess, sys
result = {"gpu": subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                capture_output=True, text=True).stdout.strip(), "cores": int(sys.argv[2]), "by_n": []}
for n in sys.argv[1].split():
    runs = []
    for f in sorted(glob.glob(f"/tmp/share/{n}/run*/*/metrics.jsonl")):
        rows = []
        for line in open(f):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a run stopped mid-write
                pass
        ends = [(r["env_step"], r["time/wall_s"]) for r in rows if "train/episode_return" in r]
        later = [e for e in ends if e[0] >= int(sys.argv[3]) // 2]
        if len(later) < 2:
            continue
        (s0, t0), (s1, t1) = later[0], later[-1]
        runs.append({"steps": [s0, s1], "agent_steps_per_s": (s1 - s0) / (t1 - t0), "frames_per_s": 2 * (s1 - s0) / (t1 - t0)})
    try:
        mem = [int(x) for x in open(f"/tmp/share/{n}/mem.txt").read().split() if x.isdigit()]
    except FileNotFoundError:
        mem = []
    result["by_n"].append({"n": int(n), "n_envs_per_run": int(sys.argv[2]) // int(n), "finished": len(runs),
                           "runs": runs, "total_frames_per_s": sum(r["frames_per_s"] for r in runs),
                           "peak_gpu_memory_mib": max(mem, default=0)})
print(json.dumps(result, indent=2))
PY
cat "$OUT/gpu_share.json"
