"""Cost of one application of each intervention on DrQ's critic (hidden 1024, feature 50, 84x84 pixels), in ms.

A DrQ agent on quadruped-run pixels (12 actions) with filled Adam state; each intervention is applied to the critic
group as ``plasticrl.sb3.InterventionCallback`` applies it (every optimizer, the target critic, ReDo scoring units
on a replay-sized batch of 256 through the probe forward), timed with device syncs; the median of ``--repeats``.
Injection rebuilds the heads, so it is timed on a fresh agent each time, and its cost includes the graph re-capture
of the next update (reported apart).

    python benchmarks/intervention_cost.py --device cuda --json out.json
    python benchmarks/intervention_cost.py --device cpu --hidden-dim 256 --repeats 3   # a CPU figure
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from stable_baselines3.common.env_util import make_vec_env

from plasticrl import envs
from plasticrl import interventions as iv
from plasticrl.agents import DrQ
from plasticrl.interventions.base import Target
from plasticrl.lab.bench import synthetic_batch
from plasticrl.lab.runtime import configure_torch
from plasticrl.sb3 import optimizers_of, probe_forward, resolve_groups, target_pairs_of

MAKERS = {"reset_last2": lambda: iv.Reset(layers="last2"), "reset_all": lambda: iv.Reset(layers="all"),
          "shrink_perturb": lambda: iv.ShrinkPerturb(alpha=0.5), "redo": lambda: iv.ReDo(tau=0.1),
          "inject": lambda: iv.Inject(heads=["q1", "q2"])}


def agent(args: argparse.Namespace) -> tuple[DrQ, object]:
    env = make_vec_env(lambda: envs.make("dmc:quadruped-run", size=84), n_envs=1, seed=0)
    model = DrQ("CnnPolicy", env, buffer_size=1000, batch_size=256, device=args.device, seed=0,
                policy_kwargs={"hidden_dim": args.hidden_dim})
    shape, adim = model.observation_space.shape, model.action_space.shape[0]
    batch = synthetic_batch(256, shape, adim, model.device, 0)
    for _ in range(3):  # Adam state exists, the graph (on CUDA) is captured
        model._update_fn(batch)
    return model, batch


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--hidden-dim", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    configure_torch(args.device)
    results: dict[str, float | int | str] = {"device": args.device, "hidden_dim": args.hidden_dim,
                                             "torch": torch.__version__}
    if args.device == "cuda":
        results["gpu"] = torch.cuda.get_device_name()
    model, batch = agent(args)
    for name, make in MAKERS.items():
        times, update_after = [], []
        for _ in range(args.repeats if name != "inject" else max(2, args.repeats // 3)):
            if name == "inject":
                model, batch = agent(args)
            target = Target(resolve_groups(model, ["critic"])["critic"], optimizers_of(model), target_pairs_of(model))
            intervention = make()
            sync(args.device)
            t0 = time.perf_counter()
            outcome = intervention.apply(target, probe_forward(model, batch))
            if outcome.rebuilt:
                model.invalidate_graphs()
            sync(args.device)
            times.append(1e3 * (time.perf_counter() - t0))
            t0 = time.perf_counter()
            model._update_fn(batch)
            sync(args.device)
            update_after.append(1e3 * (time.perf_counter() - t0))
        results[f"{name}_ms"] = round(statistics.median(times), 3)
        results[f"{name}_next_update_ms"] = round(statistics.median(update_after), 3)
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
