"""Wall-time overhead of the plasticity monitor on DrQ training (walker-walk pixels, replay ratio 0.5).

Two measurements:
1. A/B: the same training (same seed) with and without ``PlasticityCallback`` at ``--every`` env steps.
2. Direct: the cost of one probe (timed with device syncs) times the number of probes, over the training's wall time.
The A/B difference includes run-to-run noise of env stepping; the direct figure isolates the probe.

    python benchmarks/monitor_overhead.py --device cuda --steps 20000 --n-envs 16
    python benchmarks/monitor_overhead.py --device cpu --steps 600 --size 48 --every 300   # CPU figure
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import SubprocVecEnv

from plasticrl import envs
from plasticrl.agents import DrQ
from plasticrl.lab.runtime import configure_torch
from plasticrl.replay_ratio import StaticReplayRatio
from plasticrl.sb3 import PlasticityCallback, ReplayRatioCallback


def train(args: argparse.Namespace, monitor: bool) -> tuple[float, PlasticityCallback | None, DrQ]:
    venv = make_vec_env(lambda: envs.make("dmc:walker-walk", size=args.size), n_envs=args.n_envs, seed=0,
                        vec_env_cls=SubprocVecEnv if args.n_envs > 1 else None)
    model = DrQ("CnnPolicy", venv, learning_starts=args.learning_starts, buffer_size=max(args.steps, 1000),
                batch_size=args.batch_size, train_freq=1, gradient_steps=0, seed=0, device=args.device,
                precision=args.precision, policy_kwargs={"hidden_dim": args.hidden_dim})
    callbacks = [ReplayRatioCallback(StaticReplayRatio(0.5))]
    probe = PlasticityCallback(every=args.every, batch_size=256) if monitor else None
    if probe is not None:
        callbacks.append(probe)
    t0 = time.perf_counter()
    model.learn(args.steps, callback=callbacks)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    venv.close()
    return wall, probe, model


def probe_ms(probe: PlasticityCallback, model: DrQ, repeats: int = 5) -> float:
    probe.model = model
    probe.probe()  # warm-up
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        probe.probe()
    return 1000 * (time.perf_counter() - t0) / repeats


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--every", type=int, default=10_000)
    p.add_argument("--n-envs", type=int, default=1)
    p.add_argument("--size", type=int, default=84)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden-dim", type=int, default=1024)
    p.add_argument("--learning-starts", type=int, default=1000)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--json", default=None)
    args = p.parse_args()
    wall_off, _, _ = train(args, monitor=False)
    wall_on, probe, model = train(args, monitor=True)
    assert probe is not None
    n_probes = len(probe.history)
    one = probe_ms(probe, model)
    result = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "steps": args.steps, "every": args.every, "n_envs": args.n_envs, "size": args.size,
        "wall_s_without": wall_off, "wall_s_with": wall_on, "probes": n_probes,
        "overhead_pct_ab": 100 * (wall_on - wall_off) / wall_off,
        "probe_ms": one, "overhead_pct_direct": 100 * n_probes * one / 1000 / wall_off,
    }
    for k, v in result.items():
        print(f"{k:<22} {v:.3f}" if isinstance(v, float) else f"{k:<22} {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    configure_torch("cuda" if torch.cuda.is_available() else "cpu")  # cuDNN autotuning, TF32: as the CLI
    main()
