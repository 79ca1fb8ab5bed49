"""Resume on CUDA (skipped without CUDA): a pixel DrQ run resumed from a step checkpoint with its replay buffer
makes the same updates as the uninterrupted run, within what two uninterrupted runs of the same seed differ by, and
bit-for-bit where those two agree bit-for-bit (as on an H200, both variants, 2026-12-03).

On the CPU the resumed run is bit-for-bit (tests/lab/test_resume.py). On CUDA, two processes of the same seed are
not: cuDNN autotuning picks convolution algorithms per process and some kernels accumulate in a nondeterministic
order. So each check compares three runs of configs/train/smoke.yaml on CUDA, checkpointed at step 120 with
``run.save_replay``: A and B uninterrupted, R = A resumed from ``step_120.zip``. What resuming may add is measured
against what B differs from A by, and both against the size of the updates made after the checkpoint.

The load itself is exact: a checkpoint loaded on CUDA holds the same parameters and optimizer states as loaded on
the CPU, with the agent's own ``fused``/``capturable`` flags and the step counters as CUDA float32 tensors (what
capturable Adam needs to step inside a CUDA graph).

Set ``PLASTICRL_RESULTS`` to a folder to keep the measured differences as ``resume_cuda_<variant>.json``.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "train" / "smoke.yaml")
COMMON = ["run.device=cuda", "run.total_steps=122", "run.checkpoint_every=120", "run.save_replay=true",
          "replay_ratio.ratio=2", "agent.learning_starts=40", "monitor.every=60"]
VARIANTS = {
    # the paper's numerics: fp32, eager modules, the update as one CUDA graph (constant lr)
    "plain": ["env.n_envs=1", "agent.precision=fp32", "agent.compile=false", "agent.fused_q_heads=false",
              "agent.async_env_step=false"],
    # what `auto` picks on CUDA (bf16, compiled update, fused Q heads, async env step), with 2 env workers
    "fast": ["env.n_envs=2"],
}


def train(out_dir: Path, sets: list[str]) -> Path:
    args = [sys.executable, "-m", "plasticrl", "train", SMOKE, "--set", f"run.out_dir={out_dir}"]
    for s in sets:
        args += ["--set", s]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, what):
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, f"{what}: {err[-3000:]}"
    return out


def run_folder(out_dir: Path) -> Path:
    (folder,) = (out_dir / "smoke").iterdir()
    return folder


def load(path: Path, device: str):
    from plasticrl.agents import DrQ

    return DrQ.load(path, device=device, buffer_size=100)


def flat_state(agent) -> dict[str, torch.Tensor]:
    """Every parameter, buffer and optimizer state tensor of ``agent`` (float64, on the CPU), by name."""
    from plasticrl.sb3 import optimizers_of

    state = {f"policy.{k}": v for k, v in agent.policy.state_dict().items() if v.is_floating_point()}
    state["log_ent_coef"] = agent.log_ent_coef.detach()
    for i, opt in enumerate(optimizers_of(agent)):
        for p, s in opt.state_dict()["state"].items():
            for k, v in s.items():
                state[f"opt{i}.{p}.{k}"] = torch.as_tensor(v)
    return {k: v.detach().double().cpu() for k, v in state.items()}


def relative_difference(a: dict, b: dict, keys) -> float:
    """||a - b|| / ||a|| over the concatenation of ``keys``."""
    num = sum(float((a[k] - b[k]).pow(2).sum()) for k in keys)
    den = sum(float(a[k].pow(2).sum()) for k in keys)
    return (num / max(den, 1e-30)) ** 0.5


def test_checkpoint_loads_exactly_on_cuda(tmp_path):
    proc = train(tmp_path, [*COMMON, *VARIANTS["plain"], "run.total_steps=120"])
    finish(proc, "train")
    ckpt = run_folder(tmp_path) / "checkpoints" / "step_120.zip"
    on_cpu, on_cuda = load(ckpt, "cpu"), load(ckpt, "cuda")
    a, b = flat_state(on_cpu), flat_state(on_cuda)
    assert a.keys() == b.keys() and any(".exp_avg_sq" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    from plasticrl.sb3 import optimizers_of

    for opt in optimizers_of(on_cuda):
        assert all(g["fused"] and g["capturable"] for g in opt.param_groups)
        steps = [s["step"] for s in opt.state.values()]
        assert steps and all(t.device.type == "cuda" and t.dtype == torch.float32 for t in steps)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_resumed_updates_match_within_run_to_run_noise(variant, tmp_path):
    sets = [*COMMON, *VARIANTS[variant]]
    procs = {name: train(tmp_path / name, sets) for name in ("A", "B")}  # share the GPU
    for name, proc in procs.items():
        finish(proc, name)
    a_dir, b_dir = run_folder(tmp_path / "A"), run_folder(tmp_path / "B")
    r_dir = tmp_path / "R"
    shutil.copytree(a_dir, r_dir)
    (r_dir / "checkpoints" / "final.zip").unlink()  # as if killed right after step_120.zip
    done = subprocess.run([sys.executable, "-m", "plasticrl", "resume", str(r_dir)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "with its replay buffer" in done.stdout

    before = flat_state(load(a_dir / "checkpoints" / "step_120.zip", "cpu"))
    agents = {name: load(folder / "checkpoints" / "final.zip", "cpu") for name, folder in
              (("A", a_dir), ("B", b_dir), ("R", r_dir))}
    assert agents["A"]._n_updates == agents["B"]._n_updates == agents["R"]._n_updates
    assert agents["A"]._n_updates > load(a_dir / "checkpoints" / "step_120.zip", "cpu")._n_updates
    a, b, r = (flat_state(agents[n]) for n in "ABR")
    steps = [k for k in a if k.endswith(".step")]
    assert steps and all(torch.equal(a[k], r[k]) for k in steps), "optimizer step counters differ"
    params = [k for k in a if k.startswith("policy.") or k == "log_ent_coef"]
    moments = [k for k in a if k.endswith((".exp_avg", ".exp_avg_sq"))]
    found = {
        "variant": variant, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "updates_after_checkpoint": agents["A"]._n_updates - load(a_dir / "checkpoints" / "step_120.zip",
                                                                 "cpu")._n_updates,
        "update_size": relative_difference(a, before, params),  # how far the updates moved the parameters
        "params_resumed_vs_A": relative_difference(a, r, params),
        "params_B_vs_A": relative_difference(a, b, params),
        "adam_moments_resumed_vs_A": relative_difference(a, r, moments),
        "adam_moments_B_vs_A": relative_difference(a, b, moments),
        "params_bitwise_equal_resumed_vs_A": all(torch.equal(a[k], r[k]) for k in params),
        "params_bitwise_equal_B_vs_A": all(torch.equal(a[k], b[k]) for k in params),
    }
    print(json.dumps(found))
    if os.environ.get("PLASTICRL_RESULTS"):
        folder = Path(os.environ["PLASTICRL_RESULTS"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"resume_cuda_{variant}.json").write_text(json.dumps(found, indent=2))
    assert found["update_size"] > 0, "no update after the checkpoint: nothing compared"
    # a lost or mis-loaded optimizer state or replay buffer moves the parameters by a fraction of the update itself;
    # resuming must stay within run-to-run noise (4x margin) or 1% of the update
    for what in ("params", "adam_moments"):
        resumed, noise = found[f"{what}_resumed_vs_A"], found[f"{what}_B_vs_A"]
        assert resumed <= max(4 * noise, 1e-2 * found["update_size"]), (what, found)
    if found["params_bitwise_equal_B_vs_A"]:  # where the GPU repeats itself exactly, so must a resume
        assert found["params_bitwise_equal_resumed_vs_A"], found
