"""The multi-domain Decision Transformer of L2M (Schmied et al., "Learning to Modulate pre-trained Models in RL",
NeurIPS 2023): the network, torch only (its offline agent is ``plasticrl.agents.l2m.agent``).

Token layout (per timestep ``t``, ``A = max_action_dim``)::

    [R_t, s_t, a_t1, a_t2, ..., a_tA]          -> 2 + A tokens per timestep, T * (2 + A) in the sequence

* ``R_t``: return-to-go (sum of the episode's rewards from ``t`` on) already divided by its domain's return scale
  (the agent divides; L2M: 200 for Meta-World, 100 for DMC), embedded with a Linear.
* ``s_t``: the state zero-padded to ``state_dim`` (39, Meta-World's width; DMC states are padded), a Linear.
* ``a_tk``: action dimension ``k`` discretised into ``n_bins`` uniform bins over [-1, 1] (``discretize``), an
  ``nn.Embedding(n_bins + 1, d)``; action dimensions beyond the env's ``action_dim`` use the PAD id ``n_bins``.

Each token also gets a learned timestep embedding (``t`` is the env step index inside the episode, 0-based,
clamped to ``max_timestep - 1``) and a token-type embedding (``2 + A`` types: rtg, state, a_1..a_A), then the
embedding LayerNorm ``embed_ln`` (as Hugging Face's Decision Transformer, which L2M builds on, normalises its stacked
inputs). Pre-LayerNorm causal blocks over the flattened sequence; the attention Linears are named
``q_proj``/``k_proj``/``v_proj``/``out_proj`` and the feed-forward ones ``fc1``/``fc2``, the names
``plasticrl.modulation``'s placements look for. The head ``Linear(d, n_bins)`` predicts ``a_tk``'s bin from the
output at the token before it: ``s_t`` predicts ``a_t1``, ``a_t1`` predicts ``a_t2``, ...

The pool's query (``query_embedding``) is L2M's: the mean over the context of the state tokens as the first block
sees them, ``embed_ln(embed_state(s_t) + embed_timestep(t) + type_s)`` (ml-jku/L2M
``src/algos/models/online_decision_transformer_model.py``: ``compute_learnable_prompt_inputs`` hands the stacked,
``embed_ln``-ed inputs to the prompt, which takes the state tokens and their mean, ``src/algos/prompt/base_prompt.py``
``aggregate_embeds`` with ``agg_token: s``, ``embed_key: mean``). L2M's tokens have no type embedding; here the state
type's is a constant added to every state token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DTConfig", "DecisionTransformer", "bin_centers", "discretize"]


@dataclass
class DTConfig:
    """Decision-Transformer sizes. ``context`` counts timesteps (each ``2 + max_action_dim`` tokens);
    ``max_timestep`` is the size of the timestep embedding (env steps; later steps share the last entry)."""

    state_dim: int = 39
    max_action_dim: int = 6
    n_bins: int = 64
    context: int = 5
    d_model: int = 128
    n_layers: int = 3
    n_heads: int = 4
    dropout: float = 0.1
    max_timestep: int = 1000

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if min(self.state_dim, self.max_action_dim, self.n_bins, self.context, self.max_timestep) < 1:
            raise ValueError(f"sizes must be >= 1: {self}")


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
    A' <= max_action_dim, ``rtg`` (B, T) or (B, T, 1) scaled returns-to-go, ``timesteps`` (B, T) long env-step
    indices,
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
        self.embed_ln = nn.LayerNorm(d)
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
        """Token embeddings (B, T * (2 + A), d) before the first block (after ``embed_ln``, before dropout), in the
        module docstring's order."""
        b, t = action_tokens.shape[:2]
        if t > self.config.context:
            raise ValueError(f"{t} timesteps exceed the context of {self.config.context}")
        rtg = torch.as_tensor(rtg, dtype=torch.float32, device=self._device()).reshape(b, t, 1)
        tokens = torch.cat([
            self.embed_rtg(rtg).unsqueeze(2),
            self.embed_state(self.pad_states(states)).unsqueeze(2),
            self.embed_action(action_tokens),
        ], dim=2)  # (B, T, 2 + A, d)
        tokens = tokens + self.embed_timestep(self._timesteps(timesteps)).unsqueeze(2) + self.embed_type.weight
        return self.embed_ln(tokens).reshape(b, t * self.tokens_per_step, -1)

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

    def query_embedding(self, states: Tensor, timesteps: Tensor) -> Tensor:
        """L2M's key query (B, d) for states (B, T, S) at env steps ``timesteps`` (B, T): the mean over the T state
        tokens as the first block sees them, ``embed_ln(embed_state(s_t) + embed_timestep(t) + type_s)`` (see the
        module docstring for L2M's code)."""
        tokens = self.embed_state(self.pad_states(states)) + self.embed_timestep(self._timesteps(timesteps))
        return self.embed_ln(tokens + self.embed_type.weight[1]).mean(dim=1)

    @torch.no_grad()
    def act_batch(self, states: Tensor | np.ndarray, actions: Tensor | np.ndarray, rtg: Tensor | np.ndarray,
                  timesteps: Tensor | np.ndarray, action_dims: int | Sequence[int] | Tensor,
                  temperature: float | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Actions (N, max(action_dims)) in [-1, 1] for the last timestep of N contexts of equal length T.

        ``states`` (N, T, S), ``rtg`` (N, T) scaled returns-to-go and ``timesteps`` (N, T) include the current
        timestep; ``actions`` (N, T - 1, A') holds the earlier actions (a T-th row is ignored), A' >= max(action_dims).
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
