"""The SB3 adapter: callbacks that drive the library (monitor, replay-ratio controller, run log) inside
``model.learn`` of any SB3 algorithm.

This is the only library module that imports stable-baselines3. The callbacks know four algorithm families by their
policies: off-policy actor-critic (``SAC``, ``TD3``, ``DDPG``; ``DrQ`` with its separate ``encoder``), ``DQN``
(``q_net``), and on-policy actor-critic (``PPO``, ``A2C``: an ``ActorCriticPolicy``). Each family has named module
groups (``available_groups``), default groups, and a forward pass for the probe (``probe_forward``); any other module
is named by its dotted path from the model. ``ReplayRatioCallback`` needs an off-policy algorithm (``OffPolicyAgent``);
``DrQ`` also offers ``TrainStatsAgent`` (per-update statistics and the critic FAU of every training batch, read
without a host sync per update); stock SB3 agents are probed instead.

What the callbacks log goes to the model's SB3 logger (``model.logger``: SB3 writes it at its own dumps, so
``progress.csv``, TensorBoard and SB3's W&B integration see it) and, when one is given, to a ``RunLogger``.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable
from weakref import WeakKeyDictionary

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn
from tqdm import tqdm

from plasticrl.interventions.base import Target
from plasticrl.monitor import PlasticityMonitor
from plasticrl.replay_ratio import ReplayRatioController
from plasticrl.runlog import RunLogger

# A group: a name of ``available_groups``, a dotted module path from the model, a module, or a list of paths (one
# group of several modules, named by their paths).
GroupSpec = str | nn.Module | Sequence[str]
Groups = Mapping[str, GroupSpec] | Sequence[str]


@runtime_checkable
class OffPolicyAgent(Protocol):
    """What ``ReplayRatioCallback`` uses of an SB3 off-policy algorithm (``SAC``, ``TD3``, ``DDPG``, ``DQN``,
    ``DrQ``, ...): its policy, its replay buffer (``sample(batch_size)`` with ``observations`` and ``actions``;
    ``size()``), the updates per ``train()`` call that the callback sets, ``train_freq`` (must be 1 step), the
    warm-up (SB3 trains only once ``num_timesteps > learning_starts``) and the env-step counter."""

    policy: Any
    replay_buffer: Any
    gradient_steps: int
    train_freq: Any
    learning_starts: int
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
# SB3's stdout table (HumanOutputFormat) truncates keys to 36 characters, after replacing the ``<tag>/`` prefix by a
# 3-space indent, and raises on two keys truncated alike; longer keys, and per-layer keys, stay out of it.
_STDOUT_KEY_CHARS = 33
_NOT_STDOUT = ("stdout", "log")
_TENSORBOARD_ONLY = ("stdout", "log", "json", "csv")


def _family(model: BaseAlgorithm) -> str:
    """``on_policy`` (PPO, A2C), ``dqn`` (a policy with ``q_net``), ``drq`` (a policy with ``encoder``) or
    ``off_policy`` (SAC, TD3, DDPG: ``actor`` and ``critic``)."""
    policy = model.policy
    if isinstance(model, OnPolicyAlgorithm) or isinstance(policy, ActorCriticPolicy):
        return "on_policy"
    if hasattr(policy, "q_net"):
        return "dqn"
    return "drq" if hasattr(policy, "encoder") else "off_policy"


def _has_parameters(module: nn.Module | None) -> bool:
    return module is not None and next(module.parameters(), None) is not None


def _lookup(root: Any, path: str) -> Any:
    """``root.a.b.c`` for ``path="a.b.c"`` (``"0"`` indexes an ``nn.Sequential``); AttributeError names the part."""
    obj = root
    for part in path.split("."):
        if not hasattr(obj, part):
            children = [n for n, _ in obj.named_children()] if isinstance(obj, nn.Module) else []
            raise AttributeError(f"{type(obj).__name__} has no {part!r}"
                                 + (f" (its modules: {', '.join(children)})" if children else ""))
        obj = getattr(obj, part)
    return obj


def module_at(model: BaseAlgorithm, path: str) -> nn.Module:
    """The module at dotted ``path`` from the model (``"policy.q_net"``, ``"q_net"``, ``"policy.actor.latent_pi"``)
    or, when the model has no attribute of the path's first name, from ``model.policy``
    (``"mlp_extractor.policy_net"``). AttributeError if there is none."""
    root = model if hasattr(model, path.split(".")[0]) else model.policy
    found = _lookup(root, path)
    if not isinstance(found, nn.Module):
        raise AttributeError(f"{path!r} is a {type(found).__name__}, not an nn.Module")
    return found


class _Chain(nn.Module):
    """Modules applied one after another (``x -> m_1(x) -> m_2(...)``), registered under their dotted paths from
    ``root`` (nested containers, no copies), so that a group's layer names are those paths and its features those of
    the whole chain (the input of its last Linear): PPO/A2C's ``mlp_extractor.policy_net`` then ``action_net``."""

    def __init__(self, root: nn.Module, paths: Sequence[str]):
        super().__init__()
        self.paths = list(paths)
        for path in self.paths:
            node: nn.Module = self
            *parents, leaf = path.split(".")
            for part in parents:
                if part not in node._modules:
                    node.add_module(part, nn.Module())
                node = node._modules[part]
            node.add_module(leaf, _lookup(root, path))

    def forward(self, x: Any) -> Any:
        for path in self.paths:
            x = _lookup(self, path)(x)
        return x


# The actor and critic chains of each on-policy policy, built once: the probe runs the same objects the monitor hooks.
_CHAINS: WeakKeyDictionary[nn.Module, dict[str, _Chain]] = WeakKeyDictionary()


def _on_policy_chains(policy: ActorCriticPolicy) -> dict[str, _Chain]:
    if policy not in _CHAINS:
        _CHAINS[policy] = {"actor": _Chain(policy, ["mlp_extractor.policy_net", "action_net"]),
                           "critic": _Chain(policy, ["mlp_extractor.value_net", "value_net"])}
    return _CHAINS[policy]


def _members(model: BaseAlgorithm, paths: Sequence[str]) -> dict[str, nn.Module]:
    """A dict group of the modules at ``paths``, each named by its last path component (by its whole path, dots as
    underscores, where two share one)."""
    last = [path.split(".")[-1] for path in paths]
    return {(name if last.count(name) == 1 else path.replace(".", "_")): module_at(model, path)
            for name, path in zip(last, paths)}


def available_groups(model: BaseAlgorithm) -> dict[str, nn.Module]:
    """The named module groups of the model's family (absent modules left out):

    - off-policy actor-critic (SAC, TD3, DDPG): ``actor``, ``critic``, ``critic_target``, ``actor_target`` (TD3,
      DDPG) and ``encoder`` (the actor's features extractor, part of ``actor``);
    - DrQ: ``encoder`` (its shared encoder, apart from ``actor`` and ``critic``), ``actor``, ``critic``,
      ``critic_target``;
    - DQN: ``q_net``, ``q_net_target`` and ``encoder`` (the Q-net's features extractor, part of ``q_net``);
    - PPO, A2C: ``actor`` (``mlp_extractor.policy_net`` and the ``action_net`` head), ``critic``
      (``mlp_extractor.value_net`` and the ``value_net`` head), ``encoder`` (the shared features extractor).
    """
    policy, family = model.policy, _family(model)
    if family == "on_policy":
        found: dict[str, Any] = {
            "encoder": policy.features_extractor if policy.share_features_extractor else None,
            **_on_policy_chains(policy),
        }
    elif family == "dqn":
        found = {"encoder": getattr(policy.q_net, "features_extractor", None), "q_net": policy.q_net,
                 "q_net_target": getattr(policy, "q_net_target", None)}
    else:
        actor = getattr(policy, "actor", None)
        encoder = getattr(policy, "encoder", None)
        found = {"encoder": encoder if encoder is not None else getattr(actor, "features_extractor", None),
                 "actor": actor, "critic": getattr(policy, "critic", None),
                 "critic_target": getattr(policy, "critic_target", None),
                 "actor_target": getattr(policy, "actor_target", None)}
    return {name: module for name, module in found.items() if isinstance(module, nn.Module)}


def default_group_names(model: BaseAlgorithm) -> list[str]:
    """Groups probed when none are given: ``actor`` and ``critic`` (SAC, TD3, DDPG, PPO, A2C), ``q_net`` (DQN), and
    ``encoder`` first where it is a module of its own with parameters (DrQ; PPO/A2C with a CNN)."""
    family = _family(model)
    if family == "dqn":
        return ["q_net"]
    names = ["actor", "critic"]
    separate_encoder = family in ("drq", "on_policy")
    if separate_encoder and _has_parameters(available_groups(model).get("encoder")):
        names.insert(0, "encoder")
    return names


def resolve_groups(model: BaseAlgorithm, groups: Groups | None = None) -> dict[str, nn.Module | dict[str, nn.Module]]:
    """Module groups for ``PlasticityMonitor``: ``None`` -> ``default_group_names``; a list of names; or a dict
    ``{name: spec}`` whose spec is a name of ``available_groups``, a dotted module path from the model (see
    ``module_at``), an ``nn.Module``, or a list of paths (one dict group, its members named by their paths' last
    component). ValueError names what is available."""
    available = available_groups(model)
    if groups is None:
        groups = default_group_names(model)
    elif isinstance(groups, str):
        groups = [groups]
    items = list(groups.items()) if isinstance(groups, Mapping) else [(name, name) for name in groups]
    resolved: dict[str, nn.Module | dict[str, nn.Module]] = {}
    for name, spec in items:
        try:
            if isinstance(spec, nn.Module):
                resolved[name] = spec
            elif isinstance(spec, str):
                resolved[name] = available[spec] if spec in available else module_at(model, spec)
            else:
                resolved[name] = _members(model, list(spec))
        except AttributeError as exc:
            paths = ", ".join(f"policy.{child}" for child, _ in model.policy.named_children())
            raise ValueError(f"monitor group {name!r}: {type(model).__name__} has no module {spec!r} ({exc}); its "
                             f"groups: {', '.join(available) or 'none'}; or name a module by its path from the model, "
                             f"as in groups={{{name!r}: 'policy.<module>'}} (its policy's modules: {paths})") from None
    return resolved


def default_groups(model: BaseAlgorithm, names: Sequence[str] | None = None
                   ) -> dict[str, nn.Module | dict[str, nn.Module]]:
    """``resolve_groups(model, names)``: the groups of ``names`` (names or module paths; ``None``: the defaults)."""
    return resolve_groups(model, None if names is None else list(names))


class ObservationBatch(NamedTuple):
    """A probe batch of observations only (PPO/A2C: drawn from the rollout buffer)."""

    observations: torch.Tensor | dict[str, torch.Tensor]


def probe_forward(model: BaseAlgorithm, batch: Any) -> Callable[[], None]:
    """A forward pass of every network of the model's family on a batch (``batch.observations``; off-policy
    actor-critic also ``batch.actions``): DrQ's (DrQV2's) encoder -> actor networks and critic (and target);
    SAC/TD3/DDPG actor, critic and their targets; DQN ``q_net`` and ``q_net_target``; PPO/A2C features ->
    ``mlp_extractor`` -> action and value heads (no action sampled)."""
    policy, family = model.policy, _family(model)
    obs = batch.observations

    def forward() -> None:
        if family == "on_policy":  # the policy's forward up to its heads, through the chains the groups hold
            chains = _on_policy_chains(policy)
            features = policy.extract_features(obs)
            pi, vf = (features, features) if policy.share_features_extractor else features
            chains["actor"](pi)
            chains["critic"](vf)
        elif family == "dqn":
            policy.q_net(obs)
            if getattr(policy, "q_net_target", None) is not None:
                policy.q_net_target(obs)
        elif family == "drq":
            h = policy.encoder(obs)
            policy.actor(h)  # the actor's networks, no action sampled (DrQ, DrQV2)
            policy.critic(h, batch.actions)
            policy.critic_target(h, batch.actions)
        else:  # stock SB3 SAC/TD3/DDPG-style policies
            policy.actor(obs)
            policy.critic(obs, batch.actions)
            if getattr(policy, "critic_target", None) is not None:
                policy.critic_target(obs, batch.actions)
            if getattr(policy, "actor_target", None) is not None:
                policy.actor_target(obs)

    return forward


def replay_batch(model: BaseAlgorithm, batch_size: int) -> Any:
    """A batch of ``batch_size`` transitions from the model's replay buffer (normalised like SB3's training
    batches under ``VecNormalize``), or None while it holds fewer than 2."""
    buffer = getattr(model, "replay_buffer", None)
    if buffer is None or buffer.size() < 2:
        return None
    return buffer.sample(batch_size, env=getattr(model, "_vec_normalize_env", None))


def rollout_batch(model: BaseAlgorithm, batch_size: int) -> ObservationBatch | None:
    """``batch_size`` observations drawn (with replacement) from those stored so far in the model's rollout buffer
    (PPO/A2C), or None while it holds fewer than 2. Call it before ``train()`` empties the buffer (at a rollout's
    end at the latest)."""
    buffer = model.rollout_buffer
    steps = buffer.buffer_size if buffer.full else buffer.pos
    rows = steps * buffer.n_envs
    if rows < 2:
        return None
    index = np.random.randint(0, rows, size=batch_size)

    def take(array: np.ndarray) -> torch.Tensor:
        return buffer.to_torch(array[:steps].reshape(rows, *array.shape[2:])[index])

    obs = buffer.observations
    return ObservationBatch({k: take(v) for k, v in obs.items()} if isinstance(obs, dict) else take(obs))


def _stdout_exclude(key: str) -> tuple[str, ...] | None:
    """Per-layer keys (``plasticity/<group>/<layer>/<metric>``) and keys too long for SB3's stdout table."""
    tag = key[: key.find("/") + 1] if key.find("/") > 0 else ""
    too_long = len(key) - len(tag) > _STDOUT_KEY_CHARS
    return _NOT_STDOUT if too_long or (key.startswith("plasticity/") and key.count("/") >= 3) else None


class _LoggingCallback(BaseCallback):
    """A callback whose records go to SB3's logger (``sb3_logger=True``) and to ``run_logger`` when given."""

    def __init__(self, run_logger: RunLogger | None, sb3_logger: bool):
        super().__init__()
        self.run_logger, self.sb3_logger = run_logger, sb3_logger

    def _log(self, record: dict[str, Any], run_log_only: Mapping[str, Any] | None = None) -> None:
        """``record`` to both sinks, ``run_log_only`` (values SB3's logger holds already) to the run log."""
        if self.sb3_logger:
            for key, value in record.items():
                self.logger.record(key, value, exclude=_stdout_exclude(key))
        if self.run_logger is not None:
            self.run_logger.log({**record, **(run_log_only or {})}, self.num_timesteps)


class _EveryN:
    """True once each time ``num_timesteps`` crosses a multiple of ``every`` (works with n_envs > 1)."""

    def __init__(self, every: int):
        self.every, self.last = int(every), 0

    def __call__(self, num_timesteps: int) -> bool:
        if self.every > 0 and num_timesteps // self.every > self.last // self.every:
            self.last = num_timesteps
            return True
        return False


class EpisodeLogCallback(_LoggingCallback):
    """Logs finished episodes (return, length; the mean when several end in one vector step), the agent's update
    statistics since the last record (stock SB3 agents: its latest ``train()`` call's, which SB3's logger holds
    already), and fps (agent steps per second); prints a line.

    :param run_logger: also log to this run log.
    :param print_episodes: print a line per record.
    :param sb3_logger: record into ``model.logger`` (SB3 writes it at its next dump).
    """

    def __init__(self, run_logger: RunLogger | None = None, print_episodes: bool = True, sb3_logger: bool = True):
        super().__init__(run_logger, sb3_logger)
        self.print_episodes = print_episodes
        self.episodes = 0
        self._t0 = time.time()
        self._steps0 = 0

    def _on_training_start(self) -> None:
        self._t0, self._steps0 = time.time(), self.num_timesteps

    def _on_rollout_start(self) -> None:
        if not isinstance(self.model, TrainStatsAgent):  # after each train(), before the next action is drawn from
            self._sb3_train_values()  # weights a non-finite loss has made NaN (torch would raise a bare ValueError)

    def _sb3_train_values(self) -> dict[str, float]:
        """A stock SB3 agent's latest train() values in SB3's logger; FloatingPointError when one is not finite (as
        DrQ's ``pop_train_stats``)."""
        values = self.model.logger.name_to_value
        sb3_train = {k: float(values[k]) for k in SB3_TRAIN_KEYS if k in values}
        bad = [k.split("/")[-1] for k, v in sb3_train.items() if not np.isfinite(v)]
        if bad:
            raise FloatingPointError(
                f"non-finite {', '.join(bad)} at update {getattr(self.model, '_n_updates', 0)} (env step "
                f"{self.num_timesteps}): training diverged. Checkpoints and logs written so far are kept. Try a "
                "lower agent.learning_rate, a smaller replay ratio, or check the env's rewards for NaN/inf.")
        return sb3_train

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
        sb3_train: dict[str, float] = {}
        if isinstance(self.model, TrainStatsAgent):
            record.update({f"train/{k}": v for k, v in self.model.pop_train_stats().items()})
        else:  # stock SB3 agents: the latest train() call's values in SB3's logger
            sb3_train = self._sb3_train_values()
        self._log(record, run_log_only=sb3_train)
        if self.print_episodes:
            ended = f"{len(finished)} episodes" if len(finished) > 1 else f"episode {self.episodes:>5d}"
            tqdm.write(f"step {self.num_timesteps:>9,d}  {ended}  return {record['train/episode_return']:9.2f}  "
                       f"fps {record['train/fps']:7.1f}")
        return True

    def state_dict(self) -> dict[str, Any]:
        """The episode count, for a resumed run."""
        return {"episodes": self.episodes}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.episodes = int(state["episodes"])


class PlasticityCallback(_LoggingCallback):
    """Every ``every`` env steps: a fixed-size probe batch through ``PlasticityMonitor``, logged as
    ``plasticity/<group>/...``. The batch comes from the replay buffer (off-policy) or, for PPO/A2C, from the
    rollout buffer: observations of the last complete rollout (of the current one before the first ends).

    :param run_logger: also log to this run log.
    :param every: probe interval in env steps (transitions over all envs).
    :param batch_size: probe batch size.
    :param groups: ``None`` (the algorithm's defaults, see ``default_group_names``), a list of group names or module
        paths, or a dict ``{name: name, path, module or list of paths}``, e.g. ``{"q": "q_net"}`` for DQN (see
        ``resolve_groups``). A path must name a module that the family's probe forward runs (``probe_forward``).
    :param histograms_every: also log per-unit dormancy histograms every K probes (0: never); in SB3's logger they
        go to TensorBoard only.
    :param sb3_logger: record into ``model.logger`` (SB3 writes it at its next dump; per-layer keys stay out of its
        stdout table).
    """

    def __init__(self, run_logger: RunLogger | None = None, every: int = 10_000, batch_size: int = 256,
                 tau: float = 0.025, delta: float = 0.01, groups: Groups | None = None, histograms_every: int = 0,
                 sb3_logger: bool = True):
        super().__init__(run_logger, sb3_logger)
        self.every, self.batch_size = every, batch_size
        self.tau, self.delta, self.groups = tau, delta, groups
        self.histograms_every = histograms_every
        self.monitor: PlasticityMonitor | None = None
        self.probes = 0
        self.history: list[tuple[int, dict[str, float]]] = []
        self._due = _EveryN(every)
        self._last_rollout: ObservationBatch | None = None

    def _init_callback(self) -> None:  # at learn()'s start: a wrong group fails before any env step
        self.monitor = PlasticityMonitor(resolve_groups(self.model, self.groups), tau=self.tau, delta=self.delta,
                                         histograms=self.histograms_every > 0)

    def _on_step(self) -> bool:
        if self._due(self.num_timesteps):
            self.probe()
        return True

    def _on_rollout_end(self) -> None:
        if isinstance(self.model, OnPolicyAlgorithm):  # before train() empties the rollout buffer
            self._last_rollout = rollout_batch(self.model, self.batch_size)

    def probe(self) -> dict[str, float]:
        """Runs one probe now and logs it; returns the metric dict ({} while the buffer holds fewer than 2)."""
        if isinstance(self.model, OnPolicyAlgorithm):
            batch = self._last_rollout if self._last_rollout is not None else rollout_batch(self.model,
                                                                                               self.batch_size)
        else:
            batch = replay_batch(self.model, self.batch_size)
        if batch is None:
            return {}
        assert self.monitor is not None
        metrics = self.monitor.probe(probe_forward(self.model, batch))
        self.probes += 1
        self.history.append((self.num_timesteps, metrics))
        self._log(metrics)
        hist = getattr(self.monitor, "last_histograms", None)
        if self.histograms_every and hist and self.probes % self.histograms_every == 0:
            values = {f"histograms/{k}": np.asarray(v) for k, v in hist.items()}
            if self.sb3_logger:
                for key, value in values.items():
                    self.logger.record(key, value, exclude=_TENSORBOARD_ONLY)
            if self.run_logger is not None:
                self.run_logger.log_histograms(values, self.num_timesteps)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """The probe clock, count and history, for a resumed run."""
        return {"last": self._due.last, "probes": self.probes, "history": list(self.history)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._due.last, self.probes = int(state["last"]), int(state["probes"])
        self.history = [(int(step), dict(metrics)) for step, metrics in state["history"]]


class ReplayRatioCallback(_LoggingCallback):
    """Lets a ``ReplayRatioController`` set SB3's ``gradient_steps`` before every ``train()`` of an off-policy
    algorithm (SAC, TD3, DDPG, DQN, DrQ; with ``train_freq=1``). On-policy algorithms (PPO, A2C) are refused: they
    update on each rollout, not from replay.

    Feeds the controller the critic FAU of each training batch (``model.critic_fau_log``, which DrQ fills) or, for an
    agent without one, a probe batch's FAU of ``fau_group`` through the monitor once per episode; ends episodes on
    ``dones``; after each vector step that SB3 trains after (``num_timesteps > learning_starts``) asks
    ``controller.step(new transitions)`` how many updates are due, and at ``_on_rollout_end`` sets
    ``model.gradient_steps`` to them, which SB3 applies to the next ``train()``. So the controller counts the updates
    SB3 performs: ``controller.updates == model._n_updates`` after ``learn``. The warm-up's transitions go to
    ``controller.skip`` (counted, no updates), so ``controller.env_step`` and ``switched_at`` are SB3's
    ``num_timesteps``.
    Replay ratio stays per transition with ``n_envs > 1`` (SB3 counts a vector step as n_envs transitions). Logs
    ``replay_ratio/*`` (``replay_ratio/updates``: updates performed once this vector step's ``train()`` has run) at
    episode ends.

    :param controller: the controller (``StaticReplayRatio``, ``AdaptiveReplayRatio``).
    :param run_logger: also log to this run log.
    :param probe_batch_size: probe batch size for agents without ``critic_fau_log``.
    :param fau_group: the group whose FAU the controller reads on a probe (a name or module path, see
        ``resolve_groups``); default ``critic``, for DQN ``q_net``.
    :param sb3_logger: record into ``model.logger`` (SB3 writes it at its next dump).
    """

    def __init__(self, controller: ReplayRatioController, run_logger: RunLogger | None = None,
                 probe_batch_size: int = 256, fau_group: str | None = None, sb3_logger: bool = True):
        super().__init__(run_logger, sb3_logger)
        self.controller = controller
        self.probe_batch_size = probe_batch_size
        self.fau_group = fau_group
        self._last_steps = 0
        self._due = 0  # updates due for the current rollout
        self._probe_monitor: PlasticityMonitor | None = None

    def _init_callback(self) -> None:
        name = type(self.model).__name__
        if isinstance(self.model, OnPolicyAlgorithm):
            raise TypeError(f"ReplayRatioCallback: {name} is on-policy (OnPolicyAlgorithm): it updates on each "
                            "rollout, not from a replay buffer, so a replay ratio does not apply; drop this callback "
                            f"(set {name}'s n_epochs and batch_size instead) or use an off-policy algorithm (SAC, TD3, "
                            "DQN)")
        if not hasattr(self.model, "train_freq") or not hasattr(self.model, "gradient_steps"):
            raise TypeError(f"ReplayRatioCallback: {name} has no train_freq/gradient_steps; it needs an SB3 "
                            "off-policy algorithm (OffPolicyAlgorithm: SAC, TD3, DDPG, DQN)")

    def _on_training_start(self) -> None:
        self._last_steps = self.num_timesteps
        tf = self.model.train_freq
        if tf.frequency != 1 or tf.unit.value != "step":
            raise ValueError("ReplayRatioCallback needs train_freq=1 (step): the controller decides the number of "
                             f"updates after every vector step; got {tf}")
        self.model.gradient_steps = 0
        if not isinstance(self.model, TrainStatsAgent):
            group = self.fau_group or ("q_net" if _family(self.model) == "dqn" else "critic")
            self._probe_monitor = PlasticityMonitor({"critic": resolve_groups(self.model, {group: group})[group]})

    def _on_step(self) -> bool:
        if isinstance(self.model, TrainStatsAgent):
            log = self.model.critic_fau_log
            while log:
                self.controller.observe(log.popleft())
        # Count this vector step's transitions before its episode ends, so a switch at an episode end is dated
        # at that episode's last env step and applies to the transitions after it. SB3 trains after this vector
        # step only if num_timesteps > learning_starts (OffPolicyAlgorithm.learn): transitions before that are
        # warm-up, with no updates.
        new = self.num_timesteps - self._last_steps
        self._last_steps = self.num_timesteps
        if self.num_timesteps > self.model.learning_starts:
            self._due += int(self.controller.step(new))
        else:
            self.controller.skip(new)
        n_done = sum(bool(d) for d in self.locals.get("dones", []))
        if n_done:
            if self._probe_monitor is not None:
                self._observe_probe()
            # Episodes of parallel envs that end in one vector step close one FAU window together.
            self.controller.end_episode(n_done)
            record: dict[str, Any] = dict(self.controller.log_dict())
            record["replay_ratio/updates"] = int(self.controller.updates)
            self._log(record)
        return True

    def _observe_probe(self) -> None:
        batch = replay_batch(self.model, self.probe_batch_size)
        if batch is None:
            return
        assert self._probe_monitor is not None
        metrics = self._probe_monitor.probe(probe_forward(self.model, batch))
        if "plasticity/critic/fau" in metrics:
            self.controller.observe(metrics["plasticity/critic/fau"])

    def _on_rollout_end(self) -> None:
        self.model.gradient_steps, self._due = self._due, 0

    def state_dict(self) -> dict[str, Any]:
        """The controller's state (``ReplayRatioController.state_dict``), for a resumed run."""
        return {"controller": self.controller.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])


def optimizers_of(model: BaseAlgorithm) -> list[torch.optim.Optimizer]:
    """Every optimizer of the model and its policy and its policy's modules (``actor.optimizer``,
    ``critic.optimizer``, ``ent_coef_optimizer``, ``policy.optimizer``), each once."""
    found: dict[int, torch.optim.Optimizer] = {}
    holders = [model, model.policy, *model.policy.modules()]
    for holder in holders:
        for value in vars(holder).values():
            if isinstance(value, torch.optim.Optimizer):
                found.setdefault(id(value), value)
    return list(found.values())


# (online, target) attribute pairs of SB3 policies whose target copies follow the online networks
_TARGET_PAIRS = (("critic", "critic_target"), ("actor", "actor_target"), ("q_net", "q_net_target"))


def target_pairs_of(model: BaseAlgorithm) -> list[tuple[nn.Module, nn.Module]]:
    """The policy's ``(online, target)`` module pairs: critic/critic_target (SAC, TD3, DDPG, DrQ), actor/actor_target
    (TD3, DDPG), q_net/q_net_target (DQN)."""
    policy = model.policy
    pairs = [(getattr(policy, a, None), getattr(policy, b, None)) for a, b in _TARGET_PAIRS]
    return [(a, b) for a, b in pairs if isinstance(a, nn.Module) and isinstance(b, nn.Module)]


class InterventionCallback(_LoggingCallback):
    """Applies scheduled interventions (``plasticrl.interventions``: reset, shrink & perturb, ReDo, plasticity
    injection) to groups of an SB3 algorithm (DrQ, DrQV2, stock SAC, TD3, DDPG, DQN) during ``learn``.

    After every vector step each ``ScheduledIntervention``'s schedule is asked whether it is due, given the env-step
    count and, when ``plasticity`` (the run's ``PlasticityCallback``, placed before this one in the callback list)
    probed in this step, that probe's metrics: a metric trigger is checked at each probe. A due intervention acts on
    a ``Target`` of its group (``resolve_groups``) with every optimizer of the model (only the changed entries' state
    is zeroed) and the policy's target networks (``target_pairs_of``: the changed entries are copied into them); ReDo
    scores units on a fresh replay batch of ``batch_size`` through the family's probe forward. Interventions write
    in place, so a captured CUDA graph of the update stays valid; one that rebuilds modules (injection) makes the
    model drop its graphs (``invalidate_graphs()``, DrQ and DrQV2).

    Logs ``intervention/<kind>/<group>/<key>`` (the mechanism's log, e.g. ``units_recycled``, ``layers_reset``) with
    ``intervention/<kind>/<group>/count`` (applications so far) at the step it fired; with ``probe_after`` and a
    ``plasticity`` callback, a probe right after the intervention, logged as usual (``plasticity/...``).

    :param interventions: the schedule (``plasticrl.interventions.ScheduledIntervention``, each an intervention, a
        group name or module path, and a ``Schedule``).
    :param plasticity: the run's monitor callback, for metric triggers and ``probe_after``.
    :param batch_size: the replay batch that ReDo scores units on.
    :param probe_after: probe the monitor again right after each intervention.
    """

    def __init__(self, interventions: Sequence[Any], run_logger: RunLogger | None = None,
                 plasticity: PlasticityCallback | None = None, batch_size: int = 256, probe_after: bool = True,
                 sb3_logger: bool = True):
        super().__init__(run_logger, sb3_logger)
        self.interventions = list(interventions)
        self.plasticity, self.batch_size, self.probe_after = plasticity, batch_size, probe_after
        self.groups: dict[str, Any] = {}
        self.counts: dict[tuple[str, str], int] = {}
        self.history: list[tuple[int, str, str, dict[str, float]]] = []  # (env step, kind, group, log)
        self._seen_probes = 0
        self._loaded: Mapping[str, Any] | None = None  # load_state_dict's, applied once the groups are bound

    def _init_callback(self) -> None:  # at learn()'s start: a wrong group fails before any env step
        names = sorted({item.group for item in self.interventions})
        self.groups = resolve_groups(self.model, {name: name for name in names})
        for item in self.interventions:  # shrink & perturb towards the initial weights snapshots them now
            item.bind(self.target(item.group))
        if self._loaded is not None:  # a resumed run: the schedules' firings and the initial-weights snapshots
            for item, item_state in zip(self.interventions, self._loaded["items"], strict=True):
                item.load_state_dict(item_state)
            self._loaded = None
        needs_metrics = [item for item in self.interventions if item.schedule.when is not None]
        if needs_metrics and self.plasticity is None:
            raise ValueError(f"InterventionCallback: {needs_metrics[0].intervention.kind} on "
                             f"{needs_metrics[0].group!r} fires on a monitored metric; pass plasticity= the run's "
                             "PlasticityCallback (listed before this callback)")

    def state_dict(self) -> dict[str, Any]:
        """Each scheduled intervention's state (``ScheduledIntervention.state_dict``), the counts and history."""
        return {"items": [item.state_dict() for item in self.interventions], "counts": dict(self.counts),
                "history": list(self.history), "seen_probes": self._seen_probes}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores ``state_dict``'s; the schedules' part is applied at ``learn``'s start, after binding."""
        if len(state["items"]) != len(self.interventions):
            raise ValueError(f"InterventionCallback.load_state_dict: {len(state['items'])} scheduled interventions "
                             f"saved, {len(self.interventions)} configured")
        self.counts = {tuple(k): int(v) for k, v in state["counts"].items()}
        self.history = list(state["history"])
        self._seen_probes = int(state["seen_probes"])
        self._loaded = state

    def _new_metrics(self) -> dict[str, float] | None:
        """The metrics of a probe made since the last call, or None."""
        if self.plasticity is None or self.plasticity.probes == self._seen_probes:
            return None
        self._seen_probes = self.plasticity.probes
        return self.plasticity.history[-1][1]

    def _on_step(self) -> bool:
        metrics = self._new_metrics()
        for item in self.interventions:
            if item.schedule.due(self.num_timesteps, metrics):
                self.apply(item)
        return True

    def target(self, group: str) -> Target:
        """The ``Target`` of a group of the model: its modules, every optimizer, the policy's target networks, and
        the model's layer init (``reinit_layer``, DrQ/DrQV2) where it has one."""
        return Target(self.groups[group], optimizers_of(self.model), target_pairs_of(self.model),
                      init_fn=getattr(self.model, "reinit_layer", None))

    def apply(self, item: Any) -> dict[str, float]:
        """Applies one scheduled intervention now and logs it; returns its log."""
        batch = replay_batch(self.model, self.batch_size)
        if batch is None and item.intervention.kind == "redo":  # no units to score yet
            tqdm.write(f"step {self.num_timesteps:>9,d}  redo on {item.group} skipped: the replay buffer holds fewer "
                       "than 2 transitions")
            return {}
        forward_fn = probe_forward(self.model, batch) if batch is not None else None
        outcome = item.intervention.apply(self.target(item.group), forward_fn)
        if outcome.rebuilt and hasattr(self.model, "invalidate_graphs"):
            self.model.invalidate_graphs()
        key = (item.intervention.kind, item.group)
        self.counts[key] = self.counts.get(key, 0) + 1
        prefix = f"intervention/{item.intervention.kind}/{item.group}"
        record = {f"{prefix}/{k}": float(v) for k, v in outcome.log.items()}
        record[f"{prefix}/count"] = self.counts[key]
        self.history.append((self.num_timesteps, *key, dict(outcome.log)))
        self._log(record)
        tqdm.write(f"step {self.num_timesteps:>9,d}  {item.intervention.kind} on {item.group}: "
                   + ", ".join(f"{k} {v:g}" for k, v in outcome.log.items() if "/" not in k))
        if self.probe_after and self.plasticity is not None:
            self.plasticity.probe()
            self._seen_probes = self.plasticity.probes  # a probe of our own is no trigger
        return record


class PeriodicEvalCallback(_LoggingCallback):
    """Every ``every`` env steps (and at the end of training): ``episodes`` deterministic episodes on ``eval_env``,
    logged as ``eval/return_mean``, ``eval/return_std``, ``eval/episodes`` (not SB3's ``EvalCallback``: no best-model
    saving, no early stop). ``run_logger`` and ``sb3_logger`` as for ``EpisodeLogCallback``."""

    def __init__(self, eval_env: Any, run_logger: RunLogger | None = None, every: int = 10_000, episodes: int = 10,
                 sb3_logger: bool = True):
        super().__init__(run_logger, sb3_logger)
        self.eval_env = eval_env
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
        self._log({"eval/return_mean": float(mean), "eval/return_std": float(std), "eval/episodes": self.episodes})
        tqdm.write(f"step {self.num_timesteps:>9,d}  eval return {mean:9.2f} +- {std:.2f} ({self.episodes} episodes)")
        return float(mean), float(std)

    def state_dict(self) -> dict[str, Any]:
        """The eval clock and results, for a resumed run."""
        return {"last": self._due.last, "results": list(self.results)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._due.last = int(state["last"])
        self.results = [(int(n), float(m), float(sd)) for n, m, sd in state["results"]]


# the attribute of a replay buffer saved with a checkpoint that holds the env step it was saved at: a resume uses the
# buffer only with the checkpoint of that step (a kill between the files of one save leaves them of different steps)
REPLAY_STEP = "plasticrl_saved_at_step"


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal (``signum``: SIGINT, SIGTERM) at a clean point between steps, after the
    ``interrupted`` checkpoint (``path``) was saved."""

    def __init__(self, signum: int, path: Path | None = None):
        super().__init__(signum)
        self.signum, self.path = signum, path


def atomic_write(path: str | Path, write: Callable[[Any], Any]) -> Path:
    """Writes ``path`` through ``write(file)`` on a temporary file in the same folder (``.<name>.tmp-<host>-<pid>``),
    synced and renamed into place once whole: a full disk or a kill mid-write never leaves a truncated file under the
    real name, and a previous file of that name stays until the new one is complete. On an error the temporary file
    is removed and the error raised."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, f"{path} not written ({exc.strerror or exc}); the files already in {path.parent} "
                      "are intact: free disk space there (or make it writable)") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_model(model: BaseAlgorithm, path: str | Path) -> Path:
    """``model.save`` (SB3's zip: parameters, optimizers, counters) written atomically (``atomic_write``)."""
    return atomic_write(path, model.save)


def save_torch(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` written atomically (``atomic_write``)."""
    return atomic_write(path, lambda file: torch.save(obj, file))


def state_path(checkpoint: str | Path) -> Path:
    """The full-state file beside a checkpoint: ``step_<N>.zip`` -> ``step_<N>.state.pt``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".state.pt")


def replay_path(checkpoint: str | Path) -> Path:
    """The replay buffer beside a checkpoint: ``step_<N>.zip`` -> ``step_<N>.replay.pkl``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".replay.pkl")


def step_checkpoints(folder: str | Path) -> list[Path]:
    """The ``step_<N>.zip`` files of a checkpoint folder, oldest (smallest N) first."""
    return [path for _, path in _step_files(folder) if path.is_file()]


def _step_files(folder: str | Path) -> list[tuple[int, Path]]:
    """(N, ``step_<N>.zip``) for every N that has a zip, state or replay file in ``folder`` (the zip may be missing:
    a save that failed part-way), smallest N first."""
    found = set()
    for path in Path(folder).glob("step_*"):
        number = path.name[len("step_"):].split(".", 1)[0]
        if number.isdigit():
            found.add((int(number), path.with_name(f"step_{number}.zip")))
    return sorted(found)


class PeriodicCheckpointCallback(BaseCallback):
    """Saves ``checkpoints/step_<N>.zip`` every ``every`` env steps (0: never; the CLI saves ``final.zip``) and,
    with ``on_save``, calls it after each save (the CLI redraws the run's PNG dashboard there).

    A checkpoint is taken at a clean point: at the start of the rollout after the step that crossed the multiple
    of ``every`` (its ``train()`` done), or at training's end. Every file is written atomically (``atomic_write``).
    With ``state_fn``, its dict (the run's other state: callbacks, controller, RNG) goes to ``step_<N>.state.pt``
    beside; with ``save_replay``, the replay buffer to ``step_<N>.replay.pkl``; ``keep`` > 0 keeps only the newest
    ``keep`` step checkpoints (with their files). ``request_stop(signum)`` (from a signal handler) makes the next
    clean point save ``interrupted.zip`` (and its state) and raise ``TrainingInterrupted``.
    """

    def __init__(self, folder: str | Path, every: int, on_save: Callable[[], Any] | None = None, keep: int = 0,
                 save_replay: bool = False, state_fn: Callable[[], dict[str, Any]] | None = None):
        super().__init__()
        self.folder, self._due, self.on_save = Path(folder), _EveryN(every), on_save
        self.keep, self.save_replay, self.state_fn = keep, save_replay, state_fn
        self.stop_signal: int | None = None

    def request_stop(self, signum: int) -> None:
        """Stop at the next clean point, saving ``interrupted.zip`` there (safe to call from a signal handler)."""
        self.stop_signal = signum

    def save(self, name: str) -> Path:
        """Saves ``<folder>/<name>.zip`` and, as configured, its state and replay files beside; returns the zip."""
        path = self.folder / f"{name}.zip"
        if self.save_replay and getattr(self.model, "replay_buffer", None) is not None:
            setattr(self.model.replay_buffer, REPLAY_STEP, self.num_timesteps)  # pickled with it, checked at resume
            atomic_write(replay_path(path), self.model.save_replay_buffer)
        if self.state_fn is not None:
            save_torch(self.state_fn(), state_path(path))
        save_model(self.model, path)  # last: a zip whose state file is missing is never the newest full state
        return path

    def _prune(self) -> None:
        if self.keep <= 0:
            return
        files = _step_files(self.folder)
        kept = [number for number, zip_path in files if zip_path.is_file()][-self.keep:]
        oldest_kept = kept[0] if kept else 0
        for number, old in files:  # older checkpoints, and the files of a save that failed
            if number < oldest_kept:
                for path in (old, state_path(old), replay_path(old)):
                    path.unlink(missing_ok=True)

    def _checkpoint(self) -> None:
        self.save(f"step_{self.num_timesteps}")
        self._prune()
        if self.on_save is not None:
            self.on_save()

    def _on_rollout_start(self) -> None:
        if self._due(self.num_timesteps):
            self._checkpoint()
        if self.stop_signal is not None:
            raise TrainingInterrupted(self.stop_signal, self.save("interrupted"))

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        if self._due(self.num_timesteps):
            self._checkpoint()

    def state_dict(self) -> dict[str, Any]:
        return {"last": self._due.last}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._due.last = int(state["last"])


__all__ = ["EpisodeLogCallback", "InterventionCallback", "ObservationBatch", "OffPolicyAgent",
           "PeriodicCheckpointCallback", "PeriodicEvalCallback", "PlasticityCallback", "ReplayRatioCallback",
           "TrainStatsAgent", "TrainingInterrupted", "atomic_write", "available_groups", "default_group_names",
           "default_groups", "module_at", "optimizers_of", "probe_forward", "replay_batch", "replay_path",
           "resolve_groups", "rollout_batch", "save_model", "save_torch", "state_path", "step_checkpoints",
           "target_pairs_of"]
