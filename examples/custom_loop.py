"""Adaptive replay ratio + plasticity monitor in a plain PyTorch agent (no SB3).

A small DDPG on gymnasium's Pendulum-v1: the critic's FAU on every training batch feeds ``AdaptiveReplayRatio``,
which decides how many updates each environment step gets; ``PlasticityMonitor`` probes the networks now and then.

    python examples/custom_loop.py --steps 20000
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from plasticrl.capture import capture
from plasticrl.metrics import fau
from plasticrl.monitor import PlasticityMonitor
from plasticrl.replay_ratio import AdaptiveReplayRatio


def mlp(i: int, o: int, h: int = 64, out: nn.Module | None = None) -> nn.Sequential:
    layers = [nn.Linear(i, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, o)]
    return nn.Sequential(*layers, *([out] if out is not None else []))


def run(steps: int = 20_000, check_every: int = 5, probe_every: int = 1000, seed: int = 0) -> dict:
    env = gym.make("Pendulum-v1")
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    torch.manual_seed(seed)
    actor, critic = mlp(obs_dim, act_dim, out=nn.Tanh()), mlp(obs_dim + act_dim, 1)
    critic_target = mlp(obs_dim + act_dim, 1)
    critic_target.load_state_dict(critic.state_dict())
    a_opt, c_opt = torch.optim.Adam(actor.parameters(), 1e-3), torch.optim.Adam(critic.parameters(), 1e-3)
    buf = {k: np.zeros((steps, d), np.float32) for k, d in
           [("o", obs_dim), ("a", act_dim), ("r", 1), ("o2", obs_dim), ("d", 1)]}

    # --- the plasticrl pieces --------------------------------------------------------------------------------
    controller = AdaptiveReplayRatio(low=0.5, high=2.0, check_every=check_every, unit="episodes")
    monitor = PlasticityMonitor({"actor": actor, "critic": critic})
    # ------------------------------------------------------------------------------------------------------------

    obs, _ = env.reset(seed=seed)
    probes, n = [], 0
    for t in range(steps):
        with torch.no_grad():
            act = actor(torch.as_tensor(obs)).numpy() + 0.1 * np.random.randn(act_dim)
        act = np.clip(act, -1, 1)
        obs2, rew, term, trunc, _ = env.step(2.0 * act)
        for k, v in zip(("o", "a", "r", "o2", "d"), (obs, act, [rew], obs2, [float(term)])):
            buf[k][n] = v
        n += 1
        obs = obs2
        due = controller.step(1)  # updates due now at the ratio in force (0.5: one every second step)
        if term or trunc:
            obs, _ = env.reset()
            controller.end_episode()  # every check_every episodes: compare critic FAU, maybe switch to high
        for _ in range(due if t >= 500 else 0):
            idx = np.random.randint(0, n, 128)
            o, a, r, o2, d = (torch.as_tensor(buf[k][idx]) for k in ("o", "a", "r", "o2", "d"))
            with torch.no_grad():
                y = r + 0.99 * (1 - d) * critic_target(torch.cat([o2, actor(o2)], 1))
            with capture(critic, clone=False) as acts:  # every activation call inside critic's forward
                q = critic(torch.cat([o, a], 1))
            controller.observe(fau(acts.outputs(fau_only=True)))  # critic FAU of this batch, pooled over layers
            c_opt.zero_grad()
            ((q - y) ** 2).mean().backward()
            c_opt.step()
            a_opt.zero_grad()
            (-critic(torch.cat([o, actor(o)], 1)).mean()).backward()
            a_opt.step()
            with torch.no_grad():
                for p, tp in zip(critic.parameters(), critic_target.parameters()):
                    tp.lerp_(p, 0.005)
        if (t + 1) % probe_every == 0 and n >= 256:
            o = torch.as_tensor(buf["o"][np.random.randint(0, n, 256)])
            probes.append(monitor.probe(lambda o=o: critic(torch.cat([o, actor(o)], 1))))
    return {"controller": controller, "probes": probes, "updates": controller.updates}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20_000)
    args = p.parse_args()
    out = run(args.steps)
    c = out["controller"]
    print(f"ratio {c.ratio}, switched at env step {c.switched_at}, updates {c.updates}")
    if out["probes"]:
        last = out["probes"][-1]
        print({k: round(v, 3) for k, v in last.items() if k.count("/") == 2})
