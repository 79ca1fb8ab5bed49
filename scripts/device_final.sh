#!/usr/bin/env bash
# One device call (H100): the reduced CW10 report in the background, the CUDA tests beside it (correctness only).
set -u
export PYTHONPATH=$PWD:${PYTHONPATH:-}
RUNS=/tmp/runs PYTHON=python3 timeout 520 scripts/l2m_cw10_device.sh "$@" > /tmp/cw10.out 2>&1 &
cw=$!
timeout 400 python3 -m pytest -q tests/gpu -m "not slow" > "$OUT/cuda_tests.txt" 2>&1
tail -3 "$OUT/cuda_tests.txt"
wait $cw; echo "cw10 status $?"
tail -n 12 /tmp/cw10.out
cp /tmp/cw10.out "$OUT/"
(cd /tmp/runs && tar czf "$OUT/cw10_runs.tgz" --exclude=checkpoints --exclude=wandb . && cp cw10_*.log "$OUT/")
