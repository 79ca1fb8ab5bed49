"""DrQ-v2's networks (Yarats et al. 2021) in plain torch: the conv encoder, the actor and the twin-Q critic.

Shapes: observations are uint8 (B, C, H, W) with C = 3 x frame stack; the encoder scales pixels to [-0.5, 0.5] and
gives (B, repr_dim) features, repr_dim = 32 x 35 x 35 for 84 x 84 frames (4 convs of 32 channels, 3x3, the first with
stride 2). Actor and critic each start with a trunk Linear -> LayerNorm -> Tanh to ``feature_dim`` (DrQ-v2: 50), then
MLPs of ``hidden_dim`` (DrQ-v2: 1024). Actions are (B, A) in [-1, 1]; Q values (B, 1). With bf16 features (``Encoder.
autocast_dtype``, CUDA only) trunks and hidden layers run in bf16 autocast and output layers in fp32.

The MLPs' architectural options against plasticity loss (``mlp``): ``hidden_norm="layernorm"`` (a LayerNorm after
each hidden Linear, before its activation; Lyle et al. 2023, 2024) and ``activation="crelu"`` (``CReLU``, Abbas et al.
2023). A head may also be an injected head (plasticity injection: a module with ``terms()``, see ``head_terms``).

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


HIDDEN_NORMS = ("none", "layernorm")  # mlp(hidden_norm=...): none, or a LayerNorm before each hidden activation
ACTIVATIONS = ("relu", "crelu")  # mlp(activation=...): the hidden activation


class CReLU(nn.Module):
    """Concatenated ReLU (Abbas et al. 2023, "Loss of Plasticity in Continual Deep Reinforcement Learning"):
    (..., n) -> (..., 2n), ``cat(relu(x), relu(-x))`` on the last dim. Exactly one of each pair is > 0 unless
    ``x == 0``, so a unit never goes dead. One ``F.relu`` call on ``cat(x, -x)``, so ``plasticrl.capture`` records
    it as one relu activation of width 2n."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(torch.cat([x, -x], dim=-1))


RECTIFIERS = (nn.ReLU, CReLU)  # the hidden activations whose active (> 0) outputs the critic FAU counts


def head_terms(head: nn.Module) -> list[tuple[float, nn.Module]] | None:
    """The signed terms of an injected head (plasticity injection, ``plasticrl.interventions.injection``: a module
    with a ``terms()`` method giving ``[(1.0, old), (1.0, new), (-1.0, new_frozen)]``, each an MLP like the head it
    replaced), whose output is ``old(x) + (new(x) - new_frozen(x))``; None for a plain head. Duck-typed: no import."""
    terms = getattr(head, "terms", None)
    return list(terms()) if callable(terms) else None


def low_precision(h: torch.Tensor) -> torch.autocast:
    """bf16 autocast on CUDA when the encoder features ``h`` are bf16 (``precision="bf16"``), else a no-op: the
    trunks and hidden MLP layers then run their matmuls in bf16 with fp32 weights (see ``run_mlp``)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=h.dtype == torch.bfloat16)


def run_mlp(net: nn.Module, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``net`` (an ``mlp``, or an injected head of them) on ``x``: hidden layers in bf16 when the features ``h`` are
    bf16 (``low_precision``), the output Linear always in fp32: Q values and action means need fp32 resolution (bf16
    keeps 8 significant bits, steps of 0.5 between 64 and 128, the range of DMC Q values)."""
    return run_head(net, x, h)


def run_head(net: nn.Module, x: torch.Tensor, h: torch.Tensor,
             counts: list[tuple[torch.Tensor, int]] | None = None) -> torch.Tensor:
    """``run_mlp``, and with ``counts`` a list: appends (active entries (> 0), entries) of every hidden rectifier
    output (``RECTIFIERS``) it computes, of every term of an injected head. An injected head's output is the first
    term plus the sum of the others (``old + (new - new_frozen)``, exactly ``old`` at injection)."""
    terms = head_terms(net)
    if terms is not None:
        outs = [sign * run_head(term, x, h, counts) for sign, term in terms]
        return outs[0] + sum(outs[1:])
    y = x
    with low_precision(h):
        for layer in net[:-1]:
            y = layer(y)
            if counts is not None and isinstance(layer, RECTIFIERS):
                counts.append(((y > 0).sum(), y.numel()))
    return net[-1](y.float())


def mlp(in_dim: int, hidden_dim: int, out_dim: int, hidden_norm: str = "none", activation: str = "relu"
        ) -> nn.Sequential:
    """Linear -> [LayerNorm] -> act -> Linear -> [LayerNorm] -> act -> Linear: (B, in_dim) -> (B, out_dim).

    :param hidden_norm: ``"none"`` or ``"layernorm"``: a LayerNorm(hidden_dim) after each hidden Linear.
    :param activation: ``"relu"`` or ``"crelu"`` (``CReLU``: the Linear after it takes 2 x hidden_dim inputs).
    """
    if hidden_norm not in HIDDEN_NORMS:
        raise ValueError(f"hidden_norm={hidden_norm!r}: allowed are {', '.join(map(repr, HIDDEN_NORMS))}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r}: allowed are {', '.join(map(repr, ACTIVATIONS))}")
    width = 2 * hidden_dim if activation == "crelu" else hidden_dim  # what the next Linear sees

    def hidden(n_in: int) -> list[nn.Module]:
        norm = [nn.LayerNorm(hidden_dim)] if hidden_norm == "layernorm" else []
        return [nn.Linear(n_in, hidden_dim), *norm, CReLU() if activation == "crelu" else nn.ReLU()]

    return nn.Sequential(*hidden(in_dim), *hidden(width), nn.Linear(width, out_dim))


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy on encoder features (B, repr_dim) -> actions (B, A) in [-1, 1]."""

    def __init__(self, repr_dim: int, action_dim: int, feature_dim: int, hidden_dim: int,
                 log_std_bounds: tuple[float, float] = (-10.0, 2.0), *, hidden_norm: str = "none",
                 activation: str = "relu"):
        super().__init__()
        self.trunk = trunk(repr_dim, feature_dim)
        self.policy = mlp(feature_dim, hidden_dim, 2 * action_dim, hidden_norm, activation)
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
    Linear/ReLU (``_fused``: LayerNorm and CReLU heads run unfused). Injected heads (``head_terms``) are fused too,
    all their terms stacked, when every term is a plain Linear/ReLU MLP of the same shapes.
    """

    def __init__(self, repr_dim: int, action_dim: int, feature_dim: int, hidden_dim: int, *,
                 hidden_norm: str = "none", activation: str = "relu"):
        super().__init__()
        self.trunk = trunk(repr_dim, feature_dim)
        self.q1 = mlp(feature_dim + action_dim, hidden_dim, 1, hidden_norm, activation)
        self.q2 = mlp(feature_dim + action_dim, hidden_dim, 1, hidden_norm, activation)
        self.fused_heads = False

    def _features(self, h: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        with low_precision(h):
            return torch.cat([self.trunk(h).float(), action], dim=-1)

    def _stack_terms(self) -> tuple[list[tuple[float, nn.Module]], list[tuple[float, nn.Module]]]:
        """The signed MLPs whose outputs make up q1 and q2: ``[(1.0, q1)]`` for a plain head, its ``terms()`` for an
        injected one."""
        return head_terms(self.q1) or [(1.0, self.q1)], head_terms(self.q2) or [(1.0, self.q2)]

    def _fused(self) -> bool:
        """Fused only for heads (or injected heads' terms) that are plain Linear/ReLU Sequentials of equal shapes,
        with no hooks on them (module or global): a hook, e.g. the plasticity monitor's, or another layer gets the
        plain path it expects."""
        if not self.fused_heads or nn.modules.module._global_forward_hooks or \
                nn.modules.module._global_forward_pre_hooks:
            return False
        terms1, terms2 = self._stack_terms()
        nets = [net for _, net in terms1 + terms2]
        if not all(type(net) is nn.Sequential and len(net) == len(nets[0]) for net in nets):
            return False
        for layers in zip(*nets):  # position by position over all nets
            kinds = {type(m) for m in layers}
            if kinds == {nn.Linear}:
                if any(m.bias is None or m.weight.shape != layers[0].weight.shape for m in layers):
                    return False
            elif kinds != {nn.ReLU}:
                return False
        if type(nets[0][-1]) is not nn.Linear:
            return False
        modules = (self.q1, self.q2, *nets, *(m for net in nets for m in net))
        return not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                       for m in modules)

    def twin_heads(self, x: torch.Tensor, h: torch.Tensor, fau: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Both heads on ``x`` (B, in) at once: each Linear's weights of the K nets stacked, (K, out, in), and one
        ``baddbmm`` on (K, B, in); K = 2 for plain heads (q1, q2), 3 for each injected head (its terms, summed as
        ``run_head`` does). Returns q (2, B, 1) and, with ``fau``, the fraction of active (> 0) hidden ReLU outputs
        of all nets (0-dim, as ``forward_with_fau``), else None. Hidden layers in bf16 when the features ``h`` are
        bf16, the output layer in fp32, as ``run_mlp``."""
        terms1, terms2 = self._stack_terms()
        nets = [net for _, net in terms1 + terms2]

        def linear(i: int, y: torch.Tensor) -> torch.Tensor:
            w = torch.stack([net[i].weight for net in nets])  # (K, out, in)
            b = torch.stack([net[i].bias for net in nets])  # (K, out)
            return torch.baddbmm(b.unsqueeze(1), y, w.transpose(1, 2))  # (K, B, out)

        active: list[torch.Tensor] = []  # per ReLU: active entries over all nets, with fau
        total = 0
        y = x.expand(len(nets), *x.shape)
        with low_precision(h):
            for i, layer in enumerate(nets[0][:-1]):
                y = linear(i, y) if isinstance(layer, nn.Linear) else layer(y)
                if fau and isinstance(layer, nn.ReLU):
                    active.append((y > 0).sum())
                    total += y.numel()
        q = linear(len(nets[0]) - 1, y.float())
        if terms1[0][1] is not self.q1 or terms2[0][1] is not self.q2:  # an injected head: its terms summed as
            # run_head does (the first plus the sum of the others)
            outs = [sign * q[k] for k, (sign, _) in enumerate(terms1 + terms2)]
            n1 = len(terms1)
            q = torch.stack([outs[0] + sum(outs[1:n1]), outs[n1] + sum(outs[n1 + 1:])])
        return q, (torch.stack(active).sum() / total if fau else None)

    def forward(self, h: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._features(h, action)
        if self._fused():
            q, _ = self.twin_heads(x, h)
            return q[0], q[1]
        return run_mlp(self.q1, x, h), run_mlp(self.q2, x, h)

    def forward_with_fau(self, h: torch.Tensor, action: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Like ``forward``, plus the fraction of active units (> 0) over both heads' hidden rectifier outputs
        (``RECTIFIERS``: ReLU, and CReLU's 2 x hidden outputs; every term of an injected head) (0-dim), the signal
        of Adaptive RR (Ma et al. 2024). Computed on the device, no host sync."""
        x = self._features(h, action)
        if self._fused():
            q, fau = self.twin_heads(x, h, fau=True)
            return q[0], q[1], fau
        counts: list[tuple[torch.Tensor, int]] = []
        q1, q2 = run_head(self.q1, x, h, counts), run_head(self.q2, x, h, counts)
        return q1, q2, torch.stack([a for a, _ in counts]).sum() / sum(n for _, n in counts)
