"""DrQ-v2 (Yarats et al. 2021) as SB3 classes: ``DrQV2Policy`` (encoder, deterministic actor, twin-Q critic and
target critic, with their optimizers, and acting) and ``DrQV2`` (the SB3 glue and the DDPG-style update).

DrQ-v2 as facebookresearch/drqv2 ``drqv2.py`` runs it (and the Adaptive-RR fork ``drqv2_adapt_rr.py``): the actor
gives tanh(mu); exploration adds truncated-normal noise whose std follows ``std_schedule`` in agent steps; the TD
target r + gamma^n min(Q'_1, Q'_2)(s', a') takes a' = actor(s') + noise clipped to ``stddev_clip``, from the online
actor (there is no target actor) on the target critic; the actor loss is -min(Q_1, Q_2) (no entropy term); the
target critic follows by Polyak averaging (``tau``) every update. Encoder, actor and critic start orthogonal with
zero biases (DrQ-v2's ``utils.weight_init``). The first ``num_expl_steps`` actions are uniform.

``DrQV2`` subclasses ``plasticrl.agents.drq.DrQ`` and shares its frame replay (n-step returns), random shift,
acceleration (compiled update, CUDA graphs), async env stepping, save/load and ``critic_fau_log``; it replaces the
policy and the update. Replay ratio = ``gradient_steps / (train_freq * n_envs)`` (DrQ-v2: 0.5). DrQ's remedies
against plasticity loss work here as there, all off by default: the policy's ``hidden_norm`` and ``activation``, and
``l2_init`` and ``nap`` in the update.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import Schedule

from plasticrl.agents.accel import GraphedUpdate
from plasticrl.agents.drq.algorithm import DrQ
from plasticrl.agents.drq.augment import random_shift
from plasticrl.agents.drq.networks import Critic, Encoder
from plasticrl.agents.drq.replay import PixelBatch
from plasticrl.agents.drqv2.networks import DeterministicActor
from plasticrl.agents.drqv2.schedule import StdSchedule, parse_std_schedule
from plasticrl.agents.init import INITS, orthogonal_init

STAT_KEYS = ("critic_loss", "actor_loss", "q", "actor_std", "critic_fau")


class DrQV2Policy(BasePolicy):
    """SB3 policy holding DrQ-v2's shared encoder, deterministic actor, critic and target critic.

    Optimizers: ``actor.optimizer`` (actor) and ``critic.optimizer`` (encoder + critic; DrQ-v2 has one Adam each for
    encoder and critic, the same steps). ``actor_std`` (0-dim buffer, on the policy's device) is the exploration
    std that ``DrQV2`` writes in place from its schedule; stochastic acting adds truncated-normal noise of that scale.

    :param feature_dim: trunk output width (DrQ-v2: 50).
    :param hidden_dim: actor and critic MLP width, 2 hidden layers (DrQ-v2: 1024).
    :param encoder_channels: channels of each of the 4 convolutions (DrQ-v2: 32).
    :param init: ``orthogonal`` (DrQ-v2's: orthogonal weights, gain 1 for Linear and sqrt(2) for Conv, zero
        biases) or ``default`` (PyTorch's own layer init), for encoder, actor and critic.
    :param hidden_norm: ``none`` (DrQ-v2) or ``layernorm``: a LayerNorm after each hidden Linear of the actor's and
        critic's MLPs (as ``DrQPolicy``).
    :param activation: ``relu`` (DrQ-v2) or ``crelu``: the MLPs' hidden activation (as ``DrQPolicy``).
    """

    def __init__(
        self,
        observation_space: spaces.Box,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        feature_dim: int = 50,
        hidden_dim: int = 1024,
        encoder_channels: int = 32,
        init: str = "orthogonal",
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        use_sde: bool = False,
        hidden_norm: str = "none",
        activation: str = "relu",
    ):
        if use_sde:
            raise ValueError("DrQV2Policy does not support gSDE (use_sde=True); exploration is DrQ-v2's scheduled "
                             "noise (std_schedule)")
        if init not in INITS:
            raise ValueError(f"init={init!r}: allowed are {', '.join(map(repr, INITS))}")
        super().__init__(observation_space, action_space, optimizer_class=optimizer_class,
                         optimizer_kwargs=optimizer_kwargs, normalize_images=False, squash_output=True)
        self.feature_dim, self.hidden_dim, self.encoder_channels = feature_dim, hidden_dim, encoder_channels
        self.init, self.hidden_norm, self.activation = init, hidden_norm, activation
        action_dim = int(action_space.shape[0])
        self.encoder = Encoder(observation_space.shape, encoder_channels)
        repr_dim = self.encoder.repr_dim
        self.actor = DeterministicActor(repr_dim, action_dim, feature_dim, hidden_dim, hidden_norm=hidden_norm,
                                        activation=activation)
        self.critic = Critic(repr_dim, action_dim, feature_dim, hidden_dim, hidden_norm=hidden_norm,
                             activation=activation)
        if init == "orthogonal":
            for net in (self.encoder, self.actor, self.critic):
                net.apply(orthogonal_init)
        self.critic_target = copy.deepcopy(self.critic)
        self.critic_target.requires_grad_(False)
        self.actor.optimizer = optimizer_class(self.actor.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)
        critic_params = list(self.encoder.parameters()) + list(self.critic.parameters())
        self.critic.optimizer = optimizer_class(critic_params, lr=lr_schedule(1), **self.optimizer_kwargs)
        self.register_buffer("actor_std", torch.ones(()))
        self.act_graphs: dict[tuple[Any, ...], GraphedUpdate] | None = None  # {} turns acting graphs on (CUDA)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(feature_dim=self.feature_dim, hidden_dim=self.hidden_dim, encoder_channels=self.encoder_channels,
                    init=self.init, hidden_norm=self.hidden_norm, activation=self.activation,
                    optimizer_class=self.optimizer_class, optimizer_kwargs=self.optimizer_kwargs)
        return data

    def forward(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        return self._predict(obs, deterministic)

    def _predict(self, observation: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Actions (B, A) for observations (B, k*3, H, W); with ``act_graphs`` on (CUDA with graphs) a replay of
        one CUDA graph per (batch shape, deterministic), which reads ``actor_std`` in place."""
        if self.act_graphs is None or not observation.is_cuda:
            return self._act(observation, deterministic)
        key = (tuple(observation.shape), deterministic)
        if key not in self.act_graphs:
            self.act_graphs[key] = GraphedUpdate(lambda batch: self._act(batch[0], deterministic))
        return self.act_graphs[key]((observation,))

    def _act(self, observation: torch.Tensor, deterministic: bool) -> torch.Tensor:
        """tanh(mu), or with noise (DrQ-v2's ``act``: a truncated-normal sample of std ``actor_std``, unclipped
        noise, clamped to [-1 + 1e-6, 1 - 1e-6])."""
        h = self.encoder(observation)
        return self.actor(h) if deterministic else self.actor.sample(h, self.actor_std)

    def set_training_mode(self, mode: bool) -> None:
        self.encoder.train(mode)
        self.actor.train(mode)
        self.critic.train(mode)
        self.training = mode


class DrQV2(DrQ):
    """DrQ-v2 agent (DDPG from pixels + random shift). Defaults are DrQ-v2's for its "medium" tasks
    (``cfgs/config.yaml``, ``cfgs/task/medium.yaml``).

    The std schedule counts agent steps (SB3's ``num_timesteps``: transitions over all envs; DrQ-v2's
    ``global_step`` with its one env). It is evaluated on the host at each env step and before each round of
    updates, and written in place into ``policy.actor_std``, which acting and the update read on the device (a
    captured CUDA graph stays valid). ``learning_starts`` only delays the updates; the uniform random actions are
    those of the first ``num_expl_steps`` agent steps (DrQ-v2 ties neither to the other).

    :param learning_starts: agent steps before the first update (DrQ-v2: 4000 seed frames = 2000 agent steps at
        action repeat 2).
    :param train_freq: with ``gradient_steps``, the replay ratio (DrQ-v2: one update every 2 agent steps).
    :param n_step: n-step return length (DrQ-v2: 3; 1 on walker tasks).
    :param std_schedule: exploration std in DrQ-v2's syntax (``plasticrl.agents.drqv2.schedule``), durations in
        agent steps: a number (a constant std) or ``"linear(init,final,duration)"``; drqv2's ``cfgs/task``: easy
        ``"linear(1.0,0.1,100000)"``, medium ``"linear(1.0,0.1,500000)"``, hard ``"linear(1.0,0.1,2000000)"``.
    :param stddev_clip: the clip of the noise of target and actor-loss actions (DrQ-v2: 0.3).
    :param num_expl_steps: agent steps of uniform random actions (DrQ-v2: 2000).
    :param tau: target critic Polyak rate per update (DrQ-v2: 0.01).
    :param l2_init: L2 towards the initial weights (Kumar et al. 2023), as ``DrQ``'s; 0 (DrQ-v2) turns it off.
    :param nap: Normalize-and-Project (Lyle et al. 2024), as ``DrQ``'s; False for DrQ-v2.

    The other arguments are ``DrQ``'s (``augment_pad``, ``buffer_device``, ``cuda_graph``, ``compile_update``,
    ``precision``, ``async_env_step``, ``fused_q_heads``) and SB3's.
    """

    policy_aliases = {"CnnPolicy": DrQV2Policy, "DrQV2Policy": DrQV2Policy}  # noqa: RUF012
    policy: DrQV2Policy
    stat_keys = STAT_KEYS  # DrQ's train, pop_train_stats (non-finite check) and dump_logs read them

    def __init__(
        self,
        policy: str | type[DrQV2Policy],
        env: Any,
        learning_rate: float | Schedule = 1e-4,
        buffer_size: int = 1_000_000,
        learning_starts: int = 2000,
        batch_size: int = 256,
        tau: float = 0.01,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 2,
        gradient_steps: int = 1,
        n_step: int = 3,
        std_schedule: str | float = "linear(1.0,0.1,500000)",
        stddev_clip: float = 0.3,
        num_expl_steps: int = 2000,
        augment_pad: int = 4,
        buffer_device: str = "auto",
        cuda_graph: bool | str = "auto",
        compile_update: bool | str = False,
        precision: str = "fp32",
        async_env_step: bool = False,
        fused_q_heads: bool = False,
        l2_init: float = 0.0,
        nap: bool = False,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
        **kwargs: Any,
    ):
        if "ent_coef" in kwargs or "target_entropy" in kwargs:
            raise TypeError("DrQV2 has no entropy term (ent_coef, target_entropy): exploration is std_schedule")
        if isinstance(stddev_clip, bool) or not isinstance(stddev_clip, (int, float)) or not stddev_clip >= 0:
            raise ValueError(f"stddev_clip={stddev_clip!r}: give a number >= 0 (DrQ-v2: 0.3)")
        if isinstance(num_expl_steps, bool) or not isinstance(num_expl_steps, int) or num_expl_steps < 0:
            raise ValueError(f"num_expl_steps={num_expl_steps!r}: give an int >= 0 of agent steps (DrQ-v2: 2000)")
        self.std_schedule = std_schedule
        self.std_at: StdSchedule = parse_std_schedule(std_schedule)
        self.stddev_clip = float(stddev_clip)
        self.num_expl_steps = num_expl_steps
        super().__init__(
            policy, env, learning_rate=learning_rate, buffer_size=buffer_size, learning_starts=learning_starts,
            batch_size=batch_size, tau=tau, gamma=gamma, train_freq=train_freq, gradient_steps=gradient_steps,
            n_step=n_step, ent_coef=0.0, augment_pad=augment_pad, buffer_device=buffer_device,
            cuda_graph=cuda_graph, compile_update=compile_update, precision=precision,
            async_env_step=async_env_step, fused_q_heads=fused_q_heads, l2_init=l2_init, nap=nap,
            policy_kwargs=policy_kwargs,
            verbose=verbose, seed=seed, device=device, _init_setup_model=_init_setup_model, **kwargs,
        )

    def _setup_model(self) -> None:
        super()._setup_model()
        self.set_actor_std()

    def set_actor_std(self) -> float:
        """Writes the scheduled std at the current agent step (``num_timesteps``) into ``policy.actor_std`` (in
        place, no host sync) and returns it."""
        std = self.std_at(self.num_timesteps)
        self.policy.actor_std.fill_(std)
        return std

    # ------------------------------------------------------------------ acting
    def _uniform_action(self, action_noise: Any, n_envs: int) -> tuple[np.ndarray, np.ndarray]:
        """(action, buffer action) drawn uniformly from the action space, as SB3's warm-up draws them."""
        unscaled = np.array([self.action_space.sample() for _ in range(n_envs)])
        scaled = self.policy.scale_action(unscaled)
        if action_noise is not None:
            scaled = np.clip(scaled + action_noise(), -1, 1)
        return self.policy.unscale_action(scaled), scaled

    def _sample_action(self, learning_starts: int, action_noise: Any = None,
                       n_envs: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Uniform for the first ``num_expl_steps`` agent steps, then the policy with the scheduled noise (SB3's
        warm-up by ``learning_starts`` is not used: DrQ-v2 acts by ``num_expl_steps`` alone)."""
        if self._prefetched is None:
            self.set_actor_std()
            if self.num_timesteps < self.num_expl_steps:
                return self._uniform_action(action_noise, n_envs)
        return super()._sample_action(0, action_noise, n_envs)

    def _queue_action(self) -> tuple[Callable[[], bool], Callable[[], tuple[np.ndarray, np.ndarray]]]:
        """DrQ's (the next actions queued on the device for async env stepping), uniform before
        ``num_expl_steps``."""
        self.set_actor_std()
        if self.num_timesteps < self.num_expl_steps:
            actions = self._uniform_action(self.action_noise, self.n_envs)
            return (lambda: True), (lambda: actions)
        return super()._queue_action()

    def train(self, gradient_steps: int, batch_size: int = 256) -> None:
        self.set_actor_std()  # the updates of this round read the std of this agent step
        super().train(gradient_steps, batch_size)

    # ------------------------------------------------------------------ the update
    def update(self, batch: PixelBatch, std: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One DrQ-v2 update (critic + encoder, actor, target) on one batch, with exploration std ``std`` (0-dim
        tensor on the training device; None: ``policy.actor_std``). With ``l2_init`` the losses include the penalty;
        with ``nap`` each optimizer step is followed by the projection (as in ``DrQ.update``).

        Returns 0-dim device tensors: critic_loss, actor_loss, q (mean Q_1 of the batch), actor_std, critic_fau
        (the active share of both Q heads' hidden ReLU outputs on this batch, Adaptive RR's signal).
        """
        std = self.policy.actor_std if std is None else std
        obs = random_shift(batch.observations, self.augment_pad)
        next_obs = random_shift(batch.next_observations, self.augment_pad)

        target_q = self.td_target(batch, next_obs, std)
        h = self.encoder(obs)
        q1, q2, critic_fau = self.critic.forward_with_fau(h, batch.actions)
        critic_loss = self._step("critic", F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q))

        h_actor = h.detach()
        action = self.actor.sample(h_actor, std, self.stddev_clip)
        aq1, aq2 = self._critic_for_actor(h_actor, action)
        actor_loss = self._step("actor", -torch.min(aq1, aq2).mean())

        with torch.no_grad():
            torch._foreach_lerp_(list(self.critic_target.parameters()), list(self.critic.parameters()), self.tau)
        return {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(), "q": q1.detach().mean(),
                "actor_std": std.detach().reshape(()), "critic_fau": critic_fau}

    @torch.no_grad()
    def td_target(self, batch: PixelBatch, next_obs: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """The n-step TD target r + gamma^n min(Q'_1, Q'_2)(s', a'), a' = actor(s') + noise of scale ``std``
        clipped to ``stddev_clip`` (the online actor; the target critic on the online encoder's features of the
        augmented next observations ``next_obs`` (B, C, H, W) uint8); returns (B, 1), no gradients."""
        h_next = self.encoder(next_obs)
        next_action = self.actor.sample(h_next, std, self.stddev_clip)
        tq1, tq2 = self.critic_target(h_next, next_action)
        return batch.rewards + batch.discounts * torch.min(tq1, tq2)

    def _update_vector(self, batch: PixelBatch) -> torch.Tensor:
        stats = self._update(batch, self.policy.actor_std)
        return torch.stack([stats[k].float().reshape(()) for k in self.stat_keys])
