"""DrQ-v2's networks (Yarats et al. 2021) in plain torch: the conv encoder, the actor and the twin-Q critic.

Shapes: observations are uint8 (B, C, H, W) with C = 3 x frame stack; the encoder scales pixels to [-0.5, 0.5] and
gives (B, repr_dim) features, repr_dim = 32 x 35 x 35 for 84 x 84 frames (4 convs of 32 channels, 3x3, the first with
stride 2). Actor and critic each start with a trunk Linear -> LayerNorm -> Tanh to ``feature_dim`` (DrQ-v2: 50), then
MLPs of ``hidden_dim`` (DrQ-v2: 1024). Actions are (B, A) in [-1, 1]; Q values (B, 1). With bf16 features (``Encoder.
autocast_dtype``, CUDA only) trunks and hidden layers run in bf16 autocast and output layers in fp32.

torch only: the SB3 policy and algorithm that use these live in ``plasticrl.agents.drq.algorithm``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Encoder(nn.Module):
    """uint8 (B, C, H, W) -> float features (B, 32 * h' * w'); pixels scaled to [-0.5, 0.5]."""

    def __init__(self, observation_shape: tuple[int, int, int], channels: int = 32):
        super().__init__()
        self.autocast_dtype: torch.dtype | None = None  # e.g. torch.bfloat16: convolutions in bf16 (CUDA only)
        c = observation_shape[0]
        self.convnet = nn.Sequential(
            nn.Conv2d(c, channels, 3, stride=2), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=1), nn.ReLU(),
        )
        with torch.no_grad():
            self.repr_dim = int(self.convnet(torch.zeros(1, *observation_shape)).numel())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        low = obs.is_cuda and self.autocast_dtype is not None
        if obs.is_cuda:  # NHWC (cuDNN's fastest layout) set on the uint8 input, 4x cheaper than on floats
            obs = obs.contiguous(memory_format=torch.channels_last)
        x = obs.to(self.autocast_dtype if low else torch.float32) / 255.0 - 0.5
        with torch.autocast("cuda", dtype=self.autocast_dtype or torch.bfloat16, enabled=low):
            x = self.convnet(x)
        return x.flatten(1)  # bf16 features stay bf16: the trunks and hidden layers then run in bf16 too


def trunk(repr_dim: int, feature_dim: int) -> nn.Sequential:
    """Linear -> LayerNorm -> Tanh, the DrQ-v2 bottleneck."""
    return nn.Sequential(nn.Linear(repr_dim, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())


def low_precision(h: torch.Tensor) -> torch.autocast:
    """bf16 autocast on CUDA when the encoder features ``h`` are bf16 (``precision="bf16"``), else a no-op: the
    trunks and hidden MLP layers then run their matmuls in bf16 with fp32 weights (see ``run_mlp``)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=h.dtype == torch.bfloat16)


def run_mlp(net: nn.Sequential, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``net`` (an ``mlp``) on ``x``: hidden layers in bf16 when the features ``h`` are bf16 (``low_precision``), the
    output Linear always in fp32: Q values and action means need fp32 resolution (bf16 keeps 8 significant bits,
    steps of 0.5 between 64 and 128, the range of DMC Q values)."""
    with low_precision(h):
        y = net[:-1](x)
    return net[-1](y.float())


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear -> ReLU -> Linear -> ReLU -> Linear: (B, in_dim) -> (B, out_dim)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.ReLU(),
        nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
        nn.Linear(hidden_dim, out_dim),
    )


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy on encoder features (B, repr_dim) -> actions (B, A) in [-1, 1]."""

    def __init__(self, repr_dim: int, action_dim: int, feature_dim: int, hidden_dim: int,
                 log_std_bounds: tuple[float, float] = (-10.0, 2.0)):
        super().__init__()
        self.trunk = trunk(repr_dim, feature_dim)
        self.policy = mlp(feature_dim, hidden_dim, 2 * action_dim)
        self.log_std_bounds = log_std_bounds

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log std (B, A) of the pre-tanh Gaussian."""
        with low_precision(h):
            x = self.trunk(h)
        mu, log_std = run_mlp(self.policy, x.float(), h).chunk(2, dim=-1)
        lo, hi = self.log_std_bounds
        log_std = lo + 0.5 * (hi - lo) * (torch.tanh(log_std) + 1.0)
        return mu, log_std

    def action_log_prob(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised sample (B, A) and its log-probability (B, 1) under the squashed Gaussian."""
        mu, log_std = self(h)
        std = log_std.exp()
        u = mu + std * torch.randn_like(mu)
        action = torch.tanh(u)
        gauss = -0.5 * ((u - mu) / std).pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        log_prob = (gauss - 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1, keepdim=True)
        return action, log_prob

    def mode(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self(h)[0])


class Critic(nn.Module):
    """Twin Q: encoder features (B, repr_dim) and actions (B, A) -> (q1, q2), each (B, 1).

    ``fused_heads`` (set by ``DrQ(fused_q_heads=True)``): both heads run as batched matmuls (``twin_heads``) instead
    of two MLPs, on the same ``q1``/``q2`` parameters: the same values up to float rounding. Falls back to the two
    MLPs while any hook could see the heads (the plasticity monitor probes by hooks) or a layer is not a plain
    Linear/ReLU (``_fused``).
    """

    def __init__(self, repr_dim: int, action_dim: int, feature_dim: int, hidden_dim: int):
        super().__init__()
        self.trunk = trunk(repr_dim, feature_dim)
        self.q1 = mlp(feature_dim + action_dim, hidden_dim, 1)
        self.q2 = mlp(feature_dim + action_dim, hidden_dim, 1)
        self.fused_heads = False

    def _features(self, h: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        with low_precision(h):
            return torch.cat([self.trunk(h).float(), action], dim=-1)

    def _fused(self) -> bool:
        """Fused only for plain Linear/ReLU heads with no hooks on them (module or global): a hook, e.g. the
        plasticity monitor's, or a wrapped layer gets the two MLPs it expects."""
        if not self.fused_heads or nn.modules.module._global_forward_hooks or \
                nn.modules.module._global_forward_pre_hooks:
            return False
        layers = (*self.q1, *self.q2)
        return all(type(m) in (nn.Linear, nn.ReLU) for m in layers) and not any(
            m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
            for m in (self.q1, self.q2, *layers))

    def twin_heads(self, x: torch.Tensor, h: torch.Tensor, fau: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Both heads on ``x`` (B, in) at once: each Linear's weights of q1 and q2 stacked, (2, out, in), and one
        ``baddbmm`` on (2, B, in). Returns q (2, B, 1) and, with ``fau``, the fraction of active (> 0) hidden ReLU
        outputs of both heads (0-dim, as ``forward_with_fau``), else None. Hidden layers in bf16 when the features
        ``h`` are bf16, the output layer in fp32, as ``run_mlp``."""

        def linear(i: int, y: torch.Tensor) -> torch.Tensor:
            w = torch.stack([self.q1[i].weight, self.q2[i].weight])  # (2, out, in)
            b = torch.stack([self.q1[i].bias, self.q2[i].bias])  # (2, out)
            return torch.baddbmm(b.unsqueeze(1), y, w.transpose(1, 2))  # (2, B, out)

        active: list[torch.Tensor] = []  # per ReLU: active entries over both heads, with fau
        total = 0
        y = x.expand(2, *x.shape)
        with low_precision(h):
            for i, layer in enumerate(self.q1[:-1]):
                y = linear(i, y) if isinstance(layer, nn.Linear) else layer(y)
                if fau and isinstance(layer, nn.ReLU):
                    active.append((y > 0).sum())
                    total += y.numel()
        q = linear(len(self.q1) - 1, y.float())
        return q, (torch.stack(active).sum() / total if fau else None)

    def forward(self, h: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._features(h, action)
        if self._fused():
            q, _ = self.twin_heads(x, h)
            return q[0], q[1]
        return run_mlp(self.q1, x, h), run_mlp(self.q2, x, h)

    def forward_with_fau(self, h: torch.Tensor, action: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Like ``forward``, plus the fraction of active units (> 0) over both heads' hidden ReLU outputs (0-dim),
        the signal of Adaptive RR (Ma et al. 2024). Computed on the device, no host sync."""
        x = self._features(h, action)
        if self._fused():
            q, fau = self.twin_heads(x, h, fau=True)
            return q[0], q[1], fau
        active = torch.zeros((), device=h.device)
        total = 0
        outs = []
        for head in (self.q1, self.q2):
            y = x
            with low_precision(h):
                for layer in head[:-1]:
                    y = layer(y)
                    if isinstance(layer, nn.ReLU):
                        active = active + (y > 0).sum()
                        total += y.numel()
            outs.append(head[-1](y.float()))  # the output Linear in fp32, as in run_mlp
        return outs[0], outs[1], active / total
