#!/usr/bin/env bash
# The CW10 comparison on one GPU machine: scripted Meta-World data (collected in parallel), ONE pre-training
# (inside the single-task reference run), then every method of METHODS as concurrent processes sharing that
# pre-trained checkpoint; then forward transfer of each against the reference curves.
#   scripts/l2m_cw10_device.sh [--set key=value ...]      (overrides go to every run; RUNS=folder, default runs;
#                                                          METHODS="l2m l2m_oracle lora finetune ewc" by default)
# Logs: $RUNS/cw10_*.log; results: $RUNS/<method>_cw10/<seed>-<time>/summary.json etc.
set -euo pipefail
py=${PYTHON:-python}
runs=${RUNS:-runs}
mkdir -p "$runs"
common=(--set run.out_dir="$runs" "$@")
methods=${METHODS:-l2m l2m_oracle lora finetune ewc}
$py -m plasticrl continual configs/continual/l2m_cw10.yaml "${common[@]}" --set run.name=reference_cw10 \
  --set sequence.method=reference >"$runs/cw10_reference.log" 2>&1 &
ref=$!
until grep -q "^saved .*pretrained.pt" "$runs/cw10_reference.log" 2>/dev/null; do
  kill -0 $ref 2>/dev/null || { echo "the reference run stopped before pre-training ended:"; tail "$runs/cw10_reference.log"; exit 1; }
  sleep 5
done
ckpt=$(grep "^saved .*pretrained.pt" "$runs/cw10_reference.log" | head -1 | cut -d' ' -f2)
echo "pre-trained: $ckpt"
pids=($ref)
for method in $methods; do
  $py -m plasticrl continual configs/continual/l2m_cw10.yaml "${common[@]}" --set pretrain.checkpoint="$ckpt" \
    --set sequence.method="$method" --set run.name="${method}_cw10" >"$runs/cw10_$method.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait $pid || status=1; done
tail -n 3 "$runs"/cw10_*.log
$py - "$runs" $methods <<'PY'
import json, os, sys
from glob import glob
from plasticrl.continual_metrics import forward_transfer_summary
runs = sys.argv[1]
refs = sorted(glob(f"{runs}/reference_cw10/*/reference_curves.json"), key=os.path.getmtime)
ref = json.load(open(refs[-1])) if refs else None
for name in (f"{m}_cw10" for m in sys.argv[2:]):
    for path in sorted(glob(f"{runs}/{name}/*/summary.json"), key=os.path.getmtime):
        summary = json.load(open(path))
        matrix = json.load(open(path.replace("summary.json", "success_matrix.json")))
        if ref is not None and ref["tasks"] == matrix["tasks"]:
            summary.pop("forward_transfer_note", None)
            summary.update(forward_transfer_summary(matrix["curves"], ref["curves"], summary.get("score_per_task")))
            summary["forward_transfer_reference"] = refs[-1]
            json.dump(summary, open(path, "w"), indent=2)
        keep = ("average_performance", "forgetting", "forward_transfer", "pretrain_wall_s", "sequence_wall_s")
        print(name, {k: summary.get(k) for k in keep})
PY
exit $status
