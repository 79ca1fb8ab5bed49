"""What every intervention shares: the ``Target`` it acts on, the ``Changes`` it made, and the two follow-ups that
every mechanism needs after writing new weights (optimizer state and target networks of the changed entries).

An intervention writes in place (``copy_``, ``zero_``, ``mul_``) into the parameters it changes, so that a captured
CUDA graph (``plasticrl.agents.accel.GraphedUpdate``) keeps reading the same tensors and sees the new values; one
that replaces modules or parameters (plasticity injection) says so in ``Outcome.rebuilt`` and the caller
invalidates its graphs.

torch and the standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

Group = nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module]

# The entries an intervention changed: parameter -> bool mask of its shape (True = changed), or None for the whole
# tensor. Keyed by the Parameter object itself (identity hash).
Changes = dict[nn.Parameter, Tensor | None]


@dataclass
class Target:
    """What an intervention acts on.

    :param group: the modules (one module, a list such as twin critics, or a dict), as the monitor's groups.
    :param optimizers: every optimizer that may hold state for the group's parameters (all of an agent's are fine:
        only the state of changed parameters is touched).
    :param target_pairs: ``(online, target)`` module pairs with the same structure (a target critic and its online
        critic); the changed entries of online parameters are copied into the target's same-named parameters.
    :param init_fn: re-initialises one layer in place, as the agent initialised it (e.g. DrQ-v2's orthogonal init);
        None: the layer's own ``reset_parameters()``.
    """

    group: Group
    optimizers: Sequence[torch.optim.Optimizer] = ()
    target_pairs: Sequence[tuple[nn.Module, nn.Module]] = ()
    init_fn: Any = None  # Callable[[nn.Module], None] | None


@dataclass
class Outcome:
    """What one application did: ``changes`` (for the follow-ups), ``log`` (scalars, e.g. ``units_recycled``, keyed
    without the ``intervention/<kind>/<group>/`` prefix, which the caller adds), and ``rebuilt``: True when modules or
    parameters were replaced by new objects (captured graphs must then be invalidated)."""

    changes: Changes = field(default_factory=dict)
    log: dict[str, float] = field(default_factory=dict)
    rebuilt: bool = False


class Intervention(Protocol):
    """A mechanism object with one narrow seam: ``apply(target, forward_fn)``.

    ``kind`` names it in logs and configs (``reset``, ``shrink_perturb``, ``redo``, ``inject``). ``forward_fn`` runs
    the group's forward on a batch (as the monitor's probe does); mechanisms that score units (ReDo) need it, the
    others ignore it. ``apply`` writes the new weights, then resets the optimizer state and syncs the targets of the
    changed entries (``finish``), and returns the ``Outcome``.
    """

    kind: str

    def apply(self, target: Target, forward_fn: Any = None) -> Outcome: ...


def parameters_of(group: Group) -> list[nn.Parameter]:
    """The group's parameters, each once, in module order."""
    modules = group.values() if isinstance(group, Mapping) else group if isinstance(group, (list, tuple)) else [group]
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        for p in module.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


@torch.no_grad()
def reset_optimizer_state(optimizers: Sequence[torch.optim.Optimizer], changes: Changes) -> int:
    """Zeroes, in place, the optimizer state of the changed entries: every state tensor shaped like its parameter
    (Adam's ``exp_avg`` and ``exp_avg_sq``, SGD's ``momentum_buffer``) where the mask is True; for a whole changed
    tensor (mask None) also the scalar entries (Adam's ``step``: its bias correction starts again, as in a fresh
    optimizer). Parameters without state (never stepped) are skipped. Returns the number of state tensors touched."""
    touched = 0
    for optimizer in optimizers:
        for p, mask in changes.items():
            state = optimizer.state.get(p)
            if not state:
                continue
            for value in state.values():
                if not isinstance(value, Tensor):
                    continue
                if value.shape == p.shape:
                    value.zero_() if mask is None else value.masked_fill_(mask, 0)
                    touched += 1
                elif mask is None and value.numel() == 1:
                    value.zero_()
                    touched += 1
            if mask is None:
                for key, value in state.items():  # a Python-number step (some optimizers keep one)
                    if isinstance(value, (int, float)) and key == "step":
                        state[key] = type(value)(0)
    return touched


@torch.no_grad()
def sync_targets(pairs: Sequence[tuple[nn.Module, nn.Module]], changes: Changes) -> int:
    """Copies, in place, the changed entries of each online module's parameters into the same-named parameters of
    its target module (Polyak targets of reset layers start from the online weights again). Returns the number of
    target tensors written."""
    written = 0
    for online, target in pairs:
        target_params = dict(target.named_parameters())
        for name, p in online.named_parameters():
            if p not in changes or name not in target_params:
                continue
            t, mask = target_params[name], changes[p]
            t.copy_(p) if mask is None else t.copy_(torch.where(mask, p, t))
            written += 1
    return written


def finish(target: Target, outcome: Outcome) -> Outcome:
    """The follow-ups of every mechanism: optimizer state of the changed entries zeroed, targets synced."""
    reset_optimizer_state(target.optimizers, outcome.changes)
    sync_targets(target.target_pairs, outcome.changes)
    return outcome
