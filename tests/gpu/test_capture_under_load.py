"""CUDA graph capture under load (skipped without CUDA): four fast-path trainings at once on one GPU, each capturing
its acting and update graphs while the others train and an async env step is queued, all finish.

The fast path is what ``auto`` picks on CUDA (bf16, compiled update, fused Q heads, async env step), here with two env
workers on configs/train/smoke.yaml. A capture that depends on work outside it (cudaErrorStreamCaptureIsolation) or
sets up a cuBLAS workspace inside it can fail such a run: before captures were made on one warmed-up stream after a
device sync (plasticrl.agents.accel), one of two concurrent fast-path runs failed in capture (H200, 2026-12-02);
after the change four concurrent runs all finished (H200, 2026-12-03).
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

ROOT = Path(__file__).resolve().parents[2]
SETS = ["run.device=cuda", "run.total_steps=160", "replay_ratio.ratio=2", "agent.learning_starts=40",
        "monitor.every=60", "env.n_envs=2"]


def test_concurrent_fast_path_runs_capture_their_graphs(tmp_path):
    procs = []
    for i in range(4):
        args = [sys.executable, "-m", "plasticrl", "train", str(ROOT / "configs" / "train" / "smoke.yaml"),
                "--set", f"run.out_dir={tmp_path / str(i)}"]
        for s in SETS:
            args += ["--set", s]
        procs.append(subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    errors = []
    for i, proc in enumerate(procs):
        _, err = proc.communicate(timeout=900)
        if proc.returncode != 0:
            errors.append(f"run {i}: {err[-2000:]}")
    assert not errors, "\n".join(errors)
