"""Gradient steps per second of the L2M Decision Transformer (``plasticrl.agents.l2m.L2MAgent.train_step``): precision x
CUDA graph, on random Meta-World-shaped episodes (39-dim states, 4-dim actions, 200 steps). Default sizes are the
CW10 configs' (d_model 256, 4 layers, 4 heads, context 5, batch 256); ``steps/s`` gives the pre-training time of
``pretrain.steps`` as steps / rate. ``--method l2m`` (or another sequence method) times that method's training
step instead, as ``plasticrl continual`` runs it on a task (its loss, its trainable parameters, one optimizer; the
pool section from ``--config``).

    python benchmarks/dt_train_speed.py --steps 300 [--json out.json]
    python benchmarks/dt_train_speed.py --steps 100 --d-model 768 --layers 6 --heads 12 --batch-size 512  # paper config
    python benchmarks/dt_train_speed.py --steps 100 --d-model 768 --layers 6 --heads 12 --method l2m  # its sequence
"""

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
import torch

from plasticrl.agents.l2m import DTConfig, L2MAgent
from plasticrl.lab.config import continual as cc
from plasticrl.lab.continual.methods import make_method
from plasticrl.lab.runtime import configure_torch

Batch = tuple[torch.Tensor, ...]


def sequence_step(agent: L2MAgent, method_name: str, config: str) -> Callable[[Batch], torch.Tensor]:
    """The training step of sequence method ``method_name`` on task 0 of a 10-task sequence, as
    ``ContinualRun.train_task`` builds it; the config file gives the method's sections (pool, EWC)."""
    m = agent.config
    cfg = cc.load(config, [f"model.d_model={m.d_model}", f"model.n_layers={m.n_layers}", f"model.n_heads={m.n_heads}",
                           f"sequence.method={method_name}"])
    method = make_method(method_name, agent, cfg, n_tasks=10)
    method.train()
    params = method.trainable()
    optimizer = agent.make_optimizer(params, cfg.sequence.learning_rate, method.weight_decay)
    return agent.make_update(lambda batch: method.loss(batch, 0), optimizer, params)


def steps_per_s(step: Callable[[Batch], torch.Tensor], sample: Callable[[], Batch], device: torch.device, steps: int,
                warmup: int = 10) -> float:
    for _ in range(warmup):
        step(sample())
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        out = step(sample())
    out.sum().item()  # waits for the device
    return steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--method", default=None, help="a sequence method (l2m, l2m_oracle, lora, finetune): time its step")
    p.add_argument("--config", default="configs/continual/l2m_cw10_paper.yaml", help="config of --method's sections")
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
               "n_heads": args.heads, "method": args.method or "pretrain"}
    for precision in ("fp32", "bf16"):
        for graph in ((False, True) if device == "cuda" else (False,)):
            agent = L2MAgent(cfg, device=device, batch_size=args.batch_size, precision=precision, cuda_graph=graph)
            data = agent.prepare_episodes(episodes)
            step = sequence_step(agent, args.method, args.config) if args.method else agent.train_step
            rate = steps_per_s(step, lambda: agent.sample_batch(data), agent.device, args.steps)
            name = f"{precision}_{'graph' if graph else 'eager'}"
            results[f"{name}_steps_per_s"] = rate
            print(f"{name}: {rate:.1f} steps/s ({1000 / rate:.2f} ms/step); "
                  f"100k steps in {100_000 / rate / 60:.1f} min", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
