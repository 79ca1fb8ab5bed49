"""Regularisers against plasticity loss that act at every update, as pure functions on lists of tensors, and the
module that keeps their reference values with a network.

- ``l2_init_penalty``: regenerative regularisation, an L2 penalty towards the initial weights (Kumar et al. 2023,
  "Maintaining Plasticity in Continual Learning via Regenerative Regularization"); added to a loss.
- ``project_to_norms``: the projection step of Normalize-and-Project (NaP; Lyle et al. 2024, "Normalization and
  effective learning rates in reinforcement learning"): after an optimizer step each weight matrix is rescaled, in
  place, back to its norm at initialisation.
- ``Anchors``: the reference tensors (initial weights, initial norms) as buffers, saved and loaded with the module
  that holds them.

All of them run on the device without reading values back to the host, so they fit inside a captured CUDA graph.
torch and the standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = ["Anchors", "l2_init_penalty", "project_to_norms", "weight_norms"]


def _check_pairs(what: str, a: Sequence[Tensor], b: Sequence[Tensor], same_shape: bool) -> None:
    if len(a) != len(b):
        raise ValueError(f"{what}: {len(a)} tensors but {len(b)} references; give one reference per tensor, in order")
    if not a:
        raise ValueError(f"{what}: no tensors given; pass the parameters to regularise")
    for i, (x, y) in enumerate(zip(a, b)):
        if same_shape and x.shape != y.shape:
            raise ValueError(f"{what}: tensor {i} has shape {tuple(x.shape)}, its reference {tuple(y.shape)}; the "
                             "references must be copies of the same parameters")
        if not same_shape and y.numel() != 1:
            raise ValueError(f"{what}: reference {i} has shape {tuple(y.shape)}; a target norm is one number")


def l2_init_penalty(params: Sequence[Tensor], initial: Sequence[Tensor]) -> Tensor:
    """``sum_i ||params[i] - initial[i]||^2`` (squared Frobenius norms), a 0-dim tensor differentiable in ``params``:
    its gradient is ``2 (params[i] - initial[i])``, a pull towards the initial weights. Multiply by the coefficient
    (Kumar et al. 2023: ``lambda``) and add it to the loss.

    :param params: the parameters, any shapes.
    :param initial: their initial values (same shapes, in the same order; not differentiated).
    """
    _check_pairs("l2_init_penalty", params, initial, same_shape=True)
    return torch.stack([(p - p0.detach()).pow(2).sum() for p, p0 in zip(params, initial)]).sum()


def weight_norms(weights: Sequence[Tensor]) -> list[Tensor]:
    """The Frobenius norm of each tensor (0-dim each, detached): the targets of ``project_to_norms``."""
    return [w.detach().norm() for w in weights]


@torch.no_grad()
def project_to_norms(weights: Sequence[Tensor], norms: Sequence[Tensor]) -> None:
    """In place, per tensor: ``w <- w * norms[i] / ||w||`` (Frobenius norm over the whole tensor: a Linear's (out, in)
    matrix, a conv's (out, in, kh, kw) kernel), NaP's projection. An all-zero tensor stays zero. Foreach ops on the
    device, no host sync.

    :param weights: the weight tensors (parameters), written in place.
    :param norms: one target norm per weight (0-dim or one-element tensors, e.g. ``weight_norms`` at init).
    """
    _check_pairs("project_to_norms", weights, norms, same_shape=False)
    weights = list(weights)
    current = torch._foreach_norm(weights)
    torch._foreach_clamp_min_(current, torch.finfo(weights[0].dtype).tiny)  # 0 / tiny = 0: a zero tensor stays 0
    scales = torch._foreach_div([n.reshape(()) for n in norms], current)
    torch._foreach_mul_(weights, scales)


class Anchors(nn.Module):
    """Named reference tensors (a copy of each) kept as buffers, so that they are saved and loaded with the module
    that holds them (``state_dict``) and follow it to its device: the initial weights of ``l2_init_penalty``, the
    initial norms of ``project_to_norms``. A name may hold dots (a parameter's dotted name); its buffer is named with
    ``__`` in their place, as buffer names cannot hold dots.

    :param tensors: name -> tensor, in the order ``tensors()`` returns them.
    """

    def __init__(self, tensors: Mapping[str, Tensor]):
        super().__init__()
        self.names = list(tensors)
        for name, t in tensors.items():
            self.register_buffer(self._key(name), t.detach().clone())

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def tensors(self) -> list[Tensor]:
        """The buffers, in the order of the names given."""
        return [getattr(self, self._key(name)) for name in self.names]

    def extra_repr(self) -> str:
        return f"{len(self.names)} tensors"
