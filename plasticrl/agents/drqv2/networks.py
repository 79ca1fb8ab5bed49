"""DrQ-v2's deterministic actor and its truncated-normal exploration noise (Yarats et al. 2021; ``Actor`` of
facebookresearch/drqv2 ``drqv2.py`` and ``TruncatedNormal`` of its ``utils.py``), in plain torch.

The encoder and the twin-Q critic are DrQ's (``plasticrl.agents.drq.networks``), which are DrQ-v2's. Shapes:
encoder features (B, repr_dim) in, actions (B, A) in [-1, 1] out.
"""

from __future__ import annotations

import torch
from torch import nn

from plasticrl.agents.drq.networks import low_precision, mlp, run_mlp, trunk

ACTION_EPS = 1e-6  # TruncatedNormal's eps: samples are clamped to [-1 + eps, 1 - eps]


def truncated_normal_sample(mean: torch.Tensor, std: torch.Tensor | float, clip: float | None = None) -> torch.Tensor:
    """DrQ-v2's ``TruncatedNormal(mean, std).sample(clip)``: ``mean + clamp(std * N(0, 1), -clip, clip)`` (no clamp
    of the noise for ``clip=None``), then clamped to [-1 + 1e-6, 1 - 1e-6] with a straight-through gradient (the
    gradient with respect to ``mean`` is 1 even where the clamp is active, as in DrQ-v2).

    :param mean: (B, A) in [-1, 1].
    :param std: the noise scale, a 0-dim tensor (on ``mean``'s device) or a float.
    :param clip: the largest absolute noise; None: unclipped.
    """
    noise = torch.randn_like(mean) * std
    if clip is not None:
        noise = noise.clamp(-clip, clip)
    x = mean + noise
    clamped = x.clamp(-1.0 + ACTION_EPS, 1.0 - ACTION_EPS)
    return x - x.detach() + clamped.detach()


class DeterministicActor(nn.Module):
    """DrQ-v2's actor: trunk (Linear -> LayerNorm -> Tanh to ``feature_dim``), then an MLP (``hidden_dim`` x 2) to
    |A|, then tanh. Encoder features (B, repr_dim) -> action means (B, A) in [-1, 1]. ``hidden_norm`` and
    ``activation`` are ``mlp``'s (DrQ-v2: ``none``, ``relu``)."""

    def __init__(self, repr_dim: int, action_dim: int, feature_dim: int, hidden_dim: int, *,
                 hidden_norm: str = "none", activation: str = "relu"):
        super().__init__()
        self.trunk = trunk(repr_dim, feature_dim)
        self.policy = mlp(feature_dim, hidden_dim, action_dim, hidden_norm, activation)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """tanh(mu(h)), (B, A): the deterministic action (no noise)."""
        with low_precision(h):
            x = self.trunk(h)
        return torch.tanh(run_mlp(self.policy, x.float(), h))

    def sample(self, h: torch.Tensor, std: torch.Tensor | float, clip: float | None = None) -> torch.Tensor:
        """tanh(mu(h)) plus truncated-normal noise of scale ``std`` (see ``truncated_normal_sample``), (B, A)."""
        return truncated_normal_sample(self(h), std, clip)
