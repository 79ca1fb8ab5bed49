"""The SB3 adapter: callbacks that drive the library (monitor, replay-ratio controller, run log) inside
``model.learn`` of any SB3 off-policy algorithm.

This is the only library module that imports stable-baselines3. What the callbacks need from an agent is named by
``OffPolicyAgent``; ``DrQ`` also offers ``TrainStatsAgent`` (per-update statistics and the critic FAU of every
training batch, read without a host sync per update); stock SB3 agents are probed instead.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from torch import nn
from tqdm import tqdm

from plasticrl.monitor import PlasticityMonitor
from plasticrl.replay_ratio import ReplayRatioController
from plasticrl.runlog import RunLogger

DEFAULT_GROUPS = ("encoder", "actor", "critic")


@runtime_checkable
class OffPolicyAgent(Protocol):
    """What the callbacks use of an SB3 off-policy algorithm (``SAC``, ``TD3``, ``DrQ``, ...): its policy (groups
    ``actor``, ``critic``, optionally ``critic_target`` and an ``encoder`` or features extractor), its replay buffer
    (``sample(batch_size)`` with ``observations`` and ``actions``; ``size()``), the updates per ``train()`` call
    that ``ReplayRatioCallback`` sets, ``train_freq`` (must be 1 step), and the env-step counter."""

    policy: Any
    replay_buffer: Any
    gradient_steps: int
    train_freq: Any
    num_timesteps: int


@runtime_checkable
class TrainStatsAgent(Protocol):
    """An agent that keeps its own update statistics on the device (``DrQ``): ``critic_fau_log`` holds the critic FAU
    (0-dim tensor) of each training batch, drained by ``ReplayRatioCallback``; ``pop_train_stats()`` returns the
    means of the update statistics since its last call (raises FloatingPointError on a non-finite loss)."""

    critic_fau_log: deque[torch.Tensor]

    def pop_train_stats(self) -> dict[str, float]: ...
# What stock SB3 SAC's train() records in its logger (means over that call's updates).
SB3_TRAIN_KEYS = ("train/actor_loss", "train/critic_loss", "train/ent_coef")


def default_groups(model: BaseAlgorithm, names: tuple[str, ...] | list[str] = DEFAULT_GROUPS) -> dict[str, nn.Module]:
    """Module groups of an SB3 off-policy agent: ``encoder`` (the features extractor, or DrQ's encoder),
    ``actor``, ``critic``, ``critic_target``."""
    policy = model.policy
    found: dict[str, Any] = {
        "encoder": getattr(policy, "encoder", None)
        or getattr(getattr(policy, "actor", None), "features_extractor", None),
        "actor": getattr(policy, "actor", None),
        "critic": getattr(policy, "critic", None),
        "critic_target": getattr(policy, "critic_target", None),
    }
    groups = {}
    for name in names:
        if found.get(name) is None:
            raise ValueError(f"monitor group {name!r}: {type(model).__name__} has no such module; "
                             f"available: {[k for k, v in found.items() if v is not None]}")
        groups[name] = found[name]
    return groups


def probe_forward(model: BaseAlgorithm, batch: Any) -> Callable[[], None]:
    """A forward pass of every group on a replay batch: DrQ's encoder -> actor and critic (and target)."""
    policy = model.policy

    def forward() -> None:
        obs, actions = batch.observations, batch.actions
        if hasattr(policy, "encoder"):
            h = policy.encoder(obs)
            policy.actor.action_log_prob(h)
            policy.critic(h, actions)
            policy.critic_target(h, actions)
        else:  # stock SB3 SAC/TD3-style policies
            policy.actor(obs)
            policy.critic(obs, actions)
            if hasattr(policy, "critic_target"):
                policy.critic_target(obs, actions)

    return forward


class _EveryN:
    """True once each time ``num_timesteps`` crosses a multiple of ``every`` (works with n_envs > 1)."""

    def __init__(self, every: int):
        self.every, self.last = int(every), 0

    def __call__(self, num_timesteps: int) -> bool:
        if self.every > 0 and num_timesteps // self.every > self.last // self.every:
            self.last = num_timesteps
            return True
        return False


class EpisodeLogCallback(BaseCallback):
    """Logs finished episodes (return, length; the mean when several end in one vector step), the agent's update
    statistics since the last record (stock SB3 agents: its latest ``train()`` call's), and fps (agent steps per
    second); prints a line."""

    def __init__(self, run_logger: RunLogger, print_episodes: bool = True):
        super().__init__()
        self.run_logger = run_logger
        self.print_episodes = print_episodes
        self.episodes = 0
        self._t0 = time.time()
        self._steps0 = 0

    def _on_training_start(self) -> None:
        self._t0, self._steps0 = time.time(), self.num_timesteps

    def _on_step(self) -> bool:
        finished = [info["episode"] for info in self.locals.get("infos", []) if info.get("episode") is not None]
        if not finished:
            return True
        # One record per vector step: with n_envs > 1 several episodes can end together; their mean is logged.
        self.episodes += len(finished)
        elapsed = max(time.time() - self._t0, 1e-9)
        record = {"train/episode_return": float(np.mean([e["r"] for e in finished])),
                  "train/episode_length": float(np.mean([e["l"] for e in finished])),
                  "train/episodes": self.episodes, "train/fps": (self.num_timesteps - self._steps0) / elapsed,
                  "train/updates": int(getattr(self.model, "_n_updates", 0))}
        if isinstance(self.model, TrainStatsAgent):
            record.update({f"train/{k}": v for k, v in self.model.pop_train_stats().items()})
        else:  # stock SB3 agents: the latest train() call's values in SB3's logger
            values = self.model.logger.name_to_value
            record.update({k: float(values[k]) for k in SB3_TRAIN_KEYS if k in values})
        self.run_logger.log(record, self.num_timesteps)
        if self.print_episodes:
            ended = f"{len(finished)} episodes" if len(finished) > 1 else f"episode {self.episodes:>5d}"
            tqdm.write(f"step {self.num_timesteps:>9,d}  {ended}  return {record['train/episode_return']:9.2f}  "
                       f"fps {record['train/fps']:7.1f}")
        return True


class PlasticityCallback(BaseCallback):
    """Every ``every`` env steps: a fixed-size probe batch from the replay buffer through ``PlasticityMonitor``.

    :param every: probe interval in env steps (transitions over all envs).
    :param batch_size: probe batch size.
    :param groups: group names (see ``default_groups``).
    :param histograms_every: also log per-unit dormancy histograms every K probes (0: never).
    """

    def __init__(self, run_logger: RunLogger | None = None, every: int = 10_000, batch_size: int = 256,
                 tau: float = 0.025, delta: float = 0.01, groups: tuple[str, ...] | list[str] = DEFAULT_GROUPS,
                 histograms_every: int = 0):
        super().__init__()
        self.run_logger = run_logger
        self.every, self.batch_size = every, batch_size
        self.tau, self.delta, self.group_names = tau, delta, list(groups)
        self.histograms_every = histograms_every
        self.monitor: PlasticityMonitor | None = None
        self.probes = 0
        self.history: list[tuple[int, dict[str, float]]] = []
        self._due = _EveryN(every)

    def _on_training_start(self) -> None:
        self.monitor = PlasticityMonitor(default_groups(self.model, self.group_names), tau=self.tau,
                                         delta=self.delta, histograms=self.histograms_every > 0)

    def _on_step(self) -> bool:
        if self._due(self.num_timesteps):
            self.probe()
        return True

    def probe(self) -> dict[str, float]:
        """Runs one probe now and logs it; returns the metric dict ({} while the buffer is too small)."""
        buffer = self.model.replay_buffer
        if buffer is None or buffer.size() < 2:
            return {}
        assert self.monitor is not None
        batch = buffer.sample(self.batch_size)
        metrics = self.monitor.probe(probe_forward(self.model, batch))
        self.probes += 1
        self.history.append((self.num_timesteps, metrics))
        if self.run_logger is not None:
            self.run_logger.log(metrics, self.num_timesteps)
            hist = getattr(self.monitor, "last_histograms", None)
            if self.histograms_every and hist and self.probes % self.histograms_every == 0:
                self.run_logger.log_histograms({f"histograms/{k}": np.asarray(v) for k, v in hist.items()},
                                               self.num_timesteps)
        return metrics


class ReplayRatioCallback(BaseCallback):
    """Lets a ``ReplayRatioController`` set SB3's ``gradient_steps`` before every ``train()``.

    Feeds the controller the critic FAU of each training batch (``model.critic_fau_log``, which DrQ fills) or, for an
    agent without one, a probe batch's critic FAU through the monitor once per episode; ends episodes on ``dones``;
    after each vector step asks ``controller.step(new transitions)`` how many updates are due, and at
    ``_on_rollout_end`` sets ``model.gradient_steps`` to them, which SB3 applies to the next ``train()``. Replay
    ratio stays per transition with ``n_envs > 1`` (SB3 counts a vector step as n_envs transitions). Logs
    ``replay_ratio/*`` at episode ends.
    """

    def __init__(self, controller: ReplayRatioController, run_logger: RunLogger | None = None,
                 probe_batch_size: int = 256):
        super().__init__()
        self.controller = controller
        self.run_logger = run_logger
        self.probe_batch_size = probe_batch_size
        self._last_steps = 0
        self._due = 0  # updates due for the current rollout
        self._probe_monitor: PlasticityMonitor | None = None

    def _on_training_start(self) -> None:
        self._last_steps = self.num_timesteps
        tf = self.model.train_freq
        if tf.frequency != 1 or tf.unit.value != "step":
            raise ValueError("ReplayRatioCallback needs train_freq=1 (step): the controller decides the number of "
                             f"updates after every vector step; got {tf}")
        self.model.gradient_steps = 0
        if not isinstance(self.model, TrainStatsAgent):
            self._probe_monitor = PlasticityMonitor(default_groups(self.model, ["critic"]))

    def _on_step(self) -> bool:
        if isinstance(self.model, TrainStatsAgent):
            log = self.model.critic_fau_log
            while log:
                self.controller.observe(log.popleft())
        # Count this vector step's transitions before its episode ends, so a switch at an episode end is dated
        # at that episode's last env step and applies to the transitions after it.
        new = self.num_timesteps - self._last_steps
        self._last_steps = self.num_timesteps
        self._due += int(self.controller.step(new))
        n_done = sum(bool(d) for d in self.locals.get("dones", []))
        if n_done:
            if self._probe_monitor is not None:
                self._observe_probe()
            # Episodes of parallel envs that end in one vector step close one FAU window together.
            self.controller.end_episode(n_done)
        if n_done and self.run_logger is not None:
            record = dict(self.controller.log_dict())
            record["replay_ratio/updates"] = int(getattr(self.model, "_n_updates", 0))
            self.run_logger.log(record, self.num_timesteps)
        return True

    def _observe_probe(self) -> None:
        buffer = self.model.replay_buffer
        if buffer is None or buffer.size() < 2:
            return
        batch = buffer.sample(self.probe_batch_size)
        assert self._probe_monitor is not None
        metrics = self._probe_monitor.probe(probe_forward(self.model, batch))
        if "plasticity/critic/fau" in metrics:
            self.controller.observe(metrics["plasticity/critic/fau"])

    def _on_rollout_end(self) -> None:
        self.model.gradient_steps, self._due = self._due, 0


class PeriodicEvalCallback(BaseCallback):
    """Every ``every`` env steps (and at the end of training): ``episodes`` deterministic episodes on ``eval_env``,
    logged to the run log as ``eval/return_mean``, ``eval/return_std`` (not SB3's ``EvalCallback``: no best-model
    saving, no early stop)."""

    def __init__(self, eval_env: Any, run_logger: RunLogger | None = None, every: int = 10_000, episodes: int = 10):
        super().__init__()
        self.eval_env, self.run_logger = eval_env, run_logger
        self.episodes = episodes
        self._due = _EveryN(every)
        self.results: list[tuple[int, float, float]] = []

    def _on_step(self) -> bool:
        if self._due(self.num_timesteps):
            self.evaluate()
        return True

    def _on_training_end(self) -> None:
        if not self.results or self.results[-1][0] != self.num_timesteps:
            self.evaluate()

    def evaluate(self) -> tuple[float, float]:
        mean, std = evaluate_policy(self.model, self.eval_env, n_eval_episodes=self.episodes, deterministic=True)
        self.results.append((self.num_timesteps, float(mean), float(std)))
        if self.run_logger is not None:
            self.run_logger.log({"eval/return_mean": float(mean), "eval/return_std": float(std),
                                 "eval/episodes": self.episodes}, self.num_timesteps)
        tqdm.write(f"step {self.num_timesteps:>9,d}  eval return {mean:9.2f} +- {std:.2f} ({self.episodes} episodes)")
        return float(mean), float(std)


class PeriodicCheckpointCallback(BaseCallback):
    """Saves ``checkpoints/step_<N>.zip`` every ``every`` env steps (0: never; the CLI saves ``final.zip``) and,
    with ``on_save``, calls it after each save (the CLI redraws the run's PNG dashboard there)."""

    def __init__(self, folder: str | Path, every: int, on_save: Callable[[], Any] | None = None):
        super().__init__()
        self.folder, self._due, self.on_save = Path(folder), _EveryN(every), on_save

    def _on_step(self) -> bool:
        if self._due(self.num_timesteps):
            self.model.save(self.folder / f"step_{self.num_timesteps}.zip")
            if self.on_save is not None:
                self.on_save()
        return True


__all__ = ["EpisodeLogCallback", "OffPolicyAgent", "PeriodicCheckpointCallback", "PeriodicEvalCallback",
           "PlasticityCallback", "ReplayRatioCallback", "TrainStatsAgent", "default_groups", "probe_forward"]

