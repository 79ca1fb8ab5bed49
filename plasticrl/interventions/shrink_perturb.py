"""Shrink & Perturb (Ash & Adams 2020, "On Warm-Starting Neural Network Training"), as an interpolation towards a
fresh initialisation (BBF, Schwarzer et al. 2023) or towards the initial weights (RLE-Foundation/Plasticine).

``theta <- alpha * theta + (1 - alpha) * theta_ref`` for every parameter of the chosen layers, in place (``mul_``,
``add_``), with ``theta_ref`` a fresh init draw of the layer (``towards="fresh"``) or the layer's weights when the
object was bound to the target (``towards="initial"``).

The defaults the references use (read 2026-12):

- BBF (google-research/google-research ``bigger_better_faster/bbf``, ``configs/BBF.gin`` and
  ``agents/spr_agent.py``): ``shrink_factor = 0.5``, ``perturb_factor = 0.5`` (alpha 0.5) on the encoder and the
  transition model at each reset, every 20k steps until 100k, the other layers fully reset; the agent's own
  defaults are 0.8 / 0.2 ("original was 0.4 / 0.1", Ash & Adams' values, which add noise rather than interpolate).
  The interpolated layers *keep* their optimizer state (``keys_to_copy``); the target network is shrunk too,
  towards its own fresh draw.
- Plasticine (RLE-Foundation/Plasticine @ ``aa00b4b``): ``shrink_p = 0.999999`` towards a copy of the initial
  networks after *every* gradient step, optimizer state untouched.

plasticrl's default is BBF's alpha 0.5: an intervention here fires on a schedule, rarely, as BBF's does; 0.999999
once would change nothing. Plasticine's variant is ``ShrinkPerturb(alpha=0.999999, towards="initial")`` fired every
update by the caller.

torch and the standard library only.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from plasticrl.interventions.base import (
    Layers,
    Outcome,
    Target,
    check_layers,
    fresh_layer,
    reset_optimizer_state,
    select_layers,
    sync_targets,
)

__all__ = ["ShrinkPerturb"]

TOWARDS = ("fresh", "initial")
OPTIMIZER = ("keep", "reset")
TARGETS = ("shrink", "sync")


class ShrinkPerturb:
    """Interpolates the chosen layers towards a fresh init (or the initial weights), in place.

    :param alpha: the weight kept, in [0, 1]: 1 changes nothing, 0 is a full reset. Default 0.5 (BBF's
        ``shrink_factor = perturb_factor = 0.5``; see the module docstring).
    :param layers: as ``Reset`` (``"all"``, ``"last<k>"`` or module-name globs); default ``"all"``.
    :param towards: ``"fresh"``: a fresh draw of ``target.init_fn`` (None: the layer's ``reset_parameters()``) on a
        scratch copy, from the **global torch RNG**, at each application. ``"initial"``: the weights the layers had
        when ``bind(target)`` was called (call it right after building the networks); if it never was, the first
        ``apply`` binds, with a warning, and changes nothing.
    :param optimizer: ``"keep"`` (default): the optimizer state of the changed tensors stays. The weights keep
        ``alpha`` of what was learnt, so their Adam moments stay meaningful, and both references keep them (BBF's
        ``keys_to_copy``, Plasticine never touches its optimizer); resetting Adam's step at every application of a
        frequent, small shrink would restart its bias correction each time. ``"reset"``: zeroed as ``Reset`` does
        (moments and step of the whole tensors).
    :param targets: what the target networks' copies (``target.target_pairs``) become. ``"shrink"`` (default): the
        same interpolation towards the same ``theta_ref``, so ``target - online`` shrinks by ``alpha`` and the
        Polyak lag survives a frequent, small shrink (BBF shrinks its target too, towards an independent draw).
        ``"sync"``: set to the new online weights, as ``Reset`` does.

    Log: ``layers_shrunk`` (layers), ``params_shrunk`` (scalars), ``alpha``.
    """

    kind = "shrink_perturb"

    def __init__(self, alpha: float = 0.5, layers: Layers = "all", towards: str = "fresh", optimizer: str = "keep",
                 targets: str = "shrink"):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0.0 <= alpha <= 1.0) or \
                math.isnan(alpha):
            raise ValueError(f"alpha {alpha!r}: a float in [0, 1] (the weight kept; 1 changes nothing)")
        for field, value, allowed in (("towards", towards, TOWARDS), ("optimizer", optimizer, OPTIMIZER),
                                      ("targets", targets, TARGETS)):
            if value not in allowed:
                raise ValueError(f"{field} {value!r}: allowed are {', '.join(map(repr, allowed))}")
        self.alpha = float(alpha)
        self.layers = check_layers(layers)
        self.towards = towards
        self.optimizer = optimizer
        self.targets = targets
        self._initial: dict[str, Tensor] | None = None  # qualified parameter name -> weights at bind

    def __repr__(self) -> str:
        return (f"ShrinkPerturb(alpha={self.alpha}, layers={self.layers!r}, towards={self.towards!r}, "
                f"optimizer={self.optimizer!r}, targets={self.targets!r})")

    @torch.no_grad()
    def bind(self, target: Target) -> ShrinkPerturb:
        """Snapshots the chosen layers' current weights as the ``"initial"`` reference (a clone of each parameter,
        on its device). Returns self. Binding again replaces the snapshot."""
        self._initial = {f"{name}.{pname}": p.detach().clone()
                         for name, layer in select_layers(target.group, self.layers)
                         for pname, p in layer.named_parameters(recurse=False)}
        return self

    def state_dict(self) -> dict[str, Any]:
        """The ``"initial"`` snapshot (None if unbound), so that a resumed run shrinks towards the same weights."""
        return {"initial": None if self._initial is None else dict(self._initial)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        initial = state["initial"]
        self._initial = None if initial is None else {str(k): v for k, v in initial.items()}

    def _references(self, target: Target, chosen: list[tuple[str, nn.Module]]) -> list[tuple[nn.Parameter, Tensor]]:
        if self.towards == "fresh":
            pairs = []
            for name, layer in chosen:
                fresh = fresh_layer(layer, target.init_fn, name)
                pairs += [(p, fresh._parameters[pname]) for pname, p in layer.named_parameters(recurse=False)]
            return pairs
        if self._initial is None:
            warnings.warn("ShrinkPerturb(towards='initial') was not bound: the weights now become the initial ones "
                          "and this application changes nothing; call bind(target) right after building the "
                          "networks", RuntimeWarning, stacklevel=3)
            self.bind(target)
        pairs = []
        for name, layer in chosen:
            for pname, p in layer.named_parameters(recurse=False):
                key = f"{name}.{pname}"
                if key not in self._initial or self._initial[key].shape != p.shape:
                    raise ValueError(f"ShrinkPerturb(towards='initial'): parameter {key} {tuple(p.shape)} is not in "
                                     f"the snapshot made by bind() (it holds {len(self._initial)} tensors); bind to "
                                     "this target first")
                pairs.append((p, self._initial[key].to(device=p.device, dtype=p.dtype)))
        return pairs

    @torch.no_grad()
    def apply(self, target: Target, forward_fn: Any = None) -> Outcome:
        """Shrinks the layers of ``target.group`` (``forward_fn`` is not needed), then handles the optimizer state
        and the target networks as configured. Changes: the whole tensors of the layers (mask None)."""
        chosen = select_layers(target.group, self.layers)
        refs = self._references(target, chosen)
        a, b = self.alpha, 1.0 - self.alpha
        outcome = Outcome()
        for p, ref in refs:
            p.mul_(a).add_(ref, alpha=b)
            outcome.changes[p] = None
        if self.targets == "shrink":
            by_param = {id(p): ref for p, ref in refs}
            for online, tgt in target.target_pairs:
                target_params = dict(tgt.named_parameters())
                for pname, p in online.named_parameters():
                    t = target_params.get(pname)
                    if id(p) in by_param and t is not None and t.shape == p.shape:
                        t.mul_(a).add_(by_param[id(p)], alpha=b)
        else:
            sync_targets(target.target_pairs, outcome.changes)
        if self.optimizer == "reset":
            reset_optimizer_state(target.optimizers, outcome.changes)
        outcome.log = {"layers_shrunk": float(len(chosen)),
                       "params_shrunk": float(sum(p.numel() for p in outcome.changes)), "alpha": self.alpha}
        return outcome
