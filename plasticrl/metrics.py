"""Plasticity metrics: pure functions on tensors.

Every function works on any device, returns tensors on the input's device,
computes in float32 and never synchronises with the host (no ``.item()``,
``float()``, ``.cpu()``, ``if tensor:``); the caller decides when to transfer.
Exceptions inside :func:`singular_values`: ``torch.linalg.svdvals`` itself
synchronises on CUDA (a torch implementation detail), and its CPU fallback
(taken only after an SVD failure on an accelerator) copies the matrix to the host.

Conventions:
    activations: ``(batch, units)`` or ``(batch, channels, *spatial)``; dim 1
        is the unit dimension (a conv channel is one unit). The functions that
        take activations also take a list of such tensors, one per layer (or
        per activation call, as ``plasticrl.capture`` records them): the layers
        are pooled, each scored on its own (a unit is dormant relative to its
        own layer) and counted together (units over all layers, entries over
        all layers), as the monitor's group values and the Adaptive RR signal
        over both Q heads' hidden ReLUs.
    features: ``(batch, ...)``; flattened to ``(batch, dim)`` per sample.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "dormant_mask",
    "dormant_ratio",
    "dormant_scores",
    "effective_rank",
    "effective_rank_from_singular_values",
    "fau",
    "feature_norm",
    "grad_norm",
    "singular_values",
    "srank",
    "srank_from_singular_values",
    "weight_norm",
]

logger = logging.getLogger(__name__)
_svd_fallback_warned = False

# Smallest positive normal float32: dividing by max(x, _TINY) is exact for any
# normal x > 0 and turns 0 / 0 into 0 / _TINY = 0 instead of NaN.
_TINY = torch.finfo(torch.float32).tiny


Activations = Tensor | Sequence[Tensor]


def _layers(activations: Activations) -> list[Tensor]:
    """One tensor -> ``[it]``; a list or tuple of tensors -> itself (not empty)."""
    if isinstance(activations, Tensor):
        return [activations]
    layers = list(activations)
    if not layers:
        raise ValueError("activations: an empty list")
    for t in layers:
        if not isinstance(t, Tensor):
            raise TypeError(f"activations: a tensor or a list of tensors, got an element {type(t).__name__}")
    return layers


def _unit_reduce_dims(activations: Tensor) -> list[int]:
    """All dims except dim 1 (the unit / channel dim)."""
    if activations.dim() < 2:
        raise ValueError(f"activations must be (batch, units, ...), got shape {tuple(activations.shape)}")
    return [d for d in range(activations.dim()) if d != 1]


def _as_matrix(features: Tensor) -> Tensor:
    """``(batch, ...)`` -> float32 ``(batch, dim)``."""
    if features.dim() < 1:
        raise ValueError("features must have a batch dimension")
    return features.detach().reshape(features.shape[0], -1).float()


def _layer_scores(activations: Tensor) -> Tensor:
    per_unit = activations.detach().float().abs().mean(dim=_unit_reduce_dims(activations))
    return per_unit / per_unit.mean().clamp_min(_TINY)


def dormant_scores(activations: Activations) -> Tensor:
    """Normalised activity score per unit, shape ``(units,)``, float32.

    ``s_i = mean_x |h_i(x)| / mean_j(mean_x |h_j(x)|)``, the mean taken over the
    batch and, for conv maps, over all spatial positions (Sokar et al. 2023).
    A layer whose activations are all zero gets all-zero scores (not NaN).
    A list of layers gives each layer's scores (normalised by that layer's
    mean), concatenated in list order: ``(sum of units,)``.
    """
    layers = _layers(activations)
    if len(layers) == 1:
        return _layer_scores(layers[0])
    return torch.cat([_layer_scores(t) for t in layers])


def dormant_mask(activations: Activations, tau: float = 0.025) -> Tensor:
    """Bool ``(units,)``: ``dormant_scores <= tau``. All-zero layer: all dormant."""
    return dormant_scores(activations) <= tau


def dormant_ratio(activations: Activations, tau: float = 0.025) -> Tensor:
    """Fraction of dormant units in ``[0, 1]``, 0-dim float32; of a list: dormant units / units over all layers."""
    return dormant_mask(activations, tau).float().mean()


def fau(activations: Activations) -> Tensor:
    """Fraction of active units (Ma et al. 2024), 0-dim float32.

    Share of all entries (batch x units x spatial) that are ``> 0``; of a list:
    active entries / entries over all the tensors (so a wider or a more often
    called layer weighs more). "Active = output > 0" is meaningful for the
    rectifier-like activations only (``plasticrl.capture.FAU_KINDS``: the ReLU
    and ELU families, GELU, SiLU, ...); Tanh gives the share of positive
    halves and Sigmoid / Softplus always 1.0. This function cannot tell which
    activation made its input: pass it the right ones (the monitor and
    ``Captured.outputs(fau_only=True)`` do).
    """
    layers = _layers(activations)
    if len(layers) == 1:
        return (layers[0].detach() > 0).float().mean()
    active = torch.stack([(t.detach() > 0).sum() for t in layers]).sum()
    return active.float() / sum(t.numel() for t in layers)


def singular_values(features: Tensor) -> Tensor:
    """Singular values of ``features`` flattened to ``(batch, dim)``, float32, descending.

    Shape ``(min(batch, dim),)`` on the input's device. If ``torch.linalg.svdvals``
    raises on a non-CPU tensor (e.g. a cuSOLVER error / non-convergence) the SVD
    is recomputed on the CPU for that call (a host sync) and a warning is logged
    once per process.
    """
    global _svd_fallback_warned
    matrix = _as_matrix(features)
    try:
        return torch.linalg.svdvals(matrix)
    except RuntimeError as err:
        if matrix.device.type == "cpu":
            raise
        if not _svd_fallback_warned:
            _svd_fallback_warned = True
            logger.warning(
                "torch.linalg.svdvals failed on %s (%s); falling back to CPU (warned once)", matrix.device, err
            )
        return torch.linalg.svdvals(matrix.cpu()).to(matrix.device)


def srank(features: Tensor, delta: float = 0.01) -> Tensor:
    """Effective feature rank of Kumar et al. 2021, 0-dim int64.

    Smallest ``k`` with ``sum_{i<=k} sigma_i >= (1 - delta) * sum_i sigma_i``
    (``sigma`` descending). All-zero features give 0.
    """
    return srank_from_singular_values(singular_values(features), delta)


def srank_from_singular_values(sigma: Tensor, delta: float = 0.01) -> Tensor:
    """:func:`srank` given descending singular values ``sigma`` ``(n,)``, 0-dim int64."""
    cumulative = sigma.float().cumsum(0)
    total = cumulative[-1]
    # Number of leading partial sums still below the threshold, plus one.
    k = (cumulative < (1.0 - delta) * total).sum() + 1
    k = k.clamp_max(sigma.numel())
    return torch.where(total > 0, k, torch.zeros_like(k))


def effective_rank(features: Tensor) -> Tensor:
    """Effective rank ``exp(H(p))``, ``p = sigma / sum(sigma)`` (Roy & Vetterli 2007).

    0-dim float32 in ``[1, min(batch, dim)]``; ``0 log 0 = 0``. All-zero
    features give 0 (consistent with ``srank``).
    """
    return effective_rank_from_singular_values(singular_values(features))


def effective_rank_from_singular_values(sigma: Tensor) -> Tensor:
    """:func:`effective_rank` given singular values ``sigma`` ``(n,)``, 0-dim float32."""
    sigma = sigma.float()
    total = sigma.sum()
    p = sigma / total.clamp_min(_TINY)
    entropy = -torch.xlogy(p, p).sum()
    return torch.where(total > 0, entropy.exp(), torch.zeros_like(entropy))


def _global_norm(tensors: list[Tensor], device: torch.device) -> Tensor:
    """L2 norm of the concatenation of ``tensors`` (0 if empty), float32."""
    if not tensors:
        return torch.zeros((), device=device)
    norms = torch.stack([torch.linalg.vector_norm(t.detach().float()) for t in tensors])
    return torch.linalg.vector_norm(norms)


def _first_device(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def weight_norm(module: nn.Module) -> Tensor:
    """Global L2 norm of all parameters of ``module`` (shared ones once), 0-dim float32."""
    return _global_norm(list(module.parameters()), _first_device(module))


def grad_norm(module: nn.Module) -> Tensor:
    """Global L2 norm of all ``.grad`` present on ``module``'s parameters; 0 if none."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return _global_norm(grads, _first_device(module))


def feature_norm(features: Tensor) -> Tensor:
    """Mean over samples of the per-sample L2 norm of ``features`` ``(batch, ...)``, 0-dim float32."""
    return torch.linalg.vector_norm(_as_matrix(features), dim=1).mean()
