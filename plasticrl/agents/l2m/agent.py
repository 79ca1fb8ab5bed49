"""The offline agent of L2M's Decision Transformer (``plasticrl.agents.l2m.model``): episode data, batched acting,
training, and one checkpoint format (``L2MAgent.save``/``load``) that also holds an attached ``ModulationPool`` and a
method's extra state."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from plasticrl.agents.accel import GraphedUpdate, keep_own_optimizer_flags
from plasticrl.agents.l2m.model import DecisionTransformer, DTConfig
from plasticrl.agents.l2m.optim import learning_rate_at, weight_decay_groups
from plasticrl.modulation import ModulationPool

__all__ = ["EpisodeBatch", "EpisodeData", "L2MAgent"]

Batch = tuple[Tensor, ...]  # ``L2MAgent.sample_batch``'s (states, actions, rtg, timesteps, action_mask)


def _per_item(value: float | Sequence[float], n: int, name: str) -> list[float]:
    """``value`` for each of ``n`` items (one float for all, or one per item); ValueError for another count or a
    value that is not > 0."""
    values = [float(value)] * n if np.ndim(value) == 0 else [float(v) for v in value]
    if len(values) != n:
        raise ValueError(f"need one {name} per item: {n} items, {len(values)} values")
    if not all(v > 0 for v in values):
        raise ValueError(f"{name} must be > 0, got {values}")
    return values


def _episodes(datasets: Sequence[Any], scales: list[float]) -> Iterable[tuple[dict[str, np.ndarray], float]]:
    """(episode, its return scale) pairs, episodes as dicts of observations, actions, rewards from minari datasets
    or episode dicts."""
    for data, scale in zip(datasets, scales):
        if isinstance(data, dict):
            yield data, scale
        else:
            for episode in data.iterate_episodes():
                yield {"observations": episode.observations, "actions": episode.actions,
                       "rewards": episode.rewards}, scale


@dataclass
class EpisodeData:
    """Prepared episodes of one task set, zero-padded to the longest, on the training device.

    ``states`` (E, L, state_dim) float32, ``actions`` (E, L, max_action_dim) float32 in [-1, 1], ``action_mask``
    (E, max_action_dim) bool (the env's real action dims), ``rtg`` (E, L) float32 return-to-go divided by its
    episode's return scale (what the model takes), ``lengths`` (E,) long env steps per episode (each >= context)."""

    states: Tensor
    actions: Tensor
    action_mask: Tensor
    rtg: Tensor
    lengths: Tensor

    def __len__(self) -> int:
        return int(self.lengths.shape[0])


class EpisodeBatch:
    """N episodes acted in lockstep (``L2MAgent.predict_batch``): per row the last ``context`` states (zero-padded
    to state_dim), actions, returns-to-go (divided by the row's return scale, as the model takes them) and the step
    count, kept on the host. ``rtg_now`` is each row's return still to collect, in reward units."""

    def __init__(self, config: DTConfig, target_returns: Sequence[float], action_dims: Sequence[int],
                 return_scales: float | Sequence[float] = 1.0) -> None:
        n, t = len(target_returns), config.context
        if len(action_dims) != n:
            raise ValueError(f"need one action dim per episode: {n} targets, {len(action_dims)} action dims")
        self.return_scales = np.asarray(_per_item(return_scales, n, "return scale"), dtype=np.float64)
        self.action_dims = np.asarray(action_dims, dtype=np.int64)
        if n and not np.all((self.action_dims >= 1) & (self.action_dims <= config.max_action_dim)):
            raise ValueError(f"action dims must be in [1, {config.max_action_dim}], got {self.action_dims.tolist()}")
        self.config = config
        self.rtg_now = np.asarray(target_returns, dtype=np.float64).copy()  # (N,) return still to collect
        self.steps = np.zeros(n, dtype=np.int64)  # (N,) observations seen so far
        self.states = np.zeros((n, t, config.state_dim), np.float32)
        self.actions = np.zeros((n, t, config.max_action_dim), np.float32)
        self.rtg = np.zeros((n, t), np.float32)

    def __len__(self) -> int:
        return len(self.steps)

    def push(self, rows: np.ndarray, observations: np.ndarray, rewards: np.ndarray) -> int:
        """Appends observations (n, S) for ``rows`` (equal step counts); rewards of the previous actions are
        subtracted from the returns-to-go (ignored at a row's first step). Returns the window length."""
        count = self.steps[rows]
        if count.size == 0 or np.any(count != count[0]):
            raise ValueError("rows must be non-empty and in lockstep (equal step counts)")
        obs = np.asarray(observations, dtype=np.float32).reshape(len(rows), -1)
        if obs.shape[1] > self.config.state_dim:
            raise ValueError(f"state width {obs.shape[1]} exceeds DTConfig.state_dim={self.config.state_dim}")
        if count[0] > 0:
            self.rtg_now[rows] -= np.asarray(rewards, dtype=np.float64).reshape(len(rows))
        slot, t = int(count[0]), self.config.context
        if slot >= t:  # full window: drop the oldest timestep
            for buf in (self.states, self.actions, self.rtg):
                buf[rows] = np.roll(buf[rows], -1, axis=1)
            slot = t - 1
        self.states[rows, slot] = 0.0
        self.states[rows, slot, : obs.shape[1]] = obs
        self.actions[rows, slot] = 0.0
        self.rtg[rows, slot] = self.rtg_now[rows] / self.return_scales[rows]
        self.steps[rows] += 1
        return slot + 1


class L2MAgent:
    """Offline training and acting of a ``DecisionTransformer`` with an SB3-like API (``learn``/``predict``/
    ``save``/``load``); not an SB3 algorithm (no env, no rollouts). Building one changes no process-wide state: the
    weights come from ``seed`` through a forked generator (dropout still draws from torch's global generator).

    Units: target returns and rewards are raw env rewards; the model sees returns-to-go divided by each task's
    return scale (``return_scale`` of ``prepare_episodes``, ``new_episodes`` and ``reset``; L2M: 200 for
    Meta-World, 100 for DMC). Timesteps are 0-based env-step indices within an episode.
    """

    def __init__(self, config: DTConfig | None = None, device: str | torch.device = "auto",
                 learning_rate: float = 1e-4, batch_size: int = 64, seed: int = 0, weight_decay: float = 0.01,
                 max_grad_norm: float = 0.25, precision: str = "fp32", cuda_graph: bool = True,
                 lr_schedule: str = "constant", warmup_steps: int = 0, schedule_steps: int | None = None,
                 min_learning_rate: float = 1e-6) -> None:
        """``precision="bf16"``: on CUDA the transformer's matmuls run in bf16 autocast (fp32 weights, optimizer
        and loss); on CPU it has no effect. ``cuda_graph``: on CUDA, ``train_step`` replays one captured CUDA graph
        per batch shape (forward, backward, clipping, AdamW: one launch instead of hundreds).

        ``train_step`` number n (``num_steps``, 0-based) steps with ``lr_at(n)``: ``learning_rate`` after
        ``warmup_steps`` of linear warmup, constant or (``lr_schedule="cosine"``) one cosine cycle of
        ``schedule_steps`` down to ``min_learning_rate`` (``plasticrl.agents.l2m.optim.learning_rate_at``, L2M's
        schedule). Weight decay acts on the ``nn.Linear`` weights only (``weight_decay_groups``, as L2M)."""
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision={precision!r}: allowed are 'fp32' and 'bf16'")
        self.config = config or DTConfig()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.precision = precision
        self.learning_rate, self.batch_size, self.seed = learning_rate, batch_size, seed
        self.weight_decay, self.max_grad_norm = weight_decay, max_grad_norm
        self.cuda_graph = cuda_graph  # used on CUDA only
        self.lr_schedule, self.warmup_steps = lr_schedule, warmup_steps
        self.schedule_steps, self.min_learning_rate = schedule_steps, min_learning_rate
        self.lr_at(warmup_steps)  # ValueError now for an unknown schedule or a cosine without schedule_steps
        self._graphs: dict[tuple[tuple[int, ...], ...], GraphedUpdate] = {}  # train_step's, per batch shapes
        with torch.random.fork_rng(devices=[]):  # weights from ``seed``; the process's generators stay untouched
            torch.default_generator.manual_seed(seed)  # the CPU's only: the weights are drawn on the CPU
            self.model = DecisionTransformer(self.config).to(self.device)
        self.model.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        self.optimizer = self.make_optimizer(self.model.parameters(), learning_rate, weight_decay)
        self._lr_now = learning_rate  # the learning rate self.optimizer holds
        self.generator = torch.Generator(device=self.device).manual_seed(seed)  # batch sampling
        self.num_steps = 0
        self.pool: ModulationPool | None = None  # attach_pool's
        self._pool_layers: dict[str, str] = {}  # the model layers the pool wraps -> their sites
        self.extras: dict[str, Any] = {}  # a training method's own state, kept by save/load (e.g. EWC's Fisher)
        self.reset(0.0, self.config.max_action_dim)

    def make_optimizer(self, params: Iterable[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
        """AdamW on ``params``, ``weight_decay`` on the model's ``nn.Linear`` weights and none on the rest (L2M's
        groups, ``weight_decay_groups``). On CUDA it is fused (one kernel per step) and capturable into a CUDA
        graph, and its learning rate is one CUDA tensor that all groups share: the fused kernel reads it from
        device memory, so a captured step replays with the value ``set_lr`` wrote last (a float would be baked into
        the graph at capture)."""
        cuda = self.device.type == "cuda"
        rate: float | Tensor = torch.tensor(float(lr), device=self.device) if cuda else lr
        return torch.optim.AdamW(weight_decay_groups(self.model, params, weight_decay), lr=rate, fused=cuda,
                                 capturable=cuda)

    def lr_at(self, step: int) -> float:
        """The learning rate of ``train_step`` number ``step`` (0-based; see ``__init__``)."""
        return learning_rate_at(step, self.learning_rate, self.lr_schedule, self.warmup_steps, self.schedule_steps,
                                self.min_learning_rate)

    @staticmethod
    def set_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
        """Sets every group's learning rate of ``optimizer`` to ``value``: in place where it is a tensor (no host
        sync; CUDA graphs that read it see the new value), else as a float."""
        for group in optimizer.param_groups:
            if isinstance(group["lr"], Tensor):
                group["lr"].fill_(value)
            else:
                group["lr"] = value

    # ---- data --------------------------------------------------------------------------
    def prepare_episodes(self, datasets: Sequence[Any], return_scale: float | Sequence[float] = 1.0) -> EpisodeData:
        """The episodes of ``datasets`` (minari datasets, or episode dicts with observations (L or L+1, S),
        actions (L, A'), rewards (L,)) as one padded ``EpisodeData`` on the agent's device; returns-to-go from
        the rewards, divided by ``return_scale`` (one for all, or one per item of ``datasets``). Episodes shorter
        than ``context`` are skipped; ValueError if none is left or a width is too large for the model."""
        cfg = self.config
        kept = []
        for ep, scale in _episodes(datasets, _per_item(return_scale, len(datasets), "return scale")):
            actions = np.asarray(ep["actions"], dtype=np.float32)
            steps = len(actions)
            states = np.asarray(ep["observations"], dtype=np.float32)[:steps]  # drop the final observation
            if states.shape[-1] > cfg.state_dim:
                raise ValueError(f"state width {states.shape[-1]} exceeds DTConfig.state_dim={cfg.state_dim}")
            if actions.shape[-1] > cfg.max_action_dim:
                raise ValueError(f"action width {actions.shape[-1]} exceeds "
                                 f"DTConfig.max_action_dim={cfg.max_action_dim}")
            if steps >= cfg.context:
                rewards = np.asarray(ep["rewards"], dtype=np.float64).reshape(steps)
                kept.append((states, actions, (np.cumsum(rewards[::-1])[::-1] / scale).astype(np.float32)))
        if not kept:
            raise ValueError(f"no episode with at least context={cfg.context} steps")
        e, longest = len(kept), max(len(a) for _, a, _ in kept)
        states = np.zeros((e, longest, cfg.state_dim), np.float32)
        actions = np.zeros((e, longest, cfg.max_action_dim), np.float32)
        mask = np.zeros((e, cfg.max_action_dim), bool)
        rtg = np.zeros((e, longest), np.float32)
        lengths = np.zeros(e, np.int64)
        for i, (s, a, r) in enumerate(kept):
            states[i, : len(s), : s.shape[1]] = s
            actions[i, : len(a), : a.shape[1]] = a
            mask[i, : a.shape[1]] = True
            rtg[i, : len(r)] = r
            lengths[i] = len(a)
        return EpisodeData(*(torch.as_tensor(x, device=self.device) for x in (states, actions, mask, rtg, lengths)))

    def sample_batch(self, data: EpisodeData, batch_size: int | None = None,
                     generator: torch.Generator | None = None) -> tuple[Tensor, ...]:
        """Random windows of ``context`` timesteps (episode uniform, then start uniform), gathered on the device
        without a Python loop: (states (B, T, state_dim), actions (B, T, A), rtg (B, T), timesteps (B, T) long,
        action_mask (B, T, A) bool), B = ``batch_size`` (default ``self.batch_size``). Drawn with ``generator``
        (a generator on the agent's device; default the agent's own, seeded by ``seed``)."""
        b, t = batch_size or self.batch_size, self.config.context
        g, device = generator or self.generator, self.device
        episode = torch.randint(len(data), (b,), generator=g, device=device)
        starts = data.lengths[episode] - t + 1  # (B,) number of window starts per episode
        start = torch.minimum((torch.rand(b, generator=g, device=device) * starts).long(), starts - 1)
        timesteps = start[:, None] + torch.arange(t, device=device)  # (B, T)
        rows = episode[:, None]
        mask = data.action_mask[episode][:, None, :].expand(b, t, -1)
        return data.states[rows, timesteps], data.actions[rows, timesteps], data.rtg[rows, timesteps], timesteps, mask

    # ---- training ----------------------------------------------------------------------
    def train_step(self, batch: tuple[Tensor, ...]) -> Tensor:
        """One AdamW step (grad-norm clipping) of the DT loss on ``batch`` (``sample_batch``'s tuple); returns the
        loss tensor (no host sync). With ``cuda_graph`` the step is a graph replay (see ``plasticrl.agents.accel``)."""
        self.model.train()
        lr = self.lr_at(self.num_steps)
        if lr != self._lr_now:
            self.set_lr(self.optimizer, lr)
            self._lr_now = lr
        if self.uses_graphs:
            key = tuple(tuple(t.shape) for t in batch)
            if key not in self._graphs:
                self._graphs[key] = GraphedUpdate(self._train_step_eager)
            loss = self._graphs[key](tuple(batch))[0]
        else:
            loss = self._train_step_eager(batch)[0]
        self.num_steps += 1
        return loss

    def release_graphs(self) -> None:
        """Drops ``train_step``'s captured graphs and the gradients they hold (their GPU memory), e.g. after
        pre-training; a later ``train_step`` captures anew."""
        self._graphs.clear()
        self.model.zero_grad(set_to_none=True)

    @property
    def uses_graphs(self) -> bool:
        """True when training steps replay CUDA graphs (``cuda_graph`` on a CUDA device)."""
        return self.cuda_graph and self.device.type == "cuda"

    def _train_step_eager(self, batch: tuple[Tensor, ...]) -> Tensor:
        loss = self.model.loss(*batch)
        self.optimizer_step(loss, self.optimizer, list(self.model.parameters()))
        return loss.detach().reshape(1)

    def optimizer_step(self, loss: Tensor, optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> None:
        """Backward of ``loss``, gradients of ``params`` clipped to norm ``max_grad_norm``, one ``optimizer`` step."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        optimizer.step()

    def make_update(self, loss_fn: Callable[[Batch], Sequence[Tensor]], optimizer: torch.optim.Optimizer,
                    params: list[nn.Parameter]) -> Callable[[Batch], Tensor]:
        """A gradient step ``update(batch) -> stats``: ``loss_fn(batch)`` returns scalar tensors (loss, *others);
        the step backpropagates the loss through ``params`` (``optimizer_step``) and returns all of them as one
        float vector on the device (no host sync). With ``uses_graphs`` the step is a
        ``plasticrl.agents.accel.GraphedUpdate``
        (captured at its first call for that batch shape; ``loss_fn``'s constants are baked in, so build one per
        optimizer and loss; ``invalidate()`` it when parameters or optimizer state are replaced)."""

        def update(batch: Batch) -> Tensor:
            values = loss_fn(batch)
            self.optimizer_step(values[0], optimizer, params)
            return torch.stack([v.detach().float() for v in values])

        return GraphedUpdate(update) if self.uses_graphs else update

    def learn(self, datasets: Sequence[Any] | EpisodeData, steps: int,
              callback: Callable[[int, float], bool | None] | None = None,
              callback_steps: Callable[[int], bool] | None = None) -> L2MAgent:
        """``steps`` gradient steps on random context windows from ``datasets`` (see ``prepare_episodes``; an
        ``EpisodeData`` is used as is). ``callback(step, loss)`` runs after each step (0-based) for which
        ``callback_steps(step)`` is True (default: every step); each run reads the loss, a host sync. A callback
        returning False stops early."""
        data = datasets if isinstance(datasets, EpisodeData) else self.prepare_episodes(datasets)
        for step in range(steps):
            loss = self.train_step(self.sample_batch(data))
            if callback is None or (callback_steps is not None and not callback_steps(step)):
                continue
            if callback(step, loss.item()) is False:
                break
        self.model.eval()
        return self

    # ---- modulation -------------------------------------------------------------------
    def attach_pool(self, pool: ModulationPool, layers: dict[str, str] | None = None) -> list[str]:
        """Wraps the model's layers (``layers``: qualified name -> site, default the pool's placement) with ``pool``
        (moved to the agent's device) and freezes the backbone; ``save`` keeps the pool and its layers' sites.
        Returns the wrapped layer names."""
        if self.pool is not None:
            raise RuntimeError("this agent already has a modulation pool")
        self.pool = pool.to(self.device)
        names = pool.attach(self.model, layers)
        self._pool_layers = {name: pool.sites[name] for name in names}
        pool.freeze_backbone(self.model)
        return names

    def backbone_state_dict(self) -> dict[str, Tensor]:
        """The model's own ``state_dict`` (the keys of a model without a pool), whether a pool is attached or not."""
        if self.pool is None:
            return self.model.state_dict()
        self.pool.detach()
        try:
            return self.model.state_dict()
        finally:
            self.pool.attach(self.model, self._pool_layers)

    # ---- acting ------------------------------------------------------------------------
    def new_episodes(self, target_returns: Sequence[float], action_dims: Sequence[int],
                     return_scales: float | Sequence[float] = 1.0) -> EpisodeBatch:
        """Starts N episodes acted in lockstep by ``predict_batch``: desired returns (reward units), each env's
        action width and return scale (one for all, or one per episode)."""
        return EpisodeBatch(self.config, target_returns, action_dims, return_scales)

    def predict_batch(self, episodes: EpisodeBatch, observations: np.ndarray, rewards: np.ndarray | None = None,
                      rows: np.ndarray | None = None, deterministic: bool = True, temperature: float = 1.0,
                      select: Callable[[Tensor, Tensor, np.ndarray], Any] | None = None,
                      generator: torch.Generator | None = None) -> np.ndarray:
        """Actions (n, max_action_dim) float32 for observations (n, S) of ``episodes``' ``rows`` (default: all;
        they must be in lockstep); row i's entries beyond its action width are 0. ``rewards`` (n,): rewards of the
        previous actions (ignored at the first step). ``select(states, timesteps, rows)``, if given, returns a
        context manager the model acts under (e.g. a modulation-pool selection), from the context states (n, T,
        state_dim) and timesteps (n, T) on the device. Sampled at ``temperature`` unless ``deterministic``, with
        ``generator`` (one on the agent's device; default torch's global one)."""
        rows = np.arange(len(episodes)) if rows is None else np.asarray(rows, dtype=np.int64)
        rewards = np.zeros(len(rows)) if rewards is None else rewards
        t = episodes.push(rows, observations, rewards)
        count = int(episodes.steps[rows[0]])

        def window(buf: np.ndarray) -> Tensor:
            return torch.as_tensor(buf[rows, :t], device=self.device)

        states, rtg = window(episodes.states), window(episodes.rtg)
        timesteps = torch.arange(count - t, count, device=self.device).expand(len(rows), t)
        self.model.eval()
        with contextlib.nullcontext() if select is None else select(states, timesteps, rows):
            actions = self.model.act_batch(states, window(episodes.actions)[:, : t - 1], rtg, timesteps,
                                           torch.as_tensor(episodes.action_dims[rows]),
                                           temperature=None if deterministic else temperature, generator=generator)
        out = np.zeros((len(rows), self.config.max_action_dim), np.float32)
        out[:, : actions.shape[1]] = actions.cpu().numpy()
        episodes.actions[rows, t - 1] = out
        return out

    def reset(self, target_return: float, action_dim: int, return_scale: float = 1.0) -> None:
        """Starts an episode: ``target_return`` is the desired return (raw reward units); ``action_dim`` the env's;
        ``return_scale`` its task's (the returns-to-go the model sees are divided by it)."""
        if not 1 <= action_dim <= self.config.max_action_dim:
            raise ValueError(f"action_dim must be in [1, {self.config.max_action_dim}], got {action_dim}")
        self.action_dim = action_dim
        self._episode = self.new_episodes([target_return], [action_dim], return_scale)

    def predict(self, observation: np.ndarray, deterministic: bool = True, *, reward: float = 0.0,
                temperature: float = 1.0) -> tuple[np.ndarray, None]:
        """The action (action_dim,) float32 in [-1, 1] for ``observation``; ``reward`` is the reward received for
        the previous action (subtracted from the return-to-go; ignored at the first step). Keeps the episode's last
        ``context`` timesteps; call ``reset`` at episode start. Not deterministic: sampled at ``temperature``.
        ``predict_batch`` with one episode."""
        obs = np.asarray(observation, dtype=np.float32).reshape(1, -1)
        action = self.predict_batch(self._episode, obs, np.array([reward]), deterministic=deterministic,
                                    temperature=temperature)
        return action[0, : self.action_dim], None

    # ---- persistence -------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """``torch.save`` of the config, hyper-parameters, backbone and optimizer state, the modulation pool (its
        sizes, wrapped layers and ``state_dict``; None without one) and ``extras``."""
        pool = None if self.pool is None else {
            "sizes": {"pool_size": self.pool.pool_size, "key_dim": self.pool.key_dim, "rank": self.pool.rank,
                      "kind": self.pool.kind, "top_k": self.pool.top_k, "pull_coef": self.pool.pull_coef,
                      "count_penalty": self.pool.count_penalty, "placement": self.pool.placement},
            "layers": dict(self._pool_layers), "state": self.pool.state_dict()}
        optimizer = self.optimizer.state_dict()
        for group in optimizer["param_groups"]:  # a float in the file, whatever the device (a CUDA tensor here)
            group["lr"] = float(group["lr"])
        torch.save({"config": asdict(self.config), "model": self.backbone_state_dict(),
                    "optimizer": optimizer, "num_steps": self.num_steps,
                    "hparams": {"learning_rate": self.learning_rate, "batch_size": self.batch_size,
                                "seed": self.seed, "weight_decay": self.weight_decay,
                                "max_grad_norm": self.max_grad_norm, "precision": self.precision,
                                "cuda_graph": self.cuda_graph, "lr_schedule": self.lr_schedule,
                                "warmup_steps": self.warmup_steps, "schedule_steps": self.schedule_steps,
                                "min_learning_rate": self.min_learning_rate},
                    "pool": pool, "extras": self.extras}, path)

    @staticmethod
    def read_checkpoint(path: str | Path) -> dict[str, Any]:
        """The contents of ``save``'s file, on the CPU (``from_checkpoint`` builds the agent)."""
        return torch.load(path, map_location="cpu", weights_only=False)

    @classmethod
    def from_checkpoint(cls, data: dict[str, Any], device: str | torch.device = "auto", **hparams: Any) -> L2MAgent:
        """An agent (in eval mode) on ``device`` from ``read_checkpoint``'s contents; ``hparams`` (e.g. ``seed``,
        ``precision``, ``cuda_graph``) replace the saved ones. The pool, if saved, is attached again. ValueError for
        a checkpoint of another DT (other config keys, e.g. one saved before ``embed_ln`` and per-task return
        scales)."""
        fields = set(asdict(DTConfig()))
        if set(data["config"]) != fields:
            raise ValueError(f"a checkpoint of another Decision Transformer: config keys {sorted(data['config'])}, "
                             f"this one has {sorted(fields)}; pre-train again")
        agent = cls(DTConfig(**data["config"]), device=device, **{**data["hparams"], **hparams})
        agent.model.load_state_dict(data["model"])
        if len(data["optimizer"]["param_groups"]) == len(agent.optimizer.param_groups):
            keep_own_optimizer_flags(data["optimizer"], agent.optimizer)  # this device's flags, not the saver's
            rate = agent.optimizer.param_groups[0]["lr"]
            agent.optimizer.load_state_dict(data["optimizer"])
            for group in agent.optimizer.param_groups:  # this agent's own lr (a CUDA tensor on CUDA), not the file's
                group["lr"] = rate
        else:  # a file from before the decay/no-decay groups: its AdamW moments do not map onto them
            warnings.warn("the checkpoint's optimizer has other parameter groups (one saved before weight decay "
                          "was limited to Linear weights); its AdamW state is not loaded", stacklevel=2)
        agent.num_steps = data["num_steps"]  # the next train_step sets lr_at(num_steps)
        saved_pool = data.get("pool")
        if saved_pool is not None:
            with torch.random.fork_rng(devices=[]):  # the keys' random init is overwritten by the saved state
                pool = ModulationPool(**saved_pool["sizes"])
            agent.attach_pool(pool, saved_pool["layers"])
            pool.load_state_dict(saved_pool["state"])
        agent.extras = dict(data.get("extras") or {})
        agent.model.eval()
        return agent

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "auto", **hparams: Any) -> L2MAgent:
        """An agent from ``save``'s file (in eval mode), on ``device``; see ``from_checkpoint``."""
        return cls.from_checkpoint(cls.read_checkpoint(path), device, **hparams)
