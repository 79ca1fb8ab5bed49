"""Gradient steps per second of the L2M Decision Transformer (``plasticrl.agents.l2m.L2MAgent.train_step``): precision x
CUDA graph, on random Meta-World-shaped episodes (39-dim states, 4-dim actions, 200 steps). Default sizes are the
CW10 configs' (d_model 256, 4 layers, 4 heads, context 5, batch 256); ``steps/s`` gives the pre-training time of
``pretrain.steps`` as steps / rate.

    python benchmarks/dt_train_speed.py --steps 300 [--json out.json]
    python benchmarks/dt_train_speed.py --steps 100 --d-model 768 --layers 6 --heads 12 --batch-size 512  # paper config
"""

import argparse
import json
import time

import numpy as np
import torch

from plasticrl.agents.l2m import DTConfig, L2MAgent
from plasticrl.lab.runtime import configure_torch


def steps_per_s(agent: L2MAgent, data, steps: int, warmup: int = 10) -> float:
    for _ in range(warmup):
        agent.train_step(agent.sample_batch(data))
    if agent.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        loss = agent.train_step(agent.sample_batch(data))
    loss.item()  # waits for the device
    return steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    configure_torch(device)  # TF32 matmuls for fp32: as `plasticrl continual`
    rng = np.random.default_rng(0)
    episodes = [{"observations": rng.normal(size=(201, 39)), "actions": rng.uniform(-1, 1, (200, 4)),
                 "rewards": rng.uniform(0, 10, 200)} for _ in range(args.episodes)]
    cfg = DTConfig(d_model=args.d_model, n_layers=args.layers, n_heads=args.heads, context=5, dropout=0.1)
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
               "batch_size": args.batch_size, "d_model": args.d_model, "n_layers": args.layers,
               "n_heads": args.heads}
    for precision in ("fp32", "bf16"):
        for graph in ((False, True) if device == "cuda" else (False,)):
            agent = L2MAgent(cfg, device=device, batch_size=args.batch_size, precision=precision, cuda_graph=graph)
            rate = steps_per_s(agent, agent.prepare_episodes(episodes), args.steps)
            name = f"{precision}_{'graph' if graph else 'eager'}"
            results[f"{name}_steps_per_s"] = rate
            print(f"{name}: {rate:.1f} steps/s ({1000 / rate:.2f} ms/step); "
                  f"200k steps in {200_000 / rate / 60:.1f} min", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
