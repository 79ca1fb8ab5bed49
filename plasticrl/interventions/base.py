"""What every intervention shares: the ``Target`` it acts on, the ``Changes`` it made, and the two follow-ups that
every mechanism needs after writing new weights (optimizer state and target networks of the changed entries).

An intervention writes in place (``copy_``, ``zero_``, ``mul_``) into the parameters it changes, so that a captured
CUDA graph (``plasticrl.agents.accel.GraphedUpdate``) keeps reading the same tensors and sees the new values; one
that replaces modules or parameters (plasticity injection) says so in ``Outcome.rebuilt`` and the caller
invalidates its graphs.

Layer selection, shared by the mechanisms that act on layers (``select_layers``): ``"all"``, ``"last<k>"`` or a
list of module-name globs (see ``select_layers``). Fresh weights come from ``fresh_layer``: the target's ``init_fn``
(or the layer's own ``reset_parameters()``) run on a scratch copy of the layer, drawing from the global torch RNG,
so that the live parameters are only ever written with ``copy_``/``mul_``/``add_`` (seed with ``torch.manual_seed``
to reproduce a draw).

torch and the standard library only.
"""

from __future__ import annotations

import copy
import fnmatch
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from plasticrl.capture import members as group_members  # (member name, module) pairs, as the monitor names them

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


# ----------------------------------------------------------------------------------------------- layer selection

WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)  # Linear, Conv*d, ConvTranspose*d
_LAST = re.compile(r"last([1-9][0-9]*)")

Layers = str | Sequence[str]  # "all" | "last<k>" | module-name globs


def qualified(member: str, name: str) -> str:
    """A module's name in a group: ``<member>.<name>`` for list and dict groups, ``<name>`` for one module; the
    member's root is its member name (``""`` for a one-module group)."""
    return ".".join(part for part in (member, name) if part)


def check_layers(layers: Layers) -> str | tuple[str, ...]:
    """``layers`` validated: ``"all"``, ``"last<k>"`` (k >= 1) or a non-empty list of glob strings."""
    if isinstance(layers, str):
        if layers == "all" or _LAST.fullmatch(layers):
            return layers
        raise ValueError(f"layers {layers!r}: give 'all', 'last<k>' (k >= 1, e.g. 'last2') or a list of "
                         "module-name globs (e.g. ['q1.4', 'q2.*'])")
    globs = tuple(layers)
    if not globs or not all(isinstance(g, str) and g for g in globs):
        raise ValueError(f"layers {layers!r}: a list of module-name globs must be non-empty strings")
    return globs


def own_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters a module holds itself (not its children's)."""
    return list(module.named_parameters(recurse=False))


def walk(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """``named_modules`` (each module once) without the frozen parts of an injected head: a module may name
    children in ``frozen_children`` (``InjectedHead``: ``old`` and ``new_frozen``) that automatic selections
    (``"all"``, ``"last<k>"``) leave alone. Globs still reach them."""
    seen: set[int] = set()

    def visit(m: nn.Module, name: str) -> Iterator[tuple[str, nn.Module]]:
        if id(m) in seen:
            return
        seen.add(id(m))
        yield name, m
        skip = getattr(m, "frozen_children", ())
        for child_name, child in m.named_children():
            if child_name not in skip:
                yield from visit(child, f"{name}.{child_name}" if name else child_name)

    yield from visit(module, prefix)


def _heads(member: nn.Module) -> list[tuple[str, nn.Module]]:
    """The member's heads: the outermost ``nn.Sequential`` modules whose last module is a weight layer (DrQ's
    ``q1``, ``q2``, ``policy``); the member itself if it has none."""
    heads: list[tuple[str, nn.Module]] = []

    def visit(m: nn.Module, name: str) -> None:
        if isinstance(m, nn.Sequential) and len(m) and isinstance(m[-1], WEIGHT_LAYERS):
            heads.append((name, m))
            return
        skip = getattr(m, "frozen_children", ())
        for child_name, child in m.named_children():
            if child_name not in skip:
                visit(child, f"{name}.{child_name}" if name else child_name)

    visit(member, "")
    return heads or [("", member)]


def available_layers(group: Group) -> list[str]:
    """The group's layer names (modules with parameters of their own), qualified as ``select_layers`` reports."""
    return [qualified(member, name) or "<root>" for member, module in group_members(group)
            for name, m in module.named_modules() if own_parameters(m)]


def select_layers(group: Group, layers: Layers) -> list[tuple[str, nn.Module]]:
    """The layers (modules with parameters of their own) that ``layers`` chooses in ``group``, each once, as
    ``(qualified name, module)`` in module order.

    - ``"all"``: every module with parameters of its own.
    - ``"last<k>"``: the last k weight layers (``WEIGHT_LAYERS``: Linear, Conv) of each head, a head being an
      ``nn.Sequential`` of a member whose last module is a weight layer (the outermost one; DrQ: ``policy``,
      ``q1``, ``q2``), or of the whole member if it has no such Sequential; a head with fewer gives all it has.
    - a list of ``fnmatch`` globs on module names within each member (``"q1.4"``, ``"q2.*"``), or on the
      member-qualified name (``"0.q1.4"`` for a list group): a matched module brings every layer of its subtree
      (``"q2"`` is the whole head).

    Automatic selections skip the frozen parts of injected heads (``walk``). A glob that matches no layer, or a
    selection that finds none, raises ValueError listing the available names.
    """
    spec = check_layers(layers)
    chosen: dict[int, tuple[str, nn.Module]] = {}

    def add(member: str, name: str, m: nn.Module) -> None:
        if own_parameters(m):
            chosen.setdefault(id(m), (qualified(member, name) or "<root>", m))

    for member, module in group_members(group):
        if spec == "all":
            for name, m in walk(module):
                add(member, name, m)
        elif isinstance(spec, str):
            k = int(_LAST.fullmatch(spec).group(1))
            for head_name, head in _heads(module):
                weight_layers = [(n, m) for n, m in walk(head, head_name) if isinstance(m, WEIGHT_LAYERS)]
                for name, m in weight_layers[-k:]:
                    add(member, name, m)
    if isinstance(spec, tuple):
        for glob in spec:
            matched = False
            for member, module in group_members(group):
                for name, m in module.named_modules():
                    if fnmatch.fnmatchcase(name, glob) or (member and fnmatch.fnmatchcase(qualified(member, name),
                                                                                          glob)):
                        for sub_name, sub in m.named_modules(prefix=name):
                            matched = matched or bool(own_parameters(sub))
                            add(member, sub_name, sub)
            if not matched:
                raise ValueError(f"layers: {glob!r} matches no layer (module with parameters) of the group; "
                                 f"available: {', '.join(available_layers(group)) or 'none'}")
    if not chosen:
        raise ValueError(f"layers {layers!r} selects no layer of the group; available: "
                         f"{', '.join(available_layers(group)) or 'none'}")
    order: dict[int, int] = {}  # module order over the members, a shared module at its first place
    for _, module in group_members(group):
        for m in module.modules():
            order.setdefault(id(m), len(order))
    return sorted(chosen.values(), key=lambda item: order[id(item[1])])


def _init(module: nn.Module, init_fn: Any, name: str) -> None:
    if init_fn is not None:
        init_fn(module)
    elif hasattr(module, "reset_parameters"):
        module.reset_parameters()
    else:
        raise ValueError(f"layer {name} ({type(module).__name__}) has no reset_parameters(): give Target.init_fn")


@torch.no_grad()
def fresh_layer(layer: nn.Module, init_fn: Any = None, name: str = "") -> nn.Module:
    """A scratch deep copy of ``layer`` re-initialised by ``init_fn(copy)`` or the copy's ``reset_parameters()``:
    the fresh draw, from the global torch RNG, that the mechanisms copy or blend into the live parameters in place
    (only the layer's own parameters are read from it). The draw is the one that initialising the layer itself
    would have made."""
    scratch = copy.deepcopy(layer)
    _init(scratch, init_fn, name or type(layer).__name__)
    return scratch


@torch.no_grad()
def fresh_module(module: nn.Module, init_fn: Any = None, name: str = "") -> nn.Module:
    """A deep copy of ``module`` with every layer (module with parameters of its own) re-initialised, in module
    order, by ``init_fn`` or its ``reset_parameters()`` (global torch RNG): a new network of the same structure."""
    scratch = copy.deepcopy(module)
    for sub_name, sub in scratch.named_modules():
        if own_parameters(sub):
            _init(sub, init_fn, qualified(name, sub_name) or type(sub).__name__)
    return scratch
