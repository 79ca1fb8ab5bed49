"""Multi-domain Decision Transformer of L2M (Schmied et al., "Learning to Modulate pre-trained Models in RL",
NeurIPS 2023) and an offline, SB3-style agent around it.

Token layout (per timestep ``t``, ``A = max_action_dim``)::

    [R_t, s_t, a_t1, a_t2, ..., a_tA]          -> 2 + A tokens per timestep, T * (2 + A) in the sequence

* ``R_t``: return-to-go (sum of the episode's rewards from ``t`` on, in reward units, i.e. un-normalised; the
  model embeds ``R_t / return_scale`` with a Linear).
* ``s_t``: the state zero-padded to ``state_dim`` (39, Meta-World's width; DMC states are padded), a Linear.
* ``a_tk``: action dimension ``k`` discretised into ``n_bins`` uniform bins over [-1, 1] (``discretize``), an
  ``nn.Embedding(n_bins + 1, d)``; action dimensions beyond the env's ``action_dim`` use the PAD id ``n_bins``.

Each token also gets a learned timestep embedding (``t`` is the env step index inside the episode, 0-based,
clamped to ``max_timestep - 1``) and a token-type embedding (``2 + A`` types: rtg, state, a_1..a_A). Pre-LayerNorm
causal blocks over the flattened sequence; the attention Linears are named ``q_proj``/``k_proj``/``v_proj``/
``out_proj`` and the feed-forward ones ``fc1``/``fc2``, so ``plasticrl.modulation.ModulationPool.attach(model)``
wraps the query/value projections and feed-forward layers of every block. The head ``Linear(d, n_bins)`` predicts
``a_tk``'s bin from the output at the token before it: ``s_t`` predicts ``a_t1``, ``a_t1`` predicts ``a_t2``, ...
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.accel import GraphedUpdate, keep_own_optimizer_flags

__all__ = ["DTConfig", "DecisionTransformer", "EpisodeBatch", "EpisodeData", "L2MAgent", "bin_centers", "discretize"]


@dataclass
class DTConfig:
    """Decision-Transformer sizes. ``return_scale``: return-to-go (reward units) is divided by it before embedding.

    ``context`` counts timesteps (each ``2 + max_action_dim`` tokens); ``max_timestep`` is the size of the
    timestep embedding (env steps; later steps share the last entry)."""

    state_dim: int = 39
    max_action_dim: int = 6
    n_bins: int = 64
    context: int = 5
    d_model: int = 128
    n_layers: int = 3
    n_heads: int = 4
    dropout: float = 0.1
    max_timestep: int = 1000
    return_scale: float = 1000.0

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if min(self.state_dim, self.max_action_dim, self.n_bins, self.context, self.max_timestep) < 1:
            raise ValueError(f"sizes must be >= 1: {self}")
        if not self.return_scale > 0:
            raise ValueError(f"return_scale must be > 0, got {self.return_scale}")


def discretize(a: Tensor | np.ndarray, n_bins: int = 64) -> Tensor:
    """Actions in [-1, 1] (values outside are clipped) -> bin ids in [0, n_bins) (long), uniform bins."""
    a = torch.as_tensor(a, dtype=torch.float32)
    return torch.clamp(torch.floor((a + 1.0) * (n_bins / 2.0)), 0, n_bins - 1).long()


def bin_centers(bins: Tensor | np.ndarray, n_bins: int = 64) -> Tensor:
    """Bin ids in [0, n_bins) -> their centres in [-1, 1] (float32); |centre(discretize(a)) - a| <= 1 / n_bins."""
    bins = torch.as_tensor(bins)
    return -1.0 + (bins.float() + 0.5) * (2.0 / n_bins)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separately named q/k/v/out projections."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(b, n, self.n_heads, d // self.n_heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)),
                                           dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.resid_drop(self.out_proj(y.transpose(1, 2).reshape(b, n, d)))


class FeedForward(nn.Module):
    """fc1 (d -> 4d), GELU, fc2 (4d -> d), dropout. The GELU is a module applied to (tokens, 4d), so that a
    ``PlasticityMonitor`` sees one row per token and one column per unit."""

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, 4 * d_model)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        return self.drop(self.fc2(self.act(h.reshape(-1, h.shape[-1])).reshape(h.shape)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln1(x)), then x + ff(ln2(x))."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model, dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ff(self.ln2(x))


class DecisionTransformer(nn.Module):
    """Multi-domain DT with per-dimension discrete action tokens; see the module docstring for the layout.

    Shapes: ``states`` (B, T, S) with S <= state_dim (zero-padded here), ``actions`` (B, T, A') in [-1, 1] with
    A' <= max_action_dim, ``rtg`` (B, T) or (B, T, 1) in reward units, ``timesteps`` (B, T) long env-step indices,
    ``action_mask`` (B, T, A) or (A,) bool, True for the env's real action dims (default: the first A' dims).
    T <= context.
    """

    def __init__(self, config: DTConfig | None = None) -> None:
        super().__init__()
        self.autocast_dtype: torch.dtype | None = None  # e.g. torch.bfloat16: blocks and head in bf16 (CUDA only)
        self.config = config = config or DTConfig()
        d, a = config.d_model, config.max_action_dim
        self.tokens_per_step = 2 + a
        self.embed_rtg = nn.Linear(1, d)
        self.embed_state = nn.Linear(config.state_dim, d)
        self.embed_action = nn.Embedding(config.n_bins + 1, d)  # id n_bins = PAD
        self.embed_timestep = nn.Embedding(config.max_timestep, d)
        self.embed_type = nn.Embedding(self.tokens_per_step, d)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(d, config.n_heads, config.dropout) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.n_bins)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    # ---- inputs ---------------------------------------------------------------------
    @property
    def pad_id(self) -> int:
        return self.config.n_bins

    def _device(self) -> torch.device:
        return self.embed_state.weight.device

    def pad_states(self, states: Tensor | np.ndarray) -> Tensor:
        """States (..., S) -> float (..., state_dim), zero-padded; ValueError if S > state_dim."""
        states = torch.as_tensor(states, dtype=torch.float32, device=self._device())
        width = states.shape[-1]
        if width > self.config.state_dim:
            raise ValueError(f"state width {width} exceeds DTConfig.state_dim={self.config.state_dim}; "
                             "build the model with a larger state_dim")
        return F.pad(states, (0, self.config.state_dim - width))

    def action_tokens(self, actions: Tensor | np.ndarray, action_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Actions (B, T, A') in [-1, 1] -> (tokens (B, T, A) long with PAD where the mask is False, mask (B, T, A))."""
        actions = torch.as_tensor(actions, dtype=torch.float32, device=self._device())
        width, full = actions.shape[-1], self.config.max_action_dim
        if width > full:
            raise ValueError(f"action width {width} exceeds DTConfig.max_action_dim={full}")
        actions = F.pad(actions, (0, full - width))
        if action_mask is None:
            action_mask = torch.arange(full, device=actions.device) < width
        action_mask = torch.as_tensor(action_mask, dtype=torch.bool, device=actions.device).expand(actions.shape)
        bins = discretize(actions, self.config.n_bins)
        return torch.where(action_mask, bins, torch.full_like(bins, self.pad_id)), action_mask

    def _timesteps(self, timesteps: Tensor | np.ndarray) -> Tensor:
        t = torch.as_tensor(timesteps, dtype=torch.long, device=self._device())
        return t.clamp(0, self.config.max_timestep - 1)

    def embed(self, states: Tensor, action_tokens: Tensor, rtg: Tensor, timesteps: Tensor) -> Tensor:
        """Token embeddings (B, T * (2 + A), d) before the first block, in the module docstring's order."""
        b, t = action_tokens.shape[:2]
        if t > self.config.context:
            raise ValueError(f"{t} timesteps exceed the context of {self.config.context}")
        rtg = torch.as_tensor(rtg, dtype=torch.float32, device=self._device()).reshape(b, t, 1)
        tokens = torch.cat([
            self.embed_rtg(rtg / self.config.return_scale).unsqueeze(2),
            self.embed_state(self.pad_states(states)).unsqueeze(2),
            self.embed_action(action_tokens),
        ], dim=2)  # (B, T, 2 + A, d)
        tokens = tokens + self.embed_timestep(self._timesteps(timesteps)).unsqueeze(2) + self.embed_type.weight
        return tokens.reshape(b, t * self.tokens_per_step, -1)

    # ---- model ----------------------------------------------------------------------
    def forward_tokens(self, states: Tensor, action_tokens: Tensor, rtg: Tensor, timesteps: Tensor) -> Tensor:
        """Action-bin logits (B, T, A, n_bins) from already tokenised actions (B, T, A) long (PAD = n_bins)."""
        low = self.autocast_dtype is not None and self._device().type == "cuda"
        with torch.autocast("cuda", dtype=self.autocast_dtype or torch.bfloat16, enabled=low):
            x = self.drop(self.embed(states, action_tokens, rtg, timesteps))
            for block in self.blocks:
                x = block(x)
            b, t = action_tokens.shape[:2]
            x = self.ln_f(x).reshape(b, t, self.tokens_per_step, -1)[:, :, 1:-1]  # at s_t, a_t1, ..., a_t(A-1)
            # the head sees (tokens, d): one row per predicting token (the features a monitor ranks)
            return self.head(x.reshape(-1, x.shape[-1])).reshape(b, t, x.shape[2], -1).float()  # -> a_t1 .. a_tA

    def forward(self, states: Tensor, actions: Tensor, rtg: Tensor, timesteps: Tensor,
                action_mask: Tensor | None = None) -> Tensor:
        """Action-bin logits (B, T, A, n_bins); logits[:, t, k] predicts the bin of a_t(k+1) (0-based k)."""
        tokens, _ = self.action_tokens(actions, action_mask)
        return self.forward_tokens(states, tokens, rtg, timesteps)

    def loss(self, states: Tensor, actions: Tensor, rtg: Tensor, timesteps: Tensor,
             action_mask: Tensor | None = None) -> Tensor:
        """Mean cross-entropy of the action bins over valid (mask True) action dims of all timesteps."""
        tokens, mask = self.action_tokens(actions, action_mask)
        logits = self.forward_tokens(states, tokens, rtg, timesteps)
        targets = tokens.masked_fill(~mask, 0)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
        mask = mask.reshape(-1).float()
        return (ce * mask).sum() / mask.sum().clamp(min=1.0)

    def query_embedding(self, states: Tensor, timesteps: Tensor | None = None) -> Tensor:
        """L2M key-query input (B, d): mean over the context of the embedded states ``embed_state(s_t)``.

        Taken before the timestep/type embeddings and the first block, so it depends on the states only;
        ``timesteps`` is accepted for API symmetry and unused."""
        return self.embed_state(self.pad_states(states)).mean(dim=1)

    @torch.no_grad()
    def act_batch(self, states: Tensor | np.ndarray, actions: Tensor | np.ndarray, rtg: Tensor | np.ndarray,
                  timesteps: Tensor | np.ndarray, action_dims: int | Sequence[int] | Tensor,
                  temperature: float | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Actions (N, max(action_dims)) in [-1, 1] for the last timestep of N contexts of equal length T.

        ``states`` (N, T, S), ``rtg`` (N, T) in reward units and ``timesteps`` (N, T) include the current timestep;
        ``actions`` (N, T - 1, A') holds the earlier actions (a T-th row is ignored), A' >= max(action_dims).
        ``action_dims``: the env's action width per row (an int for all rows). Dimensions are decoded one at a time
        (argmax bin, or sampled from softmax(logits / temperature)), each fed back as the next token; a row's
        dimensions beyond its width stay PAD and are returned as 0. Returns bin centres (float32, model device)."""
        cfg, device = self.config, self._device()
        states = self.pad_states(states)
        n, t = states.shape[:2]
        dims = torch.as_tensor(action_dims, dtype=torch.long, device=device).reshape(-1).expand(n)
        if dims.numel() and (dims.min() < 1 or dims.max() > cfg.max_action_dim):
            raise ValueError(f"action dims must be in [1, {cfg.max_action_dim}], got {dims.tolist()}")
        width = int(dims.max())
        prev = torch.as_tensor(actions, dtype=torch.float32, device=device).reshape(n, -1, actions.shape[-1])
        prev = prev[:, : t - 1]
        if prev.shape[1] != t - 1:
            raise ValueError(f"need {t - 1} earlier actions for {t} states, got {prev.shape[1]}")
        if prev.shape[-1] < width:
            prev = F.pad(prev, (0, width - prev.shape[-1]))
        current = torch.zeros(n, 1, prev.shape[-1], device=device)
        mask = torch.arange(cfg.max_action_dim, device=device) < dims[:, None]  # (N, A) real dims per row
        tokens, _ = self.action_tokens(torch.cat([prev, current], dim=1), mask[:, None, :])
        tokens[:, -1] = self.pad_id
        rtg = torch.as_tensor(rtg, dtype=torch.float32, device=device).reshape(n, t)
        timesteps = torch.as_tensor(timesteps, device=device).reshape(n, t)
        for k in range(width):
            logits = self.forward_tokens(states, tokens, rtg, timesteps)[:, -1, k]  # (N, n_bins)
            if temperature is None:
                bin_id = logits.argmax(dim=-1)
            else:
                probs = F.softmax(logits / temperature, dim=-1)
                bin_id = torch.multinomial(probs, 1, generator=generator)[:, 0]
            tokens[:, -1, k] = torch.where(k < dims, bin_id, torch.full_like(bin_id, self.pad_id))
        last = tokens[:, -1, :width]
        return torch.where(last == self.pad_id, torch.zeros((), device=device), bin_centers(last, cfg.n_bins))

    @torch.no_grad()
    def act(self, states: Tensor, actions: Tensor, rtg: Tensor, timesteps: Tensor, action_dim: int,
            temperature: float | None = None, generator: torch.Generator | None = None) -> Tensor:
        """The action (action_dim,) in [-1, 1] for the last timestep of one context (batch 1 or unbatched).

        ``states`` (T, S), ``rtg`` (T,), ``timesteps`` (T,) include the current timestep; ``actions`` holds the
        T - 1 earlier actions (T - 1, action_dim) (its last row, if T rows are given, is ignored). ``act_batch``
        with N = 1."""
        if not 1 <= action_dim <= self.config.max_action_dim:
            raise ValueError(f"action_dim must be in [1, {self.config.max_action_dim}], got {action_dim}")
        states = torch.as_tensor(states, dtype=torch.float32)
        states = states.reshape(1, -1, states.shape[-1])
        t = states.shape[1]
        actions = torch.as_tensor(actions, dtype=torch.float32).reshape(1, -1, action_dim)
        return self.act_batch(states, actions, torch.as_tensor(rtg).reshape(1, t),
                              torch.as_tensor(timesteps).reshape(1, t), action_dim, temperature, generator)[0]


# ---- offline agent -------------------------------------------------------------------
def _episodes(datasets: Iterable[Any]) -> Iterable[dict[str, np.ndarray]]:
    """Episodes as dicts of observations, actions, rewards from minari datasets or episode dicts."""
    for data in datasets:
        if isinstance(data, dict):
            yield data
        else:
            for episode in data.iterate_episodes():
                yield {"observations": episode.observations, "actions": episode.actions, "rewards": episode.rewards}


@dataclass
class EpisodeData:
    """Prepared episodes of one task set, zero-padded to the longest, on the training device.

    ``states`` (E, L, state_dim) float32, ``actions`` (E, L, max_action_dim) float32 in [-1, 1], ``action_mask``
    (E, max_action_dim) bool (the env's real action dims), ``rtg`` (E, L) float32 return-to-go in reward units,
    ``lengths`` (E,) long env steps per episode (each >= context)."""

    states: Tensor
    actions: Tensor
    action_mask: Tensor
    rtg: Tensor
    lengths: Tensor

    def __len__(self) -> int:
        return int(self.lengths.shape[0])


class EpisodeBatch:
    """N episodes acted in lockstep (``L2MAgent.predict_batch``): per row the last ``context`` states (zero-padded
    to state_dim), actions, returns-to-go (reward units) and the step count, kept on the host."""

    def __init__(self, config: DTConfig, target_returns: Sequence[float], action_dims: Sequence[int]) -> None:
        n, t = len(target_returns), config.context
        if len(action_dims) != n:
            raise ValueError(f"need one action dim per episode: {n} targets, {len(action_dims)} action dims")
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
        self.rtg[rows, slot] = self.rtg_now[rows]
        self.steps[rows] += 1
        return slot + 1


class L2MAgent:
    """Offline training and acting of a ``DecisionTransformer`` with an SB3-like API (``learn``/``predict``/
    ``save``/``load``); not an SB3 algorithm (no env, no rollouts).

    Units: returns-to-go are sums of raw env rewards (the model divides by ``config.return_scale``); timesteps are
    0-based env-step indices within an episode.
    """

    def __init__(self, config: DTConfig | None = None, device: str | torch.device = "auto",
                 learning_rate: float = 1e-4, batch_size: int = 64, seed: int = 0, weight_decay: float = 0.01,
                 max_grad_norm: float = 0.25, precision: str = "fp32", cuda_graph: bool = True) -> None:
        """``precision="bf16"``: on CUDA the transformer's matmuls run in bf16 autocast (fp32 weights, optimizer
        and loss); on CPU it has no effect. ``cuda_graph``: on CUDA, ``train_step`` replays one captured CUDA graph
        per batch shape (forward, backward, clipping, AdamW: one launch instead of hundreds)."""
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
        self._graphs: dict[tuple[tuple[int, ...], ...], GraphedUpdate] = {}  # train_step's, per batch shapes
        torch.manual_seed(seed)
        self.model = DecisionTransformer(self.config).to(self.device)
        self.model.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        self.optimizer = self.make_optimizer(self.model.parameters(), learning_rate, weight_decay)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)  # batch sampling
        self.num_steps = 0
        self.reset(0.0, self.config.max_action_dim)

    def make_optimizer(self, params: Iterable[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
        """AdamW on ``params`` (on CUDA fused, one kernel per step, and capturable into a CUDA graph)."""
        cuda = self.device.type == "cuda"
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=cuda, capturable=cuda)

    # ---- data --------------------------------------------------------------------------
    def prepare_episodes(self, datasets: Sequence[Any]) -> EpisodeData:
        """The episodes of ``datasets`` (minari datasets, or episode dicts with observations (L or L+1, S),
        actions (L, A'), rewards (L,)) as one padded ``EpisodeData`` on the agent's device; returns-to-go from
        the rewards. Episodes shorter than ``context`` are skipped; ValueError if none is left or a width is too
        large for the model."""
        cfg = self.config
        kept = []
        for ep in _episodes(datasets):
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
                kept.append((states, actions, np.cumsum(rewards[::-1])[::-1].astype(np.float32)))
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
        loss tensor (no host sync). With ``cuda_graph`` the step is a graph replay (see ``agents.accel``)."""
        self.model.train()
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

    def learn(self, datasets: Sequence[Any] | EpisodeData, steps: int,
              callback: Callable[[int, float], bool | None] | None = None) -> L2MAgent:
        """``steps`` gradient steps on random context windows from ``datasets`` (see ``prepare_episodes``; an
        ``EpisodeData`` is used as is). ``callback(step, loss)`` runs after each step (it reads the loss, a host
        sync); returning False stops early."""
        data = datasets if isinstance(datasets, EpisodeData) else self.prepare_episodes(datasets)
        for step in range(steps):
            loss = self.train_step(self.sample_batch(data))
            if callback is not None and callback(step, loss.item()) is False:
                break
        self.model.eval()
        return self

    # ---- acting ------------------------------------------------------------------------
    def new_episodes(self, target_returns: Sequence[float], action_dims: Sequence[int]) -> EpisodeBatch:
        """Starts N episodes acted in lockstep by ``predict_batch``: desired returns (reward units) and each env's
        action width."""
        return EpisodeBatch(self.config, target_returns, action_dims)

    def predict_batch(self, episodes: EpisodeBatch, observations: np.ndarray, rewards: np.ndarray | None = None,
                      rows: np.ndarray | None = None, deterministic: bool = True, temperature: float = 1.0,
                      select: Callable[[Tensor, np.ndarray], Any] | None = None) -> np.ndarray:
        """Actions (n, max_action_dim) float32 for observations (n, S) of ``episodes``' ``rows`` (default: all;
        they must be in lockstep); row i's entries beyond its action width are 0. ``rewards`` (n,): rewards of the
        previous actions (ignored at the first step). ``select(states, rows)``, if given, returns a context manager
        the model acts under (e.g. a modulation-pool selection), from the context states (n, T, state_dim) on the
        device. Sampled at ``temperature`` unless ``deterministic``."""
        rows = np.arange(len(episodes)) if rows is None else np.asarray(rows, dtype=np.int64)
        rewards = np.zeros(len(rows)) if rewards is None else rewards
        t = episodes.push(rows, observations, rewards)
        count = int(episodes.steps[rows[0]])

        def window(buf: np.ndarray) -> Tensor:
            return torch.as_tensor(buf[rows, :t], device=self.device)

        states, rtg = window(episodes.states), window(episodes.rtg)
        timesteps = torch.arange(count - t, count, device=self.device).expand(len(rows), t)
        self.model.eval()
        with contextlib.nullcontext() if select is None else select(states, rows):
            actions = self.model.act_batch(states, window(episodes.actions)[:, : t - 1], rtg, timesteps,
                                           torch.as_tensor(episodes.action_dims[rows]),
                                           temperature=None if deterministic else temperature)
        out = np.zeros((len(rows), self.config.max_action_dim), np.float32)
        out[:, : actions.shape[1]] = actions.cpu().numpy()
        episodes.actions[rows, t - 1] = out
        return out

    def reset(self, target_return: float, action_dim: int) -> None:
        """Starts an episode: ``target_return`` is the desired return (raw reward units); ``action_dim`` the env's."""
        if not 1 <= action_dim <= self.config.max_action_dim:
            raise ValueError(f"action_dim must be in [1, {self.config.max_action_dim}], got {action_dim}")
        self.action_dim = action_dim
        self._episode = self.new_episodes([target_return], [action_dim])

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
        """``torch.save`` of the config, hyper-parameters, model and optimizer state."""
        torch.save({"config": asdict(self.config), "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(), "num_steps": self.num_steps,
                    "hparams": {"learning_rate": self.learning_rate, "batch_size": self.batch_size,
                                "seed": self.seed, "weight_decay": self.weight_decay,
                                "max_grad_norm": self.max_grad_norm, "precision": self.precision,
                                "cuda_graph": self.cuda_graph}}, path)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "auto") -> L2MAgent:
        """An agent from ``save``'s file (in eval mode), on ``device``."""
        data = torch.load(path, map_location="cpu", weights_only=False)
        agent = cls(DTConfig(**data["config"]), device=device, **data["hparams"])
        agent.model.load_state_dict(data["model"])
        keep_own_optimizer_flags(data["optimizer"], agent.optimizer)  # this device's flags, not the saver's
        agent.optimizer.load_state_dict(data["optimizer"])
        agent.num_steps = data["num_steps"]
        agent.model.eval()
        return agent

