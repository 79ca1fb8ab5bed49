"""DrQ as SB3 classes: ``DrQPolicy`` (the networks of ``plasticrl.agents.drq.networks`` with their optimizers, and
acting) and ``DrQ`` (soft actor-critic from pixels with random-shift augmentation: the SB3 glue and the update).

The encoder is trained by the critic loss only and is detached for the actor. Every sampled batch is augmented on
the training device (random shift, pad 4) for both ``obs`` and ``next_obs``. The learning rule is SAC (Haarnoja et
al. 2018) with a learned temperature, n-step returns (DrQ-v2 uses 3) and a target critic that reads the online
encoder's features (as DrQ-v2 does).

``DrQ`` is a ``stable_baselines3.SAC`` subclass, so ``learn``, ``save``, ``load``, ``predict``, callbacks and
``evaluate_policy`` work as in SB3. Replay ratio = ``gradient_steps / (train_freq * n_envs)``.

Remedies against plasticity loss, all off by default: the policy's ``hidden_norm``, ``activation`` and ``init``
(architecture and initialisation, ``DrQPolicy``), and DrQ's ``l2_init`` (L2 towards the initial weights, Kumar et al.
2023) and ``nap`` (Normalize-and-Project, Lyle et al. 2024), both inside the update (``plasticrl.interventions.
regularizers``).
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.save_util import load_from_pkl, load_from_zip_file, recursive_getattr
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from plasticrl.agents.accel import COMPILE_MODES, GraphedUpdate, compile_update, keep_own_optimizer_flags
from plasticrl.agents.drq.augment import random_shift
from plasticrl.agents.drq.networks import Actor, Critic, Encoder
from plasticrl.agents.drq.prefetch import PrefetchVecEnv
from plasticrl.agents.drq.replay import FrameReplayBuffer, PixelBatch
from plasticrl.agents.init import INITS, layer_init_fn, orthogonal_init
from plasticrl.interventions.regularizers import Anchors, l2_init_penalty, project_to_norms, weight_norms

STAT_KEYS = ("critic_loss", "actor_loss", "ent_coef", "ent_coef_loss", "critic_fau", "q")


class DrQPolicy(BasePolicy):
    """SB3 policy holding the shared encoder, actor, critic and target critic of DrQ.

    Optimizers: ``actor.optimizer`` (actor only) and ``critic.optimizer`` (encoder + critic), as SB3's SAC names them.

    :param hidden_norm: ``"none"`` (DrQ-v2) or ``"layernorm"``: a LayerNorm after each hidden Linear of the actor's and
        critic's MLPs, before the activation (Lyle et al. 2023, 2024).
    :param activation: ``"relu"`` (DrQ-v2) or ``"crelu"``: the MLPs' hidden activation; CReLU (Abbas et al. 2023)
        doubles the width the next Linear sees (``hidden_dim`` units, 2 x ``hidden_dim`` outputs).
    :param init: ``"default"`` (PyTorch's layer init) or ``"orthogonal"`` (DrQ-v2's ``weight_init``:
        ``plasticrl.agents.init.orthogonal_init``) for encoder, actor and critic; the target critic is a copy.
    """

    def __init__(
        self,
        observation_space: spaces.Box,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        feature_dim: int = 50,
        hidden_dim: int = 1024,
        encoder_channels: int = 32,
        log_std_bounds: tuple[float, float] = (-10.0, 2.0),
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        use_sde: bool = False,
        hidden_norm: str = "none",
        activation: str = "relu",
        init: str = "default",
    ):
        if use_sde:
            raise ValueError("DrQPolicy does not support gSDE (use_sde=True); use the default Gaussian exploration")
        if init not in INITS:
            raise ValueError(f"init={init!r}: allowed are {', '.join(map(repr, INITS))}")
        super().__init__(observation_space, action_space, optimizer_class=optimizer_class,
                         optimizer_kwargs=optimizer_kwargs, normalize_images=False, squash_output=True)
        self.feature_dim, self.hidden_dim = feature_dim, hidden_dim
        self.encoder_channels, self.log_std_bounds = encoder_channels, tuple(log_std_bounds)
        self.hidden_norm, self.activation, self.init = hidden_norm, activation, init
        action_dim = int(action_space.shape[0])
        self.encoder = Encoder(observation_space.shape, encoder_channels)
        repr_dim = self.encoder.repr_dim
        self.actor = Actor(repr_dim, action_dim, feature_dim, hidden_dim, self.log_std_bounds,
                           hidden_norm=hidden_norm, activation=activation)
        self.critic = Critic(repr_dim, action_dim, feature_dim, hidden_dim, hidden_norm=hidden_norm,
                             activation=activation)
        if init == "orthogonal":
            for module in (self.encoder, self.actor, self.critic):
                module.apply(orthogonal_init)
        self.critic_target = copy.deepcopy(self.critic)
        self.critic_target.requires_grad_(False)
        self.actor.optimizer = optimizer_class(self.actor.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)
        critic_params = list(self.encoder.parameters()) + list(self.critic.parameters())
        self.critic.optimizer = optimizer_class(critic_params, lr=lr_schedule(1), **self.optimizer_kwargs)
        self.act_graphs: dict[tuple[Any, ...], GraphedUpdate] | None = None  # {} turns acting graphs on (CUDA)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(feature_dim=self.feature_dim, hidden_dim=self.hidden_dim, encoder_channels=self.encoder_channels,
                    log_std_bounds=self.log_std_bounds, optimizer_class=self.optimizer_class,
                    optimizer_kwargs=self.optimizer_kwargs, hidden_norm=self.hidden_norm, activation=self.activation,
                    init=self.init)
        return data

    def forward(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        return self._predict(obs, deterministic)

    def _predict(self, observation: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Actions (B, A) for observations (B, k*3, H, W); with ``act_graphs`` on (DrQ on CUDA with graphs) a replay
        of one CUDA graph per (batch shape, deterministic): acting costs one launch instead of ~25."""
        if self.act_graphs is None or not observation.is_cuda:
            return self._act(observation, deterministic)
        key = (tuple(observation.shape), deterministic)
        if key not in self.act_graphs:
            self.act_graphs[key] = GraphedUpdate(lambda batch: self._act(batch[0], deterministic))
        return self.act_graphs[key]((observation,))

    def _act(self, observation: torch.Tensor, deterministic: bool) -> torch.Tensor:
        h = self.encoder(observation)
        return self.actor.mode(h) if deterministic else self.actor.action_log_prob(h)[0]

    def set_training_mode(self, mode: bool) -> None:
        self.encoder.train(mode)
        self.actor.train(mode)
        self.critic.train(mode)
        self.training = mode


class DrQ(SAC):
    """DrQ agent (SAC + random shift + DrQ-v2 networks). Defaults are DrQ-v2's: lr 1e-4, batch 256, buffer 1e6,
    4000 seed frames (2000 agent steps at action repeat 2), 3-step returns, target tau 0.01, update every second
    transition (replay ratio 0.5).

    On CUDA the update ``update`` runs wrapped by ``plasticrl.agents.accel``: compiled (``compile_update``, one of
    ``COMPILE_MODES``) and replayed as CUDA graphs (``cuda_graph``: "auto" with a constant learning rate). Building
    a DrQ sets no process-wide torch flag (cuDNN autotuning, TF32, dynamo's recompile limit are the caller's:
    ``plasticrl.lab.runtime.configure_torch``). ``seed=`` seeds the global RNGs of ``random``, NumPy and torch, as
    every SB3 algorithm does; with ``seed=None`` the initial weights come from fresh entropy and the global torch RNG
    is left as it was.

    :param l2_init: regenerative regularisation (Kumar et al. 2023): ``l2_init * sum ||theta - theta_0||^2`` added to
        the critic loss over the encoder's and critic's parameters and to the actor loss over the actor's, theta_0
        their values at construction (``policy.l2_anchors``, saved with the policy); 0 (default) turns it off. The
        reported ``critic_loss`` and ``actor_loss`` include it.
    :param nap: Normalize-and-Project (Lyle et al. 2024): a LayerNorm before each hidden activation of the actor's and
        critic's MLPs (sets ``policy_kwargs["hidden_norm"] = "layernorm"``) and, after every optimizer step, each
        weight matrix of a Linear/Conv2d of the encoder, actor and critic rescaled in place to its norm at
        construction (``policy.nap_norms``, saved with the policy). Biases and LayerNorm gains and offsets are left
        free; the target critic follows by its Polyak update, unprojected.
    """

    policy_aliases = {"CnnPolicy": DrQPolicy, "DrQPolicy": DrQPolicy}  # noqa: RUF012
    policy: DrQPolicy
    stat_keys: tuple[str, ...] = STAT_KEYS  # the update's statistics vector, in order (a subclass names its own)

    def __init__(
        self,
        policy: str | type[DrQPolicy],
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
        ent_coef: str | float = "auto_0.1",
        target_entropy: str | float = "auto",
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
        self.n_step = n_step
        self.augment_pad = augment_pad
        self.buffer_device = buffer_device
        self.cuda_graph = cuda_graph
        if compile_update not in COMPILE_MODES:
            raise ValueError(f"compile_update={compile_update!r}: allowed are {', '.join(map(repr, COMPILE_MODES))}")
        self.compile_update = compile_update  # True = "default"; a str is torch.compile's mode
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision={precision!r}: allowed are 'fp32' and 'bf16'")
        self.precision = precision
        self.async_env_step = async_env_step
        self.fused_q_heads = fused_q_heads  # the critics' two Q heads as batched matmuls (Critic.fused_heads)
        if isinstance(l2_init, bool) or not isinstance(l2_init, (int, float)) or not 0 <= l2_init < math.inf:
            raise ValueError(f"l2_init={l2_init!r}: give a coefficient >= 0 (0 turns the L2-to-init penalty off)")
        self.l2_init = float(l2_init)
        if not isinstance(nap, bool):
            raise TypeError(f"nap={nap!r}: give True or False")
        self.nap = nap
        if nap:
            policy_kwargs = dict(policy_kwargs or {})
            if policy_kwargs.setdefault("hidden_norm", "layernorm") != "layernorm":
                raise ValueError(f"nap=True puts a LayerNorm before each hidden activation, but policy_kwargs has "
                                 f"hidden_norm={policy_kwargs['hidden_norm']!r}; drop that key or set it to "
                                 "'layernorm'")
        # (parameters, initial values) of the L2-to-init penalty and (weights, initial norms) of NaP's projection,
        # per optimizer ("critic": encoder + critic, "actor"); built in _setup_model
        self._l2_pairs: dict[str, tuple[list[nn.Parameter], list[torch.Tensor]]] = {}
        self._nap_pairs: dict[str, tuple[list[nn.Parameter], list[torch.Tensor]]] = {}
        super().__init__(
            policy, env, learning_rate=learning_rate, buffer_size=buffer_size, learning_starts=learning_starts,
            batch_size=batch_size, tau=tau, gamma=gamma, train_freq=train_freq, gradient_steps=gradient_steps,
            replay_buffer_class=FrameReplayBuffer,
            replay_buffer_kwargs={"n_step": n_step, "gamma": gamma, "buffer_device": buffer_device},
            ent_coef=ent_coef, target_entropy=target_entropy, policy_kwargs=policy_kwargs, verbose=verbose,
            seed=seed, device=device, _init_setup_model=False, **kwargs,
        )
        self._stats_sum: torch.Tensor | None = None  # sum over updates of the STAT_KEYS vector, on the device
        self._train_count = 0
        # speed wraps the one update function (plasticrl.agents.accel): _update is DrQ.update, compiled on CUDA when
        # compile_update is on; _update_fn its stats vector on a given batch, a GraphedUpdate on CUDA with graphs
        self._update: Callable[[PixelBatch], dict[str, torch.Tensor]] = self.update
        self._update_fn: Callable[[PixelBatch], torch.Tensor] = self._update_vector
        self._step_graph: GraphedUpdate | None = None  # the graph train() replays: see _sample_and_update
        self._step_graph_key: tuple[int, int] | None = None  # (batch size, id of a GPU replay buffer or 0)
        self._prefetched: tuple[np.ndarray, np.ndarray] | None = None  # next (action, buffer action), env stepping
        # per-update critic FAU (0-dim, on device), drained by ReplayRatioCallback; bounded if nobody drains it
        self.critic_fau_log: deque[torch.Tensor] = deque(maxlen=100_000)
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        if self.seed is None:  # initial weights from fresh entropy, in a fork: the global torch RNG stays as it was
            with torch.random.fork_rng(devices=[]):
                fresh = torch.Generator()
                fresh.seed()
                torch.set_rng_state(fresh.get_state())
                super()._setup_model()
        else:  # SB3 seeds the global RNGs (random, NumPy, torch) with ``seed``, then initialises from them
            super()._setup_model()
        self._update, self._update_fn = self.update, self._update_vector
        self.policy.critic.fused_heads = self.policy.critic_target.fused_heads = self.fused_q_heads
        if self.async_env_step and self.env is not None and not isinstance(self.env, PrefetchVecEnv):
            self.env = PrefetchVecEnv(self.env)
        if self.device.type != "cuda":
            self._setup_regularisers()
            return
        # GPU: fused, graph-capturable Adam; NHWC convolutions; the update as one CUDA graph. Process-wide flags
        # (cuDNN autotuning, TF32, dynamo's recompile limit) are the caller's: plasticrl.lab.runtime.configure_torch.
        self.policy.encoder.to(memory_format=torch.channels_last)
        self._setup_regularisers()  # after the layout change: the anchors copy the NHWC conv weights
        self.policy.encoder.autocast_dtype = torch.bfloat16 if self.precision == "bf16" else None
        lr = self.lr_schedule(1)
        extra = {"fused": True, "capturable": True}
        self.actor.optimizer = torch.optim.Adam(self.actor.parameters(), lr=lr, **extra)
        critic_params = list(self.policy.encoder.parameters()) + list(self.critic.parameters())
        self.critic.optimizer = torch.optim.Adam(critic_params, lr=lr, **extra)
        if self.log_ent_coef is not None:
            self.ent_coef_optimizer = torch.optim.Adam([self.log_ent_coef], lr=lr, **extra)
        self._update = compile_update(self.update, self.compile_update)  # compiled at the first update, if on
        constant_lr = self.lr_schedule(0) == self.lr_schedule(1)
        if self.cuda_graph is True or (self.cuda_graph == "auto" and constant_lr):
            if not constant_lr:
                raise ValueError("cuda_graph=True needs a constant learning rate (a graph bakes the lr in)")
            self._update_fn = GraphedUpdate(self._update_vector)
            self.policy.act_graphs = {}

    def _setup_regularisers(self) -> None:
        """The reference values of ``l2_init`` and ``nap``, taken from the policy as built (its initial weights), as
        buffers of the policy (``l2_anchors``, ``nap_norms``: saved and loaded with it, so that a loaded agent keeps
        its anchors), and the (tensors, references) pairs the update reads."""
        groups = {"critic": ("encoder", "critic"), "actor": ("actor",)}
        self._l2_pairs, self._nap_pairs = {}, {}
        if self.l2_init > 0:
            params = {f"{prefix}.{name}": p for prefix in ("encoder", "critic", "actor")
                      for name, p in getattr(self.policy, prefix).named_parameters()}
            self.policy.l2_anchors = Anchors({name: p for name, p in params.items()})
            initial = dict(zip(self.policy.l2_anchors.names, self.policy.l2_anchors.tensors()))
            for group, prefixes in groups.items():
                names = [n for n in params if n.split(".")[0] in prefixes]
                self._l2_pairs[group] = ([params[n] for n in names], [initial[n] for n in names])
        if self.nap:
            weights = {f"{prefix}.{name}.weight": m.weight for prefix in ("encoder", "critic", "actor")
                       for name, m in getattr(self.policy, prefix).named_modules()
                       if isinstance(m, (nn.Linear, nn.Conv2d))}
            self.policy.nap_norms = Anchors(dict(zip(weights, weight_norms(list(weights.values())))))
            norms = dict(zip(self.policy.nap_norms.names, self.policy.nap_norms.tensors()))
            for group, prefixes in groups.items():
                names = [n for n in weights if n.split(".")[0] in prefixes]
                self._nap_pairs[group] = ([weights[n] for n in names], [norms[n] for n in names])

    def reinit_layer(self, module: nn.Module) -> None:
        """Re-initialises one layer in place as this agent's ``init`` did (``plasticrl.agents.init.layer_init_fn``),
        for interventions that reset layers (``plasticrl.sb3.InterventionCallback`` passes it as ``init_fn``)."""
        layer_init_fn(self.policy.init)(module)

    def invalidate_graphs(self) -> None:
        """Drops the captured CUDA graphs: the update's (``_update_fn``, ``_step_graph``) and the acting graphs
        (``policy.act_graphs``), so that the next update and action capture anew. Call it after modules, parameters
        or optimizer states were replaced by new objects (plasticity injection, a load); in-place writes keep the
        graphs valid. A no-op where nothing was captured (CPU)."""
        for graph in (self._update_fn, self._step_graph):
            if isinstance(graph, GraphedUpdate):
                graph.invalidate()
        if self.policy.act_graphs is not None:
            self.policy.act_graphs = {}

    def _create_aliases(self) -> None:
        super()._create_aliases()
        self.encoder = self.policy.encoder

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "encoder", "_stats_sum", "_update", "_update_fn",
                "_step_graph", "_step_graph_key", "critic_fau_log", "_prefetched", "_l2_pairs", "_nap_pairs"]

    def set_parameters(self, load_path_or_dict: Any, exact_match: bool = True, device: torch.device | str = "auto"
                       ) -> None:
        """SB3's, but optimizers keep this agent's ``fused``/``capturable`` flags (an optimizer state carries the
        saver's: a CPU-saved agent must still train in CUDA graphs after ``load`` on a GPU, and vice versa)."""
        params = load_path_or_dict
        if not isinstance(params, dict):
            _, params, _ = load_from_zip_file(load_path_or_dict, device=device, load_data=False)
        for name, state in params.items():
            try:
                own = recursive_getattr(self, name)
            except AttributeError:
                continue  # SB3 reports unknown names
            if isinstance(own, torch.optim.Optimizer) and isinstance(state, dict) and "param_groups" in state:
                keep_own_optimizer_flags(state, own)
        super().set_parameters(params, exact_match=exact_match, device=device)
        # loaded optimizer states are new tensors: graphs captured before would keep stepping the old ones
        self.invalidate_graphs()

    def load_replay_buffer(self, path: Any, truncate_last_traj: bool = True) -> None:
        """Loads a buffer written by ``save_replay_buffer`` (a pickled ``FrameReplayBuffer``); batches then go to
        this agent's device. (SB3's version accepts only its own ``ReplayBuffer`` class.)"""
        buffer = load_from_pkl(path, self.verbose)
        if not isinstance(buffer, FrameReplayBuffer):
            raise TypeError(f"{path} holds a {type(buffer).__name__}; DrQ needs a FrameReplayBuffer, as written by "
                            "DrQ.save_replay_buffer")
        buffer.device = self.device
        self.replay_buffer = buffer
        if self._step_graph is not None:  # a graph that samples on the GPU reads the old buffer's tensors
            self._step_graph.invalidate()

    # ------------------------------------------------------------------ the update
    def update(self, batch: PixelBatch) -> dict[str, torch.Tensor]:
        """One gradient update (critic + encoder, actor, temperature, target) on one batch.

        Returns 0-dim device tensors: critic_loss, actor_loss, ent_coef, ent_coef_loss, critic_fau, q.
        """
        obs = random_shift(batch.observations, self.augment_pad)
        next_obs = random_shift(batch.next_observations, self.augment_pad)
        log_alpha = self.log_ent_coef  # None when ent_coef is fixed
        alpha = log_alpha.detach().exp() if log_alpha is not None else self.ent_coef_tensor

        target_q = self.td_target(batch, next_obs, alpha)
        h = self.encoder(obs)
        q1, q2, critic_fau = self.critic.forward_with_fau(h, batch.actions)
        critic_loss = self._step("critic", F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q))

        h_actor = h.detach()
        action, log_prob = self.actor.action_log_prob(h_actor)
        aq1, aq2 = self._critic_for_actor(h_actor, action)
        actor_loss = self._step("actor", (alpha * log_prob - torch.min(aq1, aq2)).mean())

        if log_alpha is not None and self.ent_coef_optimizer is not None:
            ent_coef_loss = -(log_alpha * (log_prob.detach() + self.target_entropy)).mean()
            self.ent_coef_optimizer.zero_grad(set_to_none=True)
            ent_coef_loss.backward()
            self.ent_coef_optimizer.step()
        else:
            ent_coef_loss = torch.zeros((), device=obs.device)

        with torch.no_grad():
            online = list(self.critic.parameters())
            target = list(self.critic_target.parameters())
            torch._foreach_lerp_(target, online, self.tau)
        return {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(), "ent_coef": alpha.squeeze(),
                "ent_coef_loss": ent_coef_loss.detach(), "critic_fau": critic_fau, "q": q1.detach().mean()}

    def _step(self, name: str, loss: torch.Tensor) -> torch.Tensor:
        """One optimizer step of ``name`` (``"critic"``: encoder + critic, ``"actor"``) on ``loss`` plus the
        L2-to-init penalty (``l2_init``), then NaP's projection (``nap``); returns the loss with the penalty."""
        if self.l2_init > 0:
            loss = loss + self.l2_init * l2_init_penalty(*self._l2_pairs[name])
        optimizer = getattr(self, name).optimizer
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if self.nap:
            project_to_norms(*self._nap_pairs[name])
        return loss

    def _critic_for_actor(self, h: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Q1, Q2 of ``action`` with gradients through the critic to the action, not of its weights (the actor
        loss)."""
        trainable = [p for p in self.critic.parameters() if p.requires_grad]
        for p in trainable:
            p.requires_grad_(False)
        q = self.critic(h, action)
        for p in trainable:
            p.requires_grad_(True)
        return q

    @torch.no_grad()
    def td_target(self, batch: PixelBatch, next_obs: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """The soft n-step TD target r + gamma^n (min(Q1', Q2')(s', a') - alpha log pi(a'|s')), a' ~ pi(s'), with
        the target critic on the online encoder's features of the augmented next observations ``next_obs``
        (B, C, H, W) uint8; returns (B, 1), no gradients."""
        h_next = self.encoder(next_obs)
        next_action, next_log_prob = self.actor.action_log_prob(h_next)
        tq1, tq2 = self.critic_target(h_next, next_action)
        target_v = torch.min(tq1, tq2) - alpha * next_log_prob
        return batch.rewards + batch.discounts * target_v

    def _update_vector(self, batch: PixelBatch) -> torch.Tensor:
        stats = self._update(batch)
        return torch.stack([stats[k].float().reshape(()) for k in self.stat_keys])

    @property
    def queued_actions(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(actions, buffer actions), each (n_envs, A), that the async env step chose for the next env step, or None.

        They were drawn from the RNGs before the last updates. A resume that restores the RNG states restores these
        too (``plasticrl resume`` does), so that the resumed run takes them instead of drawing new ones and its
        updates see the same random numbers as the uninterrupted run's."""
        return self._prefetched

    @queued_actions.setter
    def queued_actions(self, actions: tuple[np.ndarray, np.ndarray] | None) -> None:
        self._prefetched = actions

    def _setup_learn(self, total_timesteps: int, callback: Any = None, reset_num_timesteps: bool = True,
                     tb_log_name: str = "run", progress_bar: bool = False) -> tuple[int, Any]:
        if reset_num_timesteps or self._last_obs is None:  # SB3 resets the envs: actions drawn for the observations
            self._prefetched = None  # of the old episodes are not taken in the new ones
        return super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)

    def _sample_action(self, learning_starts: int, action_noise: Any = None,
                       n_envs: int = 1) -> tuple[np.ndarray, np.ndarray]:
        if self._prefetched is not None:  # chosen before the last updates; the env is already stepping with it
            actions, self._prefetched = self._prefetched, None
            return actions
        return super()._sample_action(learning_starts, action_noise, n_envs)

    def _queue_action(self) -> tuple[Callable[[], bool], Callable[[], tuple[np.ndarray, np.ndarray]]]:
        """Queues the policy on ``self._last_obs`` on the device without waiting for it. Returns ``ready()`` (are
        the actions computed?) and ``finish()``, which waits for these actions only (not for work queued after
        them) and returns (action, buffer action) as SB3's ``_sample_action`` does after ``learning_starts``."""
        self.policy.set_training_mode(False)
        cuda = self.device.type == "cuda"
        obs = torch.from_numpy(np.asarray(self._last_obs).reshape((-1, *self.observation_space.shape)))
        obs = (obs.pin_memory() if cuda else obs).to(self.device, non_blocking=cuda)
        with torch.no_grad():
            raw = self.policy._predict(obs, deterministic=False)
        host = torch.empty(raw.shape, dtype=raw.dtype, pin_memory=cuda)
        host.copy_(raw, non_blocking=cuda)
        ready = torch.cuda.Event() if cuda else None
        if ready is not None:
            ready.record()

        def finish() -> tuple[np.ndarray, np.ndarray]:
            if ready is not None:
                ready.synchronize()
            unscaled = self.policy.unscale_action(host.numpy().reshape((-1, *self.action_space.shape)))
            scaled = self.policy.scale_action(unscaled)
            if self.action_noise is not None:
                scaled = np.clip(scaled + self.action_noise(), -1, 1)
            return self.policy.unscale_action(scaled), scaled

        return (lambda: ready is None or ready.query()), finish

    def train(self, gradient_steps: int, batch_size: int = 256) -> None:
        # Async env stepping: the next env step starts while this round of updates runs, so that the envs step
        # while the GPU trains. Its actions are queued on the device ahead of the updates (SB3 calls train() only
        # after learning_starts: policy actions) and the step starts as soon as they are ready, checked after each
        # queued update (on the CPU they are ready at once).
        pending = None
        if isinstance(self.env, PrefetchVecEnv) and gradient_steps > 0:
            pending = self._queue_action()

        def start_env_step(force: bool) -> None:
            nonlocal pending
            if pending is not None and (force or pending[0]()):
                self._prefetched = pending[1]()
                self.env.prefetch(self._prefetched[0])
                pending = None

        # a round that starts by capturing the update graph takes the queued actions first: no async work in flight
        start_env_step(force=self.device.type != "cuda" or self._captures_next(batch_size))
        self.policy.set_training_mode(True)
        optimizers = [self.actor.optimizer, self.critic.optimizer]
        if self.ent_coef_optimizer is not None:
            optimizers.append(self.ent_coef_optimizer)
        self._update_learning_rate(optimizers)
        fau_index = self.stat_keys.index("critic_fau")
        for _ in range(gradient_steps):
            stats = self._sample_and_update(batch_size)
            self.critic_fau_log.append(stats[fau_index])
            self._stats_sum = stats if self._stats_sum is None else self._stats_sum + stats
            self._train_count += 1
            start_env_step(force=False)
        self._n_updates += gradient_steps
        start_env_step(force=True)

    def _step_graph_key_for(self, batch_size: int) -> tuple[int, int]:
        """(batch size, id of a GPU replay buffer or 0): the key a step graph is kept under."""
        on_gpu = self.replay_buffer.storage.type == "cuda"
        return batch_size, id(self.replay_buffer) if on_gpu else 0

    def _captures_next(self, batch_size: int) -> bool:
        """Will the next update of ``batch_size`` capture a CUDA graph (first update, new buffer, after a load)?"""
        if not isinstance(self._update_fn, GraphedUpdate):
            return False
        graph = self._step_graph
        return graph is None or graph.graph is None or self._step_graph_key != self._step_graph_key_for(batch_size)

    def _sample_and_update(self, batch_size: int) -> torch.Tensor:
        """One update on a fresh replay batch; returns the stats vector (device). With CUDA graphs on, the graph is
        kept per batch size (and buffer): with the frames on the GPU, sampling and update replay as one graph; with
        pinned CPU frames the sampled batch is copied into the graph's inputs."""
        buffer = self.replay_buffer
        if not isinstance(self._update_fn, GraphedUpdate):
            return self._update_fn(buffer.sample(batch_size))
        on_gpu = buffer.storage.type == "cuda"
        key = self._step_graph_key_for(batch_size)
        if self._step_graph is None or self._step_graph_key != key:
            # the graph samples from self.replay_buffer as it is at capture (and re-capture, after invalidate())
            fn = (lambda: self._update_vector(self.replay_buffer.sample(batch_size))) if on_gpu else self._update_vector
            self._step_graph, self._step_graph_key = GraphedUpdate(fn), key
        return self._step_graph() if on_gpu else self._step_graph(buffer.sample(batch_size))

    @property
    def pending_train_stats(self) -> tuple[torch.Tensor | None, int]:
        """(sum over updates of the statistics vector (len(stat_keys),) on the CPU, or None; number of updates)
        since the last ``pop_train_stats``: what a resume must restore for the next logged means to cover the same
        updates as in the uninterrupted run (the sum is not in SB3's zip; the count is)."""
        return (None if self._stats_sum is None else self._stats_sum.detach().cpu()), self._train_count

    @pending_train_stats.setter
    def pending_train_stats(self, value: tuple[torch.Tensor | None, int]) -> None:
        total, self._train_count = value
        self._stats_sum = None if total is None else total.to(self.device)

    def pop_train_stats(self) -> dict[str, float]:
        """Means of the update statistics since the last call, read from the device in one transfer.

        Raises FloatingPointError on a non-finite loss, naming the update count and the usual fixes.
        """
        if not self._train_count or self._stats_sum is None:
            return {}
        values = (self._stats_sum / self._train_count).tolist()
        self._stats_sum, self._train_count = None, 0
        stats = dict(zip(self.stat_keys, values))
        bad = [k for k, v in stats.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(
                f"non-finite {', '.join(bad)} at update {self._n_updates} (env step {self.num_timesteps}): training "
                "diverged. Checkpoints and logs written so far are kept. Try a lower agent.learning_rate, a smaller "
                "replay ratio, or check the env's rewards for NaN/inf."
            )
        return stats

    def dump_logs(self) -> None:
        """SB3's ``dump_logs`` (called by ``learn`` every ``log_interval`` episodes), with the means of the update
        statistics since the last ``pop_train_stats`` as ``train/<key>`` and ``train/n_updates``; raises
        FloatingPointError on a non-finite one (see ``pop_train_stats``)."""
        for key, value in self.pop_train_stats().items():
            self.logger.record(f"train/{key}", value)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        super().dump_logs()
