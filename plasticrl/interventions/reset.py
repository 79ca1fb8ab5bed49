"""Reset (Nikishin et al. 2022, "The Primacy Bias in Deep Reinforcement Learning"): re-initialise chosen layers.

The paper resets a part of the agent periodically: the last layers of its networks, with their optimizer state.
``Reset("last2")`` on a DrQ critic resets ``q1.2``, ``q1.4``, ``q2.2``, ``q2.4``, on a DrQ actor ``policy.2`` and
``policy.4``; the trunks and the encoder keep their weights. A schedule (``plasticrl.interventions.schedule``) says
when it fires.

torch and the standard library only.
"""

from __future__ import annotations

from typing import Any

import torch

from plasticrl.interventions.base import Layers, Outcome, Target, check_layers, finish, fresh_layer, select_layers

__all__ = ["Reset"]


class Reset:
    """Re-initialises the chosen layers in place, as the agent initialised them.

    Each layer gets a fresh draw of ``target.init_fn`` (None: the layer's own ``reset_parameters()``), made on a
    scratch copy from the **global torch RNG** (``torch.manual_seed`` reproduces it) and copied into the layer's
    parameters and buffers with ``copy_``. Then ``finish``: the optimizer state of the reset tensors is zeroed
    (Adam's moments and step: its bias correction starts again) and the target networks' copies are set to the
    new online weights.

    :param layers: ``"last2"`` (the default: the last 2 weight layers of each head), ``"last<k>"``, ``"all"`` or a
        list of module-name globs (``["q1.4", "q2.*"]``); see ``plasticrl.interventions.base.select_layers``.

    Log: ``layers_reset`` (layers), ``params_reset`` (scalars).
    """

    kind = "reset"

    def __init__(self, layers: Layers = "last2"):
        self.layers = check_layers(layers)

    def __repr__(self) -> str:
        return f"Reset(layers={self.layers!r})"

    @torch.no_grad()
    def apply(self, target: Target, forward_fn: Any = None) -> Outcome:
        """Resets the layers of ``target.group`` (``forward_fn`` is not needed) and returns the ``Outcome``: the
        whole tensors of the reset layers as changes (mask None)."""
        outcome = Outcome()
        chosen = select_layers(target.group, self.layers)
        for name, layer in chosen:
            fresh = fresh_layer(layer, target.init_fn, name)
            for pname, p in layer.named_parameters(recurse=False):
                p.copy_(fresh._parameters[pname])
                outcome.changes[p] = None
            for bname, b in layer.named_buffers(recurse=False):
                new = fresh._buffers.get(bname)
                if new is not None and new.shape == b.shape:  # e.g. BatchNorm's running statistics
                    b.copy_(new)
        outcome.log = {"layers_reset": float(len(chosen)),
                       "params_reset": float(sum(p.numel() for p in outcome.changes))}
        return finish(target, outcome)
