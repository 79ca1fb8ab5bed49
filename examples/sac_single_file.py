"""A single-file SAC (in the style of CleanRL's scripts) with plasticrl's pieces plugged in: the Adaptive replay
ratio decides the updates per env step, ``plasticrl.capture`` measures the critic's FAU on every training batch
(its Q networks use functional ``F.relu``), ``PlasticityMonitor`` probes both Q networks and the actor, and
``RunLogger`` writes ``metrics.jsonl`` (and an offline W&B run with ``--wandb offline``), which ``plasticrl plot``
draws. With ``--redo-every N``, ReDo (``plasticrl.interventions``) recycles the Q networks' dormant units every N env
steps.

    python examples/sac_single_file.py --steps 20000 --out runs/sac_single_file/0
    plasticrl plot runs/sac_single_file/0
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from plasticrl.capture import capture
from plasticrl.interventions import ReDo, Target
from plasticrl.metrics import fau
from plasticrl.monitor import PlasticityMonitor
from plasticrl.replay_ratio import AdaptiveReplayRatio
from plasticrl.runlog import RunLogger


@dataclass
class Args:
    env_id: str = "Pendulum-v1"
    steps: int = 20_000  # env steps
    learning_starts: int = 1_000  # random actions, no updates
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005  # target Q Polyak rate
    lr: float = 3e-4
    hidden: int = 256
    check_every: int = 10  # episodes between Adaptive RR checks (Pendulum: 200 steps each)
    probe_every: int = 2_000  # env steps between monitor probes (0: never)
    redo_every: int = 0  # env steps between ReDo applications on the Q networks (0: never)
    seed: int = 0
    out: str = "runs/sac_single_file/0"
    wandb: str = "disabled"  # offline | online | disabled


class SoftQNetwork(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(obs_dim + act_dim, hidden), nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 1)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(torch.cat([obs, act], 1)))  # functional activations: capture sees them per call
        return self.fc3(F.relu(self.fc2(x)))


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy; actions in [-1, 1] (scaled to the env's bounds by the loop)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(obs_dim, hidden), nn.Linear(hidden, hidden)
        self.mean, self.log_std = nn.Linear(hidden, act_dim), nn.Linear(hidden, act_dim)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised action (B, A) and its log-probability (B, 1)."""
        x = F.relu(self.fc2(F.relu(self.fc1(obs))))
        mean, log_std = self.mean(x), torch.clamp(self.log_std(x), -5.0, 2.0)
        u = mean + log_std.exp() * torch.randn_like(mean)
        action = torch.tanh(u)
        normal = torch.distributions.Normal(mean, log_std.exp())
        log_prob = (normal.log_prob(u) - torch.log(1 - action.pow(2) + 1e-6)).sum(1, keepdim=True)
        return action, log_prob


def main(args: Args) -> dict:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    env = gym.make(args.env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    scale = torch.as_tensor(env.action_space.high, dtype=torch.float32)
    actor = Actor(obs_dim, act_dim, args.hidden)
    q1, q2 = SoftQNetwork(obs_dim, act_dim, args.hidden), SoftQNetwork(obs_dim, act_dim, args.hidden)
    q1_target, q2_target = SoftQNetwork(obs_dim, act_dim, args.hidden), SoftQNetwork(obs_dim, act_dim, args.hidden)
    q1_target.load_state_dict(q1.state_dict())
    q2_target.load_state_dict(q2.state_dict())
    q_opt = torch.optim.Adam([*q1.parameters(), *q2.parameters()], lr=args.lr)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=args.lr)
    log_alpha = torch.zeros(1, requires_grad=True)
    alpha_opt = torch.optim.Adam([log_alpha], lr=args.lr)
    target_entropy = -float(act_dim)
    buf = {k: np.zeros((args.steps, d), np.float32) for k, d in
           [("o", obs_dim), ("a", act_dim), ("r", 1), ("o2", obs_dim), ("d", 1)]}

    # ---- plasticrl ------------------------------------------------------------------------------------------
    controller = AdaptiveReplayRatio(low=0.5, high=2.0, check_every=args.check_every, unit="episodes")
    monitor = PlasticityMonitor({"actor": actor, "critic": [q1, q2]})
    redo = ReDo(tau=0.1)  # keeps the last dormant units, for dead_intersected_percent
    run_log = RunLogger(Path(args.out), vars(args), {"mode": args.wandb, "name": Path(args.out).name})
    # -----------------------------------------------------------------------------------------------------------

    obs, _ = env.reset(seed=args.seed)
    episode_return, n = 0.0, 0
    for t in range(args.steps):
        if t < args.learning_starts:
            action = rng.uniform(-1, 1, act_dim).astype(np.float32)
        else:
            with torch.no_grad():
                action = actor(torch.as_tensor(obs, dtype=torch.float32)[None])[0][0].numpy()
        obs2, reward, term, trunc, _ = env.step((torch.as_tensor(action) * scale).numpy())
        for k, v in zip(("o", "a", "r", "o2", "d"), (obs, action, [reward], obs2, [float(term)])):
            buf[k][n] = v
        n, obs, episode_return = n + 1, obs2, episode_return + float(reward)
        if t < args.learning_starts:
            controller.skip(1)  # a warm-up transition: counted, no updates owed
            due = 0
        else:
            due = controller.step(1)
        if term or trunc:
            controller.end_episode()  # every check_every episodes: has the critic's FAU settled? then RR 2
            run_log.log({"train/episode_return": episode_return, **controller.log_dict()}, t + 1)
            obs, _ = env.reset()
            episode_return = 0.0

        for _ in range(due):
            idx = rng.integers(0, n, args.batch_size)
            o, a, r, o2, d = (torch.as_tensor(buf[k][idx]) for k in ("o", "a", "r", "o2", "d"))
            alpha = log_alpha.exp().detach()
            with torch.no_grad():
                a2, logp2 = actor(o2)
                target = r + args.gamma * (1 - d) * (torch.min(q1_target(o2, a2), q2_target(o2, a2)) - alpha * logp2)
            with capture([q1, q2], clone=False) as acts:  # both Q networks' hidden ReLU outputs, this batch
                q_loss = F.mse_loss(q1(o, a), target) + F.mse_loss(q2(o, a), target)
            controller.observe(fau(acts.outputs(fau_only=True)))  # the Adaptive RR signal, no host sync
            q_opt.zero_grad()
            q_loss.backward()
            q_opt.step()

            pi, logp = actor(o)
            actor_loss = (alpha * logp - torch.min(q1(o, pi), q2(o, pi))).mean()
            actor_opt.zero_grad()
            actor_loss.backward()
            actor_opt.step()
            alpha_loss = -(log_alpha * (logp.detach() + target_entropy)).mean()
            alpha_opt.zero_grad()
            alpha_loss.backward()
            alpha_opt.step()
            with torch.no_grad():
                for net, tgt in ((q1, q1_target), (q2, q2_target)):
                    for p, tp in zip(net.parameters(), tgt.parameters()):
                        tp.lerp_(p, args.tau)

        if args.probe_every and (t + 1) % args.probe_every == 0 and n >= args.batch_size:
            o = torch.as_tensor(buf["o"][rng.integers(0, n, args.batch_size)])
            a = torch.as_tensor(buf["a"][rng.integers(0, n, args.batch_size)])
            run_log.log(monitor.probe(lambda o=o, a=a: (actor(o), q1(o, a), q2(o, a))), t + 1)
        if args.redo_every and (t + 1) % args.redo_every == 0 and n >= args.batch_size:
            o = torch.as_tensor(buf["o"][rng.integers(0, n, args.batch_size)])
            a = torch.as_tensor(buf["a"][rng.integers(0, n, args.batch_size)])
            critic = Target([q1, q2], optimizers=[q_opt], target_pairs=[(q1, q1_target), (q2, q2_target)])
            outcome = redo.apply(critic, lambda o=o, a=a: (q1(o, a), q2(o, a)))  # scores units on this batch
            run_log.log({f"intervention/redo/critic/{k}": v for k, v in outcome.log.items()}, t + 1)
    run_log.close()
    return {"controller": controller, "run_dir": Path(args.out)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in vars(Args()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    out = main(Args(**vars(parser.parse_args())))
    c = out["controller"]
    print(f"ratio {c.ratio}, switched at env step {c.switched_at}, updates {c.updates}; log: {out['run_dir']}")
